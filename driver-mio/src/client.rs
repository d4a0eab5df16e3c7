//! The client process: a [`Node`] on real TCP that waits for invitations.
//!
//! `plush client --listen ADDR --key-file F [--max-fds N] [--max-children D]` runs [`run`]: it raises the soft
//! limit on open files to the hard limit, reads the cluster key, binds `ADDR` (which becomes
//! its [`NodeId`]), prints its ready line on stdout ([`crate::launcher::READY_PREFIX`] and the
//! address: the launcher waits for it) and from then on writes nothing more to stdout (the
//! launcher stops reading it). It runs until the node emits `Output::Exit` (dismantled, or idle
//! for `Config::idle_expiry`), then kills its jobs' process groups, closes its links and
//! returns.
//!
//! With `--key-file -` the key is read from the first line of stdin: that is how the ssh and
//! command launchers hand it to a remote client without writing it to the remote disk or
//! putting it on a command line.
//!
//! The fd budget: `budget = min(--max-fds, soft limit - reserve)`, where the reserve is
//! [`RESERVED_FDS`] (stdio, the poll and listener descriptors, slack) plus three descriptors per
//! job slot (`3 × Config::max_jobs`: the output pipes and the barrier socket), so that no flood
//! of connections can take a job's descriptors. The budget is shared by connections in their
//! handshake (a quarter, at least 2 and at most 256: `DriverConfig::max_handshakes`) and
//! authenticated links (the rest: `Config::max_links`), see [`budgets`]. Running out anyway
//! is not fatal (see [`crate::driver`]).
//!
//! **Tree launch.** With `--launcher ssh [--ssh-option OPT]...` or `--launcher local` (passed
//! by a launcher of a controller with `--launch-from tree`, and on by every member to the
//! clients it launches), the client has a launcher of its own ([`MemberLauncher`]) and carries
//! out the `Output::Launch`es of the shares it is given: ssh from this host to each host by its
//! IP address, copying its own binary where it is missing (a copy kept under `.cache/plush` is
//! named by its digest already, see `ClientBuild::kept`), the key written to each launch's stdin
//! from memory ([`crate::launcher::KeySource::Memory`]). The clients it started outlive it
//! (they are members of the tree, and end with it). Without a launcher every such launch fails
//! at once, and the host goes back to the controller.
//!
//! The listen address is the node's identity, so it must be one that peers can dial: an
//! unspecified address (`0.0.0.0`, `[::]`) or port 0 is refused.
//!
//! **Upgrades.** A push marked `upgrade` installs a new client binary (verified like any
//! push). Unless the client runs with `--no-upgrade` (which makes such pushes fail on this
//! host), it then gives its result [`UPGRADE_GRACE`] to travel up, kills its jobs, and
//! re-executes itself from the new binary with the same arguments: the listening socket stays
//! open across the `exec` (`--listen-fd`), so the address never stops accepting, and the key
//! is handed over on stdin again. The links close with the old process; the controller sees
//! the host leave, invites it again, and the new client joins and announces its build.
//!
//! **Jobs die with the client.** Each job's process gets a parent-death signal, and the
//! client keeps a job record on its host ([`crate::record`]): the process groups of its running
//! jobs, and the jobs it started. A client that binds its address reads its predecessor's
//! record first: it kills the groups left running and answers a job its predecessor started
//! as lost instead of running it again (unless the job asks for retries). A client that cannot
//! bind because the address is in use (a client stopped there, not dead) prints
//! [`ADDR_IN_USE_PREFIX`] and the address on stdout, so that the launcher reports exactly that.
//!
//! Memory: once the client has been quiet for [`TRIM_AFTER`] (no connection opened or closed,
//! no job started or ended), it frees its links' idle sealing buffers, hands the heap memory
//! malloc keeps free back to the kernel (glibc only), and unmaps the pages of its own code and
//! read-only data (`sys::release_code_pages`: they stay in the page cache and come back as they
//! are used), once per quiet period. A burst leaves much of it behind: the root of a tree takes
//! every joiner's first contact.

use crate::auth::Key;
use crate::driver::{Driver, DriverConfig};
use crate::launcher::{KeySource, LaunchMethod, Launcher, SshLaunch, ADDR_IN_USE_PREFIX, READY_PREFIX};
use crate::record::Record;
use plush_core::{Config, Instant, Node, NodeId};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant as StdInstant};

/// File descriptors kept out of the link budget, besides three per job slot.
pub const RESERVED_FDS: usize = 16;
/// How long an exiting client waits for its last frames to be written and its links closed.
pub const EXIT_GRACE: Duration = Duration::from_secs(1);

/// How long an upgraded client keeps running before it restarts (its result travels up).
pub const UPGRADE_GRACE: Duration = Duration::from_millis(300);

/// How long the client must be quiet before it trims its heap (see the module docs).
pub const TRIM_AFTER: Duration = Duration::from_secs(1);

/// When to trim the heap: [`TRIM_AFTER`] after the last change in what the loop holds, once.
struct Trim {
    /// Connections accepted and dialed, connections open, jobs running, when last seen.
    seen: (u64, u64, usize, usize),
    /// When `seen` last changed.
    since: StdInstant,
    /// The heap was trimmed since then.
    done: bool,
}

impl Trim {
    fn state(d: &Driver<Node>) -> (u64, u64, usize, usize) {
        (d.stats.accepted, d.stats.dialed, d.connection_count(), d.jobs.len())
    }

    fn new(d: &Driver<Node>) -> Trim {
        Trim { seen: Trim::state(d), since: StdInstant::now(), done: false }
    }

    /// The longest the loop may sleep so as not to miss the trim.
    fn max_wait(&self) -> Option<Duration> {
        (!self.done).then(|| (self.since + TRIM_AFTER).saturating_duration_since(StdInstant::now()))
    }

    /// After a turn: note a change, or trim once quiet long enough.
    fn check(&mut self, d: &mut Driver<Node>) {
        let now = StdInstant::now();
        let state = Trim::state(d);
        if state != self.seen {
            *self = Trim { seen: state, since: now, done: false };
        } else if !self.done && now >= self.since + TRIM_AFTER {
            d.release_buffers();
            crate::sys::trim_heap();
            crate::sys::release_code_pages();
            self.done = true;
        }
    }
}

/// What `plush client` is given.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The address to listen on: the node's identity.
    pub listen: SocketAddr,
    /// The cluster key file (64 hex digits, mode 0600); `-` reads the key from stdin, as the
    /// ssh and command launchers hand it over.
    pub key_file: PathBuf,
    /// Most links to hold (further limited by the fd limit).
    pub max_fds: Option<usize>,
    /// Most children in the tree (`Config::max_children`); `None`: the default, 12.
    pub max_children: Option<usize>,
    /// Listen on this inherited socket instead of binding `listen` (after an upgrade).
    pub listen_fd: Option<i32>,
    /// Refuse upgrades.
    pub no_upgrade: bool,
    /// Once the ready line is out, leave the launcher's session (`sys::detach`): stdio is let
    /// go, so that an ssh login that started the client ends at once, and what it writes on
    /// stderr from then on goes to `record::log_path_for(listen)` on the host, a file made on
    /// the first line. The ssh launchers ask for it.
    pub detach: bool,
    /// Tree launch: how this client launches the hosts of a share it is given (the kind of
    /// launcher that started it, passed on by its launcher); `None`: it launches nothing, and
    /// every host of a share that no client answers at goes back to the controller.
    pub launcher: Option<MemberLauncher>,
}

/// How a member launches in tree launch (`plush client --launcher KIND`): the same kind as the
/// controller's, from its own host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberLauncher {
    /// A client process on this host, on the new host's address (tests, one machine).
    Local,
    /// The system ssh from this host to the new host (by its IP address), with these options;
    /// this client's own binary is copied where the host lacks it.
    Ssh(Vec<String>),
}

impl MemberLauncher {
    /// The client flags that give a launched client the same launcher, so that it launches in
    /// turn (`--launcher local`, or `--launcher ssh` and each `--ssh-option OPT`).
    pub fn client_flags(&self) -> Vec<String> {
        match self {
            MemberLauncher::Local => vec!["--launcher".into(), "local".into()],
            MemberLauncher::Ssh(options) => {
                let mut v = vec!["--launcher".to_string(), "ssh".to_string()];
                for o in options {
                    v.push("--ssh-option".into());
                    v.push(o.clone());
                }
                v
            }
        }
    }
}

/// The launcher of a member (see [`MemberLauncher`]): the key in memory, handed to each launch
/// on a pipe; the launched clients get the same launcher and `--max-children`.
fn member_launcher(how: &MemberLauncher, opts: &ClientOptions, key: &Key) -> std::io::Result<Launcher> {
    let exe = std::env::current_exe()?;
    let mut args = how.client_flags();
    if let Some(d) = opts.max_children {
        args.extend(["--max-children".to_string(), d.to_string()]);
    }
    let method = match how {
        MemberLauncher::Local => {
            let mut a: Vec<std::ffi::OsString> = vec!["client".into()];
            a.extend(args.into_iter().map(Into::into));
            LaunchMethod::Local { program: exe, args: a }
        }
        MemberLauncher::Ssh(options) => {
            let build = crate::launcher::ClientBuild::kept(crate::launcher::own_arch().to_string(), exe)?;
            let mut ssh = SshLaunch::with_builds(vec![build], options.clone());
            ssh.client_args = args;
            LaunchMethod::Ssh(ssh)
        }
    };
    let mut l = Launcher::with_key(method, KeySource::Memory(key.hex_line().into_bytes()));
    // The share's fan-out bounds the launches under way (`Config::launch_fanout`).
    l.max_in_flight = usize::from(u16::MAX);
    l.ready_timeout = MEMBER_READY_TIMEOUT;
    l.detach_on_drop = true;
    Ok(l)
}

/// How long a member's launch may take to print its client's ready line (an ssh login, maybe
/// a copy of the binary).
pub const MEMBER_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The link budget for a soft fd limit of `soft` (see the module docs). At least 1.
pub fn link_budget(soft: u64, max_fds: Option<usize>, cfg: &Config) -> usize {
    let reserve = RESERVED_FDS + 3 * cfg.max_jobs;
    let by_limit = usize::try_from(soft).unwrap_or(usize::MAX).saturating_sub(reserve);
    by_limit.min(max_fds.unwrap_or(usize::MAX)).max(1)
}

/// Most connections in handshake from one address, whatever the budget.
pub const HANDSHAKES_PER_SOURCE: usize = 16;

/// How a link budget (from [`link_budget`]) is shared: `(handshakes, links)`, the first a
/// quarter of it (at least 2, at most 256), the links the rest (at least 1). Their sum exceeds
/// the budget only for budgets under 3.
pub fn budgets(budget: usize) -> (usize, usize) {
    let handshakes = (budget / 4).clamp(2, 256);
    (handshakes, budget.saturating_sub(handshakes).max(1))
}

/// Refuse a listen address that is no identity: unspecified (`0.0.0.0`, `[::]`) or port 0.
pub fn check_listen(addr: SocketAddr) -> Result<(), String> {
    if addr.ip().is_unspecified() {
        return Err(format!(
            "--listen {addr}: an unspecified address is no identity; give the address peers reach this host at"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("--listen {addr}: give a port (0 would pick one peers cannot know)"));
    }
    Ok(())
}

/// A seed that differs between processes and runs: the clock and the pid.
pub(crate) fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32) ^ rand::random::<u64>()
}

/// Run a client until its node exits. Errors are for the caller to print (exit status 1).
pub fn run(opts: &ClientOptions) -> Result<(), String> {
    if opts.listen_fd.is_none() {
        check_listen(opts.listen)?;
    }
    let soft = match crate::sys::raise_nofile_limit() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("plush client: cannot read the fd limit ({e}); assuming 1024");
            1024
        }
    };
    // An upgrade hands the listener over; take it before closing what else was inherited.
    let inherited = match opts.listen_fd {
        Some(fd) => Some(crate::sys::inherited_listener(fd).map_err(|e| format!("--listen-fd {fd}: {e}"))?),
        None => None,
    };
    // Jobs get nothing of ours but their pipes.
    crate::sys::cloexec_inherited();
    crate::sys::map_large_allocations();
    let key = if opts.key_file.as_os_str() == "-" {
        Key::read_from(std::io::stdin().lock()).map_err(|e| format!("cannot read the key from stdin: {e}"))?
    } else {
        // The error names the file.
        Key::read_file(&opts.key_file).map_err(|e| format!("cannot read the key: {e}"))?
    };
    let listener = match inherited {
        Some(l) => l,
        None => std::net::TcpListener::bind(opts.listen).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                // Tell the launcher why (its line): a client may be stopped there, not dead.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{ADDR_IN_USE_PREFIX}{}", opts.listen);
                let _ = out.flush();
            }
            format!("cannot listen on {}: {e}", opts.listen)
        })?,
    };
    let addr = listener.local_addr().map_err(|e| format!("cannot read the listen address: {e}"))?;
    // The address is ours now: clean up after a predecessor that died on it, and learn what
    // jobs it started (see `crate::record`).
    let (mut record, left) = Record::open(addr, key.session_tag());
    let id = NodeId::new(addr);
    let mut cfg = Config { build: crate::build_hash(), ..Config::default() };
    if let Some(d) = opts.max_children {
        cfg.max_children = d.max(1);
    }
    let (handshakes, links) = budgets(link_budget(soft, opts.max_fds, &cfg));
    cfg.max_links = links;
    let dcfg = DriverConfig {
        core: cfg.clone(),
        max_handshakes: handshakes,
        max_handshakes_per_source: HANDSHAKES_PER_SOURCE.min(handshakes),
        ..DriverConfig::default()
    };
    let mut node = Node::new(id, cfg.clone(), fresh_seed(), Instant::ZERO);
    node.set_prior_jobs(&left.started);
    let mut d =
        Driver::new(node, id, listener, key.clone(), dcfg).map_err(|e| format!("cannot start the event loop: {e}"))?;
    d.no_upgrade = opts.no_upgrade;
    if let Some(how) = &opts.launcher {
        match member_launcher(how, opts, &key) {
            Ok(l) => d.launcher = Some(l),
            // Then the hosts of its shares go back to the controller.
            Err(e) => eprintln!("plush client {id}: cannot launch others ({e}); the controller will"),
        }
    }
    if d.debug() {
        eprintln!("plush client {id}: max_links {links}, handshakes {handshakes} (fd soft limit {soft})");
    }
    if !left.killed.is_empty() {
        eprintln!(
            "plush client {id}: killed {} process group(s) a previous client left running here: {:?}",
            left.killed.len(),
            left.killed
        );
    }
    {
        let mut out = std::io::stdout().lock();
        // Nobody may be reading (started by hand with stdout closed): not an error.
        let _ = writeln!(out, "{READY_PREFIX}{id}");
        let _ = out.flush();
    }
    if opts.detach {
        // Still one thread: the event loop has not started, and jobs come later.
        crate::sys::detach(crate::record::log_path_for(addr))
            .map_err(|e| format!("cannot detach from the launcher's session: {e}"))?;
        record.session_changed();
        // A panic's message goes to the log too.
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            crate::sys::open_deferred_stderr();
            report(info)
        }));
    }
    let mut trim = Trim::new(&d);
    let mut seen = (d.jobs.generation(), None);
    let mut restart: Option<(StdInstant, PathBuf)> = None;
    while !d.exited {
        let wait = match &restart {
            Some((at, _)) => Some(at.saturating_duration_since(StdInstant::now())),
            None => trim.max_wait(),
        };
        d.turn(wait).map_err(|e| format!("event loop failed: {e}"))?;
        // The record follows the jobs (read again only when they changed).
        let now_seen = (d.jobs.generation(), d.m.controller());
        if now_seen != seen {
            seen = now_seen;
            record.update(&d.jobs.groups(), seen.1);
        }
        trim.check(&mut d);
        if restart.is_none() {
            if let Some(path) = d.upgrades.pop() {
                restart = Some((StdInstant::now() + UPGRADE_GRACE, path));
            }
        }
        if let Some((at, path)) = &restart {
            if StdInstant::now() >= *at {
                d.jobs.kill_all();
                // Close the links in order (peers see an end of stream, not a reset) and
                // keep only the listener across the exec.
                d.close_all(Duration::from_millis(200));
                let e = reexec(path, opts, id, d.listener_fd(), &key);
                // Still here: the new binary could not be started. Keep running this one.
                crate::driver::write_line(format_args!("plush client {id}: cannot restart on {}: {e}", path.display()));
                restart = None;
            }
        }
    }
    d.jobs.kill_all();
    // A normal end: every job ended here, under the controller's eyes.
    record.remove();
    d.close_all(EXIT_GRACE);
    if d.debug() {
        crate::driver::write_line(format_args!("plush client {id}: exiting ({:?})", d.stats));
    }
    Ok(())
}

/// Call before writing to stderr what a client ends with: a detached client's log is made
/// then (see `plush client --detach`).
pub fn stderr_ready() {
    crate::sys::open_deferred_stderr();
}

/// Replace this process with `path`, a new client binary: same listen socket (made
/// inheritable), same options, the key on stdin. Returns only on failure.
fn reexec(path: &std::path::Path, opts: &ClientOptions, id: NodeId, listen_fd: i32, key: &Key) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let handover = || -> std::io::Result<()> {
        crate::sys::set_cloexec(listen_fd, false)?;
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.write_all(key.hex_line().as_bytes())?;
        drop(ours);
        use std::os::fd::AsRawFd;
        crate::sys::dup_onto(theirs.as_raw_fd(), 0)?;
        Ok(())
    };
    if let Err(e) = handover() {
        return e;
    }
    let mut cmd = std::process::Command::new(path);
    cmd.arg("client").arg("--listen").arg(id.addr().to_string()).arg("--key-file").arg("-");
    cmd.arg("--listen-fd").arg(listen_fd.to_string());
    if let Some(n) = opts.max_fds {
        cmd.arg("--max-fds").arg(n.to_string());
    }
    if let Some(d) = opts.max_children {
        cmd.arg("--max-children").arg(d.to_string());
    }
    if let Some(how) = &opts.launcher {
        cmd.args(how.client_flags());
    }
    cmd.exec()
}

/// Parse `client --listen ADDR --key-file F [--max-fds N]` (the launcher's command line) for
/// binaries without clap.
pub fn parse_args(args: &[String]) -> Result<ClientOptions, String> {
    let mut it = args.iter();
    if it.next().map(String::as_str) != Some("client") {
        return Err("usage: client --listen ADDR --key-file FILE [--max-fds N]".into());
    }
    let (mut listen, mut key_file, mut max_fds, mut max_children, mut listen_fd) = (None, None, None, None, None);
    let (mut launcher, mut ssh_options): (Option<String>, Vec<String>) = (None, Vec::new());
    let (mut no_upgrade, mut detach) = (false, false);
    while let Some(flag) = it.next() {
        if flag == "--no-upgrade" {
            no_upgrade = true;
            continue;
        }
        if flag == "--detach" {
            detach = true;
            continue;
        }
        let Some(value) = it.next() else { return Err(format!("{flag} needs a value")) };
        match flag.as_str() {
            "--listen" => listen = Some(value.parse::<SocketAddr>().map_err(|e| format!("--listen {value}: {e}"))?),
            "--key-file" => key_file = Some(PathBuf::from(value)),
            "--max-fds" => max_fds = Some(value.parse::<usize>().map_err(|e| format!("--max-fds {value}: {e}"))?),
            "--listen-fd" => listen_fd = Some(value.parse::<i32>().map_err(|e| format!("--listen-fd {value}: {e}"))?),
            "--max-children" => {
                max_children = Some(value.parse::<usize>().map_err(|e| format!("--max-children {value}: {e}"))?)
            }
            "--launcher" => launcher = Some(value.clone()),
            "--ssh-option" => ssh_options.push(value.clone()),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let launcher = member_launcher_kind(launcher.as_deref(), ssh_options)?;
    Ok(ClientOptions {
        listen: listen.ok_or("--listen is required")?,
        key_file: key_file.ok_or("--key-file is required")?,
        max_fds,
        max_children,
        listen_fd,
        no_upgrade,
        detach,
        launcher,
    })
}

/// The member launcher `--launcher KIND` and the `--ssh-option`s name (`None`: no launcher).
pub fn member_launcher_kind(kind: Option<&str>, ssh_options: Vec<String>) -> Result<Option<MemberLauncher>, String> {
    match kind {
        None if ssh_options.is_empty() => Ok(None),
        None => Err("--ssh-option goes with --launcher ssh".into()),
        Some("ssh") => Ok(Some(MemberLauncher::Ssh(ssh_options))),
        Some("local") if ssh_options.is_empty() => Ok(Some(MemberLauncher::Local)),
        Some(other) => Err(format!("--launcher {other}: ssh or local (and --ssh-option only with ssh)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_the_reserve() {
        let cfg = Config::default();
        assert_eq!(link_budget(1024, None, &cfg), 1024 - 16 - 3 * cfg.max_jobs);
        assert_eq!(link_budget(1024, Some(100), &cfg), 100);
        assert_eq!(link_budget(10, None, &cfg), 1);
    }

    #[test]
    fn handshakes_come_out_of_the_budget() {
        assert_eq!(budgets(10), (2, 8));
        assert_eq!(budgets(1000), (250, 750));
        assert_eq!(budgets(100_000).0, 256);
        assert_eq!(budgets(1), (2, 1));
    }

    #[test]
    fn an_unspecified_listen_address_is_refused() {
        for bad in ["0.0.0.0:7000", "[::]:7000", "127.0.0.1:0"] {
            let e = check_listen(bad.parse().unwrap()).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        assert!(check_listen("127.0.0.9:7000".parse().unwrap()).is_ok());
    }

    #[test]
    fn arguments_parse() {
        let a: Vec<String> =
            ["client", "--listen", "127.0.0.5:7000", "--key-file", "/k", "--max-fds", "9"].map(String::from).into();
        let o = parse_args(&a).unwrap();
        assert_eq!(o.listen, "127.0.0.5:7000".parse().unwrap());
        assert_eq!(o.max_fds, Some(9));
        assert!(parse_args(&a[..2]).is_err());
        assert!(parse_args(&["client".to_string()]).is_err());
    }
}
