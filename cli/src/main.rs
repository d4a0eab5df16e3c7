//! `plush`: the user's front door to Plush.
//!
//! `plush sim` simulates an overlay (see [`sim`]); `plush client` runs a client on real TCP (see
//! [`client`]). Argument errors print what is wrong and exit with status 2 (clap's convention); a
//! command's own failure exits with status 1.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod sim;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Plush: manage a distributed application over a self-repairing tree of hosts.
#[derive(Debug, Parser)]
#[command(name = "plush", version, propagate_version = true)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a Plush overlay in one process: build a tree, broadcast, inject faults, repair,
    /// broadcast again, and report.
    ///
    /// The run is deterministic: the same flags and the same seed give the same trace hash.
    /// Exits 0 when every phase converged without an invariant violation, else 1.
    Sim(sim::SimArgs),
    /// Run a Plush client on this host: listen, wait for an invitation from a controller, run
    /// its jobs, and exit when the overlay is dismantled (or after two minutes without links).
    ///
    /// Prints one line on stdout once it listens (launchers wait for it), nothing more.
    Client(client::ClientArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => sim::run(&args),
        Command::Client(args) => client::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
