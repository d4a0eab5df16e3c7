//! [`Ctx`]: the context every protocol handler runs in, and [`Io`], what the protocols share.
//!
//! A handler sends through its `Ctx` ([`Ctx::send`], [`Ctx::relay_down`], [`Ctx::reply_up`]),
//! which encodes into the frame pool, passes the frame to the connection table, and gathers
//! relayed frames into the current batch ([`crate::batch`]). Events for the driver go to the
//! output queue; the few a sibling protocol must hear of (the tree's changes of parent,
//! children and root-ness) are also kept in [`Io::news`], which the node hands to the control
//! plane once the handler returns. Nothing here reads the output queue back.

use crate::batch::{Check, Outbox, Way, REPLY_BYTES};
use crate::config::Config;
use crate::conn::{Admit, ConnTable, Pin};
use crate::contract::{Event, Output, Stats};
use crate::frame::{push_frame, Frame, FramePool, PREFIX};
use crate::id::NodeId;
use crate::time::Instant;
use crate::wire::{Entry, Message, TreeMsg};
use rand_pcg::Pcg32;
use smallvec::SmallVec;

/// What protocol modules share: the output queue, links, buffers, stats.
#[derive(Debug)]
pub(crate) struct Io {
    pub out: Outbox,
    pub conns: ConnTable,
    pub pool: FramePool,
    pub stats: Stats,
    /// Peers whose link the budget refused during the current call; reported to the tree as
    /// failed connects once the call's handler returns. Bound: one entry per send.
    pub refused: SmallVec<[NodeId; 2]>,
    /// What the tree reported during the current call of a change of parent, children or
    /// root-ness, in order, for the node to hand to the control plane (see `Node::tree_news`);
    /// most calls have none. Bound: emptied after every handler; a handler changes its parent,
    /// root-ness and children at most a few times. Room for one inline: more is rare (a join),
    /// and every byte here is a megabyte in a simulator of a million nodes (taken with
    /// `mem::take`, so a spilled list is freed at once).
    pub news: SmallVec<[Event; 1]>,
}

/// The context a protocol handler runs in.
pub(crate) struct Ctx<'a> {
    pub now: Instant,
    pub me: NodeId,
    pub cfg: &'a Config,
    pub rng: &'a mut Pcg32,
    pub io: &'a mut Io,
    /// The latest RanSub views (empty inside RanSub itself).
    pub nondesc: &'a [Entry],
    pub all: &'a [Entry],
    /// The tree's population as RanSub last told it (0: not known yet, or inside RanSub itself).
    pub population: u32,
    /// When RanSub last sent our collect to a parent (`None`: never, or inside RanSub itself).
    pub collected_at: Option<Instant>,
}

impl<'a> Ctx<'a> {
    /// A context without RanSub views (the controller's, and RanSub's own).
    pub fn bare(now: Instant, me: NodeId, cfg: &'a Config, rng: &'a mut Pcg32, io: &'a mut Io) -> Ctx<'a> {
        Ctx { now, me, cfg, rng, io, nondesc: &[], all: &[], population: 0, collected_at: None }
    }

    /// Encode and send one tree message.
    pub fn send(&mut self, to: NodeId, msg: TreeMsg) {
        self.send_msg(to, &Message::Tree(msg));
    }

    /// Encode and send one message of any layer.
    pub fn send_msg(&mut self, to: NodeId, msg: &Message) {
        if to == self.me {
            debug_assert!(false, "a node never sends to itself: {msg:?}");
            return;
        }
        // Our own messages are small; failing to encode one is a bug, not bad input.
        match self.io.pool.encode(msg, self.cfg.max_frame) {
            Ok(frame) => self.send_frame(to, frame),
            Err(e) => debug_assert!(false, "cannot encode our own message: {e:?}"),
        }
    }

    /// Encode once, for sending the same bytes to several peers.
    pub fn encode(&mut self, msg: TreeMsg) -> Option<Frame> {
        self.io.pool.encode(&Message::Tree(msg), self.cfg.max_frame).ok()
    }

    /// Pass `payload` (a frame's, as received) on to every one of `peers`, the tree's children
    /// of `version`: into the batch's down run during a batch, else as one frame they share.
    pub fn relay_down(&mut self, peers: &[NodeId], version: u64, payload: &[u8]) {
        if peers.is_empty() {
            return;
        }
        if let Some(n) = self.io.out.append_down(version, self.now, payload) {
            self.io.stats.frames_out += n as u64;
            return;
        }
        if self.run(Way::Down, peers, version, PREFIX + payload.len()) {
            if let Some(((), n)) = self.io.out.append(Way::Down, |v| push_frame(v, payload)) {
                self.io.stats.frames_out += n as u64;
                return;
            }
        }
        let frame = self.io.pool.copy(payload);
        for &c in peers {
            self.send_frame(c, frame.clone());
        }
    }

    /// Answer broadcast `id` to `to` (the parent). During a batch the answer waits at the end of
    /// the up run, and the answer to a later broadcast replaces it (see [`crate::batch`]).
    pub fn reply_up(&mut self, to: &NodeId, id: u64) {
        if let Some(replaced) = self.io.out.reply_now(to, self.now, id, self.me) {
            self.io.stats.frames_out += u64::from(!replaced);
            return;
        }
        if self.run(Way::Up, core::slice::from_ref(to), 0, REPLY_BYTES) {
            if !self.io.out.reply(id, self.me) {
                self.io.stats.frames_out += 1;
            }
            return;
        }
        self.send(*to, TreeMsg::BroadcastReply { id, node: self.me });
    }

    /// Pass `payload` (a frame's, as received) on to `to`: into the batch's up run during a
    /// batch.
    pub fn relay_up(&mut self, to: NodeId, payload: &[u8]) {
        if self.run(Way::Up, &[to], 0, PREFIX + payload.len())
            && self.io.out.append(Way::Up, |v| push_frame(v, payload)).is_some()
        {
            self.io.stats.frames_out += 1;
            return;
        }
        let frame = self.io.pool.copy(payload);
        self.send_frame(to, frame);
    }

    /// Whether the batch's run `way` to `peers` (the children of `version`, or one peer) is
    /// open with room for `need` bytes, opening it when every link is open.
    #[inline]
    fn run(&mut self, way: Way, peers: &[NodeId], version: u64, need: usize) -> bool {
        let (io, now) = (&mut *self.io, self.now);
        if !io.out.batching() {
            return false;
        }
        match io.out.check(way, peers, version, now, need) {
            Check::Ready => true,
            Check::Touch | Check::Start if !peers.iter().all(|p| io.conns.mark_sent(now, p)) => false,
            Check::Touch => {
                io.out.touched(way, now);
                true
            }
            Check::Start => {
                io.out.start(way, peers, version, now);
                true
            }
        }
    }

    pub fn send_frame(&mut self, to: NodeId, frame: Frame) {
        let Io { conns, out, stats, refused, .. } = &mut *self.io;
        if conns.send(self.now, to, frame, self.cfg.max_pending_frames, out, stats) == Admit::Refused {
            out.push_back(Output::Event(Event::LinkRefused(to)));
            if !refused.contains(&to) {
                refused.push(to);
            }
        }
    }

    pub fn event(&mut self, e: Event) {
        if matches!(
            e,
            Event::ParentChanged(Some(_))
                | Event::BecameRoot
                | Event::StoppedBeingRoot
                | Event::ChildAdded(_)
                | Event::ChildRemoved(_)
        ) {
            self.io.news.push(e.clone());
        }
        self.io.out.push_back(Output::Event(e));
    }

    pub fn pin(&mut self, peer: NodeId, pin: Pin) {
        self.io.conns.pin(self.now, peer, pin);
    }

    pub fn unpin(&mut self, peer: &NodeId, pin: Pin) {
        self.io.conns.unpin(peer, pin);
    }

    /// Whether `peer` was heard from lately: an open link on which a frame came in within two
    /// heartbeat intervals. A tree neighbour that is alive is never quieter than one interval
    /// (the parent sends heartbeats, the child answers them), so one quieter than two is
    /// probably dead, though not yet declared so (`dead_after`).
    pub fn heard_lately(&self, peer: &NodeId) -> bool {
        self.io.conns.last_heard(peer).is_some_and(|t| t + self.cfg.heartbeat * 2 > self.now)
    }

    /// Close the link to `peer` if nothing keeps it.
    pub fn release(&mut self, peer: &NodeId) {
        let Io { conns, out, .. } = &mut *self.io;
        conns.release(peer, out);
    }

    /// Close the link to `peer` after what was sent on it.
    pub fn close(&mut self, peer: &NodeId) {
        if self.io.conns.remove(peer) {
            self.io.out.push_back(Output::Close(*peer));
        }
    }
}
