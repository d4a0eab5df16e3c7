//! `plush barrier NAME`: run by a job's process on a host, it enters barrier NAME of the
//! overlay and returns once the controller released it (see `plush_mio::process` for how the
//! process reaches its client). Exit status: 0 released; 1 refused, the client went away, or
//! `--timeout` passed; 2 a usage error (outside a Plush job, a bad name).

use clap::Args;
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `plush barrier`.
#[derive(Debug, Args)]
pub struct BarrierArgs {
    /// The barrier (1 to 128 bytes, no newline).
    pub name: String,
    /// Give up after SECS seconds (exit 1) [default: wait for the release].
    #[arg(long, value_name = "SECS", value_parser = crate::run::parse_timeout)]
    pub timeout: Option<Duration>,
}

/// Run `plush barrier`.
pub fn run(args: &BarrierArgs) -> ExitCode {
    let usage = args.name.is_empty()
        || args.name.contains('\n')
        || std::env::var_os(plush_mio::process::BARRIER_FD_ENV).is_none();
    match plush_mio::process::enter_barrier(&args.name, args.timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("plush barrier {}: {why}", args.name);
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
