//! `plush upgrade`: make every host run this Plush, a few at a time.
//!
//! The hosts are invited and joined as for `plush run` (without the automatic upgrade), then
//! the clients of another version (every client with `--force`) get this binary through the
//! tree in batches of at most `--max-down K` hosts: each installs it as
//! `~/.cache/plush/plush-VERSION-DIGEST` (where the ssh launcher looks for it next time),
//! restarts on it at the same address, and rejoins; the next batch starts once the batch is
//! back. The root goes last, in a batch of its own. The rest of the hosts stay joined
//! throughout. Then the overlay is dismantled.
//!
//! Output: one line per host not upgraded (stderr, with the reason), and a summary:
//! `plush upgrade: 12/12 hosts now run 0.1.0 (at most 3 down at once; 3 seen)`; with
//! `--json`, `{"upgraded", "failed", "outdated", "hosts", "version", "max_down", "limit"}`.
//! Exit status: 0 when every host runs this version, 1 when some could not be upgraded, 255
//! when a host was unreachable, 2 for a usage error.

use crate::session::{HostArgs, Session, UNREACHABLE};
use clap::Args;
use plush_core::HostState;
use serde_json::json;
use std::process::ExitCode;

/// Flags of `plush upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The hosts.
    #[command(flatten)]
    pub hosts: HostArgs,

    /// Hosts restarting at once, at most.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_down: u32,

    /// Restart every client on this binary, also those that already run this version.
    #[arg(long)]
    pub force: bool,

    /// Print one JSON summary line.
    #[arg(long)]
    pub json: bool,
}

/// Run `plush upgrade`.
pub fn run(args: &UpgradeArgs) -> ExitCode {
    // Joining must not upgrade by itself: this command does it, K at a time.
    let hosts = HostArgs { no_upgrade: true, ..args.hosts.clone() };
    let mut s = match Session::start(&hosts, "upgrade") {
        Ok(s) => s,
        Err(code) => return ExitCode::from(code),
    };
    s.join();
    let joined: Vec<_> = s.joined().into_iter().collect();
    let outdated = s.c.outdated();
    let targets = if args.force { joined.clone() } else { outdated.clone() };
    let u = s.upgrade(&targets, args.max_down as usize, args.force);
    for (h, why) in &u.failed {
        eprintln!("plush upgrade: {}: {why}", s.label(h));
    }
    let unreachable: Vec<_> =
        s.named.iter().filter(|(id, _)| !joined.contains(id)).map(|(id, n)| (*id, n.clone())).collect();
    for (id, name) in &unreachable {
        let why = s.c.host(id).and_then(|i| i.why).unwrap_or("not joined");
        eprintln!("plush upgrade: {name}: unreachable: {why}");
    }
    let current = joined.iter().filter(|h| s.c.current(h)).count();
    let version = plush_mio::version();
    if args.json {
        let line = json!({
            "hosts": s.host_count(),
            "outdated": outdated.len(),
            "upgraded": u.upgraded.len(),
            "failed": u.failed.len(),
            "current": current,
            "version": version,
            "limit": u.limit,
            "max_down": u.max_down,
        });
        println!("{line}");
    } else {
        eprintln!(
            "plush upgrade: {current}/{} hosts now run {version} ({} upgraded; at most {} down at once, {} seen)",
            s.host_count(),
            u.upgraded.len(),
            u.limit,
            u.max_down
        );
    }
    let failed_hosts = s.c.count(HostState::Failed);
    s.dismantle();
    drop(s);
    if !unreachable.is_empty() || failed_hosts > 0 {
        ExitCode::from(UNREACHABLE)
    } else if !u.failed.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
