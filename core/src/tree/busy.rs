//! What a member holds only while it is busy: joining or repairing, electing a root, verifying
//! joiners for others, moving its subtree, or (a root) running a round of probes for other fragments. A settled
//! member holds none of it, so [`Busy`] lives in a box that exists only while some of it is
//! set ([`crate::lazy::Lazy`]): in a simulator of a million nodes, the ~400 bytes of lists and timers this is
//! come to ~400 MB, nearly all of it empty.

use super::JoinMode;
use crate::id::NodeId;
use crate::lazy::Idle;
use crate::time::Instant;

/// The busy state of a [`super::Tree`]. Every field's default is "not busy with that".
#[derive(Debug, Default)]
pub(super) struct Busy {
    /// Set while re-electing a root after our parent, the root, failed.
    pub failover: Option<NodeId>,
    /// In a failover: the lower siblings asked at once and not yet answered. At most the degree
    /// (the old root had no more children).
    pub asked: Vec<NodeId>,
    /// In a failover: when the lower siblings were asked.
    pub asked_at: Option<Instant>,
    /// Higher siblings whose `Join(Failover)` we refused (while electing, or while the old root
    /// still seemed alive to us), with when: taken as children at once if we become the root
    /// within `Tree::held_for` of that. At most the degree.
    pub held: Vec<(NodeId, Instant)>,
    /// The current round's remaining candidates, tried from the back.
    pub candidates: Vec<(NodeId, JoinMode)>,
    /// The candidate our last `Join` went to.
    pub target: Option<NodeId>,
    /// Every candidate that answered or was contacted in this attempt; released once joined.
    pub contacted: Vec<NodeId>,
    /// Whether anyone answered (even with a refusal) in the current round.
    pub answered: bool,
    /// Rounds in a row that ended with refusals only (see `REFUSED_ROUNDS`).
    pub refused_rounds: u8,
    /// Set from losing a parent until re-attached: the attempt is a repair.
    pub repairing: bool,
    /// While true, direct joins to RanSub candidates are outstanding and the ordinary rounds wait.
    pub in_direct: bool,
    /// RanSub candidates asked directly and not yet answered. At most `MAX_FANOUT`.
    pub direct: Vec<NodeId>,
    /// Every RanSub candidate asked in this repair (to tell how it ended). At most `MAX_DIRECT`.
    pub direct_sent: Vec<NodeId>,
    /// Candidates of the current wave (in `direct`) that closed their link to make room
    /// (`TreeMsg::Closing`): alive, so that close is no answer. At most `MAX_FANOUT`.
    pub closing: Vec<NodeId>,
    /// Waves of direct attempts still allowed in this repair.
    pub waves_left: usize,
    /// Direct joins we are verifying up our parent chain, with their deadlines.
    /// At most `MAX_VERIFYING`; more are refused.
    pub verifying: Vec<(NodeId, Instant)>,
    /// While a detached top: the joiners we vouched for (`VerifyOk` as the top of a chain), until
    /// when the vouching holds; an accept whose path names one of them is refused (see
    /// `Tree::on_accept`). At most `MAX_VOUCHED`, the oldest dropped. Not kept once the node is
    /// otherwise idle: it matters only until we re-attach.
    pub vouched: Vec<(NodeId, Instant)>,
    /// When the current join attempt times out.
    pub join_at: Option<Instant>,
    /// While repairing: when the current target, still unanswered, is joined by the next
    /// candidate (see `Tree::hedge`).
    pub hedge_at: Option<Instant>,
    /// Earlier targets of this round, unanswered, asked alongside the current one. At most
    /// `MAX_HEDGED`.
    pub hedged: Vec<NodeId>,
    /// Deadline of the current wave of direct attempts.
    pub direct_at: Option<Instant>,
    /// When to check whether our subtree sits too deep, and move it up (see `Tree::rebalance`).
    pub move_at: Option<Instant>,
    /// A move under way: the shallower member asked to take us, and until when we wait for it.
    pub moving: Option<(NodeId, Instant)>,
    /// A root: the current gap between probes (see `arm_probe`).
    pub probe_gap: core::time::Duration,
    /// A root: the rest of this round's probe candidates, tried from the back. At most
    /// `Config::probe_tries`.
    pub probe_round: Vec<NodeId>,
}

impl Idle for Busy {
    const IDLE: &'static Busy = &Busy {
        failover: None,
        asked: Vec::new(),
        asked_at: None,
        held: Vec::new(),
        candidates: Vec::new(),
        target: None,
        contacted: Vec::new(),
        answered: false,
        refused_rounds: 0,
        repairing: false,
        in_direct: false,
        direct: Vec::new(),
        direct_sent: Vec::new(),
        closing: Vec::new(),
        waves_left: 0,
        verifying: Vec::new(),
        vouched: Vec::new(),
        join_at: None,
        hedge_at: None,
        hedged: Vec::new(),
        direct_at: None,
        move_at: None,
        moving: None,
        probe_gap: core::time::Duration::ZERO,
        probe_round: Vec::new(),
    };

    fn is_idle(&self) -> bool {
        let Busy {
            failover,
            asked,
            asked_at,
            held,
            candidates,
            target,
            contacted,
            answered,
            refused_rounds,
            repairing,
            in_direct,
            direct,
            direct_sent,
            closing,
            waves_left,
            verifying,
            vouched: _,
            join_at,
            hedge_at,
            hedged,
            direct_at,
            move_at,
            moving,
            probe_gap,
            probe_round,
        } = self;
        failover.is_none()
            && asked.is_empty()
            && asked_at.is_none()
            && held.is_empty()
            && candidates.is_empty()
            && target.is_none()
            && contacted.is_empty()
            && !answered
            && *refused_rounds == 0
            && !repairing
            && !in_direct
            && direct.is_empty()
            && direct_sent.is_empty()
            && closing.is_empty()
            && *waves_left == 0
            && verifying.is_empty()
            && join_at.is_none()
            && hedge_at.is_none()
            && hedged.is_empty()
            && direct_at.is_none()
            && move_at.is_none()
            && moving.is_none()
            && probe_gap.is_zero()
            && probe_round.is_empty()
    }
}

impl Busy {
    /// Heap bytes its lists hold (capacities).
    pub fn heap_bytes(&self) -> usize {
        use core::mem::size_of;
        let ids = self.asked.capacity()
            + self.contacted.capacity()
            + self.direct.capacity()
            + self.direct_sent.capacity()
            + self.hedged.capacity()
            + self.probe_round.capacity();
        ids * size_of::<NodeId>()
            + (self.held.capacity() + self.verifying.capacity() + self.vouched.capacity())
                * size_of::<(NodeId, Instant)>()
            + self.candidates.capacity() * size_of::<(NodeId, JoinMode)>()
    }
}
