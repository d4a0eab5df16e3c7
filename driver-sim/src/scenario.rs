//! What `plush sim` runs: the scenario's parameters and the report it produces.

use plush_core::Config;
use serde::Serialize;
use std::time::Duration;

/// One-way delays a join or an invitation takes at most, end to end: up the tree to the root
/// and down again, the failed first invitation and the launch's round trips, the `Joined`
/// report back up. The unit of the build's bound ([`Scenario::build_limit`]).
pub const BUILD_DELAYS: f64 = 40.0;
/// A launch's process start in the simulator, in milliseconds (on top of its round trip).
pub const LAUNCH_MS: f64 = 100.0;
/// The least build time allowed per node, in milliseconds.
pub const BUILD_MS_PER_NODE: f64 = 10.0;

/// How launches are modelled (`--launch-ms`, `--launch-fanout`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LaunchModel {
    /// One launch at its launcher (a login and a process start), in milliseconds, on top of a
    /// round trip.
    pub ms: f64,
    /// Launches each launcher (the controller, or a member with tree launch) carries out at
    /// once; the others wait their turn, in order.
    pub fanout: u32,
}

/// How a killed node dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CrashKind {
    /// The process dies; its host's kernel resets every connection at once.
    Process,
    /// The host dies: silence. Peers notice only by timeouts.
    Host,
}

/// How the nodes are connected (`--layout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Plush-M: a tree of nodes, repaired through RanSub (the core).
    #[default]
    Tree,
    /// Plush before Plush-M: the controller holds a link to every client (see [`crate::star`]).
    Star,
}

/// The scenario: build a tree of `nodes`, broadcast, strike the faults, wait for repair, broadcast
/// again.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Number of nodes.
    pub nodes: u32,
    /// Master seed: every random stream of the run derives from it.
    pub seed: u64,
    /// One-way delay of a frame: `min + Exp(mean)` capped at `max`, in milliseconds, with
    /// `mean = (max - min) / 5`. Default 0.5..10: a testbed of clusters on one campus.
    pub latency_min_ms: f64,
    /// See `latency_min_ms`.
    pub latency_max_ms: f64,
    /// Fraction of packets lost (0 to 1), as TCP meets it: a lost frame is sent again after
    /// TCP's minimum retransmission timeout ([`crate::net::RETRANSMIT`]) and the frames behind
    /// it on its link wait for it; a lost SYN or SYN-ACK delays a connect by TCP's initial
    /// timeout ([`crate::net::SYN_RETRANSMIT`]). 0 by default: no draw is made, and traces are
    /// those of a run without the field.
    pub loss: f64,
    /// How long a process crash's resets take to reach the peers' machines, as `(min, max)`
    /// milliseconds drawn like the latency; `None` (the default): the latency. On one machine
    /// running many clients the resets of a crash wake all its peers at once, and the last of
    /// them runs well after a single frame would have arrived.
    pub reset_latency_ms: Option<(f64, f64)>,
    /// Fraction of the nodes to kill (the root excluded unless `kill_root`).
    pub kill: f64,
    /// Kill the root as well.
    pub kill_root: bool,
    /// Kill the victims one after another, evenly over this many seconds, the root first and
    /// the others by id, the order in which failover picks new roots (0: all at once). Hosts SIGKILLed by hand, or a rack losing power node by node, die in
    /// a sequence, and each repair then meets the next failure. The tree layout only.
    pub kill_spread_s: f64,
    /// How killed nodes die.
    pub crash: CrashKind,
    /// Cut this fraction of the nodes off from the rest (symmetric partition)...
    pub partition: Option<f64>,
    /// ... and heal it after this many seconds.
    pub heal_after_s: f64,
    /// Make the partition one-way: side 0 cannot reach side 1, side 1 still reaches side 0.
    pub one_way: bool,
    /// Clog this many random pairs of live nodes (all traffic held) until `heal_after_s`.
    pub clogs: u32,
    /// This many random live nodes refuse every connection until `heal_after_s`.
    pub refuse: u32,
    /// Restart the killed nodes this many seconds after the fault; they rejoin through random live
    /// nodes.
    pub restart_after_s: Option<f64>,
    /// RanSub epochs to observe between the first broadcast and the faults, sampling views for
    /// the uniformity test.
    pub steady_epochs: u32,
    /// Joins outstanding at once while building, like the controller's invitations (without
    /// `job`, and unless `paced_by_members`).
    pub max_outstanding_joins: usize,
    /// Without `job`: every member that joined invites the next nodes, up to
    /// `config.launch_fanout` at once, and is their first contact (tree launch, without the
    /// launch's cost); else `max_outstanding_joins` at once in all, the founder first.
    pub paced_by_members: bool,
    /// Longest simulated time to wait for each phase to converge.
    pub phase_limit_s: f64,
    /// Run a job through the control plane: a controller invites every host (launching its
    /// client), then every node runs a simulated process and the results travel up.
    pub job: bool,
    /// Strike the faults while the job runs (else the job runs after the repair).
    pub fault_during_job: bool,
    /// Distinct outputs among the nodes (1: every node prints the same line).
    pub job_outputs: u32,
    /// A simulated process runs for a uniform time in this range, in seconds. Default 0.5..1.5.
    pub job_min_s: f64,
    /// See `job_min_s`.
    pub job_max_s: f64,
    /// With `job`: kill the controller this many seconds after the job starts (issue 19).
    pub controller_crash_at_s: Option<f64>,
    /// A new controller process comes back this many seconds after the crash, resuming from
    /// what a journal holds (see `Sim::plan_controller_crash`); `None`: it never comes back, and
    /// the run checks that the tree ends within `config.linger` and one RanSub epoch.
    pub controller_back_after_s: Option<f64>,
    /// The core's configuration (the degree is `config.max_children`).
    pub config: Config,
    /// Tree or star.
    pub layout: Layout,
    /// With the star: client links the controller can hold at once (its fd limit).
    pub controller_fds: u32,
    /// How launches are modelled; `None`: a round trip and [`LAUNCH_MS`] each, any number at
    /// once (the model before `--launch-ms`, which keeps earlier runs' traces).
    pub launch: Option<LaunchModel>,
}

impl Scenario {
    /// The longest the build may take, stated once for every scenario (not tuned per seed):
    /// the phase limit, plus each node's share of the time joins take when
    /// `max_outstanding_joins` of them (through a controller: `config.max_invitations`
    /// invitations) are in flight at once, each taking [`BUILD_DELAYS`] one-way delays at the
    /// latency's maximum plus a launch; at least [`BUILD_MS_PER_NODE`] per node.
    pub fn build_limit(&self) -> Duration {
        let launch_ms = self.launch.map_or(LAUNCH_MS, |l| l.ms.max(LAUNCH_MS));
        let (in_flight, launch) =
            if self.job { (self.config.max_invitations, launch_ms) } else { (self.max_outstanding_joins, 0.0) };
        let one = BUILD_DELAYS * self.latency_max_ms.max(0.0) + launch;
        let per_node = (one / in_flight.max(1) as f64).max(BUILD_MS_PER_NODE);
        Duration::from_secs_f64(self.phase_limit_s.max(0.0) + per_node * f64::from(self.nodes) / 1e3)
    }

    /// The longest the repair may take, counted from the last fault event (the partition's
    /// heal, the clogs' and refusals' end, the restarts): the phase limit.
    pub fn repair_limit(&self) -> Duration {
        Duration::from_secs_f64(self.phase_limit_s.max(0.0))
    }
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            nodes: 1000,
            seed: 1,
            latency_min_ms: 0.5,
            latency_max_ms: 10.0,
            loss: 0.0,
            reset_latency_ms: None,
            kill: 0.0,
            kill_root: false,
            kill_spread_s: 0.0,
            crash: CrashKind::Process,
            partition: None,
            heal_after_s: 30.0,
            one_way: false,
            clogs: 0,
            refuse: 0,
            restart_after_s: None,
            steady_epochs: 4,
            max_outstanding_joins: 50,
            paced_by_members: true,
            phase_limit_s: 300.0,
            job: false,
            fault_during_job: false,
            job_outputs: 1,
            job_min_s: 0.5,
            job_max_s: 1.5,
            controller_crash_at_s: None,
            controller_back_after_s: None,
            config: Config::default(),
            layout: Layout::Tree,
            controller_fds: 1024,
            launch: None,
        }
    }
}

/// Shape of the tree at one moment, computed by the simulator from every live node's state.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Shape {
    /// Live nodes that consider themselves a joined root.
    pub roots: u32,
    /// Live nodes not reachable from the root (from the lowest root when there are several).
    pub orphans: u32,
    /// Nodes whose parent chain loops.
    pub loops: u32,
    /// Most children of any node.
    pub max_children: u32,
    /// Longest path from the root.
    pub depth: u32,
    /// Parent/child pairs that disagree (a child list naming a node whose parent is another).
    pub disagreements: u32,
}

/// One broadcast from the root and its replies.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BroadcastReport {
    /// Live nodes whose reply reached the root.
    pub replies: u32,
    /// Live nodes at the time of the broadcast.
    pub expected: u32,
    /// Mean time from the broadcast to a reply's arrival at the root.
    pub avg_sim_ms: f64,
    /// Latest reply.
    pub max_sim_ms: f64,
    /// Up to 10 live nodes whose reply never came.
    pub missing: Vec<u32>,
}

/// The build phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BuildReport {
    /// Simulated time until every node joined one tree.
    pub sim_ms: f64,
    /// With `--job`: launches the controller carried out.
    pub launches_by_controller: u32,
    /// With `--job`: launches members carried out (tree launch).
    pub launches_by_members: u32,
    /// Joins the roots handled while building (the rest were placed by the members asked).
    pub root_joins: u64,
    /// Leaf joins placed by members, without the root (see `plush_core::wire::JoinMode::Leaf`).
    pub member_placements: u64,
}

/// The fault phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecoveryReport {
    /// Nodes killed.
    pub killed: u32,
    /// Nodes cut off by the partition.
    pub partitioned: u32,
    /// Killed nodes restarted.
    pub restarted: u32,
    /// Simulated time of the fault, since the start.
    pub fault_at_ms: f64,
    /// Simulated time from the fault to every survivor in one tree.
    pub sim_ms: f64,
    /// Roots once quiet (or at the phase limit).
    pub roots: u32,
    /// Orphans once quiet.
    pub orphans: u32,
    /// Loops once quiet.
    pub loops: u32,
    /// Most children of any node once quiet.
    pub max_children: u32,
    /// Depth after the repair and the rebalancing: at the end of the run, once the members
    /// left too deep by the repair have moved their subtrees up (see `plush_core::tree`,
    /// "Rebalancing"), two to six RanSub epochs after the tree was whole again.
    pub depth: u32,
    /// Depth at the moment the tree was first whole again, before any rebalancing.
    pub depth_whole: u32,
    /// Subtrees moved up to a shallower place, from the fault to the end of the run.
    pub moves: u64,
    /// Joins the roots handled during recovery.
    pub root_joins: u64,
    /// Direct joins the roots verified during recovery (one small message each; see
    /// `plush_core::tree`).
    pub root_verifies: u64,
    /// Repairs (rejoins after losing a parent) through a RanSub candidate.
    pub via_ransub: u64,
    /// Repairs through the root.
    pub via_root: u64,
}

/// RanSub over the steady phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RanSubReport {
    /// Epochs the root started over the whole run.
    pub epochs: u64,
    /// The population the root counted in its last epoch (the run waits for one count of the
    /// repaired tree, at most two epochs).
    pub population_last: u32,
    /// Views sampled for the uniformity test (one random receiver per epoch).
    pub samples: u32,
    /// Chi-square p-value that nodes appear in all-nodes views in proportion to 1/N (`null`
    /// when too few views were sampled for a test).
    pub uniformity_chi2_p: f64,
    /// The same for non-descendant views (expected counts from the tree's shape).
    pub nondesc_chi2_p: f64,
    /// Live nodes after the repair.
    pub live: u32,
    /// The root's count of the repaired tree: among its counts of epochs started after the
    /// repair and ended within two epochs of it, the first that is `live`, else the last (0:
    /// none). A count only covers the nodes attached when its epoch's distribution passed, so
    /// counts of epochs begun during the repair miss the subtrees still re-attaching.
    pub population_repaired: u32,
    /// Simulated time from the repair to that count.
    pub population_repaired_ms: f64,
}

/// Connection tables.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnsReport {
    /// The node budget (`--fd-budget`).
    pub budget: u32,
    /// Most links any node had open at once.
    pub max_open: u32,
    /// Unpinned links closed to make room.
    pub evictions: u64,
    /// Links closed while they still carried a tree relation (must be 0).
    pub pinned_evictions: u64,
    /// Links refused because only pinned or busy links remained.
    pub refused: u64,
}

/// The job (`--job`), from the simulator's own record of deliveries.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobReport {
    /// Nodes alive at the end.
    pub expected: u32,
    /// Nodes whose result the controller reported (alive at the end or not).
    pub results: u32,
    /// Node results the controller reported more than once.
    pub duplicates: u32,
    /// Nodes alive at the end without a reported result, plus results that reached a node that
    /// stayed alive but never reached the controller.
    pub lost: u32,
    /// `Results` messages delivered to the controller.
    pub merged_messages_at_controller: u64,
    /// Distinct outputs reported.
    pub distinct_outputs: u32,
    /// Simulated time from the job's start to the last new result at the controller.
    pub sim_ms: f64,
    /// Hosts the controller declared failed (killed hosts it could not relaunch).
    pub hosts_failed: u32,
    /// Times the controller's link moved to a new root.
    pub root_changes: u64,
    /// Hosts the controller believed joined that a complete census did not list.
    pub unlisted: u64,
    /// Up to 10 nodes alive at the end without a result.
    pub missing: Vec<u32>,
}

/// The controller's crash and return (`--controller-crash-at`), from the simulator's record of
/// what each controller showed its user.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ControllerReport {
    /// Simulated time of the crash, since the start.
    pub crashed_at_ms: f64,
    /// When the new controller learnt the root, since the start (`null`: it never did, or
    /// never came back).
    pub attached_at_ms: Option<f64>,
    /// Nodes whose result the first controller showed.
    pub results_before: u32,
    /// Nodes whose result its successor showed.
    pub results_after: u32,
    /// Node results shown more than once, by either (a node shown before the crash and again
    /// after it counts once).
    pub shown_twice: u32,
    /// Nodes whose result was never shown although it exists: nodes alive at the end, and
    /// nodes whose result reached a node alive at the end.
    pub missing: u32,
    /// The linger of the tree, in milliseconds.
    pub linger_ms: f64,
    /// No controller came back.
    pub never_back: bool,
    /// Never back: when the last node was gone, since the crash (`null`: some still ran at
    /// the bound, `linger` plus one RanSub epoch after the crash).
    pub gone_after_ms: Option<f64>,
    /// Never back: nodes still running at that bound (must be 0).
    pub left: u32,
}

impl ControllerReport {
    /// Nothing shown twice, nothing missing, and, when no controller came back, every node
    /// gone in time.
    pub fn ok(&self) -> bool {
        self.shown_twice == 0 && self.missing == 0 && self.left == 0
    }
}

/// Simulator memory.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemoryReport {
    /// Heap bytes held per simulated node once built (nodes, links, queues).
    pub bytes_per_node: u64,
}

/// Everything `plush sim --json` prints (what a run of the simulator found; the controller's
/// reports to its user are `plush_core::Report`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SimReport {
    /// Number of nodes.
    pub nodes: u32,
    /// The master seed.
    pub seed: u64,
    /// Max children.
    pub degree: u32,
    /// Every phase converged: one tree, every live node in it, no loop, no violation.
    pub converged: bool,
    /// Safety violations seen (checked after every event).
    pub invariant_violations: u64,
    /// The first few violations, as text.
    pub violations: Vec<String>,
    /// Events processed.
    pub events: u64,
    /// Frames delivered.
    pub frames: u64,
    /// Wall-clock time of the run.
    pub wall_ms: u64,
    /// Events per second of wall time.
    pub events_per_s: f64,
    /// Hash of every delivered frame with its time and endpoints: equal hashes, equal runs.
    pub trace_hash: String,
    /// Simulated time at the end.
    pub sim_end_ms: f64,
    /// The build phase.
    pub build: BuildReport,
    /// The tree once built.
    pub tree: Shape,
    /// Broadcast before the faults.
    pub broadcast: BroadcastReport,
    /// The faults and the repair.
    pub recovery: RecoveryReport,
    /// Broadcast after the repair.
    pub broadcast_after: BroadcastReport,
    /// Memory.
    pub memory: MemoryReport,
    /// RanSub.
    pub ransub: RanSubReport,
    /// Connection tables.
    pub conns: ConnsReport,
    /// The job, with `--job`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobReport>,
    /// The controller's crash and return, with `--controller-crash-at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<ControllerReport>,
}
