//! `dnsctl`: the operator's CLI for globaldns. Commands arrive with the allocator.

use clap::Parser;

/// Operate globaldns: inspect and pin the VIPs of `.global` hosts.
#[derive(Parser, Debug)]
#[command(name = "dnsctl", version, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print the version of this build.
    Version,
}

fn main() {
    match Cli::parse().command {
        Command::Version => println!("dnsctl {}", env!("CARGO_PKG_VERSION")),
    }
}
