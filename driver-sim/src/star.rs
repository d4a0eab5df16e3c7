//! The star layout (`plush sim --layout star`): Plush before Plush-M.
//!
//! The controller holds one link to every client and does every launch, broadcast and recovery
//! itself: there is no tree and no RanSub. The core has no star mode (Plush-M replaced it), so
//! the controller's behaviour is modelled here, in the simulator, with the tree runs' network
//! model and phases:
//!
//! - **Clock and network.** Virtual time in microseconds ([`Instant`]); one-way delays drawn
//!   exactly as [`crate::Sim`] draws them, `min + Exp(mean)` capped at `max` with
//!   `mean = (max - min) / 5`, from the same network stream (the master seed mixed with stream
//!   1); each direction of a link is FIFO. Events sit in one heap of `calendar::Ev`s,
//!   ordered by (time, sequence) as the tree runs' calendar orders them.
//! - **The controller is one event loop.** Every frame it sends or receives costs it
//!   [`FRAME_US`] of its time, one after the other (a busy clock). So a broadcast to N clients
//!   leaves the controller over `N × FRAME_US`, and the N replies queue behind each other. The
//!   clients' heartbeats (one per client per `config.heartbeat`) take their share of that
//!   time: the controller's other work runs at `1 - load` of its speed, where
//!   `load = joined × FRAME_US / heartbeat`. A client whose heartbeats would bring the load to
//!   [`MAX_LOAD`] (90,000 clients at the defaults) is never read in time: the controller times
//!   it out and drops it, so it never joins and the run does not converge. Tree nodes in the
//!   simulator are charged nothing for their frames; each handles at most `degree + 1` per
//!   broadcast, so at [`FRAME_US`] the tree's curves would move by under a millisecond per
//!   level.
//! - **The fd limit.** The controller accepts at most `controller_fds` client links at once.
//!   A client past the limit is refused (a round trip), tries again after `config.join_retry`,
//!   and gives up after [`CONNECT_ATTEMPTS`] refusals: it never joins, the build does not
//!   converge, every refusal is counted in `conns.refused` and the clients left out are the
//!   report's `tree.orphans`.
//! - **Build.** Clients start paced like the tree runs' joins (`max_outstanding_joins` at once,
//!   no launch), connect (a round trip of hellos), send `Join` and are joined when the
//!   controller's welcome reaches them.
//! - **Broadcast.** The controller sends the broadcast to every joined client, each replies at
//!   once; a reply counts when the controller has read it.
//! - **Faults.** Killed clients are drawn as in the tree runs. A process crash resets the link:
//!   the controller reads the reset one delay later. A silent host crash is noticed by the
//!   heartbeat timeout: `config.dead_after` after the last heartbeat that arrived (uniform
//!   within the last `config.heartbeat` before the crash). Survivors keep their links, so
//!   recovery is over when the controller has dropped every dead client. Killing the root
//!   (`--kill-root`) kills the controller: a star cannot recover from that.
//! - **Measured as the tree's are.** Build and recovery times are read at the first 250 ms
//!   tick after the phase is done, as the tree runs check convergence every 250 ms.
//!
//! Partitions, clogs, refusals, restarts and jobs are not modelled for the star:
//! [`unsupported`] names them, and `plush sim` refuses such a run.

use crate::calendar::Ev;
use crate::net::Latency;
use crate::play::rss_bytes;
use crate::scenario::{BroadcastReport, CrashKind, Scenario, Shape, SimReport};
use crate::sim::mix;
use plush_core::Instant;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;
use std::collections::BinaryHeap;
use std::time::Duration;

/// Controller time per frame sent or received, in microseconds: a sealed small frame and its
/// system call. The README's sealed relay moves 57k to 119k frames/s on one core here, 8 to
/// 17 µs per frame.
pub const FRAME_US: u64 = 10;
/// Refusals a client takes before it gives up joining.
pub const CONNECT_ATTEMPTS: u32 = 3;
/// Heartbeat load at which the controller cannot keep up with its clients.
pub const MAX_LOAD: f64 = 0.9;
/// The tick at which the tree runs check convergence; star phases are read at the same ticks.
const TICK_US: u64 = 250_000;

/// Why `sc` cannot run as a star, if it cannot: the fault knobs the star does not model.
pub fn unsupported(sc: &Scenario) -> Option<&'static str> {
    if sc.partition.is_some() {
        Some("--partition")
    } else if sc.clogs > 0 {
        Some("--clogs")
    } else if sc.refuse > 0 {
        Some("--refuse")
    } else if sc.restart_after_s.is_some() {
        Some("--restart-after")
    } else if sc.job {
        Some("--job")
    } else {
        None
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Client `c` starts and sends its connection's hello.
    Start(u32),
    /// The hello of client `c` reaches the controller's listening socket.
    Hello(u32),
    /// The controller refused client `c`: the client hears it.
    Refused(u32),
    /// The controller's hello reached client `c`: it sends `Join`.
    Connected(u32),
    /// The controller reads client `c`'s `Join` (at its busy clock) and welcomes it.
    Join(u32),
    /// The welcome reaches client `c`: joined.
    Welcome(u32),
    /// Broadcast `b` reaches client `c`, which replies.
    Broadcast(u32, u64),
    /// Client `c`'s reply to broadcast `b` reaches the controller.
    Reply(u32, u64),
    /// The controller learns that client `c` died (a reset, or its heartbeat timeout).
    Dead(u32),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// Not started yet.
    #[default]
    Idle,
    /// Connecting or joining.
    Joining,
    /// In the controller's table.
    Joined,
    /// Refused too often: never joins.
    GaveUp,
}

#[derive(Clone, Copy, Debug, Default)]
struct Client {
    state: State,
    alive: bool,
    refusals: u32,
    /// The controller holds this client's link (counted against its fds).
    held: bool,
    /// FIFO clocks of the link: deliveries to the client, to the controller.
    to_client: Instant,
    to_ctrl: Instant,
}

/// The star simulator.
pub struct Star {
    now: Instant,
    seq: u64,
    heap: BinaryHeap<Ev<Kind>>,
    clients: Vec<Client>,
    net: Pcg64,
    lat: Latency,
    /// The controller is busy until then.
    busy: Instant,
    fds: u32,
    open: u32,
    joined: u32,
    finished: u32,
    refused: u64,
    max_open: u32,
    heartbeat_us: f64,
    controller_alive: bool,
    saturated: bool,
    /// A refused client tries again after this long.
    retry: Duration,
    /// Replies read by the controller: (broadcast, client, time).
    replies: Vec<(u64, u32, Instant)>,
    /// Dead clients the controller still holds.
    undetected: u32,
    last_detection: Instant,
    trace: u64,
    events: u64,
    frames: u64,
}

impl Star {
    /// A star of `sc.nodes` clients, none started, with `sc`'s network model.
    pub fn new(sc: &Scenario) -> Self {
        Star {
            now: Instant::ZERO,
            seq: 0,
            heap: BinaryHeap::new(),
            clients: vec![Client { alive: true, ..Client::default() }; sc.nodes as usize],
            net: Pcg64::seed_from_u64(mix(sc.seed, 1)),
            lat: Latency::new(sc),
            busy: Instant::ZERO,
            fds: sc.controller_fds,
            open: 0,
            joined: 0,
            finished: 0,
            refused: 0,
            max_open: 0,
            heartbeat_us: sc.config.heartbeat.as_micros().max(1) as f64,
            controller_alive: true,
            saturated: false,
            retry: sc.config.join_retry,
            replies: Vec::new(),
            undetected: 0,
            last_detection: Instant::ZERO,
            trace: 0xcbf2_9ce4_8422_2325,
            events: 0,
            frames: 0,
        }
    }

    fn push(&mut self, at: Instant, kind: Kind) {
        self.seq += 1;
        self.heap.push(Ev { at, seq: self.seq, kind });
    }

    /// One one-way delay, drawn as the tree runs draw theirs.
    fn delay(&mut self) -> Duration {
        self.lat.draw(&mut self.net)
    }

    /// Delivery time of a frame sent now to client `c` (FIFO on its link).
    fn down_at(&mut self, c: u32, sent: Instant) -> Instant {
        let at = (sent + self.delay()).max(self.clients[c as usize].to_client);
        self.clients[c as usize].to_client = at;
        at
    }

    /// Delivery time of a frame client `c` sends now to the controller (FIFO on its link).
    fn up_at(&mut self, c: u32) -> Instant {
        let at = (self.now + self.delay()).max(self.clients[c as usize].to_ctrl);
        self.clients[c as usize].to_ctrl = at;
        at
    }

    /// The controller handles one frame arriving now: when it is done with it.
    fn work(&mut self) -> Instant {
        let load = f64::from(self.joined) * FRAME_US as f64 / self.heartbeat_us;
        let cost = (FRAME_US as f64 / (1.0 - load.min(MAX_LOAD))) as u64;
        self.busy = self.busy.max(self.now) + Duration::from_micros(cost);
        self.frames += 1;
        self.busy
    }

    fn fold(&mut self, what: u64, c: u32) {
        for w in [self.now.0, what, u64::from(c)] {
            self.trace = (self.trace ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
        }
    }

    fn run_until(&mut self, until: Instant, mut stop: impl FnMut(&Star) -> bool) {
        while self.heap.peek().is_some_and(|e| e.at <= until) {
            let Some(ev) = self.heap.pop() else { break };
            self.now = ev.at;
            self.events += 1;
            self.dispatch(ev.kind);
            if stop(self) {
                return;
            }
        }
        self.now = self.now.max(until);
    }

    fn dispatch(&mut self, kind: Kind) {
        let tag = match kind {
            Kind::Start(_) => 1,
            Kind::Hello(_) => 2,
            Kind::Refused(_) => 3,
            Kind::Connected(_) => 4,
            Kind::Join(_) => 5,
            Kind::Welcome(_) => 6,
            Kind::Broadcast(..) => 7,
            Kind::Reply(..) => 8,
            Kind::Dead(_) => 9,
        };
        let c = match kind {
            Kind::Start(c)
            | Kind::Hello(c)
            | Kind::Refused(c)
            | Kind::Connected(c)
            | Kind::Join(c)
            | Kind::Welcome(c)
            | Kind::Broadcast(c, _)
            | Kind::Reply(c, _)
            | Kind::Dead(c) => c,
        };
        self.fold(tag, c);
        let alive = self.clients[c as usize].alive;
        match kind {
            Kind::Start(c) => {
                self.clients[c as usize].state = State::Joining;
                let at = self.up_at(c);
                self.push(at, Kind::Hello(c));
            }
            Kind::Hello(c) => {
                if !self.controller_alive || !alive {
                    return;
                }
                // The kernel accepts or refuses at once; the controller's loop sees only the
                // links it accepted.
                if self.open >= self.fds {
                    self.refused += 1;
                    let at = self.down_at(c, self.now);
                    self.push(at, Kind::Refused(c));
                } else {
                    self.open += 1;
                    self.max_open = self.max_open.max(self.open);
                    self.clients[c as usize].held = true;
                    let done = self.work();
                    let at = self.down_at(c, done);
                    self.push(at, Kind::Connected(c));
                }
            }
            Kind::Refused(c) => {
                if !alive {
                    return;
                }
                let cl = &mut self.clients[c as usize];
                cl.refusals += 1;
                if cl.refusals >= CONNECT_ATTEMPTS {
                    cl.state = State::GaveUp;
                    self.finished += 1;
                } else {
                    let at = self.now + self.retry;
                    self.push(at, Kind::Start(c));
                }
            }
            Kind::Connected(c) => {
                if alive {
                    let at = self.up_at(c);
                    self.push(at, Kind::Join(c));
                }
            }
            Kind::Join(c) => {
                if !self.controller_alive || !alive {
                    return;
                }
                // Read the join, then send the welcome: two frames of the controller's time.
                self.work();
                let sent = self.work();
                let at = self.down_at(c, sent);
                self.push(at, Kind::Welcome(c));
            }
            Kind::Welcome(c) => {
                if alive && self.clients[c as usize].state == State::Joining {
                    if f64::from(self.joined + 1) * FRAME_US as f64 / self.heartbeat_us >= MAX_LOAD {
                        // One more client's heartbeats would saturate the controller: its
                        // heartbeats go unread, the controller times it out and drops it.
                        self.saturated = true;
                        self.clients[c as usize].state = State::GaveUp;
                        self.clients[c as usize].held = false;
                        self.open -= 1;
                    } else {
                        self.clients[c as usize].state = State::Joined;
                        self.joined += 1;
                    }
                    self.finished += 1;
                }
            }
            Kind::Broadcast(c, b) => {
                if alive {
                    let at = self.up_at(c);
                    self.push(at, Kind::Reply(c, b));
                }
            }
            Kind::Reply(c, b) => {
                if self.controller_alive && alive {
                    let read = self.work();
                    self.replies.push((b, c, read));
                }
            }
            Kind::Dead(c) => {
                if self.controller_alive && self.clients[c as usize].held {
                    self.clients[c as usize].held = false;
                    self.open -= 1;
                    if self.clients[c as usize].state == State::Joined {
                        self.joined -= 1;
                    }
                    self.undetected -= 1;
                    self.last_detection = self.last_detection.max(self.work());
                }
            }
        }
    }
}

/// Time rounded up to the next 250 ms tick after `from` (at least one tick), as the tree runs
/// read their phases.
fn ticked(from: Instant, done: Instant) -> Instant {
    let ticks = done.since(from).as_micros().div_ceil(u128::from(TICK_US)).max(1);
    from + Duration::from_micros(ticks as u64 * TICK_US)
}

fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Broadcast from the controller to every client in its table, and read the replies (for at
/// most `limit`, and at most 60 s, as the tree runs wait).
fn broadcast(st: &mut Star, bid: u64, limit: Duration) -> BroadcastReport {
    let expected = st.clients.iter().filter(|c| c.alive).count() as u32;
    let mut r = BroadcastReport { expected, ..BroadcastReport::default() };
    if !st.controller_alive {
        r.missing = (0..st.clients.len() as u32).filter(|&c| st.clients[c as usize].alive).take(10).collect();
        return r;
    }
    let start = st.now;
    let first = st.replies.len();
    let mut sent = 0usize;
    for c in 0..st.clients.len() as u32 {
        let cl = st.clients[c as usize];
        if cl.alive && cl.held && cl.state == State::Joined {
            let done = st.work();
            let at = st.down_at(c, done);
            st.push(at, Kind::Broadcast(c, bid));
            sent += 1;
        }
    }
    let deadline = start + limit.min(Duration::from_secs(60));
    st.run_until(deadline, |s| s.replies.len() - first >= sent);
    let mut seen = vec![false; st.clients.len()];
    let (mut sum, mut max) = (0.0, 0.0f64);
    for &(b, c, at) in &st.replies[first..] {
        if b == bid && !seen[c as usize] {
            seen[c as usize] = true;
            r.replies += 1;
            let t = ms(at.since(start));
            sum += t;
            max = max.max(t);
        }
    }
    r.avg_sim_ms = if r.replies > 0 { sum / f64::from(r.replies) } else { 0.0 };
    r.max_sim_ms = max;
    r.missing =
        (0..st.clients.len() as u32).filter(|&c| st.clients[c as usize].alive && !seen[c as usize]).take(10).collect();
    // The controller reads the last reply at its busy clock; the next phase starts after it.
    st.now = st.now.max(st.busy);
    st.replies.truncate(first);
    r
}

/// The star's shape: the controller as the root of every client it holds.
fn shape(st: &Star) -> Shape {
    let alive = st.clients.iter().filter(|c| c.alive).count() as u32;
    let held = st.clients.iter().filter(|c| c.alive && c.held && c.state == State::Joined).count() as u32;
    let root = st.controller_alive;
    Shape {
        roots: u32::from(root),
        orphans: if root { alive - held } else { alive },
        loops: 0,
        max_children: if root { st.open } else { 0 },
        depth: u32::from(root && held > 0),
        disagreements: 0,
    }
}

/// Play `sc` as a star: build, broadcast, faults, recovery, broadcast (see the module's text).
/// The report has the tree runs' fields; RanSub's are zero (its p-values `null`), and the
/// degree is the controller's fan-out, `nodes`.
pub fn play(sc: &Scenario) -> SimReport {
    let wall = std::time::Instant::now();
    let rss0 = rss_bytes();
    let n = sc.nodes.max(1);
    let mut st = Star::new(&Scenario { nodes: n, ..sc.clone() });
    let mut rng = Pcg64::seed_from_u64(mix(sc.seed, 2));
    let limit = Duration::from_micros((sc.phase_limit_s * 1e6) as u64);
    let mut report = SimReport { nodes: n, seed: sc.seed, degree: n, ..SimReport::default() };

    // Build: clients paced like the tree runs' joins.
    let max_out = sc.max_outstanding_joins.max(1) as u32;
    let deadline = Instant::ZERO + sc.build_limit();
    let mut next = 0u32;
    while st.finished < n && st.now < deadline {
        while next < n && next - st.finished < max_out {
            st.push(st.now, Kind::Start(next));
            next += 1;
        }
        let started = next;
        st.run_until(deadline, |s| s.finished >= n || (started < n && s.finished + max_out > started));
    }
    let built = st.joined == n && !st.saturated;
    st.now = ticked(Instant::ZERO, st.now);
    report.build.sim_ms = ms(st.now.since(Instant::ZERO));
    report.tree = shape(&st);
    report.memory.bytes_per_node = rss_bytes().saturating_sub(rss0) / u64::from(n);

    report.broadcast = broadcast(&mut st, 1, limit);
    // The tree runs' steady phase: time passes (no RanSub here).
    let steady = st.now + sc.config.ransub_epoch * sc.steady_epochs;
    st.run_until(steady, |_| false);

    // Faults, drawn as the tree runs draw them.
    let fault_at = st.now;
    let kills = ((sc.kill * f64::from(n)).round() as u32).min(n.saturating_sub(1));
    let mut victims = Vec::new();
    let mut candidates: Vec<u32> = (0..n).filter(|&c| st.clients[c as usize].alive).collect();
    while victims.len() < kills as usize && !candidates.is_empty() {
        let k = rng.random_range(0..candidates.len());
        victims.push(candidates.swap_remove(k));
    }
    if sc.kill_root {
        st.controller_alive = false;
    }
    let heartbeat = sc.config.heartbeat;
    for &v in &victims {
        let cl = &mut st.clients[v as usize];
        cl.alive = false;
        if !cl.held {
            continue;
        }
        st.undetected += 1;
        let at = match sc.crash {
            // The kernel resets the link: one delay to the controller.
            CrashKind::Process => st.up_at(v),
            // Silence: the last heartbeat arrived within the last period.
            CrashKind::Host => {
                let last = fault_at - heartbeat.mul_f64(rng.random::<f64>());
                (last + sc.config.dead_after).max(fault_at)
            }
        };
        st.push(at, Kind::Dead(v));
    }
    report.recovery.killed = victims.len() as u32 + u32::from(sc.kill_root);
    report.recovery.fault_at_ms = ms(fault_at.since(Instant::ZERO));
    let repair_deadline = fault_at + sc.repair_limit();
    let recovered = if st.controller_alive {
        st.last_detection = fault_at;
        st.run_until(repair_deadline, |s| s.undetected == 0);
        st.undetected == 0
    } else {
        false
    };
    st.now = if recovered { ticked(fault_at, st.last_detection.max(st.now)) } else { repair_deadline };
    report.recovery.sim_ms = ms(st.now.since(fault_at));
    let after = shape(&st);
    report.recovery.roots = after.roots;
    report.recovery.orphans = after.orphans;
    report.recovery.max_children = after.max_children;
    report.recovery.depth = after.depth;
    report.recovery.depth_whole = after.depth;

    report.broadcast_after = broadcast(&mut st, 2, limit);

    report.ransub.live = st.clients.iter().filter(|c| c.alive).count() as u32;
    report.ransub.uniformity_chi2_p = f64::NAN;
    report.ransub.nondesc_chi2_p = f64::NAN;
    report.conns.budget = sc.controller_fds;
    report.conns.max_open = st.max_open;
    report.conns.refused = st.refused;
    report.converged = built && recovered && !st.saturated;
    report.events = st.events;
    report.frames = st.frames;
    report.trace_hash = format!("{:016x}", st.trace);
    report.sim_end_ms = ms(st.now.since(Instant::ZERO));
    report.wall_ms = wall.elapsed().as_millis() as u64;
    report.events_per_s = st.events as f64 / wall.elapsed().as_secs_f64().max(1e-9);
    report
}
