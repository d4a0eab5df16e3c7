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
//! Bounds: at most one note (why it failed, when it joined, its script's failure) per host the
//! controller knows; per job, the result groups merged by output and one entry per result
//! report (the controller itself bounds jobs at `Config::max_jobs`; [`Cluster::run`] forgets
//! the oldest job beyond that), one loss time per expected host, and the last
//! [`LOST_OUTPUT_TAIL`] bytes of live output per expected host.
//!
//! **Lost hosts.** A host whose link fails while a job runs is not given up at once: it may be
//! paused (SIGSTOP, a debugger, a VM migrating) and still hold its result. The job waits for
//! it until the result comes, the host fails, or [`ClusterConfig::lost_grace`] (30 s) passed
//! since the loss. A host whose client was relaunched during the job answers
//! [`ExitStatus::Lost`] (the job runs at most once per host unless it asks for retries); such
//! hosts, and those that never answered, are named in [`RunOutcome::lost`] with the live
//! output that had arrived from them.

use crate::auth::Key;
use crate::driver::{Driver, DriverConfig, DriverStats};
use crate::launcher::{LaunchMethod, Launcher};
use crate::spool::{JobSpool, SpilledOutput, Spool, Stored};
use plush_core::wire::{ExitStatus, JobKind, List, PushSpec, RunSpec, Target};
use plush_core::{Config, Controller, HostState, Instant, NodeId, NodeSet, Report};
use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

/// Longest a single loop turn waits inside the `Cluster`'s waits, so that deadlines are kept.
const TURN: Duration = Duration::from_millis(50);
/// Time added to a job's own timeout for its results to travel up and merge.
const RESULT_SLACK: Duration = Duration::from_secs(5);
/// Once the root reports a job complete, how long hosts believed joined that have not answered
/// are waited for: an orphan whose first attempt to rejoin failed tries again after
/// `Config::join_retry` (5 s), and gets the job when it attaches.
const REJOIN_WAIT: Duration = Duration::from_secs(15);
/// How long a host whose link failed while a job ran is waited for, by default (see
/// [`ClusterConfig::lost_grace`]).
pub const LOST_GRACE: Duration = Duration::from_secs(30);
/// Live output kept per host and job for [`RunOutcome::lost`]: the last this many bytes.
pub const LOST_OUTPUT_TAIL: usize = 4 << 10;

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
    /// A maintenance script every host runs (`/bin/sh -c`) before it joins; a host whose
    /// script fails becomes `Failed` (see [`HostInfo::script`]). At most
    /// [`plush_core::wire::MAX_SCRIPT`] bytes. Default none.
    pub maintenance: Option<String>,
    /// How long a job waits for a host whose link failed while it ran (it may be paused, or cut
    /// off for a while, and still deliver the result it holds): until its result arrives, it
    /// is relaunched (the new client answers that the job was lost with the old one), it
    /// fails, or this long after the loss. Default [`LOST_GRACE`], 30 s.
    pub lost_grace: Duration,
    /// How long the clients outlive this controller (see `Controller::set_linger`); `None`
    /// (the default): the clients' own `Config::linger`, 10 min.
    pub linger: Option<Duration>,
    /// Keep result outputs in memory up to this many bytes (all jobs together), and those past
    /// it in an anonymous temporary file ([`crate::spool`]): result groups then name the file
    /// ([`ResultGroup::spilled`]). `None` (the default): every output is kept in memory, in
    /// [`ResultGroup::output`] and [`ResultGroup::stderr`]. The CLI uses
    /// [`crate::spool::SPILL_MEMORY`] (16 MiB).
    pub spill_memory: Option<u64>,
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
            maintenance: None,
            lost_grace: LOST_GRACE,
            linger: None,
            spill_memory: None,
        }
    }
}

/// What the cluster knows of a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    /// Its state, as the controller has it now.
    pub state: HostState,
    /// For a failed host: why.
    pub why: Option<&'static str>,
    /// When it last became `Joined`, since the cluster started.
    pub joined_at: Option<Duration>,
    /// For a host whose maintenance script failed: how it ended, and the start of its output.
    pub script: Option<(ExitStatus, String)>,
}

/// Results of many hosts with the same status, stdout and stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultGroup {
    /// How the job ended there.
    pub status: ExitStatus,
    /// The output was cut at the job's [`JobSpec::max_output`].
    pub truncated: bool,
    /// stdout (empty for a job that streamed: its output came as it was written).
    pub output: Vec<u8>,
    /// The hosts, in order.
    pub nodes: Vec<NodeId>,
    /// stderr (empty for a job that streamed).
    pub stderr: Vec<u8>,
    /// With [`ClusterConfig::spill_memory`]: the output is in a temporary file, not in
    /// `output` and `stderr` (both empty then). [`ResultGroup::stdout_body`] and
    /// [`ResultGroup::stderr_body`] read either.
    pub spilled: Option<Arc<SpilledOutput>>,
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
    /// Hosts lost during the job: those whose client restarted while it ran (they answered
    /// [`ExitStatus::Lost`]; the job did not run again there) and the missing ones, each with
    /// the live output that had arrived from it (with `stream`; the last
    /// [`LOST_OUTPUT_TAIL`] bytes), in host order.
    pub lost: Vec<(NodeId, Vec<u8>)>,
    /// From the call to its return.
    pub elapsed: Duration,
}

impl RunOutcome {
    /// Hosts with a result.
    pub fn result_count(&self) -> usize {
        self.groups.iter().map(|g| g.nodes.len()).sum()
    }
}

/// A job to start with [`Cluster::start_job`].
#[derive(Clone, Copy, Debug)]
pub struct JobSpec<'a> {
    /// The command and its arguments (run directly, not through a shell).
    pub argv: &'a [&'a str],
    /// The hosts to run on; `None`: every member.
    pub target: Option<&'a [NodeId]>,
    /// Killed after this long; `None`: never.
    pub timeout: Option<Duration>,
    /// Send every byte of output up as it comes ([`Cluster::take_streams`]) instead of in
    /// the final result.
    pub stream: bool,
    /// Extra environment.
    pub env: &'a [(String, String)],
    /// Cut each host's output (stdout and stderr together) after this many bytes; `None`: no
    /// cap. A cut result is marked `truncated`.
    pub max_output: Option<u64>,
}

/// A file to push with [`Cluster::start_push`].
#[derive(Clone, Debug)]
pub struct PushJob<'a> {
    /// The file on this machine.
    pub src: &'a Path,
    /// Where it goes on each host (an existing directory there, or a path ending in `/`,
    /// means `DEST/name of src`; a relative path is relative to the client's directory).
    pub dest: &'a str,
    /// The hosts; `None`: every member.
    pub target: Option<&'a [NodeId]>,
    /// Given up after this long; `None`: never.
    pub timeout: Option<Duration>,
    /// Bytes per chunk (at most `plush_core::wire::MAX_CHUNK`). 128 KiB is a good default.
    pub chunk: u32,
    /// Permission bits; `None`: those of `src`.
    pub mode: Option<u32>,
    /// The file is a Plush client: hosts restart on it (see `plush upgrade`).
    pub upgrade: bool,
    /// The SHA-256 announced; `None`: computed from `src` (tests give a wrong one on purpose).
    pub digest: Option<[u8; 32]>,
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

/// Live output chunks kept per job until taken ([`Cluster::take_streams`]); older ones are
/// dropped (and counted) past it. The controller acknowledges live output only once taken, so
/// the root's output window (`Config::output_window`, in chunks of at most 64 KiB) bounds
/// what waits here far below this.
pub const MAX_STREAM_CHUNKS: usize = 4096;
/// Barrier records kept; the oldest released ones are forgotten past it.
pub const MAX_BARRIER_RECORDS: usize = 256;

/// What the cluster keeps of a job beside the controller: the outputs (the controller hands
/// them out and keeps none), the live output not yet taken, and the clock of the wait. Which
/// hosts the job expects, whose results arrived and whether it is complete are asked of the
/// controller ([`Controller::job_expected`], [`Controller::results_of`],
/// [`Controller::job_complete`]), which forgets the job when the cluster does.
struct JobState {
    /// Results merged by (status, truncated, output), in the order each output first came:
    /// the tree merges the results of one message, and a group arriving in another message
    /// with an output already here joins that group, once, as it arrives. The bytes are
    /// shared with the controller's, or in the spool (one copy per distinct output).
    groups: Vec<Group>,
    /// Each `Report::Result` as it arrived: its group, and where its nodes are in that
    /// group's (for [`Cluster::take_results`]). Shown groups of a resumed job count as one
    /// each.
    arrivals: Vec<(usize, Range<usize>)>,
    /// When the job was started (or taken over) here, on the wall clock the waits use.
    started: StdInstant,
    streams: VecDeque<Streamed>,
    streams_dropped: u64,
    /// Expected hosts without a result that left `Joined` during the job, and when they first
    /// did (for [`ClusterConfig::lost_grace`]). The controller has no such grace: it waits for
    /// no host, it reports what arrives; how long a caller waits for a lost host is the
    /// cluster's policy, on the wall clock.
    lost_at: BTreeMap<NodeId, StdInstant>,
    /// The last [`LOST_OUTPUT_TAIL`] bytes of live output per host.
    tails: BTreeMap<NodeId, Vec<u8>>,
    /// Arrivals already handed out by [`Cluster::take_results`].
    results_taken: usize,
    /// With [`ClusterConfig::spill_memory`]: the outputs, in memory or in the job's file.
    spool: JobSpool,
}

impl JobState {
    fn new(started: StdInstant) -> JobState {
        JobState {
            groups: Vec::new(),
            arrivals: Vec::new(),
            started,
            streams: VecDeque::new(),
            streams_dropped: 0,
            lost_at: BTreeMap::new(),
            tails: BTreeMap::new(),
            results_taken: 0,
            spool: JobSpool::default(),
        }
    }

    /// A result arrived: merge it into the group with its output, or start one.
    fn arrived(&mut self, status: ExitStatus, truncated: bool, output: Out, nodes: impl IntoIterator<Item = NodeId>) {
        let k = match self
            .groups
            .iter()
            .position(|g| g.status == status && g.truncated == truncated && g.output.same(&output))
        {
            Some(k) => k,
            None => {
                self.groups.push(Group { status, truncated, output, nodes: Vec::new() });
                self.groups.len() - 1
            }
        };
        let g = &mut self.groups[k];
        let start = g.nodes.len();
        g.nodes.extend(nodes);
        self.arrivals.push((k, start..g.nodes.len()));
    }
}

/// What the controller reports of a host and does not keep: why it failed, when it last
/// joined (on the wall clock of [`Cluster::uptime`]), how its maintenance script failed.
/// Its state is asked of the controller.
#[derive(Clone, Debug, Default)]
struct HostNotes {
    why: Option<&'static str>,
    joined_at: Option<Duration>,
    script: Option<(ExitStatus, String)>,
}

/// The results of one job with the same status and output.
struct Group {
    status: ExitStatus,
    truncated: bool,
    output: Out,
    /// In the order they arrived.
    nodes: Vec<NodeId>,
}

/// Where an arrived group's output is: shared with the controller core's copy (without
/// spilling), or in the job's spool.
#[derive(Clone)]
enum Out {
    Shared(Rc<Vec<u8>>, Rc<Vec<u8>>),
    Stored(Stored),
}

impl Out {
    fn same(&self, other: &Out) -> bool {
        let same_bytes = |a: &Rc<Vec<u8>>, b: &Rc<Vec<u8>>| Rc::ptr_eq(a, b) || a == b;
        match (self, other) {
            (Out::Shared(a, b), Out::Shared(c, d)) => same_bytes(a, c) && same_bytes(b, d),
            (Out::Stored(a), Out::Stored(b)) => a.same(b),
            _ => false,
        }
    }
}

impl Group {
    /// The group, for `nodes`: the bytes are copied unless they are in the file.
    fn group_of(&self, nodes: Vec<NodeId>) -> ResultGroup {
        let (output, stderr, spilled) = match &self.output {
            Out::Shared(o, e) => (o.to_vec(), e.to_vec(), None),
            Out::Stored(Stored::Mem(o, e)) => (o.to_vec(), e.to_vec(), None),
            Out::Stored(Stored::File(f)) => (Vec::new(), Vec::new(), Some(Arc::clone(f))),
        };
        ResultGroup { status: self.status, truncated: self.truncated, output, nodes, stderr, spilled }
    }
}

/// Live output of one host ([`Cluster::take_streams`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Streamed {
    /// The host.
    pub node: NodeId,
    /// From its stderr (else stdout).
    pub err: bool,
    /// The bytes, in order per host and stream.
    pub bytes: Vec<u8>,
}

/// What is known of a barrier opened with [`Cluster::barrier`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BarrierInfo {
    /// It was released.
    pub released: bool,
    /// Released at its threshold after its timeout, not complete.
    pub partial: bool,
    /// Nodes that had entered at the release.
    pub entered: u64,
    /// Nodes expected.
    pub expected: u64,
    /// Nodes that entered after the release (let through at once).
    pub late: Vec<NodeId>,
}

/// Notices kept until taken; the oldest are dropped past it.
pub const MAX_NOTICES: usize = 1024;

/// A key file that is removed when dropped, and on a fatal signal (see [`KeyFile::create`]).
struct KeyFile(PathBuf);

/// Key files are `plush-key-PID-RANDOM.hex` in the temporary directory.
const KEY_FILE_PREFIX: &str = "plush-key-";

impl KeyFile {
    /// Write `key` to a fresh key file of this process, after removing the key files that
    /// controllers no longer running left behind (a SIGKILL gives no chance to clean up). The
    /// file is removed when the `KeyFile` is dropped, and also when SIGHUP, SIGTERM, SIGQUIT or
    /// SIGINT kills the process (until the CLI takes the signals over, see
    /// [`crate::release_exit_signals`]).
    fn create(key: &Key) -> io::Result<KeyFile> {
        let dir = std::env::temp_dir();
        remove_stale_key_files(&dir);
        let path = dir.join(format!("{KEY_FILE_PREFIX}{}-{:016x}.hex", std::process::id(), rand::random::<u64>()));
        key.write_new_file(&path)?;
        crate::sys::remove_on_fatal_signals(&path, true);
        Ok(KeyFile(path))
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        crate::sys::forget_doomed_file();
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Remove the key files in `dir` whose controller (the pid in the name) is no longer running
/// and which belong to this user. Returns how many were removed.
fn remove_stale_key_files(dir: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    // Our user: the owner of our own /proc entry.
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(KEY_FILE_PREFIX).and_then(|r| r.strip_suffix(".hex")) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || crate::sys::pid_exists(pid) {
            continue;
        }
        let ours = e.metadata().ok().map(|m| m.uid());
        if ours.is_some() && ours == me && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The controller side of a Plush cluster. See the module docs.
///
/// It carries out the controller's outputs (through the [`Driver`]) and passes its reports on;
/// it keeps no copy of the controller's state. Hosts' states, which hosts a job expects, whose
/// results arrived and whether a job is complete are asked of the [`Controller`]. What it
/// keeps is what the controller does not: the launcher and its processes, the key file, the
/// outputs (in memory or spilled to disk), live output not yet taken and the tails of lost
/// hosts', the wall-clock grace for lost hosts, the notices, and what reports said that the
/// controller does not remember (why a host failed, when it last joined, how its script
/// failed; the last root reported; barrier releases).
pub struct Cluster {
    d: Driver<Controller>,
    key_file: KeyFile,
    started: StdInstant,
    /// Only hosts with something to note; a host's state is the controller's.
    notes: BTreeMap<NodeId, HostNotes>,
    jobs: BTreeMap<u64, JobState>,
    next_job: u64,
    /// The root last reported: the controller forgets its root while the link to it is down
    /// (until the new root announces itself), and callers want the tree's root meanwhile.
    root: Option<NodeId>,
    max_jobs: usize,
    /// What the releases and late entries reported: the controller keeps no record of a
    /// release (its counts then, whether it was partial, who came late).
    barriers: BTreeMap<String, BarrierInfo>,
    /// Reports passed on to the user as they came: root changes, barrier releases, late entries.
    notices: VecDeque<Report>,
    lost_grace: Duration,
    /// [`ClusterConfig::spill_memory`] was given.
    spilling: bool,
    /// Outputs in memory, the bound, and temporary-file failures (see [`crate::spool`]).
    spool: Spool,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// `nodes` (`None`: every host) as the wire says it.
fn target_of(nodes: Option<&[NodeId]>) -> Target {
    match nodes {
        None => Target::All,
        Some(nodes) => Target::Nodes(nodes.iter().copied().collect()),
    }
}

/// The ids of `set` in [`NodeId`]'s order (a [`NodeSet`] iterates by port first).
fn sorted(set: &NodeSet) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = set.iter().collect();
    v.sort_unstable();
    v
}

/// A node count as a `usize` (saturating; counts of hosts added here always fit).
fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Cluster {
    /// Start a controller: generate the key, listen, get the launcher ready.
    pub fn start(cfg: ClusterConfig) -> io::Result<Cluster> {
        Cluster::start_with(cfg, Key::generate(), true)
    }

    /// A controller for an overlay that is already running, under its cluster `key` (`plush
    /// attach`, after the previous controller died): no launcher (a host lost from now on is
    /// not started again, and fails once its invitation expires). Reach the overlay with
    /// [`Cluster::attach_to`]; take over its jobs with [`Cluster::resume_job`].
    pub fn attach(cfg: ClusterConfig, key: Key) -> io::Result<Cluster> {
        Cluster::start_with(cfg, key, false)
    }

    fn start_with(cfg: ClusterConfig, key: Key, launch: bool) -> io::Result<Cluster> {
        // Many hosts mean many sockets; not being able to raise the limit is not fatal.
        let _ = crate::sys::raise_nofile_limit();
        // The launched clients get nothing of ours but stdio.
        crate::sys::cloexec_inherited();
        crate::sys::map_large_allocations();
        let key_file = KeyFile::create(&key)?;
        let listener = std::net::TcpListener::bind(cfg.listen)?;
        let id = NodeId::new(listener.local_addr()?);
        let mut cfg = cfg;
        if cfg.core.build == 0 {
            cfg.core.build = crate::build_hash();
        }
        let mut ctrl = Controller::new(id, cfg.core.clone(), crate::client::fresh_seed(), Instant::ZERO);
        // Live output is acknowledged once taken ([`Cluster::take_streams`]).
        ctrl.set_manual_output_ack(true);
        // With spilling, large outputs come out of the core as they arrive, into the spool.
        ctrl.set_blob_reports(cfg.spill_memory.is_some());
        ctrl.set_maintenance(Instant::ZERO, cfg.maintenance.take())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        ctrl.set_linger(Instant::ZERO, cfg.linger);
        let dcfg = DriverConfig { core: cfg.core.clone(), ..DriverConfig::default() };
        let mut d = Driver::new(ctrl, id, listener, key, dcfg)?;
        let method = cfg.method.unwrap_or(LaunchMethod::Local { program: cfg.client_program, args: cfg.client_args });
        let mut launcher = Launcher::with_method(method, key_file.0.clone());
        launcher.max_in_flight = cfg.max_launches_in_flight.max(1);
        launcher.ready_timeout = cfg.launch_timeout;
        if launch {
            d.launcher = Some(launcher);
        }
        Ok(Cluster {
            d,
            key_file,
            started: StdInstant::now(),
            notes: BTreeMap::new(),
            jobs: BTreeMap::new(),
            next_job: 1,
            root: None,
            max_jobs: cfg.core.max_jobs.max(1),
            barriers: BTreeMap::new(),
            notices: VecDeque::new(),
            lost_grace: cfg.lost_grace,
            spilling: cfg.spill_memory.is_some(),
            spool: Spool { limit: cfg.spill_memory.unwrap_or(0), ..Spool::default() },
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

    /// Call `hook` with every report of the controller as it is emitted (`Some`), and with
    /// `None` before the next frame leaves (in particular the `Ack` of those results) and at
    /// the end of each event-loop turn, before the caller sees the reports: a session journal
    /// appends results on `Some` and syncs on `None`. See `Driver::report_hook`.
    pub fn set_report_hook(&mut self, hook: crate::driver::ReportHook) {
        self.d.report_hook = Some(hook);
    }

    /// Take over hosts as the previous controller last knew them (`plush attach`; see
    /// `Controller::adopt_hosts`): joined hosts are believed members until a census after
    /// attaching finds one missing (then the root checks on it: a dead one is reported and
    /// invited again, a live one in another tree merges its tree into ours); failed ones stay
    /// failed; the others are invited again. Hosts known already are left as they are.
    pub fn adopt_hosts(&mut self, hosts: &[(NodeId, HostState)]) {
        let now = self.d.now();
        self.d.m.adopt_hosts(now, hosts);
        self.d.drain();
        self.take_reports();
    }

    /// Send `SetCtrl` to each of `members` (the journal's root and members, after the previous
    /// controller died): any member passes it up to its root, which links to this controller,
    /// answers `SetRoot`, takes a census and re-sends the results it holds. Members that cannot
    /// be reached are ignored; call again with others while [`Cluster::root`] is `None`.
    pub fn attach_to(&mut self, members: &[NodeId]) {
        let now = self.d.now();
        for m in members {
            self.d.m.attach(now, *m);
        }
        self.d.drain();
        self.take_reports();
    }

    /// Take over `spec`, a job an earlier controller started (`plush attach`): `expected` are
    /// the hosts that owe a result, `shown` the result groups that controller received (they
    /// count as gathered: the tree's copies of them are dropped as duplicates). The job is
    /// then waited for like any other ([`Cluster::wait_job`]); [`Cluster::take_results`]
    /// hands out only what arrives from now on.
    pub fn resume_job(&mut self, spec: RunSpec, expected: Vec<NodeId>, shown: Vec<ResultGroup>) -> io::Result<()> {
        let job = spec.job;
        let got: NodeSet = shown.iter().flat_map(|g| g.nodes.iter().copied()).collect();
        let now = self.d.now();
        self.d.m.adopt_job(now, spec, got, false).map_err(other)?;
        self.d.m.set_job_expected(job, expected.into_iter().collect()).map_err(other)?;
        let mut state = JobState::new(StdInstant::now());
        for g in shown {
            state.arrived(g.status, g.truncated, Out::Shared(Rc::new(g.output), Rc::new(g.stderr)), g.nodes);
        }
        state.results_taken = state.arrivals.len();
        self.jobs.insert(job, state);
        self.next_job = self.next_job.max(job + 1);
        self.d.drain();
        self.take_reports();
        Ok(())
    }

    /// Whether a host that owes `job` a result is joined (so its result may still come).
    pub fn job_waiting_joined(&self, job: u64) -> bool {
        self.waiting_for(job).any(|h| self.d.m.host_state(&h) == Some(HostState::Joined))
    }

    /// What was sent to the tree for `job` (asked of the controller).
    pub fn job_spec(&self, job: u64) -> Option<&RunSpec> {
        self.d.m.job_spec(job)
    }

    /// Hosts joined and targeted when `job` started (those that owe a result), in order
    /// (asked of the controller: [`Controller::job_expected`]).
    pub fn job_expected(&self, job: u64) -> Option<Vec<NodeId>> {
        self.d.m.job_expected(job).map(sorted)
    }

    /// The hosts a job started now for `target` (every host when `None`) would expect a
    /// result from: those joined and targeted ([`Controller::joined_in`]), in order.
    pub fn joined_in(&self, target: Option<&[NodeId]>) -> Vec<NodeId> {
        sorted(&self.d.m.joined_in(&target_of(target)))
    }

    /// The root of the tree, as last reported (it stays while the controller's link to it is
    /// down).
    pub fn root(&self) -> Option<NodeId> {
        self.root
    }

    /// The driver's counters.
    pub fn driver_stats(&self) -> DriverStats {
        self.d.stats
    }

    /// With [`ClusterConfig::spill_memory`]: bytes of outputs in memory now, output bytes
    /// written to temporary files so far, and outputs kept in memory past the bound because the
    /// temporary file could not be created or written.
    pub fn spill_state(&self) -> (u64, u64, u64) {
        (self.spool.in_memory, self.spool.spilled, self.spool.errors)
    }

    /// The controller's counters.
    pub fn controller_stats(&self) -> plush_core::controller::ControllerStats {
        *self.d.m.stats()
    }

    /// Every host the controller knows and what is known of it, in order.
    pub fn hosts(&self) -> impl Iterator<Item = (NodeId, HostInfo)> + '_ {
        self.d.m.hosts().map(|(id, state)| (id, self.info(id, state)))
    }

    /// One host.
    pub fn host(&self, id: &NodeId) -> Option<HostInfo> {
        self.d.m.host_state(id).map(|state| self.info(*id, state))
    }

    /// `id`, in `state`, with what reports said of it.
    fn info(&self, id: NodeId, state: HostState) -> HostInfo {
        let n = self.notes.get(&id).cloned().unwrap_or_default();
        HostInfo { state, why: n.why, joined_at: n.joined_at, script: n.script }
    }

    /// Hosts in state `state`.
    pub fn count(&self, state: HostState) -> usize {
        self.d.m.host_counts()[state as usize]
    }

    /// Failed hosts and why.
    pub fn failures(&self) -> Vec<(NodeId, &'static str)> {
        self.d
            .m
            .hosts()
            .filter(|(_, s)| *s == HostState::Failed)
            .map(|(id, _)| (id, self.notes.get(&id).and_then(|n| n.why).unwrap_or("?")))
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
        self.wait_until(timeout, |c| {
            let n = c.d.m.host_counts();
            n[HostState::Pending as usize] + n[HostState::Invited as usize] + n[HostState::Disconnected as usize] == 0
        })
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
        let job = self.start_job(JobSpec { argv, target: None, timeout, stream: false, env: &[], max_output: None })?;
        self.wait_job(job, |c, got, expected| progress(c, got, expected), || false)
    }

    /// Start a job without waiting for it; returns its id. Its results gather until
    /// [`Cluster::wait_job`] or [`Cluster::job_outcome`] reads them. The oldest jobs are
    /// forgotten (at the controller and here) beyond `Config::max_jobs`.
    pub fn start_job(&mut self, spec: JobSpec<'_>) -> io::Result<u64> {
        self.start_kind(JobKind::Command, spec, None)
    }

    /// Start pushing a file down the tree without waiting; returns the job's id. Each host's
    /// result is success (exit 0, no output) or the error (exit 1, the text as output):
    /// wait with [`Cluster::wait_job`] like a command. The controller sends each chunk once,
    /// to the root; every member forwards it to its children as it arrives.
    pub fn start_push(&mut self, push: PushJob<'_>) -> io::Result<u64> {
        let build = if push.upgrade { crate::build_hash() } else { 0 };
        self.push_with_build(push, build)
    }

    /// [`Cluster::start_push`] with the build an upgrade names (0: none; every target
    /// installs it).
    fn push_with_build(&mut self, push: PushJob<'_>, build: u64) -> io::Result<u64> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(push.src)?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file", push.src.display()),
            ));
        }
        let digest = match push.digest {
            Some(d) => d,
            None => crate::transfer::file_digest(push.src)?,
        };
        let name = push.src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
        let spec = PushSpec {
            path: push.dest.to_string(),
            name,
            mode: push.mode.unwrap_or(meta.permissions().mode() & 0o7777),
            size: meta.len(),
            digest,
            chunk: push.chunk,
            upgrade: push.upgrade,
            build,
        };
        let job_spec = JobSpec {
            argv: &[],
            target: push.target,
            timeout: push.timeout,
            stream: false,
            env: &[],
            max_output: None,
        };
        let src = push.src.to_path_buf();
        self.start_kind(JobKind::Push, job_spec, Some((spec, src)))
    }

    /// Joined hosts whose client announced another build than this controller's.
    pub fn outdated(&self) -> Vec<NodeId> {
        self.d.m.outdated()
    }

    /// Whether `host` is joined with this controller's build.
    pub fn current(&self, host: &NodeId) -> bool {
        self.d.m.host_state(host) == Some(HostState::Joined) && self.d.m.host_build(host) == crate::build_hash()
    }

    /// Push `binary` (a Plush client of this controller's version: by default this executable)
    /// to `hosts` as an upgrade: each installs it as `~/.cache/plush/plush-VERSION-DIGEST` and
    /// restarts on it, rejoining with the new build (see [`crate::client`]). Returns the push's
    /// job id; its results say which hosts installed it. [`Cluster::current`] tells which came
    /// back. Without `force`, a host that already runs this build succeeds at once and does
    /// not restart; with it, every host installs the binary and restarts (unless it runs that
    /// very file already).
    pub fn start_upgrade(&mut self, hosts: &[NodeId], binary: &Path, force: bool) -> io::Result<u64> {
        let digest = crate::transfer::file_digest(binary)?;
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let dest = format!("~/.cache/plush/plush-{}-{hex}", crate::version());
        self.push_with_build(
            PushJob {
                src: binary,
                dest: &dest,
                target: Some(hosts),
                timeout: Some(Duration::from_secs(300)),
                chunk: 128 << 10,
                mode: Some(0o755),
                upgrade: true,
                digest: Some(digest),
            },
            if force { 0 } else { crate::build_hash() },
        )
    }

    fn start_kind(&mut self, kind: JobKind, spec: JobSpec<'_>, push: Option<(PushSpec, PathBuf)>) -> io::Result<u64> {
        // The controller keeps its jobs in the order they were started (the cluster's are the
        // same jobs).
        while self.d.m.jobs().count() + 1 >= self.max_jobs {
            let Some(old) = self.d.m.jobs().next().map(|(spec, _, _)| spec.job) else { break };
            self.forget_job(old);
        }
        let job = self.next_job;
        self.next_job += 1;
        let target = target_of(spec.target);
        let run = RunSpec {
            job,
            kind,
            target,
            argv: List(spec.argv.iter().map(|s| s.to_string()).collect()),
            env: List(spec.env.to_vec()),
            cwd: None,
            // 0: no timeout (the core's convention).
            timeout_ms: spec.timeout.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)),
            stream: spec.stream,
            push: push.as_ref().map(|p| p.0.clone()),
            max_output: spec.max_output.unwrap_or(0),
        };
        if let Some((_, src)) = &push {
            // Open the source before the job exists: a file that cannot be read fails here.
            self.d.store.add_source(job, std::rc::Rc::new(run.clone()), src)?;
        }
        let now = self.d.now();
        // The controller records which hosts the job expects (those joined and targeted now).
        if let Err(e) = self.d.m.run(now, run) {
            self.d.store.forget(job);
            return Err(other(e));
        }
        self.jobs.insert(job, JobState::new(StdInstant::now()));
        self.d.drain();
        self.take_reports();
        Ok(job)
    }

    /// Hold `job` open, or close it ([`Controller::set_job_open`]): while open, hosts that join
    /// owe it a result too, and [`Cluster::wait_job`] does not end. `plush run` starts its
    /// command at the first join and closes the job once the build has settled.
    pub fn set_job_open(&mut self, job: u64, open: bool) -> io::Result<()> {
        self.d.m.set_job_open(job, open).map_err(other)
    }

    /// Results so far and hosts expected (joined and targeted when the job started).
    pub fn job_progress(&self, job: u64) -> Option<(usize, usize)> {
        let got = self.d.m.results_of(job)?.len();
        let expected = self.d.m.job_expected(job)?.len();
        Some((count(got), count(expected)))
    }

    /// Whether nothing more is to be waited for: every expected host answered or failed, or
    /// the root said the job complete, no host that has not answered is believed joined, and
    /// none was lost during the job less than [`ClusterConfig::lost_grace`] ago. (The 15 s
    /// grace [`Cluster::wait_job`] gives rejoining hosts is not counted here.)
    pub fn job_settled(&self, job: u64) -> bool {
        let Some(j) = self.jobs.get(&job) else { return true };
        if self.d.m.job_open(job) == Some(true) {
            return false;
        }
        let mut waiting = self.waiting_for(job);
        if self.d.m.job_complete(job) == Some(true) {
            return !waiting.any(|h| self.d.m.host_state(&h) == Some(HostState::Joined) || self.in_grace(j, &h));
        }
        waiting.next().is_none()
    }

    /// Whether `h`, expected by `j` and without a result, was lost during the job less than
    /// the grace ago (and has not failed: `waiting_for` leaves failed hosts out).
    fn in_grace(&self, j: &JobState, h: &NodeId) -> bool {
        j.lost_at.get(h).is_some_and(|t| t.elapsed() < self.lost_grace)
    }

    /// The hosts `job` expects that have neither answered nor failed (asked of the controller).
    fn waiting_for(&self, job: u64) -> impl Iterator<Item = NodeId> + '_ {
        let m = &self.d.m;
        let got = m.results_of(job);
        m.job_expected(job)
            .into_iter()
            .flat_map(|e| e.iter())
            .filter(move |h| !got.is_some_and(|g| g.contains(h)) && m.host_state(h) != Some(HostState::Failed))
    }

    /// Live output that arrived for `job` (with `stream`), in order, and how many chunks were
    /// dropped because nobody took them (beyond [`MAX_STREAM_CHUNKS`]).
    pub fn take_streams(&mut self, job: u64) -> (Vec<Streamed>, u64) {
        let (taken, dropped) = match self.jobs.get_mut(&job) {
            Some(j) => (j.streams.drain(..).collect::<Vec<_>>(), std::mem::take(&mut j.streams_dropped)),
            None => (Vec::new(), 0),
        };
        let n: u64 = taken.iter().map(|s| s.bytes.len() as u64).sum();
        if n > 0 {
            // Taken: the hosts may send as much more.
            let now = self.d.now();
            self.d.m.output_taken(now, job, n);
            self.d.drain();
        }
        (taken, dropped)
    }

    /// Result groups of `job` that arrived since the last call (each as it came through the
    /// tree, not merged with the others), for a caller that writes them out as they come.
    pub fn take_results(&mut self, job: u64) -> Vec<ResultGroup> {
        let Some(j) = self.jobs.get_mut(&job) else { return Vec::new() };
        let new = j.arrivals[j.results_taken.min(j.arrivals.len())..]
            .iter()
            .map(|(k, r)| {
                let g = &j.groups[*k];
                g.group_of(g.nodes[r.clone()].to_vec())
            })
            .collect();
        j.results_taken = j.arrivals.len();
        new
    }

    /// Wait for `job`: until every host expected answered (or failed), or its timeout plus a
    /// few seconds passed (no deadline without a timeout), or `stop()` says so. Once the root
    /// reports the job complete, hosts still missing are waited for at most 15 s more, and
    /// only while the controller believes them joined (rejoining after a repair: their results
    /// come when they attach). A host whose link failed while the job ran (lost: paused, cut
    /// off, or dead) is waited for until its result arrives (a paused client that resumes
    /// delivers the one it holds; a relaunched one answers that the job was lost with its
    /// predecessor), it fails, or [`ClusterConfig::lost_grace`] after the loss, whichever
    /// comes first. A job held open ([`Cluster::set_job_open`]) is waited for at least until
    /// it is closed, and its timeout counts from then. `progress(cluster, results, expected)`
    /// is called on every loop
    /// turn (at least every 50 ms); it may take the job's live output
    /// ([`Cluster::take_streams`]).
    pub fn wait_job(
        &mut self,
        job: u64,
        mut progress: impl FnMut(&mut Cluster, usize, usize),
        mut stop: impl FnMut() -> bool,
    ) -> io::Result<RunOutcome> {
        // The last host to start the command started it by then: when the job started, or when
        // it was closed (the wait saw it open).
        let mut t0 = self.jobs.get(&job).map_or_else(StdInstant::now, |j| j.started);
        // 0: no timeout (the core's convention).
        let timeout = self.d.m.job_spec(job).filter(|s| s.timeout_ms > 0).map(|s| Duration::from_millis(s.timeout_ms));
        let mut was_open = false;
        // When the root said the job complete while hosts joined at the start have not
        // answered: they are rejoining (their results come once they attach), so wait for
        // them a little, unless they are known to be gone.
        let mut complete_at: Option<StdInstant> = None;
        while let Some((got, expected)) = self.job_progress(job) {
            progress(self, got, expected);
            let Some(j) = self.jobs.get(&job) else { break };
            let open = self.d.m.job_open(job) == Some(true);
            if open {
                // Nothing ends the wait but `stop` (and the hosts owing a result are not
                // listed: a turn of a long build costs no more than one of its join).
                was_open = true;
                if stop() {
                    break;
                }
                self.pump(TURN)?;
                continue;
            }
            let waiting: Vec<NodeId> = self.waiting_for(job).collect();
            if waiting.is_empty() || stop() {
                break;
            }
            if core::mem::take(&mut was_open) {
                t0 = StdInstant::now();
            }
            if self.d.m.job_complete(job) == Some(true) {
                let since = *complete_at.get_or_insert_with(StdInstant::now);
                let joined = waiting.iter().any(|h| self.d.m.host_state(h) == Some(HostState::Joined));
                let lost = waiting.iter().any(|h| self.in_grace(j, h));
                if (!joined || since.elapsed() >= REJOIN_WAIT) && !lost {
                    break;
                }
            }
            let now = StdInstant::now();
            let end = timeout.and_then(|t| t0.checked_add(t.saturating_add(RESULT_SLACK)));
            let wait = match end {
                Some(end) if now >= end => break,
                Some(end) => (end - now).min(TURN),
                None => TURN,
            };
            self.pump(wait)?;
        }
        Ok(self.job_outcome(job))
    }

    /// What `job` gathered so far.
    pub fn job_outcome(&self, job: u64) -> RunOutcome {
        let j = self.jobs.get(&job);
        // Merged as they arrived: the bytes are copied once per group.
        let groups: Vec<ResultGroup> = j
            .map_or(&[][..], |j| &j.groups[..])
            .iter()
            .map(|g| {
                let mut nodes = g.nodes.clone();
                nodes.sort_unstable();
                g.group_of(nodes)
            })
            .collect();
        let got = self.d.m.results_of(job);
        let mut missing: Vec<NodeId> = self
            .d
            .m
            .job_expected(job)
            .map_or_else(Vec::new, |e| e.iter().filter(|h| !got.is_some_and(|g| g.contains(h))).collect());
        missing.sort_unstable();
        let mut lost: Vec<NodeId> = groups
            .iter()
            .filter(|g| g.status == ExitStatus::Lost)
            .flat_map(|g| g.nodes.iter().copied())
            .chain(missing.iter().copied())
            .collect();
        lost.sort_unstable();
        lost.dedup();
        let tail = |h: &NodeId| j.and_then(|j| j.tails.get(h)).cloned().unwrap_or_default();
        RunOutcome {
            job,
            reports: j.map_or(0, |j| j.arrivals.len()),
            complete: self.d.m.job_complete(job) == Some(true),
            missing,
            lost: lost.into_iter().map(|h| (h, tail(&h))).collect(),
            groups,
            elapsed: j.map_or(Duration::ZERO, |j| j.started.elapsed()),
        }
    }

    /// Kill `job` everywhere (its hosts report `Cancelled`).
    pub fn cancel(&mut self, job: u64) -> io::Result<()> {
        let now = self.d.now();
        self.d.m.cancel(now, job).map_err(other)?;
        self.d.drain();
        self.take_reports();
        Ok(())
    }

    /// Every member's parent, asked of the tree itself (a job without processes: each member
    /// answers with its parent's address, siblings' answers merge): member -> parent, `None`
    /// for the root. Members that did not answer within `timeout` are missing from the map.
    pub fn topology(&mut self, timeout: Duration) -> io::Result<BTreeMap<NodeId, Option<NodeId>>> {
        let job = self.start_kind(
            JobKind::Tree,
            JobSpec { argv: &[], target: None, timeout: None, stream: false, env: &[], max_output: None },
            None,
        )?;
        let end = StdInstant::now() + timeout;
        let out = self.wait_job(job, |_, _, _| {}, || StdInstant::now() >= end)?;
        let mut map = BTreeMap::new();
        for g in &out.groups {
            let text = String::from_utf8_lossy(&g.output);
            let parent = text.trim().parse::<SocketAddr>().ok().map(NodeId::new);
            for n in &g.nodes {
                map.insert(*n, parent);
            }
        }
        self.forget_job(job);
        Ok(map)
    }

    /// Forget `job` here and at the controller (its results are no longer kept).
    pub fn forget_job(&mut self, job: u64) {
        if let Some(j) = self.jobs.remove(&job) {
            self.spool.forget(&j.spool);
        }
        self.d.m.forget(job);
        self.d.store.forget(job);
    }

    /// Open a barrier for `target` (every joined host when `None`): released once all of them
    /// entered, or after `timeout` once `threshold` (0 to 1) of them did. Processes enter it
    /// with `plush barrier NAME`. Its release arrives as a [`Report::BarrierReleased`] notice and in
    /// [`Cluster::barrier_info`].
    pub fn barrier(
        &mut self,
        name: &str,
        target: Option<&[NodeId]>,
        threshold: f64,
        timeout: Duration,
    ) -> io::Result<()> {
        let target = target_of(target);
        let now = self.d.now();
        self.d.m.barrier(now, name, target, threshold, timeout).map_err(other)?;
        while self.barriers.len() >= MAX_BARRIER_RECORDS {
            let Some(old) = self.barriers.iter().find(|(_, b)| b.released).map(|(k, _)| k.clone()) else { break };
            self.barriers.remove(&old);
        }
        self.barriers.insert(name.to_owned(), BarrierInfo::default());
        self.d.drain();
        self.take_reports();
        Ok(())
    }

    /// What is known of barrier `name`.
    pub fn barrier_info(&self, name: &str) -> Option<&BarrierInfo> {
        self.barriers.get(name)
    }

    /// The controller's reports of root changes, barrier releases and late entries
    /// ([`Report::RootChanged`], [`Report::BarrierReleased`], [`Report::BarrierLate`]) since the
    /// last call, as they came.
    pub fn take_notices(&mut self) -> Vec<Report> {
        self.notices.drain(..).collect()
    }

    fn notice(&mut self, n: Report) {
        if self.notices.len() >= MAX_NOTICES {
            self.notices.pop_front();
        }
        self.notices.push_back(n);
    }

    /// Dismantle the overlay and wait (at most `timeout`) for every client to exit: every
    /// launched client (the local ones are our children), and every peer we hold a link to. A
    /// node exits only once its children have, so the root's link closing means the tree is
    /// gone; that is how the end of clients launched over ssh shows, whose logins ended when
    /// they listened (`plush client --detach`). Launched clients still running then are killed.
    /// All are reaped.
    pub fn dismantle(&mut self, timeout: Duration) -> io::Result<DismantleOutcome> {
        let t0 = StdInstant::now();
        let now = self.d.now();
        self.d.m.dismantle(now);
        self.d.drain();
        let running = self.d.launcher.as_mut().map_or(0, Launcher::reap);
        self.wait_until(timeout, |c| {
            c.d.launcher.as_ref().is_none_or(|l| l.running() == 0) && c.d.connection_count() == 0
        })?;
        let killed = self.d.launcher.as_mut().map_or(0, Launcher::shutdown);
        self.d.close_all(Duration::from_millis(200));
        Ok(DismantleOutcome { exited: running.saturating_sub(killed), killed, elapsed: t0.elapsed() })
    }

    fn take_reports(&mut self) {
        // Reaping happens in the launcher's poll; reports come from the controller.
        while let Some(r) = self.d.reports.pop_front() {
            match r {
                Report::Host { host, state, why } => {
                    if self.d.debug() {
                        eprintln!(
                            "plush controller: {host} {state:?}{}",
                            why.map_or(String::new(), |w| format!(" ({w})"))
                        );
                    }
                    let at = self.started.elapsed();
                    if why.is_some() || state == HostState::Joined {
                        let n = self.notes.entry(host).or_default();
                        if why.is_some() {
                            n.why = why;
                        }
                        if state == HostState::Joined {
                            n.joined_at = Some(at);
                        }
                    }
                    if !matches!(state, HostState::Joined | HostState::Failed) {
                        // Lost while jobs it has not answered ran: they wait for it a while.
                        let now = StdInstant::now();
                        for (job, j) in self.jobs.iter_mut() {
                            let owes = self.d.m.job_expected(*job).is_some_and(|e| e.contains(&host));
                            if owes && !self.d.m.results_of(*job).is_some_and(|g| g.contains(&host)) {
                                j.lost_at.entry(host).or_insert(now);
                            }
                        }
                    }
                }
                Report::MaintenanceFailed { host, status, output } => {
                    let text = String::from_utf8_lossy(&output).trim_end().to_owned();
                    if self.d.debug() {
                        eprintln!("plush controller: {host} maintenance script {status:?}: {text}");
                    }
                    self.notes.entry(host).or_default().script = Some((status, text));
                }
                Report::RootChanged(root) => {
                    self.root = Some(root);
                    self.notice(Report::RootChanged(root));
                }
                Report::Result { job, status, truncated, output, nodes, stderr, blob } => {
                    let Some(j) = self.jobs.get_mut(&job) else { continue };
                    let output = match blob {
                        _ if !self.spilling => Out::Shared(output, stderr),
                        Some(b) => match self.spool.named(&mut j.spool, &b) {
                            Some(s) => Out::Stored(s),
                            None => {
                                // The core reports a group only once its blob is whole here.
                                self.spool.errors += 1;
                                Out::Shared(output, stderr)
                            }
                        },
                        None => Out::Stored(self.spool.inline(&mut j.spool, &output, &stderr)),
                    };
                    j.arrived(status, truncated, output, nodes.iter());
                }
                Report::Blob { job, from, digest, offset, total, data } => {
                    if let Some(j) = self.jobs.get_mut(&job) {
                        self.spool.blob(&mut j.spool, from, digest, offset, total, &data);
                    }
                }
                // The controller keeps it: see `Controller::job_complete`.
                Report::JobComplete { .. } => {}
                Report::Stream { job, node, bytes, err } => {
                    let Some(j) = self.jobs.get_mut(&job) else { continue };
                    if self.d.m.job_expected(job).is_some_and(|e| e.contains(&node)) {
                        let t = j.tails.entry(node).or_default();
                        t.extend_from_slice(&bytes);
                        let cut = t.len().saturating_sub(LOST_OUTPUT_TAIL);
                        t.drain(..cut);
                    }
                    if j.streams.len() >= MAX_STREAM_CHUNKS {
                        if let Some(old) = j.streams.pop_front() {
                            // Dropped counts as taken: the window must not stay shut.
                            let now = self.d.now();
                            self.d.m.output_taken(now, job, old.bytes.len() as u64);
                        }
                        j.streams_dropped += 1;
                    }
                    j.streams.push_back(Streamed { node, err, bytes });
                }
                Report::BarrierReleased { name, entered, expected, partial } => {
                    if let Some(b) = self.barriers.get_mut(&name) {
                        *b = BarrierInfo {
                            released: true,
                            partial,
                            entered,
                            expected,
                            late: std::mem::take(&mut b.late),
                        };
                    }
                    self.notice(Report::BarrierReleased { name, entered, expected, partial });
                }
                Report::BarrierLate { name, nodes } => {
                    if let Some(b) = self.barriers.get_mut(&name) {
                        b.late.extend(nodes.iter());
                    }
                    self.notice(Report::BarrierLate { name, nodes });
                }
            }
        }
    }
}

/// Whether a Plush client that holds `key` answers at `to` within `timeout`: a TCP connection,
/// the hello exchange (the client must announce `to` as its id) and the authenticated
/// handshake under `key`, then the connection is closed (the client sees a link open and
/// close, nothing more). Blocking; for `plush sessions`.
pub fn probe(to: NodeId, key: &Key, timeout: Duration) -> io::Result<()> {
    use crate::secure::{Handshake, MAX_HANDSHAKE_FRAME};
    use plush_core::frame::{encode_hello, split_frame, PREFIX};
    use plush_core::wire::{Hello, Role};
    use std::io::{Read, Write};
    let end = StdInstant::now() + timeout;
    let left = || end.checked_duration_since(StdInstant::now()).filter(|d| !d.is_zero()).ok_or(io::ErrorKind::TimedOut);
    let mut s = std::net::TcpStream::connect_timeout(&to.addr(), left()?)?;
    let me = NodeId::new(s.local_addr()?);
    let ours = encode_hello(&Hello::new(me, Role::Controller, rand::random::<u64>()));
    s.write_all(&ours)?;
    let mut buf: Vec<u8> = Vec::new();
    // The next frame's payload from the peer, within the deadline.
    let next = |s: &mut std::net::TcpStream, buf: &mut Vec<u8>| -> io::Result<Vec<u8>> {
        loop {
            if let Some((payload, used)) = split_frame(buf, MAX_HANDSHAKE_FRAME).map_err(other)? {
                let p = payload.to_vec();
                buf.drain(..used);
                return Ok(p);
            }
            s.set_read_timeout(Some(left()?))?;
            let mut chunk = [0u8; 512];
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let theirs = next(&mut s, &mut buf)?;
    let hello = Hello::decode(&theirs).map_err(other)?;
    if hello.node_id != to {
        return Err(other(format!("{} answered at {to}", hello.node_id)));
    }
    let mut hs = Handshake::start(key, true, ours.get(PREFIX..).unwrap_or(&[]), &theirs).map_err(other)?;
    while !hs.is_finished() {
        if let Some(f) = hs.next_frame().map_err(other)? {
            s.write_all(&f)?;
            continue;
        }
        let msg = next(&mut s, &mut buf)?;
        hs.read(&msg).map_err(other)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(s: &str) -> Out {
        Out::Shared(Rc::new(s.as_bytes().to_vec()), Rc::new(Vec::new()))
    }

    /// A group arriving in a later message with an output already here joins that group as it
    /// arrives; each arrival is still handed out as it came.
    #[test]
    fn results_merge_once_as_they_arrive() {
        let n = |i| NodeId::loopback(i, 9000);
        let mut j = JobState::new(StdInstant::now());
        j.arrived(ExitStatus::Exited(0), false, shared("a"), [n(3), n(1)]);
        j.arrived(ExitStatus::Exited(0), false, shared("b"), [n(2)]);
        j.arrived(ExitStatus::Exited(0), false, shared("a"), [n(0)]);
        j.arrived(ExitStatus::Exited(1), false, shared("a"), [n(4)]);
        assert_eq!(j.groups.len(), 3, "same status and output merge; another status does not");
        assert_eq!(j.groups[0].nodes, vec![n(3), n(1), n(0)]);
        assert_eq!(j.arrivals, vec![(0, 0..2), (1, 0..1), (0, 2..3), (2, 0..1)]);
        let third = &j.groups[0];
        assert_eq!(third.group_of(third.nodes[2..3].to_vec()).output, b"a".to_vec());
    }
}
