//! The simulator: its state, and the handles a scenario or a test drives it by.
//!
//! One process, a `Vec` of host slots indexed by number (slot `i` has the id
//! [`NodeId::loopback`]`(i)`), each running a client, the controller or nothing; a calendar of
//! events (`calendar`); and the network between the slots (`net`). Virtual
//! time jumps from one event to the next ([`Sim::run_until`], in `dispatch`). Here:
//! [`Sim`]'s fields and records, starting, commanding, crashing and restarting nodes, and the
//! controller's planned crash and return (issue 19). The checks are in `checks`.
//!
//! **Determinism.** Every random stream derives from the master seed (`mix`); every delivered
//! frame is folded into [`Sim::trace_hash`] with its time and endpoints.

use crate::calendar::Calendar;
use crate::dispatch::{Kind, Proc};
use crate::net::{Cut, Latency, Link};
use crate::scenario::{CrashKind, Scenario};
use plush_core::wire::Message;
use plush_core::{Command, Config, Controller, Event, HostState, Instant, Node, NodeId, Report as CtrlReport};
use rand::SeedableRng;
use rand_pcg::Pcg64;
use std::collections::VecDeque;
use std::time::Duration;

/// The port of every simulated id.
const PORT: u16 = 7000;
/// Most safety violations kept as text in the report (all are counted).
pub(crate) const MAX_VIOLATION_TEXTS: usize = 20;

/// Root counts the simulator remembers (see [`Sim::counts`]): a run of 300 s at 5 s epochs has
/// 60 per root.
pub const MAX_COUNTS: usize = 1 << 16;

/// The id of slot `i`.
pub(crate) fn id(i: u32) -> NodeId {
    NodeId::loopback(i, PORT)
}

/// The slot of `id`.
pub(crate) fn idx(id: NodeId) -> u32 {
    // Every id the simulator hands out is a loopback id; an unknown one maps past the end.
    id.loopback_index().unwrap_or(u32::MAX)
}

/// SplitMix64: derives independent seeds from the master seed.
pub(crate) fn mix(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A host's slot: what runs there, and what the network knows of it.
pub(crate) struct SimNode {
    /// A client, or the controller in its own slot (outside the tree), or nothing.
    pub(crate) proc: Option<Proc>,
    /// Killed by the scenario: a launcher cannot start a client there.
    pub(crate) killed: bool,
    /// Bumped at every restart, so that stale timers and connect failures are ignored.
    pub(crate) incarnation: u32,
    pub(crate) host_up: bool,
    /// When the heap holds a timer for this node.
    pub(crate) timer: Option<Instant>,
    /// (peer, link) for every link this node is an end of.
    pub(crate) links: Vec<(u32, u32)>,
    /// Partition side (0 or 1).
    pub(crate) side: u8,
    pub(crate) joined_once: bool,
    /// Links up at this end (the node's file descriptors; a connection not yet accepted sits in
    /// the kernel's backlog and is not counted). Checked against the budget when one opens.
    pub(crate) fds: u32,
}

impl SimNode {
    /// A slot with nothing running in it yet.
    fn empty() -> SimNode {
        SimNode {
            proc: None,
            killed: false,
            incarnation: 0,
            host_up: true,
            timer: None,
            links: Vec::new(),
            side: 0,
            joined_once: false,
            fds: 0,
        }
    }

    /// Prefetch the slot's own fields, checked first by every event for it.
    #[inline]
    pub(crate) fn prefetch_state(&self) {
        // The slot's fields (after the process, in the layout the compiler chose), and the
        // line where the process starts (which kind it is).
        crate::dispatch::touch(Some(&self.timer));
        crate::dispatch::touch(Some(&self.incarnation));
        crate::dispatch::touch(Some(&self.links));
        crate::dispatch::touch(Some(&self.proc));
    }

    /// The client running here, if one is.
    pub(crate) fn node(&self) -> Option<&Node> {
        match &self.proc {
            Some(Proc::Node(n)) => Some(n),
            _ => None,
        }
    }

    /// The client running here, if one is.
    pub(crate) fn node_mut(&mut self) -> Option<&mut Node> {
        match &mut self.proc {
            Some(Proc::Node(n)) => Some(n),
            _ => None,
        }
    }

    /// The controller running here, if it is.
    pub(crate) fn ctrl(&self) -> Option<&Controller> {
        match &self.proc {
            Some(Proc::Controller(c)) => Some(c),
            _ => None,
        }
    }

    /// The controller running here, if it is.
    pub(crate) fn ctrl_mut(&mut self) -> Option<&mut Controller> {
        match &mut self.proc {
            Some(Proc::Controller(c)) => Some(c),
            _ => None,
        }
    }
}

/// The simulator: nodes, links, the event heap, the network model and the checks.
pub struct Sim {
    pub(crate) now: Instant,
    pub(crate) seq: u64,
    pub(crate) heap: Calendar<Kind>,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) links: Vec<Link>,
    pub(crate) free_links: Vec<u32>,
    pub(crate) cfg: std::rc::Rc<Config>,
    pub(crate) net: Pcg64,
    pub(crate) master_seed: u64,
    pub(crate) lat: Latency,
    /// How a crash's resets are delayed, when the scenario says ([`Latency::of_resets`]).
    pub(crate) reset_lat: Option<Latency>,
    pub(crate) connect_timeout: Duration,
    pub(crate) cut: Option<Cut>,
    pub(crate) clogs: Vec<(u32, u32, Instant)>,
    pub(crate) refuse: Vec<(u32, Instant)>,
    pub(crate) trace: u64,
    /// Events processed.
    pub events: u64,
    /// Frames delivered.
    pub frames: u64,
    /// Safety violations counted.
    pub violations: u64,
    /// The first few violations, as text.
    pub violation_texts: Vec<String>,
    /// Broadcast replies seen at roots: (broadcast id, node, time).
    pub replies: Vec<(u64, u32, Instant)>,
    /// Nodes that have joined a tree at least once.
    pub joined_once: u32,
    /// Repairs seen (Event::Repaired): through RanSub, through the root.
    pub repairs: (u64, u64),
    /// RanSub epochs completed at roots (Event::Population), and the last population counted.
    pub populations: (u64, u32),
    /// Every count of a root (time, root, epoch, population), oldest first; at most
    /// [`MAX_COUNTS`], later ones are dropped.
    pub counts: Vec<(Instant, u32, u32, u32)>,
    /// Most links any node held at once.
    pub max_open: u32,
    /// When each repair completed.
    pub repair_times: Vec<Instant>,
    /// When the tree's shape last changed: a parent, child or root event at any node, or a
    /// node killed or restarted. A recovery that the tick found converged was converged from
    /// this moment on, which makes its time exact rather than a multiple of the tick.
    pub shape_at: Instant,
    /// Links closed while their node still counted them as parent or child.
    pub pinned_closes: u64,
    /// Counters of crashed incarnations, so that totals survive crashes.
    pub dead_stats: plush_core::Stats,
    /// Nodes whose deliveries and link events are printed to stderr (`PLUSH_SIM_WATCH=3,17`),
    /// for debugging.
    pub(crate) watch: Vec<u32>,
    /// Frames delivered by message kind, when `PLUSH_SIM_KINDS` is set (printed to stderr at
    /// the end of [`play_sim`]), for finding what makes a run chatty.
    pub(crate) kinds: Option<std::collections::BTreeMap<String, u64>>,
    /// The controller's slot, once added.
    pub(crate) ctrl_slot: Option<u32>,
    /// Simulated processes: their durations and outputs.
    pub(crate) procs: Pcg64,
    /// Job process duration range, in microseconds, and distinct outputs.
    pub(crate) job_us: (u64, u64),
    pub(crate) job_outputs: u32,
    /// The job whose delivery the simulator records, and what it recorded.
    pub job: JobRecord,
    /// What the controller reported, except results and host states (kept in `results` and
    /// `job`, counted in `host_failures`).
    pub ctrl_log: Vec<(Instant, CtrlReport)>,
    /// Every `Report::Result` the controller gave, of any job, as (time, report): one entry per
    /// group of nodes new to it, with their status, truncation and output.
    pub results: Vec<(Instant, CtrlReport)>,
    /// Every `Output::Signal` a node emitted (a timeout or a cancel), as (time, node, job). The
    /// simulated process ignores it: the node has recorded its result already.
    pub signals: Vec<(Instant, u32, u64)>,
    /// Hosts the controller declared failed.
    pub host_failures: u32,
    /// Nodes that exited by themselves (dismantle, idle expiry).
    pub exits: u32,
    /// Launches carried out (a client started on request).
    pub launches: u32,
    /// When `Some`: every node that joins for the first time is pushed here (the member-paced
    /// build takes them as inviters).
    pub first_joins: Option<Vec<u32>>,
    /// Hosts no member can launch (the controller still can): a member without ssh to them.
    pub member_launch_fails: Vec<u32>,
    /// Of `launches`, those the controller carried out.
    pub launches_by_controller: u32,
    /// The launch model (see [`crate::scenario::LaunchModel`]): one launch's time on top of a
    /// round trip, and launches at once per launcher.
    pub(crate) launch_model: Option<(Duration, u32)>,
    /// With a launch model: per launcher slot, its launches under way and those waiting (host,
    /// whether it can start there). One entry per slot that launched.
    pub(crate) launchers: std::collections::HashMap<u32, (u32, VecDeque<(u32, bool)>)>,
    /// Record what [`Sim::messages`] and [`Sim::node_events`] hold. Off by default; tests turn
    /// it on to see what travelled.
    pub recording: bool,
    /// Nodes whose maintenance script ([`plush_core::control::MAINT_JOB`]) exits 1; it exits 0
    /// everywhere else.
    pub maintenance_fails: Vec<u32>,
    /// While `recording`: every control-plane or job message delivered, as (time, from, to,
    /// message), to a node or the controller.
    pub messages: Vec<(Instant, u32, u32, Message)>,
    /// While `recording`: every event a node emitted, as (time, node, event).
    pub node_events: Vec<(Instant, u32, Event)>,
    /// The controller's crash and return ([`Sim::plan_controller_crash`]), and what was seen.
    pub ctrl_crash: CtrlCrash,
}

/// A planned crash of the controller and the return of a new controller process that resumes
/// from what a journal would hold (issue 19), and what the simulator saw of it.
#[derive(Debug, Default)]
pub struct CtrlCrash {
    /// When the controller is killed (`None`: not planned, or done).
    pub crash_at: Option<Instant>,
    /// How long after the crash a new one comes back (`None`: never).
    pub back_after: Option<Duration>,
    /// When it was killed.
    pub crashed_at: Option<Instant>,
    /// When the new one is due (`None`: not planned, or started).
    pub back_at: Option<Instant>,
    /// When the new one started (`None`: not yet, or never).
    pub returned_at: Option<Instant>,
    /// When the new one learnt the root (its first `Report::RootChanged`).
    pub attached_at: Option<Instant>,
    /// Per node, for the watched job: bit 0, its result was shown by the first controller;
    /// bit 1, by its successor.
    pub shown_by: Vec<u8>,
    /// What the journal held at the crash.
    pub(crate) journal: Option<Journal>,
    /// Controllers killed so far.
    pub(crate) gen: u32,
}

/// What a journal holds when its controller dies: every host state reported, the last root,
/// and each job's spec, the nodes whose results were shown, and whether it was said complete.
#[derive(Debug)]
pub(crate) struct Journal {
    hosts: Vec<(NodeId, HostState)>,
    root: Option<NodeId>,
    jobs: Vec<(plush_core::wire::RunSpec, plush_core::NodeSet, bool)>,
}

/// What the simulator saw of one job, from its own record of deliveries (not the controller's
/// claims).
#[derive(Debug, Default)]
pub struct JobRecord {
    /// The job watched.
    pub id: u64,
    /// When it started.
    pub started: Option<Instant>,
    /// When the last new node result reached the controller's user.
    pub last_result: Option<Instant>,
    /// Per node: how many times the controller reported its result.
    pub reported: Vec<u16>,
    /// Per node: the nodes (other than itself) that received its result in a `Results` frame.
    pub receivers: Vec<Vec<u32>>,
    /// `Results` frames delivered to the controller.
    pub ctrl_messages: u64,
    /// Distinct outputs reported.
    pub outputs: Vec<Vec<u8>>,
}

impl Sim {
    /// A simulator of `n` node slots (none started), with the network model of `scenario`.
    pub fn new(n: u32, scenario: &Scenario) -> Self {
        Sim {
            now: Instant::ZERO,
            seq: 0,
            heap: Calendar::new(),
            nodes: (0..n).map(|_| SimNode::empty()).collect(),
            links: Vec::new(),
            free_links: Vec::new(),
            cfg: std::rc::Rc::new(scenario.config.clone()),
            net: Pcg64::seed_from_u64(mix(scenario.seed, 1)),
            master_seed: scenario.seed,
            lat: Latency::new(scenario),
            reset_lat: Latency::of_resets(scenario),
            connect_timeout: scenario.config.connect_timeout,
            cut: None,
            clogs: Vec::new(),
            refuse: Vec::new(),
            trace: 0xcbf2_9ce4_8422_2325,
            events: 0,
            frames: 0,
            violations: 0,
            violation_texts: Vec::new(),
            replies: Vec::new(),
            joined_once: 0,
            repairs: (0, 0),
            populations: (0, 0),
            counts: Vec::new(),
            max_open: 0,
            repair_times: Vec::new(),
            shape_at: Instant::ZERO,
            pinned_closes: 0,
            dead_stats: plush_core::Stats::default(),
            watch: std::env::var("PLUSH_SIM_WATCH")
                .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
                .unwrap_or_default(),
            kinds: std::env::var_os("PLUSH_SIM_KINDS").map(|_| Default::default()),
            ctrl_slot: None,
            procs: Pcg64::seed_from_u64(mix(scenario.seed, 3)),
            job_us: ((scenario.job_min_s * 1e6) as u64, (scenario.job_max_s.max(scenario.job_min_s) * 1e6) as u64),
            job_outputs: scenario.job_outputs.max(1),
            job: JobRecord::default(),
            ctrl_log: Vec::new(),
            results: Vec::new(),
            signals: Vec::new(),
            host_failures: 0,
            exits: 0,
            launches: 0,
            first_joins: None,
            launches_by_controller: 0,
            member_launch_fails: Vec::new(),
            launch_model: scenario
                .launch
                .map(|l| (Duration::from_micros((l.ms.max(0.0) * 1e3) as u64), l.fanout.max(1))),
            launchers: std::collections::HashMap::new(),
            recording: false,
            maintenance_fails: Vec::new(),
            messages: Vec::new(),
            node_events: Vec::new(),
            ctrl_crash: CtrlCrash::default(),
        }
    }

    /// Add the controller in a slot of its own (after the nodes) and return the slot.
    pub fn add_controller(&mut self) -> u32 {
        if let Some(c) = self.ctrl_slot {
            return c;
        }
        let slot = self.nodes.len() as u32;
        let seed = mix(self.master_seed, 999);
        self.nodes.push(SimNode {
            proc: Some(Proc::Controller(Box::new(Controller::new(
                id(slot),
                std::rc::Rc::clone(&self.cfg),
                seed,
                self.now,
            )))),
            incarnation: 1,
            ..SimNode::empty()
        });
        self.ctrl_slot = Some(slot);
        slot
    }

    /// The controller, if added.
    pub fn controller(&self) -> Option<&Controller> {
        self.ctrl_slot.and_then(|c| self.nodes[c as usize].ctrl())
    }

    /// Ask the controller something (with the current time); its outputs are carried out.
    pub fn ctrl_do<R>(&mut self, f: impl FnOnce(&mut Controller, Instant) -> R) -> Option<R> {
        let c = self.ctrl_slot?;
        let now = self.now;
        let r = self.nodes[c as usize].ctrl_mut().map(|ctrl| f(ctrl, now));
        self.after(c);
        r
    }

    /// Watch job `id`: record every delivery of its results.
    pub fn watch_job(&mut self, job: u64) {
        let n = self.nodes.len();
        self.job = JobRecord {
            id: job,
            started: Some(self.now),
            reported: vec![0; n],
            receivers: vec![Vec::new(); n],
            ..JobRecord::default()
        };
    }

    /// Whether node `i`'s process was started more than once (restarted or relaunched).
    pub fn restarted(&self, i: u32) -> bool {
        self.nodes.get(i as usize).is_some_and(|n| n.incarnation > 1)
    }

    /// A new incarnation of node `i`'s process (its host up), or `None` if one runs already.
    pub(crate) fn fresh_node(&mut self, i: u32) -> Option<Node> {
        let sn = &mut self.nodes[i as usize];
        if sn.proc.is_some() {
            return None;
        }
        sn.incarnation += 1;
        sn.host_up = true;
        sn.timer = None;
        sn.killed = false;
        let seed = mix(self.master_seed, 1000 + u64::from(i) + (u64::from(sn.incarnation) << 32));
        Some(Node::new(id(i), std::rc::Rc::clone(&self.cfg), seed, self.now))
    }

    /// Start node `i`'s client without joining: it waits for an invitation (a launch).
    pub fn launch_idle(&mut self, i: u32) {
        if self.nodes[i as usize].ctrl().is_some() {
            return;
        }
        if let Some(node) = self.fresh_node(i) {
            self.nodes[i as usize].proc = Some(Proc::Node(Box::new(node)));
            self.after(i);
        }
    }

    /// Whether slot `i` runs a node or the controller.
    pub(crate) fn present(&self, i: u32) -> bool {
        self.nodes[i as usize].proc.is_some()
    }

    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The hash of everything delivered so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// Number of node slots.
    pub fn len(&self) -> u32 {
        self.nodes.len() as u32
    }

    /// Whether there are no node slots.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node in slot `i`, if its process is running.
    pub fn node(&self, i: u32) -> Option<&Node> {
        self.nodes.get(i as usize).and_then(SimNode::node)
    }

    /// Whether node `i`'s process is running.
    pub fn alive(&self, i: u32) -> bool {
        self.node(i).is_some()
    }

    /// The id of slot `i`.
    pub fn id(i: u32) -> NodeId {
        id(i)
    }

    /// Number of running nodes.
    pub fn live_count(&self) -> u32 {
        self.nodes.iter().filter(|n| n.node().is_some()).count() as u32
    }

    // ----- node control ---------------------------------------------------------------------

    /// Start node `i` (a fresh process) and send it `Join { bootstrap }`.
    pub fn start(&mut self, i: u32, bootstrap: Vec<NodeId>) {
        let Some(mut node) = self.fresh_node(i) else { return };
        if let Err(e) = node.handle_command(self.now, Command::Join { bootstrap }) {
            self.violation(format!("node {i}: join refused: {e}"));
        }
        self.nodes[i as usize].proc = Some(Proc::Node(Box::new(node)));
        self.after(i);
    }

    /// Ask node `i` to do something.
    pub fn command(&mut self, i: u32, cmd: Command) -> bool {
        let now = self.now;
        let ok = match self.nodes[i as usize].node_mut() {
            Some(n) => n.handle_command(now, cmd).is_ok(),
            None => false,
        };
        self.after(i);
        ok
    }

    /// Kill node `i`: a process crash resets its links at once; a host crash is silence.
    pub fn crash(&mut self, i: u32, kind: CrashKind) {
        let sn = &mut self.nodes[i as usize];
        let Some(Proc::Node(dead)) = sn.proc.take_if(|p| matches!(p, Proc::Node(_))) else { return };
        self.shape_at = self.now;
        let st = dead.stats();
        self.dead_stats.evictions += st.evictions;
        self.dead_stats.links_refused += st.links_refused;
        self.dead_stats.root_joins += st.root_joins;
        self.dead_stats.root_verifies += st.root_verifies;
        self.dead_stats.moves += st.moves;
        self.dead_stats.moves_asked += st.moves_asked;
        self.dead_stats.member_placements += st.member_placements;
        let sn = &mut self.nodes[i as usize];
        sn.timer = None;
        sn.killed = true;
        if kind == CrashKind::Host {
            sn.host_up = false;
        }
        self.cut_links(i, kind);
    }

    /// Kill the controller at `at`, and start a new controller process `back_after` later
    /// (`None`: never) that resumes from what a journal holds at the crash: the hosts and their
    /// states, the last root, and each job with the nodes whose results were shown (the
    /// simulator's own record of the controller's reports) and whether it was said complete.
    /// It adopts them (`Controller::adopt_hosts`, `Controller::adopt_job`) and attaches through
    /// the journal's root. Done inside [`Sim::run_until`], at the planned times.
    pub fn plan_controller_crash(&mut self, at: Instant, back_after: Option<Duration>) {
        self.ctrl_crash.crash_at = Some(at);
        self.ctrl_crash.back_after = back_after;
    }

    /// Carry out what is due of the plan.
    pub(crate) fn controller_plan(&mut self) {
        let now = self.now;
        if self.ctrl_crash.crash_at.is_some_and(|t| t <= now) {
            self.ctrl_crash.crash_at = None;
            let root = self.ctrl_log.iter().rev().find_map(|(_, r)| match r {
                CtrlReport::RootChanged(root) => Some(*root),
                _ => None,
            });
            let Some(dead) = self.crash_controller() else { return };
            let shown: plush_core::NodeSet =
                (0..self.job.reported.len() as u32).filter(|&i| self.job.reported[i as usize] > 0).map(id).collect();
            let jobs = dead
                .jobs()
                .map(|(spec, got, complete)| {
                    let seen = if spec.job == self.job.id { shown.clone() } else { got.clone() };
                    (spec.clone(), seen, complete)
                })
                .collect();
            self.ctrl_crash.journal = Some(Journal { hosts: dead.hosts().collect(), root: dead.root().or(root), jobs });
            self.ctrl_crash.crashed_at = Some(now);
            self.ctrl_crash.gen += 1;
            self.ctrl_crash.back_at = self.ctrl_crash.back_after.map(|d| now + d);
        }
        if self.ctrl_crash.back_at.is_some_and(|t| t <= now) && self.controller().is_none() {
            let Some(j) = self.ctrl_crash.journal.take() else { return };
            // Through the journal's root, else any member it names.
            let via = j.root.or_else(|| j.hosts.iter().find(|h| h.1 == HostState::Joined).map(|h| h.0));
            self.restart_controller(|c, now| {
                c.adopt_hosts(now, &j.hosts);
                for (spec, shown, complete) in j.jobs {
                    let _ = c.adopt_job(now, spec, shown, complete);
                }
                if let Some(m) = via {
                    c.attach(now, m);
                }
            });
        }
    }

    /// Kill the controller's process: its links reset at once, and its memory is lost (the
    /// controller as it was is returned, for inspection). Nothing happens without one.
    pub fn crash_controller(&mut self) -> Option<Box<Controller>> {
        let c = self.ctrl_slot?;
        let sn = &mut self.nodes[c as usize];
        let Some(Proc::Controller(dead)) = sn.proc.take_if(|p| matches!(p, Proc::Controller(_))) else {
            return None;
        };
        sn.timer = None;
        sn.incarnation += 1;
        self.cut_links(c, CrashKind::Process);
        Some(dead)
    }

    /// Start a new controller process in the controller's slot (same address) after
    /// [`Sim::crash_controller`]; `setup` runs on it before anything else (resume a journal,
    /// attach to a member). Returns false when the slot is missing or a controller runs there.
    pub fn restart_controller(&mut self, setup: impl FnOnce(&mut Controller, Instant)) -> bool {
        let Some(c) = self.ctrl_slot else { return false };
        if self.nodes[c as usize].ctrl().is_some() {
            return false;
        }
        let incarnation = self.nodes[c as usize].incarnation;
        let seed = mix(self.master_seed, 999 + (u64::from(incarnation) << 32));
        let mut ctrl = Box::new(Controller::new(id(c), std::rc::Rc::clone(&self.cfg), seed, self.now));
        setup(&mut ctrl, self.now);
        if self.ctrl_crash.gen > 0 {
            self.ctrl_crash.back_at = None;
            self.ctrl_crash.returned_at = Some(self.now);
            self.ctrl_crash.attached_at = None;
        }
        self.nodes[c as usize].proc = Some(Proc::Controller(ctrl));
        self.after(c);
        true
    }

    /// Restart node `i`'s process (and host) and rejoin through `bootstrap`. Peers that still
    /// hold a link to its previous incarnation get a reset.
    pub fn restart(&mut self, i: u32, bootstrap: Vec<NodeId>) {
        self.crash(i, CrashKind::Process);
        let links: Vec<u32> = self.nodes[i as usize].links.iter().map(|x| x.1).collect();
        for l in links {
            let side = self.links[l as usize].side(i);
            let other = 1 - side;
            if self.links[l as usize].ends[other].open {
                let gen = self.links[l as usize].gen;
                let to = self.links[l as usize].ends[other].node;
                // In FIFO order on the old link, whose clocks a new link between the same two
                // inherits: the reset reaches the peer before anything the new incarnation
                // sends, or the peer would drop its new link on hearing the old one reset.
                let at = self.fifo(l, i, other);
                self.push(at, Kind::Down { link: l, gen, to });
            }
        }
        self.start(i, bootstrap);
    }

    /// Bytes held by the simulator's own structures, by part (not counting the nodes' heaps).
    pub fn own_bytes(&self) -> Vec<(&'static str, usize)> {
        use std::mem::size_of;
        vec![
            ("node slots", self.nodes.capacity() * size_of::<SimNode>()),
            ("node link lists", self.nodes.iter().map(|n| n.links.capacity() * 8).sum()),
            ("links", self.links.capacity() * size_of::<Link>()),
            ("calendar", self.heap.bytes()),
        ]
    }

    /// A counter summed over every node that ever ran (crashed incarnations included).
    pub fn total(&self, f: impl Fn(&plush_core::Stats) -> u64) -> u64 {
        f(&self.dead_stats) + self.nodes.iter().filter_map(SimNode::node).map(|n| f(n.stats())).sum::<u64>()
    }
}
