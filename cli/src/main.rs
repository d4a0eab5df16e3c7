//! `plush`: the user's front door to Plush.
//!
//! `plush sim` simulates an overlay (see [`sim`]); `plush client` runs a client on real TCP (see
//! [`client`]); `plush run` runs a command on many hosts and prints the results grouped (see
//! [`run`]). Argument errors print what is wrong and exit with status 2 (clap's convention); a
//! command's own failure exits with status 1, except `plush run`, whose status is clush's (the
//! largest remote exit status, 255 when a host could not be reached).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod run;
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
    /// Run a command on many hosts and print the results, identical ones grouped (as `clush -b`):
    /// invite the hosts, build the tree, run, print, dismantle.
    ///
    /// Example: `plush run --local 20 -- hostname`. Exits with the largest remote exit status;
    /// 255 when any host could not be reached or was lost; 2 for a usage error. Hosts that failed,
    /// were lost or unreachable are named on stderr. While hosts join and results are pending, a
    /// progress line is shown on stderr when it is a terminal.
    Run(run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => sim::run(&args),
        Command::Client(args) => client::run(&args),
        Command::Run(args) => run::run(&args),
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
