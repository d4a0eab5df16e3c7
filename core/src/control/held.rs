//! What a node holds of a job's results on their way up: the groups (`Held`, one per distinct
//! status and output, shared between the held and the unsent copies), the upward queue of each
//! job (`Upward`: live output, blobs and results in order, within the output window), and the
//! large outputs received in chunks (`Blobs`). Bounds are stated on each type.

use super::*;
use crate::ctx::Ctx;
use crate::id::NodeId;
use crate::nodeset::NodeSet;
use crate::tree::Tree;
use crate::wire::{BlobRef, ExitStatus, Group, JobMsg, List, Message};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::rc::Rc;

/// A result group held by a node: the output is shared between the held and unsent copies.
#[derive(Clone, Debug)]
pub(super) struct Held {
    pub(super) status: ExitStatus,
    pub(super) truncated: bool,
    /// stdout, then stderr.
    pub(super) content: Rc<Vec<u8>>,
    /// Where stderr starts in `content`.
    pub(super) split: usize,
    /// [`digest_of`] the content: equal digests, equal outputs.
    pub(super) digest: [u8; 32],
    pub(super) nodes: NodeSet,
}

/// SHA-256 of stdout's length (8 bytes, little-endian), stdout and stderr: the name of an
/// output ([`BlobRef::digest`]).
pub fn digest_of(stdout: &[u8], stderr: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update((stdout.len() as u64).to_le_bytes());
    h.update(stdout);
    h.update(stderr);
    h.finalize().into()
}

impl Held {
    pub(super) fn new(status: ExitStatus, truncated: bool, stdout: &[u8], stderr: &[u8], nodes: NodeSet) -> Held {
        let mut content = Vec::with_capacity(stdout.len() + stderr.len());
        content.extend_from_slice(stdout);
        content.extend_from_slice(stderr);
        Held::of_content(status, truncated, Rc::new(content), stdout.len(), nodes)
    }

    /// [`Held::new`] taking stdout's buffer: a large output is not copied (nor held twice).
    pub(super) fn owned(
        status: ExitStatus,
        truncated: bool,
        mut stdout: Vec<u8>,
        stderr: &[u8],
        nodes: NodeSet,
    ) -> Held {
        let split = stdout.len();
        stdout.extend_from_slice(stderr);
        stdout.shrink_to_fit();
        Held::of_content(status, truncated, Rc::new(stdout), split, nodes)
    }

    pub(super) fn of_content(
        status: ExitStatus,
        truncated: bool,
        content: Rc<Vec<u8>>,
        split: usize,
        nodes: NodeSet,
    ) -> Held {
        let split = split.min(content.len());
        let digest = digest_of(&content[..split], &content[split..]);
        Held { status, truncated, content, split, digest, nodes }
    }

    /// Same status, truncation and output (by digest).
    pub(super) fn same(&self, other: &Held) -> bool {
        self.status == other.status && self.truncated == other.truncated && self.digest == other.digest
    }

    pub(super) fn blob_ref(&self) -> BlobRef {
        BlobRef { digest: self.digest, stdout_len: self.split as u64, len: self.content.len() as u64 }
    }

    /// The group as it travels: inline, or naming its blob.
    pub(super) fn group(&self) -> Group {
        if self.content.len() <= INLINE_OUTPUT {
            Group {
                status: self.status,
                truncated: self.truncated,
                output: self.content[..self.split].to_vec(),
                nodes: self.nodes.clone(),
                stderr: self.content[self.split..].to_vec(),
                blob: None,
            }
        } else {
            Group {
                status: self.status,
                truncated: self.truncated,
                output: Vec::new(),
                nodes: self.nodes.clone(),
                stderr: Vec::new(),
                blob: Some(self.blob_ref()),
            }
        }
    }
}

/// Something a node sends up for a job, in order. `Output` and `Blob` count against the
/// link's output window ([`crate::Config::output_window`]); `Results` do not, but wait their
/// turn behind them (so the blobs they name, and the live output before them, arrive first).
#[derive(Debug)]
pub(super) enum UpItem {
    /// Live output of `node`; `from`: the child it came from (acknowledged once this is sent
    /// up), `None` for our own.
    Output { node: NodeId, err: bool, bytes: Vec<u8>, from: Option<NodeId> },
    /// A large output, sent in [`BLOB_CHUNK`] chunks from `offset` on.
    Blob { digest: [u8; 32], content: Rc<Vec<u8>>, offset: usize },
    /// Result groups.
    Results { groups: Vec<Group>, complete: bool },
}

/// Windowed items sent up and not acknowledged, oldest first: (whose live output, `None` for a
/// blob chunk; bytes not acknowledged).
pub(super) type InFlight = VecDeque<(Option<NodeId>, u64)>;

/// A job's output on its way up, and the blobs received from below.
///
/// Bounds: `queue` holds at most our own unsent output (the driver stops reading our pipes
/// once any waits, so at most what it read before it heard: see the driver) plus each child's
/// window (a child's output is acknowledged only once passed on), plus result groups, which
/// are bounded by [`MAX_GROUPS`]; `partial` at most [`MAX_PARTIAL_BLOBS`].
#[derive(Debug, Default)]
pub(super) struct Upward {
    pub(super) queue: VecDeque<UpItem>,
    /// Windowed bytes sent up and not acknowledged yet.
    pub(super) inflight: u64,
    /// The same, item by item, oldest first: (whose live output, `None` for a blob chunk;
    /// bytes not acknowledged). At most a window's worth of items.
    pub(super) sent: InFlight,
    /// Who `sent` went to: the way up when it was sent.
    pub(super) sent_to: Option<NodeId>,
    /// What was in flight to a former way up whose link was still open when the way up
    /// changed: (that node, items as in `sent`). It arrives there and is passed on (any member
    /// passes on output from below, the controller takes it from anyone); its acknowledgements
    /// come from there. If that link fails first, the streams say what may be missing. At most
    /// one former way up (with two, the older one's items are called missing at once) and a
    /// window's worth of items.
    pub(super) behind: Option<(NodeId, InFlight)>,
    /// Bytes of our own live output waiting in `queue`.
    pub(super) own_queued: u64,
    /// The driver was told to stop reading our process's output.
    pub(super) paused: bool,
    /// Blobs sent to the current way up.
    pub(super) sent_blobs: Vec<[u8; 32]>,
    /// Blobs received from below.
    pub(super) blobs: Blobs,
    /// Blob bytes received from children and not acknowledged yet ([`BLOB_BACKLOG`]). At most
    /// one entry per child.
    pub(super) deferred: Vec<(NodeId, u64)>,
    /// (child, digest): the child sent chunks of this blob (kept, or dropped as a copy of one
    /// here) and its group naming it has not come yet, so the blob is kept for it even once
    /// other results naming it are acknowledged. At most [`MAX_AWAITING`], oldest dropped.
    pub(super) awaiting: VecDeque<(NodeId, [u8; 32])>,
}

impl Upward {
    /// Live output that was sent up and may not have got through (`items` as in `sent`): the
    /// stream of each node says so where it stands now, never silently. Blob chunks are sent
    /// again from what is held.
    pub(super) fn note_cut(&mut self, items: impl IntoIterator<Item = (Option<NodeId>, u64)>) {
        let mut cut: SmallVec<[(NodeId, u64); 4]> = SmallVec::new();
        for (node, n) in items {
            match (node, cut.iter_mut().find(|c| Some(c.0) == node)) {
                (Some(_), Some(c)) => c.1 += n,
                (Some(node), None) => cut.push((node, n)),
                (None, _) => {}
            }
        }
        for (node, n) in cut.into_iter().rev() {
            let bytes = format!("{OUTPUT_CUT_PREFIX}{n} bytes of output may be missing here (a link broke)\n");
            self.own_queued += bytes.len() as u64;
            self.queue.push_front(UpItem::Output { node, err: true, bytes: bytes.into_bytes(), from: None });
        }
    }

    /// The way up changed to `up`. What was in flight on a link that failed was called
    /// missing when it failed ([`Upward::link_lost`]); what is left went on a link that is still
    /// open, or that we closed ourselves after writing to it, and arrives. Still in flight to
    /// `up` itself, it stays counted; to a former way up whose link is `open`, it waits aside
    /// for that node's acknowledgements (`behind`); on a link we closed, it is done with.
    pub(super) fn way_up_changed(&mut self, up: NodeId, open: impl Fn(&NodeId) -> bool) {
        let mut back = VecDeque::new();
        if let Some((b, waiting)) = self.behind.take() {
            if b == up {
                back = waiting;
            } else if open(&b) {
                self.behind = Some((b, waiting));
            }
        }
        let items = core::mem::take(&mut self.sent);
        match self.sent_to.take() {
            Some(old) if old == up => self.sent = items,
            Some(old) if open(&old) && !items.is_empty() => {
                if let Some((_, earlier)) = self.behind.replace((old, items)) {
                    // Two former ways up at once: the older one's share is called missing.
                    self.note_cut(earlier);
                }
            }
            _ => {}
        }
        // What waited aside for `up` is in flight to it again, before what we sent it since.
        for item in back.into_iter().rev() {
            self.sent.push_front(item);
        }
        if !self.sent.is_empty() {
            self.sent_to = Some(up);
        }
        self.inflight = self.sent.iter().map(|i| i.1).sum();
    }

    /// The way up acknowledged `bytes`, oldest first.
    pub(super) fn acked(&mut self, bytes: u64) {
        self.inflight = self.inflight.saturating_sub(bytes);
        drain_acked(&mut self.sent, bytes);
    }

    /// `from`, a former way up, acknowledged `bytes` of what we sent it before the change.
    pub(super) fn acked_behind(&mut self, from: NodeId, bytes: u64) {
        let Some((_, items)) = self.behind.as_mut().filter(|(b, _)| *b == from) else { return };
        drain_acked(items, bytes);
        if items.is_empty() {
            self.behind = None;
        }
    }

    /// The link to `peer` failed, or was replaced by a new connection: what was in flight on
    /// it (as our way up, or a former one) may be missing, and the streams say so. Whether
    /// anything was.
    pub(super) fn link_lost(&mut self, peer: &NodeId) -> bool {
        let mut cut = false;
        if self.sent_to == Some(*peer) {
            self.sent_to = None;
            self.inflight = 0;
            let items = core::mem::take(&mut self.sent);
            self.note_cut(items);
            cut = true;
        }
        if self.behind.as_ref().is_some_and(|(b, _)| b == peer) {
            if let Some((_, items)) = self.behind.take() {
                self.note_cut(items);
            }
            cut = true;
        }
        cut
    }

    /// Large-output bytes here that have not gone up: (arriving, waiting in the queue).
    pub(super) fn backlog(&self) -> (u64, u64) {
        let arriving: u64 = self.blobs.partial.iter().map(|p| p.2.len() as u64).sum();
        let queued: u64 = self
            .queue
            .iter()
            .map(|i| match i {
                UpItem::Blob { content, offset, .. } => (content.len() - offset) as u64,
                _ => 0,
            })
            .sum();
        (arriving, queued)
    }

    /// Large outputs of `held` results that are not in the queue up: sent (or about to be),
    /// waiting for the controller's `Ack`.
    pub(super) fn held_only(&self, held: &[Held]) -> u64 {
        let mut seen: SmallVec<[[u8; 32]; 8]> = SmallVec::new();
        let mut n = 0;
        for h in held.iter().filter(|h| h.content.len() > INLINE_OUTPUT) {
            let queued = self.queue.iter().any(|i| matches!(i, UpItem::Blob { digest, .. } if *digest == h.digest));
            if !queued && !seen.contains(&h.digest) {
                seen.push(h.digest);
                n += h.content.len() as u64;
            }
        }
        n
    }

    /// Acknowledge what the backlog allows (see [`BLOB_BACKLOG`]): everything while under it,
    /// else, if all of it is arriving (none waits in the queue up, which drains as the parent
    /// acknowledges, nor only for an `Ack`, which comes by itself), what the sender of the
    /// oldest blob being received is owed.
    pub(super) fn release(&mut self, ctx: &mut Ctx<'_>, tree: &Tree, job: u64, held: &[Held]) {
        if self.deferred.is_empty() {
            return;
        }
        let held = self.held_only(held);
        let (arriving, queued) = self.backlog();
        let first = self.blobs.partial.first().map(|p| p.0).filter(|_| held == 0 && queued == 0);
        let all = arriving + queued + held <= BLOB_BACKLOG;
        self.deferred.retain(|&(c, n)| {
            if !all && Some(c) != first {
                return true;
            }
            if tree.children().contains(&c) {
                ctx.send_msg(c, &Message::Job(JobMsg::OutputAck { job, bytes: n }));
            }
            false
        });
    }
}

/// Blobs received for one job ([`JobMsg::Blob`]). Bounds: at most [`MAX_PARTIAL_BLOBS`] being
/// received; whole ones at most one per distinct output of the job (as many as the result
/// groups they belong to), dropped with the job.
#[derive(Debug, Default)]
pub(crate) struct Blobs {
    /// Being received: (sender, digest, content so far, total), oldest first. Several children
    /// may send the same output at once; each sends its chunks in order.
    pub(super) partial: Vec<(NodeId, [u8; 32], Vec<u8>, u64)>,
    /// Received whole.
    pub(super) whole: Vec<([u8; 32], Rc<Vec<u8>>)>,
    /// At the controller: blobs already split into stdout and stderr for its reports (then no
    /// longer in `whole`), so that each is held once however many groups name it.
    pub(super) split: Vec<([u8; 32], Streams)>,
}

/// stdout and stderr of an output, shared.
pub type Streams = (Rc<Vec<u8>>, Rc<Vec<u8>>);

/// Merge `g` into `groups`; false if it would be a new group and the list is full.
pub(super) fn merge(groups: &mut Vec<Held>, g: &Held) -> bool {
    if let Some(h) = groups.iter_mut().find(|h| h.same(g)) {
        h.nodes.extend(&g.nodes);
        return true;
    }
    if groups.len() >= MAX_GROUPS {
        return false;
    }
    groups.push(g.clone());
    true
}

pub(super) fn remove_acked(groups: &mut Vec<Held>, acked: &NodeSet) {
    for g in groups.iter_mut() {
        g.nodes.remove_all(acked);
    }
    groups.retain(|g| !g.nodes.is_empty());
}

/// Send `groups` as they are (a relay that holds nothing for the job), as one or more
/// `Results` messages each under the frame limit.
pub(super) fn send_groups(ctx: &mut Ctx<'_>, to: NodeId, job: u64, groups: Vec<Group>, complete: bool) {
    let mut batch: Vec<Group> = Vec::new();
    let mut bytes = 0;
    for g in groups {
        let size = g.output.len() + g.stderr.len() + g.nodes.runs() * 24;
        if !batch.is_empty() && (bytes + size > SPLIT_BYTES || batch.len() == crate::wire::MAX_LIST) {
            let msg = JobMsg::Results { job, groups: List(core::mem::take(&mut batch)), complete: false };
            ctx.send_msg(to, &Message::Job(msg));
            bytes = 0;
        }
        bytes += size;
        batch.push(g);
    }
    let msg = JobMsg::Results { job, groups: List(batch), complete };
    ctx.send_msg(to, &Message::Job(msg));
}

/// A received group as held: inline, or its blob's content (`None` when the blob is not here).
pub(super) fn held_of(u: &Upward, g: Group) -> Option<Held> {
    match g.blob {
        None => Some(Held::new(g.status, g.truncated, &g.output, &g.stderr, g.nodes)),
        Some(b) => {
            let (content, split) = u.blobs.get(&b)?;
            Some(Held { status: g.status, truncated: g.truncated, content, split, digest: b.digest, nodes: g.nodes })
        }
    }
}

impl Blobs {
    /// A [`JobMsg::Blob`] chunk arrived: append it to its blob (chunks come in order on one
    /// link; a chunk at offset 0 starts the blob again). A blob already whole here is not
    /// stored twice. Nothing is reserved from the announced total: a blob grows as its bytes
    /// arrive. An out-of-order or inconsistent chunk drops the blob (its sender starts again
    /// from 0 after a reconfiguration).
    ///
    /// Returns whether the bytes were kept (false: a copy of a blob here already, or dropped).
    pub fn store(&mut self, from: NodeId, digest: [u8; 32], offset: u64, total: u64, data: &[u8]) -> bool {
        if self.whole.iter().any(|b| b.0 == digest) || self.split.iter().any(|b| b.0 == digest) {
            return false;
        }
        let k = match self.partial.iter().position(|p| p.0 == from && p.1 == digest) {
            Some(k) => k,
            None if offset == 0 && self.partial.len() < MAX_PARTIAL_BLOBS => {
                // Sized from the announced total up to a bound (doubling would hold up to twice
                // a large output); past it, it grows as the bytes come.
                let size = usize::try_from(total.min(BLOB_RESERVE)).unwrap_or(0);
                self.partial.push((from, digest, Vec::with_capacity(size), total));
                self.partial.len() - 1
            }
            None => return false,
        };
        let p = &mut self.partial[k];
        if offset == 0 {
            p.2.clear();
            p.3 = total;
        }
        if p.2.len() as u64 != offset || p.3 != total || offset + data.len() as u64 > total {
            self.partial.remove(k);
            return false;
        }
        p.2.extend_from_slice(data);
        if p.2.len() as u64 == total {
            let (_, d, mut content, _) = self.partial.remove(k);
            content.shrink_to_fit();
            // Copies on their way from other senders are not needed any more.
            self.partial.retain(|p| p.1 != d);
            self.whole.push((d, Rc::new(content)));
        }
        true
    }

    /// Forget what `peer` was sending (it is gone).
    pub(super) fn drop_from(&mut self, peer: &NodeId) {
        self.partial.retain(|p| p.0 != *peer);
    }

    /// At the controller: `b`'s stdout and stderr, shared by every report of it.
    pub fn split(&mut self, b: &BlobRef) -> Option<Streams> {
        if let Some(x) = self.split.iter().find(|x| x.0 == b.digest) {
            return Some((Rc::clone(&x.1 .0), Rc::clone(&x.1 .1)));
        }
        let (content, at) = self.get(b)?;
        self.whole.retain(|x| x.0 != b.digest);
        let out = Rc::new(content[..at].to_vec());
        let err = Rc::new(content[at..].to_vec());
        self.split.push((b.digest, (Rc::clone(&out), Rc::clone(&err))));
        Some((out, err))
    }

    /// The content `b` names and where its stderr starts, if it arrived whole and matches.
    pub fn get(&self, b: &BlobRef) -> Option<(Rc<Vec<u8>>, usize)> {
        let content = self.whole.iter().find(|x| x.0 == b.digest).map(|x| Rc::clone(&x.1))?;
        let split = usize::try_from(b.stdout_len).ok()?;
        (content.len() as u64 == b.len && split <= content.len()).then_some((content, split))
    }
}

/// Take `bytes` acknowledged off the front of `items` (oldest first, as in `Upward::sent`).
fn drain_acked(items: &mut InFlight, mut bytes: u64) {
    while bytes > 0 {
        match items.front_mut() {
            Some(f) if f.1 <= bytes => {
                bytes -= f.1;
                items.pop_front();
            }
            Some(f) => {
                f.1 -= bytes;
                bytes = 0;
            }
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(content: &[u8], size: usize) -> Vec<(u64, &[u8])> {
        content.chunks(size).enumerate().map(|(i, c)| ((i * size) as u64, c)).collect()
    }

    /// The notes `u` queued: (whose stream, bytes said missing).
    fn notes(u: &Upward) -> Vec<(NodeId, u64)> {
        u.queue
            .iter()
            .filter_map(|i| match i {
                UpItem::Output { node, err: true, bytes, .. } => {
                    let text = String::from_utf8_lossy(bytes);
                    let n = text.strip_prefix(OUTPUT_CUT_PREFIX)?.split(' ').next()?.parse().ok()?;
                    Some((*node, n))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn output_in_flight_is_called_missing_only_when_its_link_fails() {
        let id = |i| NodeId::loopback(i, 7000);
        let (old, new, a, b) = (id(1), id(2), id(3), id(4));
        let sent = |u: &mut Upward| {
            u.sent = VecDeque::from([(Some(a), 10), (Some(b), 5), (None, 64), (Some(a), 7)]);
            u.sent_to = Some(old);
            u.inflight = 86;
        };
        // The way up's link fails: every node's bytes in flight are said missing, at once.
        let mut u = Upward::default();
        sent(&mut u);
        assert!(u.link_lost(&old));
        assert_eq!(notes(&u), vec![(a, 17), (b, 5)]);
        assert_eq!((u.inflight, u.sent.len()), (0, 0));
        u.way_up_changed(new, |_| false);
        assert_eq!(notes(&u).len(), 2, "said once");
        // Another link failing says nothing.
        let mut u = Upward::default();
        sent(&mut u);
        assert!(!u.link_lost(&new));
        assert!(notes(&u).is_empty());
        // A way up we left after closing its link ourselves (after writing): delivered.
        u.way_up_changed(new, |_| false);
        assert!(notes(&u).is_empty() && u.behind.is_none() && u.sent.is_empty() && u.inflight == 0);
        // Left while its link is open: nothing is said; what it acknowledges is settled, and
        // once all of it is, a later failure of that link says nothing either.
        let mut u = Upward::default();
        sent(&mut u);
        u.way_up_changed(new, |p| *p == old);
        assert!(notes(&u).is_empty());
        u.acked_behind(new, 86);
        assert!(u.behind.is_some(), "only the former way up's acknowledgements count");
        u.acked_behind(old, 80);
        u.acked_behind(old, 6);
        assert!(u.behind.is_none());
        assert!(!u.link_lost(&old));
        assert!(notes(&u).is_empty());
        // Left while open, then it fails before acknowledging the rest: what is left is said.
        let mut u = Upward::default();
        sent(&mut u);
        u.way_up_changed(new, |p| *p == old);
        u.acked_behind(old, 12);
        assert!(u.link_lost(&old));
        assert_eq!(notes(&u), vec![(b, 3), (a, 7)]);
        // Back to the former way up: what it owes us counts as in flight to it again, first.
        let mut u = Upward::default();
        sent(&mut u);
        u.way_up_changed(new, |_| true);
        u.sent = VecDeque::from([(Some(b), 2)]);
        u.sent_to = Some(new);
        u.way_up_changed(old, |_| true);
        assert!(notes(&u).is_empty());
        assert_eq!(u.sent, VecDeque::from([(Some(a), 10), (Some(b), 5), (None, 64), (Some(a), 7)]));
        assert_eq!((u.sent_to, u.inflight), (Some(old), 86));
        assert_eq!(u.behind.as_ref().map(|x| x.0), Some(new), "what went to the other one waits for it");
        // The same way up again (its link open all along): still counted as in flight.
        u.way_up_changed(old, |_| true);
        assert_eq!((u.sent.len(), u.inflight), (4, 86));
    }

    #[test]
    fn blobs_from_two_senders_at_once_assemble_apart() {
        let a = NodeId::loopback(1, 7000);
        let b = NodeId::loopback(2, 7000);
        let (out, err): (Vec<u8>, Vec<u8>) = ((0..300u32).map(|i| i as u8).collect(), b"oops\n".to_vec());
        let content = [out.clone(), err.clone()].concat();
        let d = digest_of(&out, &err);
        let r = BlobRef { digest: d, stdout_len: out.len() as u64, len: content.len() as u64 };
        let mut blobs = Blobs::default();
        let total = content.len() as u64;
        // Interleaved, the same output from both: each sender's chunks are in order.
        for ((oa, ca), (ob, cb)) in chunks(&content, 64).into_iter().zip(chunks(&content, 64)) {
            assert!(blobs.get(&r).is_none(), "whole too early");
            blobs.store(a, d, oa, total, ca);
            blobs.store(b, d, ob, total, cb);
        }
        let (got, at) = blobs.get(&r).expect("whole");
        assert_eq!((&got[..at], &got[at..]), (&out[..], &err[..]));
        assert!(blobs.partial.is_empty(), "the other sender's copy is dropped once one is whole");
        // At the controller: split once, shared.
        let (o1, e1) = blobs.split(&r).expect("split");
        let (o2, _) = blobs.split(&r).expect("split again");
        assert!(Rc::ptr_eq(&o1, &o2));
        assert_eq!((&o1[..], &e1[..]), (&out[..], &err[..]));
        // A reference that does not match what arrived is not served.
        let wrong = BlobRef { len: r.len + 1, ..r };
        assert!(Blobs::default().get(&wrong).is_none());
    }

    #[test]
    fn a_chunk_out_of_order_drops_the_blob_and_offset_zero_starts_again() {
        let a = NodeId::loopback(1, 7000);
        let content = vec![7u8; 200];
        let d = digest_of(&content, &[]);
        let r = BlobRef { digest: d, stdout_len: 200, len: 200 };
        let mut blobs = Blobs::default();
        blobs.store(a, d, 0, 200, &content[..100]);
        blobs.store(a, d, 150, 200, &content[150..]);
        assert!(blobs.partial.is_empty() && blobs.get(&r).is_none(), "a gap is not filled in");
        // A later chunk without its start is not stored either.
        blobs.store(a, d, 100, 200, &content[100..]);
        assert!(blobs.partial.is_empty());
        // From 0 again (the sender's new parent link): whole.
        blobs.store(a, d, 0, 200, &content[..100]);
        blobs.store(a, d, 100, 200, &content[100..]);
        assert!(blobs.get(&r).is_some());
        // More than the announced total is refused.
        let mut blobs = Blobs::default();
        blobs.store(a, d, 0, 10, &content[..20]);
        assert!(blobs.partial.is_empty() && blobs.whole.is_empty());
    }

    #[test]
    fn equal_outputs_have_equal_digests_and_the_split_counts() {
        assert_eq!(digest_of(b"ab", b"c"), digest_of(b"ab", b"c"));
        assert_ne!(digest_of(b"ab", b"c"), digest_of(b"a", b"bc"), "where stderr starts is part of the output");
        assert_ne!(digest_of(b"ab", b""), digest_of(b"", b"ab"));
    }
}
