//! The simulation engine.
//!
//! One process, a `Vec` of nodes indexed by number (node `i` has the id
//! [`NodeId::loopback`]`(i)`), and a binary heap of events ordered by (time, sequence). Virtual
//! time jumps from one event to the next.
//!
//! **Links.** A link joins two nodes; each direction is a FIFO: a frame is delivered at
//! `max(now + delay, previous delivery in that direction)`, with `delay = min + Exp(mean)` capped
//! at `max`. Opening a link costs a round trip (the hellos); a live peer answers, a dead process's
//! kernel refuses at once, a dead or cut-off host stays silent until the connect timeout. Closing
//! a link delivers what was already in flight, then the close. A crashed process resets every link
//! at once; a crashed host is silence. Partitions (symmetric or one-way) and per-pair clogs hold
//! frames until they heal.
//!
//! **Checks.** After every event the node it touched is checked for safety: at most
//! `max_children` children, no link to itself, and, when its parent changed, no loop through it.
//! Liveness (one root, every live node joined and reachable, parents and children agreeing) is
//! computed by [`Sim::shape`] when the scenario asks.
//!
//! **Determinism.** Every random stream derives from the master seed; every delivered frame is
//! folded into [`Sim::trace_hash`] with its time and endpoints.

use crate::scenario::{BroadcastReport, CrashKind, Report, Scenario, Shape};
use crate::uniformity::Uniformity;
use plush_core::frame::{encode_hello, Frame, PREFIX};
use plush_core::wire::{ExitStatus, Hello, JobMsg, Message, Role};
use plush_core::{
    Command, Config, Controller, Event, HostState, InputError, Instant, LinkEvent, Node, NodeId, Output, ProcessEvent,
    Report as CtrlReport, TreeState,
};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

const PORT: u16 = 7000;
/// Most safety violations kept as text in the report (all are counted).
const MAX_VIOLATION_TEXTS: usize = 20;

/// Root counts the simulator remembers (see [`Sim::counts`]): a run of 300 s at 5 s epochs has
/// 60 per root.
pub const MAX_COUNTS: usize = 1 << 16;

fn id(i: u32) -> NodeId {
    NodeId::loopback(i, PORT)
}

fn idx(id: NodeId) -> u32 {
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

#[derive(Debug)]
enum Kind {
    /// A frame from the link's other end arrives at `to`.
    Deliver { link: u32, gen: u32, to: u32, frame: Frame },
    /// The hello from the other end arrives: report the link up to `to`.
    Up { link: u32, gen: u32, to: u32 },
    /// `to`'s attempt to reach `peer` failed.
    ConnectFailed { to: u32, peer: u32, incarnation: u32 },
    /// The other end closed or reset the link.
    Down { link: u32, gen: u32, to: u32 },
    /// `node`'s timer.
    Timer { node: u32, incarnation: u32 },
    /// A job's simulated process ends at `node` (output, then exit).
    ProcExit { node: u32, incarnation: u32, job: u64 },
    /// A target holds every chunk of a push: it verified and installed the file.
    PushVerified { node: u32, incarnation: u32, job: u64 },
    /// The launcher `by` asked for finished on `host`.
    Launched { by: u32, host: u32, ok: bool },
}

/// A queued event. Buckets hold few events each, so entries carry the event itself.
struct Ev {
    at: Instant,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Ev {}

impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    // Reversed: BinaryHeap is a max-heap and we want the earliest (time, seq) first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// The event queue: a calendar of 1 ms buckets covering the next [`Calendar::BUCKETS`] ms, each
/// a small heap ordered by (time, sequence), and one heap for everything further away. Pushing
/// and popping touch one small heap instead of one heap of every pending event.
struct Calendar {
    buckets: Vec<BinaryHeap<Ev>>,
    /// Absolute index of the bucket holding the earliest events.
    cursor: u64,
    /// Events in the buckets (not counting `far`).
    near: usize,
    far: BinaryHeap<Ev>,
}

impl Calendar {
    const WIDTH_US: u64 = 1000;
    const BUCKETS: u64 = 1 << 14;

    fn new() -> Self {
        Calendar {
            buckets: (0..Self::BUCKETS).map(|_| BinaryHeap::new()).collect(),
            cursor: 0,
            near: 0,
            far: BinaryHeap::new(),
        }
    }

    fn push(&mut self, ev: Ev) {
        let b = (ev.at.0 / Self::WIDTH_US).max(self.cursor);
        if b < self.cursor + Self::BUCKETS {
            self.buckets[(b % Self::BUCKETS) as usize].push(ev);
            self.near += 1;
        } else {
            self.far.push(ev);
        }
    }

    /// Move the cursor to the first non-empty bucket; false if there is no event at all.
    fn settle(&mut self) -> bool {
        loop {
            if self.near == 0 {
                // Jump to the far events.
                let Some(first) = self.far.peek() else { return false };
                self.cursor = self.cursor.max(first.at.0 / Self::WIDTH_US);
                self.pull_far();
                continue;
            }
            let bucket = &mut self.buckets[(self.cursor % Self::BUCKETS) as usize];
            if !bucket.is_empty() {
                return true;
            }
            if bucket.capacity() > 16 {
                // A burst passed: do not hold its memory for the next lap.
                *bucket = BinaryHeap::new();
            }
            self.cursor += 1;
            self.pull_far();
        }
    }

    /// Bring far events that now fall within the window into their buckets.
    fn pull_far(&mut self) {
        while let Some(ev) = self.far.peek() {
            let b = ev.at.0 / Self::WIDTH_US;
            if b >= self.cursor + Self::BUCKETS {
                break;
            }
            if let Some(ev) = self.far.pop() {
                self.buckets[(b.max(self.cursor) % Self::BUCKETS) as usize].push(ev);
                self.near += 1;
            }
        }
    }

    fn peek_at(&mut self) -> Option<Instant> {
        if !self.settle() {
            return None;
        }
        self.buckets[(self.cursor % Self::BUCKETS) as usize].peek().map(|e| e.at)
    }

    fn pop(&mut self) -> Option<Ev> {
        if !self.settle() {
            return None;
        }
        let ev = self.buckets[(self.cursor % Self::BUCKETS) as usize].pop();
        if ev.is_some() {
            self.near -= 1;
        }
        ev
    }
}

/// One end's view of a link.
#[derive(Clone, Copy, Debug, Default)]
struct End {
    node: u32,
    /// The end still takes deliveries (it has not closed, crashed, or been told of a close).
    open: bool,
    /// The end was told the link is up.
    up: bool,
    /// FIFO clock of deliveries *to* this end.
    next: Instant,
}

#[derive(Clone, Debug)]
struct Link {
    ends: [End; 2],
    gen: u32,
    live: bool,
}

impl Link {
    fn side(&self, node: u32) -> usize {
        usize::from(self.ends[1].node == node)
    }
}

struct SimNode {
    node: Option<Node>,
    /// The controller, in its own slot (outside the tree).
    ctrl: Option<Box<Controller>>,
    /// Killed by the scenario: a launcher cannot start a client there.
    killed: bool,
    /// Bumped at every restart, so that stale timers and connect failures are ignored.
    incarnation: u32,
    host_up: bool,
    /// When the heap holds a timer for this node.
    timer: Option<Instant>,
    /// (peer, link) for every link this node is an end of.
    links: Vec<(u32, u32)>,
    /// Partition side (0 or 1).
    side: u8,
    joined_once: bool,
    /// Links up at this end (the node's file descriptors; a connection not yet accepted sits in
    /// the kernel's backlog and is not counted). Checked against the budget when one opens.
    fds: u32,
}

impl SimNode {
    /// A slot with nothing running in it yet.
    fn empty() -> SimNode {
        SimNode {
            node: None,
            ctrl: None,
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
}

/// A cut between the two partition sides, until `until`.
#[derive(Clone, Copy, Debug)]
struct Cut {
    /// Side 0 → side 1 is blocked.
    forward: bool,
    /// Side 1 → side 0 is blocked.
    backward: bool,
    until: Instant,
}

/// The simulator: nodes, links, the event heap, the network model and the checks.
pub struct Sim {
    now: Instant,
    seq: u64,
    heap: Calendar,
    nodes: Vec<SimNode>,
    links: Vec<Link>,
    free_links: Vec<u32>,
    cfg: std::rc::Rc<Config>,
    net: Pcg64,
    master_seed: u64,
    lat_min_us: f64,
    lat_mean_us: f64,
    lat_max_us: f64,
    connect_timeout: Duration,
    cut: Option<Cut>,
    clogs: Vec<(u32, u32, Instant)>,
    refuse: Vec<(u32, Instant)>,
    trace: u64,
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
    /// Links closed while their node still counted them as parent or child.
    pub pinned_closes: u64,
    /// Counters of crashed incarnations, so that totals survive crashes.
    pub dead_stats: plush_core::Stats,
    /// Nodes whose deliveries are printed to stderr (`PLUSH_SIM_WATCH=3,17`), for debugging.
    watch: Vec<u32>,
    /// Frames delivered by message kind, when `PLUSH_SIM_KINDS` is set (printed to stderr at
    /// the end of [`play_sim`]), for finding what makes a run chatty.
    kinds: Option<std::collections::BTreeMap<String, u64>>,
    /// The controller's slot, once added.
    ctrl_slot: Option<u32>,
    /// Simulated processes: their durations and outputs.
    procs: Pcg64,
    /// Job process duration range, in microseconds, and distinct outputs.
    job_us: (u64, u64),
    job_outputs: u32,
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
    journal: Option<Journal>,
    /// Controllers killed so far.
    gen: u32,
}

/// What a journal holds when its controller dies: every host state reported, the last root,
/// and each job's spec, the nodes whose results were shown, and whether it was said complete.
#[derive(Debug)]
struct Journal {
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
        let mean = ((scenario.latency_max_ms - scenario.latency_min_ms) / 5.0).max(0.0);
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
            lat_min_us: scenario.latency_min_ms * 1000.0,
            lat_mean_us: mean * 1000.0,
            lat_max_us: scenario.latency_max_ms.max(scenario.latency_min_ms) * 1000.0,
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
            ctrl: Some(Box::new(Controller::new(id(slot), std::rc::Rc::clone(&self.cfg), seed, self.now))),
            incarnation: 1,
            ..SimNode::empty()
        });
        self.ctrl_slot = Some(slot);
        slot
    }

    /// The controller, if added.
    pub fn controller(&self) -> Option<&Controller> {
        self.ctrl_slot.and_then(|c| self.nodes[c as usize].ctrl.as_deref())
    }

    /// Ask the controller something (with the current time); its outputs are carried out.
    pub fn ctrl_do<R>(&mut self, f: impl FnOnce(&mut Controller, Instant) -> R) -> Option<R> {
        let c = self.ctrl_slot?;
        let now = self.now;
        let r = self.nodes[c as usize].ctrl.as_deref_mut().map(|ctrl| f(ctrl, now));
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
    fn fresh_node(&mut self, i: u32) -> Option<Node> {
        let sn = &mut self.nodes[i as usize];
        if sn.node.is_some() {
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
        if self.nodes[i as usize].ctrl.is_some() {
            return;
        }
        if let Some(node) = self.fresh_node(i) {
            self.nodes[i as usize].node = Some(node);
            self.after(i);
        }
    }

    /// Whether slot `i` runs a node or the controller.
    fn present(&self, i: u32) -> bool {
        let sn = &self.nodes[i as usize];
        sn.node.is_some() || sn.ctrl.is_some()
    }

    fn m_frame(&mut self, i: u32, from: u32, payload: &[u8]) -> Result<(), InputError> {
        let now = self.now;
        let sn = &mut self.nodes[i as usize];
        match (sn.node.as_mut(), sn.ctrl.as_deref_mut()) {
            (Some(n), _) => n.handle_frame(now, id(from), payload),
            (None, Some(c)) => c.handle_frame(now, id(from), payload),
            _ => Ok(()),
        }
    }

    fn m_link(&mut self, i: u32, peer: u32, ev: LinkEvent) {
        let now = self.now;
        let sn = &mut self.nodes[i as usize];
        match (sn.node.as_mut(), sn.ctrl.as_deref_mut()) {
            (Some(n), _) => n.handle_link(now, id(peer), ev),
            (None, Some(c)) => c.handle_link(now, id(peer), ev),
            _ => {}
        }
    }

    fn m_poll(&mut self, i: u32) -> Option<Output> {
        let sn = &mut self.nodes[i as usize];
        match (sn.node.as_mut(), sn.ctrl.as_deref_mut()) {
            (Some(n), _) => n.poll_output(),
            (None, Some(c)) => c.poll_output(),
            _ => None,
        }
    }

    fn m_poll_timeout(&self, i: u32) -> Option<Instant> {
        let sn = &self.nodes[i as usize];
        match (sn.node.as_ref(), sn.ctrl.as_deref()) {
            (Some(n), _) => n.poll_timeout(),
            (None, Some(c)) => c.poll_timeout(),
            _ => None,
        }
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
        self.nodes.get(i as usize).and_then(|n| n.node.as_ref())
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
        self.nodes.iter().filter(|n| n.node.is_some()).count() as u32
    }

    // ----- scheduling -----------------------------------------------------------------------

    fn push(&mut self, at: Instant, kind: Kind) {
        self.seq += 1;
        self.heap.push(Ev { at, seq: self.seq, kind });
    }

    fn delay(&mut self) -> Duration {
        let u: f64 = self.net.random::<f64>();
        let exp = -(1.0 - u).ln() * self.lat_mean_us;
        let d = (self.lat_min_us + exp).min(self.lat_max_us);
        Duration::from_micros(d as u64)
    }

    /// When traffic from `a` to `b` may flow again (`now` if it flows).
    fn blocked_until(&self, a: u32, b: u32) -> Instant {
        let mut until = Instant::ZERO;
        if let Some(cut) = self.cut {
            let (sa, sb) = (self.nodes[a as usize].side, self.nodes[b as usize].side);
            if cut.until > self.now && ((sa == 0 && sb == 1 && cut.forward) || (sa == 1 && sb == 0 && cut.backward)) {
                until = until.max(cut.until);
            }
        }
        for &(x, y, t) in &self.clogs {
            if t > self.now && ((x == a && y == b) || (x == b && y == a)) {
                until = until.max(t);
            }
        }
        until
    }

    /// Delivery time of something sent now from `from` to end `to_end` of `link`, FIFO.
    fn fifo(&mut self, link: u32, from: u32, to_end: usize) -> Instant {
        let to = self.links[link as usize].ends[to_end].node;
        let d = self.delay();
        let mut at = self.now + d;
        let blocked = self.blocked_until(from, to);
        if blocked > self.now {
            at = at.max(blocked + d);
        }
        let end = &mut self.links[link as usize].ends[to_end];
        at = at.max(end.next);
        end.next = at;
        at
    }

    /// The link between `a` and `b` whose `a` end is still open.
    fn find_link(&self, a: u32, b: u32) -> Option<u32> {
        self.nodes[a as usize].links.iter().filter(|(p, _)| *p == b).map(|&(_, l)| l).find(|&l| {
            let link = &self.links[l as usize];
            link.live && link.ends[link.side(a)].open
        })
    }

    fn new_link(&mut self, a: u32, b: u32) -> u32 {
        // A new connection between the same pair must not overtake the old one's close:
        // inherit its FIFO clocks.
        let (mut next_a, mut next_b) = (self.now, self.now);
        for &(_, l) in self.nodes[a as usize].links.iter().filter(|(p, _)| *p == b) {
            let link = &self.links[l as usize];
            let side = link.side(a);
            if link.live {
                next_a = next_a.max(link.ends[side].next);
                next_b = next_b.max(link.ends[1 - side].next);
            }
        }
        let ends = [
            End { node: a, open: true, up: false, next: next_a },
            End { node: b, open: true, up: false, next: next_b },
        ];
        let l = match self.free_links.pop() {
            Some(l) => {
                let gen = self.links[l as usize].gen.wrapping_add(1);
                self.links[l as usize] = Link { ends, gen, live: true };
                l
            }
            None => {
                self.links.push(Link { ends, gen: 0, live: true });
                (self.links.len() - 1) as u32
            }
        };
        self.nodes[a as usize].links.push((b, l));
        self.nodes[b as usize].links.push((a, l));
        l
    }

    /// One end stops taking deliveries.
    fn close_end(&mut self, l: u32, side: usize) {
        let end = &mut self.links[l as usize].ends[side];
        if end.open && end.up {
            let n = end.node as usize;
            self.nodes[n].fds = self.nodes[n].fds.saturating_sub(1);
        }
        end.open = false;
    }

    /// Forget the link once neither end takes deliveries.
    fn maybe_free(&mut self, l: u32) {
        let link = &self.links[l as usize];
        if link.live && !link.ends[0].open && !link.ends[1].open {
            let [a, b] = [link.ends[0].node, link.ends[1].node];
            self.links[l as usize].live = false;
            self.nodes[a as usize].links.retain(|x| x.1 != l);
            self.nodes[b as usize].links.retain(|x| x.1 != l);
            self.free_links.push(l);
        }
    }

    // ----- node control ---------------------------------------------------------------------

    /// Start node `i` (a fresh process) and send it `Join { bootstrap }`.
    pub fn start(&mut self, i: u32, bootstrap: Vec<NodeId>) {
        let Some(mut node) = self.fresh_node(i) else { return };
        if let Err(e) = node.handle_command(self.now, Command::Join { bootstrap }) {
            self.violation(format!("node {i}: join refused: {e}"));
        }
        self.nodes[i as usize].node = Some(node);
        self.after(i);
    }

    /// Ask node `i` to do something.
    pub fn command(&mut self, i: u32, cmd: Command) -> bool {
        let now = self.now;
        let ok = match self.nodes[i as usize].node.as_mut() {
            Some(n) => n.handle_command(now, cmd).is_ok(),
            None => false,
        };
        self.after(i);
        ok
    }

    /// Kill node `i`: a process crash resets its links at once; a host crash is silence.
    pub fn crash(&mut self, i: u32, kind: CrashKind) {
        let sn = &mut self.nodes[i as usize];
        let Some(dead) = sn.node.take() else { return };
        let st = dead.stats();
        self.dead_stats.evictions += st.evictions;
        self.dead_stats.links_refused += st.links_refused;
        self.dead_stats.root_joins += st.root_joins;
        self.dead_stats.root_verifies += st.root_verifies;
        let sn = &mut self.nodes[i as usize];
        sn.timer = None;
        sn.killed = true;
        if kind == CrashKind::Host {
            sn.host_up = false;
        }
        self.cut_links(i, kind);
    }

    /// Close every link of slot `i`, whose process died: a process crash resets them (the peer
    /// hears at once), a host crash is silence.
    fn cut_links(&mut self, i: u32, kind: CrashKind) {
        let links: Vec<u32> = self.nodes[i as usize].links.iter().map(|x| x.1).collect();
        for l in links {
            let side = self.links[l as usize].side(i);
            self.close_end(l, side);
            let other = 1 - side;
            if kind == CrashKind::Process && self.links[l as usize].ends[other].open {
                // The kernel resets the connection: the peer hears at once, in-flight data is lost.
                let gen = self.links[l as usize].gen;
                let to = self.links[l as usize].ends[other].node;
                let at = self.now + self.delay();
                self.push(at, Kind::Down { link: l, gen, to });
            }
            self.maybe_free(l);
        }
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
    fn controller_plan(&mut self) {
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
        let dead = sn.ctrl.take()?;
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
        if self.nodes[c as usize].ctrl.is_some() {
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
        self.nodes[c as usize].ctrl = Some(ctrl);
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

    /// Cut `side_one` (partition side 1) from everyone else until `until`; `one_way` blocks only
    /// traffic from side 0 to side 1.
    pub fn partition(&mut self, side_one: &[u32], one_way: bool, until: Instant) {
        for n in &mut self.nodes {
            n.side = 0;
        }
        for &i in side_one {
            self.nodes[i as usize].side = 1;
        }
        self.cut = Some(Cut { forward: true, backward: !one_way, until });
    }

    /// Deliver `msg` to `to` as if `from` had sent it on the link between them, which must be up
    /// at both ends (for tests of what a node does with a message it should not get). Returns
    /// false, delivering nothing, when there is no such link.
    pub fn inject(&mut self, from: u32, to: u32, msg: &Message) -> bool {
        if from as usize >= self.nodes.len() || to as usize >= self.nodes.len() {
            return false;
        }
        let Some(l) = self.find_link(from, to) else { return false };
        let link = &self.links[l as usize];
        let to_end = 1 - link.side(from);
        if !link.ends[1 - to_end].up || !link.ends[to_end].open || !link.ends[to_end].up {
            return false;
        }
        let Ok(frame) = plush_core::frame::FramePool::default().encode(msg, self.cfg.max_frame) else { return false };
        let gen = link.gen;
        let at = self.fifo(l, from, to_end);
        self.push(at, Kind::Deliver { link: l, gen, to, frame });
        true
    }

    /// Hold all traffic between `a` and `b` until `until`.
    pub fn clog(&mut self, a: u32, b: u32, until: Instant) {
        self.clogs.push((a, b, until));
    }

    /// Make every connection attempt to or from `i` fail until `until`.
    pub fn refuse_connects(&mut self, i: u32, until: Instant) {
        self.refuse.push((i, until));
    }

    // ----- the event loop -------------------------------------------------------------------

    /// Process events up to and including time `until`; returns false if the heap ran dry.
    pub fn run_until(&mut self, until: Instant, mut stop: impl FnMut(&Sim) -> bool) -> bool {
        loop {
            let next = self.heap.peek_at();
            let plan = [self.ctrl_crash.crash_at, self.ctrl_crash.back_at.filter(|_| self.controller().is_none())]
                .into_iter()
                .flatten()
                .min()
                .filter(|&t| t <= until && next.is_none_or(|a| t <= a));
            if let Some(t) = plan {
                self.now = self.now.max(t);
                self.controller_plan();
                if stop(self) {
                    return true;
                }
                continue;
            }
            let Some(at) = next else { break };
            if at > until {
                self.now = until;
                return true;
            }
            let Some(ev) = self.heap.pop() else { break };
            self.now = ev.at;
            self.dispatch(ev.kind);
            if stop(self) {
                return true;
            }
        }
        self.now = self.now.max(until);
        false
    }

    fn dispatch(&mut self, kind: Kind) {
        let now = self.now;
        match kind {
            Kind::Timer { node, incarnation } => {
                let sn = &mut self.nodes[node as usize];
                if sn.incarnation != incarnation || sn.timer != Some(now) {
                    return; // stale
                }
                sn.timer = None;
                match (sn.node.as_mut(), sn.ctrl.as_deref_mut()) {
                    (Some(n), _) => n.handle_timeout(now),
                    (None, Some(c)) => c.handle_timeout(now),
                    _ => return,
                }
                self.events += 1;
                self.after(node);
            }
            Kind::PushVerified { node, incarnation, job } => {
                let sn = &mut self.nodes[node as usize];
                if sn.incarnation != incarnation {
                    return;
                }
                let Some(n) = sn.node.as_mut() else { return };
                self.events += 1;
                n.handle_process(now, ProcessEvent::Exit { job, status: ExitStatus::Exited(0) });
                self.after(node);
            }
            Kind::ProcExit { node, incarnation, job } => {
                let k = self.job_outputs;
                let sn = &mut self.nodes[node as usize];
                if sn.incarnation != incarnation {
                    return;
                }
                let Some(n) = sn.node.as_mut() else { return };
                self.events += 1;
                let line =
                    if k <= 1 { b"hello from plush\n".to_vec() } else { format!("output {}\n", node % k).into_bytes() };
                n.handle_process(now, ProcessEvent::Output { job, bytes: line, err: false });
                let fails = job == plush_core::control::MAINT_JOB && self.maintenance_fails.contains(&node);
                n.handle_process(now, ProcessEvent::Exit { job, status: ExitStatus::Exited(i32::from(fails)) });
                self.after(node);
            }
            Kind::Launched { by, host, ok } => {
                // As on a real host, a client cannot start where one still runs: its listen
                // address is taken (a controller relaunching a host it merely cannot see).
                let h = &self.nodes[host as usize];
                // A launcher dies with its controller: nothing starts for one that crashed.
                let orphan = Some(by) == self.ctrl_slot && self.nodes[by as usize].ctrl.is_none();
                let ok = ok && !h.killed && h.host_up && h.node.is_none() && !orphan;
                if ok {
                    self.launches += 1;
                    self.launch_idle(host);
                }
                self.events += 1;
                let sn = &mut self.nodes[by as usize];
                match (sn.node.as_mut(), sn.ctrl.as_deref_mut()) {
                    (Some(n), _) => n.handle_launched(now, id(host), if ok { Ok(()) } else { Err("the host is down") }),
                    (None, Some(c)) => {
                        c.handle_launched(now, id(host), if ok { Ok(()) } else { Err("the host is down") })
                    }
                    _ => return,
                }
                self.after(by);
            }
            Kind::Up { link, gen, to } => {
                let l = &self.links[link as usize];
                let side = l.side(to);
                if !l.live || l.gen != gen || !l.ends[side].open || !self.present(to) {
                    return;
                }
                self.links[link as usize].ends[side].up = true;
                self.nodes[to as usize].fds += 1;
                let peer = self.links[link as usize].ends[1 - side].node;
                // The peer restarted and connected again before the reset of its old connection
                // reached us: like a driver, drop the old connection now (its reset then finds
                // it closed), so that the node holds one connection per peer and its budget
                // counts it once.
                let stale: Vec<u32> = self.nodes[to as usize]
                    .links
                    .iter()
                    .filter(|&&(p, l)| p == peer && l != link)
                    .map(|&(_, l)| l)
                    .filter(|&l| {
                        let o = &self.links[l as usize];
                        let s = o.side(to);
                        o.live && o.ends[s].open && o.ends[s].up && !o.ends[1 - s].open
                    })
                    .collect();
                for l in stale {
                    let s = self.links[l as usize].side(to);
                    self.close_end(l, s);
                    self.maybe_free(l);
                }
                self.events += 1;
                self.m_link(to, peer, LinkEvent::Connected);
                self.after(to);
                // Once the node has had its say (it may refuse the link), check its budget.
                let fds = self.nodes[to as usize].fds;
                self.max_open = self.max_open.max(fds);
                if fds as usize > self.cfg.max_links {
                    self.violation(format!("node {to} holds {fds} links, over its budget of {}", self.cfg.max_links));
                }
            }
            Kind::ConnectFailed { to, peer, incarnation } => {
                if self.nodes[to as usize].incarnation != incarnation || !self.present(to) {
                    return;
                }
                if (peer as usize) < self.nodes.len()
                    && self.find_link(to, peer).is_some_and(|l| {
                        let link = &self.links[l as usize];
                        link.ends[link.side(to)].up
                    })
                {
                    // The peer connected to us while our attempt was failing (it was restarted
                    // meanwhile): the node holds one link per peer, that one is up, and a driver
                    // does not report the failed attempt over it.
                    return;
                }
                self.events += 1;
                self.m_link(to, peer, LinkEvent::ConnectFailed);
                self.after(to);
            }
            Kind::Down { link, gen, to } => {
                let l = &self.links[link as usize];
                let side = l.side(to);
                if !l.live || l.gen != gen || !l.ends[side].open {
                    return;
                }
                let was_up = l.ends[side].up;
                let peer = l.ends[1 - side].node;
                self.close_end(link, side);
                self.maybe_free(link);
                if !self.present(to) {
                    return;
                }
                if self.find_link(to, peer).is_some() {
                    // A newer connection to the same peer is open at this end (the peer was
                    // restarted and connected again before its old connection's reset came):
                    // the node holds one link per peer, the newer one, and a driver ignores the
                    // close of a connection it has replaced.
                    return;
                }
                self.events += 1;
                let ev = if was_up { LinkEvent::Closed } else { LinkEvent::ConnectFailed };
                self.m_link(to, peer, ev);
                self.after(to);
            }
            Kind::Deliver { link, gen, to, frame } => {
                let l = &self.links[link as usize];
                let side = l.side(to);
                if !l.live || l.gen != gen || !l.ends[side].open || !l.ends[side].up {
                    return;
                }
                let from = l.ends[1 - side].node;
                self.events += 1;
                self.frames += 1;
                self.fold(from, to, frame.payload());
                if !self.watch.is_empty() && (self.watch.contains(&from) || self.watch.contains(&to)) {
                    if let Ok(m) = plush_core::wire::Message::decode(frame.payload()) {
                        eprintln!("t={:.3}s {from} -> {to}: {m:?}", self.now.0 as f64 / 1e6);
                    }
                }
                if !self.present(to) {
                    return;
                }
                if self.job.started.is_some() {
                    self.note_results(from, to, frame.payload());
                }
                if self.recording {
                    if let Ok(m @ (Message::Control(_) | Message::Job(_))) = Message::decode(frame.payload()) {
                        self.messages.push((self.now, from, to, m));
                    }
                }
                if let Some(kinds) = self.kinds.as_mut() {
                    if let Ok(m) = Message::decode(frame.payload()) {
                        let name = format!("{m:?}");
                        let cut = name.find([' ', '(', '{']).map_or(name.len(), |i| i);
                        let inner = name[cut..].trim_start_matches(['(', ' ']);
                        let cut2 = inner.find([' ', '(', '{', ')']).map_or(inner.len(), |i| i);
                        *kinds.entry(format!("{}::{}", &name[..cut], &inner[..cut2])).or_default() += 1;
                    }
                }
                if self.m_frame(to, from, frame.payload()).is_err() {
                    // A driver closes a link that sent a bad frame.
                    self.violation(format!("node {to} refused a frame from {from}"));
                    self.close(to, from);
                }
                drop(frame);
                self.after(to);
            }
        }
    }

    /// Fold a delivery into the trace hash (a multiply-xorshift mix, eight bytes at a time).
    fn fold(&mut self, from: u32, to: u32, bytes: &[u8]) {
        fn eat(h: u64, w: u64) -> u64 {
            (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
        }
        let mut h = eat(self.trace, self.now.0);
        h = eat(h, (u64::from(from) << 32) | u64::from(to));
        h = eat(h, bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            h = eat(h, u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
        }
        let mut last = [0u8; 8];
        last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.trace = eat(h, u64::from_le_bytes(last));
    }

    /// Drain node `i`'s outputs, carry them out, check its safety, re-arm its timer.
    fn after(&mut self, i: u32) {
        while let Some(o) = self.m_poll(i) {
            match o {
                Output::Transmit { to, frame } => self.transmit(i, idx(to), frame),
                Output::Connect(peer) => self.connect(i, idx(peer)),
                Output::Close(peer) => {
                    if self.node(i).is_some_and(|n| n.parent() == Some(peer) || n.children().contains(&peer)) {
                        self.pinned_closes += 1;
                        self.violation(format!("node {i} closed its link to {peer}, its parent or child"));
                    }
                    self.close(i, idx(peer))
                }
                Output::Event(e) => self.on_event(i, e),
                Output::Spawn { job, .. } => {
                    let (lo, hi) = self.job_us;
                    let us = if hi > lo { self.procs.random_range(lo..=hi) } else { lo };
                    let incarnation = self.nodes[i as usize].incarnation;
                    self.push(self.now + Duration::from_micros(us), Kind::ProcExit { node: i, incarnation, job });
                }
                // Transfers move chunk counts, not bytes: storage is a counter (the node's
                // `chunks_stored`), a chunk sent from storage is an empty chunk, and checking
                // the digest takes a millisecond.
                Output::PushOpen { .. } | Output::PushWrite { .. } | Output::PushForget { .. } => {}
                Output::PushSend { to, job, index } => {
                    if let Some(frame) = plush_core::frame::chunk_frame(job, index, &[], 64) {
                        self.transmit(i, idx(to), frame);
                    }
                }
                Output::PushDone { job } => {
                    let incarnation = self.nodes[i as usize].incarnation;
                    self.push(self.now + Duration::from_millis(1), Kind::PushVerified { node: i, incarnation, job });
                }
                // The simulated process ignores signals: the node has recorded its result.
                Output::Signal { job } => self.signals.push((self.now, i, job)),
                // Simulated processes write all at once: nothing to pause.
                Output::ReadOutput { .. } => {}
                Output::Launch { host } => {
                    let h = idx(host);
                    let ok = (h as usize) < self.nodes.len() && self.nodes[h as usize].ctrl.is_none();
                    // A launcher (ssh) takes a while: a round trip and a process start.
                    let at = self.now + self.delay() + self.delay() + Duration::from_millis(100);
                    self.push(at, Kind::Launched { by: i, host: h.min(self.nodes.len() as u32 - 1), ok });
                }
                Output::Exit => {
                    self.exits += 1;
                    self.crash(i, CrashKind::Process);
                    self.nodes[i as usize].killed = false;
                    return;
                }
                Output::Report(r) => self.on_report(*r),
            }
        }
        self.check_node(i);
        let t = self.m_poll_timeout(i);
        let sn = &mut self.nodes[i as usize];
        if let Some(t) = t {
            if sn.timer.is_none_or(|cur| t < cur) {
                let t = t.max(self.now);
                sn.timer = Some(t);
                let incarnation = sn.incarnation;
                self.push(t, Kind::Timer { node: i, incarnation });
            }
        }
    }

    fn transmit(&mut self, from: u32, to: u32, frame: Frame) {
        if to as usize >= self.nodes.len() {
            return;
        }
        let Some(l) = self.find_link(from, to) else { return };
        let to_end = 1 - self.links[l as usize].side(from);
        if !self.links[l as usize].ends[1 - to_end].open {
            return;
        }
        let at = self.fifo(l, from, to_end);
        let gen = self.links[l as usize].gen;
        self.push(at, Kind::Deliver { link: l, gen, to, frame });
    }

    fn refused(&self, i: u32) -> bool {
        self.refuse.iter().any(|&(x, t)| x == i && t > self.now)
    }

    fn connect(&mut self, from: u32, to: u32) {
        let incarnation = self.nodes[from as usize].incarnation;
        if to as usize >= self.nodes.len() {
            let at = self.now + self.delay();
            self.push(at, Kind::ConnectFailed { to: from, peer: to, incarnation });
            return;
        }
        if let Some(l) = self.find_link(from, to) {
            let side = self.links[l as usize].side(from);
            let end = self.links[l as usize].ends[side];
            if end.open && end.up {
                // Already up (the peer opened it): report it again at once.
                let gen = self.links[l as usize].gen;
                self.push(self.now, Kind::Up { link: l, gen, to: from });
            }
            // Otherwise its `Up` is on the way.
            if end.open {
                return;
            }
        }
        let target = &self.nodes[to as usize];
        let there = target.node.is_some() || target.ctrl.is_some();
        let host_up = target.host_up;
        let forward_block = self.blocked_until(from, to);
        let backward_block = self.blocked_until(to, from);
        let block = forward_block.max(backward_block);
        if self.refused(from) || self.refused(to) {
            let at = self.now + self.delay();
            self.push(at, Kind::ConnectFailed { to: from, peer: to, incarnation });
            return;
        }
        if !host_up || block > self.now + self.connect_timeout {
            let at = self.now + self.connect_timeout;
            self.push(at, Kind::ConnectFailed { to: from, peer: to, incarnation });
            return;
        }
        if !there {
            // The host's kernel refuses: a round trip.
            let at = self.now + self.delay() + self.delay();
            self.push(at, Kind::ConnectFailed { to: from, peer: to, incarnation });
            return;
        }
        let l = self.new_link(from, to);
        let gen = self.links[l as usize].gen;
        // The hellos: ours reaches the peer, which reports the link up; its hello comes back.
        let hello = encode_hello(&Hello::new(id(from), Role::Client, mix(self.master_seed, self.seq)));
        self.fold(from, to, &hello[PREFIX..]);
        let t1 = self.fifo(l, from, 1);
        self.push(t1, Kind::Up { link: l, gen, to });
        let t2 = t1.max(self.links[l as usize].ends[0].next) + self.delay();
        self.links[l as usize].ends[0].next = t2;
        self.push(t2, Kind::Up { link: l, gen, to: from });
    }

    fn close(&mut self, from: u32, to: u32) {
        if to as usize >= self.nodes.len() {
            return;
        }
        let Some(l) = self.find_link(from, to) else { return };
        let side = self.links[l as usize].side(from);
        self.close_end(l, side);
        let other = 1 - side;
        if self.links[l as usize].ends[other].open {
            let at = self.fifo(l, from, other);
            let gen = self.links[l as usize].gen;
            self.push(at, Kind::Down { link: l, gen, to });
        }
        self.maybe_free(l);
    }

    /// Record a `Results` frame of the watched job: who received whose result.
    fn note_results(&mut self, _from: u32, to: u32, payload: &[u8]) {
        let Ok(Message::Job(JobMsg::Results { job, groups, .. })) = Message::decode(payload) else { return };
        if job != self.job.id {
            return;
        }
        if Some(to) == self.ctrl_slot {
            self.job.ctrl_messages += 1;
            return;
        }
        for g in groups.iter() {
            for y in g.nodes.iter() {
                let y = idx(y) as usize;
                if y < self.job.receivers.len() && y != to as usize && !self.job.receivers[y].contains(&to) {
                    self.job.receivers[y].push(to);
                }
            }
        }
    }

    fn on_report(&mut self, r: CtrlReport) {
        if matches!(r, CtrlReport::Result { .. }) {
            self.results.push((self.now, r.clone()));
        }
        match r {
            CtrlReport::Result { job, nodes, output, .. } if job == self.job.id => {
                let bit = if self.ctrl_crash.gen == 0 { 1 } else { 2 };
                for y in nodes.iter() {
                    let y = idx(y) as usize;
                    if y < self.job.reported.len() {
                        self.job.reported[y] = self.job.reported[y].saturating_add(1);
                    }
                    if self.ctrl_crash.crashed_at.is_some() || self.ctrl_crash.crash_at.is_some() {
                        if self.ctrl_crash.shown_by.len() < self.job.reported.len() {
                            self.ctrl_crash.shown_by.resize(self.job.reported.len(), 0);
                        }
                        if let Some(b) = self.ctrl_crash.shown_by.get_mut(y) {
                            *b |= bit;
                        }
                    }
                }
                if !self.job.outputs.iter().any(|o| o.as_slice() == output.as_slice()) {
                    self.job.outputs.push(output.as_ref().clone());
                }
                self.job.last_result = Some(self.now);
            }
            CtrlReport::Result { .. } => {}
            CtrlReport::Host { state, .. } => {
                if state == HostState::Failed {
                    self.host_failures += 1;
                }
            }
            other => {
                if matches!(other, CtrlReport::RootChanged(_)) && self.ctrl_crash.gen > 0 {
                    self.ctrl_crash.attached_at.get_or_insert(self.now);
                }
                self.ctrl_log.push((self.now, other))
            }
        }
    }

    fn on_event(&mut self, i: u32, e: Event) {
        if self.recording {
            self.node_events.push((self.now, i, e.clone()));
        }
        match e {
            Event::ParentChanged(Some(_)) | Event::BecameRoot => {
                let sn = &mut self.nodes[i as usize];
                if !sn.joined_once {
                    sn.joined_once = true;
                    self.joined_once += 1;
                }
                if matches!(e, Event::ParentChanged(Some(_))) {
                    self.check_loop(i);
                }
            }
            Event::BroadcastReply { id, node } => self.replies.push((id, idx(node), self.now)),
            Event::Repaired { via_ransub } => {
                self.repair_times.push(self.now);
                if via_ransub {
                    self.repairs.0 += 1;
                } else {
                    self.repairs.1 += 1;
                }
            }
            Event::Population { population, epoch } => {
                self.populations.0 += 1;
                self.populations.1 = population;
                if self.counts.len() < MAX_COUNTS {
                    self.counts.push((self.now, i, epoch, population));
                }
            }
            _ => {}
        }
    }

    // ----- checks ---------------------------------------------------------------------------

    fn violation(&mut self, text: String) {
        self.violations += 1;
        if self.violation_texts.len() < MAX_VIOLATION_TEXTS {
            self.violation_texts.push(format!("t={}ms {text}", self.now.as_millis()));
        }
    }

    fn check_node(&mut self, i: u32) {
        let Some(n) = self.node(i) else { return };
        let me = id(i);
        let max = self.cfg.max_children;
        let mut bad = Vec::new();
        if n.children().len() > max {
            bad.push(format!("node {i} has {} children (max {max})", n.children().len()));
        }
        if n.parent() == Some(me) || n.children().contains(&me) {
            bad.push(format!("node {i} links to itself"));
        }
        if let Some(p) = n.parent() {
            if n.children().contains(&p) {
                bad.push(format!("node {i} has its parent {p} as a child"));
            }
        }
        for b in bad {
            self.violation(b);
        }
    }

    /// A new parent pointer at `i`: walk up; coming back to `i` is a loop.
    fn check_loop(&mut self, i: u32) {
        let mut cur = i;
        for _ in 0..=self.nodes.len() {
            let Some(p) = self.node(cur).and_then(|n| n.parent()) else { return };
            cur = idx(p);
            if cur == i {
                self.violation(format!("loop through node {i}"));
                return;
            }
            if cur as usize >= self.nodes.len() {
                return;
            }
        }
    }

    /// The shape of the forest of live nodes (O(nodes)).
    pub fn shape(&self) -> Shape {
        let n = self.nodes.len();
        let mut s = Shape::default();
        // depth[i]: u32::MAX unknown, u32::MAX-1 in progress, u32::MAX-2 dead end / loop.
        const UNKNOWN: u32 = u32::MAX;
        const VISITING: u32 = u32::MAX - 1;
        const BROKEN: u32 = u32::MAX - 2;
        let mut depth = vec![UNKNOWN; n];
        let mut top = vec![u32::MAX; n];
        let mut stack = Vec::new();
        let mut roots = Vec::new();
        for i in 0..n as u32 {
            let Some(node) = self.node(i) else { continue };
            s.max_children = s.max_children.max(node.children().len() as u32);
            if node.is_root() {
                s.roots += 1;
                roots.push(i);
            }
            for c in node.children() {
                let ci = idx(*c);
                if self.node(ci).and_then(|cn| cn.parent()) != Some(id(i)) {
                    s.disagreements += 1;
                }
            }
            if let Some(p) = node.parent() {
                let pi = idx(p);
                if !self.node(pi).is_some_and(|pn| pn.children().contains(&id(i))) {
                    s.disagreements += 1;
                }
            }
        }
        for i in 0..n as u32 {
            if self.node(i).is_none() || depth[i as usize] != UNKNOWN {
                continue;
            }
            // Walk up until a known depth, a root, a dead end or a loop.
            stack.clear();
            let mut cur = i;
            let (base, base_top) = loop {
                let d = depth[cur as usize];
                if d == VISITING {
                    s.loops += 1;
                    break (BROKEN, u32::MAX);
                }
                if d != UNKNOWN {
                    break (d, top[cur as usize]);
                }
                let Some(node) = self.node(cur) else { break (BROKEN, u32::MAX) };
                depth[cur as usize] = VISITING;
                stack.push(cur);
                match node.parent() {
                    None if node.is_root() => {
                        stack.pop();
                        depth[cur as usize] = 0;
                        top[cur as usize] = cur;
                        break (0, cur);
                    }
                    None => break (BROKEN, u32::MAX),
                    Some(p) => {
                        let pi = idx(p);
                        if pi as usize >= n {
                            break (BROKEN, u32::MAX);
                        }
                        cur = pi;
                    }
                }
            };
            let mut d = base;
            while let Some(x) = stack.pop() {
                if d != BROKEN {
                    d += 1;
                }
                depth[x as usize] = d;
                top[x as usize] = base_top;
            }
        }
        // The main tree: the root with most members.
        let mut size = vec![0u32; n];
        for i in 0..n {
            if self.nodes[i].node.is_some() && top[i] != u32::MAX {
                size[top[i] as usize] += 1;
            }
        }
        let main = roots.iter().copied().max_by_key(|&r| (size[r as usize], std::cmp::Reverse(r)));
        for i in 0..n {
            if self.nodes[i].node.is_none() {
                continue;
            }
            match main {
                Some(r) if top[i] == r => s.depth = s.depth.max(depth[i]),
                _ => s.orphans += 1,
            }
        }
        s
    }

    /// Whether the live nodes form one healthy tree.
    pub fn converged(&self) -> bool {
        // Cheap pass first: exactly one root and everyone joined.
        let mut roots = 0;
        for n in self.nodes.iter().filter_map(|n| n.node.as_ref()) {
            if n.state() != TreeState::Joined {
                return false;
            }
            if n.parent().is_none() {
                roots += 1;
                if roots > 1 {
                    return false;
                }
            }
        }
        let s = self.shape();
        s.roots == 1
            && s.orphans == 0
            && s.loops == 0
            && s.disagreements == 0
            && self.nodes.iter().all(|n| n.node.as_ref().is_none_or(|x| x.state() == TreeState::Joined))
    }

    /// The live root with the most members (the lowest id on a tie).
    pub fn main_root(&self) -> Option<u32> {
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..self.len() {
            if let Some(r) = self.node(i).and_then(|n| if n.state() == TreeState::Joined { n.root() } else { None }) {
                *counts.entry(idx(r)).or_insert(0u32) += 1;
            }
        }
        counts
            .into_iter()
            .filter(|(r, _)| self.node(*r).is_some_and(|n| n.is_root()))
            .max_by_key(|(r, c)| (*c, std::cmp::Reverse(*r)))
            .map(|(r, _)| r)
    }

    /// Bytes held by the simulator's own structures, by part (not counting the nodes' heaps).
    pub fn own_bytes(&self) -> Vec<(&'static str, usize)> {
        use std::mem::size_of;
        let buckets: usize = self.heap.buckets.iter().map(|b| b.capacity() * size_of::<Ev>()).sum::<usize>()
            + self.heap.buckets.capacity() * size_of::<BinaryHeap<Ev>>()
            + self.heap.far.capacity() * size_of::<Ev>();
        vec![
            ("node slots", self.nodes.capacity() * size_of::<SimNode>()),
            ("node link lists", self.nodes.iter().map(|n| n.links.capacity() * 8).sum()),
            ("links", self.links.capacity() * size_of::<Link>()),
            ("calendar", buckets),
        ]
    }

    /// A counter summed over every node that ever ran (crashed incarnations included).
    pub fn total(&self, f: impl Fn(&plush_core::Stats) -> u64) -> u64 {
        f(&self.dead_stats) + self.nodes.iter().filter_map(|n| n.node.as_ref()).map(|n| f(n.stats())).sum::<u64>()
    }

    /// Record the RanSub views of one random joined non-root node.
    pub fn sample_views(&self, uni: &mut Uniformity, rng: &mut Pcg64) {
        let n = self.len();
        let candidates: Vec<u32> = (0..n).filter(|&i| self.node(i).is_some_and(|x| x.parent().is_some())).collect();
        if candidates.is_empty() {
            return;
        }
        let r = candidates[rng.random_range(0..candidates.len())];
        let Some(node) = self.node(r) else { return };
        let live: Vec<bool> = (0..n).map(|i| self.alive(i)).collect();
        // inside[x]: r is x or one of its ancestors.
        let mut inside = vec![false; n as usize];
        for x in 0..n {
            let mut cur = x;
            for _ in 0..=n {
                if cur == r {
                    inside[x as usize] = true;
                    break;
                }
                match self.node(cur).and_then(|c| c.parent()) {
                    Some(p) => cur = idx(p),
                    None => break,
                }
            }
        }
        let all: Vec<u32> = node.ransub_all().iter().map(|e| idx(e.id)).collect();
        let nd: Vec<u32> = node.ransub_nondesc().iter().map(|e| idx(e.id)).collect();
        uni.record(&all, &nd, &live, &inside);
    }
}

pub(crate) fn rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: u64 = s.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Play `sc`: build, broadcast, faults, repair, broadcast. See [`Scenario`].
pub fn play(sc: &Scenario) -> Report {
    play_sim(sc).0
}

/// [`play`], also returning the simulator as it ended, for inspection.
pub fn play_sim(sc: &Scenario) -> (Report, Sim) {
    let wall = std::time::Instant::now();
    let rss0 = rss_bytes();
    let n = sc.nodes.max(1);
    let mut sim = Sim::new(n, sc);
    let mut rng = Pcg64::seed_from_u64(mix(sc.seed, 2));
    let tick = Duration::from_millis(250);
    let limit = Duration::from_micros((sc.phase_limit_s * 1e6) as u64);
    let mut report = Report { nodes: n, seed: sc.seed, degree: sc.config.max_children as u32, ..Report::default() };

    let built = if sc.job {
        build_invited(&mut sim, n, sc.build_limit(), tick)
    } else {
        build_paced(&mut sim, sc, &mut rng, tick)
    };
    report.build.sim_ms = sim.now().0 as f64 / 1000.0;
    report.tree = sim.shape();
    report.memory.bytes_per_node = rss_bytes().saturating_sub(rss0) / u64::from(n);

    // Broadcast before the faults.
    report.broadcast = broadcast(&mut sim, 1, limit);

    // Steady phase: sample RanSub views, one random receiver per epoch.
    let mut uni = Uniformity::new(n as usize);
    for _ in 0..sc.steady_epochs {
        let t = sim.now() + sc.config.ransub_epoch;
        sim.run_until(t, |_| false);
        sim.sample_views(&mut uni, &mut rng);
    }
    (report.ransub.uniformity_chi2_p, report.ransub.nondesc_chi2_p) = uni.p_values();
    report.ransub.samples = uni.samples;

    if sc.job && sc.fault_during_job {
        start_job(&mut sim, sc);
        // Strike when about half the processes have finished and results are on their way.
        let mid = sim.now() + Duration::from_micros(((sc.job_min_s + sc.job_max_s) / 2.0 * 1e6) as u64);
        sim.run_until(mid, |_| false);
    }

    // Faults.
    let fault_at = sim.now();
    let mut victims: Vec<u32> = Vec::new();
    let root = sim.main_root();
    let kills = ((sc.kill * f64::from(n)).round() as u32).min(n.saturating_sub(1));
    if sc.kill_root {
        victims.extend(root);
    }
    let mut candidates: Vec<u32> = (0..n).filter(|&i| sim.alive(i) && Some(i) != root).collect();
    while victims.len() < kills as usize && !candidates.is_empty() {
        let k = rng.random_range(0..candidates.len());
        victims.push(candidates.swap_remove(k));
    }
    let joins_before = (sim.total(|s| s.root_joins), sim.total(|s| s.root_verifies));
    let repairs_before = sim.repairs;
    let spread = Duration::from_micros((sc.kill_spread_s.max(0.0) * 1e6) as u64);
    if spread > Duration::ZERO {
        // The root first, then by id: the order in which failover picks new roots, so that
        // each new root is among the next to die (the worst order for the repair).
        let first = usize::from(sc.kill_root && root.is_some());
        victims[first..].sort_unstable();
    }
    let last = victims.len().saturating_sub(1).max(1) as u32;
    for (i, &v) in victims.iter().enumerate() {
        if i > 0 && spread > Duration::ZERO {
            sim.run_until(fault_at + spread * i as u32 / last, |_| false);
        }
        sim.crash(v, sc.crash);
    }
    report.recovery.killed = victims.len() as u32;
    report.recovery.fault_at_ms = fault_at.0 as f64 / 1000.0;
    let mut heal_at = fault_at;
    if let Some(frac) = sc.partition {
        let mut live: Vec<u32> = (0..n).filter(|&i| sim.alive(i)).collect();
        let k = ((frac * live.len() as f64).round() as usize).min(live.len());
        let mut side = Vec::with_capacity(k);
        for _ in 0..k {
            let j = rng.random_range(0..live.len());
            side.push(live.swap_remove(j));
        }
        heal_at = fault_at + Duration::from_micros((sc.heal_after_s * 1e6) as u64);
        sim.partition(&side, sc.one_way, heal_at);
        report.recovery.partitioned = side.len() as u32;
    }
    let window_end = fault_at + Duration::from_micros((sc.heal_after_s * 1e6) as u64);
    let live: Vec<u32> = (0..n).filter(|&i| sim.alive(i)).collect();
    if !live.is_empty() {
        for _ in 0..sc.clogs {
            let a = live[rng.random_range(0..live.len())];
            // Clog a tree link when there is one: that is where it hurts.
            let b = match sim.node(a).and_then(|x| x.parent()) {
                Some(p) => idx(p),
                None => live[rng.random_range(0..live.len())],
            };
            sim.clog(a, b, window_end);
        }
        for _ in 0..sc.refuse {
            let a = live[rng.random_range(0..live.len())];
            sim.refuse_connects(a, window_end);
        }
        if sc.clogs > 0 || sc.refuse > 0 {
            heal_at = heal_at.max(window_end);
        }
    }
    let mut restart_at = None;
    if let Some(after) = sc.restart_after_s {
        if !victims.is_empty() {
            let at = fault_at + Duration::from_micros((after * 1e6) as u64);
            restart_at = Some(at);
            heal_at = heal_at.max(at);
        }
    }
    let deadline = heal_at.max(fault_at) + sc.repair_limit();
    let mut recovered = false;
    let never_back = sc.job && sc.controller_crash_at_s.is_some() && sc.controller_back_after_s.is_none();
    while sim.now() < deadline {
        let target = sim.now() + tick;
        sim.run_until(target, |_| false);
        if restart_at.is_some_and(|at| sim.now() >= at) {
            restart_at = None;
            let live: Vec<u32> = (0..n).filter(|&i| sim.alive(i)).collect();
            for &v in &victims {
                let boot =
                    (0..3).filter(|_| !live.is_empty()).map(|_| id(live[rng.random_range(0..live.len())])).collect();
                sim.restart(v, boot);
            }
            report.recovery.restarted = victims.len() as u32;
        }
        if sim.now() >= heal_at && restart_at.is_none() && sim.converged() {
            recovered = true;
            break;
        }
        if never_back && sim.live_count() == 0 {
            // The controller is gone for good and its linger ran out during the repair: the
            // tree ended itself, as it must (`wait_gone` checks that it did so in time).
            recovered = true;
            break;
        }
    }
    report.recovery.sim_ms = sim.now().since(fault_at).as_micros() as f64 / 1000.0;
    // Where RanSub stood at the repair: the root's epoch, so that its first count of a later
    // epoch (one distributed over the repaired tree) can be found.
    let repaired =
        if recovered { sim.main_root().and_then(|r| Some((sim.now(), r, sim.node(r)?.ransub_epoch()))) } else { None };
    let shape = sim.shape();
    report.recovery.roots = shape.roots;
    report.recovery.orphans = shape.orphans;
    report.recovery.loops = shape.loops;
    report.recovery.max_children = shape.max_children;
    report.recovery.depth = shape.depth;
    report.recovery.root_joins = sim.total(|s| s.root_joins) - joins_before.0;
    report.recovery.root_verifies = sim.total(|s| s.root_verifies) - joins_before.1;
    report.recovery.via_ransub = sim.repairs.0 - repairs_before.0;
    report.recovery.via_root = sim.repairs.1 - repairs_before.1;

    if sc.job {
        if !sc.fault_during_job {
            start_job(&mut sim, sc);
        }
        if sc.controller_crash_at_s.is_some() && sc.controller_back_after_s.is_none() {
            // Nobody collects the results: the tree must end by itself.
            report.controller = Some(wait_gone(&mut sim, sc));
            report.job = Some(job_report(&sim, n));
        } else {
            report.job = Some(wait_job(&mut sim, n, limit));
            report.controller = sc.controller_crash_at_s.map(|_| controller_report(&sim, sc, n));
        }
    }

    // Broadcast after.
    report.broadcast_after = broadcast(&mut sim, 2, limit);
    // The root's count of the repaired tree: a count of an epoch started after the repair
    // (distributed over the repaired tree), within two epochs of the repair. The first such
    // count that is every live node, else the last one in the window.
    let live = sim.live_count();
    report.ransub.live = live;
    if let Some((at, root, epoch)) = repaired {
        let until = at + sc.config.ransub_epoch * 2;
        let counted = |s: &Sim| {
            let mut window = s.counts.iter().filter(|c| c.0 >= at && c.0 <= until && c.1 == root && c.2 > epoch);
            let mut last = None;
            for c in &mut window {
                if c.3 == live {
                    return (Some(*c), true);
                }
                last = Some(*c);
            }
            (last, false)
        };
        if sim.now() < until && !counted(&sim).1 {
            sim.run_until(until, |s| counted(s).1);
        }
        if let (Some((t, _, _, population)), _) = counted(&sim) {
            report.ransub.population_repaired = population;
            report.ransub.population_repaired_ms = t.since(at).as_micros() as f64 / 1000.0;
        }
    }
    // Then let the root count the tree as it ends: an epoch started from now on (at most two).
    if let Some(root) = sim.main_root() {
        let (at, epoch) = (sim.now(), sim.node(root).map_or(0, |n| n.ransub_epoch()));
        let until = at + sc.config.ransub_epoch * 2;
        sim.run_until(until, |s| s.counts.last().is_some_and(|c| c.0 >= at && c.1 == root && c.2 > epoch));
    }

    report.ransub.epochs = sim.populations.0;
    report.ransub.population_last = sim.populations.1;
    report.conns.budget = sc.config.max_links.min(u32::MAX as usize) as u32;
    report.conns.max_open = sim.max_open;
    report.conns.evictions = sim.total(|s| s.evictions);
    report.conns.refused = sim.total(|s| s.links_refused);
    report.conns.pinned_evictions = sim.pinned_closes;
    report.converged = built && recovered && sim.violations == 0;
    report.invariant_violations = sim.violations;
    report.violations = sim.violation_texts.clone();
    report.events = sim.events;
    report.frames = sim.frames;
    report.trace_hash = format!("{:016x}", sim.trace_hash());
    report.sim_end_ms = sim.now().0 as f64 / 1000.0;
    if let Some(kinds) = &sim.kinds {
        for (k, v) in kinds {
            eprintln!("{v:>12} {k}");
        }
    }
    report.wall_ms = wall.elapsed().as_millis() as u64;
    report.events_per_s = sim.events as f64 / wall.elapsed().as_secs_f64().max(1e-9);
    (report, sim)
}

/// Build: node 0 founds the tree; the others join paced like invitations. Returns whether every
/// node joined one tree.
fn build_paced(sim: &mut Sim, sc: &Scenario, rng: &mut Pcg64, tick: Duration) -> bool {
    let n = sc.nodes.max(1);
    sim.start(0, Vec::new());
    let mut next = 1u32;
    let deadline = sim.now() + sc.build_limit();
    loop {
        while next < n && (next - sim.joined_once) < sc.max_outstanding_joins as u32 {
            let mut boot = vec![id(0)];
            for _ in 0..2 {
                let j = rng.random_range(0..next);
                if sim.nodes[j as usize].joined_once && !boot.contains(&id(j)) {
                    boot.push(id(j));
                }
            }
            sim.start(next, boot);
            next += 1;
        }
        if next >= n && sim.joined_once >= n && sim.converged() {
            return true;
        }
        if sim.now() >= deadline {
            return false;
        }
        let target = sim.now() + tick;
        let all_started = next >= n;
        sim.run_until(target, |s| !all_started && s.joined_once + sc.max_outstanding_joins as u32 > next);
    }
}

/// Build through the control plane: a controller (its own slot) is given every host; no client
/// runs yet, so each invitation ends in a launch, then the client joins through the root.
fn build_invited(sim: &mut Sim, n: u32, build_limit: Duration, tick: Duration) -> bool {
    sim.add_controller();
    let hosts: Vec<NodeId> = (0..n).map(id).collect();
    sim.ctrl_do(|c, now| c.add_hosts(now, &hosts));
    let deadline = sim.now() + build_limit;
    while sim.now() < deadline {
        let target = sim.now() + tick;
        sim.run_until(target, |_| false);
        let joined = sim.controller().map_or(0, |c| c.host_counts()[HostState::Joined as usize]);
        if joined as u32 >= n && sim.joined_once >= n && sim.converged() {
            return true;
        }
    }
    false
}

/// The job every node runs in `--job`.
pub const SIM_JOB: u64 = 1;

fn start_job(sim: &mut Sim, sc: &Scenario) {
    use plush_core::wire::{JobKind, List, RunSpec, Target};
    sim.watch_job(SIM_JOB);
    let spec = RunSpec {
        job: SIM_JOB,
        kind: JobKind::Command,
        target: Target::All,
        argv: List(vec!["echo".into(), "hello from plush".into()]),
        env: List::default(),
        cwd: None,
        timeout_ms: 0,
        stream: false,
        push: None,
        max_output: 0,
    };
    let _ = sim.ctrl_do(|c, now| c.run(now, spec));
    if let Some(at) = sc.controller_crash_at_s {
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
        sim.plan_controller_crash(sim.now() + secs(at), sc.controller_back_after_s.map(secs));
    }
}

/// Never back: run until every node is gone, or `linger` plus one RanSub epoch after the crash.
fn wait_gone(sim: &mut Sim, sc: &Scenario) -> crate::scenario::ControllerReport {
    if let Some(at) = sim.ctrl_crash.crash_at {
        sim.run_until(at, |_| false);
    }
    let crashed = sim.ctrl_crash.crashed_at.unwrap_or(sim.now());
    let bound = crashed + sc.config.linger + sc.config.ransub_epoch;
    let mut gone_at = None;
    while sim.now() < bound && gone_at.is_none() {
        let target = (sim.now() + Duration::from_millis(250)).min(bound);
        sim.run_until(target, |s| s.live_count() == 0);
        if sim.live_count() == 0 {
            gone_at = Some(sim.now());
        }
    }
    let mut r = controller_report(sim, sc, sc.nodes.max(1));
    r.gone_after_ms = gone_at.map(|t| t.since(crashed).as_micros() as f64 / 1000.0);
    r.left = sim.live_count();
    r
}

/// The controller's crash and return, from the simulator's record.
fn controller_report(sim: &Sim, sc: &Scenario, n: u32) -> crate::scenario::ControllerReport {
    let c = &sim.ctrl_crash;
    let ms = |t: Instant| t.0 as f64 / 1000.0;
    let j = job_report(sim, n);
    crate::scenario::ControllerReport {
        crashed_at_ms: c.crashed_at.map_or(0.0, ms),
        attached_at_ms: c.attached_at.map(ms),
        results_before: c.shown_by.iter().filter(|&&b| b & 1 != 0).count() as u32,
        results_after: c.shown_by.iter().filter(|&&b| b & 2 != 0).count() as u32,
        shown_twice: j.duplicates,
        missing: j.lost,
        linger_ms: sc.config.linger.as_micros() as f64 / 1000.0,
        never_back: sc.controller_back_after_s.is_none(),
        gone_after_ms: None,
        left: 0,
    }
}

/// Wait until every live node's result reached the controller (or `limit`), and account.
fn wait_job(sim: &mut Sim, n: u32, limit: Duration) -> crate::scenario::JobReport {
    let deadline = sim.now() + limit;
    // Every live node's result, and every dead node's result that a live node received (it
    // is in the tree, on its way up: a repair may hold it a while, and it counts as lost in
    // `job_report` only if it never arrives).
    let all_in = |s: &Sim| {
        (0..n).all(|i| {
            let held_alive = || s.job.receivers.get(i as usize).is_some_and(|v| v.iter().any(|&x| x < n && s.alive(x)));
            s.job.reported.get(i as usize).is_some_and(|&r| r > 0) || (!s.alive(i) && !held_alive())
        })
    };
    // A controller crash planned or under way (issue 19): wait for the new controller too, and
    // until it has been attached for a few seconds, so that what the tree re-sends it arrives
    // (and would be counted if shown twice).
    let c = &sim.ctrl_crash;
    let resumed = |s: &Sim| {
        let c = &s.ctrl_crash;
        c.crash_at.is_none()
            && c.back_at.is_none()
            && (c.crashed_at.is_none() || c.attached_at.is_some_and(|t| s.now() >= t + Duration::from_secs(3)))
    };
    let planned = c.crash_at.is_some() || c.crashed_at.is_some();
    while sim.now() < deadline && !(all_in(sim) && (!planned || resumed(sim))) {
        let target = (sim.now() + Duration::from_millis(50)).min(deadline);
        sim.run_until(target, |_| false);
    }
    job_report(sim, n)
}

/// The job's figures, from the simulator's record.
pub fn job_report(sim: &Sim, n: u32) -> crate::scenario::JobReport {
    let j = &sim.job;
    let mut r = crate::scenario::JobReport::default();
    for i in 0..n {
        let reported = j.reported.get(i as usize).copied().unwrap_or(0);
        if sim.alive(i) {
            r.expected += 1;
        }
        if reported > 0 {
            r.results += 1;
        }
        r.duplicates += u32::from(reported.saturating_sub(1));
        if reported == 0 {
            let held_alive = j.receivers.get(i as usize).is_some_and(|v| v.iter().any(|&x| x < n && sim.alive(x)));
            // A host whose process restarted owes nothing unless its result survived it: its
            // job died with the process, and it never runs a job twice; when it rejoins after
            // the tree forgot the job, nothing reaches it, and the real controller names it
            // lost (`plush_mio::Cluster`'s lost grace).
            if (sim.alive(i) && !sim.restarted(i)) || held_alive {
                r.lost += 1;
                if sim.alive(i) && r.missing.len() < 10 {
                    r.missing.push(i);
                }
            }
        }
    }
    if std::env::var_os("PLUSH_SIM_WHY").is_some() {
        // Debugging (`PLUSH_SIM_WHY=1`): which nodes still hold the first missing results.
        for &m in r.missing.iter().take(3) {
            let holders: Vec<String> = (0..n)
                .filter_map(|x| {
                    let node = sim.node(x)?;
                    let (held, unsent) = node.holds_result(j.id, &id(m));
                    (held || unsent)
                        .then(|| format!("{x} (unsent {unsent}, parent {:?}, root {})", node.parent(), node.is_root()))
                })
                .collect();
            eprintln!("missing {m}: held by {holders:?}");
        }
    }
    r.merged_messages_at_controller = j.ctrl_messages;
    r.distinct_outputs = j.outputs.len() as u32;
    if let (Some(a), Some(b)) = (j.started, j.last_result) {
        r.sim_ms = b.since(a).as_micros() as f64 / 1000.0;
    }
    r.hosts_failed = sim.host_failures;
    r.root_changes = sim.controller().map_or(0, |c| c.stats().root_changes);
    r.unlisted = sim.controller().map_or(0, |c| c.stats().unlisted);
    r
}

/// Broadcast from the main root and wait for every live node's reply (or `limit`).
fn broadcast(sim: &mut Sim, bid: u64, limit: Duration) -> BroadcastReport {
    let expected = sim.live_count();
    let mut r = BroadcastReport { expected, ..BroadcastReport::default() };
    let Some(root) = sim.main_root() else { return r };
    let start = sim.now();
    let first = sim.replies.len();
    if !sim.command(root, Command::Broadcast { id: bid }) {
        return r;
    }
    let mut seen = vec![false; sim.len() as usize];
    let mut count = 0u32;
    let mut scanned = first;
    let deadline = start + limit.min(Duration::from_secs(60));
    while sim.now() < deadline && count < expected {
        let target = (sim.now() + Duration::from_millis(50)).min(deadline);
        sim.run_until(target, |s| s.replies.len() - first >= expected as usize);
        let (mut sum, mut max) = (r.avg_sim_ms * f64::from(count), r.max_sim_ms);
        for &(b, node, at) in &sim.replies[scanned..] {
            if b == bid && (node as usize) < seen.len() && !seen[node as usize] && sim.alive(node) {
                seen[node as usize] = true;
                count += 1;
                let ms = at.since(start).as_micros() as f64 / 1000.0;
                sum += ms;
                max = max.max(ms);
            }
        }
        scanned = sim.replies.len();
        r.avg_sim_ms = if count > 0 { sum / f64::from(count) } else { 0.0 };
        r.max_sim_ms = max;
    }
    r.replies = count;
    r.missing = (0..sim.len()).filter(|&i| sim.alive(i) && !seen[i as usize]).take(10).collect();
    sim.replies.truncate(first);
    r
}
