//! Jobs and their results, client side: `Run` floods down and each target spawns its process;
//! results travel up as merged groups, held until the controller's `Ack` covers them, and sent
//! again after every change of parent. Live output and large outputs (blobs) go up in order,
//! within the link's output window. See the protocol in [`super`] and the stores in
//! [`super::held`].

use super::held::{held_of, merge, remove_acked, send_groups, UpItem};
use super::transfer::Xfer;
use super::*;
use crate::contract::{Output, ProcessEvent};
use crate::ctx::Ctx;
use crate::id::NodeId;
use crate::nodeset::NodeSet;
use crate::tree::Tree;
use crate::wire::{ControlMsg, ExitStatus, Group, JobKind, JobMsg, List, Message, RunSpec, Target};
use smallvec::SmallVec;
use std::rc::Rc;

impl Control {
    pub fn on_job(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, from: NodeId, msg: JobMsg, raw: &[u8]) {
        match msg {
            JobMsg::Run(spec) => {
                if !self.command_ok(ctx, tree, from) {
                    return;
                }
                self.start_job(ctx, tree, *spec, Some(raw));
            }
            JobMsg::Cancel { job } => {
                if !self.command_ok(ctx, tree, from) {
                    return;
                }
                let frame = ctx.io.pool.copy(raw);
                for &c in tree.children() {
                    ctx.send_frame(c, frame.clone());
                }
                if let Some(k) = self.job_index(job) {
                    if let Own::Running(_) = self.jobs[k].own {
                        ctx.io.out.push_back(Output::Signal { job });
                        self.finish_own(ctx, tree, k, ExitStatus::Cancelled);
                    }
                }
            }
            JobMsg::Ack { job, nodes } => {
                if !self.command_ok(ctx, tree, from) {
                    return;
                }
                self.on_ack(ctx, tree, job, &nodes);
            }
            JobMsg::Results { job, groups, complete } => {
                if self.is_above(tree, from) {
                    return;
                }
                self.on_results(ctx, tree, from, job, groups.0, complete);
            }
            JobMsg::Output { job, node, bytes, err } => {
                if self.is_above(tree, from) {
                    return;
                }
                match self.job_index(job) {
                    Some(k) => {
                        // Passed on (and acknowledged to the child) as our window up allows.
                        self.jobs[k].up.queue.push_back(UpItem::Output { node, err, bytes, from: Some(from) });
                        self.pump_up(ctx, tree, k);
                    }
                    None => {
                        let n = bytes.len() as u64;
                        if let Some(up) = self.up(tree) {
                            ctx.send_msg(up, &Message::Job(JobMsg::Output { job, node, bytes, err }));
                        }
                        ctx.send_msg(from, &Message::Job(JobMsg::OutputAck { job, bytes: n }));
                    }
                }
            }
            JobMsg::OutputAck { job, bytes } => {
                let Some(k) = self.job_index(job) else { return };
                let current = self.up(tree) == Some(from);
                let u = &mut self.jobs[k].up;
                if !current {
                    // From a former way up, for what we sent it before the change (if anything).
                    u.acked_behind(from, bytes);
                    return;
                }
                u.acked(bytes);
                self.pump_up(ctx, tree, k);
            }
            JobMsg::Blob { job, digest, offset, total, data } => {
                if self.is_above(tree, from) {
                    return;
                }
                let n = data.len() as u64;
                match self.job_index(job) {
                    Some(k) => {
                        let NodeJob { up: u, held, .. } = &mut self.jobs[k];
                        if offset == 0 && !u.awaiting.contains(&(from, digest)) {
                            if u.awaiting.len() >= MAX_AWAITING {
                                u.awaiting.pop_front();
                            }
                            u.awaiting.push_back((from, digest));
                        }
                        if u.blobs.store(from, digest, offset, total, &data) {
                            // Kept: acknowledged as the backlog allows (see [`BLOB_BACKLOG`]).
                            match u.deferred.iter_mut().find(|d| d.0 == from) {
                                Some(d) => d.1 += n,
                                None => u.deferred.push((from, n)),
                            }
                            u.release(ctx, tree, job, held);
                        } else {
                            ctx.send_msg(from, &Message::Job(JobMsg::OutputAck { job, bytes: n }));
                        }
                    }
                    None => {
                        // A job we forgot: pass it on as it is, like the results that follow.
                        if let Some(up) = self.up(tree) {
                            ctx.send_msg(up, &Message::Job(JobMsg::Blob { job, digest, offset, total, data }));
                        }
                        ctx.send_msg(from, &Message::Job(JobMsg::OutputAck { job, bytes: n }));
                    }
                }
            }
            JobMsg::BarrierEnter { name, nodes } => {
                if self.is_above(tree, from) || name.len() > MAX_NAME {
                    return;
                }
                self.barrier_entries(ctx, tree, name, &nodes);
            }
            JobMsg::BarrierRelease { name } => {
                if !self.command_ok(ctx, tree, from) {
                    return;
                }
                let frame = ctx.io.pool.copy(raw);
                for &c in tree.children() {
                    ctx.send_frame(c, frame.clone());
                }
                self.release_barrier(ctx, name);
            }
            JobMsg::Chunk { job, index, data } => {
                if !self.command_ok(ctx, tree, from) {
                    return;
                }
                let up = self.up(tree);
                let Some(k) = self.job_index(job) else {
                    ctx.io.stats.chunks_dropped += 1;
                    return;
                };
                let j = &mut self.jobs[k];
                let Some(x) = j.xfer.as_mut() else {
                    ctx.io.stats.chunks_dropped += 1;
                    return;
                };
                if x.on_chunk(ctx, job, index, data, raw, up) && x.complete() && matches!(j.own, Own::Running(_)) {
                    ctx.io.out.push_back(Output::PushDone { job });
                }
            }
            JobMsg::ChunkAck { job, next, resume } => {
                if !tree.children().contains(&from) {
                    return;
                }
                let up = self.up(tree);
                if let Some(x) = self.job_index(job).and_then(|k| self.jobs[k].xfer.as_mut()) {
                    x.on_ack(ctx, job, from, next, resume);
                    if !x.asked && !x.complete() {
                        // A relay: a child needs chunks, so now we do.
                        if let Some(up) = up {
                            x.ask(ctx, job, up);
                        }
                    }
                }
            }
        }
    }

    pub(super) fn job_index(&self, job: u64) -> Option<usize> {
        self.jobs.iter().position(|j| j.spec.job == job)
    }

    /// A `Run` from above (or the root's own census): forward it, spawn our part.
    pub(super) fn start_job(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, spec: RunSpec, raw: Option<&[u8]>) {
        let job = spec.job;
        let existing = self.job_index(job);
        if existing.is_some_and(|k| self.jobs[k].known) || self.done.contains(&job) {
            return;
        }
        // Forward first: the subtree starts as early as possible.
        let frame = match raw {
            Some(raw) => Some(ctx.io.pool.copy(raw)),
            None => ctx.io.pool.encode(&Message::Job(JobMsg::Run(Box::new(spec.clone()))), ctx.cfg.max_frame).ok(),
        };
        if let Some(frame) = frame {
            for &c in tree.children() {
                ctx.send_frame(c, frame.clone());
            }
        }
        let spec = Rc::new(spec);
        let k = match existing {
            // Results arrived before the job itself (a subtree that moved to us): now we know it.
            Some(k) => {
                self.jobs[k].spec = Rc::clone(&spec);
                self.jobs[k].known = true;
                k
            }
            None => match self.new_job(ctx, tree, Rc::clone(&spec), true) {
                Some(k) => k,
                None => return,
            },
        };
        let target = spec.target.includes(&self.me);
        if spec.kind == JobKind::Push && self.jobs[k].xfer.is_none() {
            // An upgrade to the build we run: nothing to fetch for ourselves (a client that
            // restarted on it gets the job again from its new parent).
            let have_it = spec.push.as_ref().is_some_and(|p| p.upgrade && p.build != 0 && p.build == ctx.cfg.build);
            match spec.push.as_ref().and_then(|p| Xfer::new(p, false)) {
                Some(mut x) => {
                    ctx.io.out.push_back(Output::PushOpen { job, spec: Rc::clone(&spec), install: target && !have_it });
                    if let Some(up) = self.up(tree).filter(|_| target && !have_it) {
                        x.ask(ctx, job, up);
                    }
                    self.jobs[k].xfer = Some(Box::new(x));
                    if target && have_it {
                        self.finish_own(ctx, tree, k, ExitStatus::Exited(0));
                        return;
                    }
                }
                None if target => {
                    self.jobs[k].stdout = b"plush: a push without a usable file description".to_vec();
                    self.finish_own(ctx, tree, k, ExitStatus::SpawnFailed);
                    return;
                }
                None => {}
            }
        }
        if !target {
            self.maybe_flush(ctx, tree, k);
            return;
        }
        match spec.kind {
            JobKind::Census => self.finish_own(ctx, tree, k, ExitStatus::Exited(0)),
            JobKind::Tree => {
                self.jobs[k].stdout = tree.parent().map_or_else(Vec::new, |p| p.addr().to_string().into_bytes());
                self.finish_own(ctx, tree, k, ExitStatus::Exited(0));
            }
            JobKind::Push => {
                let deadline =
                    (spec.timeout_ms > 0).then(|| ctx.now + core::time::Duration::from_millis(spec.timeout_ms));
                self.jobs[k].own = Own::Running(deadline);
                if self.jobs[k].xfer.as_ref().is_some_and(|x| x.complete()) {
                    // An empty file: nothing to wait for.
                    ctx.io.out.push_back(Output::PushDone { job });
                }
            }
            JobKind::Command if self.ran_before(&spec) => {
                // Its predecessor died with it: at most once, unless asked.
                self.jobs[k].stderr = LOST_OUTPUT.to_vec();
                self.finish_own(ctx, tree, k, ExitStatus::Lost);
            }
            JobKind::Command if self.jobs[k].over => {
                self.jobs[k].stdout = TOO_MANY_JOBS.to_vec();
                self.finish_own(ctx, tree, k, ExitStatus::SpawnFailed);
            }
            JobKind::Command => {
                let deadline =
                    (spec.timeout_ms > 0).then(|| ctx.now + core::time::Duration::from_millis(spec.timeout_ms));
                self.jobs[k].own = Own::Running(deadline);
                ctx.io.out.push_back(Output::Spawn { job, spec: Rc::clone(&spec) });
            }
        }
    }

    /// A new entry in the job table (`known`: from a `Run`; else results came first).
    ///
    /// Bound: [`crate::Config::max_jobs`] jobs run processes; past it (when no finished job can be
    /// forgotten) a job still gets an entry, marked `over`, so that its results, and the failure
    /// of our own part, are held and travel up like any other; past twice the bound, `None`: our
    /// failure and the results of others are relayed without being held.
    pub(super) fn new_job(
        &mut self,
        ctx: &mut Ctx<'_>,
        tree: &mut Tree,
        spec: Rc<RunSpec>,
        known: bool,
    ) -> Option<usize> {
        let max = ctx.cfg.max_jobs;
        if self.jobs.len() >= max {
            // Make room by forgetting the oldest finished job, if any.
            if let Some(k) = self.jobs.iter().position(|j| j.linger_until.is_some()) {
                self.forget_job(ctx, k);
            }
        }
        let over = self.jobs.len() >= max;
        if self.jobs.len() >= 2 * max {
            if let Some(up) = self.up(tree).filter(|_| known && spec.target.includes(&self.me)) {
                let g = Held::new(ExitStatus::SpawnFailed, false, TOO_MANY_JOBS, &[], NodeSet::one(self.me));
                send_groups(ctx, up, spec.job, vec![g.group()], false);
            }
            return None;
        }
        self.jobs.push(NodeJob {
            spec,
            known,
            over,
            own: Own::NotTarget,
            stdout: Vec::new(),
            stderr: Vec::new(),
            out_bytes: 0,
            truncated: false,
            held: Vec::new(),
            unsent: Vec::new(),
            answered: SmallVec::new(),
            from: Vec::new(),
            told_complete: false,
            flush_at: None,
            linger_until: None,
            up: Upward::default(),
            xfer: None,
        });
        Some(self.jobs.len() - 1)
    }

    /// Our process ended (or was killed, timed out, cancelled).
    pub(super) fn finish_own(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, k: usize, status: ExitStatus) {
        let j = &mut self.jobs[k];
        if j.own == Own::Done {
            return;
        }
        j.own = Own::Done;
        let stdout = core::mem::take(&mut j.stdout);
        let stderr = core::mem::take(&mut j.stderr);
        let g = Held::owned(status, j.truncated, stdout, &stderr, NodeSet::one(self.me));
        self.add_result(ctx, tree, k, &g);
        self.maybe_flush(ctx, tree, k);
    }

    pub(super) fn add_result(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, k: usize, g: &Held) {
        let j = &mut self.jobs[k];
        if !merge(&mut j.held, g) {
            ctx.io.stats.results_unheld += 1;
        }
        j.linger_until = None;
        if !merge(&mut j.unsent, g) {
            // Too many distinct results waiting: send what waits, then queue this one.
            self.flush_job(ctx, tree, k);
            let j = &mut self.jobs[k];
            let queued = merge(&mut j.unsent, g);
            debug_assert!(queued, "a job whose unsent groups were flushed has room for one");
        }
    }

    pub fn on_process(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, ev: ProcessEvent) {
        match ev {
            ProcessEvent::Output { job: MAINT_JOB, bytes, .. } => {
                if let Some(m) = self.rare.maint.as_mut() {
                    let room = crate::wire::MAX_SCRIPT_OUTPUT.saturating_sub(m.output.len());
                    m.output.extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
            }
            ProcessEvent::Exit { job: MAINT_JOB, status } => self.maintenance_done(ctx, tree, status),
            ProcessEvent::Output { job, mut bytes, err } => {
                let Some(k) = self.job_index(job) else { return };
                let j = &mut self.jobs[k];
                if !matches!(j.own, Own::Running(_)) {
                    return;
                }
                let cap = j.spec.max_output;
                if cap > 0 {
                    let room = cap.saturating_sub(j.out_bytes);
                    if bytes.len() as u64 > room {
                        ctx.io.stats.output_bytes_cut += bytes.len() as u64 - room;
                        bytes.truncate(room as usize);
                        j.truncated = true;
                    }
                }
                j.out_bytes += bytes.len() as u64;
                if bytes.is_empty() {
                    return;
                }
                if !j.spec.stream {
                    if err { &mut j.stderr } else { &mut j.stdout }.extend_from_slice(&bytes);
                    return;
                }
                j.up.own_queued += bytes.len() as u64;
                j.up.queue.push_back(UpItem::Output { node: self.me, err, bytes, from: None });
                self.pump_up(ctx, tree, k);
                let u = &mut self.jobs[k].up;
                if u.own_queued > 0 && !u.paused {
                    // The window up is full: the process waits until it reopens.
                    u.paused = true;
                    ctx.io.out.push_back(Output::ReadOutput { job, on: false });
                }
            }
            ProcessEvent::Exit { job, status } => {
                if let Some(k) = self.job_index(job) {
                    if matches!(self.jobs[k].own, Own::Running(_)) {
                        self.finish_own(ctx, tree, k, status);
                    }
                }
            }
        }
    }

    pub(super) fn on_results(
        &mut self,
        ctx: &mut Ctx<'_>,
        tree: &mut Tree,
        from: NodeId,
        job: u64,
        groups: Vec<Group>,
        complete: bool,
    ) {
        let k = match self.job_index(job) {
            Some(k) => k,
            None if !self.done.contains(&job) => {
                // Results of a job whose `Run` has not reached us (a subtree that moved under us
                // during the job): hold them all the same.
                let stand_in = Rc::new(RunSpec::new(job, JobKind::Command, Target::Nodes(NodeSet::new()), Vec::new()));
                match self.new_job(ctx, tree, stand_in, false) {
                    Some(k) => k,
                    None => {
                        // No room to hold them: relay them as they are (a blob they name is
                        // not passed on; the holders send it again after the next `Ack`).
                        if let Some(up) = self.up(tree) {
                            send_groups(ctx, up, job, groups, false);
                        }
                        return;
                    }
                }
            }
            None => {
                // A job we finished and forgot: relay late results as they are.
                if let Some(up) = self.up(tree) {
                    send_groups(ctx, up, job, groups, false);
                }
                return;
            }
        };
        let mut got = NodeSet::new();
        for g in groups {
            if let Some(b) = &g.blob {
                // Its group came: that sender's blob no longer needs keeping for it.
                self.jobs[k].up.awaiting.retain(|a| *a != (from, b.digest));
            }
            let Some(h) = held_of(&self.jobs[k].up, g) else {
                // Its blob did not arrive (a link broke on the way): the sender holds it and
                // sends it again after the controller's next `Ack`.
                ctx.io.stats.blobs_missing += 1;
                continue;
            };
            got.extend(&h.nodes);
            self.add_result(ctx, tree, k, &h);
        }
        let j = &mut self.jobs[k];
        match j.from.iter_mut().find(|f| f.0 == from) {
            Some(f) => f.1.extend(&got),
            None if !got.is_empty() => j.from.push((from, got)),
            None => {}
        }
        if complete && tree.children().contains(&from) && !j.answered.contains(&from) {
            j.answered.push(from);
        }
        if complete && self.jobs[k].spec.kind != JobKind::Census && self.complete(tree, k) {
            // The subtree is whole again (a member that attached late, or moved here, answered
            // last): say so at once, not after the merge delay. Once per such answer and hop. (A
            // census, which only counts members, keeps merging them.)
            self.jobs[k].told_complete = false;
        }
        self.maybe_flush(ctx, tree, k);
    }

    /// Send now if the subtree is complete; else arm the merge timer if something waits.
    pub(super) fn maybe_flush(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, k: usize) {
        let complete = self.complete(tree, k);
        let j = &mut self.jobs[k];
        if complete && !j.told_complete {
            // The subtree just finished answering: say so at once.
            self.flush_job(ctx, tree, k);
        } else if !j.unsent.is_empty() && j.flush_at.is_none() {
            // Stragglers (re-sent after a reconfiguration) wait to travel together.
            let delay = if tree.is_root() { ctx.cfg.ctrl_merge_delay } else { ctx.cfg.merge_delay };
            j.flush_at = Some(ctx.now + delay);
        }
    }

    pub(super) fn complete(&self, tree: &Tree, k: usize) -> bool {
        let j = &self.jobs[k];
        !matches!(j.own, Own::Running(_)) && tree.children().iter().all(|c| j.answered.contains(c))
    }

    pub(super) fn flush_job(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, k: usize) {
        let Some(up) = self.up(tree) else {
            // No way up: keep it all until we attach.
            self.jobs[k].flush_at = None;
            return;
        };
        let complete = self.complete(tree, k);
        let j = &mut self.jobs[k];
        j.flush_at = None;
        let unsent = core::mem::take(&mut j.unsent);
        j.told_complete = complete;
        let job = j.spec.job;
        let census = j.spec.kind == JobKind::Census;
        if census && tree.is_root() {
            // The root's census ends here: members go to the controller, then everyone forgets.
            let mut nodes = NodeSet::new();
            for g in &unsent {
                nodes.extend(&g.nodes);
            }
            if complete {
                let all = self.jobs[k].held.iter().fold(NodeSet::new(), |mut s, g| {
                    s.extend(&g.nodes);
                    s
                });
                self.send_participants(ctx, up, nodes, true);
                self.on_ack(ctx, tree, job, &all);
            } else if !nodes.is_empty() {
                self.send_participants(ctx, up, nodes, false);
            }
            return;
        }
        self.queue_groups(ctx, tree, k, &unsent, complete);
    }

    pub(super) fn send_participants(&self, ctx: &mut Ctx<'_>, to: NodeId, nodes: NodeSet, last: bool) {
        self.send(ctx, to, ControlMsg::Participants { nodes, last });
    }

    /// Queue job `k`'s `groups` for the way up, behind what waits there: a large output's blob
    /// first (once per digest and way up), then the groups as `Results` messages each under
    /// the frame limit.
    pub(super) fn queue_groups(
        &mut self,
        ctx: &mut Ctx<'_>,
        tree: &mut Tree,
        k: usize,
        groups: &[Held],
        complete: bool,
    ) {
        let u = &mut self.jobs[k].up;
        let mut batch: Vec<Group> = Vec::new();
        let mut bytes = 0;
        for g in groups {
            let group = g.group();
            if group.blob.is_some() && !u.sent_blobs.contains(&g.digest) {
                u.sent_blobs.push(g.digest);
                u.queue.push_back(UpItem::Blob { digest: g.digest, content: Rc::clone(&g.content), offset: 0 });
            }
            let size = group.output.len() + group.stderr.len() + g.nodes.runs() * 24;
            if !batch.is_empty() && (bytes + size > SPLIT_BYTES || batch.len() == crate::wire::MAX_LIST) {
                u.queue.push_back(UpItem::Results { groups: core::mem::take(&mut batch), complete: false });
                bytes = 0;
            }
            bytes += size;
            batch.push(group);
        }
        u.queue.push_back(UpItem::Results { groups: batch, complete });
        self.pump_up(ctx, tree, k);
    }

    /// Send up what job `k`'s window allows (see [`UpItem`]), acknowledging to each child
    /// what of its output went on; let our process write again once none of its output waits.
    pub(super) fn pump_up(&mut self, ctx: &mut Ctx<'_>, tree: &Tree, k: usize) {
        let Some(up) = self.up(tree) else { return };
        let window = ctx.cfg.output_window.max(1) as u64;
        let NodeJob { spec, up: u, held, .. } = &mut self.jobs[k];
        let job = spec.job;
        loop {
            let room = |n: u64| u.inflight == 0 || u.inflight + n <= window;
            match u.queue.front_mut() {
                None => break,
                Some(UpItem::Results { .. }) => {
                    let Some(UpItem::Results { groups, complete }) = u.queue.pop_front() else { break };
                    ctx.send_msg(up, &Message::Job(JobMsg::Results { job, groups: List(groups), complete }));
                }
                Some(UpItem::Output { bytes, .. }) => {
                    let n = bytes.len() as u64;
                    if !room(n) {
                        break;
                    }
                    let Some(UpItem::Output { node, err, bytes, from }) = u.queue.pop_front() else { break };
                    u.inflight += n;
                    u.sent.push_back((Some(node), n));
                    u.sent_to = Some(up);
                    ctx.send_msg(up, &Message::Job(JobMsg::Output { job, node, bytes, err }));
                    match from {
                        None => u.own_queued -= n,
                        Some(c) if tree.children().contains(&c) => {
                            ctx.send_msg(c, &Message::Job(JobMsg::OutputAck { job, bytes: n }));
                        }
                        Some(_) => {}
                    }
                }
                Some(UpItem::Blob { digest, content, offset }) => {
                    let end = (*offset + BLOB_CHUNK).min(content.len());
                    let n = (end - *offset) as u64;
                    if !room(n) {
                        break;
                    }
                    u.inflight += n;
                    u.sent.push_back((None, n));
                    u.sent_to = Some(up);
                    let msg = JobMsg::Blob {
                        job,
                        digest: *digest,
                        offset: *offset as u64,
                        total: content.len() as u64,
                        data: content[*offset..end].to_vec(),
                    };
                    ctx.send_msg(up, &Message::Job(msg));
                    *offset = end;
                    if end >= content.len() {
                        u.queue.pop_front();
                    }
                }
            }
        }
        if u.paused && u.own_queued == 0 {
            u.paused = false;
            ctx.io.out.push_back(Output::ReadOutput { job, on: true });
        }
        u.release(ctx, tree, job, held);
    }

    pub(super) fn on_ack(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, job: u64, acked: &NodeSet) {
        let Some(k) = self.job_index(job) else { return };
        // Down to each sender, the part of the acknowledgement that covers what it sent us.
        let from = core::mem::take(&mut self.jobs[k].from);
        let mut keep = Vec::with_capacity(from.len());
        for (peer, sent) in from {
            let rest = sent.minus(acked);
            let covered = sent.minus(&rest);
            if !covered.is_empty() && tree.children().contains(&peer) {
                ctx.send_msg(peer, &Message::Job(JobMsg::Ack { job, nodes: covered }));
            }
            // A former child has re-sent what it holds through its new parent: forget it.
            if !rest.is_empty() && tree.children().contains(&peer) {
                keep.push((peer, rest));
            }
        }
        // Forgotten only once the whole subtree answered: until then, children may still send
        // live output and blobs, which pass through the job's window up.
        let complete = self.complete(tree, k);
        let j = &mut self.jobs[k];
        j.from = keep;
        let before: SmallVec<[[u8; 32]; 4]> = j.held.iter().map(|h| h.digest).collect();
        // A parent drops a blob once the results it holds naming it are acknowledged: a group
        // naming it that we send from now on must bring it again. (The controller keeps them.)
        for h in j.held.iter().filter(|h| h.content.len() > INLINE_OUTPUT && !tree.is_root()) {
            if h.nodes.minus(acked).len() != h.nodes.len() {
                j.up.sent_blobs.retain(|d| *d != h.digest);
            }
        }
        remove_acked(&mut j.held, acked);
        remove_acked(&mut j.unsent, acked);
        // The blobs of results now acknowledged are not needed any more (one on its way up is
        // shared with the queue). A blob no result named yet stays: its group may be on its way.
        let NodeJob { held, up, .. } = j;
        up.blobs.whole.retain(|b| {
            !before.contains(&b.0) || held.iter().any(|h| h.digest == b.0) || up.awaiting.iter().any(|a| a.1 == b.0)
        });
        // Held outputs acknowledged: the backlog may take children's blobs again.
        up.release(ctx, tree, job, held);
        if !j.held.is_empty() {
            // What the controller does not have was lost on the way: send it again.
            j.unsent = j.held.clone();
            self.flush_job(ctx, tree, k);
        } else if complete {
            j.linger_until = Some(ctx.now + ctx.cfg.job_linger);
        }
    }

    pub(super) fn forget_job(&mut self, ctx: &mut Ctx<'_>, k: usize) {
        let j = self.jobs.swap_remove(k);
        if j.xfer.is_some() {
            ctx.io.out.push_back(Output::PushForget { job: j.spec.job });
        }
        if self.done.len() == MAX_DONE {
            self.done.pop_front();
        }
        self.done.push_back(j.spec.job);
    }
}
