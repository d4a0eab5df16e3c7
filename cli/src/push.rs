//! `plush push SRC DEST`: copy one file to many hosts through the tree.
//!
//! The controller sends each chunk of `SRC` once, to the root; every member stores it and
//! forwards it to its children as it arrives (see `plush_core::transfer`). Each host verifies the
//! SHA-256 and renames the file into place (`DEST`, or `DEST/NAME` when `DEST` is a directory
//! there or ends with `/`), with the mode of `SRC` unless `--mode` says otherwise. A host whose
//! copy fails (no space, no permission, digest mismatch) is named with the error; nothing is
//! left in place there.
//!
//! Output: the hosts grouped by outcome (as `plush run`), then one line on stderr, e.g.
//! `plush push: 10.0 MiB to 200/200 hosts in 0.84 s; the controller sent 10.0 MiB`. With
//! `--json`, the groups and a summary line with `bytes`, `controller_bytes` and `push_ms`.
//! Exit status as `plush run`'s: 0 when every host has the file, 1 when a copy failed, 255
//! when a host was unreachable or lost, 2 for a usage error (a missing or unreadable `SRC`).

use crate::session::{ms, summary_json, HostArgs, PrintOpts, Session, INTERRUPTED};
use clap::Args;
use plush_core::wire::MAX_CHUNK;
use plush_mio::PushJob;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `plush push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The hosts.
    #[command(flatten)]
    pub hosts: HostArgs,

    /// Give up on hosts that have not stored the file after SECS seconds [default: no limit].
    #[arg(long, value_name = "SECS", value_parser = crate::run::parse_timeout)]
    pub timeout: Option<Duration>,

    /// Permission bits of the copies, in octal (e.g. 755) [default: those of SRC].
    #[arg(long, value_name = "OCTAL", value_parser = plush::appfile::parse_mode)]
    pub mode: Option<u32>,

    /// Chunk size in KiB (1 to 512).
    #[arg(long, value_name = "KIB", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=(MAX_CHUNK >> 10) as i64))]
    pub chunk_kib: u32,

    /// Print JSON lines: the groups, then `{"summary": {...}}`.
    #[arg(long)]
    pub json: bool,

    /// The file to copy (a regular file on this machine).
    #[arg(value_name = "SRC")]
    pub src: PathBuf,

    /// Where it goes on each host.
    #[arg(value_name = "DEST")]
    pub dest: String,
}

/// Check `SRC` before any host is started: a usage error (exit 2) if it is not a readable file.
pub fn check_source(src: &std::path::Path) -> Result<u64, String> {
    let meta = std::fs::metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", src.display()));
    }
    std::fs::File::open(src).map_err(|e| format!("{}: {e}", src.display()))?;
    Ok(meta.len())
}

/// Run `plush push`.
pub fn run(args: &PushArgs) -> ExitCode {
    let size = match check_source(&args.src) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("plush push: {e}");
            return ExitCode::from(2);
        }
    };
    let mut s = match Session::start(&args.hosts, "push") {
        Ok(s) => s,
        Err(code) => return ExitCode::from(code),
    };
    let build = s.join();
    let sent_before = s.c.driver_stats().chunk_bytes_sent;
    let push = PushJob {
        src: &args.src,
        dest: &args.dest,
        target: None,
        timeout: args.timeout,
        chunk: args.chunk_kib << 10,
        mode: args.mode,
        upgrade: false,
        digest: None,
    };
    let summary = s.run_push(push, PrintOpts { json: args.json, stream: false, out: Default::default() });
    let sent = s.c.driver_stats().chunk_bytes_sent - sent_before;
    let dismantle = s.dismantle();
    let code = if summary.interrupted { INTERRUPTED } else { summary.code };
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    if args.json {
        let extra = [
            ("bytes", json!(size)),
            ("controller_bytes", json!(sent)),
            ("push_ms", json!(summary.run_ms)),
            ("build_ms", json!(ms(build))),
            ("dismantle_ms", json!(ms(dismantle))),
            ("exit", json!(code)),
        ];
        let line = summary_json(&summary, s.host_count(), &extra);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    } else {
        eprintln!(
            "plush push: {:.1} MiB to {}/{} hosts in {:.2} s; the controller sent {:.1} MiB",
            mib(size),
            summary.ok,
            s.host_count(),
            summary.run_ms as f64 / 1000.0,
            mib(sent)
        );
    }
    drop(s);
    ExitCode::from(code)
}
