//! `plush run`: invite the hosts, build the tree, run one command everywhere, print the results
//! grouped as `clush -b` does, dismantle, and exit with clush's status.
//!
//! Hosts come from one of:
//! - `--local N`: N clients on this machine, on the loopback addresses 127.0.0.1, 127.0.0.2, ...
//!   (`NodeId::loopback`), all on one port free on every one of them, started by the local
//!   launcher. Output names them by address.
//! - `-w HOSTS` (pdsh/ClusterShell host sets, repeatable) or `-f FILE`, less `-x HOSTS`: each
//!   name is resolved, and its client listens on `name:--port`. Clients are started where none
//!   answers by `--launcher` (ssh by default: the system ssh in batch mode, which copies the
//!   binary where it is missing). Output names them by the names given, folded. A name that
//!   does not resolve is unreachable (named on stderr), not a usage error.
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

use clap::Args;
use plush::hostset::{addr_label, common_port, expand, fold_addrs, fold_names};
use plush_core::wire::ExitStatus;
use plush_core::{Config, HostState, NodeId};
use plush_mio::{Cluster, ClusterConfig, LaunchMethod, ResultGroup, SshLaunch};
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
/// The port clients listen on, on hosts given with -w/-f, unless --port says otherwise.
pub const DEFAULT_PORT: u16 = 47_470;
/// The progress line is redrawn at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Flags of `plush run`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("targets").required(true).multiple(false)))]
pub struct RunArgs {
    /// Start N clients on this machine (1 to 65534), each on its own loopback address
    /// (127.0.0.1, 127.0.0.2, ...): no setup needed.
    #[arg(long, value_name = "N", group = "targets",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LOCAL)))]
    pub local: Option<u32>,

    /// Hosts, in pdsh/ClusterShell syntax: `node[01-64,70]`, `10.0.0.[1-254]`, comma lists.
    /// May be given more than once.
    #[arg(short = 'w', value_name = "HOSTS", group = "targets")]
    pub hosts: Vec<String>,

    /// A file of hosts: one host or host set per line; blank lines and `#` comments skipped.
    #[arg(short = 'f', long = "hostfile", value_name = "FILE", group = "targets")]
    pub hostfile: Option<std::path::PathBuf>,

    /// Hosts to leave out (same syntax as -w). May be given more than once.
    #[arg(short = 'x', value_name = "HOSTS")]
    pub exclude: Vec<String>,

    /// The port every client listens on, on its host (with -w/-f).
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// How clients are started where none answers: `local` (a process on this machine, on the
    /// host's address: the default with --local), `ssh` (the system ssh in batch mode; copies
    /// the plush binary where it is missing: the default with -w/-f), or `command` (see
    /// --launcher-command).
    #[arg(long, value_enum)]
    pub launcher: Option<LauncherKind>,

    /// An option for ssh, passed before the host name (e.g. `--ssh-option=-F/path/config`,
    /// `--ssh-option=-oPort=2222`). May be given more than once.
    #[arg(long = "ssh-option", value_name = "OPT", allow_hyphen_values = true)]
    pub ssh_options: Vec<String>,

    /// With `--launcher command`: a shell command that starts a client, with `{host}`,
    /// `{addr}`, `{ip}`, `{port}` and `{plush}` (this plush binary) replaced, shell-quoted. The
    /// cluster key is on its stdin: the client reads it with `--key-file -`. Example:
    /// `ssh {host} plush client --listen {addr} --key-file -`.
    #[arg(long, value_name = "TEMPLATE")]
    pub launcher_command: Option<String>,

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

/// The launchers `--launcher` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LauncherKind {
    /// A client process on this machine.
    Local,
    /// The system ssh client.
    Ssh,
    /// A user command (--launcher-command).
    Command,
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

/// The hosts to run on: (id, name) pairs, in order, and what could not be resolved (by name).
type HostList = (Vec<(NodeId, String)>, Vec<(String, String)>);

/// The names given with -w and -f, less those of -x, in order, each once.
fn host_names(args: &RunArgs) -> Result<Vec<String>, String> {
    let mut sets: Vec<String> = args.hosts.clone();
    if let Some(path) = &args.hostfile {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for (k, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            expand(line).map_err(|e| format!("{}:{}: {e}", path.display(), k + 1))?;
            sets.push(line.to_owned());
        }
    }
    let mut names = Vec::new();
    for set in &sets {
        names.extend(expand(set)?);
    }
    let mut excluded = std::collections::HashSet::new();
    for set in &args.exclude {
        excluded.extend(expand(set)?);
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| !excluded.contains(n) && seen.insert(n.clone()));
    if names.is_empty() {
        return Err("no hosts left to run on".into());
    }
    Ok(names)
}

/// Resolve each name to the address its client listens on (`name:port`, the first address).
/// Two names for one address are refused: a host is one client.
fn resolve(names: Vec<String>, port: u16) -> Result<HostList, String> {
    use std::net::ToSocketAddrs;
    let (mut hosts, mut unresolved) = (Vec::new(), Vec::new());
    let mut by_addr: std::collections::HashMap<NodeId, String> = std::collections::HashMap::new();
    for name in names {
        match (name.as_str(), port).to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => {
                let id = NodeId::new(addr);
                if let Some(other) = by_addr.insert(id, name.clone()) {
                    return Err(format!("{other} and {name} are the same address {addr}"));
                }
                hosts.push((id, name));
            }
            Ok(None) => unresolved.push((name, "the name has no address".to_owned())),
            Err(e) => unresolved.push((name, format!("cannot resolve: {e}"))),
        }
    }
    Ok((hosts, unresolved))
}

/// Run `plush run`.
pub fn run(args: &RunArgs) -> ExitCode {
    let (hosts, unresolved, label_by_name) = if let Some(n) = args.local {
        let Some(port) = free_port(n) else {
            eprintln!("plush run: no port is free on all of the {n} loopback addresses");
            return ExitCode::from(UNREACHABLE);
        };
        let hosts: Vec<(NodeId, String)> =
            (0..n).map(|i| NodeId::loopback(i, port)).map(|id| (id, id.addr().ip().to_string())).collect();
        (hosts, Vec::new(), false)
    } else {
        let resolved = host_names(args).and_then(|names| resolve(names, args.port));
        match resolved {
            Ok((hosts, unresolved)) => (hosts, unresolved, true),
            Err(e) => {
                eprintln!("plush run: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let kind = args.launcher.unwrap_or(if args.local.is_some() { LauncherKind::Local } else { LauncherKind::Ssh });
    let method = match launch_method(args, kind) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("plush run: {e}");
            return ExitCode::from(2);
        }
    };
    let core = Config { max_children: args.degree as usize, ..Config::default() };
    let launch_timeout = if kind == LauncherKind::Local { Duration::from_secs(10) } else { Duration::from_secs(60) };
    let cfg = ClusterConfig { core, method, launch_timeout, ..ClusterConfig::default() };
    let mut c = match Cluster::start(cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("plush run: cannot start the controller: {e}");
            return ExitCode::from(UNREACHABLE);
        }
    };
    let t0 = Instant::now();
    let mut progress = Progress::new(t0);
    let code = session(&mut c, args, &hosts, &unresolved, label_by_name, &mut progress, t0);
    progress.clear();
    // Dropping the cluster kills and reaps any client still running.
    drop(c);
    ExitCode::from(code)
}

/// The launch method for `kind`; `None` is the cluster's default (local).
fn launch_method(args: &RunArgs, kind: LauncherKind) -> Result<Option<LaunchMethod>, String> {
    if args.launcher_command.is_some() != (kind == LauncherKind::Command) {
        return Err("--launcher-command goes with --launcher command, and only with it".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the plush binary: {e}"))?;
    Ok(match kind {
        LauncherKind::Local => None,
        LauncherKind::Ssh => Some(LaunchMethod::Ssh(
            SshLaunch::new(exe, args.ssh_options.clone()).map_err(|e| format!("cannot read the plush binary: {e}"))?,
        )),
        LauncherKind::Command => {
            Some(LaunchMethod::Command { template: args.launcher_command.clone().unwrap_or_default(), plush: exe })
        }
    })
}

/// Everything after the controller started; returns the exit status.
fn session(
    c: &mut Cluster,
    args: &RunArgs,
    named: &[(NodeId, String)],
    unresolved: &[(String, String)],
    label_by_name: bool,
    progress: &mut Progress,
    t0: Instant,
) -> u8 {
    let hosts: Vec<NodeId> = named.iter().map(|(id, _)| *id).collect();
    let hosts = &hosts[..];
    let n = u32::try_from(named.len() + unresolved.len()).unwrap_or(u32::MAX);
    let names: std::collections::HashMap<NodeId, &str> = named.iter().map(|(id, name)| (*id, name.as_str())).collect();
    c.add_named_hosts(named);
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
    let label = |h: &NodeId| -> String {
        match names.get(h) {
            Some(name) if label_by_name => (*name).to_owned(),
            _ => addr_label(&h.addr(), common),
        }
    };
    print_groups(&groups, args.json, &|nodes: &[NodeId]| {
        if label_by_name {
            let v: Vec<String> = nodes.iter().map(label).collect();
            fold_names(&v)
        } else {
            let addrs: Vec<SocketAddr> = nodes.iter().map(NodeId::addr).collect();
            fold_addrs(&addrs)
        }
    });

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
                    let _ = writeln!(err, "plush: {}: {why}", label(h));
                }
            }
        }
    }
    let lost: Vec<NodeId> = joined.iter().filter(|h| !answered.contains(h)).copied().collect();
    for h in &lost {
        let now = c.host(h).map_or(HostState::Pending, |i| i.state);
        let _ = writeln!(err, "plush: {}: lost (joined, gave no result; now {now:?})", label(h));
    }
    let unreachable: Vec<NodeId> =
        hosts.iter().filter(|h| !joined.contains(h) && !answered.contains(h)).copied().collect();
    for h in &unreachable {
        let why = match c.host(h) {
            Some(i) if i.state == HostState::Failed => i.why.unwrap_or("failed").to_owned(),
            Some(i) => match i.why {
                Some(why) => format!("not joined within {:?}: {why}", join_deadline(n)),
                None => format!("not joined within {:?} ({:?})", join_deadline(n), i.state),
            },
            None => "never invited".to_owned(),
        };
        let _ = writeln!(err, "plush: {}: unreachable: {why}", label(h));
    }
    for (name, why) in unresolved {
        let _ = writeln!(err, "plush: {name}: unreachable: {why}");
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
    if !lost.is_empty() || !unreachable.is_empty() || !unresolved.is_empty() {
        code = UNREACHABLE;
    }
    if args.json {
        let summary = json!({"summary": {
            "hosts": hosts.len() + unresolved.len(),
            "joined": joined.union(&answered).count(),
            "ok": ok,
            "failed": failed,
            "unreachable": unreachable.len() + unresolved.len(),
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
fn print_groups(groups: &[ResultGroup], json: bool, fold: &dyn Fn(&[NodeId]) -> String) {
    let mut out = std::io::stdout().lock();
    for g in groups {
        let nodes = fold(&g.nodes);
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
