//! Transfers: a file pushed down the tree in chunks, pipelined and resumable.
//!
//! **The protocol.** A push is a job of kind [`JobKind::Push`](crate::wire::JobKind::Push): its
//! `Run` carries the file's [`PushSpec`] (path, mode, size, SHA-256) and floods down the tree
//! like any job. Every member, target or not, opens storage for it ([`Output::PushOpen`]). A
//! target asks its parent at once with `ChunkAck { next: have, resume: true }`: "send me chunks
//! from `have` on"; a relay (not a target) asks only once one of its children asks, so a push
//! to a few hosts streams through their ancestors only. An upgrade push
//! ([`PushSpec::upgrade`]) to a node that already runs its build succeeds at once there and
//! fetches nothing for it. A parent (the controller, for the root) keeps one *feed* per child that asked:
//! the next chunk to send and the last acknowledged one, and never has more than
//! [`crate::Config::push_window`] chunks in flight to a child. A chunk that arrives in order is
//! stored ([`Output::PushWrite`]), acknowledged up (`ChunkAck { resume: false }`), and its very
//! bytes are forwarded at once to every child that is waiting for exactly it; a child that is
//! behind is served from the parent's storage ([`Output::PushSend`]) as its acknowledgements
//! come back. So a node forwards while it receives (never store-then-forward), and a slow child
//! slows only itself.
//!
//! **Resume.** Chunks arrive in order, so a node's progress is one number, `have`. A node that
//! gets a new parent (a repair, or the root failing over) sends it `ChunkAck { next: have,
//! resume: true }` and the new parent feeds it from there, once it holds those chunks itself;
//! the node's subtree keeps its own progress and notices nothing. Nothing starts over.
//!
//! **Results.** Once every chunk is stored a target asks its driver to verify the digest and
//! install the file atomically ([`Output::PushDone`]); the driver answers like a process
//! (the error text as output, then an exit status), and the result travels up merged like any
//! job's result: one group for every host that succeeded, one per distinct error.
//!
//! Bounds: one feed per child (at most [`crate::Config::max_children`], and feeds of departed
//! children are dropped); at most `push_window` chunks in flight per feed; a chunk out of order
//! is dropped and counted in [`crate::Stats::chunks_dropped`].

use crate::contract::Output;
use crate::ctx::Ctx;
use crate::id::NodeId;
use crate::wire::{JobMsg, Message, PushSpec};
use smallvec::SmallVec;

/// What a parent knows of one child's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Feed {
    pub to: NodeId,
    /// The next chunk to send it.
    pub sent: u32,
    /// Every chunk before this one reached it.
    pub acked: u32,
}

/// A transfer's state at one node (or, with `have == n`, at the controller, its source).
#[derive(Clone, Debug)]
pub(crate) struct Xfer {
    /// Chunks in the file.
    pub n: u32,
    /// Chunks stored here: `0..have`.
    pub have: u32,
    /// One per child being fed. See the module docs for the bound.
    pub feeds: SmallVec<[Feed; 4]>,
    /// We asked our parent for chunks. A target asks at once; a relay only once a child asks
    /// it, so a push flows only along the paths to its targets.
    pub asked: bool,
}

impl Xfer {
    /// A transfer of `spec` with `have` chunks at hand; `None` for a spec with an unusable
    /// chunk size.
    pub fn new(spec: &PushSpec, source: bool) -> Option<Xfer> {
        let n = spec.chunks()?;
        Some(Xfer { n, have: if source { n } else { 0 }, feeds: SmallVec::new(), asked: source })
    }

    pub fn complete(&self) -> bool {
        self.have >= self.n
    }

    /// `ChunkAck` from `from` (a child, or the root at the controller).
    pub fn on_ack(&mut self, ctx: &mut Ctx<'_>, job: u64, from: NodeId, next: u32, resume: bool) {
        let next = next.min(self.n);
        let k = match self.feeds.iter().position(|f| f.to == from) {
            Some(k) => k,
            None => {
                if !resume {
                    // An acknowledgement for chunks we never sent it (a feed we dropped): it asks
                    // again with `resume` when it attaches.
                    return;
                }
                self.feeds.push(Feed { to: from, sent: next, acked: next });
                self.feeds.len() - 1
            }
        };
        let f = &mut self.feeds[k];
        if resume && !(f.acked..=f.sent).contains(&next) {
            // It holds more than we sent it (fed by another parent before), or less than it
            // acknowledged (it restarted): start from where it is.
            f.sent = next;
            f.acked = next;
        } else {
            // An acknowledgement; a repeated `resume` on a link that never broke (a feed is
            // dropped with its link) is one too: re-sending what is in flight would double it.
            f.acked = f.acked.max(next).min(f.sent);
        }
        self.pump(ctx, job, k);
    }

    /// Send feed `k` what it may have from storage.
    fn pump(&mut self, ctx: &mut Ctx<'_>, job: u64, k: usize) {
        let window = ctx.cfg.push_window.max(1);
        let f = &mut self.feeds[k];
        while f.sent < self.have && f.sent < f.acked.saturating_add(window) {
            ctx.io.out.push_back(Output::PushSend { to: f.to, job, index: f.sent });
            f.sent += 1;
        }
    }

    /// Chunk `index` arrived from above. False (and nothing done) if it is not the next one.
    /// Otherwise the raw payload goes at once to every feed waiting for exactly this chunk
    /// with room in its window, the data to storage, and an acknowledgement up.
    pub fn on_chunk(
        &mut self,
        ctx: &mut Ctx<'_>,
        job: u64,
        index: u32,
        data: Vec<u8>,
        raw: &[u8],
        up: Option<NodeId>,
    ) -> bool {
        if index != self.have || self.complete() {
            ctx.io.stats.chunks_dropped += 1;
            return false;
        }
        self.have += 1;
        ctx.io.stats.chunks_stored += 1;
        let window = ctx.cfg.push_window.max(1);
        let mut frame = None;
        for f in self.feeds.iter_mut() {
            if f.sent == index && index < f.acked.saturating_add(window) {
                let fr = frame.get_or_insert_with(|| ctx.io.pool.copy(raw)).clone();
                ctx.send_frame(f.to, fr);
                f.sent += 1;
            }
        }
        ctx.io.out.push_back(Output::PushWrite { job, index, data });
        if let Some(up) = up {
            ctx.send_msg(up, &Message::Job(JobMsg::ChunkAck { job, next: self.have, resume: false }));
        }
        true
    }

    /// Ask `up` for what is missing, from scratch (a new parent, or a new job).
    pub fn ask(&mut self, ctx: &mut Ctx<'_>, job: u64, up: NodeId) {
        self.asked = true;
        ctx.send_msg(up, &Message::Job(JobMsg::ChunkAck { job, next: self.have, resume: true }));
    }

    pub fn drop_feed(&mut self, peer: &NodeId) {
        self.feeds.retain(|f| f.to != *peer);
    }
}
