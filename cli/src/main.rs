//! `plush`: the user's front door to Plush.
//!
//! `plush sim` simulates an overlay (see [`sim`]); `plush client` runs a client on real TCP (see
//! [`client`]); `plush run` runs a command on many hosts and prints the results grouped (see
//! [`run`]). Argument errors print what is wrong and exit with status 2 (clap's convention); a
//! command's own failure exits with status 1, except `plush run`, whose status is clush's (the
//! largest remote exit status, 255 when a host could not be reached).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod apply;
mod attach;
mod barrier;
mod client;
mod journal;
mod push;
mod run;
mod session;
mod shell;
mod sim;
mod upgrade;

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
    /// An interactive controller: the overlay stays up between commands (`run`, `push`,
    /// `hosts`, `tree`, `invite`, `barrier`, `status`, `cancel`, `disconnect`; `help` lists
    /// them).
    ///
    /// Reads from a terminal with line editing and history, or from a pipe:
    /// `printf 'run hostname\nhosts\n' | plush shell --local 50`. Every command takes `--json`.
    Shell(shell::ShellArgs),
    /// Run an application file: its hosts, then its phases in order, with barriers (full or
    /// partial) between them and a failure policy per phase (abort, ignore, restart).
    ///
    /// The file is TOML: a `[hosts]` table (`local = N`, or `hosts = "node[01-64]"`, or
    /// `hostfile = "..."`; `exclude`, `launcher`, `port`, `degree`, `maintenance` (a script file
    /// every client runs before it joins)), optional `[sets]` of named
    /// host sets, and `[[phase]]` tables with `name`, `run` (a command line or a list of
    /// words), optional `hosts` ("all", a set's name or a host set), `timeout` (seconds),
    /// `on_failure` ("abort", "ignore", "restart"), `restarts`, and `barrier = { threshold =
    /// 0.8, timeout = 5 }`. `[[files]]` tables (`src`, relative to the file; `dest` on the hosts;
    /// optional `hosts`, `mode`, `timeout`) are copied through the tree, in order, before the
    /// first phase; a failed copy aborts. Errors in the file name its line and field (exit 2).
    Apply(apply::ApplyArgs),
    /// Copy a file to many hosts through the tree: the controller sends each byte once, every
    /// host forwards it to its children as it arrives, verifies it (SHA-256) and renames it into
    /// place.
    ///
    /// Example: `plush push --local 20 ./data.bin /tmp/`. A host whose copy failed (no space, no
    /// permission, digest mismatch) is named with the error and left without the file. Exits 0
    /// when every host has it, 1 when a copy failed, 255 when a host was unreachable or lost, 2
    /// for a usage error.
    Push(push::PushArgs),
    /// Make every host run this Plush: clients of another version (all of them with --force)
    /// receive this binary through the tree, restart on it and rejoin, at most --max-down K
    /// at a time while the others stay joined.
    ///
    /// Example: `plush upgrade -w node[01-64] --max-down 8`. Exits 0 when every host runs this
    /// version, 1 when some could not be upgraded, 255 when a host was unreachable.
    Upgrade(upgrade::UpgradeArgs),
    /// Enter a barrier of the overlay from a job's process, and wait for its release.
    ///
    /// Only inside a job that Plush started: e.g. `plush run ... -- sh -c 'setup; "$PLUSH"
    /// barrier ready; work'` with a barrier `ready` opened in `plush shell` or an application
    /// file. Exits 0 once released, 1 when refused or timed out.
    Barrier(barrier::BarrierArgs),
    /// Take over a session whose controller died (a crash, a lost terminal, a reboot): reach
    /// its overlay again, collect the results its hosts held, and go on as the session would
    /// have: `run` prints the grouped results with its exit status, `shell` gives the prompt
    /// back, `apply` finishes its running phase and goes on with the next.
    ///
    /// Every result is shown once across the crash: those printed before are not printed
    /// again. Hosts that died meanwhile are named lost. Without ID: the most recent session.
    Attach(attach::AttachArgs),
    /// List the sessions left behind in the state directory (their controller died, or they
    /// were kept with --keep-session): hosts, jobs, and whether the overlay still answers.
    Sessions(attach::SessionsArgs),
}

fn main() -> ExitCode {
    // The client is started by launchers with a fixed command line: parsed without building
    // the whole command-line interface, so an idle client never touches (and keeps resident)
    // the code of every other subcommand. Anything else, `--help` or a mistake included, goes
    // to clap below.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "client") {
        let strings: Option<Vec<String>> = args.iter().map(|a| a.to_str().map(str::to_owned)).collect();
        if let Some(Ok(opts)) = strings.map(|s| plush_mio::client::parse_args(&s)) {
            return client::run_options(opts);
        }
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => sim::run(&args),
        Command::Client(args) => client::run(&args),
        Command::Run(args) => {
            if !args.hosts.given() {
                missing_target("run");
            }
            run::run(&args)
        }
        Command::Push(args) => {
            if !args.hosts.given() {
                missing_target("push");
            }
            push::run(&args)
        }
        Command::Upgrade(args) => {
            if !args.hosts.given() {
                missing_target("upgrade");
            }
            upgrade::run(&args)
        }
        Command::Barrier(args) => barrier::run(&args),
        Command::Shell(args) => shell::run(&args),
        Command::Apply(args) => apply::run(&args),
        Command::Attach(args) => attach::run(&args),
        Command::Sessions(args) => attach::sessions(&args),
    }
}

/// A usage error (exit 2) for a subcommand given no hosts.
fn missing_target(sub: &str) -> ! {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let c = cmd.find_subcommand_mut(sub).map(|c| c.clone()).unwrap_or(cmd);
    c.bin_name(format!("plush {sub}"))
        .error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "say where to run: one of --local N, -w HOSTS or -f FILE is required",
        )
        .exit()
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
