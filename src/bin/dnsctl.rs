use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A closed pipe ends dnsctl quietly, as it does any Unix filter (`dnsctl list | head -1`);
    // Rust ignores SIGPIPE, so the next print would panic instead.
    // SAFETY: restoring a signal's default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    globaldns::ctl::run(globaldns::ctl::Cli::parse())
}
