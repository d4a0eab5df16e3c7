//! RanSub: every member learns, every epoch, small uniform random samples of the tree.
//!
//! The root starts an epoch every [`crate::Config::ransub_epoch`]. **Distribute** flows down:
//! each node hands every child two sets drawn afresh for that child, the *non-descendant* view (a
//! sample of the nodes outside the child's subtree, made of the parent's own non-descendant
//! view, the parent itself and the other children's subtrees) and the *all* view (the same
//! ingredients plus the child's own subtree: a sample of the whole tree). A node can pick a new parent from its non-descendant view without closing a loop.
//! **Collect** flows up: each node sends its parent a sample of its subtree and the subtree's
//! population, once every child reported or when its collect deadline passes (deeper nodes have
//! earlier deadlines, so that one silent child delays its ancestors by at most that much).
//!
//! Sets are merged by **compact**: draw without replacement, each entry weighted by the
//! population its set stands for divided by the set's size, so that a set standing for 1,000
//! nodes is not outweighed by one standing for 3 (the original weighted by set size). Each entry
//! carries what repair needs (free child slots, depth) and a small payload the node publishes
//! (8 bytes: the control plane puts load and version there). The root learns the population of
//! the tree every epoch.
//!
//! Bounds: every set holds at most [`crate::Config::ransub_size`] entries (longer sets from the
//! network are truncated); one stored set per child.

use crate::contract::Event;
use crate::ctx::Ctx;
use crate::id::NodeId;
use crate::time::Instant;
use crate::wire::RanSubMsg;
use rand::RngExt;
use serde::Serialize;
use smallvec::SmallVec;

pub use crate::wire::{Entry, PAYLOAD};

/// What RanSub needs to know of the tree, handed in by the node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Place<'a> {
    pub joined: bool,
    pub parent: Option<NodeId>,
    pub children: &'a [NodeId],
    pub depth: u16,
    pub free: u8,
}

#[derive(Debug)]
struct Kid {
    id: NodeId,
    /// Epoch of the last collect heard.
    epoch: u32,
    population: u32,
    set: Vec<Entry>,
}

#[derive(Debug, Default)]
pub(crate) struct RanSub {
    epoch: u32,
    /// Population of the whole tree as last heard (computed, at the root).
    population: u32,
    /// Population of our subtree as last collected.
    subtree: u32,
    all: Vec<Entry>,
    nondesc: Vec<Entry>,
    kids: Vec<Kid>,
    /// Epoch being collected, until our collect is sent.
    collecting: Option<u32>,
    collect_at: Option<Instant>,
    /// When we last sent our collect up: from then until the next epoch, a change of parent
    /// loses nothing of RanSub's count (see `Tree::rebalance`).
    collected_at: Option<Instant>,
    epoch_at: Option<Instant>,
    payload: [u8; PAYLOAD],
    /// Epochs started (root) or received (others).
    pub epochs: u64,
}

/// Weighted sampling without replacement of up to `k` entries from `sets` of
/// (population represented, entries).
impl RanSub {
    /// Heap bytes its views and its children's sets hold (capacities).
    pub fn heap_bytes(&self) -> usize {
        use core::mem::size_of;
        (self.all.capacity() + self.nondesc.capacity()) * size_of::<Entry>()
            + self.kids.capacity() * size_of::<Kid>()
            + self.kids.iter().map(|k| k.set.capacity() * size_of::<Entry>()).sum::<usize>()
    }
}

fn compact(ctx: &mut Ctx<'_>, sets: &[(u32, &[Entry])], k: usize, out: &mut Vec<Entry>) {
    out.clear();
    // Every entry of a set stands for `population / len` nodes, so draw a set with probability
    // proportional to (weight x entries left), then an entry of it uniformly, without
    // replacement. `order` holds each set's entry indices; a set's untaken ones sit at the front
    // of its slice. On the stack for the usual sizes (12 children, subsets of 10).
    let mut left: SmallVec<[(f64, u32, u32, u32); 16]> = SmallVec::new(); // (weight, set, start, untaken)
    let mut order: SmallVec<[u16; 160]> = SmallVec::new();
    let mut total = 0.0;
    for (si, (pop, set)) in sets.iter().enumerate() {
        if set.is_empty() {
            continue;
        }
        let w = f64::from((*pop).max(1)) / set.len() as f64;
        left.push((w, si as u32, order.len() as u32, set.len() as u32));
        order.extend((0..set.len()).map(|e| e as u16));
        total += w * set.len() as f64;
    }
    while out.len() < k && total > 0.0 && !left.is_empty() {
        let mut x = ctx.rng.random::<f64>() * total;
        let mut pick = left.len() - 1;
        for (i, l) in left.iter().enumerate() {
            let mass = l.0 * f64::from(l.3);
            if x < mass {
                pick = i;
                break;
            }
            x -= mass;
        }
        let (w, si, start, untaken) = left[pick];
        let j = ctx.rng.random_range(0..untaken);
        let (a, b) = ((start + j) as usize, (start + untaken - 1) as usize);
        order.swap(a, b);
        let e = sets[si as usize].1[usize::from(order[b])];
        total -= w;
        if untaken == 1 {
            left.swap_remove(pick);
        } else {
            left[pick].3 -= 1;
        }
        if !out.iter().any(|o| o.id == e.id) {
            out.push(e);
        }
    }
}

/// The wire form of RanSub's messages, borrowing the sets: encodes to the same bytes as
/// `Message::RanSub(..)` without copying them into owned lists first.
#[derive(Serialize)]
enum OutMessage<'a> {
    #[allow(dead_code)] // Only there to give `RanSub` its variant index.
    Tree(()),
    RanSub(OutRanSub<'a>),
}

#[derive(Serialize)]
enum OutRanSub<'a> {
    Distribute { epoch: u32, population: u32, all: &'a [Entry], nondesc: &'a [Entry] },
    Collect { epoch: u32, population: u32, set: &'a [Entry] },
}

fn send(ctx: &mut Ctx<'_>, to: NodeId, msg: OutRanSub<'_>) {
    match ctx.io.pool.encode(&OutMessage::RanSub(msg), ctx.cfg.max_frame) {
        Ok(frame) => ctx.send_frame(to, frame),
        // Sets are bounded by `ransub_size`; a frame too large for them is a configuration error.
        Err(e) => debug_assert!(false, "cannot encode a RanSub message: {e:?}"),
    }
}

impl RanSub {
    pub fn all(&self) -> &[Entry] {
        &self.all
    }
    pub fn nondesc(&self) -> &[Entry] {
        &self.nondesc
    }
    pub fn population(&self) -> u32 {
        self.population
    }

    /// We have a new parent mid-epoch: tell it at once that it need not wait for our collect
    /// this epoch (an empty one, population 0). Our subtree was counted through the old parent
    /// if we had sent it up already (a move), and would not be counted this epoch anyway
    /// otherwise (a repair resets the collect): without this, the new parent waits for us
    /// until its own deadline, and its report may come too late for its parent.
    pub fn new_parent(&mut self, ctx: &mut Ctx<'_>, parent: NodeId) {
        if self.epochs > 0 {
            send(ctx, parent, OutRanSub::Collect { epoch: self.epoch, population: 0, set: &[] });
        }
    }

    /// When we last sent our collect to a parent (`None`: never).
    pub fn collected_at(&self) -> Option<Instant> {
        self.collected_at
    }
    pub fn epoch(&self) -> u32 {
        self.epoch
    }
    pub fn set_payload(&mut self, p: [u8; PAYLOAD]) {
        self.payload = p;
    }

    pub fn next_timeout(&self) -> Option<Instant> {
        match (self.collect_at, self.epoch_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn me(&self, ctx: &Ctx<'_>, place: &Place<'_>) -> Entry {
        Entry { id: ctx.me, free: place.free, depth: place.depth, payload: self.payload }
    }

    /// Keep the root's epoch timer armed exactly while we are a joined root.
    pub fn sync(&mut self, ctx: &mut Ctx<'_>, place: &Place<'_>) {
        let root = place.joined && place.parent.is_none();
        if root && self.epoch_at.is_none() {
            self.epoch_at = Some(ctx.now + ctx.cfg.ransub_epoch);
        } else if !root {
            self.epoch_at = None;
        }
    }

    /// Forget the sets of nodes that are no longer our children (once an epoch).
    fn prune(&mut self, place: &Place<'_>) {
        self.kids.retain(|k| place.children.contains(&k.id));
    }

    pub fn on_timeout(&mut self, ctx: &mut Ctx<'_>, place: &Place<'_>) {
        if self.collect_at.is_some_and(|t| t <= ctx.now) {
            self.collect_at = None;
            self.send_collect(ctx, place);
        }
        if self.epoch_at.is_some_and(|t| t <= ctx.now) {
            self.epoch_at = Some(ctx.now + ctx.cfg.ransub_epoch);
            if place.joined && place.parent.is_none() {
                self.start_epoch(ctx, place);
            }
        }
    }

    /// Root: close the previous epoch's collect and distribute a new epoch.
    fn start_epoch(&mut self, ctx: &mut Ctx<'_>, place: &Place<'_>) {
        if self.collecting.is_some() {
            // Whatever did not report in a whole epoch is not counted.
            self.send_collect(ctx, place);
        }
        self.epoch = self.epoch.wrapping_add(1);
        self.epochs += 1;
        self.prune(place);
        self.nondesc.clear();
        self.distribute(ctx, place, &[], 0);
        self.begin_collect(ctx, place);
    }

    /// Send each child its views, drawn afresh for each child. `upper` is our own non-descendant
    /// view, standing for `upper_pop` nodes. A child's non-descendant view mixes `upper`, us and
    /// its siblings' subtrees; its all view mixes the same and its own subtree.
    fn distribute(&mut self, ctx: &mut Ctx<'_>, place: &Place<'_>, upper: &[Entry], upper_pop: u32) {
        let me = self.me(ctx, place);
        let (mut nd, mut all) = (Vec::new(), Vec::new());
        for &child in place.children {
            let mut sets: SmallVec<[(u32, &[Entry]); 16]> = SmallVec::new();
            sets.push((upper_pop, upper));
            sets.push((1, core::slice::from_ref(&me)));
            sets.extend(self.kids.iter().filter(|k| k.id != child).map(|k| (k.population, k.set.as_slice())));
            compact(ctx, &sets, ctx.cfg.ransub_size, &mut nd);
            if let Some(k) = self.kids.iter().find(|k| k.id == child) {
                sets.push((k.population, k.set.as_slice()));
            }
            compact(ctx, &sets, ctx.cfg.ransub_size, &mut all);
            let msg = OutRanSub::Distribute { epoch: self.epoch, population: self.population, all: &all, nondesc: &nd };
            send(ctx, child, msg);
        }
    }

    fn begin_collect(&mut self, ctx: &mut Ctx<'_>, place: &Place<'_>) {
        self.collecting = Some(self.epoch);
        if place.children.is_empty() {
            self.collect_at = None;
            self.send_collect(ctx, place);
            return;
        }
        // Deeper nodes give up earlier, so their ancestors still hear from them in time: each
        // level gives up 2% of an epoch (100 ms at the default 5 s, a wide-area hop) before its
        // parent, down to depth 35, below which every level waits a tenth of an epoch. (The
        // earlier 5% a level stopped at depth 12: in the deeper trees that repairs build, a
        // node and its parent then gave up at the same moment and the parent missed it.)
        let share = 0.8 - 0.02 * f64::from(place.depth.min(35));
        self.collect_at = Some(ctx.now + ctx.cfg.ransub_epoch.mul_f64(share.max(0.1)));
    }

    /// Our subtree's sample and population, up to the parent (or, at the root, the total).
    fn send_collect(&mut self, ctx: &mut Ctx<'_>, place: &Place<'_>) {
        let Some(epoch) = self.collecting.take() else { return };
        self.collect_at = None;
        let me = self.me(ctx, place);
        let mut set = Vec::new();
        let mut pop = 1u32;
        {
            let mut sets: SmallVec<[(u32, &[Entry]); 16]> = SmallVec::new();
            sets.push((1, core::slice::from_ref(&me)));
            for k in self.kids.iter().filter(|k| k.epoch == epoch) {
                sets.push((k.population, k.set.as_slice()));
                pop = pop.saturating_add(k.population);
            }
            compact(ctx, &sets, ctx.cfg.ransub_size, &mut set);
        }
        self.subtree = pop;
        match place.parent {
            Some(p) => {
                send(ctx, p, OutRanSub::Collect { epoch, population: pop, set: &set });
                self.collected_at = Some(ctx.now);
            }
            None => {
                self.population = pop;
                ctx.event(Event::Population { epoch, population: pop });
            }
        }
    }

    pub fn on_message(&mut self, ctx: &mut Ctx<'_>, place: &Place<'_>, from: NodeId, msg: RanSubMsg) {
        if !place.joined {
            return;
        }
        match msg {
            RanSubMsg::Distribute { epoch, population, mut all, mut nondesc } => {
                if place.parent != Some(from) {
                    return;
                }
                all.0.truncate(ctx.cfg.ransub_size);
                nondesc.0.truncate(ctx.cfg.ransub_size);
                self.epoch = epoch;
                self.epochs += 1;
                self.prune(place);
                self.population = population;
                self.all = all.0;
                self.nondesc = nondesc.0;
                ctx.event(Event::RanSubView { epoch });
                if !place.children.is_empty() {
                    let upper_pop = population.saturating_sub(self.subtree.max(1));
                    let upper = core::mem::take(&mut self.nondesc);
                    self.distribute(ctx, place, &upper, upper_pop);
                    self.nondesc = upper;
                }
                self.begin_collect(ctx, place);
            }
            RanSubMsg::Collect { epoch, population, mut set } => {
                if !place.children.contains(&from) {
                    return;
                }
                set.0.truncate(ctx.cfg.ransub_size);
                match self.kids.iter_mut().find(|k| k.id == from) {
                    Some(k) => {
                        k.epoch = epoch;
                        k.population = population;
                        k.set = set.0;
                    }
                    None => self.kids.push(Kid { id: from, epoch, population, set: set.0 }),
                }
                if let Some(e) = self.collecting {
                    let all_in = place.children.iter().all(|c| self.kids.iter().any(|k| k.id == *c && k.epoch == e));
                    if all_in {
                        self.send_collect(ctx, place);
                    }
                }
            }
        }
    }

    /// The node lost its place (parent changed): forget what was collected for the old one.
    pub fn reset(&mut self) {
        self.collecting = None;
        self.collect_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FramePool;
    use crate::wire::{List, Message};

    #[test]
    fn the_borrowed_wire_form_is_the_message_encoding() {
        let e = Entry { id: NodeId::loopback(3, 7000), free: 2, depth: 4, payload: [9; PAYLOAD] };
        let mut pool = FramePool::default();
        let owned = Message::RanSub(RanSubMsg::Distribute {
            epoch: 3,
            population: 70,
            all: List(vec![e, e]),
            nondesc: List(vec![e]),
        });
        let borrowed =
            OutMessage::RanSub(OutRanSub::Distribute { epoch: 3, population: 70, all: &[e, e], nondesc: &[e] });
        let a = pool.encode(&owned, 1 << 20).unwrap().to_vec();
        let b = pool.encode(&borrowed, 1 << 20).unwrap().to_vec();
        assert_eq!(a, b);
        let owned = Message::RanSub(RanSubMsg::Collect { epoch: 1, population: 5, set: List(vec![e]) });
        let borrowed = OutMessage::RanSub(OutRanSub::Collect { epoch: 1, population: 5, set: &[e] });
        assert_eq!(pool.encode(&owned, 1 << 20).unwrap().to_vec(), pool.encode(&borrowed, 1 << 20).unwrap().to_vec());
    }
}
