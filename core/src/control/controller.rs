//! `Controller`: the user's side of the control plane, outside the tree.
//!
//! The controller keeps one pinned link to the tree's root, whoever that is: it sends `SetCtrl`
//! on connect and every [`Config::setctrl_refresh`], follows `SetRoot` when the root changes, and,
//! when the root link dies, waits for the new root's `SetRoot` (a failover sends one) and after
//! [`Config::join_retry`] asks a random member, whose `SetCtrl` travels up to the root.
//!
//! **Hosts.** A table of hosts, `Pending → Invited → Joined → Disconnected → Failed`. At most
//! [`Config::max_invitations`] are `Invited` at once; the first host is invited directly and
//! founds the tree, the others through the root (`SetPeer`). When the root reports that no
//! client answers at a host, the controller asks its driver to [`Output::Launch`] one (unless
//! [`Config::launch_at_root`]) and invites again once [`Controller::handle_launched`] says it
//! started. With [`Config::launch_ahead`], a cold start does not wait for the tree: when the
//! host invited first has no client, the hosts next in line are launched with it (up to
//! `max_invitations`), and each is invited through the root once both its launch and the root
//! are there (if the first host fails, one of them founds the tree instead).
//! A host still unreachable after that, or whose launch fails, is tried again after a
//! back-off (5 s doubling to a minute); one that stays unreachable for
//! [`Config::invitation_expiry`] becomes `Failed`, with the last reason; so do
//! [`Config::failed_after_disconnects`] disconnects within
//! [`Config::failed_window`]. A failed host is never invited again, and the tree is told to
//! `Forget` it. A disconnected host is invited again; a checked report that it is gone answers
//! that invitation as an `InviteFailed` would. A census makes joined the members it lists,
//! except a host where a new client is being launched (its answer may predate the loss). When
//! the root says a job's whole tree answered and a host joined for `recheck_delay` did not,
//! a census is asked, as after a loss: such a host may be in no tree at all.
//!
//! **Tree launch.** With [`Config::tree_launch`], the hosts after the first are not invited
//! through the root: each member whose `Joined` arrives gets a share of the hosts not yet invited
//! (`Share`, at most [`crate::wire::MAX_LIST`]), which it launches and invites itself (see
//! [`crate::control`]). Hosts of a share count as `Invited`, not against `max_invitations`; one
//! a member gives back (`InviteFailed`) is this controller's own from then on, launched and
//! invited through the root as without tree launch; one no member invited within
//! `invitation_expiry` (its member died) goes out in another share, once, then is ours too.
//!
//! **Maintenance script.** With [`Controller::set_maintenance`], each new root gets the script
//! (`Maintenance`) and passes it with every invitation; the controller sends it with a direct
//! invitation itself. A host whose script fails reports `MaintenanceFailed`: it becomes `Failed`
//! ([`Report::MaintenanceFailed`] carries the status and the start of the output), and is told
//! to exit (`Disconnect`).
//!
//! **Jobs.** [`Controller::run`] sends `Run` to the root (again to every new root until the tree
//! reports the job complete). Results arrive merged, as groups of nodes with the same status and
//! output; the controller keeps, per job, the set of nodes it has a result for, reports only
//! results of nodes it has not seen ([`Report::Result`]), counts the rest as duplicates, and
//! acknowledges what it holds (`Ack`, at most every [`Config::ack_interval`]) once the root says
//! the tree has answered, and again whenever late results arrive. A job held open
//! ([`Controller::set_job_open`]) also expects every host its target names that joins while it
//! is open: each new member gets the `Run` from its parent as it attaches.
//!
//! **Barriers.** [`Controller::barrier`] opens a named barrier over a target set; it is released
//! when every expected node entered, or, after its timeout, when the threshold fraction did
//! (a partial barrier). Later entries are reported ([`Report::BarrierLate`]) and released again.
//!
//! Bounds: one entry per host added (the caller's list); at most [`Config::max_jobs`] jobs and
//! [`crate::control::MAX_BARRIERS`] barriers; per job one node set.

use super::transfer::Xfer;
use super::{CENSUS_BIT, MAX_BARRIERS, MAX_CHECKS_WAITING};
use crate::config::Config;
use crate::conn::{ConnTable, Pin};
use crate::contract::{HostState, InputError, LaunchResult, LinkEvent, Machine, Output, Report};
use crate::ctx::{Ctx, Io};
use crate::frame::{encode_once, FramePool};
use crate::id::NodeId;
use crate::nodeset::NodeSet;
use crate::time::Instant;
use crate::wire::{ControlMsg, JobKind, JobMsg, Message, Role, RunSpec, Target, TreeMsg};
use rand::SeedableRng;
use rand_pcg::Pcg32;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::rc::Rc;

mod hosts;
mod jobs;

use hosts::Ahead;
use jobs::BlobTrack;

/// Why a controller call was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControllerError {
    /// Too many jobs or barriers at once.
    Full,
    /// A job with this id exists.
    Duplicate,
    /// No such job.
    Unknown,
    /// A push job without a usable [`crate::wire::PushSpec`] (none, or a chunk size of 0 or
    /// above [`crate::wire::MAX_CHUNK`]).
    BadPush,
    /// A maintenance script longer than [`crate::wire::MAX_SCRIPT`].
    ScriptTooLong,
}

impl core::fmt::Display for ControllerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ControllerError::Full => write!(f, "too many jobs or barriers at once"),
            ControllerError::BadPush => {
                write!(f, "a push needs a file description with a chunk size of 1 byte to 512 KiB")
            }
            ControllerError::Duplicate => write!(f, "a job or barrier with this name exists"),
            ControllerError::Unknown => write!(f, "no such job"),
            ControllerError::ScriptTooLong => {
                write!(f, "a maintenance script is at most {} KiB", crate::wire::MAX_SCRIPT >> 10)
            }
        }
    }
}

impl std::error::Error for ControllerError {}

/// Counters of the controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControllerStats {
    /// `Results` messages received.
    pub result_messages: u64,
    /// Node results received again (dropped).
    pub duplicate_results: u64,
    /// Invitations sent (`SetPeer`).
    pub invitations: u64,
    /// Most invitations outstanding at once.
    pub max_outstanding: u64,
    /// Launches asked of the driver.
    pub launches: u64,
    /// Of them, launches ahead of the invitation, while the tree was being founded
    /// ([`Config::launch_ahead`]).
    pub launches_ahead: u64,
    /// Times the root changed.
    pub root_changes: u64,
    /// Hosts believed joined that a complete census did not list (invited again).
    pub unlisted: u64,
    /// Output bytes received: live output, blob chunks and inline result output.
    pub output_bytes: u64,
    /// Result groups dropped because the blob they name had not arrived.
    pub blobs_missing: u64,
    /// Tree launch: shares handed to members ([`ControlMsg::Share`]).
    pub shares: u64,
    /// Tree launch: hosts handed out in those shares.
    pub shared_hosts: u64,
}

#[derive(Debug)]
struct Host {
    id: NodeId,
    state: HostState,
    since: Instant,
    /// Recent disconnects, within the failure window.
    disconnects: SmallVec<[Instant; 4]>,
    launched: bool,
    /// When the current run of attempts to reach it began (cleared once it joins).
    first_try: Option<Instant>,
    /// Failed attempts in the current run, for the back-off.
    strikes: u32,
    /// The build it announced when it last joined (0: not known).
    build: u64,
    /// Tree launch: `Invited` through a member's share (the member launches and invites it),
    /// not by this controller.
    shared: bool,
    /// Tree launch: a share with it expired already (its member died, or hung): the next
    /// expiry makes it this controller's own.
    share_expired: bool,
    /// Launched ahead of its invitation ([`Config::launch_ahead`]): always `Invited`.
    ahead: Ahead,
}

impl Host {
    fn pending(id: NodeId, now: Instant) -> Host {
        Host {
            id,
            state: HostState::Pending,
            since: now,
            disconnects: SmallVec::new(),
            launched: false,
            first_try: None,
            strikes: 0,
            build: 0,
            shared: false,
            share_expired: false,
            ahead: Ahead::No,
        }
    }
}

#[derive(Debug)]
struct CtrlJob {
    spec: RunSpec,
    /// The hosts that owe a result: joined and targeted when the job was added (see
    /// [`Controller::joined_in`]), or as [`Controller::set_job_expected`] said.
    expected: NodeSet,
    /// Hosts the target names that join are added to `expected` ([`Controller::set_job_open`]).
    open: bool,
    got: NodeSet,
    complete: bool,
    ack_at: Option<Instant>,
    last_ack: Option<Instant>,
    /// A push job: the controller is its source and feeds the root.
    xfer: Option<Xfer>,
    /// Large outputs received ([`JobMsg::Blob`]).
    blobs: super::Blobs,
    /// With [`Controller::set_blob_reports`], where each large output stands instead.
    track: BlobTrack,
    /// Live output bytes reported and not yet acknowledged, per sender (with
    /// [`Controller::set_manual_output_ack`]). At most one entry per root the job had.
    owed: Vec<(NodeId, u64)>,
}

#[derive(Debug)]
struct CtrlBarrier {
    name: String,
    target: Target,
    threshold: f64,
    deadline: Instant,
    entered: NodeSet,
    released: bool,
    /// Its deadline passed without a release (too few entered): from then on it is checked
    /// when nodes enter and at other timers, and no longer asks for a timer of its own (which
    /// would stay in the past and make the driver spin).
    expired: bool,
}

/// The controller (see the module docs). Same contract as [`crate::Node`]: `handle_*`, then
/// drain [`Controller::poll_output`], and call [`Controller::handle_timeout`] at
/// [`Controller::poll_timeout`].
pub struct Controller {
    me: NodeId,
    cfg: Rc<Config>,
    rng: Pcg32,
    io: Io,
    root: Option<NodeId>,
    hosts: Vec<Host>,
    /// Hosts to invite, in order. Entries whose host is no longer pending are skipped. With
    /// tree launch, the hosts to hand out in shares (only the first one, which founds the tree,
    /// is invited from here).
    queue: VecDeque<NodeId>,
    /// Tree launch: hosts this controller invites (and launches) itself, in order: those given
    /// back by members, retried or disconnected. Unused without tree launch. At most one entry
    /// per host queued (stale entries are skipped).
    own: VecDeque<NodeId>,
    /// Tree launch: `Invited` hosts that are in members' shares (counted in `outstanding`, but
    /// not against `max_invitations`).
    shared_out: usize,
    /// Tree launch: when to hand a share to a random member if hosts are still to be shared
    /// (none was handed out for [`Config::join_retry`]: the shares out may all have failed,
    /// and no `Joined` comes to hand the next one).
    share_at: Option<Instant>,
    /// Hosts to invite again at a time (back-off after a failed attempt); scanned whole, as the
    /// waits differ. At most one entry per host.
    later: VecDeque<(Instant, NodeId)>,
    /// (host, invited at), oldest first, for expiry; stale entries are skipped.
    invited: VecDeque<(NodeId, Instant)>,
    outstanding: usize,
    /// Of them, hosts launched ahead of their invitation ([`Config::launch_ahead`]), whose
    /// invitation is not out yet.
    ahead: usize,
    /// Hosts in each state.
    counts: [usize; 5],
    jobs: Vec<CtrlJob>,
    barriers: Vec<CtrlBarrier>,
    refresh_at: Option<Instant>,
    seek_at: Option<Instant>,
    /// Failed hosts the tree has not been told to forget yet: one `Forget` floods the tree per
    /// [`Config::ack_interval`] at most, whatever the number of failures.
    forget: NodeSet,
    forget_at: Option<Instant>,
    /// When to ask the root for a census (after a loss; see [`Config::recheck_delay`]).
    census_at: Option<Instant>,
    /// The last census asked for, to ask at most once per `recheck_delay`.
    census_asked: Option<Instant>,
    /// Members listed by the census being received (its parts so far), and since when: hosts
    /// that joined after that are not judged by it. Cleared when the root changes.
    census_seen: NodeSet,
    census_from: Option<Instant>,
    /// The census being received is one this controller asked for, with the tree settled
    /// (no root change since): only such a census is used to find unreported losses. A new
    /// root's own census comes while fragments are still rejoining and would miss them.
    census_judge: bool,
    tick_at: Option<Instant>,
    heartbeat: Option<crate::frame::Frame>,
    stats: ControllerStats,
    /// `dismantle` was called: hosts are not invited, looked for or launched any more.
    dismantling: bool,
    /// The host last invited directly (no tree yet): its invitation is the controller's own.
    direct: Option<NodeId>,
    /// The maintenance script, sent to each root and with direct invitations.
    script: Option<String>,
    /// See [`Controller::set_manual_output_ack`].
    manual_output_ack: bool,
    /// See [`Controller::set_linger`].
    linger: Option<core::time::Duration>,
    /// See [`Controller::set_blob_reports`].
    blob_reports: bool,
}

impl Controller {
    /// A controller listening at `id`.
    pub fn new(id: NodeId, cfg: impl Into<Rc<Config>>, seed: u64, _now: Instant) -> Self {
        let cfg: Rc<Config> = cfg.into();
        Controller {
            me: id,
            rng: Pcg32::seed_from_u64(seed),
            io: Io {
                out: crate::batch::Outbox::default(),
                conns: ConnTable::new(cfg.max_links),
                pool: FramePool::default(),
                stats: Default::default(),
                refused: SmallVec::new(),
                news: SmallVec::new(),
            },
            root: None,
            hosts: Vec::new(),
            queue: VecDeque::new(),
            later: VecDeque::new(),
            invited: VecDeque::new(),
            own: VecDeque::new(),
            shared_out: 0,
            share_at: None,
            outstanding: 0,
            ahead: 0,
            counts: [0; 5],
            jobs: Vec::new(),
            barriers: Vec::new(),
            refresh_at: None,
            seek_at: None,
            forget: NodeSet::new(),
            forget_at: None,
            census_at: None,
            census_asked: None,
            census_seen: NodeSet::new(),
            census_from: None,
            census_judge: false,
            tick_at: None,
            heartbeat: None,
            stats: ControllerStats::default(),
            dismantling: false,
            direct: None,
            script: None,
            manual_output_ack: false,
            linger: None,
            blob_reports: false,
            cfg,
        }
    }

    fn ctx(&mut self, now: Instant) -> Ctx<'_> {
        Ctx::bare(now, self.me, &self.cfg, &mut self.rng, &mut self.io)
    }

    fn send(&mut self, now: Instant, to: NodeId, msg: Message) {
        self.ctx(now).send_msg(to, &msg);
    }

    fn report(&mut self, r: Report) {
        self.io.out.push_back(Output::Report(Box::new(r)));
    }

    fn host(&mut self, id: &NodeId) -> Option<&mut Host> {
        match self.hosts.binary_search_by(|h| h.id.cmp(id)) {
            Ok(i) => Some(&mut self.hosts[i]),
            Err(_) => None,
        }
    }

    fn set_state(&mut self, now: Instant, id: NodeId, state: HostState, why: Option<&'static str>) {
        let i = match self.hosts.binary_search_by(|h| h.id.cmp(&id)) {
            Ok(i) => i,
            Err(i) => {
                // A member we did not invite (an earlier controller did): adopt it.
                self.hosts.insert(i, Host::pending(id, now));
                self.counts[HostState::Pending as usize] += 1;
                i
            }
        };
        let h = &mut self.hosts[i];
        if h.state == state || h.state == HostState::Failed {
            return;
        }
        if h.state == HostState::Invited {
            self.outstanding -= 1;
            if core::mem::take(&mut h.shared) {
                self.shared_out -= 1;
            }
            if core::mem::replace(&mut h.ahead, Ahead::No) != Ahead::No {
                self.ahead -= 1;
            }
        }
        self.counts[h.state as usize] -= 1;
        self.counts[state as usize] += 1;
        h.state = state;
        h.since = now;
        if state == HostState::Invited {
            self.outstanding += 1;
            self.stats.max_outstanding = self.stats.max_outstanding.max(self.outstanding as u64);
        }
        if state == HostState::Joined {
            h.launched = false;
            h.first_try = None;
            h.strikes = 0;
            for j in self.jobs.iter_mut().filter(|j| j.open && j.spec.target.includes(&id)) {
                j.expected.insert(id);
            }
        }
        if state == HostState::Invited {
            h.first_try.get_or_insert(now);
        }
        debug_assert_eq!(self.counts.iter().sum::<usize>(), self.hosts.len(), "every host counted once");
        self.report(Report::Host { host: id, state, why });
    }

    // ----- what the user asks ----------------------------------------------------------------

    /// Add hosts to invite (already known ones are left as they are).
    pub fn add_hosts(&mut self, now: Instant, hosts: &[NodeId]) {
        let mut new: Vec<NodeId> =
            hosts.iter().copied().filter(|id| self.hosts.binary_search_by(|h| h.id.cmp(id)).is_err()).collect();
        new.sort_unstable();
        new.dedup();
        // Invitations go out in the caller's order.
        let mut queued = std::collections::BTreeSet::new();
        for &id in hosts {
            if new.binary_search(&id).is_ok() && queued.insert(id) {
                self.queue.push_back(id);
            }
        }
        self.counts[HostState::Pending as usize] += new.len();
        self.hosts.extend(new.into_iter().map(|id| Host::pending(id, now)));
        self.hosts.sort_unstable_by_key(|h| h.id);
        self.pump(now);
    }

    /// Attach to an existing tree through any member (its `SetCtrl` goes up to the root).
    pub fn attach(&mut self, now: Instant, member: NodeId) {
        let me = self.me;
        self.send(now, member, Message::Control(ControlMsg::SetCtrl { ctrl: me }));
        self.seek_at = Some(now + self.cfg.join_retry);
    }

    /// Have every host run `script` (`/bin/sh -c`) before it joins; `None`: no script. Hosts
    /// invited from now on get it (set it before [`Controller::add_hosts`]); at most
    /// [`crate::wire::MAX_SCRIPT`] bytes.
    pub fn set_maintenance(&mut self, now: Instant, script: Option<String>) -> Result<(), ControllerError> {
        if script.as_ref().is_some_and(|s| s.len() > crate::wire::MAX_SCRIPT) {
            return Err(ControllerError::ScriptTooLong);
        }
        self.script = script;
        if let (Some(root), Some(script)) = (self.root, self.script.clone()) {
            self.send(now, root, Message::Control(ControlMsg::Maintenance { script }));
        }
        Ok(())
    }

    /// How long the tree outlives this controller: a tree whose root has had no link to it for
    /// `linger` dismantles itself (see [`crate::control`]). Sent to the root with every
    /// `SetCtrl` (attach, root change, refresh), and passed down the tree. `None` (the default):
    /// nothing is sent, and the clients keep their own [`Config::linger`] (10 min by default);
    /// clients of builds before this message only understand that.
    pub fn set_linger(&mut self, now: Instant, linger: Option<core::time::Duration>) {
        self.linger = linger;
        if let Some(root) = self.root {
            self.send_linger(now, root);
        }
    }

    fn send_linger(&mut self, now: Instant, root: NodeId) {
        if let Some(l) = self.linger {
            let ms = u64::try_from(l.as_millis()).unwrap_or(u64::MAX);
            self.send(now, root, Message::Control(ControlMsg::Linger { ms }));
        }
    }

    /// Start a job. Its id must be new (and must not have the top bit set, which censuses use).
    pub fn run(&mut self, now: Instant, spec: RunSpec) -> Result<(), ControllerError> {
        self.add_job(now, spec, NodeSet::new(), false)
    }

    /// A new job: `got` reported already, `complete` said so by the root (no `Run` then).
    fn add_job(&mut self, now: Instant, spec: RunSpec, got: NodeSet, complete: bool) -> Result<(), ControllerError> {
        if self.jobs.iter().any(|j| j.spec.job == spec.job) || spec.job & CENSUS_BIT != 0 {
            return Err(ControllerError::Duplicate);
        }
        if self.jobs.len() >= self.cfg.max_jobs {
            return Err(ControllerError::Full);
        }
        let xfer = match (spec.kind, &spec.push) {
            (JobKind::Push, Some(p)) => Some(Xfer::new(p, true).ok_or(ControllerError::BadPush)?),
            (JobKind::Push, None) => return Err(ControllerError::BadPush),
            _ => None,
        };
        if let Some(root) = self.root.filter(|_| !complete) {
            self.send(now, root, Message::Job(JobMsg::Run(Box::new(spec.clone()))));
        }
        let expected = self.joined_in(&spec.target);
        self.jobs.push(CtrlJob {
            spec,
            expected,
            open: false,
            got,
            complete,
            ack_at: None,
            last_ack: None,
            xfer,
            blobs: Default::default(),
            track: BlobTrack::default(),
            owed: Vec::new(),
        });
        Ok(())
    }

    /// Kill a job everywhere.
    pub fn cancel(&mut self, now: Instant, job: u64) -> Result<(), ControllerError> {
        if !self.jobs.iter().any(|j| j.spec.job == job) {
            return Err(ControllerError::Unknown);
        }
        if let Some(root) = self.root {
            self.send(now, root, Message::Job(JobMsg::Cancel { job }));
        }
        Ok(())
    }

    /// Acknowledge live output only when told ([`Controller::output_taken`]) rather than as it
    /// arrives, so that a reader that falls behind slows the hosts down instead of gathering
    /// their output in memory (the root's window bounds what waits).
    pub fn set_manual_output_ack(&mut self, manual: bool) {
        self.manual_output_ack = manual;
    }

    /// Hand the bytes of large outputs out as they arrive ([`Report::Blob`]) instead of
    /// assembling them here, so that the user keeps them where it likes (the CLI: in memory up
    /// to a bound, else in a temporary file); [`Report::Result`]s then name them by
    /// [`crate::wire::BlobRef`]. Off by default.
    pub fn set_blob_reports(&mut self, on: bool) {
        self.blob_reports = on;
    }

    /// With [`Controller::set_manual_output_ack`]: `bytes` of `job`'s live output
    /// ([`Report::Stream`]) were consumed; the senders may send as much more.
    pub fn output_taken(&mut self, now: Instant, job: u64, mut bytes: u64) {
        let Some(k) = self.jobs.iter().position(|j| j.spec.job == job) else { return };
        let owed = core::mem::take(&mut self.jobs[k].owed);
        let mut keep = Vec::with_capacity(owed.len());
        for (peer, n) in owed {
            let m = n.min(bytes);
            bytes -= m;
            // A former root whose link is gone lost its window with it. One whose link is still
            // open (it merged into the tree the controller now follows) must hear that its
            // output was shown, or it counts the bytes as lost when it re-attaches.
            if m > 0 && self.io.conns.state(&peer) == Some(crate::conn::LinkState::Open) {
                self.send(now, peer, Message::Job(JobMsg::OutputAck { job, bytes: m }));
            }
            if n > m {
                keep.push((peer, n - m));
            }
        }
        self.jobs[k].owed = keep;
    }

    /// Stop tracking a job (the caller has what it wanted).
    pub fn forget(&mut self, job: u64) {
        self.jobs.retain(|j| j.spec.job != job);
    }

    /// Nodes whose result for `job` arrived.
    pub fn results_of(&self, job: u64) -> Option<&NodeSet> {
        self.jobs.iter().find(|j| j.spec.job == job).map(|j| &j.got)
    }

    // ----- jobs, as the user asks about them --------------------------------------------------
    //
    // The driver keeps no copy of what the controller knows of a job: which hosts owe it a
    // result, whose results arrived, whether the root said it complete. It asks here.

    /// The hosts joined now that `target` names: those a job started now owes a result
    /// ([`Controller::job_expected`]). The one place that says which hosts a job expects.
    pub fn joined_in(&self, target: &Target) -> NodeSet {
        self.hosts.iter().filter(|h| h.state == HostState::Joined && target.includes(&h.id)).map(|h| h.id).collect()
    }

    /// `job` as it was started (`None`: no such job, or forgotten).
    pub fn job_spec(&self, job: u64) -> Option<&RunSpec> {
        self.jobs.iter().find(|j| j.spec.job == job).map(|j| &j.spec)
    }

    /// The hosts that owe `job` a result: joined and targeted when it was started (or as
    /// [`Controller::set_job_expected`] said).
    pub fn job_expected(&self, job: u64) -> Option<&NodeSet> {
        self.jobs.iter().find(|j| j.spec.job == job).map(|j| &j.expected)
    }

    /// Whether the root said every member answered `job` (`None`: no such job).
    pub fn job_complete(&self, job: u64) -> Option<bool> {
        self.jobs.iter().find(|j| j.spec.job == job).map(|j| j.complete)
    }

    /// Say which hosts owe `job` a result, instead of those joined when it was added: for a job
    /// taken over from a journal ([`Controller::adopt_job`]), those its first controller
    /// expected. Changes nothing else (no message is sent).
    pub fn set_job_expected(&mut self, job: u64, expected: NodeSet) -> Result<(), ControllerError> {
        let j = self.jobs.iter_mut().find(|j| j.spec.job == job).ok_or(ControllerError::Unknown)?;
        j.expected = expected;
        Ok(())
    }

    /// Open a barrier: released when every node of `target` (every joined host, for `All`)
    /// entered, or after `timeout` once `threshold` (0..=1) of them did.
    pub fn barrier(
        &mut self,
        now: Instant,
        name: &str,
        target: Target,
        threshold: f64,
        timeout: core::time::Duration,
    ) -> Result<(), ControllerError> {
        if self.barriers.iter().any(|b| b.name == name) || name.len() > super::MAX_NAME {
            return Err(ControllerError::Duplicate);
        }
        if self.barriers.len() >= MAX_BARRIERS {
            return Err(ControllerError::Full);
        }
        self.barriers.push(CtrlBarrier {
            name: name.to_string(),
            target,
            threshold: threshold.clamp(0.0, 1.0),
            deadline: now + timeout,
            entered: NodeSet::new(),
            released: false,
            expired: false,
        });
        Ok(())
    }

    /// Dismantle the overlay: every client exits.
    pub fn dismantle(&mut self, now: Instant) {
        self.dismantling = true;
        self.seek_at = None;
        if let Some(root) = self.root {
            self.send(now, root, Message::Control(ControlMsg::Disconnect));
        }
    }

    // ===== Resuming a session (issue 19) ========================================================
    //
    // A controller that takes over from one that died (a new process: `plush attach`, or the
    // simulator's `--controller-back-after`) knows only what its predecessor's journal holds.
    // It is seeded with these two calls, then attaches ([`Controller::attach`] to the journal's
    // root, and to members after `join_retry` by itself) and runs as any controller:
    //
    // 1. `adopt_hosts(now, &[(host, state)])`, the hosts as last journaled;
    // 2. `adopt_job(now, spec, shown, complete)` for each job, with the nodes whose results the
    //    user has already been shown.
    //
    // Exactly once across the crash: every node holds its results until an `Ack` covers them,
    // and an `Ack` only ever names results the controller had received, so what the tree still
    // holds is a superset of what was received and not shown; the root sends all it holds once
    // the new controller's link is up. The new controller reports only nodes outside `shown`
    // (those count as duplicates in [`ControllerStats::duplicate_results`]), and acknowledges
    // `shown` with the rest. A journal must therefore record a result before showing it, and
    // `shown` must be exactly what was shown: a node shown and not recorded is shown again, a
    // node recorded and not shown is never shown.

    /// Take over hosts from a journal (hosts known already are left as they are). `Joined`
    /// hosts are believed members, as their census after attaching checks (one lost meanwhile
    /// is found and invited again); `Failed` ones stay failed; every other state is invited
    /// again like a new host. Nothing is reported for them: the user saw their states before.
    ///
    /// That census comes [`Config::recheck_delay`] after adopting: the root checks each joined
    /// host it does not list, and a live one in another tree (a fragment left by failures while
    /// no controller watched) learns of this root from the check and merges into it.
    pub fn adopt_hosts(&mut self, now: Instant, hosts: &[(NodeId, HostState)]) {
        let mut queue = Vec::new();
        let mut joined = false;
        for &(id, state) in hosts {
            if self.hosts.iter().any(|h| h.id == id) || queue.contains(&id) {
                continue;
            }
            let state = state.adopted();
            if state == HostState::Pending {
                queue.push(id);
            }
            joined |= state == HostState::Joined;
            self.counts[state as usize] += 1;
            self.hosts.push(Host { state, ..Host::pending(id, now) });
        }
        self.hosts.sort_unstable_by_key(|h| h.id);
        self.queue.extend(queue);
        if joined {
            self.census_at.get_or_insert(now + self.cfg.recheck_delay);
        }
        self.pump(now);
    }

    /// Take over a job from a journal: `spec` as it was started, `shown` the nodes whose
    /// results the user was shown already (never reported again), `complete` whether the root
    /// had said that every member answered (then `Run` is not sent again). Refused as
    /// [`Controller::run`] refuses (a duplicate id, too many jobs, a push without a usable
    /// file description).
    pub fn adopt_job(
        &mut self,
        now: Instant,
        spec: RunSpec,
        shown: NodeSet,
        complete: bool,
    ) -> Result<(), ControllerError> {
        self.add_job(now, spec, shown, complete)
    }

    /// Every job tracked: its spec, the nodes whose results were reported, and whether the
    /// root said it complete (what a journal records, and what [`Controller::adopt_job`] takes).
    pub fn jobs(&self) -> impl Iterator<Item = (&RunSpec, &NodeSet, bool)> + '_ {
        self.jobs.iter().map(|j| (&j.spec, &j.got, j.complete))
    }

    // ===== end of resuming a session ================================================================

    // ----- the contract -------------------------------------------------------------------------

    /// One frame's payload from `from`. Errors leave the controller as it was.
    pub fn handle_frame(&mut self, now: Instant, from: NodeId, payload: &[u8]) -> Result<(), InputError> {
        let msg = Message::decode(payload).map_err(InputError::Decode)?;
        let Some(answer) = self.io.conns.received(now, &from, self.cfg.heartbeat) else {
            return Err(InputError::NoLink(from));
        };
        self.io.stats.frames_in += 1;
        if answer {
            if self.heartbeat.is_none() {
                self.heartbeat = encode_once(&Message::Tree(TreeMsg::Heartbeat));
            }
            if let Some(frame) = self.heartbeat.clone() {
                self.io.out.push_back(Output::Transmit { to: from, frame });
            }
        }
        match msg {
            Message::Control(m) => self.on_control(now, from, m),
            Message::Job(m) => self.on_job(now, from, m),
            Message::Tree(_) | Message::RanSub(_) => {}
        }
        self.after(now);
        Ok(())
    }

    /// A link came up, failed to open, or broke.
    pub fn handle_link(&mut self, now: Instant, peer: NodeId, ev: LinkEvent) {
        match ev {
            LinkEvent::Connected => {
                let Io { conns, out, stats, .. } = &mut self.io;
                if conns.connected(now, peer, out, stats) == crate::conn::Admit::Refused {
                    out.push_back(Output::Close(peer));
                }
            }
            LinkEvent::ConnectFailed | LinkEvent::Closed => {
                self.io.conns.remove(&peer);
                self.link_lost(now, peer, ev == LinkEvent::ConnectFailed);
            }
        }
        self.after(now);
    }

    /// The driver launched a client on `host` (`Ok`), or could not (`Err`, with the reason).
    pub fn handle_launched(&mut self, now: Instant, host: NodeId, result: LaunchResult) {
        let Some(h) = self.host(&host) else { return };
        if h.state != HostState::Invited {
            return;
        }
        if h.ahead == Ahead::Launching && result.is_ok() && self.founding_elsewhere(host) {
            // Launched ahead while the tree is being founded: it waits for the root (a second
            // direct invitation would found a second tree).
            if let Some(h) = self.host(&host) {
                h.ahead = Ahead::Ready;
            }
            self.after(now);
            return;
        }
        let ahead = self.take_ahead(host);
        match result {
            Ok(()) => self.invite(now, host),
            // A launch ahead that failed (a client may be running there already: its address
            // is in use) costs no back-off: the host waits for its invitation as any other.
            Err(why) if ahead != Ahead::No => {
                if let Some(h) = self.host(&host) {
                    h.launched = false;
                }
                self.set_state(now, host, HostState::Disconnected, Some(why));
                self.requeue(host, true);
            }
            Err(why) => self.retry_later(now, host, why),
        }
        self.after(now);
    }

    /// Timers; early or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.tick_at.is_some_and(|t| t <= now) {
            let (mut dead, mut quiet) = (Vec::new(), Vec::new());
            self.tick_at = self.io.conns.liveness(now, self.cfg.heartbeat, self.cfg.dead_after, &mut dead, &mut quiet);
            for peer in dead {
                self.io.conns.remove(&peer);
                self.io.out.push_back(Output::Close(peer));
                self.link_lost(now, peer, false);
            }
        }
        if self.refresh_at.is_some_and(|t| t <= now) {
            self.refresh_at = None;
            if let Some(root) = self.root {
                let me = self.me;
                self.send(now, root, Message::Control(ControlMsg::SetCtrl { ctrl: me }));
                self.send_linger(now, root);
                self.refresh_at = Some(now + self.cfg.setctrl_refresh);
            }
        }
        if self.seek_at.is_some_and(|t| t <= now) {
            self.seek_at = None;
            if self.root.is_none() {
                self.seek(now);
            }
        }
        // Invitations that expired.
        while let Some(&(host, at)) = self.invited.front() {
            let current = self.host(&host).is_some_and(|h| h.state == HostState::Invited && h.since == at);
            if current && at + self.cfg.invitation_expiry > now {
                break;
            }
            self.invited.pop_front();
            if current && self.host(&host).is_some_and(|h| h.shared) {
                // A member took it in a share and did not invite it in time (it may have died
                // with its share): it goes out in another share, once; after a second expiry
                // this controller tries it itself. Either way with a fresh expiry.
                self.set_state(now, host, HostState::Disconnected, Some("its member did not invite it in time"));
                let again = self.host(&host).is_some_and(|h| !h.share_expired);
                if let Some(h) = self.host(&host) {
                    h.first_try = None;
                    h.share_expired = true;
                }
                if again {
                    self.queue.push_front(host);
                    self.share_at.get_or_insert(now);
                } else {
                    self.own.push_front(host);
                }
            } else if current {
                self.fail(now, host, "the invitation expired");
            }
        }
        if self.share_at.is_some_and(|t| t <= now) {
            self.share_at = None;
            self.share_to_anyone(now);
        }
        if self.forget_at.is_some_and(|t| t <= now) {
            match self.root {
                Some(root) => {
                    self.forget_at = None;
                    let nodes = core::mem::take(&mut self.forget);
                    self.send(now, root, Message::Control(ControlMsg::Forget { nodes }));
                }
                None => self.forget_at = Some(now + self.cfg.ack_interval),
            }
        }
        // Acknowledgements first: one may ask for a census now (a silent host of a complete job),
        // which then starts in this call, not at a timeout already past.
        for k in 0..self.jobs.len() {
            if self.jobs[k].ack_at.is_some_and(|t| t <= now) {
                self.ack(now, k);
            }
        }
        if self.census_at.is_some_and(|t| t <= now) {
            if let Some(root) = self.root {
                self.census_at = None;
                self.census_asked = Some(now);
                self.census_seen = NodeSet::new();
                self.census_from = Some(now);
                self.census_judge = true;
                self.send(now, root, Message::Control(ControlMsg::Census));
            } else {
                self.census_at = Some(now + self.cfg.recheck_delay);
            }
        }
        for k in 0..self.barriers.len() {
            self.check_barrier(now, k);
            let b = &mut self.barriers[k];
            b.expired = b.expired || (!b.released && now >= b.deadline);
        }
        self.after(now);
    }

    /// Next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.io.out.pop_front()
    }

    /// When to call [`Controller::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self.invited.front().map(|&(_, at)| at + self.cfg.invitation_expiry);
        let acks = self.jobs.iter().filter_map(|j| j.ack_at);
        let barriers = self.barriers.iter().filter(|b| !b.released && !b.expired).map(|b| b.deadline);
        [self.tick_at, self.refresh_at, self.seek_at, self.forget_at, self.census_at, expiry, self.share_at]
            .into_iter()
            .flatten()
            .chain(acks)
            .chain(barriers)
            .min()
    }

    // ----- what the user may look at -----------------------------------------------------------

    /// This controller's id (its listen address).
    pub fn id(&self) -> NodeId {
        self.me
    }
    /// The root the controller is linked to.
    pub fn root(&self) -> Option<NodeId> {
        self.root
    }
    /// State of a host.
    pub fn host_state(&self, id: &NodeId) -> Option<HostState> {
        self.hosts.binary_search_by(|h| h.id.cmp(id)).ok().map(|i| self.hosts[i].state)
    }
    fn host_since(&self, id: &NodeId) -> Option<Instant> {
        self.hosts.binary_search_by(|h| h.id.cmp(id)).ok().map(|i| self.hosts[i].since)
    }
    /// Every host and its state.
    pub fn hosts(&self) -> impl Iterator<Item = (NodeId, HostState)> + '_ {
        self.hosts.iter().map(|h| (h.id, h.state))
    }
    /// The build `id` announced when it last joined (0: not known; see [`Config::build`]).
    pub fn host_build(&self, id: &NodeId) -> u64 {
        self.hosts.binary_search_by(|h| h.id.cmp(id)).map_or(0, |i| self.hosts[i].build)
    }

    /// Joined hosts that announced a build other than this controller's (none when the
    /// controller's own build is 0, unknown).
    pub fn outdated(&self) -> Vec<NodeId> {
        let mine = self.cfg.build;
        self.hosts
            .iter()
            .filter(|h| mine != 0 && h.state == HostState::Joined && h.build != 0 && h.build != mine)
            .map(|h| h.id)
            .collect()
    }

    /// Hosts in each state: pending, invited, joined, disconnected, failed.
    pub fn host_counts(&self) -> [usize; 5] {
        self.counts
    }
    /// Invitations outstanding now.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }
    /// Counters.
    pub fn stats(&self) -> &ControllerStats {
        &self.stats
    }
    /// Pin bits of the link to `peer` (0 if none).
    pub fn link_pins(&self, peer: &NodeId) -> u8 {
        self.io.conns.pins(peer)
    }

    // ----- inside ----------------------------------------------------------------------------

    fn after(&mut self, now: Instant) {
        debug_assert!(self.io.news.is_empty(), "the controller runs no tree: {:?}", self.io.news);
        if (core::mem::take(&mut self.io.conns.pinned_since_tick) || self.tick_at.is_none()) && self.root.is_some() {
            let due = now + self.cfg.heartbeat;
            self.tick_at = Some(self.tick_at.map_or(due, |t| t.min(due)));
        }
        self.pump(now);
    }

    fn on_control(&mut self, now: Instant, from: NodeId, msg: ControlMsg) {
        match msg {
            ControlMsg::SetRoot { root } if root == from => self.set_root(now, root),
            ControlMsg::Joined { node, build } => {
                self.set_state(now, node, HostState::Joined, None);
                if build != 0 {
                    if let Some(h) = self.host(&node) {
                        h.build = build;
                    }
                }
                if self.cfg.tree_launch && self.host_state(&node) == Some(HostState::Joined) {
                    self.give_share(now, node);
                }
            }
            ControlMsg::InviteFailed { host } => self.unreachable(now, host),
            ControlMsg::MaintenanceFailed { node, status, mut output } => {
                // Only from the host itself, about a host we invited and that has not failed.
                let invited = self.host_state(&node).is_some_and(|s| s != HostState::Failed);
                if node == from && invited {
                    output.truncate(crate::wire::MAX_SCRIPT_OUTPUT);
                    self.fail(now, node, "its maintenance script failed");
                    self.report(Report::MaintenanceFailed { host: node, status, output });
                    // It waits out of the tree: let it exit.
                    self.send(now, from, Message::Control(ControlMsg::Disconnect));
                }
            }
            ControlMsg::Disconnected { node, related: checked } => {
                let recent = self.host_since(&node).is_some_and(|t| t + self.cfg.recheck_delay > now);
                if !checked && recent && self.host_state(&node) == Some(HostState::Joined) {
                    // It rejoined moments ago: the report may be about its previous life. The
                    // root checks; a real loss comes back checked.
                    self.send(now, from, Message::Control(ControlMsg::Disconnected { node, related: false }));
                } else if checked && self.host(&node).is_some_and(|h| h.state == HostState::Invited && !h.launched) {
                    // Invited again, and a member that checked says it is gone: that answers the
                    // invitation (launch a client, or try later), which would otherwise hold its
                    // slot until it expires, with nothing else to come for a silent host. (One
                    // being launched waits for its launch instead.)
                    self.unreachable(now, node);
                } else {
                    self.disconnected(now, node);
                }
            }
            ControlMsg::Participants { nodes, last } if Some(from) == self.root => {
                let from_time = *self.census_from.get_or_insert(now);
                for id in nodes.iter() {
                    // A census answer may be older than what we learnt since (the root holds
                    // answers a moment before it passes them on). One from a host whose address
                    // has since said that no client runs there, and where we are launching a
                    // new one, is stale: that host joins when its new client says so.
                    // Otherwise the census is how a member whose own `Joined` was lost (or
                    // whose loss was misreported) counts as joined again.
                    let stale = self.host(&id).is_some_and(|h| h.launched);
                    if !stale && self.host_state(&id) != Some(HostState::Failed) {
                        self.set_state(now, id, HostState::Joined, None);
                    }
                }
                self.census_seen.extend(&nodes);
                if last && !core::mem::take(&mut self.census_judge) {
                    self.census_seen = NodeSet::new();
                    self.census_from = None;
                } else if last {
                    // The whole tree answered: whoever we think joined (since well before this
                    // census: a newcomer may have attached after its part of the tree answered)
                    // and is not in it may have been lost unreported. The root checks each
                    // (`GetStatus`) and reports the ones really gone; a live member missing
                    // from the census (a fragment still rejoining) is left alone.
                    let seen = core::mem::take(&mut self.census_seen);
                    self.census_from = None;
                    let mut unlisted: Vec<NodeId> = self
                        .hosts
                        .iter()
                        .filter(|h| {
                            h.state == HostState::Joined
                                && h.since + self.cfg.recheck_delay <= from_time
                                && !seen.contains(&h.id)
                        })
                        .map(|h| h.id)
                        .collect();
                    self.stats.unlisted += unlisted.len() as u64;
                    if unlisted.len() > MAX_CHECKS_WAITING {
                        // The root keeps a bounded number waiting for a check: a random
                        // part now, others at the next census.
                        crate::tree::shuffle(&mut self.ctx(now), &mut unlisted);
                        self.census_at.get_or_insert(now + self.cfg.recheck_delay);
                    }
                    for node in unlisted.into_iter().take(MAX_CHECKS_WAITING) {
                        self.send(now, from, Message::Control(ControlMsg::Disconnected { node, related: false }));
                    }
                }
            }
            _ => {}
        }
    }

    /// The root that was to answer the census asked for is gone: ask the next one.
    fn census_lost(&mut self, now: Instant) {
        if core::mem::take(&mut self.census_judge) {
            self.census_at.get_or_insert(now + self.cfg.recheck_delay);
        }
    }

    fn set_root(&mut self, now: Instant, root: NodeId) {
        self.seek_at = None;
        if self.root == Some(root) {
            return;
        }
        self.census_lost(now);
        if let Some(old) = self.root.take() {
            self.io.conns.unpin(&old, Pin::Root);
            let Io { conns, out, .. } = &mut self.io;
            conns.release(&old, out);
        }
        self.root = Some(root);
        // From now on invitations go through a root: none is the controller's own.
        self.direct = None;
        self.stats.root_changes += 1;
        self.census_seen = NodeSet::new();
        self.census_from = None;
        let me = self.me;
        self.send(now, root, Message::Control(ControlMsg::SetCtrl { ctrl: me }));
        self.send_linger(now, root);
        self.io.conns.pin(now, root, Pin::Root);
        self.refresh_at = Some(now + self.cfg.setctrl_refresh);
        self.report(Report::RootChanged(root));
        // A new root may never have seen what the old one was asked.
        for k in 0..self.jobs.len() {
            if !self.jobs[k].complete {
                let msg = Message::Job(JobMsg::Run(Box::new(self.jobs[k].spec.clone())));
                self.send(now, root, msg);
            }
        }
        if let Some(script) = self.script.clone() {
            self.send(now, root, Message::Control(ControlMsg::Maintenance { script }));
        }
        // (Hosts in members' shares are the members' to invite; hosts launched ahead are
        // invited once their launch is done.)
        let invited: Vec<NodeId> = self
            .hosts
            .iter()
            .filter(|h| h.state == HostState::Invited && !h.shared && h.id != root && h.ahead != Ahead::Launching)
            .map(|h| h.id)
            .collect();
        for host in invited {
            self.take_ahead(host);
            self.send(now, root, Message::Control(ControlMsg::SetPeer { host, ctrl: me }));
        }
    }

    fn link_lost(&mut self, now: Instant, peer: NodeId, failed: bool) {
        if self.root == Some(peer) {
            // Chunks in flight to it are lost with the link: it asks again when it is back.
            for j in self.jobs.iter_mut() {
                if let Some(x) = j.xfer.as_mut() {
                    x.drop_feed(&peer);
                }
            }
            self.root = None;
            self.refresh_at = None;
            self.census_lost(now);
            // The new root announces itself; if none does, ask a member.
            self.seek_at = Some(now + self.cfg.join_retry);
            return;
        }
        // Looking for the root, a member could not be reached: it is gone.
        let member = self.host(&peer).is_some_and(|h| h.state == HostState::Joined);
        if failed && self.root.is_none() && member && !self.dismantling {
            self.disconnected(now, peer);
            return;
        }
        // A host we invited directly (the first one) did not answer.
        let invited = self.host(&peer).is_some_and(|h| h.state == HostState::Invited);
        if failed && invited && self.root.is_none() {
            self.unreachable(now, peer);
        } else if invited && self.root.is_none() && self.direct == Some(peer) {
            // Its link broke before it founded the tree: the invitation may be lost with it (the
            // client was restarting). Invite it again after the back-off.
            self.retry_later(now, peer, "the link broke before it joined");
        }
    }

    /// Ask up to `Config::seek_fanout` random members where the root is. A member in a tree passes
    /// the question to its root, which answers; a client in no tree (it restarted) says so and
    /// is invited again; one that cannot be reached is gone. So a controller whose whole overlay
    /// restarted at once (an upgrade, a power cut) finds out within a few rounds, and invites
    /// the hosts again instead of waiting for a root that no longer exists.
    fn seek(&mut self, now: Instant) {
        if self.dismantling {
            return;
        }
        let mut members: Vec<NodeId> =
            self.hosts.iter().filter(|h| h.state == HostState::Joined).map(|h| h.id).collect();
        if members.is_empty() {
            // No tree: the host invited directly may have lost the invitation (it was
            // restarting when it came). While it is up (the link is open) and has not
            // founded the tree, invite it again; a client that already did says `Joined`.
            let direct = self.direct.filter(|d| self.host_state(d) == Some(HostState::Invited));
            if let Some(d) = direct.filter(|d| self.io.conns.state(d) == Some(crate::conn::LinkState::Open)) {
                self.invite(now, d);
                self.seek_at = Some(now + self.cfg.join_retry);
            }
            return;
        }
        crate::tree::shuffle(&mut self.ctx(now), &mut members);
        for m in members.into_iter().take(self.cfg.seek_fanout) {
            self.attach(now, m);
        }
    }
}

impl Machine for Controller {
    const ROLE: Role = Role::Controller;
    fn handle_frame(&mut self, now: Instant, from: NodeId, payload: &[u8]) -> Result<(), InputError> {
        Controller::handle_frame(self, now, from, payload)
    }
    fn handle_link(&mut self, now: Instant, peer: NodeId, ev: LinkEvent) {
        Controller::handle_link(self, now, peer, ev)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Controller::handle_timeout(self, now)
    }
    fn handle_launched(&mut self, now: Instant, host: NodeId, result: LaunchResult) {
        Controller::handle_launched(self, now, host, result)
    }
    fn poll_output(&mut self) -> Option<Output> {
        Controller::poll_output(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Controller::poll_timeout(self)
    }
}
