//! [`Cluster`]: the controller side as a library. A [`Controller`] on real TCP with a local
//! launcher, driven on the caller's thread: each call runs the event loop until its condition
//! holds or its deadline passes.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use plush_mio::{Cluster, ClusterConfig};
//! use plush_core::NodeId;
//! use std::time::Duration;
//! let mut c = Cluster::start(ClusterConfig::default())?;
//! let hosts: Vec<NodeId> = (0..20).map(|i| NodeId::loopback(i, 20_000)).collect();
//! c.add_hosts(&hosts);
//! c.wait_settled(Duration::from_secs(30))?;
//! let out = c.run(&["hostname"], Duration::from_secs(10))?;
//! println!("{} groups, {} hosts missing", out.groups.len(), out.missing.len());
//! c.dismantle(Duration::from_secs(10))?;
//! # Ok(()) }
//! ```
//!
//! The cluster key is generated fresh (32 random bytes) into a 0600 file in the temporary
//! directory, which the launched clients read; the file is removed when the `Cluster` drops.
//! Dropping a `Cluster` also kills and reaps every client it launched.
//!
//! Bounds: one [`HostInfo`] per host added; per job, the result groups the controller reported
//! (the controller itself bounds jobs at `Config::max_jobs`; [`Cluster::run`] forgets the
//! oldest job beyond that).

use crate::auth::Key;
use crate::driver::{Driver, DriverConfig, DriverStats};
use crate::launcher::{LaunchMethod, Launcher};
use plush_core::wire::{ExitStatus, JobKind, List, RunSpec, Target};
use plush_core::{Config, Controller, HostState, Instant, NodeId, Report};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant as StdInstant};

/// Longest a single loop turn waits inside the `Cluster`'s waits, so that deadlines are kept.
const TURN: Duration = Duration::from_millis(50);
/// Time added to a job's own timeout for its results to travel up and merge.
const RESULT_SLACK: Duration = Duration::from_secs(5);
/// Once the root reports a job complete, how long hosts believed joined that have not answered
/// are waited for: an orphan whose first attempt to rejoin failed tries again after
/// `Config::join_retry` (5 s), and gets the job when it attaches.
const REJOIN_WAIT: Duration = Duration::from_secs(15);

/// How to start a [`Cluster`].
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The controller's listen address (its id): a concrete address, port 0 for any free port.
    /// Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// The core's configuration, for the controller (and its connect timeout and frame size).
    pub core: Config,
    /// The client program the launcher starts. Default: this executable.
    pub client_program: PathBuf,
    /// Arguments before `--listen ADDR --key-file F`. Default `["client"]`.
    pub client_args: Vec<OsString>,
    /// How clients are launched; `None` (the default) is the local launcher running
    /// `client_program client_args...`.
    pub method: Option<LaunchMethod>,
    /// Launches waiting for their client's ready line at once. Default 50.
    pub max_launches_in_flight: usize,
    /// How long a launched client may take to listen. Default 10 s.
    pub launch_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            core: Config::default(),
            client_program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("plush")),
            client_args: vec!["client".into()],
            method: None,
            max_launches_in_flight: crate::launcher::MAX_IN_FLIGHT,
            launch_timeout: Duration::from_secs(10),
        }
    }
}

/// What the cluster knows of a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    /// Its state as the controller last reported it.
    pub state: HostState,
    /// For a failed host: why.
    pub why: Option<&'static str>,
    /// When it last became `Joined`, since the cluster started.
    pub joined_at: Option<Duration>,
}

/// Results of many hosts with the same status and output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultGroup {
    /// How the job ended there.
    pub status: ExitStatus,
    /// The output was cut at `Config::max_output`.
    pub truncated: bool,
    /// The output (stdout and stderr interleaved).
    pub output: Vec<u8>,
    /// The hosts, in order.
    pub nodes: Vec<NodeId>,
}

/// What [`Cluster::run`] gathered.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The job's id.
    pub job: u64,
    /// Results merged by (status, truncated, output).
    pub groups: Vec<ResultGroup>,
    /// `Report::Result`s the controller gave (each a group as it arrived through the tree).
    pub reports: usize,
    /// The root said every member answered.
    pub complete: bool,
    /// Hosts joined when the job started that gave no result before the deadline.
    pub missing: Vec<NodeId>,
    /// From the call to its return.
    pub elapsed: Duration,
}

impl RunOutcome {
    /// Hosts with a result.
    pub fn result_count(&self) -> usize {
        self.groups.iter().map(|g| g.nodes.len()).sum()
    }
}

/// What [`Cluster::dismantle`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DismantleOutcome {
    /// Launched clients that exited by themselves.
    pub exited: usize,
    /// Launched clients still running at the deadline, killed.
    pub killed: usize,
    /// From the call to its return.
    pub elapsed: Duration,
}

#[derive(Default)]
struct JobState {
    reports: Vec<ResultGroup>,
    got: BTreeSet<NodeId>,
    complete: bool,
}

/// A key file that is removed when dropped.
struct KeyFile(PathBuf);

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The controller side of a Plush cluster. See the module docs.
pub struct Cluster {
    d: Driver<Controller>,
    key_file: KeyFile,
    started: StdInstant,
    hosts: BTreeMap<NodeId, HostInfo>,
    jobs: BTreeMap<u64, JobState>,
    order: VecDeque<u64>,
    next_job: u64,
    root: Option<NodeId>,
    max_jobs: usize,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Cluster {
    /// Start a controller: generate the key, listen, get the launcher ready.
    pub fn start(cfg: ClusterConfig) -> io::Result<Cluster> {
        // Many hosts mean many sockets; not being able to raise the limit is not fatal.
        let _ = crate::sys::raise_nofile_limit();
        // The launched clients get nothing of ours but stdio.
        crate::sys::cloexec_inherited();
        let key = Key::generate();
        let path =
            std::env::temp_dir().join(format!("plush-key-{}-{:016x}.hex", std::process::id(), rand::random::<u64>()));
        key.write_new_file(&path)?;
        let key_file = KeyFile(path);
        let listener = std::net::TcpListener::bind(cfg.listen)?;
        let id = NodeId::new(listener.local_addr()?);
        let ctrl = Controller::new(id, cfg.core.clone(), crate::client::fresh_seed(), Instant::ZERO);
        let dcfg = DriverConfig { core: cfg.core.clone(), ..DriverConfig::default() };
        let mut d = Driver::new(ctrl, id, listener, key, dcfg)?;
        let method = cfg.method.unwrap_or(LaunchMethod::Local { program: cfg.client_program, args: cfg.client_args });
        let mut launcher = Launcher::with_method(method, key_file.0.clone());
        launcher.max_in_flight = cfg.max_launches_in_flight.max(1);
        launcher.ready_timeout = cfg.launch_timeout;
        d.launcher = Some(launcher);
        Ok(Cluster {
            d,
            key_file,
            started: StdInstant::now(),
            hosts: BTreeMap::new(),
            jobs: BTreeMap::new(),
            order: VecDeque::new(),
            next_job: 1,
            root: None,
            max_jobs: cfg.core.max_jobs.max(1),
        })
    }

    /// The controller's id (its listen address).
    pub fn id(&self) -> NodeId {
        self.d.id()
    }

    /// Time since the cluster started (the clock of [`HostInfo::joined_at`]).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The key file the clients must be given.
    pub fn key_file(&self) -> &Path {
        &self.key_file.0
    }

    /// The root of the tree, as last reported.
    pub fn root(&self) -> Option<NodeId> {
        self.root
    }

    /// The driver's counters.
    pub fn driver_stats(&self) -> DriverStats {
        self.d.stats
    }

    /// The controller's counters.
    pub fn controller_stats(&self) -> plush_core::controller::ControllerStats {
        *self.d.m.stats()
    }

    /// Every host added and what is known of it.
    pub fn hosts(&self) -> impl Iterator<Item = (&NodeId, &HostInfo)> {
        self.hosts.iter()
    }

    /// One host.
    pub fn host(&self, id: &NodeId) -> Option<&HostInfo> {
        self.hosts.get(id)
    }

    /// Hosts in state `state`.
    pub fn count(&self, state: HostState) -> usize {
        self.hosts.values().filter(|h| h.state == state).count()
    }

    /// Failed hosts and why.
    pub fn failures(&self) -> Vec<(NodeId, &'static str)> {
        self.hosts
            .iter()
            .filter(|(_, h)| h.state == HostState::Failed)
            .map(|(id, h)| (*id, h.why.unwrap_or("?")))
            .collect()
    }

    /// Process ids of the clients the launcher started that have not exited.
    pub fn launched_pids(&self) -> Vec<u32> {
        self.d.launcher.as_ref().map_or_else(Vec::new, Launcher::pids)
    }

    /// (host, process id) of the clients the launcher started that have not exited.
    pub fn launched_clients(&self) -> Vec<(NodeId, u32)> {
        self.d.launcher.as_ref().map_or_else(Vec::new, Launcher::clients)
    }

    /// Invite hosts (launching clients where none answers).
    pub fn add_hosts(&mut self, hosts: &[NodeId]) {
        let now = self.d.now();
        for h in hosts {
            self.hosts.entry(*h).or_insert(HostInfo { state: HostState::Pending, why: None, joined_at: None });
        }
        self.d.m.add_hosts(now, hosts);
        self.d.drain();
        self.take_reports();
    }

    /// Invite hosts known by name: the ssh and command launchers use the name (the address is
    /// where the client listens, and its identity).
    pub fn add_named_hosts(&mut self, hosts: &[(NodeId, String)]) {
        if let Some(l) = self.d.launcher.as_mut() {
            for (id, name) in hosts {
                l.set_name(*id, name.clone());
            }
        }
        let ids: Vec<NodeId> = hosts.iter().map(|(id, _)| *id).collect();
        self.add_hosts(&ids);
    }

    /// Run the event loop once, waiting at most `max_wait`.
    pub fn pump(&mut self, max_wait: Duration) -> io::Result<()> {
        self.d.turn(Some(max_wait))?;
        self.take_reports();
        Ok(())
    }

    /// Run the event loop until `done` holds (true) or `timeout` passes (false).
    pub fn wait_until(&mut self, timeout: Duration, mut done: impl FnMut(&Cluster) -> bool) -> io::Result<bool> {
        let end = StdInstant::now() + timeout;
        loop {
            if done(self) {
                return Ok(true);
            }
            let now = StdInstant::now();
            if now >= end {
                return Ok(false);
            }
            self.pump((end - now).min(TURN))?;
        }
    }

    /// Wait until every host added is `Joined` or `Failed`. Returns whether that happened.
    pub fn wait_settled(&mut self, timeout: Duration) -> io::Result<bool> {
        self.wait_until(timeout, |c| c.hosts.values().all(|h| matches!(h.state, HostState::Joined | HostState::Failed)))
    }

    /// Run `argv` on every joined host (killed there after `timeout`) and gather the results:
    /// returns once every host joined at the start has answered (or failed), or `timeout` plus
    /// a few seconds passed. Once the root reports the job complete, hosts still missing are
    /// waited for at most 15 s more, and only while the controller believes them
    /// joined (rejoining after a repair: their results come when they attach).
    pub fn run(&mut self, argv: &[&str], timeout: Duration) -> io::Result<RunOutcome> {
        self.run_with(argv, Some(timeout), |_, _, _| {})
    }

    /// [`Cluster::run`] with an optional timeout and a progress hook. With `None` the command
    /// runs without a timeout and the call waits, without a deadline, until every host joined
    /// at the start has answered or failed, or the root reports the job complete (as above).
    /// `progress(cluster, results, expected)` is called on every loop turn (at least every
    /// 50 ms while waiting): hosts with a result so far, hosts joined when the job started.
    pub fn run_with(
        &mut self,
        argv: &[&str],
        timeout: Option<Duration>,
        mut progress: impl FnMut(&Cluster, usize, usize),
    ) -> io::Result<RunOutcome> {
        let t0 = StdInstant::now();
        while self.order.len() + 1 >= self.max_jobs {
            if let Some(old) = self.order.pop_front() {
                self.d.m.forget(old);
                self.jobs.remove(&old);
            }
        }
        let job = self.next_job;
        self.next_job += 1;
        let spec = RunSpec {
            job,
            kind: JobKind::Command,
            target: Target::All,
            argv: List(argv.iter().map(|s| s.to_string()).collect()),
            env: List::default(),
            cwd: None,
            // 0: no timeout (the core's convention).
            timeout_ms: timeout.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)),
            stream: false,
        };
        let expected: Vec<NodeId> =
            self.hosts.iter().filter(|(_, h)| h.state == HostState::Joined).map(|(id, _)| *id).collect();
        let now = self.d.now();
        self.d.m.run(now, spec).map_err(other)?;
        self.jobs.insert(job, JobState::default());
        self.order.push_back(job);
        self.d.drain();
        self.take_reports();
        let end = timeout.and_then(|t| t0.checked_add(t.saturating_add(RESULT_SLACK)));
        // When the root said the job complete while hosts joined at the start have not
        // answered: they are rejoining (their results come once they attach), so wait for
        // them a little, unless they are known to be gone.
        let mut complete_at: Option<StdInstant> = None;
        loop {
            let got = self.jobs.get(&job).map_or(0, |j| j.got.len());
            progress(self, got, expected.len());
            let Some(j) = self.jobs.get(&job) else { break };
            let waiting: Vec<&NodeId> = expected
                .iter()
                .filter(|h| !j.got.contains(h) && self.hosts.get(h).is_none_or(|i| i.state != HostState::Failed))
                .collect();
            if waiting.is_empty() {
                break;
            }
            if j.complete {
                let since = *complete_at.get_or_insert_with(StdInstant::now);
                let joined = waiting.iter().any(|h| self.hosts.get(h).is_some_and(|i| i.state == HostState::Joined));
                if !joined || since.elapsed() >= REJOIN_WAIT {
                    break;
                }
            }
            let now = StdInstant::now();
            let wait = match end {
                Some(end) if now >= end => break,
                Some(end) => (end - now).min(TURN),
                None => TURN,
            };
            self.pump(wait)?;
        }
        let j = self.jobs.get(&job);
        let mut groups: Vec<ResultGroup> = Vec::new();
        for r in j.map_or(&[][..], |j| &j.reports[..]) {
            match groups.iter_mut().find(|g| g.status == r.status && g.truncated == r.truncated && g.output == r.output)
            {
                Some(g) => g.nodes.extend_from_slice(&r.nodes),
                None => groups.push(r.clone()),
            }
        }
        for g in &mut groups {
            g.nodes.sort_unstable();
        }
        Ok(RunOutcome {
            job,
            reports: j.map_or(0, |j| j.reports.len()),
            complete: j.is_some_and(|j| j.complete),
            missing: expected.into_iter().filter(|h| !j.is_some_and(|j| j.got.contains(h))).collect(),
            groups,
            elapsed: t0.elapsed(),
        })
    }

    /// Dismantle the overlay and wait (at most `timeout`) for every launched client to exit;
    /// the ones still running then are killed. All are reaped.
    pub fn dismantle(&mut self, timeout: Duration) -> io::Result<DismantleOutcome> {
        let t0 = StdInstant::now();
        let now = self.d.now();
        self.d.m.dismantle(now);
        self.d.drain();
        let running = self.d.launcher.as_mut().map_or(0, Launcher::reap);
        self.wait_until(timeout, |c| c.d.launcher.as_ref().is_none_or(|l| l.running() == 0))?;
        let killed = self.d.launcher.as_mut().map_or(0, Launcher::shutdown);
        self.d.close_all(Duration::from_millis(200));
        Ok(DismantleOutcome { exited: running.saturating_sub(killed), killed, elapsed: t0.elapsed() })
    }

    fn take_reports(&mut self) {
        // Reaping happens in the launcher's poll; reports come from the controller.
        while let Some(r) = self.d.reports.pop_front() {
            match r {
                Report::Host { host, state, why } => {
                    let at = self.started.elapsed();
                    let h = self.hosts.entry(host).or_insert(HostInfo { state, why: None, joined_at: None });
                    h.state = state;
                    if why.is_some() {
                        h.why = why;
                    }
                    if state == HostState::Joined {
                        h.joined_at = Some(at);
                    }
                }
                Report::RootChanged(root) => self.root = Some(root),
                Report::Result { job, status, truncated, output, nodes } => {
                    let Some(j) = self.jobs.get_mut(&job) else { continue };
                    let nodes: Vec<NodeId> = nodes.iter().collect();
                    j.got.extend(nodes.iter().copied());
                    j.reports.push(ResultGroup { status, truncated, output: output.to_vec(), nodes });
                }
                Report::JobComplete { job } => {
                    if let Some(j) = self.jobs.get_mut(&job) {
                        j.complete = true;
                    }
                }
                Report::Stream { .. } | Report::BarrierReleased { .. } | Report::BarrierLate { .. } => {}
            }
        }
    }
}
