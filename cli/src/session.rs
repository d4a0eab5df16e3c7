//! What `plush run`, `plush shell` and `plush apply` share: the host flags ([`HostArgs`]),
//! starting a controller and inviting the hosts ([`Session::start`], [`Session::join`]),
//! naming and folding hosts in output, printing a job's results grouped as `clush -b` does or
//! as JSON lines ([`Session::report`]), and dismantling ([`Session::dismantle`]).
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
//! Exit status of a job, as clush's: the largest remote exit status, where a signal `n` counts
//! as `128 + n` (the shell's convention), a command that could not be started as 127, a
//! timed-out or cancelled command as 255; 255 when any host was unreachable or lost.

use crate::journal::{self, Journal, PrintRec, Record};
use clap::Args;
use plush::hostset::{addr_label, common_port, expand, fold_addrs, fold_names};
use plush_core::wire::ExitStatus;
use plush_core::{Config, HostState, NodeId};
use plush_mio::{Body, Cluster, ClusterConfig, JobSpec, LaunchMethod, PushJob, ResultGroup, RunOutcome, SshLaunch};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most local clients: the loopback addresses 127.0.0.1 to 127.0.255.254.
pub const MAX_LOCAL: u32 = 65_534;
/// Largest degree: a sibling list on the wire holds at most this many entries.
pub const MAX_DEGREE: u32 = plush_core::wire::MAX_LIST as u32;
/// Exit status for "some host could not be reached, or was lost" (clush's).
pub const UNREACHABLE: u8 = 255;
/// Exit status after Ctrl-C (the shell's 128 + SIGINT).
pub const INTERRUPTED: u8 = 130;
/// The port clients listen on, on hosts given with -w/-f, unless --port says otherwise.
pub const DEFAULT_PORT: u16 = 47_470;
/// The progress line is redrawn at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Partial live-output lines kept per host (`--stream`); a longer line is printed in pieces.
const MAX_PARTIAL_LINE: usize = 64 << 10;

/// The hosts to work on and how to reach them (shared by `run`, `shell`, `apply`).
#[derive(Clone, Debug, Default, Args)]
#[command(group(clap::ArgGroup::new("targets").multiple(false)))]
pub struct HostArgs {
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

    /// With `--launcher ssh`: a directory of client builds, `DIR/<arch>/plush` for each
    /// architecture as `uname -m` names it (`benches/dist.sh` makes one). Each host gets the
    /// build for its own architecture; a host whose architecture has none is refused before
    /// anything is copied. [default: `plush-clients` beside this plush binary if it exists,
    /// else this binary alone, for hosts of its own architecture]
    #[arg(long, value_name = "DIR")]
    pub client_binaries: Option<std::path::PathBuf>,

    /// With `--launcher command`: a shell command that starts a client, with `{host}`,
    /// `{addr}`, `{ip}`, `{port}` and `{plush}` (this plush binary) replaced, shell-quoted. The
    /// cluster key is on its stdin: the client reads it with `--key-file -`. Example:
    /// `ssh {host} plush client --listen {addr} --key-file -`.
    #[arg(long, value_name = "TEMPLATE")]
    pub launcher_command: Option<String>,

    /// Most children of any node in the tree. Clients started by the local and ssh launchers
    /// get it (`plush client --max-children D`); a `--launcher-command` template must pass it
    /// itself. Clients already running keep theirs.
    #[arg(long, value_name = "D", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DEGREE)))]
    pub degree: u32,

    /// Clients started at once, and invitations outstanding, at most (as pdsh's -f): more
    /// overlaps the launchers' round trips, but each launch over ssh costs both machines CPU.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub fanout: u32,

    /// Give up on hosts not joined after SECS seconds [default: once no host joined or failed
    /// for 20 s, at most 300 s].
    #[arg(long, value_name = "SECS", value_parser = crate::run::parse_timeout)]
    pub join_timeout: Option<Duration>,

    /// Leave clients of another Plush version as they are. By default a client whose version
    /// differs from this one's receives this binary through the tree, restarts on it and
    /// rejoins (a quarter of the hosts at a time at most); clusters that share this machine's
    /// file system and binary do not need it.
    #[arg(long)]
    pub no_upgrade: bool,

    /// A maintenance script (at most 64 KiB) that every client runs with `/bin/sh -c` before it
    /// joins (cleanup, checks): a host whose script fails (non-zero exit, or still running after
    /// 2 minutes) is reported with the script's status and output, and does not join.
    #[arg(long, value_name = "FILE")]
    pub maintenance: Option<std::path::PathBuf>,

    /// How long the clients outlive this controller if it dies (a crash, a lost terminal):
    /// their jobs run on and their results are held meanwhile; a controller that attaches
    /// within it finds the overlay, and after it the overlay dismantles itself and every client
    /// kills its jobs and exits. `5s`, `90s`, `10m`, `2h` (a bare number is seconds; 1 s to 30
    /// days). Keep it well above the time a root change takes (about 10 s at worst), or an
    /// overlay whose controller is alive but between roots may end [default: 10m, the clients'
    /// own]
    #[arg(long, value_name = "DURATION", value_parser = parse_linger)]
    pub linger: Option<Duration>,

    /// Who launches the clients: `controller` (this machine launches every host, the default)
    /// or `tree` (this machine launches the first host; then members that joined launch
    /// shares of the others from their own hosts with the same launcher, ssh from host to host,
    /// and hand parts on to the hosts they launched; a host a member cannot launch comes back
    /// here). With `--launcher ssh` or `local`.
    #[arg(long, value_enum, default_value_t = crate::sim::LaunchFrom::Controller)]
    pub launch_from: crate::sim::LaunchFrom,

    /// With `--launch-from tree`: launches each member has under way at once.
    #[arg(long, value_name = "K", default_value_t = crate::sim::DEFAULT_LAUNCH_FANOUT,
          value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub launch_fanout: u32,

    /// Where the session journal is kept.
    #[command(flatten)]
    pub session: SessionArgs,
}

/// A `--linger` value: a number with an optional unit (`s`, `m`, `h`; seconds without one), from
/// 1 s to 30 days.
pub fn parse_linger(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit.trim() {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        u => return Err(format!("{s:?}: unknown unit {u:?} (s, m or h)")),
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("{s:?} is not a duration such as 30s, 10m or 2h"))?;
    let secs = v * scale;
    if !secs.is_finite() || !(1.0..=30.0 * 86_400.0).contains(&secs) {
        return Err(format!("{s:?}: a linger is 1 s to 30 days"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Where the session journal goes (see [`crate::journal`]), and whether it outlives the session.
#[derive(Clone, Debug, Default, Args)]
pub struct SessionArgs {
    /// Keep this session's journal under DIR/plush/sessions/ID/ [default: $XDG_STATE_HOME, else
    /// ~/.local/state]: after a crash of this controller, `plush attach` takes the session over
    /// from there, and `plush sessions` lists it.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// Keep the session's journal directory when the session ends (it is removed by default).
    #[arg(long)]
    pub keep_session: bool,
}

impl HostArgs {
    /// Hosts given at all (`--local`, `-w` or `-f`).
    pub fn given(&self) -> bool {
        self.local.is_some() || !self.hosts.is_empty() || self.hostfile.is_some()
    }
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

/// How long joining may go on without a single host joining or failing before the hosts not
/// joined are given up (unreachable): launches over ssh on many hosts take minutes, and a
/// fixed deadline either cuts them short or makes a dead host wait for long.
pub const JOIN_STALL: Duration = Duration::from_secs(20);
/// The longest joining may take, progress or not (the controller's invitation expiry).
pub const JOIN_MAX: Duration = Duration::from_secs(300);

/// How long the clients may take to exit once dismantled, before they are killed: 10 s plus
/// 2 ms per host.
pub fn dismantle_deadline(n: usize) -> Duration {
    Duration::from_secs(10) + Duration::from_millis(2) * u32::try_from(n).unwrap_or(u32::MAX)
}

/// Whether a build has settled, by [`Session::join`]'s rule: every host invited joined or
/// failed, or `--join-timeout` passed, or else no host joined or failed for [`JOIN_STALL`] (and
/// at most [`JOIN_MAX`] passed).
#[derive(Debug)]
struct JoinWatch {
    /// Hosts invited.
    want: usize,
    started: Instant,
    limit: Duration,
    stall: Duration,
    /// Hosts joined or failed at the last look, and when that number last changed.
    last: usize,
    moved: Instant,
}

impl JoinWatch {
    fn new(want: usize, join_timeout: Option<Duration>) -> JoinWatch {
        let limit = join_timeout.unwrap_or(JOIN_MAX);
        let stall = if join_timeout.is_some() { limit } else { JOIN_STALL };
        let now = Instant::now();
        JoinWatch { want, started: now, limit, stall, last: usize::MAX, moved: now }
    }

    /// Whether the build has settled, `c` being as it is now.
    fn settled(&mut self, c: &Cluster) -> bool {
        let done = c.count(HostState::Joined) + c.count(HostState::Failed);
        if done != self.last {
            (self.last, self.moved) = (done, Instant::now());
        }
        done >= self.want || self.moved.elapsed() >= self.stall || self.started.elapsed() >= self.limit
    }

    /// Time left before the limit.
    fn left(&self) -> Duration {
        self.limit.saturating_sub(self.started.elapsed())
    }
}

/// The exit status one host's result stands for (see the module docs).
pub fn code_of(status: &ExitStatus) -> u8 {
    match *status {
        ExitStatus::Exited(c) => u8::try_from(c).unwrap_or(UNREACHABLE),
        ExitStatus::Signaled(n) => u8::try_from(128 + i64::from(n)).unwrap_or(UNREACHABLE),
        ExitStatus::SpawnFailed => 127,
        ExitStatus::TimedOut | ExitStatus::Cancelled | ExitStatus::Lost => UNREACHABLE,
    }
}

/// The maintenance script in `path`: text, at most [`plush_core::wire::MAX_SCRIPT`] bytes.
fn read_script(path: &std::path::Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("--maintenance {}: {e}", path.display()))?;
    if bytes.len() > plush_core::wire::MAX_SCRIPT {
        return Err(format!(
            "--maintenance {}: {} bytes; a maintenance script is at most {} KiB",
            path.display(),
            bytes.len(),
            plush_core::wire::MAX_SCRIPT >> 10
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("--maintenance {}: not UTF-8 text", path.display()))
}

/// How a result is named in headers and on stderr; `None` for success.
pub fn status_text(status: &ExitStatus) -> Option<String> {
    match *status {
        ExitStatus::Exited(0) => None,
        ExitStatus::Exited(c) => Some(format!("exit {c}")),
        ExitStatus::Signaled(n) => Some(format!("signal {n}")),
        ExitStatus::TimedOut => Some("timed out".into()),
        ExitStatus::Cancelled => Some("cancelled".into()),
        ExitStatus::SpawnFailed => Some("spawn failed".into()),
        ExitStatus::Lost => Some("lost during the job (its client restarted; not run again)".into()),
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

/// How long an upgraded batch may take to rejoin with the new version.
pub const UPGRADE_REJOIN: Duration = Duration::from_secs(60);

/// What [`Session::upgrade`] did.
#[derive(Clone, Debug, Default)]
pub struct UpgradeSummary {
    /// Hosts back with this build.
    pub upgraded: Vec<NodeId>,
    /// Hosts not upgraded, and why.
    pub failed: Vec<(NodeId, String)>,
    /// At most this many at a time.
    pub limit: usize,
    /// The most hosts seen down at once.
    pub max_down: usize,
}

/// What [`Session::run_start`] starts.
enum Start<'a> {
    Job(JobSpec<'a>),
    Push(PushJob<'a>),
    /// A job an earlier controller of the session started (`plush attach`), already resumed in
    /// the cluster: its id and the hosts it targeted.
    Resume(u64, Vec<NodeId>),
}

/// The progress line on stderr, only when stderr is a terminal: redrawn in place with `\r`.
pub struct Progress {
    on: bool,
    t0: Instant,
    last: Option<Instant>,
    /// During a push: (the controller's chunk bytes sent before it, the file's size).
    pub bytes: Option<(u64, u64)>,
    /// During a push: bytes the controller sent of it so far.
    pub sent: u64,
}

impl Progress {
    /// A progress line timed from `t0`; shown only when stderr is a terminal.
    pub fn new(t0: Instant) -> Progress {
        Progress { on: std::io::stderr().is_terminal(), t0, last: None, bytes: None, sent: 0 }
    }

    /// Redraw (at most every 100 ms): hosts joined of expected, results of expected.
    pub fn show(&mut self, joined: usize, results: Option<(usize, usize)>, expected: usize) {
        if !self.on || self.last.is_some_and(|l| l.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let mut results = results.map_or(String::new(), |(r, e)| format!("  results {r}/{e}"));
        if let Some((_, size)) = self.bytes {
            let mib = |b: u64| b as f64 / f64::from(1 << 20);
            results = format!("  sent {:.1}/{:.1} MiB{results}", mib(self.sent.min(size)), mib(size));
        }
        let secs = self.t0.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\rjoined {joined}/{expected}{results}  {secs:.1}s\x1b[K");
        let _ = err.flush();
    }

    /// Erase the line, if one is shown.
    pub fn clear(&mut self) {
        if self.on && self.last.take().is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

/// Whole milliseconds, for JSON.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The hosts to run on: (id, name) pairs, in order, and what could not be resolved (by name).
pub type HostList = (Vec<(NodeId, String)>, Vec<(String, String)>);

/// The names of host sets (`-w` syntax) and a host file, less exclusions, in order, each once.
pub fn host_names(
    sets: &[String],
    hostfile: Option<&std::path::Path>,
    exclude: &[String],
) -> Result<Vec<String>, String> {
    let mut sets: Vec<String> = sets.to_vec();
    if let Some(path) = hostfile {
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
    for set in exclude {
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
pub fn resolve(names: Vec<String>, port: u16) -> Result<HostList, String> {
    use std::net::ToSocketAddrs;
    let (mut hosts, mut unresolved) = (Vec::new(), Vec::new());
    let mut by_addr: HashMap<NodeId, String> = HashMap::new();
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

/// The launch method for `kind`; `None` is the cluster's default (local).
fn launch_method(args: &HostArgs, kind: LauncherKind) -> Result<Option<LaunchMethod>, String> {
    if args.launcher_command.is_some() != (kind == LauncherKind::Command) {
        return Err("--launcher-command goes with --launcher command, and only with it".into());
    }
    if args.launch_from == crate::sim::LaunchFrom::Tree && kind == LauncherKind::Command {
        return Err("--launch-from tree goes with --launcher ssh or local".into());
    }
    if args.client_binaries.is_some() && kind != LauncherKind::Ssh {
        return Err("--client-binaries goes with --launcher ssh, and only with it".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the plush binary: {e}"))?;
    Ok(match kind {
        LauncherKind::Local => None,
        LauncherKind::Ssh => {
            let beside = exe.parent().map(|d| d.join("plush-clients")).filter(|d| d.is_dir());
            let mut ssh = match args.client_binaries.clone().or(beside) {
                Some(dir) => SshLaunch::with_builds(
                    plush_mio::client_builds(&dir).map_err(|e| format!("--client-binaries: {e}"))?,
                    args.ssh_options.clone(),
                ),
                None => SshLaunch::new(exe, args.ssh_options.clone())
                    .map_err(|e| format!("cannot read the plush binary: {e}"))?,
            };
            ssh.client_args = vec!["--max-children".into(), args.degree.to_string()];
            if args.launch_from == crate::sim::LaunchFrom::Tree {
                // The clients launch in turn, over ssh from their own hosts.
                ssh.client_args.extend(plush_mio::MemberLauncher::Ssh(args.ssh_options.clone()).client_flags());
            }
            Some(LaunchMethod::Ssh(ssh))
        }
        LauncherKind::Command => {
            Some(LaunchMethod::Command { template: args.launcher_command.clone().unwrap_or_default(), plush: exe })
        }
    })
}

/// Ctrl-C: set by SIGINT (and by SIGTERM and SIGHUP: a lost terminal) once [`interrupt_flag`]
/// was called; jobs waiting see it, cancel, and the cluster is dismantled as usual. A second
/// such signal while the first is being handled ends the process at once (exit 128 + signal).
pub fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    Arc::clone(FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        // From now on these signals cancel and exit the ordinary way, which removes the key
        // file and dismantles the clients; until now they removed the key file and killed us.
        plush_mio::release_exit_signals();
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        // Without the handlers a signal kills plush and the clients are left to expire by
        // themselves: not fatal.
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            let _ = signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&flag));
            let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
        }
        flag
    }))
}

/// How a job's results are printed.
#[derive(Clone, Debug, Default)]
pub struct PrintOpts {
    /// JSON lines instead of `clush -b`'s layout.
    pub json: bool,
    /// Live `host: line` output as it arrives, on the matching fd (JSON: `{"node", "line"}`
    /// objects, with `"stderr": true` for stderr lines, all on stdout).
    pub stream: bool,
    /// Where output goes besides the terminal, and its cap.
    pub out: OutputArgs,
}

/// Output flags of `run`, the shell's `run` and `apply`.
#[derive(Clone, Debug, Default, Args)]
pub struct OutputArgs {
    /// Cut each host's output (stdout and stderr together) after SIZE bytes (suffixes K, M, G:
    /// KiB, MiB, GiB). A cut output says so beside its group (`output cut at SIZE`) and with
    /// `truncated` in JSON [default: no cap: every byte arrives].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_output: Option<u64>,
    /// Write each host's stdout to DIR/HOST (created; with --stream as it arrives, else when
    /// the host's result arrives), as clush's --outdir.
    #[arg(long, value_name = "DIR")]
    pub outdir: Option<std::path::PathBuf>,
    /// Write each host's stderr to DIR/HOST, as clush's --errdir.
    #[arg(long, value_name = "DIR")]
    pub errdir: Option<std::path::PathBuf>,
}

/// A size: bytes, or a number with K, M or G (binary multiples), more than 0.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((k, c)) if c.is_ascii_alphabetic() => {
            let mul: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("{s:?}: the suffix is K, M or G")),
            };
            (&t[..k], mul)
        }
        _ => (t, 1),
    };
    let v: u64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size"))?;
    match v.checked_mul(mul) {
        Some(0) => Err("a size is more than 0".into()),
        Some(n) => Ok(n),
        None => Err(format!("{s:?} is too large")),
    }
}

/// A size as the user would write it: `1 MiB`, `64 KiB`, `100 bytes`.
pub fn size_text(n: u64) -> String {
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if n >= unit && n % unit == 0 {
            return format!("{} {name}", n / unit);
        }
    }
    format!("{n} bytes")
}

/// Per-host output files (`--outdir`, `--errdir`), appended to as output arrives.
#[derive(Default)]
pub struct HostFiles {
    dirs: [Option<std::path::PathBuf>; 2],
    /// Files already started this job (truncated on first write).
    started: BTreeSet<(NodeId, bool)>,
    /// The first error, reported once.
    failed: bool,
}

impl HostFiles {
    /// Files under `out.outdir` and `out.errdir` (created).
    pub fn new(out: &OutputArgs) -> HostFiles {
        let mut f = HostFiles { dirs: [out.outdir.clone(), out.errdir.clone()], ..HostFiles::default() };
        for d in f.dirs.iter().flatten() {
            if let Err(e) = std::fs::create_dir_all(d) {
                eprintln!("plush: cannot create {}: {e}", d.display());
            }
        }
        f.started.clear();
        f
    }

    /// Whether any directory was given.
    pub fn any(&self) -> bool {
        self.dirs.iter().any(Option::is_some)
    }

    /// Append `bytes` of `node`'s stdout (or stderr) to its file.
    pub fn write(&mut self, labels: &Labels, node: NodeId, err: bool, bytes: &[u8]) {
        self.write_body(labels, node, err, Body::Mem(bytes));
    }

    /// Append `body` (in memory or in the spill file) to `node`'s stdout (or stderr) file.
    pub fn write_body(&mut self, labels: &Labels, node: NodeId, err: bool, body: Body<'_>) {
        let Some(dir) = &self.dirs[usize::from(err)] else { return };
        let name = labels.label(&node).replace(['/', '\\'], "_");
        let first = self.started.insert((node, err));
        let path = dir.join(name);
        let r = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(!first)
            .truncate(first)
            .open(&path)
            .and_then(|f| body.write_to(&mut std::io::BufWriter::with_capacity(64 << 10, f)));
        if let Err(e) = r {
            if !std::mem::replace(&mut self.failed, true) {
                eprintln!("plush: cannot write {}: {e}", path.display());
            }
        }
    }
}

/// What a job gave, counted for its summary.
#[derive(Clone, Debug, Default)]
pub struct JobSummary {
    /// The exit status it stands for.
    pub code: u8,
    /// Hosts that succeeded.
    pub ok: usize,
    /// Hosts with a result other than success.
    pub failed: usize,
    /// Hosts joined when it started that gave no result.
    pub lost: usize,
    /// Hosts not joined when it started.
    pub unreachable: usize,
    /// The job's own time.
    pub run_ms: u64,
    /// Interrupted by Ctrl-C (and cancelled).
    pub interrupted: bool,
}

/// How hosts are named in output.
#[derive(Clone)]
pub struct Labels {
    names: HashMap<NodeId, String>,
    label_by_name: bool,
    common: Option<u16>,
}

impl Labels {
    /// Labels for `hosts`: by name, or by address.
    pub fn new(hosts: &[(NodeId, String)], label_by_name: bool) -> Labels {
        let all: Vec<SocketAddr> = hosts.iter().map(|(id, _)| id.addr()).collect();
        Labels { names: hosts.iter().cloned().collect(), label_by_name, common: common_port(&all) }
    }

    /// How a host is named in output: its name, or its address (with `--local`).
    pub fn label(&self, h: &NodeId) -> String {
        match self.names.get(h) {
            Some(name) if self.label_by_name => name.clone(),
            _ => addr_label(&h.addr(), self.common),
        }
    }

    /// Hosts folded as a node set (`node[01-04]`, `127.0.0.[1-20]`).
    pub fn fold(&self, nodes: &[NodeId]) -> String {
        if self.label_by_name {
            let v: Vec<String> = nodes.iter().map(|h| self.label(h)).collect();
            fold_names(&v)
        } else {
            let addrs: Vec<SocketAddr> = nodes.iter().map(NodeId::addr).collect();
            fold_addrs(&addrs)
        }
    }
}

/// Live output being printed: per host and stream, the partial line not printed yet; per
/// host, its label (computed once: millions of lines may be printed).
#[derive(Default)]
struct Streamed {
    partial: BTreeMap<(NodeId, bool), Vec<u8>>,
    label: HashMap<NodeId, Vec<u8>>,
    files: HostFiles,
    writer: Option<Writer>,
}

/// Formatted lines waiting for the terminal: (stderr, bytes).
type Lines = (bool, Vec<u8>);

/// A thread that writes live output to stdout and stderr, so that a reader that stops (a
/// paused pager) stalls only it, never the controller's event loop (whose links would time
/// out). Bound: [`WRITER_QUEUE`] batches queued, each one take of live output (the root's
/// window at most, formatted), plus one held back while the queue is full; while one is held
/// back no more live output is taken, so the hosts wait.
struct Writer {
    tx: std::sync::mpsc::SyncSender<Lines>,
    held: Vec<Lines>,
    thread: std::thread::JoinHandle<()>,
}

/// Batches of formatted live output queued for the writer thread.
const WRITER_QUEUE: usize = 8;

impl Writer {
    fn start() -> Writer {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Lines>(WRITER_QUEUE);
        let thread = std::thread::spawn(move || {
            // Write errors (a closed pipe) drop the output; the hosts must still finish.
            for (err, bytes) in rx {
                if err {
                    let mut e = std::io::stderr().lock();
                    let _ = e.write_all(&bytes);
                    let _ = e.flush();
                } else {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(&bytes);
                    let _ = o.flush();
                }
            }
        });
        Writer { tx, held: Vec::new(), thread }
    }

    /// Queue what is held back, as far as the queue has room; whether nothing is held.
    fn flush_held(&mut self) -> bool {
        while !self.held.is_empty() {
            let first = self.held.remove(0);
            match self.tx.try_send(first) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(back)) => {
                    self.held.insert(0, back);
                    return false;
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => self.held.clear(),
            }
        }
        true
    }

    /// Write everything and stop the thread.
    fn finish(self) {
        for x in self.held {
            let _ = self.tx.send(x);
        }
        drop(self.tx);
        let _ = self.thread.join();
    }
}

impl Streamed {
    /// Whether more live output may be taken: the writer holds nothing back.
    fn room(&mut self) -> bool {
        self.writer.as_mut().is_none_or(Writer::flush_held)
    }

    /// Print the complete lines of `chunks` (`host: line` on stdout or stderr, or JSON objects
    /// on stdout; through the writer thread) and write them to the host files.
    fn print(&mut self, labels: &Labels, chunks: Vec<plush_mio::Streamed>, json: bool) {
        if chunks.is_empty() {
            return;
        }
        let (mut out, mut err) = (Vec::with_capacity(1 << 16), Vec::new());
        for c in chunks {
            self.files.write(labels, c.node, c.err, &c.bytes);
            let label = self.label.entry(c.node).or_insert_with(|| labels.label(&c.node).into_bytes());
            let buf = self.partial.entry((c.node, c.err)).or_default();
            let w: &mut dyn Write = if c.err && !json { &mut err } else { &mut out };
            // Lines of the chunk, the first one completing what was left of the last chunk.
            let mut rest = &c.bytes[..];
            while let Some(k) = rest.iter().position(|&b| b == b'\n') {
                if buf.is_empty() {
                    print_line(w, label, &rest[..k], json, c.err);
                } else {
                    buf.extend_from_slice(&rest[..k]);
                    print_line(w, label, buf, json, c.err);
                    buf.clear();
                }
                rest = &rest[k + 1..];
            }
            buf.extend_from_slice(rest);
            if buf.len() >= MAX_PARTIAL_LINE {
                print_line(w, label, buf, json, c.err);
                buf.clear();
            }
        }
        let w = self.writer.get_or_insert_with(Writer::start);
        for x in [(false, out), (true, err)] {
            if !x.1.is_empty() {
                w.held.push(x);
            }
        }
        w.flush_held();
    }

    /// Write the outputs of result groups to the host files (grouped mode, as they arrive).
    fn write_results(&mut self, labels: &Labels, groups: &[ResultGroup]) {
        for g in groups {
            for &node in &g.nodes {
                self.files.write_body(labels, node, false, g.stdout_body());
                self.files.write_body(labels, node, true, g.stderr_body());
            }
        }
    }

    /// Print what is left: what the writer thread has queued, then partial lines (without
    /// their newline).
    fn finish(&mut self, json: bool) {
        if let Some(w) = self.writer.take() {
            w.finish();
        }
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        for ((node, is_err), rest) in std::mem::take(&mut self.partial) {
            if rest.is_empty() {
                continue;
            }
            let label = self.label.get(&node).cloned().unwrap_or_default();
            let w: &mut dyn Write = if is_err && !json { &mut err } else { &mut out };
            print_line(w, &label, &rest, json, is_err);
        }
        let _ = out.flush();
    }
}

fn print_line(out: &mut dyn Write, label: &[u8], line: &[u8], json: bool, err: bool) {
    if json {
        let v = if err {
            json!({"node": String::from_utf8_lossy(label), "line": String::from_utf8_lossy(line), "stderr": true})
        } else {
            json!({"node": String::from_utf8_lossy(label), "line": String::from_utf8_lossy(line)})
        };
        let _ = writeln!(out, "{v}");
    } else {
        let _ = out.write_all(label);
        let _ = out.write_all(b": ");
        let _ = out.write_all(line);
        let _ = out.write_all(b"\n");
    }
}

/// A controller with its hosts: see the module docs.
pub struct Session {
    /// The controller.
    pub c: Cluster,
    /// Every host invited, with its name, in order.
    pub named: Vec<(NodeId, String)>,
    /// Names that could not be resolved, and why.
    pub unresolved: Vec<(String, String)>,
    /// How hosts are named.
    pub labels: Labels,
    /// The progress line.
    pub progress: Progress,
    /// When the session started.
    pub t0: Instant,
    cmd: &'static str,
    port: u16,
    join_timeout: Option<Duration>,
    /// Leave clients of another version as they are.
    pub no_upgrade: bool,
    /// Clients are started by the local launcher (their pids are the clients').
    pub local_launcher: bool,
    /// Output cap and files of `apply`'s phases.
    pub output: OutputArgs,
    /// The session journal (none if it could not be created).
    pub journal: Option<Rc<RefCell<Journal>>>,
    /// Keep the journal's directory at the end.
    pub keep_session: bool,
    /// A resumed job (`plush attach`) whose overlay could not be reached: do not wait for it.
    pub give_up_resumed: bool,
    /// Jobs taken over from an earlier controller (`plush attach`).
    resumed_jobs: Vec<u64>,
    /// Clients an earlier controller of this session started on this machine (after `plush
    /// attach`): waited for, and killed if need be, at the dismantle. (pid, key file in their
    /// command line.)
    pub orphans: Vec<(u32, String)>,
    /// The build that `plush run` lets go on while its command runs ([`Session::start_build`]):
    /// taken by the next [`Session::run_job`].
    pipeline: Option<JoinWatch>,
    /// When the build settled, since the session started ([`Session::join`], or the
    /// pipelined job's wait).
    pub built: Option<Duration>,
}

impl Session {
    /// Start a controller for `args` and invite its hosts (errors are printed as `plush CMD:
    /// ...`; the `Err` is the exit status: 2 for a usage error, 255 when the controller cannot
    /// start). Without hosts (none given), none is invited: see [`Session::invite_sets`].
    pub fn start(args: &HostArgs, cmd: &'static str) -> Result<Session, u8> {
        let (hosts, unresolved, label_by_name) = if let Some(n) = args.local {
            let Some(port) = free_port(n) else {
                eprintln!("plush {cmd}: no port is free on all of the {n} loopback addresses");
                return Err(UNREACHABLE);
            };
            let hosts: Vec<(NodeId, String)> =
                (0..n).map(|i| NodeId::loopback(i, port)).map(|id| (id, id.addr().ip().to_string())).collect();
            (hosts, Vec::new(), false)
        } else if args.given() {
            match host_names(&args.hosts, args.hostfile.as_deref(), &args.exclude).and_then(|n| resolve(n, args.port)) {
                Ok((hosts, unresolved)) => (hosts, unresolved, true),
                Err(e) => {
                    eprintln!("plush {cmd}: {e}");
                    return Err(2);
                }
            }
        } else {
            (Vec::new(), Vec::new(), true)
        };
        let kind = args.launcher.unwrap_or(if args.local.is_some() { LauncherKind::Local } else { LauncherKind::Ssh });
        let method = match launch_method(args, kind) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("plush {cmd}: {e}");
                return Err(2);
            }
        };
        let tree_launch = args.launch_from == crate::sim::LaunchFrom::Tree;
        let core = Config {
            max_children: args.degree as usize,
            max_invitations: args.fanout as usize,
            tree_launch,
            launch_fanout: args.launch_fanout as usize,
            // Every session has a launcher: a cold start launches the first hosts together.
            launch_ahead: true,
            ..Config::default()
        };
        let launch_timeout =
            if kind == LauncherKind::Local { Duration::from_secs(10) } else { Duration::from_secs(60) };
        let mut client_args: Vec<std::ffi::OsString> =
            vec!["client".into(), "--max-children".into(), args.degree.to_string().into()];
        if tree_launch {
            client_args.extend(plush_mio::MemberLauncher::Local.client_flags().into_iter().map(Into::into));
        }
        let maintenance = match args.maintenance.as_deref().map(read_script).transpose() {
            Ok(m) => m,
            Err(e) => {
                eprintln!("plush {cmd}: {e}");
                return Err(2);
            }
        };
        let cfg = ClusterConfig {
            core,
            maintenance,
            linger: args.linger,
            method,
            launch_timeout,
            client_args,
            max_launches_in_flight: args.fanout as usize,
            spill_memory: Some(spill_memory()),
            ..ClusterConfig::default()
        };
        let c = match Cluster::start(cfg) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("plush {cmd}: cannot start the controller: {e}");
                return Err(UNREACHABLE);
            }
        };
        let t0 = Instant::now();
        let mut s = Session {
            c,
            named: Vec::new(),
            unresolved,
            labels: Labels { names: HashMap::new(), label_by_name, common: None },
            progress: Progress::new(t0),
            t0,
            cmd,
            port: args.port,
            join_timeout: args.join_timeout,
            no_upgrade: args.no_upgrade,
            local_launcher: kind == LauncherKind::Local,
            output: OutputArgs::default(),
            journal: None,
            keep_session: args.session.keep_session,
            orphans: Vec::new(),
            give_up_resumed: false,
            resumed_jobs: Vec::new(),
            pipeline: None,
            built: None,
        };
        s.open_journal(args.session.state_dir.as_deref(), label_by_name);
        if !s.unresolved.is_empty() {
            let u = s.unresolved.clone();
            s.log(&Record::Unresolved(u), false);
        }
        s.invite(hosts);
        Ok(s)
    }

    /// A session around `c`, a controller attached to the overlay of an earlier one (`plush
    /// attach`), with that session's hosts: nothing is invited or launched.
    pub fn adopt(
        c: Cluster,
        cmd: &'static str,
        named: Vec<(NodeId, String)>,
        unresolved: Vec<(String, String)>,
        label_by_name: bool,
        keep_session: bool,
    ) -> Session {
        let t0 = Instant::now();
        let port = named.first().map_or(DEFAULT_PORT, |(h, _)| h.addr().port());
        Session {
            c,
            labels: Labels::new(&named, label_by_name),
            named,
            unresolved,
            progress: Progress::new(t0),
            t0,
            cmd,
            port,
            join_timeout: None,
            no_upgrade: true,
            local_launcher: false,
            output: OutputArgs::default(),
            journal: None,
            keep_session,
            orphans: Vec::new(),
            give_up_resumed: false,
            resumed_jobs: Vec::new(),
            pipeline: None,
            built: None,
        }
    }

    /// Wait for `job`, a job an earlier controller of the session started and that
    /// [`Cluster::resume_job`] took over, and print its results as [`Session::run_job`] does
    /// (the ones the journal holds with the new ones). `targeted`: the hosts it was started
    /// for. Hosts that owed a result and are gone are named lost.
    pub fn resume_job(&mut self, job: u64, targeted: Vec<NodeId>, opts: PrintOpts) -> JobSummary {
        self.resumed_jobs.push(job);
        self.run_start(Start::Resume(job, targeted), opts)
    }

    /// Create this session's journal and have the controller write its reports to it. Without
    /// a state directory, or when it cannot be written, the session goes on without one (said
    /// on stderr).
    fn open_journal(&mut self, state_dir: Option<&std::path::Path>, label_by_name: bool) {
        let Some(sessions) = journal::sessions_dir(state_dir) else {
            eprintln!("plush {}: no state directory (neither $XDG_STATE_HOME nor $HOME): no session journal", self.cmd);
            return;
        };
        let created = plush_mio::Key::read_file(self.c.key_file())
            .and_then(|key| Journal::create(&sessions, &journal::new_id(), &key));
        let mut j = match created {
            Ok(j) => j,
            Err(e) => {
                eprintln!("plush {}: cannot create a session journal in {}: {e}", self.cmd, sessions.display());
                return;
            }
        };
        j.append(
            &Record::Session {
                cmd: self.cmd.to_owned(),
                version: plush_mio::version(),
                created_ms: journal::now_ms(),
                controller: self.c.id(),
                label_by_name,
                local: self.local_launcher,
            },
            false,
        );
        self.set_journal(j);
    }

    /// Use `j` as the journal: the controller's results (synced), host states and root
    /// changes go to it as they come.
    pub fn set_journal(&mut self, j: Journal) {
        let j = Rc::new(RefCell::new(j));
        let hook = Rc::clone(&j);
        let mut unsynced = false;
        self.c.set_report_hook(Box::new(move |r| {
            let Some(r) = r else {
                // Frames are about to leave (the results' `Ack` among them), or the turn ends
                // and the results go to the user: they are on disk first.
                if std::mem::take(&mut unsynced) {
                    hook.borrow_mut().sync();
                }
                return;
            };
            let rec = match r {
                plush_core::Report::Result { job, status, truncated, output, nodes, stderr, blob: None } => {
                    Record::Result {
                        job: *job,
                        status: *status,
                        truncated: *truncated,
                        output: output.to_vec(),
                        stderr: stderr.to_vec(),
                        nodes: nodes.iter().collect(),
                    }
                }
                plush_core::Report::Result { job, status, truncated, nodes, blob: Some(b), .. } => Record::BlobResult {
                    job: *job,
                    status: *status,
                    truncated: *truncated,
                    digest: b.digest,
                    stdout_len: b.stdout_len,
                    len: b.len,
                    nodes: nodes.iter().collect(),
                },
                // A large output's bytes: on disk before the result naming them (synced with it).
                plush_core::Report::Blob { job, digest, offset, data, .. } => {
                    Record::Blob { job: *job, digest: *digest, offset: *offset, data: data.clone() }
                }
                plush_core::Report::Host { host, state, .. } => Record::State(*host, journal::state_code(*state)),
                plush_core::Report::RootChanged(root) => Record::Root(*root),
                _ => return,
            };
            // A result is synced (on `None`) before the controller's acknowledgement of it leaves.
            unsynced |= matches!(rec, Record::Result { .. } | Record::BlobResult { .. });
            hook.borrow_mut().append(&rec, false);
        }));
        self.journal = Some(j);
    }

    /// Append `rec` to the journal, if there is one (`sync`: wait until it is on disk).
    pub fn log(&self, rec: &Record, sync: bool) {
        if let Some(j) = &self.journal {
            j.borrow_mut().append(rec, sync);
        }
    }

    /// Record a job just started (synced: a controller attaching later takes it over):
    /// `targeted`, the hosts it was started for.
    pub fn log_job(&self, job: u64, targeted: Vec<NodeId>, print: PrintRec) {
        if let Some(spec) = self.c.job_spec(job).cloned() {
            let expected = self.c.job_expected(job).unwrap_or_default();
            self.log(&Record::Job { spec: Box::new(spec), expected, targeted, print }, true);
        }
    }

    /// Record the clients the local launcher started (their process ids), for a later
    /// controller to dismantle.
    pub fn log_clients(&self) {
        if !self.local_launcher || self.journal.is_none() {
            return;
        }
        let clients = self.c.launched_clients();
        let key_file = self.c.key_file().display().to_string();
        self.log(&Record::Clients { key_file, clients }, false);
    }

    /// Invite more hosts (those already invited are skipped); returns how many were new.
    pub fn invite(&mut self, hosts: Vec<(NodeId, String)>) -> usize {
        let fresh: Vec<(NodeId, String)> =
            hosts.into_iter().filter(|(id, _)| !self.labels.names.contains_key(id)).collect();
        for (id, name) in &fresh {
            self.labels.names.insert(*id, name.clone());
        }
        self.named.extend(fresh.iter().cloned());
        if !fresh.is_empty() {
            self.log(&Record::Hosts(fresh.clone()), false);
        }
        let all: Vec<SocketAddr> = self.named.iter().map(|(id, _)| id.addr()).collect();
        self.labels.common = common_port(&all);
        self.c.add_named_hosts(&fresh);
        fresh.len()
    }

    /// Resolve host sets (`-w` syntax, at `--port`) and invite them; returns how many were new.
    /// Names that do not resolve are added to the unreachable ones.
    pub fn invite_sets(&mut self, sets: &[String]) -> Result<usize, String> {
        let names = host_names(sets, None, &[])?;
        let (hosts, unresolved) = resolve(names, self.port)?;
        self.unresolved.extend(unresolved);
        Ok(self.invite(hosts))
    }

    /// Hosts invited, and names that did not resolve.
    pub fn host_count(&self) -> usize {
        self.named.len() + self.unresolved.len()
    }

    /// Wait until every host invited joined or failed, with the progress line: at most
    /// `--join-timeout`, or else until no host joined or failed for [`JOIN_STALL`] (at most
    /// [`JOIN_MAX`]). Clients of another Plush version are upgraded then (unless
    /// `--no-upgrade`). Returns the time since the session started.
    pub fn join(&mut self) -> Duration {
        let n = self.host_count();
        let mut watch = self.pipeline.take().unwrap_or_else(|| JoinWatch::new(self.named.len(), self.join_timeout));
        let progress = &mut self.progress;
        let settled = self.c.wait_until(watch.left(), |c| {
            progress.show(c.count(HostState::Joined), None, n);
            watch.settled(c)
        });
        self.progress.clear();
        if let Err(e) = settled {
            eprintln!("plush {}: the event loop failed: {e}", self.cmd);
        }
        let outdated = self.c.outdated();
        if !outdated.is_empty() && !self.no_upgrade {
            let k = (self.host_count() / 4).max(1);
            eprintln!(
                "plush {}: {} hosts run another Plush version: upgrading them to {} ({k} at a time)",
                self.cmd,
                outdated.len(),
                plush_mio::version()
            );
            let u = self.upgrade(&outdated, k, false);
            for (h, why) in &u.failed {
                eprintln!("plush {}: {}: not upgraded: {why}", self.cmd, self.label(h));
            }
        }
        self.log_clients();
        let built = self.t0.elapsed();
        self.built = Some(built);
        built
    }

    /// `plush run`'s build: wait, with the progress line, until a host joined or the build
    /// settled ([`Session::join`]'s rule). When hosts are still on their way then, and those
    /// joined run this Plush version (or `--no-upgrade`), the build goes on while the command
    /// runs: the next [`Session::run_job`] starts it at once and holds it open until the build
    /// settles, so that each host runs it as it joins (see [`Cluster::set_job_open`]); returns
    /// true. Otherwise it finishes the build as [`Session::join`] does (upgrading clients of
    /// another version first) and returns false.
    pub fn start_build(&mut self) -> bool {
        let n = self.host_count();
        let mut watch = JoinWatch::new(self.named.len(), self.join_timeout);
        let progress = &mut self.progress;
        let mut settled = false;
        let waited = self.c.wait_until(watch.left(), |c| {
            progress.show(c.count(HostState::Joined), None, n);
            settled = watch.settled(c);
            settled || c.count(HostState::Joined) > 0
        });
        let current = self.no_upgrade || self.c.outdated().is_empty();
        self.pipeline = Some(watch);
        if settled || !current || waited.is_err() || self.c.count(HostState::Joined) == 0 {
            self.join();
            return false;
        }
        true
    }

    /// Upgrade `hosts` to this binary, at most `k` at a time: push it to a batch, wait for
    /// the batch to come back with this build, then the next. The controller picks the order:
    /// the root last (its restart moves the root), the others by address. Hosts not joined are
    /// skipped. Returns what happened, with the most hosts seen down at once (hosts joined at
    /// the start and not joined, sampled at every turn of the event loop).
    pub fn upgrade(&mut self, hosts: &[NodeId], k: usize, force: bool) -> UpgradeSummary {
        let k = k.max(1);
        let mut sum = UpgradeSummary { limit: k, ..UpgradeSummary::default() };
        let exe = match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => {
                sum.failed.extend(hosts.iter().map(|h| (*h, format!("cannot find this binary: {e}"))));
                return sum;
            }
        };
        let root = self.c.root();
        let mut order: Vec<NodeId> =
            hosts.iter().copied().filter(|h| self.c.host(h).is_some_and(|i| i.state == HostState::Joined)).collect();
        order.sort_by_key(|h| (Some(*h) == root, *h));
        // The root restarts last and alone: its restart moves the tree to a new root, and a
        // member of its batch that lost it as parent during its own grace before restarting
        // rejoined elsewhere with the old build, a join reported after the member had gone,
        // and the new client was never invited (1 upgrade in 4-8 of 9 hosts, `--max-down 3`).
        let batches: Vec<&[NodeId]> = match order.split_last() {
            Some((last, rest)) if Some(*last) == root => {
                rest.chunks(k).chain(std::iter::once(std::slice::from_ref(last))).collect()
            }
            _ => order.chunks(k).collect(),
        };
        let watched: Vec<NodeId> = self.joined().into_iter().collect();
        let down =
            |c: &Cluster| watched.iter().filter(|h| c.host(h).is_none_or(|i| i.state != HostState::Joined)).count();
        for batch in batches {
            // A host is back once it joined again after this point (and runs this build).
            let joined_before: Vec<Option<Duration>> =
                batch.iter().map(|h| self.c.host(h).and_then(|i| i.joined_at)).collect();
            let job = match self.c.start_upgrade(batch, &exe, force) {
                Ok(j) => j,
                Err(e) => {
                    sum.failed.extend(batch.iter().map(|h| (*h, format!("cannot push the binary: {e}"))));
                    continue;
                }
            };
            let mut max_down = sum.max_down;
            let waited = self.c.wait_job(job, |c, _, _| max_down = max_down.max(down(c)), || false);
            let mut installed = Vec::new();
            match waited {
                Ok(out) => {
                    for g in &out.groups {
                        for h in &g.nodes {
                            if g.status == ExitStatus::Exited(0) {
                                installed.push(*h);
                            } else {
                                let text = g.stdout_body().to_vec().unwrap_or_default();
                                let text = String::from_utf8_lossy(&text).trim().to_string();
                                sum.failed.push((*h, if text.is_empty() { format!("{:?}", g.status) } else { text }));
                            }
                        }
                    }
                    for h in &out.missing {
                        sum.failed.push((*h, "no answer to the upgrade".into()));
                    }
                }
                Err(e) => sum.failed.extend(batch.iter().map(|h| (*h, format!("event loop: {e}")))),
            }
            let rejoined = |c: &Cluster, h: &NodeId| {
                let before = batch.iter().position(|b| b == h).and_then(|k| joined_before[k]);
                c.current(h) && c.host(h).is_some_and(|i| i.state == HostState::Joined && i.joined_at != before)
            };
            let back = self.c.wait_until(UPGRADE_REJOIN, |c| {
                max_down = max_down.max(down(c));
                installed.iter().all(|h| rejoined(c, h) || c.host(h).is_some_and(|i| i.state == HostState::Failed))
            });
            if let Err(e) = back {
                eprintln!("plush {}: the event loop failed: {e}", self.cmd);
            }
            sum.max_down = max_down;
            for h in installed {
                if rejoined(&self.c, &h) {
                    sum.upgraded.push(h);
                } else {
                    sum.failed.push((h, "installed, but did not come back with the new version".into()));
                }
            }
            self.c.forget_job(job);
        }
        sum
    }

    /// How a host is named in output.
    pub fn label(&self, h: &NodeId) -> String {
        self.labels.label(h)
    }

    /// Hosts folded as a node set.
    pub fn fold(&self, nodes: &[NodeId]) -> String {
        self.labels.fold(nodes)
    }

    /// Hosts currently joined.
    pub fn joined(&self) -> BTreeSet<NodeId> {
        self.c.hosts().filter(|(_, h)| h.state == HostState::Joined).map(|(id, _)| id).collect()
    }

    /// Resolve names (host-set syntax) among the invited hosts: by name, or by address.
    pub fn lookup(&self, sets: &[String]) -> Result<Vec<NodeId>, String> {
        let names = host_names(sets, None, &[])?;
        let mut out = Vec::new();
        for name in names {
            let found = self
                .named
                .iter()
                .find(|(id, n)| *n == name || id.addr().ip().to_string() == name || id.addr().to_string() == name);
            match found {
                Some((id, _)) => out.push(*id),
                None => return Err(format!("{name} is not one of this session's hosts")),
            }
        }
        Ok(out)
    }

    /// Run a job and print its results; see [`PrintOpts`]. Ctrl-C cancels it. Hosts that did
    /// not succeed are named on stderr with the reason.
    pub fn run_job(&mut self, spec: JobSpec<'_>, opts: PrintOpts) -> JobSummary {
        let spec = JobSpec { max_output: opts.out.max_output.or(spec.max_output), ..spec };
        self.run_start(Start::Job(spec), opts)
    }

    /// [`Session::run_job`] for a file pushed through the tree: the same waiting, printing and
    /// naming of failed, lost and unreachable hosts; on a terminal the progress line also shows
    /// the bytes the controller sent.
    pub fn run_push(&mut self, push: PushJob<'_>, opts: PrintOpts) -> JobSummary {
        self.run_start(Start::Push(push), opts)
    }

    fn run_start(&mut self, start: Start<'_>, opts: PrintOpts) -> JobSummary {
        let target = match &start {
            Start::Job(spec) => spec.target,
            Start::Push(p) => p.target,
            Start::Resume(..) => None,
        };
        let mut targeted: Vec<NodeId> = match target {
            Some(t) => t.to_vec(),
            None => self.named.iter().map(|(id, _)| *id).collect(),
        };
        // Who owes a result, as the controller works it out (the session's hosts joined now).
        let mut joined: BTreeSet<NodeId> = self.c.joined_in(Some(&targeted)).into_iter().collect();
        if let Start::Resume(job, t) = &start {
            // Whom it was started for, and who owed a result then: as the journal says.
            targeted.clone_from(t);
            joined = self.c.job_expected(*job).unwrap_or_default().into_iter().collect();
        }
        // Only a whole session's job names the unresolved names (not a targeted one).
        let whole = target.is_none() && !matches!(&start, Start::Resume(..)) || self.resumed_whole(&start);
        let mut summary = JobSummary::default();
        let mut out = RunOutcome {
            job: 0,
            groups: Vec::new(),
            reports: 0,
            complete: false,
            missing: Vec::new(),
            lost: Vec::new(),
            elapsed: Duration::ZERO,
        };
        let mut streamed = Streamed { files: HostFiles::new(&opts.out), ..Streamed::default() };
        // A build that goes on while the command runs (`plush run`): see `Session::start_build`.
        let mut pipeline = if matches!(start, Start::Job(_)) { self.pipeline.take() } else { None };
        let print = PrintRec { json: opts.json, stream: opts.stream, max_output: opts.out.max_output, title: None };
        if !joined.is_empty() {
            let resumed = matches!(start, Start::Resume(..));
            let started = match start {
                Start::Job(spec) => self.c.start_job(JobSpec { stream: spec.stream || opts.stream, ..spec }),
                Start::Push(p) => {
                    let size = std::fs::metadata(p.src).map_or(0, |m| m.len());
                    self.progress.bytes = Some((self.c.driver_stats().chunk_bytes_sent, size));
                    self.c.start_push(p)
                }
                Start::Resume(job, _) => Ok(job),
            };
            if let (Ok(job), false) = (&started, resumed) {
                self.log_job(*job, targeted.clone(), print.clone());
            }
            match started {
                Ok(job) => {
                    let stop = interrupt_flag();
                    stop.store(false, Ordering::Relaxed);
                    let n = self.host_count();
                    if let Some(watch) = pipeline.take() {
                        if let Err(e) = self.build_during(job, watch, &opts, &stop, &mut streamed) {
                            eprintln!("plush {}: the event loop failed: {e}", self.cmd);
                        }
                        // Whoever joined while it was open owes a result too.
                        joined = self.c.job_expected(job).unwrap_or_default().into_iter().collect();
                        self.log_job(job, targeted.clone(), print);
                        self.log(&Record::Open(job, false), true);
                    }
                    let mut waited = self.wait_streaming(job, n, &opts, &stop, &mut streamed, |_| false);
                    if stop.swap(false, Ordering::Relaxed) {
                        summary.interrupted = true;
                        eprintln!("plush {}: interrupted: cancelling the job", self.cmd);
                        if let Err(e) = self.c.cancel(job) {
                            eprintln!("plush {}: cannot cancel: {e}", self.cmd);
                        }
                        // The cancelled hosts answer quickly; a second Ctrl-C stops waiting.
                        waited = self.wait_streaming(job, n, &opts, &stop, &mut streamed, |_| false);
                    }
                    match waited {
                        Ok(o) => out = o,
                        Err(e) => eprintln!("plush {}: the event loop failed: {e}", self.cmd),
                    }
                }
                Err(e) => eprintln!("plush {}: the command could not be run: {e}", self.cmd),
            }
        }
        if let Some(watch) = pipeline {
            // The command did not start: the build settles as without it.
            self.pipeline = Some(watch);
            self.join();
        }
        self.progress.clear();
        summary.run_ms = ms(out.elapsed);
        let mut groups = out.groups;
        sort_groups(&mut groups);
        if opts.stream {
            streamed.finish(opts.json);
            let cap = opts.out.max_output.map_or_else(String::new, |c| format!(" at {}", size_text(c)));
            for g in groups.iter().filter(|g| g.truncated) {
                eprintln!("plush: {}: output cut{cap}", self.labels.fold(&g.nodes));
            }
        } else {
            if streamed.files.any() {
                // What came after the last turn of the wait.
                let new = self.c.take_results(out.job);
                streamed.write_results(&self.labels, &new);
            }
            groups = self.print_pumping(groups, opts.json, opts.out.max_output);
        }

        let answered: BTreeSet<NodeId> = groups.iter().flat_map(|g| g.nodes.iter().copied()).collect();
        let mut err = std::io::stderr().lock();
        let restarted = name_restarted(&mut err, &self.labels, &out.lost, &groups);
        for g in groups.iter().filter(|g| g.status != ExitStatus::Lost) {
            match status_text(&g.status) {
                None => summary.ok += g.nodes.len(),
                Some(why) => {
                    summary.failed += g.nodes.len();
                    for h in &g.nodes {
                        let _ = writeln!(err, "plush: {}: {why}", self.label(h));
                    }
                }
            }
        }
        let lost: Vec<NodeId> = joined.iter().filter(|h| !answered.contains(h)).copied().collect();
        for h in &lost {
            // A host an attached controller never heard of died while no controller watched.
            let now = self.c.host(h).map_or_else(|| "not in the tree".to_owned(), |i| format!("{:?}", i.state));
            let arrived =
                out.lost.iter().find(|(x, o)| x == h && !o.is_empty()).map_or(String::new(), |(_, o)| {
                    format!("; output that had arrived: {:?}", String::from_utf8_lossy(o))
                });
            let _ = writeln!(err, "plush: {}: lost (joined, gave no result; now {now}{arrived})", self.label(h));
        }
        let unreachable: Vec<NodeId> =
            targeted.iter().filter(|h| !joined.contains(h) && !answered.contains(h)).copied().collect();
        let deadline = self.t0.elapsed().as_secs();
        for h in &unreachable {
            if let Some((status, output)) = self.c.host(h).and_then(|i| i.script.clone()) {
                let how = status_text(&status).unwrap_or_else(|| "exit 0".into());
                let _ =
                    writeln!(err, "plush: {}: not joined: maintenance script failed ({how}): {output}", self.label(h));
                continue;
            }
            let why = match self.c.host(h) {
                Some(i) if i.state == HostState::Failed => i.why.unwrap_or("failed").to_owned(),
                Some(i) => match i.why {
                    Some(why) => format!("not joined after {deadline} s: {why}"),
                    None => format!("not joined after {deadline} s ({:?})", i.state),
                },
                None => "never invited".to_owned(),
            };
            let _ = writeln!(err, "plush: {}: unreachable: {why}", self.label(h));
        }
        self.progress.bytes = None;
        if out.job != 0 {
            // Shown: a controller attaching later prints none of it again.
            self.log(&Record::Shown(out.job), true);
        }
        let unresolved = if whole { self.unresolved.len() } else { 0 };
        if whole {
            for (name, why) in &self.unresolved {
                let _ = writeln!(err, "plush: {name}: unreachable: {why}");
            }
        }
        drop(err);
        summary.lost = lost.len() + restarted;
        summary.unreachable = unreachable.len() + unresolved;
        summary.code = largest_code(&groups);
        if summary.lost > 0 || summary.unreachable > 0 {
            summary.code = UNREACHABLE;
        }
        summary
    }

    /// Whether a resumed job targeted every host of the session.
    fn resumed_whole(&self, start: &Start<'_>) -> bool {
        matches!(start, Start::Resume(job, _)
            if self.c.job_spec(*job).is_some_and(|s| s.target == plush_core::wire::Target::All))
    }

    /// [`print_groups`] on a thread while the event loop goes on: printing large outputs takes
    /// seconds, and a controller silent that long loses its link to the root. Returns the
    /// groups.
    fn print_pumping(&mut self, groups: Vec<ResultGroup>, json: bool, cap: Option<u64>) -> Vec<ResultGroup> {
        let labels = self.labels.clone();
        let printer = std::thread::spawn(move || {
            print_groups(&labels, &groups, json, cap);
            groups
        });
        while !printer.is_finished() {
            if let Err(e) = self.c.pump(Duration::from_millis(20)) {
                eprintln!("plush {}: the event loop failed: {e}", self.cmd);
                break;
            }
        }
        printer.join().unwrap_or_default()
    }

    /// The first part of the wait for a job started while the build goes on
    /// ([`Session::start_build`]): `job` is held open until the build settles (or Ctrl-C), so
    /// that every host that joins runs it too; then it is closed, and the time the build took
    /// and the local clients are recorded.
    fn build_during(
        &mut self,
        job: u64,
        mut watch: JoinWatch,
        opts: &PrintOpts,
        stop: &AtomicBool,
        streamed: &mut Streamed,
    ) -> std::io::Result<()> {
        if let Err(e) = self.c.set_job_open(job, true) {
            // Not held open (the controller no longer has it): the build settles without it.
            self.pipeline = Some(watch);
            self.join();
            return Err(e);
        }
        self.log(&Record::Open(job, true), true);
        let n = self.host_count();
        let waited = self.wait_streaming(job, n, opts, stop, streamed, |c| watch.settled(c));
        let closed = self.c.set_job_open(job, false);
        self.built = Some(self.t0.elapsed());
        self.log_clients();
        waited.and(closed)
    }

    /// Wait for `job`, printing live output with `--stream`, until settled, Ctrl-C, or
    /// `until(cluster)` says so (it is asked on every turn).
    fn wait_streaming(
        &mut self,
        job: u64,
        n: usize,
        opts: &PrintOpts,
        stop: &AtomicBool,
        streamed: &mut Streamed,
        mut until: impl FnMut(&Cluster) -> bool,
    ) -> std::io::Result<RunOutcome> {
        let Session { c, labels, progress, cmd, give_up_resumed, resumed_jobs, .. } = self;
        let reached = std::cell::Cell::new(false);
        let mut dropped = 0;
        // A job taken over after a crash: once none of the hosts it waits for is joined (they
        // died while no controller watched) and no result came for a while, it is over (the
        // root may have forgotten it, and then never reports it complete).
        let resumed = resumed_jobs.contains(&job);
        let give_up = *give_up_resumed;
        let settle = std::cell::Cell::new(false);
        let (mut last_got, mut quiet_since) = (usize::MAX, Instant::now());
        let r = c.wait_job(
            job,
            |c, got, expected| {
                if resumed {
                    if got != last_got {
                        (last_got, quiet_since) = (got, Instant::now());
                    }
                    let idle = c.root().is_some() && !c.job_waiting_joined(job);
                    settle.set(give_up || (idle && quiet_since.elapsed() >= crate::attach::RESUME_SETTLE));
                }
                if opts.stream {
                    // A reader behind: take nothing, so the hosts wait (their windows fill).
                    if streamed.room() {
                        let (chunks, d) = c.take_streams(job);
                        dropped += d;
                        streamed.print(labels, chunks, opts.json);
                    }
                } else {
                    if streamed.files.any() {
                        let new = c.take_results(job);
                        streamed.write_results(labels, &new);
                    }
                    if let Some((base, _)) = progress.bytes {
                        progress.sent = c.driver_stats().chunk_bytes_sent.saturating_sub(base);
                    }
                    progress.show(c.count(HostState::Joined), Some((got, expected)), n);
                }
                reached.set(until(c));
            },
            || stop.load(Ordering::Relaxed) || settle.get() || reached.get(),
        );
        let (chunks, d) = c.take_streams(job);
        streamed.print(labels, chunks, opts.json);
        if dropped + d > 0 {
            eprintln!("plush {cmd}: {} chunks of live output were dropped (too many at once)", dropped + d);
        }
        r
    }

    /// Dismantle the overlay: wait at most [`dismantle_deadline`] for every client to exit,
    /// then kill and reap the rest. Returns how long it took.
    pub fn dismantle(&mut self) -> Duration {
        let d0 = Instant::now();
        let mut failed = false;
        match self.c.dismantle(dismantle_deadline(self.host_count())) {
            Ok(d) if d.killed > 0 => {
                eprintln!("plush {}: {} clients did not exit when dismantled; killed", self.cmd, d.killed)
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("plush {}: dismantling failed: {e}", self.cmd);
                failed = true;
            }
        }
        let left = self.c.launched_pids();
        if !left.is_empty() {
            eprintln!("plush {}: {} clients still running after the dismantle; killing them", self.cmd, left.len());
        }
        self.reap_orphans(dismantle_deadline(self.host_count()).saturating_sub(d0.elapsed()));
        if failed {
            // Remote clients may still run: the journal stays, for `plush attach` to end them.
            self.journal = None;
        } else {
            self.end_journal();
        }
        d0.elapsed()
    }

    /// The session ended: say so in the journal, and remove its directory unless
    /// `--keep-session`.
    pub fn end_journal(&mut self) {
        if let Some(j) = self.journal.take() {
            let mut j = j.borrow_mut();
            j.append(&Record::Done, true);
            if self.keep_session {
                eprintln!("plush {}: session {} kept in {}", self.cmd, j.id, j.dir.display());
            } else {
                j.remove();
            }
        }
    }

    /// Wait at most `wait` for the clients an earlier controller of this session started on
    /// this machine to exit (they were told to by the dismantle), then kill the rest
    /// (SIGKILL). A process counts as such a client only while its command line still names
    /// the session's key file (a reused pid is left alone); zombies count as gone.
    fn reap_orphans(&mut self, wait: Duration) {
        if self.orphans.is_empty() {
            return;
        }
        let end = Instant::now() + wait.max(Duration::from_secs(2));
        let alive = |o: &(u32, String)| client_alive(o.0, &o.1);
        loop {
            self.orphans.retain(alive);
            if self.orphans.is_empty() || Instant::now() >= end {
                break;
            }
            if let Err(e) = self.c.pump(Duration::from_millis(50)) {
                eprintln!("plush {}: the event loop failed: {e}", self.cmd);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if !self.orphans.is_empty() {
            eprintln!("plush {}: {} clients did not exit when dismantled; killed", self.cmd, self.orphans.len());
            for (pid, _) in std::mem::take(&mut self.orphans) {
                let _ = plush_mio::kill_process(pid);
            }
        }
    }
}

/// Whether process `pid` runs and is a client given `key_file` (its command line names it);
/// a zombie is not running.
pub fn client_alive(pid: u32, key_file: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let named = cmdline.split(|&b| b == 0).any(|a| a == key_file.as_bytes());
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| st.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false);
    named && !zombie
}

/// Name on `err` every host whose client restarted during the job (it answered
/// [`ExitStatus::Lost`]: the job was not run again there), with the live output that had
/// arrived from it (`lost`, from [`RunOutcome::lost`]); returns how many.
pub fn name_restarted(
    err: &mut impl Write,
    labels: &Labels,
    lost: &[(NodeId, Vec<u8>)],
    groups: &[ResultGroup],
) -> usize {
    let mut n = 0;
    for h in groups.iter().filter(|g| g.status == ExitStatus::Lost).flat_map(|g| g.nodes.iter()) {
        n += 1;
        let arrived = lost.iter().find(|(x, _)| x == h).map_or(&[][..], |(_, o)| &o[..]);
        let what = if arrived.is_empty() {
            "no output had arrived".to_owned()
        } else {
            format!("output that had arrived: {:?}", String::from_utf8_lossy(arrived))
        };
        let _ = writeln!(
            err,
            "plush: {}: lost during the job: its client restarted, not run again ({what})",
            labels.label(h)
        );
    }
    n
}

/// Largest group first, then by first node: the order groups are printed in.
pub fn sort_groups(groups: &mut [ResultGroup]) {
    groups.sort_by(|a, b| b.nodes.len().cmp(&a.nodes.len()).then_with(|| a.nodes.first().cmp(&b.nodes.first())));
}

/// The largest exit status the groups stand for (0 for none), as clush's.
pub fn largest_code(groups: &[ResultGroup]) -> u8 {
    groups.iter().map(|g| code_of(&g.status)).max().unwrap_or(0)
}

/// Print the groups: `clush -b`'s layout, stdout gathered on stdout and stderr gathered apart
/// on stderr (each grouped by its own content and the status), or JSON lines with `stdout`
/// and `stderr`. `cap`: the user's `--max-output`, named beside a cut group. Write errors (a
/// closed pipe) are ignored: the hosts must still be dismantled.
pub fn print_groups(labels: &Labels, groups: &[ResultGroup], json: bool, cap: Option<u64>) {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
    if json {
        for g in groups {
            let _ = write_group_json(&mut out, labels, g, &[]);
        }
        let _ = out.flush();
        return;
    }
    let cut = match cap {
        Some(c) => format!(" [output cut at {}]", size_text(c)),
        None => " [output cut]".to_string(),
    };
    // Regroup by one stream's content: hosts that differ only in stderr share their stdout group.
    let gather = |err: bool| {
        let mut v: Vec<(ExitStatus, bool, Body<'_>, Vec<NodeId>)> = Vec::new();
        for g in groups {
            let body = if err { g.stderr_body() } else { g.stdout_body() };
            if err && body.is_empty() {
                continue;
            }
            match v.iter_mut().find(|x| x.0 == g.status && x.1 == g.truncated && x.2.same(&body)) {
                Some(x) => x.3.extend_from_slice(&g.nodes),
                None => v.push((g.status, g.truncated, body, g.nodes.clone())),
            }
        }
        for x in &mut v {
            x.3.sort_unstable();
        }
        v.sort_by(|a, b| b.3.len().cmp(&a.3.len()).then_with(|| a.3.first().cmp(&b.3.first())));
        v
    };
    let print = |w: &mut dyn Write, v: Vec<(ExitStatus, bool, Body<'_>, Vec<NodeId>)>| {
        for (status, truncated, body, nodes) in v {
            let mut header = format!("{} ({})", labels.fold(&nodes), nodes.len());
            if let Some(s) = status_text(&status) {
                header.push(' ');
                header.push_str(&s);
            }
            if truncated {
                header.push_str(&cut);
            }
            let _ = writeln!(w, "---------------\n{header}\n---------------");
            if let Err(e) = body.write_to(w) {
                let _ = writeln!(w, "[plush: cannot read this output back from its temporary file: {e}]");
            }
            if !body.is_empty() && !matches!(body.last(), Ok(Some(b'\n'))) {
                let _ = w.write_all(b"\n");
            }
        }
        let _ = w.flush();
    };
    print(&mut out, gather(false));
    drop(out);
    print(&mut std::io::BufWriter::with_capacity(64 << 10, std::io::stderr().lock()), gather(true));
}

/// Bytes of result outputs the controller keeps in memory ([`plush_mio::SPILL_MEMORY`], 16 MiB);
/// past it, grouped outputs wait for printing in an anonymous temporary file. The environment
/// variable `PLUSH_SPILL_MEMORY` (a size: `64K`, `1M`, ...) sets another bound (tests use a
/// small one).
pub fn spill_memory() -> u64 {
    std::env::var("PLUSH_SPILL_MEMORY").ok().and_then(|v| parse_size(&v).ok()).unwrap_or(plush_mio::SPILL_MEMORY)
}

/// One group as a JSON line: `extra` fields (e.g. `phase`), then `count`, `exit`, `nodes`,
/// `status`, `stderr`, `stdout` and `truncated`, as `serde_json` orders them. stdout and stderr
/// are written piece by piece (from the spill file, if there), invalid UTF-8 replaced as
/// `String::from_utf8_lossy` does.
pub fn write_group_json(
    w: &mut dyn Write,
    labels: &Labels,
    g: &ResultGroup,
    extra: &[(&str, Value)],
) -> std::io::Result<()> {
    let status = status_text(&g.status);
    w.write_all(b"{")?;
    for (k, v) in extra {
        write!(w, "{}:{v},", json!(k))?;
    }
    write!(
        w,
        "\"count\":{},\"exit\":{},\"nodes\":{},\"status\":{},\"stderr\":",
        g.nodes.len(),
        code_of(&g.status),
        json!(labels.fold(&g.nodes)),
        json!(status.as_deref().unwrap_or("ok")),
    )?;
    write_json_body(w, g.stderr_body())?;
    w.write_all(b",\"stdout\":")?;
    write_json_body(w, g.stdout_body())?;
    writeln!(w, ",\"truncated\":{}}}", g.truncated)
}

/// `body` as a JSON string, lossy (see [`write_group_json`]).
fn write_json_body(w: &mut dyn Write, body: Body<'_>) -> std::io::Result<()> {
    fn escaped(w: &mut dyn Write, s: &str) -> std::io::Result<()> {
        let q = serde_json::to_string(s).map_err(std::io::Error::other)?;
        w.write_all(&q.as_bytes()[1..q.len() - 1])
    }
    // Decode what can be, keep an incomplete sequence at the end for the next piece.
    fn decode(w: &mut dyn Write, mut rest: &[u8], end: bool) -> std::io::Result<usize> {
        let len = rest.len();
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    escaped(w, s)?;
                    return Ok(len);
                }
                Err(e) => {
                    let (ok, bad) = rest.split_at(e.valid_up_to());
                    escaped(w, std::str::from_utf8(ok).unwrap_or_default())?;
                    match e.error_len() {
                        Some(n) => {
                            w.write_all("\u{FFFD}".as_bytes())?;
                            rest = &bad[n..];
                        }
                        None if end => {
                            w.write_all("\u{FFFD}".as_bytes())?;
                            return Ok(len);
                        }
                        None => return Ok(len - bad.len()),
                    }
                }
            }
        }
    }
    w.write_all(b"\"")?;
    let mut carry: Vec<u8> = Vec::new();
    body.for_each_chunk(|c| {
        if carry.is_empty() {
            let used = decode(w, c, false)?;
            carry.extend_from_slice(&c[used..]);
        } else {
            carry.extend_from_slice(c);
            let used = decode(w, &carry, false)?;
            carry.drain(..used);
        }
        Ok(())
    })?;
    if !carry.is_empty() {
        decode(w, &carry, true)?;
    }
    w.write_all(b"\"")
}

/// A JSON summary line of a job: `{"summary": {...}}` with the counts, `joined` (hosts
/// joined or answering) and times; `extra` fields are added.
pub fn summary_json(s: &JobSummary, hosts: usize, extra: &[(&str, Value)]) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("hosts".into(), json!(hosts));
    m.insert("joined".into(), json!(s.ok + s.failed + s.lost));
    m.insert("ok".into(), json!(s.ok));
    m.insert("failed".into(), json!(s.failed));
    m.insert("unreachable".into(), json!(s.unreachable));
    m.insert("lost".into(), json!(s.lost));
    m.insert("run_ms".into(), json!(s.run_ms));
    m.insert("exit".into(), json!(s.code));
    for (k, v) in extra {
        m.insert((*k).into(), v.clone());
    }
    json!({ "summary": Value::Object(m) })
}
