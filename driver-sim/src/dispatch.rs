//! Dispatch: the events of the calendar and the machines they are for.
//!
//! An event ([`Kind`]) is a frame, a link going up or down, a failed connect, a timer, a
//! simulated process ending, a transfer verified, or a launch done. [`Sim::run_until`] takes
//! them from the calendar in (time, sequence) order and hands each to the machine in its slot
//! ([`Proc`]: a client's `Node` or the `Controller`, both driven as a [`Machine`]); then
//! [`Sim::after`] drains that machine's outputs and carries them out: frames go to the network
//! ([`crate::net`]), timers and simulated processes back into the calendar, reports and events
//! into the simulator's records, and the machine is checked ([`crate::checks`]).

use crate::calendar::Ev;
use crate::scenario::CrashKind;
use crate::sim::{id, idx, Sim, MAX_COUNTS};
use plush_core::frame::Frame;
use plush_core::wire::{ExitStatus, JobMsg, Message};
use plush_core::{
    Controller, Event, HostState, InputError, Instant, LaunchResult, LinkEvent, Machine, Node, Output, ProcessEvent,
    Report as CtrlReport,
};
use rand::RngExt;
use std::time::Duration;

/// What happens when an event on the calendar is due. `incarnation` and `gen` let a stale event
/// (for a process that has since restarted, or a link slot since reused) be dropped.
#[derive(Debug)]
pub(crate) enum Kind {
    /// A frame from the link's other end arrives at `to`.
    Deliver { link: u32, gen: u32, to: u32, frame: Frame },
    /// The hello from the other end arrives: report the link up to `to`.
    Up { link: u32, gen: u32, to: u32 },
    /// `to`'s attempt to reach `peer` failed.
    ConnectFailed { to: u32, peer: u32, incarnation: u32 },
    /// The other end closed or reset the link.
    Down { link: u32, gen: u32, to: u32 },
    /// `node`'s timer.
    Timer { node: u32, incarnation: u32 },
    /// A job's simulated process ends at `node` (output, then exit).
    ProcExit { node: u32, incarnation: u32, job: u64 },
    /// A target holds every chunk of a push: it verified and installed the file.
    PushVerified { node: u32, incarnation: u32, job: u64 },
    /// The launcher `by` asked for finished on `host`.
    Launched { by: u32, host: u32, ok: bool },
}

/// What runs in a slot: a client or the controller. Both are a [`Machine`], and the simulator
/// drives them through it alone ([`machine!`]).
///
/// Both are boxed: a slot is then a few dozen bytes, so the fields every event checks first
/// (incarnation, timer, the process's kind) sit in one small slot rather than at the end of a
/// two-kilobyte one, and a crashed client's memory is freed (a quarter of a million of them in
/// the 1M run) instead of staying inline in its slot.
pub(crate) enum Proc {
    /// A client.
    Node(Box<Node>),
    /// The controller.
    Controller(Box<Controller>),
}

/// `machine!(proc, |m| body)`: `body` with `m` bound to the machine in `proc` (a `&mut Proc`),
/// whichever kind it is, as a `&mut impl Machine`. The one place the simulator tells a client
/// from the controller to hand them inputs; `body` calls them through [`Machine`] alone. (An
/// enum, not a `dyn Machine`: the trait has an associated constant, so it makes no trait
/// object, and the calls stay static, as fast as before the split.)
macro_rules! machine {
    ($proc:expr, |$m:ident| $body:expr) => {
        match $proc {
            Proc::Node(boxed) => {
                let $m: &mut Node = boxed;
                $body
            }
            Proc::Controller(boxed) => {
                let $m: &mut Controller = boxed;
                $body
            }
        }
    };
}

impl Sim {
    /// Hand slot `i` a frame's payload from `from` (nothing runs there: dropped).
    pub(crate) fn frame_event(&mut self, i: u32, from: u32, payload: &[u8]) -> Result<(), InputError> {
        let now = self.now;
        match self.nodes[i as usize].proc.as_mut() {
            Some(p) => machine!(p, |m| Machine::handle_frame(m, now, id(from), payload)),
            None => Ok(()),
        }
    }

    /// Tell slot `i` that its link to `peer` changed (nothing runs there: nobody to tell).
    pub(crate) fn link_event(&mut self, i: u32, peer: u32, ev: LinkEvent) {
        let now = self.now;
        if !self.watch.is_empty() && (self.watch.contains(&i) || self.watch.contains(&peer)) {
            eprintln!("t={:.3}s {i} link {peer}: {ev:?}", now.0 as f64 / 1e6);
        }
        if let Some(p) = self.nodes[i as usize].proc.as_mut() {
            machine!(p, |m| Machine::handle_link(m, now, id(peer), ev));
        }
    }

    /// Schedule `kind` at `at`, after everything already scheduled for then.
    pub(crate) fn push(&mut self, at: Instant, kind: Kind) {
        self.seq += 1;
        self.heap.push(Ev { at, seq: self.seq, kind });
    }

    /// Process events up to and including time `until`; returns false if the heap ran dry.
    pub fn run_until(&mut self, until: Instant, mut stop: impl FnMut(&Sim) -> bool) -> bool {
        loop {
            let next = self.heap.peek_at();
            let plan = [self.ctrl_crash.crash_at, self.ctrl_crash.back_at.filter(|_| self.controller().is_none())]
                .into_iter()
                .flatten()
                .min()
                .filter(|&t| t <= until && next.is_none_or(|a| t <= a));
            if let Some(t) = plan {
                self.now = self.now.max(t);
                self.controller_plan();
                if stop(self) {
                    return true;
                }
                continue;
            }
            let Some(at) = next else { break };
            if at > until {
                self.now = until;
                return true;
            }
            let Some(ev) = self.heap.pop() else { break };
            self.prefetch();
            self.now = ev.at;
            self.dispatch(ev.kind);
            if stop(self) {
                return true;
            }
        }
        self.now = self.now.max(until);
        false
    }

    /// Ask the processor to fetch what the events a few places ahead will touch, while this one
    /// runs: at a million nodes nearly every event's link, slot, client and frame is a cache
    /// miss, and those misses were the larger part of an event's cost. Three stages, each
    /// reading only what an earlier one fetched: `FAR` events ahead, the link, the slot and
    /// the frame's box; `MID` ahead, the client's parts that most inputs read
    /// ([`Node::hot_parts`]), the frame's bytes and the slot's link list; `NEAR` ahead, the
    /// client's children (checked after every event). A hint only: it changes no state.
    #[inline]
    fn prefetch(&self) {
        /// Events ahead whose first-level memory is fetched.
        const FAR: usize = 6;
        /// Events ahead whose second-level memory (found through the first) is fetched.
        const MID: usize = 4;
        /// Events ahead whose third-level memory is fetched.
        const NEAR: usize = 2;
        /// The slot an event is for, and whether it carries a frame.
        fn target(kind: &Kind) -> Option<(u32, Option<&Frame>, Option<u32>)> {
            match kind {
                Kind::Deliver { link, to, frame, .. } => Some((*to, Some(frame), Some(*link))),
                Kind::Up { link, to, .. } | Kind::Down { link, to, .. } => Some((*to, None, Some(*link))),
                Kind::Timer { node, .. } => Some((*node, None, None)),
                _ => None,
            }
        }
        if let Some((to, frame, link)) = self.heap.ahead(FAR).and_then(|e| target(&e.kind)) {
            touch(frame.map(Frame::buffer));
            touch(link.and_then(|l| self.links.get(l as usize)));
            if let Some(sn) = self.nodes.get(to as usize) {
                sn.prefetch_state();
            }
        }
        if let Some((to, frame, _)) = self.heap.ahead(MID).and_then(|e| target(&e.kind)) {
            touch(frame.and_then(|f| f.payload().first()));
            if let Some(sn) = self.nodes.get(to as usize) {
                touch(sn.links.first());
                if let Some(n) = sn.node() {
                    for (p, len) in n.hot_parts() {
                        for off in (0..len).step_by(64) {
                            touch_ptr(p.wrapping_add(off));
                        }
                    }
                }
            }
        }
        if let Some((to, _, _)) = self.heap.ahead(NEAR).and_then(|e| target(&e.kind)) {
            touch(self.nodes.get(to as usize).and_then(|sn| sn.node()).and_then(|n| n.children().first()));
        }
    }

    /// Carry out one due event.
    fn dispatch(&mut self, kind: Kind) {
        let now = self.now;
        match kind {
            Kind::Timer { node, incarnation } => {
                let sn = &mut self.nodes[node as usize];
                if sn.incarnation != incarnation || sn.timer != Some(now) {
                    return; // stale
                }
                sn.timer = None;
                let Some(p) = sn.proc.as_mut() else { return };
                machine!(p, |m| Machine::handle_timeout(m, now));
                self.events += 1;
                self.after(node);
            }
            Kind::PushVerified { node, incarnation, job } => {
                let sn = &mut self.nodes[node as usize];
                if sn.incarnation != incarnation {
                    return;
                }
                let Some(n) = sn.node_mut() else { return };
                self.events += 1;
                Machine::handle_process(n, now, ProcessEvent::Exit { job, status: ExitStatus::Exited(0) });
                self.after(node);
            }
            Kind::ProcExit { node, incarnation, job } => {
                let k = self.job_outputs;
                let sn = &mut self.nodes[node as usize];
                if sn.incarnation != incarnation {
                    return;
                }
                let Some(n) = sn.node_mut() else { return };
                self.events += 1;
                let line =
                    if k <= 1 { b"hello from plush\n".to_vec() } else { format!("output {}\n", node % k).into_bytes() };
                Machine::handle_process(n, now, ProcessEvent::Output { job, bytes: line, err: false });
                let fails = job == plush_core::control::MAINT_JOB && self.maintenance_fails.contains(&node);
                Machine::handle_process(
                    n,
                    now,
                    ProcessEvent::Exit { job, status: ExitStatus::Exited(i32::from(fails)) },
                );
                self.after(node);
            }
            Kind::Launched { by, host, ok } => {
                if self.launch_model.is_some() {
                    // The launcher's slot is free: its next waiting launch starts.
                    let next = self.launchers.get_mut(&by).and_then(|(busy, waiting)| {
                        let next = waiting.pop_front();
                        if next.is_none() {
                            *busy = busy.saturating_sub(1);
                        }
                        next
                    });
                    if let Some((h, ok)) = next {
                        self.start_launch(by, h, ok);
                    }
                }
                // As on a real host, a client cannot start where one still runs: its listen
                // address is taken (a controller relaunching a host it merely cannot see).
                let h = &self.nodes[host as usize];
                // A launcher dies with its controller: nothing starts for one that crashed.
                let orphan = Some(by) == self.ctrl_slot && self.nodes[by as usize].ctrl().is_none();
                let by_member = Some(by) != self.ctrl_slot;
                let refused = by_member && self.member_launch_fails.contains(&host);
                let ok = ok && !h.killed && h.host_up && h.node().is_none() && !orphan && !refused;
                if ok {
                    self.launches += 1;
                    if Some(by) == self.ctrl_slot {
                        self.launches_by_controller += 1;
                    }
                    self.launch_idle(host);
                }
                self.events += 1;
                let Some(p) = self.nodes[by as usize].proc.as_mut() else { return };
                let r: LaunchResult = if ok { Ok(()) } else { Err("the host is down") };
                machine!(p, |m| Machine::handle_launched(m, now, id(host), r));
                self.after(by);
            }
            Kind::Up { link, gen, to } => self.on_up(link, gen, to),
            Kind::ConnectFailed { to, peer, incarnation } => self.on_connect_failed(to, peer, incarnation),
            Kind::Down { link, gen, to } => self.on_down(link, gen, to),
            Kind::Deliver { link, gen, to, frame } => self.on_deliver(link, gen, to, frame),
        }
    }

    /// With a launch model: a launch by `by` starts now (its slot is taken), and ends a round
    /// trip and the model's launch time later.
    fn start_launch(&mut self, by: u32, host: u32, ok: bool) {
        let ms = self.launch_model.map_or(Duration::ZERO, |m| m.0);
        let at = self.now + self.delay() + self.delay() + ms;
        self.push(at, Kind::Launched { by, host, ok });
    }

    /// Drain node `i`'s outputs, carry them out, check its safety, re-arm its timer.
    pub(crate) fn after(&mut self, i: u32) {
        while let Some(o) = self.nodes[i as usize].proc.as_mut().and_then(|p| machine!(p, |m| Machine::poll_output(m)))
        {
            match o {
                Output::Transmit { to, frame } => self.transmit(i, idx(to), frame),
                Output::Connect(peer) => self.connect(i, idx(peer)),
                Output::Close(peer) => {
                    if self.node(i).is_some_and(|n| n.parent() == Some(peer) || n.children().contains(&peer)) {
                        self.pinned_closes += 1;
                        self.violation(format!("node {i} closed its link to {peer}, its parent or child"));
                    }
                    self.close(i, idx(peer))
                }
                Output::Event(e) => self.on_event(i, e),
                Output::Spawn { job, .. } => {
                    let (lo, hi) = self.job_us;
                    let us = if hi > lo { self.procs.random_range(lo..=hi) } else { lo };
                    let incarnation = self.nodes[i as usize].incarnation;
                    self.push(self.now + Duration::from_micros(us), Kind::ProcExit { node: i, incarnation, job });
                }
                // Transfers move chunk counts, not bytes: storage is a counter (the node's
                // `chunks_stored`), a chunk sent from storage is an empty chunk, and checking
                // the digest takes a millisecond.
                Output::PushOpen { .. } | Output::PushWrite { .. } | Output::PushForget { .. } => {}
                Output::PushSend { to, job, index } => {
                    if let Some(frame) = plush_core::frame::chunk_frame(job, index, &[], 64) {
                        self.transmit(i, idx(to), frame);
                    }
                }
                Output::PushDone { job } => {
                    let incarnation = self.nodes[i as usize].incarnation;
                    self.push(self.now + Duration::from_millis(1), Kind::PushVerified { node: i, incarnation, job });
                }
                // The simulated process ignores signals: the node has recorded its result.
                Output::Signal { job } => self.signals.push((self.now, i, job)),
                // Simulated processes write all at once: nothing to pause.
                Output::ReadOutput { .. } => {}
                Output::Launch { host } => {
                    let h = idx(host);
                    let ok = (h as usize) < self.nodes.len() && self.nodes[h as usize].ctrl().is_none();
                    let host = h.min(self.nodes.len() as u32 - 1);
                    match self.launch_model {
                        None => {
                            // A launcher (ssh) takes a while: a round trip and a process start.
                            let at = self.now + self.delay() + self.delay() + Duration::from_millis(100);
                            self.push(at, Kind::Launched { by: i, host, ok });
                        }
                        Some((_, fanout)) => {
                            let (busy, waiting) = self.launchers.entry(i).or_default();
                            if *busy < fanout {
                                *busy += 1;
                                self.start_launch(i, host, ok);
                            } else {
                                waiting.push_back((host, ok));
                            }
                        }
                    }
                }
                Output::Exit => {
                    self.exits += 1;
                    self.crash(i, CrashKind::Process);
                    self.nodes[i as usize].killed = false;
                    return;
                }
                Output::Report(r) => self.on_report(*r),
            }
        }
        self.check_node(i);
        let sn = &mut self.nodes[i as usize];
        if let Some(n) = sn.node_mut() {
            // A million nodes' spare frame buffers would be gigabytes.
            n.trim_buffers();
        }
        let t = sn.proc.as_mut().and_then(|p| machine!(p, |m| Machine::poll_timeout(&*m)));
        if let Some(t) = t {
            if sn.timer.is_none_or(|cur| t < cur) {
                let t = t.max(self.now);
                sn.timer = Some(t);
                let incarnation = sn.incarnation;
                self.push(t, Kind::Timer { node: i, incarnation });
            }
        }
    }

    /// Record a `Results` frame of the watched job: who received whose result.
    pub(crate) fn note_results(&mut self, _from: u32, to: u32, payload: &[u8]) {
        let Ok(Message::Job(JobMsg::Results { job, groups, .. })) = Message::decode(payload) else { return };
        if job != self.job.id {
            return;
        }
        if Some(to) == self.ctrl_slot {
            self.job.ctrl_messages += 1;
            return;
        }
        for g in groups.iter() {
            for y in g.nodes.iter() {
                let y = idx(y) as usize;
                if y < self.job.receivers.len() && y != to as usize && !self.job.receivers[y].contains(&to) {
                    self.job.receivers[y].push(to);
                }
            }
        }
    }

    /// Record what the controller reported.
    fn on_report(&mut self, r: CtrlReport) {
        if matches!(r, CtrlReport::Result { .. }) {
            self.results.push((self.now, r.clone()));
        }
        match r {
            CtrlReport::Result { job, nodes, output, .. } if job == self.job.id => {
                let bit = if self.ctrl_crash.gen == 0 { 1 } else { 2 };
                for y in nodes.iter() {
                    let y = idx(y) as usize;
                    if y < self.job.reported.len() {
                        self.job.reported[y] = self.job.reported[y].saturating_add(1);
                    }
                    if self.ctrl_crash.crashed_at.is_some() || self.ctrl_crash.crash_at.is_some() {
                        if self.ctrl_crash.shown_by.len() < self.job.reported.len() {
                            self.ctrl_crash.shown_by.resize(self.job.reported.len(), 0);
                        }
                        if let Some(b) = self.ctrl_crash.shown_by.get_mut(y) {
                            *b |= bit;
                        }
                    }
                }
                if !self.job.outputs.iter().any(|o| o.as_slice() == output.as_slice()) {
                    self.job.outputs.push(output.as_ref().clone());
                }
                self.job.last_result = Some(self.now);
            }
            CtrlReport::Result { .. } => {}
            CtrlReport::Host { state, .. } => {
                if state == HostState::Failed {
                    self.host_failures += 1;
                }
            }
            other => {
                if matches!(other, CtrlReport::RootChanged(_)) && self.ctrl_crash.gen > 0 {
                    self.ctrl_crash.attached_at.get_or_insert(self.now);
                }
                self.ctrl_log.push((self.now, other))
            }
        }
    }

    /// Record what node `i` reported, and check its new parent for a loop.
    fn on_event(&mut self, i: u32, e: Event) {
        if self.recording {
            self.node_events.push((self.now, i, e.clone()));
        }
        if matches!(
            e,
            Event::ParentChanged(_)
                | Event::ChildAdded(_)
                | Event::ChildRemoved(_)
                | Event::BecameRoot
                | Event::StoppedBeingRoot
                | Event::Left
        ) {
            self.shape_at = self.now;
        }
        match e {
            Event::ParentChanged(Some(_)) | Event::BecameRoot => {
                let sn = &mut self.nodes[i as usize];
                if !sn.joined_once {
                    sn.joined_once = true;
                    self.joined_once += 1;
                    if let Some(f) = self.first_joins.as_mut() {
                        f.push(i);
                    }
                }
                if matches!(e, Event::ParentChanged(Some(_))) {
                    self.check_loop(i);
                }
            }
            Event::BroadcastReply { id, node } => self.replies.push((id, idx(node), self.now)),
            Event::Repaired { via_ransub } => {
                self.repair_times.push(self.now);
                if via_ransub {
                    self.repairs.0 += 1;
                } else {
                    self.repairs.1 += 1;
                }
            }
            Event::Population { population, epoch } => {
                self.populations.0 += 1;
                self.populations.1 = population;
                if self.counts.len() < MAX_COUNTS {
                    self.counts.push((self.now, i, epoch, population));
                }
            }
            _ => {}
        }
    }
}

/// Prefetch the cache line holding `r` (nothing if `None`). A hint to the processor: it reads
/// nothing and changes nothing that the program can observe.
#[inline(always)]
pub(crate) fn touch<T>(r: Option<&T>) {
    if let Some(r) = r {
        touch_ptr(std::ptr::from_ref(r).cast());
    }
}

/// Prefetch the cache line at `p` (see [`touch`]).
#[inline(always)]
pub(crate) fn touch_ptr(p: *const u8) {
    // SAFETY: a prefetch never faults and never reads into the program's view of memory; any
    // address is allowed (these are a live object's).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
