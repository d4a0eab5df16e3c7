//! The connection table: every link the node has, its state, its activity and why it is kept.
//!
//! A link is *pinned* while it carries a relation that must survive: parent, child, root,
//! controller. Unpinned links (a joiner's first contact, a probe, a repair candidate) sit on an
//! LRU list. The table has a **budget** (the file descriptors the driver can spend, or a
//! per-node parameter in the simulator): opening a link beyond it first closes the
//! least-recently-used unpinned idle link; a pinned link is never evicted, and when only pinned
//! or busy links remain the new link is refused (the caller reports it as a failed connect and
//! an [`crate::Event::LinkRefused`]). Unpinned links idle for [`crate::Config::link_idle`] are
//! closed by a sweep.
//!
//! Frames sent to a peer without an open link start a connection and wait in the link's pending
//! queue, at most [`crate::Config::max_pending_frames`] of them; more are dropped and counted.
//!
//! Every link records when it last received and last sent, for heartbeats: the node sends a
//! heartbeat on a pinned link that sent nothing for [`crate::Config::heartbeat`] and declares it
//! failed when it received nothing for [`crate::Config::dead_after`].
//!
//! Costs: lookup by peer scans one cache line of folded keys while the table has at most
//! [`SMALL`] slots (a tree node's parent, children and a few others), and is one probe of a
//! hash index beyond (FxHash of one folded word: a relayed broadcast looks up 13 links, so this
//! is the hottest path of a relay; a root may hold up to the budget); LRU touch, pin and
//! unpin are O(1) list operations on slab slots. Iteration in peer order (rare: diagnostics,
//! exit) sorts a list of the links.

use crate::batch::Outbox;
use crate::contract::{Output, Stats};
use crate::frame::{encode_once, Frame};
use crate::id::NodeId;
use crate::time::Instant;
use crate::wire::{Message, TreeMsg};
use rustc_hash::FxBuildHasher;
use slab::Slab;
use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Why a link is kept open. A link may have several reasons at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Pin {
    /// The peer is our parent.
    Parent = 1,
    /// The peer is one of our children.
    Child = 2,
    /// The peer is the root we keep a link to for the controller.
    Root = 4,
    /// The peer is the controller.
    Controller = 8,
}

/// Where a link stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// `Output::Connect` was emitted; frames wait in the pending queue.
    Connecting,
    /// The driver reported the link up.
    Open,
}

const NIL: u32 = u32::MAX;

/// Slots found through [`ConnTable`]'s inline array of folded keys, without a hash index: a
/// simulator's million nodes each keep this line inline instead of a hash table on the heap
/// (two more cache misses per lookup, and its memory), and a tree node rarely holds more.
pub(crate) const SMALL: usize = 16;

/// A peer as the index hashes it. Equality is the whole id; the hash folds it into one word
/// so that FxHash costs one multiply: the two halves of the address, and the port in the top
/// bits, which an IPv4-mapped address (every simulated and most real peers) leaves zero.
///
/// FxHash (rustc-hash) rather than std's SipHash: it is several times cheaper on a short key,
/// and deterministic (std's `RandomState` seeds itself from the OS, which a pure core must not
/// do). It does not resist chosen collisions; the keys are the listen addresses of
/// authenticated peers, and the table holds at most `budget` entries, which bounds a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key(NodeId);

impl Key {
    /// The id folded into one word: the two halves of the address, and the port in the top bits.
    fn word(&self) -> u64 {
        let (port, ip) = self.0.run_key();
        ip as u64 ^ ((ip >> 64) as u64).rotate_left(32) ^ (u64::from(port) << 48)
    }

    /// The id folded into 32 bits, never 0 (which marks a vacant slot in [`ConnTable`]'s inline
    /// keys). Two ids may fold alike: a match is checked against the slot's peer.
    fn small(&self) -> u32 {
        let w = self.word().wrapping_mul(0x9e37_79b9_7f4a_7c15);
        ((w >> 32) as u32).max(1)
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.word());
    }
}

#[derive(Debug)]
struct Link {
    peer: NodeId,
    state: LinkState,
    pins: u8,
    last_rx: Instant,
    last_tx: Instant,
    pending: Pending,
    /// LRU neighbours while unpinned (NIL at the ends or when pinned).
    prev: u32,
    next: u32,
}

/// Frames waiting for a link to open. An open link has none: boxed, so that every link holds
/// 8 bytes for it rather than a `Vec`'s 24 (a simulator holds millions of links).
/// (The box is the point: `Option<Vec>` would take 24 bytes.)
#[derive(Debug, Default)]
#[allow(clippy::box_collection)]
struct Pending(Option<Box<Vec<Frame>>>);

impl Pending {
    fn one(frame: Frame) -> Self {
        Pending(Some(Box::new(vec![frame])))
    }
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.len())
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn push(&mut self, frame: Frame) {
        self.0.get_or_insert_with(Default::default).push(frame);
    }
    /// The frames, in order, leaving none.
    fn take(&mut self) -> Vec<Frame> {
        self.0.take().map(|b| *b).unwrap_or_default()
    }
}

/// What opening a link did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// The link is in the table.
    Ok,
    /// The budget is spent on pinned or busy links: the link was refused.
    Refused,
}

/// All links of one node. Bound: at most `budget` entries (see the module docs).
#[derive(Debug)]
pub(crate) struct ConnTable {
    slab: Slab<Link>,
    /// While `big` is false (every slot below [`SMALL`]): the folded key ([`Key::small`]) of
    /// the peer in each slot, 0 where vacant.
    small: [u32; SMALL],
    /// Set once a slot reached [`SMALL`]: from then on `index` holds every link.
    big: bool,
    /// Peer to slot, once `big`. Bound: as many entries as links, at most `budget`.
    index: HashMap<Key, u32, FxBuildHasher>,
    /// The slot last looked up (see `slot`), once `big`.
    hint: Cell<u32>,
    /// Counts changes to links and their pins (see [`ConnTable::received_again`]).
    changes: u64,
    lru_head: u32,
    lru_tail: u32,
    budget: usize,
    /// Set when an unpinned link may exist, so the node arms its sweep timer.
    pub sweep_wanted: bool,
    /// Most links open at once.
    pub max_open: usize,
    /// Set when a pin was added, so the node re-arms its heartbeat timer for the new relation.
    pub pinned_since_tick: bool,
}

impl ConnTable {
    pub fn new(budget: usize) -> Self {
        ConnTable {
            slab: Slab::new(),
            small: [0; SMALL],
            big: false,
            index: HashMap::default(),
            hint: Cell::new(NIL),
            changes: 0,
            lru_head: NIL,
            lru_tail: NIL,
            budget: budget.max(1),
            sweep_wanted: false,
            max_open: 0,
            pinned_since_tick: false,
        }
    }

    /// Heap bytes the table holds, for memory reports: its slab (an entry is a link and the
    /// slab's tag, counted as a word), its index (an entry and a control byte), pending frames'
    /// lists.
    pub fn heap_bytes(&self) -> usize {
        use core::mem::size_of;
        let pending = |v: &Vec<Frame>| size_of::<Vec<Frame>>() + v.capacity() * size_of::<Frame>();
        self.slab.capacity() * (size_of::<Link>() + size_of::<usize>())
            + self.index.capacity() * (size_of::<(Key, u32)>() + 1)
            + self.slab.iter().map(|(_, l)| l.pending.0.as_deref().map_or(0, pending)).sum::<usize>()
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    fn slot(&self, peer: &NodeId) -> Option<u32> {
        if !self.big {
            let k = Key(*peer).small();
            return (0..SMALL)
                .find(|&s| self.small[s] == k && self.slab.get(s).is_some_and(|l| l.peer == *peer))
                .map(|s| s as u32);
        }
        // Frames come in runs from one peer (a read's worth from the parent), and a relay sends
        // runs of frames to one: the last slot found is tried first. A hint only, never wrong:
        // the slot is used only if it holds `peer` now.
        let hint = self.hint.get();
        if self.slab.get(hint as usize).is_some_and(|l| l.peer == *peer) {
            return Some(hint);
        }
        let s = self.index.get(&Key(*peer)).copied()?;
        self.hint.set(s);
        Some(s)
    }

    /// The link to `peer`, if any: connecting or open.
    pub fn state(&self, peer: &NodeId) -> Option<LinkState> {
        self.slot(peer).map(|s| self.slab[s as usize].state)
    }

    /// When a frame last came in on the open link to `peer`; `None` without an open link.
    pub fn last_heard(&self, peer: &NodeId) -> Option<Instant> {
        self.slot(peer).map(|s| &self.slab[s as usize]).filter(|l| l.state == LinkState::Open).map(|l| l.last_rx)
    }

    pub fn pins(&self, peer: &NodeId) -> u8 {
        self.slot(peer).map_or(0, |s| self.slab[s as usize].pins)
    }

    /// Every link in peer order (deterministic whatever the hash index's layout). Allocates a
    /// sorted copy: for diagnostics and for closing everything at exit, not for hot paths.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, LinkState, u8)> {
        let mut links: Vec<&Link> = self.slab.iter().map(|(_, l)| l).collect();
        links.sort_unstable_by_key(|l| l.peer);
        links.into_iter().map(|l| (&l.peer, l.state, l.pins))
    }

    // ----- LRU list of unpinned links -------------------------------------------------------

    fn lru_unlink(&mut self, s: u32) {
        let (prev, next) = {
            let l = &self.slab[s as usize];
            (l.prev, l.next)
        };
        if prev != NIL {
            self.slab[prev as usize].next = next;
        } else if self.lru_head == s {
            self.lru_head = next;
        }
        if next != NIL {
            self.slab[next as usize].prev = prev;
        } else if self.lru_tail == s {
            self.lru_tail = prev;
        }
        let l = &mut self.slab[s as usize];
        l.prev = NIL;
        l.next = NIL;
    }

    fn lru_push_tail(&mut self, s: u32) {
        let tail = self.lru_tail;
        {
            let l = &mut self.slab[s as usize];
            l.prev = tail;
            l.next = NIL;
        }
        if tail != NIL {
            self.slab[tail as usize].next = s;
        } else {
            self.lru_head = s;
        }
        self.lru_tail = s;
    }

    /// Mark recent use: an unpinned link moves to the LRU tail.
    fn touch_slot(&mut self, s: u32) {
        if self.slab[s as usize].pins == 0 {
            self.touch_unpinned(s);
        }
    }

    /// [`ConnTable::touch_slot`] for a link known to be unpinned.
    fn touch_unpinned(&mut self, s: u32) {
        if self.lru_tail != s {
            self.lru_unlink(s);
            self.lru_push_tail(s);
        }
    }

    // ----- admission ------------------------------------------------------------------------

    /// Make room for one more link: evict the least-recently-used unpinned idle link. Its last
    /// frame is `TreeMsg::Closing`, so that the peer tells this close from a crash (a joiner
    /// waiting for our answer, or for one of our children's, keeps waiting).
    fn make_room(&mut self, out: &mut Outbox, stats: &mut Stats) -> Admit {
        if self.slab.len() < self.budget {
            return Admit::Ok;
        }
        let mut s = self.lru_head;
        while s != NIL {
            let l = &self.slab[s as usize];
            if l.state == LinkState::Open && l.pending.is_empty() {
                debug_assert_eq!(l.pins, 0, "the LRU list holds only unpinned links");
                let peer = l.peer;
                self.remove(&peer);
                stats.evictions += 1;
                if let Some(frame) = encode_once(&Message::Tree(TreeMsg::Closing)) {
                    stats.frames_out += 1;
                    out.push_back(Output::Transmit { to: peer, frame });
                }
                out.push_back(Output::Close(peer));
                return Admit::Ok;
            }
            s = l.next;
        }
        stats.links_refused += 1;
        Admit::Refused
    }

    fn insert(&mut self, now: Instant, peer: NodeId, state: LinkState, pending: Pending) -> u32 {
        let s =
            self.slab.insert(Link { peer, state, pins: 0, last_rx: now, last_tx: now, pending, prev: NIL, next: NIL })
                as u32;
        if self.big {
            self.index.insert(Key(peer), s);
        } else if (s as usize) < SMALL {
            self.small[s as usize] = Key(peer).small();
        } else {
            // Past the inline keys: index every link from now on.
            self.big = true;
            self.small = [0; SMALL];
            for (i, l) in self.slab.iter() {
                self.index.insert(Key(l.peer), i as u32);
            }
        }
        self.lru_push_tail(s);
        self.sweep_wanted = true;
        self.changes += 1;
        self.max_open = self.max_open.max(self.slab.len());
        s
    }

    /// Send `frame` to `peer`, connecting first if needed. `Refused` when the budget allows no
    /// new link (the frame is dropped).
    pub fn send(
        &mut self,
        now: Instant,
        peer: NodeId,
        frame: Frame,
        max_pending: usize,
        out: &mut Outbox,
        stats: &mut Stats,
    ) -> Admit {
        if let Some(s) = self.slot(&peer) {
            // One slab access for the common case, a pinned tree link (nothing to touch).
            let link = &mut self.slab[s as usize];
            let unpinned = link.pins == 0;
            if link.state == LinkState::Open {
                link.last_tx = now;
                stats.frames_out += 1;
                out.push_transmit(peer, frame);
            } else if link.pending.len() < max_pending {
                link.pending.push(frame);
            } else {
                stats.pending_dropped += 1;
            }
            if unpinned {
                self.touch_unpinned(s);
            }
            return Admit::Ok;
        }
        if self.make_room(out, stats) == Admit::Refused {
            return Admit::Refused;
        }
        self.insert(now, peer, LinkState::Connecting, Pending::one(frame));
        out.push_back(Output::Connect(peer));
        Admit::Ok
    }

    /// The driver reports the link up (ours, or one the peer opened): flush what waited.
    /// An incoming link beyond the budget is `Refused` (the caller closes it).
    pub fn connected(&mut self, now: Instant, peer: NodeId, out: &mut Outbox, stats: &mut Stats) -> Admit {
        let s = match self.slot(&peer) {
            Some(s) => s,
            None => {
                if self.make_room(out, stats) == Admit::Refused {
                    return Admit::Refused;
                }
                self.insert(now, peer, LinkState::Open, Pending::default())
            }
        };
        self.touch_slot(s);
        let link = &mut self.slab[s as usize];
        if link.pins != 0 {
            self.pinned_since_tick = true;
        }
        link.state = LinkState::Open;
        self.changes += 1;
        link.last_rx = now;
        link.last_tx = now;
        for frame in link.pending.take() {
            stats.frames_out += 1;
            out.push_back(Output::Transmit { to: peer, frame });
        }
        Admit::Ok
    }

    /// A frame for `peer` went into a batch's run (see [`crate::batch`]): as [`ConnTable::send`]
    /// does for an open link, mark the link written at `now`. `false` if the link is not open
    /// (the caller sends the frame on its own instead).
    pub fn mark_sent(&mut self, now: Instant, peer: &NodeId) -> bool {
        let Some(s) = self.slot(peer) else { return false };
        let link = &mut self.slab[s as usize];
        if link.state != LinkState::Open {
            return false;
        }
        link.last_tx = now;
        if link.pins == 0 {
            self.touch_unpinned(s);
        }
        true
    }

    /// A frame arrived on the link: `None` if there is no open link to `peer`, else whether to
    /// answer with a heartbeat (a link we follow on which we wrote nothing for `heartbeat`; its
    /// `last_tx` is then advanced).
    pub fn received(&mut self, now: Instant, peer: &NodeId, heartbeat: core::time::Duration) -> Option<bool> {
        self.receive(now, peer, heartbeat).map(|(answer, _)| answer)
    }

    /// [`ConnTable::received`], and whether the link is pinned.
    #[inline]
    fn receive(&mut self, now: Instant, peer: &NodeId, heartbeat: core::time::Duration) -> Option<(bool, bool)> {
        let s = self.slot(peer)?;
        let l = &mut self.slab[s as usize];
        if l.state != LinkState::Open {
            return None;
        }
        l.last_rx = now;
        let pinned = l.pins != 0;
        let follows = pinned && l.pins & LEADS == 0;
        let answer = follows && l.last_tx + heartbeat <= now;
        if answer {
            l.last_tx = now;
        }
        self.touch_slot(s);
        Some((answer, pinned))
    }

    /// [`ConnTable::received`] for the frames of one read, all from `peer` at `now`: once a frame
    /// was received on a pinned link (no place in the LRU to keep), another one changes nothing
    /// while no link or pin changed, and is answered from `memo` without a lookup. Returns what
    /// `received` returns.
    #[inline]
    pub fn received_again(
        &mut self,
        now: Instant,
        peer: &NodeId,
        heartbeat: core::time::Duration,
        memo: &mut Option<Received>,
    ) -> Option<bool> {
        if let Some(m) = memo {
            if m.at == now && m.changes == self.changes && m.peer == *peer {
                // `received` again at the same time would answer no (it answered once, or found
                // no reason to) and change nothing: `last_rx` is `now`, and a pinned link keeps
                // no LRU place.
                return Some(false);
            }
        }
        let (answer, pinned) = self.receive(now, peer, heartbeat)?;
        *memo = (pinned && !heartbeat.is_zero()).then_some(Received { peer: *peer, at: now, changes: self.changes });
        Some(answer)
    }

    /// The link is gone (closed by the peer, failed, or closed by us).
    pub fn remove(&mut self, peer: &NodeId) -> bool {
        let s = if self.big {
            let Some(s) = self.index.remove(&Key(*peer)) else { return false };
            s
        } else {
            let Some(s) = self.slot(peer) else { return false };
            self.small[s as usize] = 0;
            s
        };
        if self.slab[s as usize].pins == 0 {
            self.lru_unlink(s);
        }
        self.slab.remove(s as usize);
        self.changes += 1;
        true
    }

    pub fn pin(&mut self, now: Instant, peer: NodeId, pin: Pin) {
        let Some(s) = self.slot(&peer) else { return };
        if self.slab[s as usize].pins == 0 {
            self.lru_unlink(s);
        }
        self.pinned_since_tick = true;
        self.changes += 1;
        let l = &mut self.slab[s as usize];
        l.pins |= pin as u8;
        // A relation starts now: silence is measured from here.
        l.last_rx = l.last_rx.max(now);
    }

    pub fn unpin(&mut self, peer: &NodeId, pin: Pin) {
        let Some(s) = self.slot(peer) else { return };
        let was = self.slab[s as usize].pins;
        let now_pins = was & !(pin as u8);
        self.changes += 1;
        self.slab[s as usize].pins = now_pins;
        if was != 0 && now_pins == 0 {
            self.lru_push_tail(s);
            self.sweep_wanted = true;
        }
    }

    /// Close `peer` now if nothing keeps it: no pin and nothing waiting to be sent.
    pub fn release(&mut self, peer: &NodeId, out: &mut Outbox) {
        let Some(s) = self.slot(peer) else { return };
        let l = &self.slab[s as usize];
        if l.pins == 0 && l.pending.is_empty() {
            self.remove(peer);
            out.push_back(Output::Close(*peer));
        }
    }

    /// Close unpinned links idle for `idle`; returns when the next one would expire.
    pub fn sweep(&mut self, now: Instant, idle: core::time::Duration, out: &mut Outbox) -> Option<Instant> {
        self.sweep_wanted = false;
        let mut next: Option<Instant> = None;
        let mut s = self.lru_head;
        let mut expired: Vec<NodeId> = Vec::new();
        while s != NIL {
            let l = &self.slab[s as usize];
            let deadline = l.last_rx.max(l.last_tx) + idle;
            if deadline <= now {
                expired.push(l.peer);
            } else {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            }
            s = l.next;
        }
        for peer in expired {
            self.remove(&peer);
            out.push_back(Output::Close(peer));
        }
        next
    }

    /// Heartbeat bookkeeping over pinned open links: peers silent past `dead_after` go in
    /// `dead`. On links we *lead* (to our children, and a root's link to the controller), peers
    /// we have not written to for `heartbeat` go in `quiet` (their `last_tx` is advanced: the
    /// caller sends them a heartbeat). On links we *follow* (to our parent, and the controller's
    /// link to the root) we only answer: see [`ConnTable::received`]. Returns the next deadline.
    pub fn liveness(
        &mut self,
        now: Instant,
        heartbeat: core::time::Duration,
        dead_after: core::time::Duration,
        dead: &mut Vec<NodeId>,
        quiet: &mut Vec<NodeId>,
    ) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for (_, l) in self.slab.iter_mut() {
            if l.pins == 0 {
                continue;
            }
            if l.state != LinkState::Open {
                // Look again soon: once open, it is due its heartbeats.
                let due = now + heartbeat;
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            if l.last_rx + dead_after <= now {
                dead.push(l.peer);
                continue;
            }
            let lead = l.pins & LEADS != 0;
            if lead && l.last_tx + heartbeat <= now {
                quiet.push(l.peer);
                l.last_tx = now;
            }
            let due = if lead { (l.last_tx + heartbeat).min(l.last_rx + dead_after) } else { l.last_rx + dead_after };
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        // Deterministic order whatever the slab's layout.
        dead.sort_unstable();
        quiet.sort_unstable();
        next
    }
}

/// A frame received on a pinned link, for [`ConnTable::received_again`]: from whom, when, and
/// at which count of the table's changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Received {
    peer: NodeId,
    at: Instant,
    changes: u64,
}

/// Pins whose links we lead with heartbeats (the other end answers).
const LEADS: u8 = Pin::Child as u8 | Pin::Controller as u8;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FramePool;
    use core::time::Duration;

    fn id(i: u32) -> NodeId {
        NodeId::loopback(i, 1)
    }

    fn frame() -> Frame {
        FramePool::default().encode(&Message::Tree(TreeMsg::Remove), 64).unwrap()
    }

    /// The peer of an eviction at the front of `out`: a `Closing` frame to it, then its close.
    fn evicted(out: &mut Outbox) -> Option<NodeId> {
        let to = match out.pop_front()? {
            Output::Transmit { to, frame } => {
                assert_eq!(Message::decode(frame.payload()), Ok(Message::Tree(TreeMsg::Closing)));
                to
            }
            other => panic!("an eviction starts with its Closing frame, not {other:?}"),
        };
        assert_eq!(out.pop_front(), Some(Output::Close(to)), "the Closing frame, then the close");
        Some(to)
    }

    fn open(t: &mut ConnTable, i: u32, out: &mut Outbox, st: &mut Stats) -> Admit {
        t.connected(Instant::ZERO, id(i), out, st)
    }

    #[test]
    fn frames_of_one_read_skip_the_lookup_only_on_a_pinned_unchanged_link() {
        let (mut out, mut st) = (Outbox::default(), Stats::default());
        let hb = Duration::from_secs(1);
        let mut t = ConnTable::new(2);
        for i in 0..2 {
            assert_eq!(open(&mut t, i, &mut out, &mut st), Admit::Ok);
        }
        let now = Instant::from_millis(5);
        // Unpinned: every frame touches the link, so the LRU order follows the frames.
        let mut memo = None;
        assert_eq!(t.received_again(now, &id(0), hb, &mut memo), Some(false));
        assert_eq!(memo, None, "no memo for an unpinned link");
        assert!(t.received(now, &id(1), hb).is_some());
        assert_eq!(t.received_again(now, &id(0), hb, &mut memo), Some(false));
        out.clear();
        assert_eq!(open(&mut t, 2, &mut out, &mut st), Admit::Ok);
        assert_eq!(evicted(&mut out), Some(id(1)), "link 0 was used last, link 1 goes");
        // Pinned: the memo answers while nothing changes, and is dropped when a pin changes.
        t.pin(now, id(0), Pin::Parent);
        let mut memo = None;
        assert_eq!(t.received_again(now, &id(0), hb, &mut memo), Some(false));
        assert!(memo.is_some());
        assert_eq!(t.received_again(now, &id(0), hb, &mut memo), Some(false));
        t.unpin(&id(0), Pin::Parent);
        t.remove(&id(0));
        assert_eq!(t.received_again(now, &id(0), hb, &mut memo), None, "the link is gone: the memo is not used");
    }

    #[test]
    fn at_the_budget_the_least_recently_used_unpinned_link_goes_first() {
        let (mut out, mut st) = (Outbox::default(), Stats::default());
        let mut t = ConnTable::new(3);
        for i in 0..3 {
            assert_eq!(open(&mut t, i, &mut out, &mut st), Admit::Ok);
        }
        t.pin(Instant::ZERO, id(0), Pin::Parent);
        // Use link 1: link 2 is now the least recently used unpinned one.
        assert!(t.received(Instant::from_millis(5), &id(1), Duration::from_secs(1)).is_some());
        out.clear();
        assert_eq!(open(&mut t, 3, &mut out, &mut st), Admit::Ok);
        assert_eq!(evicted(&mut out), Some(id(2)));
        assert_eq!(st.evictions, 1);
        assert_eq!(t.len(), 3);
        assert!(t.state(&id(0)).is_some(), "the pinned link stays");
    }

    #[test]
    fn a_pinned_link_is_never_evicted_and_a_full_table_of_pins_refuses() {
        let (mut out, mut st) = (Outbox::default(), Stats::default());
        let mut t = ConnTable::new(2);
        open(&mut t, 0, &mut out, &mut st);
        open(&mut t, 1, &mut out, &mut st);
        t.pin(Instant::ZERO, id(0), Pin::Parent);
        t.pin(Instant::ZERO, id(1), Pin::Child);
        out.clear();
        assert_eq!(t.send(Instant::ZERO, id(5), frame(), 8, &mut out, &mut st), Admit::Refused);
        assert_eq!(open(&mut t, 6, &mut out, &mut st), Admit::Refused);
        assert!(out.is_empty(), "nothing was closed");
        assert_eq!(st.links_refused, 2);
        // Unpinning makes the link evictable again.
        t.unpin(&id(1), Pin::Child);
        assert_eq!(open(&mut t, 6, &mut out, &mut st), Admit::Ok);
        assert_eq!(evicted(&mut out), Some(id(1)));
    }

    #[test]
    fn a_connecting_link_with_queued_frames_is_not_evicted() {
        let (mut out, mut st) = (Outbox::default(), Stats::default());
        let mut t = ConnTable::new(1);
        assert_eq!(t.send(Instant::ZERO, id(1), frame(), 8, &mut out, &mut st), Admit::Ok);
        assert_eq!(t.send(Instant::ZERO, id(2), frame(), 8, &mut out, &mut st), Admit::Refused);
    }

    #[test]
    fn liveness_sends_heartbeats_on_quiet_links_and_finds_silent_ones() {
        let (mut out, mut st) = (Outbox::default(), Stats::default());
        let mut t = ConnTable::new(8);
        open(&mut t, 1, &mut out, &mut st);
        open(&mut t, 2, &mut out, &mut st);
        open(&mut t, 3, &mut out, &mut st);
        t.pin(Instant::ZERO, id(1), Pin::Child);
        t.pin(Instant::ZERO, id(2), Pin::Child);
        let (hb, dead_after) = (Duration::from_secs(1), Duration::from_secs(3));
        t.received(Instant::from_millis(2500), &id(2), hb);
        let (mut dead, mut quiet) = (Vec::new(), Vec::new());
        let next = t.liveness(Instant::from_millis(3000), hb, dead_after, &mut dead, &mut quiet);
        assert_eq!(dead, vec![id(1)], "silent for 3 s");
        assert_eq!(quiet, vec![id(2)], "alive but we sent nothing for a second");
        assert_eq!(next, Some(Instant::from_millis(4000)));
    }

    #[test]
    fn on_a_link_to_the_parent_we_answer_instead_of_leading() {
        let (mut out, mut st) = (Outbox::default(), Stats::default());
        let mut t = ConnTable::new(8);
        open(&mut t, 1, &mut out, &mut st);
        t.pin(Instant::ZERO, id(1), Pin::Parent);
        let hb = Duration::from_secs(1);
        let (mut dead, mut quiet) = (Vec::new(), Vec::new());
        assert_eq!(t.received(Instant::from_millis(1500), &id(1), hb), Some(true), "answer: quiet for 1.5 s");
        let next = t.liveness(Instant::from_millis(1500), hb, Duration::from_secs(3), &mut dead, &mut quiet);
        assert!(quiet.is_empty() && dead.is_empty(), "a follower does not lead");
        assert_eq!(next, Some(Instant::from_millis(4500)), "only the silence deadline");
        assert_eq!(t.received(Instant::from_millis(1600), &id(1), hb), Some(false), "once per interval");
        assert_eq!(t.received(Instant::from_millis(2600), &id(1), hb), Some(true));
        assert_eq!(t.received(Instant::from_millis(2600), &id(9), hb), None, "no link");
    }

    #[test]
    fn links_iterate_in_peer_order_whatever_the_hash_index() {
        let (mut out, mut st) = (Outbox::default(), Stats::default());
        let mut t = ConnTable::new(64);
        for i in [7, 3, 40, 1, 12, 0, 25] {
            open(&mut t, i, &mut out, &mut st);
        }
        t.remove(&id(12));
        let peers: Vec<NodeId> = t.iter().map(|(p, _, _)| *p).collect();
        assert_eq!(peers, [0, 1, 3, 7, 25, 40].map(id));
        assert_eq!(t.pins(&id(12)), 0);
        assert!(t.received(Instant::ZERO, &id(40), Duration::from_secs(1)).is_some());
        assert!(t.received(Instant::ZERO, &id(12), Duration::from_secs(1)).is_none(), "removed");
    }

    #[test]
    fn lookups_hold_across_the_switch_from_inline_keys_to_the_hash_index() {
        let (mut out, mut st) = (Outbox::default(), Stats::default());
        let mut t = ConnTable::new(64);
        for i in 0..SMALL as u32 {
            open(&mut t, i, &mut out, &mut st);
        }
        t.remove(&id(3));
        assert!(!t.big, "a freed slot is reused before a new one is taken");
        open(&mut t, 100, &mut out, &mut st);
        assert!(!t.big);
        assert_eq!(t.state(&id(3)), None, "removed");
        open(&mut t, 101, &mut out, &mut st);
        assert!(t.big, "slot {SMALL} is past the inline keys");
        for i in (0..SMALL as u32).filter(|&i| i != 3).chain([100, 101]) {
            assert_eq!(t.state(&id(i)), Some(LinkState::Open), "peer {i}");
        }
        assert_eq!(t.len(), SMALL + 1);
        assert!(t.remove(&id(100)));
        assert!(!t.remove(&id(100)));
        assert_eq!(t.state(&id(100)), None);
        assert_eq!(t.state(&id(3)), None);
    }

    #[test]
    fn sweep_closes_only_idle_unpinned_links() {
        let (mut out, mut st) = (Outbox::default(), Stats::default());
        let mut t = ConnTable::new(8);
        open(&mut t, 1, &mut out, &mut st);
        open(&mut t, 2, &mut out, &mut st);
        t.pin(Instant::ZERO, id(1), Pin::Parent);
        out.clear();
        let next = t.sweep(Instant::from_millis(10_000), Duration::from_secs(10), &mut out);
        assert_eq!(out.pop_front(), Some(Output::Close(id(2))));
        assert_eq!(next, None);
        assert_eq!(t.len(), 1);
    }
}
