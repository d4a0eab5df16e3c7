//! The connection table: every link the node has, its state, its activity and why it is kept.
//!
//! A link is *pinned* while it carries a tree relation (parent, child) or the controller link;
//! pinned links are never closed for idleness. Unpinned links (a joiner's first contact, a probe)
//! are closed once idle for [`crate::Config::link_idle`].
//!
//! Frames sent to a peer without an open link start a connection and wait in the link's pending
//! queue, at most [`crate::Config::max_pending_frames`] of them; more are dropped and counted.

use crate::id::NodeId;
use crate::node::{Output, Stats};
use crate::time::Instant;
use crate::wire::Frame;
use std::collections::VecDeque;

/// Why a link is kept open. A link may have several reasons at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Pin {
    /// The peer is our parent.
    Parent = 1,
    /// The peer is one of our children.
    Child = 2,
    /// The peer is the controller, or the root we keep for the controller.
    Controller = 4,
}

/// Where a link stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// `Output::Connect` was emitted; frames wait in the pending queue.
    Connecting,
    /// The driver reported the link up.
    Open,
}

#[derive(Debug)]
pub(crate) struct Link {
    pub state: LinkState,
    pub pins: u8,
    pub last_active: Instant,
    pending: Vec<Frame>,
}

/// All links of one node, kept sorted by peer (deterministic iteration, binary search).
///
/// Bound: one entry per peer. Entries are created by our own sends and by the driver's reports of
/// incoming links, and removed on close; idle unpinned ones are swept (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct ConnTable {
    links: Vec<(NodeId, Link)>,
    /// Set when an unpinned link may exist, so the node arms its sweep timer.
    pub sweep_wanted: bool,
}

impl ConnTable {
    pub fn len(&self) -> usize {
        self.links.len()
    }

    fn get(&self, peer: &NodeId) -> Option<&Link> {
        self.links.binary_search_by(|(p, _)| p.cmp(peer)).ok().map(|i| &self.links[i].1)
    }

    fn get_mut(&mut self, peer: &NodeId) -> Option<&mut Link> {
        match self.links.binary_search_by(|(p, _)| p.cmp(peer)) {
            Ok(i) => Some(&mut self.links[i].1),
            Err(_) => None,
        }
    }

    fn get_or_insert(&mut self, peer: NodeId, make: impl FnOnce() -> Link) -> &mut Link {
        let i = match self.links.binary_search_by(|(p, _)| p.cmp(&peer)) {
            Ok(i) => i,
            Err(i) => {
                self.links.insert(i, (peer, make()));
                i
            }
        };
        &mut self.links[i].1
    }

    pub fn state(&self, peer: &NodeId) -> Option<LinkState> {
        self.get(peer).map(|l| l.state)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, LinkState, u8)> {
        self.links.iter().map(|(p, l)| (p, l.state, l.pins))
    }

    /// Send `frame` to `peer`, connecting first if needed.
    pub fn send(
        &mut self,
        now: Instant,
        peer: NodeId,
        frame: Frame,
        max_pending: usize,
        out: &mut VecDeque<Output>,
        stats: &mut Stats,
    ) {
        match self.get_mut(&peer) {
            Some(link) if link.state == LinkState::Open => {
                link.last_active = now;
                stats.frames_out += 1;
                out.push_back(Output::Transmit { to: peer, frame });
            }
            Some(link) => {
                if link.pending.len() < max_pending {
                    link.pending.push(frame);
                } else {
                    stats.pending_dropped += 1;
                }
            }
            None => {
                self.get_or_insert(peer, || Link {
                    state: LinkState::Connecting,
                    pins: 0,
                    last_active: now,
                    pending: vec![frame],
                });
                self.sweep_wanted = true;
                out.push_back(Output::Connect(peer));
            }
        }
    }

    /// The driver reports the link up (ours, or one the peer opened): flush what waited.
    pub fn connected(&mut self, now: Instant, peer: NodeId, out: &mut VecDeque<Output>, stats: &mut Stats) {
        let link = self.get_or_insert(peer, || Link {
            state: LinkState::Connecting,
            pins: 0,
            last_active: now,
            pending: Vec::new(),
        });
        let unpinned = link.pins == 0;
        link.state = LinkState::Open;
        link.last_active = now;
        for frame in link.pending.drain(..) {
            stats.frames_out += 1;
            out.push_back(Output::Transmit { to: peer, frame });
        }
        link.pending = Vec::new();
        if unpinned {
            self.sweep_wanted = true;
        }
    }

    /// Activity on a link (a frame arrived).
    pub fn touch(&mut self, now: Instant, peer: &NodeId) -> bool {
        match self.get_mut(peer) {
            Some(l) if l.state == LinkState::Open => {
                l.last_active = now;
                true
            }
            _ => false,
        }
    }

    /// The link is gone (closed by the peer, failed, or closed by us).
    pub fn remove(&mut self, peer: &NodeId) -> bool {
        match self.links.binary_search_by(|(p, _)| p.cmp(peer)) {
            Ok(i) => {
                self.links.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    pub fn pin(&mut self, now: Instant, peer: NodeId, pin: Pin) {
        if let Some(l) = self.get_mut(&peer) {
            l.pins |= pin as u8;
            l.last_active = now;
        }
    }

    pub fn unpin(&mut self, peer: &NodeId, pin: Pin) {
        if let Some(l) = self.get_mut(peer) {
            l.pins &= !(pin as u8);
            if l.pins == 0 {
                self.sweep_wanted = true;
            }
        }
    }

    /// Close `peer` now if nothing keeps it: no pin and nothing waiting to be sent.
    pub fn release(&mut self, peer: &NodeId, out: &mut VecDeque<Output>) {
        if self.get(peer).is_some_and(|l| l.pins == 0 && l.pending.is_empty()) {
            self.remove(peer);
            out.push_back(Output::Close(*peer));
        }
    }

    /// Close unpinned links idle for `idle`; returns when the next one would expire.
    pub fn sweep(&mut self, now: Instant, idle: core::time::Duration, out: &mut VecDeque<Output>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        self.links.retain(|(peer, l)| {
            if l.pins != 0 {
                return true;
            }
            let deadline = l.last_active + idle;
            if deadline <= now {
                out.push_back(Output::Close(*peer));
                false
            } else {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
                true
            }
        });
        self.sweep_wanted = false;
        next
    }
}
