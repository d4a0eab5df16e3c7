//! The network and its faults.
//!
//! A link joins two nodes; each direction is a FIFO: a frame is delivered at
//! `max(now + delay, previous delivery in that direction)`, with `delay = min + Exp(mean)` capped
//! at `max` ([`Latency`]), plus a retransmission timeout for a frame lost (the scenario's
//! `loss`; none by default). Opening a link costs a round trip (the hellos); a live peer answers, a
//! dead process's kernel refuses at once, a dead or cut-off host stays silent until the connect
//! timeout. Closing a link delivers what was already in flight, then the close. A crashed
//! process resets every link at once; a crashed host is silence. Partitions (symmetric or
//! one-way) and per-pair clogs hold frames until they heal; refusals fail every connection
//! attempt. Every delivered frame is folded into the trace hash with its time and endpoints.
//!
//! The functions here are the half of [`Sim`] that moves frames: they schedule link events and,
//! when one is due, hand it to the machine at that end (through [`crate::dispatch`]).

use crate::dispatch::Kind;
use crate::scenario::{CrashKind, Scenario};
use crate::sim::{id, mix, Sim};
use plush_core::frame::{encode_hello, Frame, PREFIX};
use plush_core::wire::{Hello, Message, Role};
use plush_core::{Instant, LinkEvent};
use rand::RngExt;
use rand_pcg::Pcg64;
use std::time::Duration;

/// How much later a lost frame arrives: Linux's minimum retransmission timeout, which is also
/// about what its tail-loss probe waits for a lone segment (it allows for a delayed ACK).
pub const RETRANSMIT: Duration = Duration::from_millis(200);
/// How much later a connect completes when its SYN or SYN-ACK is lost: TCP's initial
/// retransmission timeout (RFC 6298).
pub const SYN_RETRANSMIT: Duration = Duration::from_secs(1);

/// One-way delays: `min + Exp(mean)` capped at `max`, with `mean = (max - min) / 5`, as the
/// scenario's latency fields say, and the scenario's loss; the tree runs and the star draw
/// theirs alike.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Latency {
    min_us: f64,
    mean_us: f64,
    max_us: f64,
    loss: f64,
}

impl Latency {
    /// The latency model of `sc`.
    pub(crate) fn new(sc: &Scenario) -> Self {
        let mean = ((sc.latency_max_ms - sc.latency_min_ms) / 5.0).max(0.0);
        Latency {
            min_us: sc.latency_min_ms * 1000.0,
            mean_us: mean * 1000.0,
            max_us: sc.latency_max_ms.max(sc.latency_min_ms) * 1000.0,
            loss: sc.loss.clamp(0.0, 1.0),
        }
    }

    /// The latency model of `sc`'s resets ([`Scenario::reset_latency_ms`]), if it has one.
    pub(crate) fn of_resets(sc: &Scenario) -> Option<Self> {
        let (min, max) = sc.reset_latency_ms?;
        let mut lat = Latency::new(&Scenario { latency_min_ms: min, latency_max_ms: max, ..sc.clone() });
        lat.loss = 0.0;
        Some(lat)
    }

    /// `extra` if a packet is lost (probability `loss`), else nothing; no draw without loss.
    pub(crate) fn lost(&self, rng: &mut Pcg64, extra: Duration) -> Duration {
        if self.loss > 0.0 && rng.random::<f64>() < self.loss {
            extra
        } else {
            Duration::ZERO
        }
    }

    /// One one-way delay, drawn from `rng`.
    pub(crate) fn draw(&self, rng: &mut Pcg64) -> Duration {
        let u: f64 = rng.random::<f64>();
        let exp = -(1.0 - u).ln() * self.mean_us;
        let d = (self.min_us + exp).min(self.max_us);
        Duration::from_micros(d as u64)
    }
}

/// One end's view of a link.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct End {
    pub(crate) node: u32,
    /// The end still takes deliveries (it has not closed, crashed, or been told of a close).
    pub(crate) open: bool,
    /// The end was told the link is up.
    pub(crate) up: bool,
    /// FIFO clock of deliveries *to* this end.
    pub(crate) next: Instant,
}

/// A connection between two nodes: its two ends, and a generation that tells a reused slot
/// from the link it held before.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub(crate) ends: [End; 2],
    pub(crate) gen: u32,
    pub(crate) live: bool,
}

impl Link {
    /// Which end `node` is (0 or 1).
    pub(crate) fn side(&self, node: u32) -> usize {
        usize::from(self.ends[1].node == node)
    }
}

/// A cut between the two partition sides, until `until`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cut {
    /// Side 0 → side 1 is blocked.
    pub(crate) forward: bool,
    /// Side 1 → side 0 is blocked.
    pub(crate) backward: bool,
    pub(crate) until: Instant,
}

impl Sim {
    /// One one-way delay, from the network's stream.
    pub(crate) fn delay(&mut self) -> Duration {
        self.lat.draw(&mut self.net)
    }

    /// When traffic from `a` to `b` may flow again (`now` if it flows).
    pub(crate) fn blocked_until(&self, a: u32, b: u32) -> Instant {
        let mut until = Instant::ZERO;
        if let Some(cut) = self.cut {
            let (sa, sb) = (self.nodes[a as usize].side, self.nodes[b as usize].side);
            if cut.until > self.now && ((sa == 0 && sb == 1 && cut.forward) || (sa == 1 && sb == 0 && cut.backward)) {
                until = until.max(cut.until);
            }
        }
        for &(x, y, t) in &self.clogs {
            if t > self.now && ((x == a && y == b) || (x == b && y == a)) {
                until = until.max(t);
            }
        }
        until
    }

    /// Delivery time of something sent now from `from` to end `to_end` of `link`, FIFO.
    pub(crate) fn fifo(&mut self, link: u32, from: u32, to_end: usize) -> Instant {
        let to = self.links[link as usize].ends[to_end].node;
        let d = self.delay() + self.lat.lost(&mut self.net, RETRANSMIT);
        let mut at = self.now + d;
        let blocked = self.blocked_until(from, to);
        if blocked > self.now {
            at = at.max(blocked + d);
        }
        let end = &mut self.links[link as usize].ends[to_end];
        at = at.max(end.next);
        end.next = at;
        at
    }

    /// The link between `a` and `b` whose `a` end is still open.
    pub(crate) fn find_link(&self, a: u32, b: u32) -> Option<u32> {
        self.nodes[a as usize].links.iter().filter(|(p, _)| *p == b).map(|&(_, l)| l).find(|&l| {
            let link = &self.links[l as usize];
            link.live && link.ends[link.side(a)].open
        })
    }

    pub(crate) fn new_link(&mut self, a: u32, b: u32) -> u32 {
        // A new connection between the same pair must not overtake the old one's close:
        // inherit its FIFO clocks.
        let (mut next_a, mut next_b) = (self.now, self.now);
        for &(_, l) in self.nodes[a as usize].links.iter().filter(|(p, _)| *p == b) {
            let link = &self.links[l as usize];
            let side = link.side(a);
            if link.live {
                next_a = next_a.max(link.ends[side].next);
                next_b = next_b.max(link.ends[1 - side].next);
            }
        }
        let ends = [
            End { node: a, open: true, up: false, next: next_a },
            End { node: b, open: true, up: false, next: next_b },
        ];
        let l = match self.free_links.pop() {
            Some(l) => {
                let gen = self.links[l as usize].gen.wrapping_add(1);
                self.links[l as usize] = Link { ends, gen, live: true };
                l
            }
            None => {
                self.links.push(Link { ends, gen: 0, live: true });
                (self.links.len() - 1) as u32
            }
        };
        self.nodes[a as usize].links.push((b, l));
        self.nodes[b as usize].links.push((a, l));
        l
    }

    /// One end stops taking deliveries.
    pub(crate) fn close_end(&mut self, l: u32, side: usize) {
        let end = &mut self.links[l as usize].ends[side];
        if end.open && end.up {
            let n = end.node as usize;
            self.nodes[n].fds = self.nodes[n].fds.saturating_sub(1);
        }
        end.open = false;
    }

    /// Forget the link once neither end takes deliveries.
    pub(crate) fn maybe_free(&mut self, l: u32) {
        let link = &self.links[l as usize];
        if link.live && !link.ends[0].open && !link.ends[1].open {
            let [a, b] = [link.ends[0].node, link.ends[1].node];
            self.links[l as usize].live = false;
            self.nodes[a as usize].links.retain(|x| x.1 != l);
            self.nodes[b as usize].links.retain(|x| x.1 != l);
            self.free_links.push(l);
        }
    }

    /// Close every link of slot `i`, whose process died: a process crash resets them (the peer
    /// hears at once), a host crash is silence.
    pub(crate) fn cut_links(&mut self, i: u32, kind: CrashKind) {
        let links: Vec<u32> = self.nodes[i as usize].links.iter().map(|x| x.1).collect();
        for l in links {
            let side = self.links[l as usize].side(i);
            self.close_end(l, side);
            let other = 1 - side;
            if kind == CrashKind::Process && self.links[l as usize].ends[other].open {
                // The kernel resets the connection: the peer hears at once, in-flight data is lost.
                let gen = self.links[l as usize].gen;
                let to = self.links[l as usize].ends[other].node;
                // One draw either way, so that the network's stream stays in step.
                let d = match self.reset_lat {
                    Some(r) => r.draw(&mut self.net),
                    None => self.delay(),
                };
                let at = self.now + d;
                self.push(at, Kind::Down { link: l, gen, to });
            }
            self.maybe_free(l);
        }
    }

    /// Cut `side_one` (partition side 1) from everyone else until `until`; `one_way` blocks only
    /// traffic from side 0 to side 1.
    pub fn partition(&mut self, side_one: &[u32], one_way: bool, until: Instant) {
        for n in &mut self.nodes {
            n.side = 0;
        }
        for &i in side_one {
            self.nodes[i as usize].side = 1;
        }
        self.cut = Some(Cut { forward: true, backward: !one_way, until });
    }

    /// Deliver `msg` to `to` as if `from` had sent it on the link between them, which must be up
    /// at both ends (for tests of what a node does with a message it should not get). Returns
    /// false, delivering nothing, when there is no such link.
    pub fn inject(&mut self, from: u32, to: u32, msg: &Message) -> bool {
        if from as usize >= self.nodes.len() || to as usize >= self.nodes.len() {
            return false;
        }
        let Some(l) = self.find_link(from, to) else { return false };
        let link = &self.links[l as usize];
        let to_end = 1 - link.side(from);
        if !link.ends[1 - to_end].up || !link.ends[to_end].open || !link.ends[to_end].up {
            return false;
        }
        let Ok(frame) = plush_core::frame::FramePool::default().encode(msg, self.cfg.max_frame) else { return false };
        let gen = link.gen;
        let at = self.fifo(l, from, to_end);
        self.push(at, Kind::Deliver { link: l, gen, to, frame });
        true
    }

    /// Hold all traffic between `a` and `b` until `until`.
    pub fn clog(&mut self, a: u32, b: u32, until: Instant) {
        self.clogs.push((a, b, until));
    }

    /// Make every connection attempt to or from `i` fail until `until`.
    pub fn refuse_connects(&mut self, i: u32, until: Instant) {
        self.refuse.push((i, until));
    }

    /// Fold a delivery into the trace hash (a multiply-xorshift mix, eight bytes at a time).
    pub(crate) fn fold(&mut self, from: u32, to: u32, bytes: &[u8]) {
        fn eat(h: u64, w: u64) -> u64 {
            (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
        }
        let mut h = eat(self.trace, self.now.0);
        h = eat(h, (u64::from(from) << 32) | u64::from(to));
        h = eat(h, bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            h = eat(h, u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
        }
        let mut last = [0u8; 8];
        last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.trace = eat(h, u64::from_le_bytes(last));
    }

    pub(crate) fn transmit(&mut self, from: u32, to: u32, frame: Frame) {
        if to as usize >= self.nodes.len() {
            return;
        }
        let Some(l) = self.find_link(from, to) else { return };
        let to_end = 1 - self.links[l as usize].side(from);
        if !self.links[l as usize].ends[1 - to_end].open {
            return;
        }
        let at = self.fifo(l, from, to_end);
        let gen = self.links[l as usize].gen;
        self.push(at, Kind::Deliver { link: l, gen, to, frame });
    }

    pub(crate) fn refused(&self, i: u32) -> bool {
        self.refuse.iter().any(|&(x, t)| x == i && t > self.now)
    }

    pub(crate) fn connect(&mut self, from: u32, to: u32) {
        let incarnation = self.nodes[from as usize].incarnation;
        if to as usize >= self.nodes.len() {
            let at = self.now + self.delay();
            self.push(at, Kind::ConnectFailed { to: from, peer: to, incarnation });
            return;
        }
        if let Some(l) = self.find_link(from, to) {
            let side = self.links[l as usize].side(from);
            let end = self.links[l as usize].ends[side];
            if end.open && end.up {
                // Already up (the peer opened it): report it again at once.
                let gen = self.links[l as usize].gen;
                self.push(self.now, Kind::Up { link: l, gen, to: from });
            }
            // Otherwise its `Up` is on the way.
            if end.open {
                return;
            }
        }
        let target = &self.nodes[to as usize];
        let there = target.proc.is_some();
        let host_up = target.host_up;
        let forward_block = self.blocked_until(from, to);
        let backward_block = self.blocked_until(to, from);
        let block = forward_block.max(backward_block);
        if self.refused(from) || self.refused(to) {
            let at = self.now + self.delay();
            self.push(at, Kind::ConnectFailed { to: from, peer: to, incarnation });
            return;
        }
        if !host_up || block > self.now + self.connect_timeout {
            let at = self.now + self.connect_timeout;
            self.push(at, Kind::ConnectFailed { to: from, peer: to, incarnation });
            return;
        }
        if !there {
            // The host's kernel refuses: a round trip.
            let at = self.now + self.delay() + self.delay();
            self.push(at, Kind::ConnectFailed { to: from, peer: to, incarnation });
            return;
        }
        let l = self.new_link(from, to);
        let gen = self.links[l as usize].gen;
        // The hellos: ours reaches the peer, which reports the link up; its hello comes back.
        let hello = encode_hello(&Hello::new(id(from), Role::Client, mix(self.master_seed, self.seq)));
        self.fold(from, to, &hello[PREFIX..]);
        let syn = self.lat.lost(&mut self.net, SYN_RETRANSMIT) + self.lat.lost(&mut self.net, SYN_RETRANSMIT);
        let t1 = self.fifo(l, from, 1) + syn;
        self.links[l as usize].ends[1].next = t1;
        self.push(t1, Kind::Up { link: l, gen, to });
        let t2 = t1.max(self.links[l as usize].ends[0].next) + self.delay();
        self.links[l as usize].ends[0].next = t2;
        self.push(t2, Kind::Up { link: l, gen, to: from });
    }

    pub(crate) fn close(&mut self, from: u32, to: u32) {
        if to as usize >= self.nodes.len() {
            return;
        }
        let Some(l) = self.find_link(from, to) else { return };
        let side = self.links[l as usize].side(from);
        self.close_end(l, side);
        let other = 1 - side;
        if self.links[l as usize].ends[other].open {
            let at = self.fifo(l, from, other);
            let gen = self.links[l as usize].gen;
            self.push(at, Kind::Down { link: l, gen, to });
        }
        self.maybe_free(l);
    }

    // ----- link events, when due -----------------------------------------------------------

    /// The hello from the other end of `link` arrives at `to`: the link is up there.
    pub(crate) fn on_up(&mut self, link: u32, gen: u32, to: u32) {
        let l = &self.links[link as usize];
        let side = l.side(to);
        if !l.live || l.gen != gen || !l.ends[side].open || !self.present(to) {
            return;
        }
        self.links[link as usize].ends[side].up = true;
        self.nodes[to as usize].fds += 1;
        let peer = self.links[link as usize].ends[1 - side].node;
        // The peer restarted and connected again before the reset of its old connection
        // reached us: like a driver, drop the old connection now (its reset then finds
        // it closed), so that the node holds one connection per peer and its budget
        // counts it once.
        let stale: Vec<u32> = self.nodes[to as usize]
            .links
            .iter()
            .filter(|&&(p, l)| p == peer && l != link)
            .map(|&(_, l)| l)
            .filter(|&l| {
                let o = &self.links[l as usize];
                let s = o.side(to);
                o.live && o.ends[s].open && o.ends[s].up && !o.ends[1 - s].open
            })
            .collect();
        for l in stale {
            let s = self.links[l as usize].side(to);
            self.close_end(l, s);
            self.maybe_free(l);
        }
        self.events += 1;
        self.link_event(to, peer, LinkEvent::Connected);
        self.after(to);
        // Once the node has had its say (it may refuse the link), check its budget.
        let fds = self.nodes[to as usize].fds;
        self.max_open = self.max_open.max(fds);
        if fds as usize > self.cfg.max_links {
            self.violation(format!("node {to} holds {fds} links, over its budget of {}", self.cfg.max_links));
        }
    }

    /// `to`'s attempt to reach `peer` failed.
    pub(crate) fn on_connect_failed(&mut self, to: u32, peer: u32, incarnation: u32) {
        if self.nodes[to as usize].incarnation != incarnation || !self.present(to) {
            return;
        }
        if (peer as usize) < self.nodes.len()
            && self.find_link(to, peer).is_some_and(|l| {
                let link = &self.links[l as usize];
                link.ends[link.side(to)].up
            })
        {
            // The peer connected to us while our attempt was failing (it was restarted
            // meanwhile): the node holds one link per peer, that one is up, and a driver
            // does not report the failed attempt over it.
            return;
        }
        self.events += 1;
        self.link_event(to, peer, LinkEvent::ConnectFailed);
        self.after(to);
    }

    /// The other end of `link` closed or reset it: `to` hears.
    pub(crate) fn on_down(&mut self, link: u32, gen: u32, to: u32) {
        let l = &self.links[link as usize];
        let side = l.side(to);
        if !l.live || l.gen != gen || !l.ends[side].open {
            return;
        }
        let was_up = l.ends[side].up;
        let peer = l.ends[1 - side].node;
        self.close_end(link, side);
        self.maybe_free(link);
        if !self.present(to) {
            return;
        }
        if self.find_link(to, peer).is_some() {
            // A newer connection to the same peer is open at this end (the peer was
            // restarted and connected again before its old connection's reset came):
            // the node holds one link per peer, the newer one, and a driver ignores the
            // close of a connection it has replaced.
            return;
        }
        self.events += 1;
        let ev = if was_up { LinkEvent::Closed } else { LinkEvent::ConnectFailed };
        self.link_event(to, peer, ev);
        self.after(to);
    }

    /// A frame from the other end of `link` arrives at `to`.
    pub(crate) fn on_deliver(&mut self, link: u32, gen: u32, to: u32, frame: Frame) {
        let l = &self.links[link as usize];
        let side = l.side(to);
        if !l.live || l.gen != gen || !l.ends[side].open || !l.ends[side].up {
            return;
        }
        let from = l.ends[1 - side].node;
        self.events += 1;
        self.frames += 1;
        self.fold(from, to, frame.payload());
        if !self.watch.is_empty() && (self.watch.contains(&from) || self.watch.contains(&to)) {
            if let Ok(m) = plush_core::wire::Message::decode(frame.payload()) {
                eprintln!("t={:.3}s {from} -> {to}: {m:?}", self.now.0 as f64 / 1e6);
            }
        }
        if !self.present(to) {
            return;
        }
        if self.job.started.is_some() {
            self.note_results(from, to, frame.payload());
        }
        if self.recording {
            if let Ok(m @ (Message::Control(_) | Message::Job(_))) = Message::decode(frame.payload()) {
                self.messages.push((self.now, from, to, m));
            }
        }
        if let Some(kinds) = self.kinds.as_mut() {
            if let Ok(m) = Message::decode(frame.payload()) {
                let name = format!("{m:?}");
                let cut = name.find([' ', '(', '{']).map_or(name.len(), |i| i);
                let inner = name[cut..].trim_start_matches(['(', ' ']);
                let cut2 = inner.find([' ', '(', '{', ')']).map_or(inner.len(), |i| i);
                *kinds.entry(format!("{}::{}", &name[..cut], &inner[..cut2])).or_default() += 1;
            }
        }
        if self.frame_event(to, from, frame.payload()).is_err() {
            // A driver closes a link that sent a bad frame.
            self.violation(format!("node {to} refused a frame from {from}"));
            self.close(to, from);
        }
        drop(frame);
        self.after(to);
    }
}
