use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    globaldns::ctl::run(globaldns::ctl::Cli::parse())
}
