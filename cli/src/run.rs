//! `plush run`: invite the hosts, build the tree, run one command everywhere, print the results
//! grouped as `clush -b` does, dismantle, and exit with clush's status.
//!
//! Hosts and launchers: see [`crate::session`]. Steps and their deadlines:
//! 1. Join: wait until every host joined or failed, at most `--join-timeout`, or else until no
//!    host joined or failed for [`JOIN_STALL`] (20 s). Hosts not joined then are
//!    *unreachable*.
//! 2. Run: the command on every joined host, with `--timeout` if given (else none; the wait
//!    ends when every host joined answered or failed, or the root reports the job complete).
//!    Joined hosts without a result are *lost*. Ctrl-C cancels the command on every host (they
//!    report `cancelled`), then the hosts are dismantled as usual.
//!
//!    The two steps overlap: the command starts once the first host joined, and every host
//!    that joins later runs it as it joins (its parent hands it the job), so a cold start ends
//!    one command's time after the last join, not a whole run after it. Not when the first
//!    hosts to join run another Plush version (they are upgraded first, after step 1) or when
//!    every host joined at once. `build_ms` in the summary is then when step 1 ended, and
//!    `run_ms` counts from the first join ([`Session::start_build`]).
//! 3. Print the groups (stdout; with `--stream`, `host: line` as lines arrive instead), then
//!    name every host that failed, was lost or unreachable (stderr, one line each with the
//!    reason).
//! 4. Dismantle: wait at most [`dismantle_deadline`] for every client to exit, then kill and
//!    reap the rest (the `Cluster` does; dropping it kills and reaps anything left).
//!
//! Exit status, as clush's: the largest remote exit status (see [`crate::session`]); 255 when
//! any host was unreachable or lost, or when the controller itself could not start; 130 after
//! Ctrl-C; 2 for a usage error (clap).
//!
//! [`JOIN_STALL`]: crate::session::JOIN_STALL
//! [`dismantle_deadline`]: crate::session::dismantle_deadline
//! [`Session::start_build`]: crate::session::Session::start_build

use crate::session::{ms, summary_json, HostArgs, OutputArgs, PrintOpts, Session, INTERRUPTED};
use clap::Args;
use plush_mio::JobSpec;
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `plush run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The hosts.
    #[command(flatten)]
    pub hosts: HostArgs,

    /// Kill the command on every host after SECS seconds (more than 0; fractions allowed); such
    /// hosts are reported `timed out` [default: no timeout].
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// Print JSON lines: one object per group of identical results (`nodes`, `count`, `exit`,
    /// `status`, `truncated`, `stdout`, `stderr`), then `{"summary": {...}}`.
    #[arg(long)]
    pub json: bool,

    /// Print every byte of output as it arrives, each line as `host: line` on the matching fd
    /// (with --json: `{"node", "line"}` objects, `"stderr": true` for stderr lines), instead of
    /// grouping it at the end. A host that writes faster than the terminal reads is slowed
    /// down, not cut.
    #[arg(long)]
    pub stream: bool,

    /// Run the command again on a host whose client was relaunched while it ran there. By
    /// default a job runs at most once per host: such a host is reported lost during the job,
    /// with the output that had arrived from it. (The process sees `PLUSH_RETRY_LOST=1`.)
    #[arg(long)]
    pub retry_lost: bool,
    /// Output cap and per-host files.
    #[command(flatten)]
    pub out: OutputArgs,

    /// The command and its arguments, after `--` (run directly, not through a shell).
    #[arg(last = true, required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<String>,
}

/// A timeout: a finite number of seconds, more than 0.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("must be a finite number of seconds, more than 0, not {s}"));
    }
    Duration::try_from_secs_f64(v).map_err(|e| format!("{s}: {e}"))
}

/// Run `plush run`.
pub fn run(args: &RunArgs) -> ExitCode {
    let mut s = match Session::start(&args.hosts, "run") {
        Ok(s) => s,
        Err(code) => return ExitCode::from(code),
    };
    // The command starts at the first join when it can: each host runs it as it joins.
    s.start_build();
    let argv: Vec<&str> = args.command.iter().map(String::as_str).collect();
    let env = if args.retry_lost { plush_mio::retry_lost_env() } else { Vec::new() };
    let spec =
        JobSpec { argv: &argv, target: None, timeout: args.timeout, stream: args.stream, env: &env, max_output: None };
    let summary = s.run_job(spec, PrintOpts { json: args.json, stream: args.stream, out: args.out.clone() });
    let build = s.built.unwrap_or_default();
    let dismantle = s.dismantle();
    let code = if summary.interrupted { INTERRUPTED } else { summary.code };
    if args.json {
        let extra = [
            ("build_ms", json!(ms(build))),
            ("dismantle_ms", json!(ms(dismantle))),
            ("exit", json!(code)),
            // Output bytes the controller received (live output, blobs, inline results).
            ("output_bytes", json!(s.c.controller_stats().output_bytes)),
            // Of them, bytes kept in a temporary file until printed (past the memory bound).
            ("spilled_bytes", json!(s.c.spill_state().1)),
        ];
        let line = summary_json(&summary, s.host_count(), &extra);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    // Dropping the session kills and reaps any client still running.
    drop(s);
    ExitCode::from(code)
}
