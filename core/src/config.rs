//! Every tunable of the core, with the defaults of DESIGN.md's table.

use core::time::Duration;

/// Configuration of a [`crate::Node`]. All fields are public and every default can be overridden.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Most children a node accepts (RandTree's fan-out). Default 12 (Mace RandTree).
    pub max_children: usize,
    /// A join that got no answer is retried after this long. Default 5 s (Mace RandTree).
    pub join_retry: Duration,
    /// While repairing (the node had a parent and lost it), a join waits this long for one
    /// candidate's answer before it asks the next; an answer that comes later is still taken.
    /// A live candidate answers within a few round trips; one that died silently on a link
    /// still open would otherwise hold the repair for a whole `join_retry`. Default 2 s.
    pub repair_join_wait: Duration,
    /// Pause before a new round of join attempts once every candidate refused. Default 500 ms.
    pub join_backoff: Duration,
    /// A root probes a round of known peers this often to find and merge other trees (see
    /// [`crate::tree`]). Default 10 s.
    pub probe_interval: Duration,
    /// A new root's first probe comes this soon; the gap then doubles up to `probe_interval`.
    /// Default 1 s.
    pub first_probe: Duration,
    /// Peers a root probes one after another in one round, moving on past dead ones and its
    /// own tree's members. Default 8.
    pub probe_tries: usize,
    /// Probes the members of one tree send together, about, every two `probe_interval`s: each
    /// member probes with probability `member_probes / population`. Default 32.
    pub member_probes: u32,
    /// RanSub epoch. Default 5 s (Mace RanSub).
    pub ransub_epoch: Duration,
    /// RanSub subset size. Default 10 (Mace RanSub).
    pub ransub_size: usize,
    /// Heartbeat interval on tree links. Default 1 s.
    pub heartbeat: Duration,
    /// A tree link silent this long counts as failed. Default 3 s.
    pub dead_after: Duration,
    /// Invitations the controller keeps outstanding at once. Default 50 (Plush-M).
    pub max_invitations: usize,
    /// An invitation expires after this long. Default 5 min (Plush-M).
    pub invitation_expiry: Duration,
    /// The controller refreshes `SetCtrl` to the root this often. Default 2 min (Plush-M).
    pub setctrl_refresh: Duration,
    /// A dismantling node exits after this long regardless. Default 2 min (Plush-M).
    pub dismantle_timer: Duration,
    /// A client with no links at all exits after this long. Default 2 min (Plush-M).
    pub idle_expiry: Duration,
    /// A tree whose root has had no controller link this long dismantles itself: its jobs run
    /// on and their results are held meanwhile. The controller may tell the tree another
    /// ([`crate::wire::ControlMsg::Linger`]). It should stay well above the time a root change
    /// takes (`dead_after`, a failover, and `join_retry` for a controller that missed the new
    /// root's `SetRoot`): a root counts from its own start, so a shorter linger may end a tree
    /// whose controller is alive but between roots. Default 10 min.
    pub linger: Duration,
    /// A maintenance script still running after this long is killed and counts as failed.
    /// Default 2 min; it must stay below `invitation_expiry`, which the invitation waits out.
    pub maintenance_timeout: Duration,
    /// A host that disconnects this many times ...
    pub failed_after_disconnects: u32,
    /// ... within this window becomes `Failed`. Defaults 3 in 10 min.
    pub failed_window: Duration,
    /// Largest frame accepted or sent, length prefix excluded. Default 1 MiB.
    pub max_frame: usize,
    /// An unpinned link (no tree relation) idle this long is closed. Default 10 s.
    pub link_idle: Duration,
    /// Frames queued on a link that is still connecting; further frames are dropped and counted
    /// in [`crate::Stats::pending_dropped`]. Default 64.
    pub max_pending_frames: usize,
    /// Links this node may hold at once (the fd budget). At the budget, idle unpinned links
    /// close least-recently-used first; pinned ones never. Default 1024.
    pub max_links: usize,
    /// Repair through RanSub candidates before asking the root. Default true.
    pub ransub_repair: bool,
    /// RanSub candidates asked at once when repairing (the nearest ancestor among them in the
    /// first wave). Default 4 (at most 8).
    pub repair_fanout: usize,
    /// Waves of RanSub candidates per repair (the last asks every candidate left, further
    /// ancestors among them, up to 8); a join through the root starts only after the last.
    /// Default 3.
    pub repair_waves: usize,
    /// Drivers give up a connection attempt after this long (a silent host). Default 1.5 s: a
    /// lost SYN is sent again after TCP's initial retransmission timeout (1 s), and its answer
    /// takes a round trip more. (At 1 s, one lost SYN failed the connect: at 0.1 % loss a root's
    /// check of a live member failed so, and the member was reported gone.)
    pub connect_timeout: Duration,
    /// How long one wave of direct repair attempts may take. Default 500 ms.
    pub repair_timeout: Duration,
    /// Known peers remembered for recovery and partition probes; when full, a random entry is
    /// replaced. Default 16.
    pub max_peers: usize,
    /// Output bytes a node may have sent up a link per job and not had acknowledged (live
    /// output and large results' blobs): the per-link window that carries backpressure from
    /// the controller's reader down to each job's process. Default 256 KiB.
    pub output_window: usize,
    /// An interior node sends merged results up once every child answered, or this long after
    /// the first unsent result arrived. Default 20 ms.
    pub merge_delay: Duration,
    /// The same delay at the root, toward the controller: longer, so that the controller gets
    /// few large messages. Default 100 ms.
    pub ctrl_merge_delay: Duration,
    /// Jobs a node tracks at once (running, holding results, or lingering); a `Run` beyond is
    /// answered with a `SpawnFailed` result. Default 64.
    pub max_jobs: usize,
    /// A finished job is remembered this long, so that children that attach late still get its
    /// `Run`. Default 60 s.
    pub job_linger: Duration,
    /// Where a client is launched when an invitation finds none: at the root (as in Plush-M) or,
    /// by default, at the controller, where ssh keys usually live.
    pub launch_at_root: bool,
    /// At the controller: when the host invited first (directly, to found the tree) has no
    /// client and is launched, launch the next hosts at once too, up to
    /// [`Config::max_invitations`] in all, instead of letting them wait until the tree is
    /// founded: a cold start then pays one launch's latency once, not twice. Each is invited
    /// (through the root) once its launch is done and the tree has a root; one whose launch
    /// fails goes back to the queue, to be invited (and, if no client answers, launched) as
    /// any host: a host already running a client is launched in vain (its new client finds
    /// the address in use), and joins when invited. Not with [`Config::tree_launch`] (the
    /// members launch all hosts but the first), and only for a controller whose driver can
    /// launch. Off by default; the `plush` command turns it on.
    pub launch_ahead: bool,
    /// At the controller: tree launch (`--launch-from tree`). The controller invites the first
    /// host itself; from then on it hands the hosts not yet invited to members that joined, in
    /// shares of at most [`crate::wire::MAX_LIST`] ([`crate::wire::ControlMsg::Share`]), and
    /// each member launches and invites its share, passing parts on to the hosts it launched.
    /// Hosts a member could not launch come back, and the controller tries them itself. Off by
    /// default: the controller (or the root, with `launch_at_root`) invites every host.
    pub tree_launch: bool,
    /// At the controller, with `tree_launch`: launches a member has under way at once, told to
    /// it with its share (at least 1, at most `u16::MAX`). Default 32.
    pub launch_fanout: usize,
    /// The controller acknowledges a job's results at most this often. Default 1 s.
    pub ack_interval: Duration,
    /// After a member was reported lost, the controller waits this long (for the repairs to
    /// settle) and then asks the root for a census: a host it believed joined that the census
    /// does not list (a leaf lost with its parent, which nobody reports) is invited again, and
    /// launched again if it is gone. At most one census per this interval. Default 3 s.
    pub recheck_delay: Duration,
    /// Chunks of a transfer in flight to one child at most (sent, not yet acknowledged). With
    /// 128 KiB chunks, the default 8 keeps 1 MiB per child on the wire. Default 8.
    pub push_window: u32,
    /// This node's build: a hash of its version string, announced in `Joined`, so that the
    /// controller finds clients of another version (and upgrades them). 0: unknown. Default 0.
    pub build: u64,
    /// At the controller: members asked at once where the root is, while it knows none.
    /// Default 16.
    pub seek_fanout: usize,
    /// At the controller: a job the tree reported complete is acknowledged again every this
    /// many `ack_interval`s while the controller tracks it. Default 5.
    pub reack_intervals: u32,
    /// At the controller: results naming large outputs ([`crate::wire::BlobRef`]) are
    /// acknowledged at most this often (others at most every `ack_interval`). Every node holds
    /// such an output until the controller's `Ack` covers it, and takes no more from its
    /// children past 8 MiB of them, so this pace bounds the throughput of large grouped outputs
    /// (8 MiB per 25 ms and hop). Default 25 ms.
    pub large_ack_pace: Duration,
}

/// Links a node keeps free of children: its parent, the controller, and the work of joins,
/// invitations, repairs and probes (see [`Config::degree`]).
const LINK_RESERVE: usize = 6;

impl Config {
    /// The fan-out a node uses: `max_children`, but at most `max_links - LINK_RESERVE` (and at
    /// least 1). A root with budget 15 and 12 children (plus its controller) had two links left
    /// for every join, invitation and probe of the tree, and evicted them in turn: a build of 643
    /// hosts took 353 s simulated, and 31 s with 9 children.
    pub fn degree(&self) -> usize {
        self.max_children.min(self.max_links.saturating_sub(LINK_RESERVE)).max(1)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_children: 12,
            join_retry: Duration::from_secs(5),
            recheck_delay: Duration::from_secs(3),
            repair_join_wait: Duration::from_secs(2),
            join_backoff: Duration::from_millis(500),
            probe_interval: Duration::from_secs(10),
            first_probe: Duration::from_secs(1),
            probe_tries: 8,
            member_probes: 32,
            ransub_epoch: Duration::from_secs(5),
            ransub_size: 10,
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(3),
            max_invitations: 50,
            invitation_expiry: Duration::from_secs(300),
            setctrl_refresh: Duration::from_secs(120),
            dismantle_timer: Duration::from_secs(120),
            idle_expiry: Duration::from_secs(120),
            linger: Duration::from_secs(600),
            maintenance_timeout: Duration::from_secs(120),
            failed_after_disconnects: 3,
            failed_window: Duration::from_secs(600),
            max_frame: 1 << 20,
            link_idle: Duration::from_secs(10),
            max_pending_frames: 64,
            max_peers: 16,
            max_links: 1024,
            ransub_repair: true,
            repair_fanout: 4,
            repair_waves: 3,
            connect_timeout: Duration::from_millis(1500),
            repair_timeout: Duration::from_millis(500),
            output_window: 256 << 10,
            merge_delay: Duration::from_millis(20),
            ctrl_merge_delay: Duration::from_millis(100),
            max_jobs: 64,
            job_linger: Duration::from_secs(60),
            launch_at_root: false,
            launch_ahead: false,
            tree_launch: false,
            launch_fanout: 32,
            ack_interval: Duration::from_secs(1),
            push_window: 8,
            build: 0,
            seek_fanout: 16,
            reack_intervals: 5,
            large_ack_pace: Duration::from_millis(25),
        }
    }
}
