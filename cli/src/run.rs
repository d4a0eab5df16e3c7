//! `plush run`: invite the hosts, build the tree, run one command everywhere, print the results
//! grouped as `clush -b` does, dismantle, and exit with clush's status.
//!
//! This slice has one way to get hosts: `--local N` starts N clients on this machine, on the
//! loopback addresses 127.0.0.1, 127.0.0.2, ... (`NodeId::loopback`), all on one port free on
//! every one of them, through [`plush_mio::Cluster`]'s local launcher.
//!
//! Steps and their deadlines:
//! 1. Join: wait until every host joined or failed, at most [`join_deadline`] (20 s plus 10 ms
//!    per host). Hosts not joined then are *unreachable*.
//! 2. Run: the command on every joined host, with `--timeout` if given (else none; the wait
//!    ends when every host joined at the start answered or failed, or the root reports the job
//!    complete). Joined hosts without a result are *lost*.
//! 3. Print the groups (stdout), then name every host that failed, was lost or unreachable
//!    (stderr, one line each with the reason).
//! 4. Dismantle: wait at most [`dismantle_deadline`] for every client to exit, then kill and
//!    reap the rest (the `Cluster` does; dropping it kills and reaps anything left).
//!
//! Exit status, as clush's: the largest remote exit status, where a signal `n` counts as
//! `128 + n` (the shell's convention), a command that could not be started as 127, a timed-out
//! or cancelled command as 255; 255 when any host was unreachable or lost, or when the
//! controller itself could not start; 2 for a usage error (clap).

use crate::hostset::{addr_label, common_port, fold_addrs};
use clap::Args;
use plush_core::wire::ExitStatus;
use plush_core::{Config, HostState, NodeId};
use plush_mio::{Cluster, ClusterConfig, ResultGroup};
use serde_json::json;
use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Most local clients: the loopback addresses 127.0.0.1 to 127.0.255.254.
const MAX_LOCAL: u32 = 65_534;
/// Largest degree: a sibling list on the wire holds at most this many entries.
const MAX_DEGREE: u32 = plush_core::wire::MAX_LIST as u32;
/// Exit status for "some host could not be reached, or was lost" (clush's).
const UNREACHABLE: u8 = 255;
/// The progress line is redrawn at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Flags of `plush run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Start N clients on this machine (1 to 65534), each on its own loopback address
    /// (127.0.0.1, 127.0.0.2, ...): no setup needed.
    #[arg(long, value_name = "N", required = true,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LOCAL)))]
    pub local: u32,

    /// Kill the command on every host after SECS seconds (more than 0; fractions allowed); such
    /// hosts are reported `timed out` [default: no timeout].
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// Most children of any node in the tree: sets `Config::max_children` of the controller's
    /// configuration (the launched clients still use their default, 12).
    #[arg(long, value_name = "D", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DEGREE)))]
    pub degree: u32,

    /// Print JSON lines: one object per group of identical results (`nodes`, `count`, `exit`,
    /// `status`, `truncated`, `output`), then `{"summary": {...}}`.
    #[arg(long)]
    pub json: bool,

    /// The command and its arguments, after `--` (run directly, not through a shell).
    #[arg(last = true, required = true, num_args = 1.., value_name = "CMD")]
    pub command: Vec<String>,
}

/// A timeout: a finite number of seconds, more than 0.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("must be a finite number of seconds, more than 0, not {s}"));
    }
    Duration::try_from_secs_f64(v).map_err(|e| format!("{s}: {e}"))
}

/// How long the hosts may take to join: 20 s plus 10 ms per host.
pub fn join_deadline(n: u32) -> Duration {
    Duration::from_secs(20) + Duration::from_millis(10) * n
}

/// How long the clients may take to exit once dismantled, before they are killed: 10 s plus
/// 2 ms per host.
pub fn dismantle_deadline(n: u32) -> Duration {
    Duration::from_secs(10) + Duration::from_millis(2) * n
}

/// The exit status one host's result stands for (see the module docs).
fn code_of(status: &ExitStatus) -> u8 {
    match *status {
        ExitStatus::Exited(c) => u8::try_from(c).unwrap_or(UNREACHABLE),
        ExitStatus::Signaled(n) => u8::try_from(128 + i64::from(n)).unwrap_or(UNREACHABLE),
        ExitStatus::SpawnFailed => 127,
        ExitStatus::TimedOut | ExitStatus::Cancelled => UNREACHABLE,
    }
}

/// How a result is named in headers and on stderr; `None` for success.
fn status_text(status: &ExitStatus) -> Option<String> {
    match *status {
        ExitStatus::Exited(0) => None,
        ExitStatus::Exited(c) => Some(format!("exit {c}")),
        ExitStatus::Signaled(n) => Some(format!("signal {n}")),
        ExitStatus::TimedOut => Some("timed out".into()),
        ExitStatus::Cancelled => Some("cancelled".into()),
        ExitStatus::SpawnFailed => Some("spawn failed".into()),
    }
}

/// A port free on every one of `n` loopback addresses (bound and released at once), searched
/// below the ephemeral range from a start that differs between runs.
fn free_port(n: u32) -> Option<u16> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let start = u64::from(nanos ^ std::process::id().wrapping_mul(2_654_435_761));
    (0..64u64)
        .map(|k| 20_000 + ((start + k * 7_919) % 12_000) as u16)
        .find(|&port| (0..n).all(|i| TcpListener::bind(NodeId::loopback(i, port).addr()).is_ok()))
}

/// The progress line on stderr, only when stderr is a terminal: redrawn in place with `\r`.
struct Progress {
    on: bool,
    t0: Instant,
    last: Option<Instant>,
}

impl Progress {
    fn new(t0: Instant) -> Progress {
        Progress { on: std::io::stderr().is_terminal(), t0, last: None }
    }

    fn show(&mut self, joined: usize, results: Option<(usize, usize)>, expected: u32) {
        if !self.on || self.last.is_some_and(|l| l.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let results = results.map_or(String::new(), |(r, e)| format!("  results {r}/{e}"));
        let secs = self.t0.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\rjoined {joined}/{expected}{results}  {secs:.1}s\x1b[K");
        let _ = err.flush();
    }

    fn clear(&mut self) {
        if self.on && self.last.take().is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

/// Whole milliseconds, for the JSON summary.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Run `plush run`.
pub fn run(args: &RunArgs) -> ExitCode {
    let n = args.local;
    let Some(port) = free_port(n) else {
        eprintln!("plush run: no port is free on all of the {n} loopback addresses");
        return ExitCode::from(UNREACHABLE);
    };
    let hosts: Vec<NodeId> = (0..n).map(|i| NodeId::loopback(i, port)).collect();
    let core = Config { max_children: args.degree as usize, ..Config::default() };
    let mut c = match Cluster::start(ClusterConfig { core, ..ClusterConfig::default() }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("plush run: cannot start the controller: {e}");
            return ExitCode::from(UNREACHABLE);
        }
    };
    let t0 = Instant::now();
    let mut progress = Progress::new(t0);
    let code = session(&mut c, args, &hosts, &mut progress, t0);
    progress.clear();
    // Dropping the cluster kills and reaps any client still running.
    drop(c);
    ExitCode::from(code)
}

/// Everything after the controller started; returns the exit status.
fn session(c: &mut Cluster, args: &RunArgs, hosts: &[NodeId], progress: &mut Progress, t0: Instant) -> u8 {
    let n = args.local;
    c.add_hosts(hosts);
    let settled = c.wait_until(join_deadline(n), |c| {
        let joined = c.count(HostState::Joined);
        progress.show(joined, None, n);
        joined + c.count(HostState::Failed) == hosts.len()
    });
    if let Err(e) = settled {
        eprintln!("plush run: the event loop failed: {e}");
    }
    let build = t0.elapsed();
    let joined: BTreeSet<NodeId> = c.hosts().filter(|(_, h)| h.state == HostState::Joined).map(|(id, _)| *id).collect();

    let argv: Vec<&str> = args.command.iter().map(String::as_str).collect();
    let mut groups: Vec<ResultGroup> = Vec::new();
    let mut run_ms = 0;
    if !joined.is_empty() {
        let started = c.run_with(&argv, args.timeout, |c, got, expected| {
            progress.show(c.count(HostState::Joined), Some((got, expected)), n);
        });
        match started {
            Ok(out) => {
                run_ms = ms(out.elapsed);
                groups = out.groups;
            }
            Err(e) => eprintln!("plush run: the command could not be run: {e}"),
        }
    }
    progress.clear();

    // Largest group first, then by first node.
    groups.sort_by(|a, b| b.nodes.len().cmp(&a.nodes.len()).then_with(|| a.nodes.first().cmp(&b.nodes.first())));
    let all: Vec<SocketAddr> = hosts.iter().map(NodeId::addr).collect();
    let common = common_port(&all);
    print_groups(&groups, args.json);

    // Name every host that did not succeed, with the reason.
    let answered: BTreeSet<NodeId> = groups.iter().flat_map(|g| g.nodes.iter().copied()).collect();
    let mut err = std::io::stderr().lock();
    let (mut ok, mut failed) = (0usize, 0usize);
    for g in &groups {
        match status_text(&g.status) {
            None => ok += g.nodes.len(),
            Some(why) => {
                failed += g.nodes.len();
                for h in &g.nodes {
                    let _ = writeln!(err, "plush: {}: {why}", addr_label(&h.addr(), common));
                }
            }
        }
    }
    let lost: Vec<NodeId> = joined.iter().filter(|h| !answered.contains(h)).copied().collect();
    for h in &lost {
        let now = c.host(h).map_or(HostState::Pending, |i| i.state);
        let _ = writeln!(err, "plush: {}: lost (joined, gave no result; now {now:?})", addr_label(&h.addr(), common));
    }
    let unreachable: Vec<NodeId> =
        hosts.iter().filter(|h| !joined.contains(h) && !answered.contains(h)).copied().collect();
    for h in &unreachable {
        let why = match c.host(h) {
            Some(i) if i.state == HostState::Failed => i.why.unwrap_or("failed").to_owned(),
            Some(i) => format!("not joined within {:?} ({:?})", join_deadline(n), i.state),
            None => "never invited".to_owned(),
        };
        let _ = writeln!(err, "plush: {}: unreachable: {why}", addr_label(&h.addr(), common));
    }
    drop(err);

    let d0 = Instant::now();
    match c.dismantle(dismantle_deadline(n)) {
        Ok(d) if d.killed > 0 => eprintln!("plush run: {} clients did not exit when dismantled; killed", d.killed),
        Ok(_) => {}
        Err(e) => eprintln!("plush run: dismantling failed: {e}"),
    }
    let left = c.launched_pids();
    if !left.is_empty() {
        eprintln!("plush run: {} clients still running after the dismantle; killing them", left.len());
    }
    let dismantle_ms = ms(d0.elapsed());

    let mut code = groups.iter().map(|g| code_of(&g.status)).max().unwrap_or(0);
    if !lost.is_empty() || !unreachable.is_empty() {
        code = UNREACHABLE;
    }
    if args.json {
        let summary = json!({"summary": {
            "hosts": hosts.len(),
            "joined": joined.union(&answered).count(),
            "ok": ok,
            "failed": failed,
            "unreachable": unreachable.len(),
            "lost": lost.len(),
            "build_ms": ms(build),
            "run_ms": run_ms,
            "dismantle_ms": dismantle_ms,
            "exit": code,
        }});
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{summary}");
        let _ = out.flush();
    }
    code
}

/// Print the groups on stdout: `clush -b`'s layout, or JSON lines. Write errors (a closed pipe)
/// are ignored: the hosts must still be dismantled.
fn print_groups(groups: &[ResultGroup], json: bool) {
    let mut out = std::io::stdout().lock();
    for g in groups {
        let addrs: Vec<SocketAddr> = g.nodes.iter().map(NodeId::addr).collect();
        let nodes = fold_addrs(&addrs);
        let status = status_text(&g.status);
        if json {
            let line = json!({
                "nodes": nodes,
                "count": g.nodes.len(),
                "exit": code_of(&g.status),
                "status": status.as_deref().unwrap_or("ok"),
                "truncated": g.truncated,
                "output": String::from_utf8_lossy(&g.output),
            });
            let _ = writeln!(out, "{line}");
        } else {
            let mut header = format!("{nodes} ({})", g.nodes.len());
            if let Some(s) = status {
                header.push(' ');
                header.push_str(&s);
            }
            if g.truncated {
                header.push_str(" [output truncated]");
            }
            let _ = writeln!(out, "---------------\n{header}\n---------------");
            let _ = out.write_all(&g.output);
            if !g.output.is_empty() && !g.output.ends_with(b"\n") {
                let _ = out.write_all(b"\n");
            }
        }
    }
    let _ = out.flush();
}
