//! The controller's side of jobs: chunks acknowledged to a push, live output and blobs
//! received (and acknowledged at a pace), result groups gathered into each job's table and
//! reported, completion acknowledged, barriers released. See the protocol in
//! [`crate::control`].

use super::*;
use crate::contract::Report;
use crate::id::NodeId;
use crate::nodeset::NodeSet;
use crate::time::Instant;
use crate::wire::{BlobRef, JobMsg, Message, Target};
use std::rc::Rc;

/// Where large outputs stand at a controller that hands their bytes out as they arrive
/// ([`Controller::set_blob_reports`]): the same rules as [`crate::control::Blobs::store`], but
/// no bytes. Bounds: at most [`crate::control::MAX_PARTIAL_BLOBS`] being received; one entry
/// per distinct output received whole.
#[derive(Debug, Default)]
pub(super) struct BlobTrack {
    /// (sender, digest, bytes so far, total), oldest first.
    partial: Vec<(NodeId, [u8; 32], u64, u64)>,
    /// (digest, size) of outputs received whole.
    whole: Vec<([u8; 32], u64)>,
}

impl BlobTrack {
    /// A chunk of `n` bytes arrived: whether it is taken (in order, not a copy of a blob
    /// already whole).
    fn store(&mut self, from: NodeId, digest: [u8; 32], offset: u64, total: u64, n: u64) -> bool {
        if self.whole.iter().any(|w| w.0 == digest) {
            return false;
        }
        let k = match self.partial.iter().position(|p| p.0 == from && p.1 == digest) {
            Some(k) => k,
            None if offset == 0 && self.partial.len() < crate::control::MAX_PARTIAL_BLOBS => {
                self.partial.push((from, digest, 0, total));
                self.partial.len() - 1
            }
            None => return false,
        };
        let p = &mut self.partial[k];
        if offset == 0 {
            *p = (from, digest, 0, total);
        }
        if p.2 != offset || p.3 != total || offset.saturating_add(n) > total {
            self.partial.remove(k);
            return false;
        }
        p.2 += n;
        if p.2 == total {
            self.partial.retain(|p| p.1 != digest);
            self.whole.push((digest, total));
        }
        true
    }

    fn has(&self, b: &BlobRef) -> bool {
        b.stdout_len <= b.len && self.whole.iter().any(|w| w.0 == b.digest && w.1 == b.len)
    }
}

impl Controller {
    /// Hold `job` open, or close it: while open, every host its target names that joins is
    /// added to the hosts that owe it a result ([`Controller::job_expected`]), as if it had been
    /// joined when the job started (a new member gets the `Run` from its parent as it
    /// attaches). Closed, the set stays as it is. A job starts closed.
    pub fn set_job_open(&mut self, job: u64, open: bool) -> Result<(), ControllerError> {
        let j = self.jobs.iter_mut().find(|j| j.spec.job == job).ok_or(ControllerError::Unknown)?;
        j.open = open;
        Ok(())
    }

    /// Whether `job` is held open ([`Controller::set_job_open`]; `None`: no such job).
    pub fn job_open(&self, job: u64) -> Option<bool> {
        self.jobs.iter().find(|j| j.spec.job == job).map(|j| j.open)
    }

    pub(super) fn on_job(&mut self, now: Instant, from: NodeId, msg: JobMsg) {
        match msg {
            JobMsg::ChunkAck { job, next, resume } => {
                // Only the root is fed; a former root's late acknowledgements are dropped.
                if self.root != Some(from) {
                    return;
                }
                let Some(k) = self.jobs.iter().position(|j| j.spec.job == job) else { return };
                let Some(mut x) = self.jobs[k].xfer.take() else { return };
                // One feed: the current root.
                x.feeds.retain(|f| f.to == from);
                x.on_ack(&mut self.ctx(now), job, from, next, resume);
                self.jobs[k].xfer = Some(x);
            }
            JobMsg::Results { job, groups, complete } => {
                self.stats.result_messages += 1;
                let Some(k) = self.jobs.iter().position(|j| j.spec.job == job) else { return };
                // Large outputs are held at every hop until acknowledged: acknowledge them soon.
                let large = groups.0.iter().any(|g| g.blob.is_some());
                for g in groups.0 {
                    self.stats.output_bytes += (g.output.len() + g.stderr.len()) as u64;
                    let (output, stderr) = match &g.blob {
                        None => (Rc::new(g.output), Rc::new(g.stderr)),
                        Some(b) if self.blob_reports => {
                            if !self.jobs[k].track.has(b) {
                                self.stats.blobs_missing += 1;
                                continue;
                            }
                            (Rc::new(Vec::new()), Rc::new(Vec::new()))
                        }
                        Some(b) => match self.jobs[k].blobs.split(b) {
                            Some(parts) => parts,
                            None => {
                                // Lost on the way: the holders send it again after an `Ack`.
                                self.stats.blobs_missing += 1;
                                continue;
                            }
                        },
                    };
                    let new = g.nodes.minus(&self.jobs[k].got);
                    self.stats.duplicate_results += g.nodes.len() - new.len();
                    if new.is_empty() {
                        continue;
                    }
                    self.jobs[k].got.extend(&new);
                    let blob = g.blob.filter(|_| self.blob_reports);
                    self.report(Report::Result {
                        job,
                        status: g.status,
                        truncated: g.truncated,
                        output,
                        nodes: new,
                        stderr,
                        blob,
                    });
                }
                let j = &mut self.jobs[k];
                if complete && !j.complete {
                    j.complete = true;
                    self.report(Report::JobComplete { job });
                }
                let j = &mut self.jobs[k];
                if j.complete || large {
                    // News: acknowledge soon (at most once an interval; large outputs sooner).
                    let pace =
                        if large { self.cfg.large_ack_pace.min(self.cfg.ack_interval) } else { self.cfg.ack_interval };
                    let at = j.last_ack.map_or(now, |t| (t + pace).max(now));
                    j.ack_at = Some(j.ack_at.map_or(at, |a| a.min(at)));
                }
            }
            JobMsg::Output { job, node, bytes, err } => {
                let n = bytes.len() as u64;
                self.stats.output_bytes += n;
                let Some(k) = self.jobs.iter().position(|j| j.spec.job == job) else {
                    self.send(now, from, Message::Job(JobMsg::OutputAck { job, bytes: n }));
                    return;
                };
                if self.manual_output_ack {
                    let owed = &mut self.jobs[k].owed;
                    match owed.iter_mut().find(|o| o.0 == from) {
                        Some(o) => o.1 += n,
                        None => owed.push((from, n)),
                    }
                } else {
                    self.send(now, from, Message::Job(JobMsg::OutputAck { job, bytes: n }));
                }
                self.report(Report::Stream { job, node, bytes, err });
            }
            JobMsg::Blob { job, digest, offset, total, data } => {
                let n = data.len() as u64;
                self.stats.output_bytes += n;
                if let Some(k) = self.jobs.iter().position(|j| j.spec.job == job) {
                    if !self.blob_reports {
                        self.jobs[k].blobs.store(from, digest, offset, total, &data);
                    } else if self.jobs[k].track.store(from, digest, offset, total, n) {
                        self.report(Report::Blob { job, from, digest, offset, total, data });
                    }
                }
                self.send(now, from, Message::Job(JobMsg::OutputAck { job, bytes: n }));
            }
            JobMsg::BarrierEnter { name, nodes } => {
                let Some(k) = self.barriers.iter().position(|b| b.name == name) else { return };
                let b = &mut self.barriers[k];
                let new = nodes.minus(&b.entered);
                b.entered.extend(&new);
                if b.released {
                    if !new.is_empty() {
                        self.report(Report::BarrierLate { name: name.clone(), nodes: new });
                    }
                    // Whoever entered late may not have seen the release.
                    if let Some(root) = self.root {
                        self.send(now, root, Message::Job(JobMsg::BarrierRelease { name }));
                    }
                } else {
                    self.check_barrier(now, k);
                }
            }
            _ => {}
        }
    }

    pub(super) fn ack(&mut self, now: Instant, k: usize) {
        let j = &mut self.jobs[k];
        // Acknowledge again later even without news: a node that holds results the controller
        // lacks (lost in transit) sends them again when an acknowledgement does not cover them.
        j.ack_at = Some(now + self.cfg.ack_interval * self.cfg.reack_intervals);
        j.last_ack = Some(now);
        let msg = Message::Job(JobMsg::Ack { job: j.spec.job, nodes: j.got.clone() });
        if let Some(root) = self.root {
            self.send(now, root, msg);
        }
        // The whole tree answered, and a host we have thought joined for a while did not: it
        // may not be in the tree at all (a stale report made us think it joined). A census
        // finds out: its root checks each such host, and one that is not a member is invited
        // again. At most one census per `recheck_delay`, as after a loss.
        let j = &self.jobs[k];
        if j.complete && self.census_at.is_none() {
            let settled = |id: &NodeId| {
                self.host_state(id) == Some(HostState::Joined)
                    && self.host_since(id).is_some_and(|t| t + self.cfg.recheck_delay <= now)
            };
            if j.expected.minus(&j.got).iter().any(|id| settled(&id)) {
                self.census_soon(now, now);
            }
        }
    }

    /// The nodes a barrier on `target` waits for: every node it names (joined or not), or for
    /// `All` the hosts joined now (as a job started now expects: [`Controller::joined_in`]).
    fn barrier_expected(&self, target: &Target) -> NodeSet {
        match target {
            Target::Nodes(s) => s.clone(),
            Target::All => self.joined_in(target),
        }
    }

    pub(super) fn check_barrier(&mut self, now: Instant, k: usize) {
        if self.barriers[k].released {
            return;
        }
        let expected = self.barrier_expected(&self.barriers[k].target);
        let b = &self.barriers[k];
        let entered = b.entered.len() - b.entered.minus(&expected).len();
        let all = expected.minus(&b.entered).is_empty() && !expected.is_empty();
        let partial = !all && now >= b.deadline && entered as f64 >= b.threshold * expected.len() as f64;
        if !(all || partial) {
            return;
        }
        let name = b.name.clone();
        self.barriers[k].released = true;
        if let Some(root) = self.root {
            self.send(now, root, Message::Job(JobMsg::BarrierRelease { name: name.clone() }));
        }
        self.report(Report::BarrierReleased { name, entered, expected: expected.len(), partial });
    }
}
