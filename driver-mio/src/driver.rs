//! The event loop: one thread, one `mio::Poll`, one machine (a [`plush_core::Node`] or a [`plush_core::Controller`]).
//!
//! Every input reaches the machine through one `handle_*` call, after which the driver drains
//! `poll_output` and carries each output out; events the driver itself produces while carrying
//! out outputs (a failed connect, a closed link, a process exit) are queued and fed to the
//! machine after the drain, one call each, so the machine is never re-entered. The loop sleeps
//! until the machine's `poll_timeout` (microseconds since the driver's start, [`Driver::now`]),
//! the next connection deadline, or the next process check, whichever comes first.
//!
//! **Connections.** A listener on the machine's address; outgoing connects are non-blocking and
//! fail after `Config::connect_timeout`. Every connection starts with the hello exchange and the
//! Noise handshake of [`crate::secure`] (within [`DriverConfig::handshake_timeout`]); only
//! then does the machine hear of it, as `LinkEvent::Connected` with the peer's announced id,
//! and from then on every byte of the link is a sealed record. An outgoing connection whose
//! peer announces another id than the one dialed is closed. A bad hello, a wrong key, malformed
//! bytes, an oversized length prefix (more than [`MAX_HANDSHAKE_FRAME`] before the handshake is
//! done), a record that does not open (forged, replayed, reordered, cut) or any frame out of
//! turn closes that one connection, with one line on stderr naming the peer and the reason,
//! and nothing else; a dial that fails so is reported as `ConnectFailed`, an open link whose
//! record or frame is refused as `Closed`.
//!
//! **Handshakes are bounded.** Accepted connections in their handshake are at most
//! [`DriverConfig::max_handshakes`] (the client takes them out of its fd budget) and at most
//! [`DriverConfig::max_handshakes_per_source`] from one address. A source at its limit makes
//! room by losing its own oldest handshake; a full table makes room by closing the oldest
//! handshake of the address holding the most, when that is more than the newcomer's address
//! holds. So a flood from a few addresses holds only their share, and cannot lock out another
//! address. Before the handshake is done nothing larger than a handshake message is buffered.
//!
//! **One link per peer.** The machine sees at most one link per peer. When a second
//! authenticated connection to the same peer appears, both ends classify it alike, from what
//! the hellos said rather than from when things happened here ([`Duplicate::classify`]; each
//! hello's nonce is a [`LinkTag`]: the sender's incarnation, the connection's name, and for a
//! dialer the name of the last link to this peer it lost):
//! - a *redial*: both were dialed by the same side (it dials only without a link, so it lost
//!   the first), or the peer's dial names the open link as the one it lost, or the peer is
//!   another incarnation (a new process whose old one's end of stream has not reached us). The
//!   new one replaces the old, and the machine hears `Closed` then `Connected`, as the other
//!   end's did (it lost the link, or is new);
//! - otherwise a *simultaneous open* (each side dialed while it had no link): both ends keep
//!   the one dialed by the lower [`NodeId`], without telling the machine; the other is
//!   *retired*: what was queued on it is written, frames still arriving on it are delivered,
//!   and it is closed once the peer closes it too (or after [`DriverConfig::handshake_timeout`]).
//!
//! The verdict must not depend on timing: a lost SYN brings one half of a simultaneous open a
//! second late at one end only, and two ends that disagree leave one machine with a link the
//! other dropped (a child keeping a parent that had let it go, until its silence timeout).
//!
//! **Writes.** Frames queue per connection, in the clear, and are sealed into records of up to
//! 64 KiB as the socket takes them, at the end of each turn ([`Conn::flush`]): a relay's run
//! of broadcasts is sealed once per child as a few large records, not frame by frame. The queue
//! (sealed and not) is bounded by [`DriverConfig::write_queue_limit`] bytes: past it the
//! connection is closed and the machine hears `Closed` (the peer is not reading).
//!
//! **Reads.** Every connection reads into the driver's one read buffer ([`READ_CHUNK`] bytes).
//! Whole records are cut from it in place and opened into the driver's one plaintext buffer,
//! from which the machine's frames are cut; only the start of a record (at most
//! [`MAX_RECORD`]) or of a frame (at most `Config::max_frame`) not yet whole is copied to the
//! connection's [`crate::conn::ReadBuf`]s, and freed once taken. At most [`READS_PER_EVENT`] reads per connection per
//! turn, so that one fast sender cannot starve the others. Once a link is open the machine cuts
//! its frames itself (`Node::handle_frames`, as many as it can take before the driver has to
//! carry something out), and a turn's reads from one connection are one batch of the machine
//! (`Node::begin_batch` / `end_batch`): what a relay passes on of them leaves as a few large
//! buffers shared by the receivers (see `plush_core::batch`).
//!
//! **File descriptors.** Running out (EMFILE/ENFILE) is never fatal: a failed connect is a
//! `ConnectFailed`; accepting pauses for [`ACCEPT_PAUSE`] and resumes.

use crate::auth::Key;
use crate::conn::{Chunk, Conn, Duplicate, Ends, LinkTag, Phase, READ_CHUNK};
use crate::launcher::Launcher;
use crate::process::Jobs;
use crate::secure::{Handshake, MAX_HANDSHAKE_FRAME, MAX_PLAIN, MAX_RECORD};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use plush_core::frame::{encode_hello, split_frame, Frame, PREFIX};
use plush_core::wire::{DecodeError, Hello, Role};
use plush_core::{Config, InputError, Instant, LaunchResult, LinkEvent, Machine, NodeId, Output, ProcessEvent, Report};
use rustc_hash::FxHashMap;
use slab::Slab;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{IpAddr, Shutdown};
use std::time::{Duration, Instant as StdInstant};

/// The listener's token; pipes and launches get fresh tokens from [`FIRST_TOKEN`] on (never
/// reused, so a late event cannot reach the wrong source); connections get tokens of their own
/// (see [`Conns`]).
const LISTENER: Token = Token(0);
const FIRST_TOKEN: usize = 16;
/// Reads per connection per turn before it waits for the next turn.
pub const READS_PER_EVENT: usize = 16;
/// How long accepting pauses after the process ran out of file descriptors.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Connections accepted per turn at most; the rest of the backlog waits for the next turn.
pub const ACCEPTS_PER_TURN: usize = 256;
/// Readiness events taken per `poll` call.
const EVENTS: usize = 1024;
/// Log lines per second at most; more are counted and summed up in the next line.
const LOG_PER_SEC: u32 = 50;
/// The same with `PLUSH_LOG=debug`, which logs every event: a repair's events must all show.
const DEBUG_LOG_PER_SEC: u32 = 2000;

/// A function called with each report of a controller (`Some`), and with `None` before any
/// frame leaves after reports were given to it (see `Driver::report_hook`).
pub type ReportHook = Box<dyn FnMut(Option<&Report>)>;

/// What the driver adds to the core's [`Config`].
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The machine's configuration (`connect_timeout`, `max_frame` are the driver's too).
    pub core: Config,
    /// The hello exchange and authentication must finish within this long after the TCP
    /// connection is up; also how long a retired or closing connection lingers. Default 5 s.
    pub handshake_timeout: Duration,
    /// Bytes queued for writing on one connection; past it the connection is closed and the
    /// machine hears `Closed`. Default 4 MiB (four maximum-size frames).
    pub write_queue_limit: usize,
    /// Incoming connections in their handshake at once (see the module docs for who makes
    /// room when it is reached). Default 256; the client takes them out of its fd budget.
    pub max_handshakes: usize,
    /// Incoming connections in their handshake from one address at once; a newer one from
    /// that address closes its oldest. Default 16.
    pub max_handshakes_per_source: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            core: Config::default(),
            handshake_timeout: Duration::from_secs(5),
            write_queue_limit: 4 << 20,
            max_handshakes: 256,
            max_handshakes_per_source: 16,
        }
    }
}

/// Counters of the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections dialed.
    pub dialed: u64,
    /// Connections that completed the handshake.
    pub authenticated: u64,
    /// Connections closed during the handshake (bad hello, wrong key, garbage, timeout).
    pub handshake_failures: u64,
    /// Connections closed because a frame was refused (oversized, malformed).
    pub bad_frames: u64,
    /// Links closed because a record did not open (forged, replayed, reordered, cut).
    pub bad_records: u64,
    /// Handshakes closed to make room for a newer one (see the module docs).
    pub handshakes_evicted: u64,
    /// Second links to a peer resolved by the tie-break or replacement.
    pub duplicate_links: u64,
    /// Of those, links the peer dialed beside one we dialed, taken as its redial (the old link
    /// replaced, the machine told) rather than as a simultaneous open.
    pub redials_across: u64,
    /// Connections closed because their write queue passed its limit.
    pub write_overflows: u64,
    /// Accepts that failed for want of file descriptors.
    pub fd_exhausted: u64,
    /// Bytes read and written on connections.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Transfer chunks read back from storage and sent (`Output::PushSend`), and their bytes
    /// (frames included): at the controller, what it sent of pushed files.
    pub chunks_sent: u64,
    /// See `chunks_sent`.
    pub chunk_bytes_sent: u64,
}

/// Marks a connection's token (the top bit), apart from the listener's, pipes' and launches'.
const CONN_BIT: usize = 1 << (usize::BITS - 1);
/// A connection's token holds its slot in the low half of its bits...
const INDEX_BITS: u32 = usize::BITS / 2;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;
/// ...and a generation in the rest below [`CONN_BIT`].
const GEN_MASK: usize = (CONN_BIT - 1) >> INDEX_BITS;

/// The open connections, in a slab: a token names a connection's slot (found without
/// hashing) and a generation, so that a late event for a closed connection does not reach the
/// next one in its slot. Generations are counted for all connections together and wrap after
/// `2^(usize::BITS/2 - 1)` connections (2^31 on 64-bit targets); slots stop below
/// `2^(usize::BITS/2) - 1` (more connections at once are refused, see [`Conns::next_token`]).
#[derive(Default)]
struct Conns {
    slab: Slab<(Token, Conn)>,
    generation: usize,
}

impl Conns {
    /// The token the next [`Conns::insert`] files under; `None` when every slot is taken.
    fn next_token(&self) -> Option<Token> {
        let idx = self.slab.vacant_key();
        (idx < INDEX_MASK).then_some(Token(CONN_BIT | ((self.generation & GEN_MASK) << INDEX_BITS) | idx))
    }

    /// File `c` under `tok`, which [`Conns::next_token`] just returned.
    fn insert(&mut self, tok: Token, c: Conn) {
        let idx = self.slab.insert((tok, c));
        debug_assert_eq!(idx, tok.0 & INDEX_MASK);
        self.generation = self.generation.wrapping_add(1);
    }

    fn slot(tok: Token) -> Option<usize> {
        (tok.0 & CONN_BIT != 0).then_some(tok.0 & INDEX_MASK)
    }

    fn get(&self, tok: &Token) -> Option<&Conn> {
        match self.slab.get(Self::slot(*tok)?) {
            Some((t, c)) if t == tok => Some(c),
            _ => None,
        }
    }

    fn get_mut(&mut self, tok: &Token) -> Option<&mut Conn> {
        match self.slab.get_mut(Self::slot(*tok)?) {
            Some((t, c)) if t == tok => Some(c),
            _ => None,
        }
    }

    fn contains_key(&self, tok: &Token) -> bool {
        self.get(tok).is_some()
    }

    fn remove(&mut self, tok: &Token) -> Option<Conn> {
        let idx = Self::slot(*tok)?;
        if self.slab.get(idx).is_some_and(|(t, _)| t == tok) {
            Some(self.slab.remove(idx).1)
        } else {
            None
        }
    }

    fn len(&self) -> usize {
        self.slab.len()
    }

    fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (Token, &Conn)> {
        self.slab.iter().map(|(_, (t, c))| (*t, c))
    }

    fn keys(&self) -> impl Iterator<Item = Token> + '_ {
        self.slab.iter().map(|(_, (t, _))| *t)
    }
}

/// Something for the machine, queued while outputs were carried out.
#[derive(Debug)]
enum Input {
    Link(NodeId, LinkEvent),
    Process(ProcessEvent),
    Launched(NodeId, LaunchResult),
    /// A job's process asks to enter a barrier.
    Barrier(String),
}

/// Rate-limited lines on stderr.
struct Log {
    prefix: String,
    window: StdInstant,
    lines: u32,
    dropped: u64,
    debug: bool,
}

impl Log {
    fn line(&mut self, msg: std::fmt::Arguments<'_>) {
        let now = StdInstant::now();
        if now >= self.window + Duration::from_secs(1) {
            self.window = now;
            self.lines = 0;
            if self.dropped > 0 {
                let n = std::mem::take(&mut self.dropped);
                write_line(format_args!("{}: ({n} lines not shown)", self.prefix));
            }
        }
        if self.lines >= if self.debug { DEBUG_LOG_PER_SEC } else { LOG_PER_SEC } {
            self.dropped += 1;
            return;
        }
        self.lines += 1;
        if self.debug {
            // Debug lines carry the wall clock (ms since the Unix epoch), so that the logs of
            // many clients on one machine can be put in one order (benches/netem does).
            let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            write_line(format_args!("{ms} {}: {}", self.prefix, msg));
        } else {
            write_line(format_args!("{}: {}", self.prefix, msg));
        }
    }
}

/// One line on stderr in one `write` call, so that the lines of processes sharing a terminal
/// do not interleave mid-line.
pub(crate) fn write_line(msg: std::fmt::Arguments<'_>) {
    use std::io::Write;
    crate::sys::open_deferred_stderr();
    let mut line = msg.to_string();
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// One machine on real TCP. See the module docs.
pub struct Driver<M: Machine> {
    /// The machine driven. Call [`Driver::drain`] after calling into it directly.
    pub m: M,
    me: NodeId,
    key: Key,
    cfg: DriverConfig,
    poll: Poll,
    events: Events,
    ready: Vec<(Token, bool, bool)>,
    /// What every connection reads into: [`READ_CHUNK`] bytes once the first read happened.
    scratch: Vec<u8>,
    listener: TcpListener,
    accept_paused_until: Option<StdInstant>,
    conns: Conns,
    /// The authenticated link to each peer, as the machine knows it.
    active: FxHashMap<NodeId, Token>,
    /// Dials the machine asked for, not yet authenticated.
    dialing: FxHashMap<NodeId, Token>,
    /// This driver's incarnation, in every hello's [`LinkTag`].
    incarnation: u32,
    /// The last link lost to each peer, newest last, at most [`LOST_LINKS_KEPT`]: a dial names
    /// it in its hello, so that a peer still holding it takes the new link as its replacement.
    lost_links: VecDeque<(NodeId, u32)>,
    handshaking_in: usize,
    /// Accepted connections in their handshake, by source address (entries at 0 are removed).
    sources: FxHashMap<IpAddr, usize>,
    /// Where a record's plaintext is gathered before it is sealed (at most [`MAX_PLAIN`]).
    seal_scratch: Vec<u8>,
    /// Where a read's records are opened (at most a read's records and a frame begun earlier).
    plain_scratch: Vec<u8>,
    next_token: usize,
    epoch: StdInstant,
    deferred: VecDeque<Input>,
    dirty: Vec<Token>,
    /// Connections whose read budget ran out: read again next turn.
    reread: Vec<Token>,
    /// Earliest connection deadline (a lower bound: entries may have moved later).
    next_deadline: Option<StdInstant>,
    /// Job processes (a node's).
    pub jobs: Jobs,
    /// Transfers' storage (a node's), or pushed files (a controller's).
    pub store: crate::transfer::Store,
    /// Files installed by pushes marked `upgrade` (for the client to restart on).
    pub upgrades: Vec<std::path::PathBuf>,
    /// Refuse pushes marked `upgrade` (`plush client --no-upgrade`): they fail on this host.
    pub no_upgrade: bool,
    /// The launcher (a controller's).
    pub launcher: Option<Launcher>,
    launched: Vec<(NodeId, LaunchResult)>,
    proc_events: VecDeque<ProcessEvent>,
    /// Reports of a controller, for its user to take.
    pub reports: VecDeque<Report>,
    /// Called with each report of a controller as the machine emits it (`Some`), and with
    /// `None` once reports were given to it, before the next frame is written to any socket
    /// and at the end of the turn: a session journal appends results on `Some` and syncs on
    /// `None`, so that no result is acknowledged to the tree (or handed to the user) before it
    /// is on disk, with one sync per turn however many results came.
    pub report_hook: Option<ReportHook>,
    /// Reports went to the hook since its last `None`.
    hook_pending: bool,
    /// The machine emitted `Output::Exit`.
    pub exited: bool,
    /// Counters.
    pub stats: DriverStats,
    log: Log,
}

impl<M: Machine> Driver<M> {
    /// A driver for `m`, whose id is `me`, listening on `listener` (bound to `me`'s address).
    pub fn new(m: M, me: NodeId, listener: std::net::TcpListener, key: Key, cfg: DriverConfig) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let debug = std::env::var_os("PLUSH_LOG").is_some_and(|v| v == "debug");
        Ok(Driver {
            m,
            me,
            key,
            cfg,
            poll,
            events: Events::with_capacity(EVENTS),
            ready: Vec::new(),
            scratch: Vec::new(),
            listener,
            accept_paused_until: None,
            conns: Conns::default(),
            active: FxHashMap::default(),
            dialing: FxHashMap::default(),
            incarnation: LinkTag::new_incarnation(),
            lost_links: VecDeque::new(),
            handshaking_in: 0,
            sources: FxHashMap::default(),
            seal_scratch: Vec::with_capacity(MAX_PLAIN),
            plain_scratch: Vec::new(),
            next_token: FIRST_TOKEN,
            epoch: StdInstant::now(),
            deferred: VecDeque::new(),
            dirty: Vec::new(),
            reread: Vec::new(),
            next_deadline: None,
            jobs: Jobs::with_env(vec![
                (
                    crate::process::PLUSH_ENV.to_owned(),
                    std::env::current_exe().map_or_else(|_| "plush".to_owned(), |p| p.display().to_string()),
                ),
                (crate::process::NODE_ENV.to_owned(), me.addr().to_string()),
            ]),
            store: crate::transfer::Store::default(),
            upgrades: Vec::new(),
            no_upgrade: false,
            launcher: None,
            launched: Vec::new(),
            proc_events: VecDeque::new(),
            reports: VecDeque::new(),
            report_hook: None,
            hook_pending: false,
            exited: false,
            stats: DriverStats::default(),
            log: Log { prefix: format!("plush {me}"), window: StdInstant::now(), lines: 0, dropped: 0, debug },
        })
    }

    /// The listening socket's descriptor (kept open across an upgrade's re-execution).
    pub fn listener_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.listener.as_raw_fd()
    }

    /// The machine's clock: microseconds since this driver started.
    pub fn now(&self) -> Instant {
        micros_since(self.epoch)
    }

    /// The address the listener is bound to.
    pub fn listen_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// This driver's node id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// Whether `PLUSH_LOG=debug` asked for event logs.
    pub fn debug(&self) -> bool {
        self.log.debug
    }

    /// Give back the connections' sealing buffers that hold nothing (kept while links are busy,
    /// so that a relay does not allocate one per child per turn); the client calls it once quiet.
    pub fn release_buffers(&mut self) {
        for (_, (_, c)) in self.conns.slab.iter_mut() {
            c.release_buffers();
        }
    }

    /// Connections open (any phase).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Authenticated links to peers.
    pub fn link_count(&self) -> usize {
        self.active.len()
    }

    fn set_deadline(&mut self, tok: Token, at: StdInstant) {
        if let Some(c) = self.conns.get_mut(&tok) {
            c.deadline = Some(at);
            self.next_deadline = Some(self.next_deadline.map_or(at, |d| d.min(at)));
        }
    }

    fn mark_dirty(&mut self, tok: Token) {
        if let Some(c) = self.conns.get_mut(&tok) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(tok);
            }
        }
    }

    // ----- the machine ------------------------------------------------------------------------

    /// Carry out every output of the machine, then feed it what that produced, until quiet.
    pub fn drain(&mut self) {
        loop {
            // Matched straight from `poll_output`: binding the output first made the compiler
            // copy it through the stack and read the frame back across that copy (a
            // store-forwarding stall on every output).
            loop {
                match self.m.poll_output() {
                    Some(Output::Transmit { to, frame }) => self.transmit(to, frame),
                    Some(o) => self.carry_out(o),
                    None => break,
                }
            }
            let Some(input) = self.deferred.pop_front() else { return };
            let now = self.now();
            match input {
                Input::Link(peer, ev) => self.m.handle_link(now, peer, ev),
                Input::Process(ev) => self.m.handle_process(now, ev),
                Input::Launched(host, r) => self.m.handle_launched(now, host, r),
                Input::Barrier(name) => {
                    if !self.m.handle_barrier(now, name.clone()) {
                        self.jobs.answer_barrier(&name, false);
                    }
                }
            }
        }
    }

    /// Queue `frame` on the link to `to` (the hot path of a relay: one call per frame and
    /// receiver).
    fn transmit(&mut self, to: NodeId, frame: Frame) {
        let Some(&tok) = self.active.get(&to) else {
            // The link is gone and its `Closed` is on the way to the machine.
            return;
        };
        let limit = self.cfg.write_queue_limit;
        let Some(c) = self.conns.get_mut(&tok) else { return };
        c.wq.push(Chunk::Frame(frame));
        if c.pending() > limit {
            self.stats.write_overflows += 1;
            self.drop_conn(tok, Some(format_args!("{to}: write queue over {limit} bytes; closing")));
        } else if !c.dirty {
            c.dirty = true;
            self.dirty.push(tok);
        }
    }

    fn carry_out(&mut self, o: Output) {
        match o {
            Output::Transmit { to, frame } => self.transmit(to, frame),
            Output::Connect(peer) => {
                if self.active.contains_key(&peer) {
                    // Already up (the peer opened it): say so again.
                    self.deferred.push_back(Input::Link(peer, LinkEvent::Connected));
                } else if !self.dialing.contains_key(&peer) {
                    self.dial(peer);
                }
            }
            Output::Close(peer) => {
                if let Some(tok) = self.dialing.remove(&peer) {
                    self.drop_conn(tok, None);
                }
                if let Some(tok) = self.lose_active(peer) {
                    self.linger(tok, Phase::Closing);
                }
            }
            Output::Event(e) => {
                if self.log.debug {
                    self.log.line(format_args!("event {e:?}"));
                }
                if let plush_core::Event::BarrierReleased(name) = e {
                    self.jobs.answer_barrier(&name, true);
                }
            }
            Output::Spawn { job, spec } => {
                let registry = self.poll.registry();
                if let Err(why) = self.jobs.spawn(
                    registry,
                    &mut self.next_token,
                    job,
                    &spec.argv,
                    &spec.env,
                    spec.cwd.as_deref(),
                    &mut self.proc_events,
                ) {
                    self.log.line(format_args!("job {job}: {why}"));
                }
                self.deferred.extend(self.proc_events.drain(..).map(Input::Process));
            }
            Output::Signal { job } => {
                self.jobs.signal(job);
                self.store.cancel(job);
            }
            Output::ReadOutput { job, on } => self.jobs.set_reading(job, on),
            Output::PushOpen { job, spec, install } => {
                let upgrade = spec.push.as_ref().is_some_and(|p| p.upgrade);
                let refused = install && upgrade && self.no_upgrade;
                // A client restarted on the upgrade gets the job again when it rejoins (its
                // new parent passes on the jobs it knows): it already runs that binary.
                let running = install
                    && upgrade
                    && spec.push.as_ref().is_some_and(|p| {
                        let dest = crate::transfer::destination(p);
                        std::env::current_exe().ok().and_then(|e| e.canonicalize().ok()) == dest.canonicalize().ok()
                    });
                if let Some(why) = self.store.open(job, spec, install && !refused && !running) {
                    self.push_failed(job, why);
                } else if running {
                    self.deferred.push_back(Input::Process(ProcessEvent::Exit {
                        job,
                        status: plush_core::wire::ExitStatus::Exited(0),
                    }));
                } else if refused {
                    let why = "plush: upgrades are disabled on this host (--no-upgrade)".to_string();
                    self.push_failed(job, why);
                }
            }
            Output::PushWrite { job, index, data } => {
                if let Some(why) = self.store.write(job, index, &data) {
                    self.push_failed(job, why);
                }
            }
            Output::PushSend { to, job, index } => match self.store.frame(job, index, self.cfg.core.max_frame) {
                Ok(frame) => {
                    self.stats.chunks_sent += 1;
                    self.stats.chunk_bytes_sent += frame.len() as u64;
                    self.transmit(to, frame);
                }
                Err(e) => {
                    // Storage failed (a relay that could not write, or a file changed under
                    // us). A child we cannot feed would wait forever: drop its link, so that
                    // it rejoins under another parent and resumes from there.
                    let tok = self.active.get(&to).copied().filter(|_| M::ROLE != Role::Controller);
                    match tok {
                        Some(tok) => self.drop_conn(
                            tok,
                            Some(format_args!(
                                "push {job}: cannot read chunk {index} for {to}: {e}; dropping the link"
                            )),
                        ),
                        None => self.log.line(format_args!("push {job}: cannot read chunk {index} for {to}: {e}")),
                    }
                }
            },
            Output::PushDone { job } => match self.store.done(job) {
                Ok(path) => {
                    if self.store.is_upgrade(job) {
                        self.upgrades.push(path);
                    }
                    self.deferred.push_back(Input::Process(ProcessEvent::Exit {
                        job,
                        status: plush_core::wire::ExitStatus::Exited(0),
                    }));
                }
                Err(why) => self.push_failed(job, why),
            },
            Output::PushForget { job } => self.store.forget(job),
            Output::Launch { host } => match self.launcher.as_mut() {
                Some(l) => l.launch(self.poll.registry(), &mut self.next_token, host),
                None => self.deferred.push_back(Input::Launched(host, Err("this driver has no launcher"))),
            },
            Output::Exit => {
                self.exited = true;
                self.store.clear();
            }
            Output::Report(r) => {
                if let Some(hook) = self.report_hook.as_mut() {
                    hook(Some(&r));
                    self.hook_pending = true;
                }
                self.reports.push_back(*r);
            }
        }
    }

    /// A push failed on this host: its result is the error text, exit code 1.
    fn push_failed(&mut self, job: u64, why: String) {
        // The error is this host's result: the user sees it there. The log repeats it only
        // when asked (PLUSH_LOG=debug), not once per host on a shared terminal.
        if self.log.debug {
            self.log.line(format_args!("push {job}: {why}"));
        }
        let mut bytes = why.into_bytes();
        bytes.push(b'\n');
        self.deferred.push_back(Input::Process(ProcessEvent::Output { job, bytes, err: false }));
        self.deferred
            .push_back(Input::Process(ProcessEvent::Exit { job, status: plush_core::wire::ExitStatus::Exited(1) }));
    }

    // ----- connections ------------------------------------------------------------------------

    fn dial(&mut self, peer: NodeId) {
        self.stats.dialed += 1;
        // From our own address: peers count handshakes per source address.
        let stream = match crate::sys::connect_from(self.me.addr().ip(), peer.addr()) {
            Ok(s) => TcpStream::from_std(s),
            Err(e) => {
                if crate::sys::is_fd_exhaustion(&e) {
                    self.stats.fd_exhausted += 1;
                }
                self.log.line(format_args!("connect to {peer}: {e}"));
                self.deferred.push_back(Input::Link(peer, LinkEvent::ConnectFailed));
                return;
            }
        };
        let Some(tok) = self.conns.next_token() else {
            self.log.line(format_args!("connect to {peer}: too many connections"));
            self.deferred.push_back(Input::Link(peer, LinkEvent::ConnectFailed));
            return;
        };
        let mut c = Conn::new(stream, Some(peer), Phase::Connecting, StdInstant::now());
        if let Err(e) = self.poll.registry().register(&mut c.stream, tok, Interest::READABLE | Interest::WRITABLE) {
            self.log.line(format_args!("connect to {peer}: cannot watch the socket: {e}"));
            self.deferred.push_back(Input::Link(peer, LinkEvent::ConnectFailed));
            return;
        }
        self.conns.insert(tok, c);
        self.dialing.insert(peer, tok);
        self.set_deadline(tok, StdInstant::now() + self.cfg.core.connect_timeout);
    }

    fn accept(&mut self) {
        if self.accept_paused_until.is_some_and(|t| t > StdInstant::now()) {
            return;
        }
        self.accept_paused_until = None;
        for _ in 0..ACCEPTS_PER_TURN {
            match self.listener.accept() {
                Ok((mut stream, from)) => {
                    self.stats.accepted += 1;
                    let source = from.ip();
                    if !self.make_room(source) {
                        self.log.line(format_args!("{from}: too many connections in handshake; closing"));
                        continue;
                    }
                    let Some(tok) = self.conns.next_token() else {
                        self.log.line(format_args!("{from}: too many connections; closing"));
                        continue;
                    };
                    if let Err(e) =
                        self.poll.registry().register(&mut stream, tok, Interest::READABLE | Interest::WRITABLE)
                    {
                        self.log.line(format_args!("{from}: cannot watch the socket: {e}"));
                        continue;
                    }
                    let mut c = Conn::new(stream, None, Phase::Hello, StdInstant::now());
                    c.counted = true;
                    c.source = Some(source);
                    self.handshaking_in += 1;
                    *self.sources.entry(source).or_insert(0) += 1;
                    let _ = c.stream.set_nodelay(true);
                    let tag = LinkTag { incarnation: self.incarnation, link: LinkTag::new_link(), lost: 0 };
                    c.nonce = tag.nonce();
                    c.push_raw(&encode_hello(&Hello::new(self.me, M::ROLE, c.nonce)));
                    self.conns.insert(tok, c);
                    self.mark_dirty(tok);
                    self.set_deadline(tok, StdInstant::now() + self.cfg.handshake_timeout);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if crate::sys::is_fd_exhaustion(&e) => {
                    self.stats.fd_exhausted += 1;
                    self.log.line(format_args!("accept: {e}; pausing accepts for {ACCEPT_PAUSE:?}"));
                    self.accept_paused_until = Some(StdInstant::now() + ACCEPT_PAUSE);
                    return;
                }
                // A connection reset before we took it, and the like: try again shortly (an
                // error that persists must not spin the loop).
                Err(e) => {
                    self.log.line(format_args!("accept: {e}"));
                    self.accept_paused_until = Some(StdInstant::now() + ACCEPT_PAUSE);
                    return;
                }
            }
        }
        // More may wait in the backlog: accept again next turn (readiness is edge-triggered).
        self.accept_paused_until = Some(StdInstant::now());
    }

    /// Whether a connection just accepted from `source` may start its handshake, after closing
    /// an older handshake to make room where the rules of the module docs say so.
    fn make_room(&mut self, source: IpAddr) -> bool {
        let theirs = self.sources.get(&source).copied().unwrap_or(0);
        if theirs >= self.cfg.max_handshakes_per_source.max(1) {
            return self.evict_oldest_handshake(source);
        }
        if self.handshaking_in < self.cfg.max_handshakes.max(1) {
            return true;
        }
        // Full: the address holding the most gives up its oldest, if it holds more than this one.
        // Ties go to the highest address, so the choice does not depend on the map's order.
        let top = self.sources.iter().max_by_key(|&(ip, n)| (*n, *ip)).map(|(ip, n)| (*ip, *n));
        match top {
            Some((ip, n)) if n > theirs => self.evict_oldest_handshake(ip),
            _ => false,
        }
    }

    /// Close the oldest connection from `source` still in its handshake; false if none.
    fn evict_oldest_handshake(&mut self, source: IpAddr) -> bool {
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| c.counted && c.source == Some(source))
            .min_by_key(|(_, c)| c.since)
            .map(|(tok, _)| tok);
        let Some(tok) = oldest else { return false };
        self.stats.handshakes_evicted += 1;
        if self.log.debug {
            self.log.line(format_args!("connection from {source}: handshake closed to make room for a newer one"));
        }
        self.drop_conn(tok, None);
        true
    }

    /// A connection of `source` is no longer counted among those in handshake.
    fn uncount(&mut self, source: Option<IpAddr>) {
        self.handshaking_in -= 1;
        if let Some(ip) = source {
            if let Some(n) = self.sources.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.sources.remove(&ip);
                }
            }
        }
    }

    /// Remove a connection, telling the machine what it must know: a failed dial it asked
    /// for, or the loss of its link. `why`, if any, is logged.
    fn drop_conn(&mut self, tok: Token, why: Option<std::fmt::Arguments<'_>>) {
        if let Some(why) = why {
            self.log.line(why);
        }
        let Some(mut c) = self.conns.remove(&tok) else { return };
        let _ = self.poll.registry().deregister(&mut c.stream);
        if c.counted {
            self.uncount(c.source);
        }
        match c.phase {
            Phase::Connecting | Phase::Hello | Phase::Noise(..) => {
                if let Some(peer) = c.dialed {
                    if self.dialing.get(&peer) == Some(&tok) {
                        self.dialing.remove(&peer);
                        // Unless the peer's own dial brought the link up meanwhile: the machine
                        // has it (one half of a simultaneous open, closed by the peer).
                        if !self.active.contains_key(&peer) {
                            self.deferred.push_back(Input::Link(peer, LinkEvent::ConnectFailed));
                        }
                    }
                }
            }
            Phase::Open(peer) => {
                if self.active.get(&peer) == Some(&tok) {
                    self.lost_links_push(peer, c.ends.map_or(0, |e| e.link));
                    self.active.remove(&peer);
                    self.deferred.push_back(Input::Link(peer, LinkEvent::Closed));
                }
            }
            Phase::Retired(_) | Phase::Closing => {}
        }
    }

    /// Take `peer`'s link out of use, remembering its name for the next dial's hello.
    fn lose_active(&mut self, peer: NodeId) -> Option<Token> {
        let tok = self.active.remove(&peer)?;
        let link = self.conns.get(&tok).and_then(|c| c.ends).map_or(0, |e| e.link);
        self.lost_links_push(peer, link);
        Some(tok)
    }

    fn lost_links_push(&mut self, peer: NodeId, link: u32) {
        self.lost_links.retain(|(p, _)| *p != peer);
        if self.lost_links.len() >= LOST_LINKS_KEPT {
            self.lost_links.pop_front();
        }
        self.lost_links.push_back((peer, link));
    }

    /// Stop using a connection: flush what is queued, shut our side, close at the peer's end
    /// of stream or after the handshake timeout.
    fn linger(&mut self, tok: Token, phase: Phase) {
        let Some(c) = self.conns.get_mut(&tok) else { return };
        c.phase = phase;
        self.mark_dirty(tok);
        self.set_deadline(tok, StdInstant::now() + self.cfg.handshake_timeout);
    }

    fn on_writable(&mut self, tok: Token) {
        let Some(c) = self.conns.get_mut(&tok) else { return };
        if matches!(c.phase, Phase::Connecting) {
            let peer = c.dialed;
            let failed = match c.stream.take_error() {
                Ok(Some(e)) | Err(e) => Some(e),
                Ok(None) => match c.stream.peer_addr() {
                    Ok(_) => None,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // still connecting
                    Err(e) => Some(e),
                },
            };
            if let Some(e) = failed {
                // No client there is an ordinary answer (the controller launches one): only
                // logged when debugging.
                let peer = peer.map_or_else(String::new, |p| p.to_string());
                if self.log.debug || e.kind() != io::ErrorKind::ConnectionRefused {
                    self.drop_conn(tok, Some(format_args!("connect to {peer}: {e}")));
                } else {
                    self.drop_conn(tok, None);
                }
                return;
            }
            let _ = c.stream.set_nodelay(true);
            c.phase = Phase::Hello;
            // Named now, not at the dial: a link lost in between is the one the peer may hold.
            let lost = peer.and_then(|p| self.lost_links.iter().find(|(q, _)| *q == p)).map_or(0, |&(_, l)| l);
            let tag = LinkTag { incarnation: self.incarnation, link: LinkTag::new_link(), lost };
            c.nonce = tag.nonce();
            let hello = encode_hello(&Hello::new(self.me, M::ROLE, c.nonce));
            c.push_raw(&hello);
            self.set_deadline(tok, StdInstant::now() + self.cfg.handshake_timeout);
        }
        self.write(tok);
    }

    /// Write what is queued on `tok`.
    /// Tell the report hook that frames are about to leave (or the turn ends), if it was given
    /// reports since it was last told.
    fn reports_synced(&mut self) {
        if std::mem::take(&mut self.hook_pending) {
            if let Some(hook) = self.report_hook.as_mut() {
                hook(None);
            }
        }
    }

    fn write(&mut self, tok: Token) {
        self.reports_synced();
        let Some(c) = self.conns.get_mut(&tok) else { return };
        c.dirty = false;
        if matches!(c.phase, Phase::Connecting) {
            return;
        }
        match c.flush(&mut self.seal_scratch, &mut self.stats.bytes_out) {
            Ok(true) => {
                let retiring = matches!(c.phase, Phase::Retired(_)) && !c.hold;
                if (retiring || matches!(c.phase, Phase::Closing)) && !c.shut {
                    c.shut = true;
                    let _ = c.stream.shutdown(Shutdown::Write);
                }
            }
            Ok(false) => {}
            Err(e) => {
                let peer = peer_name(c);
                self.drop_conn(tok, Some(format_args!("{peer}: write failed: {e}")));
            }
        }
    }

    fn flush_dirty(&mut self) {
        for tok in std::mem::take(&mut self.dirty) {
            self.write(tok);
        }
    }

    fn on_readable(&mut self, tok: Token) {
        // Taken out while reading: the frames read are handed to the machine through `self`.
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(READ_CHUNK, 0);
        // The frames of this turn's reads are one batch: what a relay passes on of them leaves
        // as a few large buffers, not one small frame per receiver.
        self.m.begin_batch();
        self.read_conn(tok, &mut scratch);
        self.m.end_batch();
        self.drain();
        self.scratch = scratch;
    }

    fn read_conn(&mut self, tok: Token, scratch: &mut [u8]) {
        for _ in 0..READS_PER_EVENT {
            let Some(c) = self.conns.get_mut(&tok) else { return };
            if matches!(c.phase, Phase::Connecting) {
                return;
            }
            match c.stream.read(scratch) {
                Ok(0) => {
                    let peer = peer_name(c);
                    let why = match c.phase {
                        Phase::Hello | Phase::Noise(..) => Some(format!("{peer}: closed during the handshake")),
                        Phase::Open(_) if self.log.debug => Some(format!("{peer}: closed by the peer")),
                        _ => None,
                    };
                    if why.is_some() && c.in_handshake() {
                        self.stats.handshake_failures += 1;
                    }
                    match why {
                        Some(w) => self.drop_conn(tok, Some(format_args!("{w}"))),
                        None => self.drop_conn(tok, None),
                    }
                    return;
                }
                Ok(n) => {
                    self.stats.bytes_in += n as u64;
                    let fresh = &scratch[..n];
                    if c.rbuf.is_empty() {
                        let used = self.take_frames(tok, fresh);
                        if let Some(c) = self.conns.get_mut(&tok) {
                            c.rbuf.keep(&fresh[used..]);
                        }
                    } else {
                        let data = c.rbuf.take_joined(fresh);
                        let used = self.take_frames(tok, &data);
                        if let Some(c) = self.conns.get_mut(&tok) {
                            c.rbuf.put_back(data, used);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let peer = peer_name(c);
                    if c.in_handshake() {
                        self.stats.handshake_failures += 1;
                    }
                    self.drop_conn(tok, Some(format_args!("{peer}: read failed: {e}")));
                    return;
                }
            }
        }
        if !self.reread.contains(&tok) {
            self.reread.push(tok);
        }
    }

    /// Take what is whole at the start of `data` (bytes read on `tok`), in the connection's
    /// current phase: handshake frames, then records. Returns the bytes taken; the rest is the
    /// start of a frame or record (whose prefix was checked), unless the connection was dropped.
    fn take_frames(&mut self, tok: Token, data: &[u8]) -> usize {
        let mut taken = 0;
        loop {
            let Some(c) = self.conns.get_mut(&tok) else { return taken };
            match c.phase {
                // Not read before it is connected (see `read_conn`).
                Phase::Connecting => return taken,
                Phase::Open(_) | Phase::Retired(_) | Phase::Closing => {
                    return taken + self.take_records(tok, &data[taken..]);
                }
                Phase::Hello | Phase::Noise(..) => {}
            }
            let (payload, used) = match split_frame(&data[taken..], MAX_HANDSHAKE_FRAME) {
                Ok(Some(x)) => x,
                Ok(None) => return taken,
                Err(e) => {
                    let peer = peer_name(c);
                    self.stats.handshake_failures += 1;
                    self.drop_conn(tok, Some(format_args!("{peer}: {e} during the handshake; closing")));
                    return taken;
                }
            };
            taken += used;
            if matches!(c.phase, Phase::Hello) {
                self.on_hello(tok, payload);
            } else {
                self.on_handshake_message(tok, payload);
            }
        }
    }

    /// Open the whole records at the start of `data` and hand their frames to the machine (a
    /// closing link's are discarded unopened). Returns the bytes taken. A record that does not
    /// open closes the link, after what opened before it was delivered.
    fn take_records(&mut self, tok: Token, data: &[u8]) -> usize {
        let mut plain = std::mem::take(&mut self.plain_scratch);
        plain.clear();
        let mut taken = 0;
        let mut failed: Option<String> = None;
        let Some(c) = self.conns.get_mut(&tok) else { return 0 };
        let peer = match c.phase {
            Phase::Open(p) | Phase::Retired(p) => Some(p),
            _ => None,
        };
        loop {
            match split_frame(&data[taken..], MAX_RECORD) {
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
                Ok(Some((record, used))) => {
                    taken += used;
                    if peer.is_none() {
                        continue;
                    }
                    let Some(chan) = c.chan.as_mut() else {
                        failed = Some("no secure channel".into());
                        break;
                    };
                    if let Err(e) = chan.open(record, &mut plain) {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        if let (Some(peer), false) = (peer, plain.is_empty()) {
            if c.plain.is_empty() {
                let used = self.deliver(tok, peer, &plain);
                if let Some(c) = self.conns.get_mut(&tok) {
                    c.plain.keep(&plain[used..]);
                }
            } else {
                let joined = c.plain.take_joined(&plain);
                let used = self.deliver(tok, peer, &joined);
                if let Some(c) = self.conns.get_mut(&tok) {
                    c.plain.put_back(joined, used);
                }
            }
        }
        // The buffer is kept for the next read, unless a large frame made it large.
        if plain.capacity() <= 2 * MAX_RECORD + READ_CHUNK {
            self.plain_scratch = plain;
        }
        if let Some(why) = failed {
            if let Some(c) = self.conns.get(&tok) {
                let name = peer_name(c);
                let from = c.stream.peer_addr().map_or_else(|_| "?".to_string(), |a| a.to_string());
                self.stats.bad_records += 1;
                self.drop_conn(tok, Some(format_args!("{name} (from {from}): {why}; closing the link")));
            }
        }
        taken
    }

    /// Hand the whole frames at the start of `data` (plaintext of `tok`'s link to `peer`) to
    /// the machine. Returns the bytes taken; all of them once the link is closing (discarded).
    fn deliver(&mut self, tok: Token, peer: NodeId, data: &[u8]) -> usize {
        let max = self.cfg.core.max_frame;
        let mut taken = 0;
        // The clock is read once for all the frames of one read: they arrived together.
        let now = micros_since(self.epoch);
        loop {
            let Some(c) = self.conns.get(&tok) else { return taken };
            let retired = match c.phase {
                Phase::Open(_) => false,
                Phase::Retired(_) => true,
                _ => return data.len(),
            };
            // The machine cuts the frames itself, as many as it can take before the driver must
            // carry something out.
            let (used, r) = self.m.handle_frames(now, peer, &data[taken..], max);
            taken += used;
            match r {
                Ok(()) => {}
                // The stream cannot be cut after a bad prefix: the link closes.
                Err(e @ InputError::Decode(DecodeError::TooLarge { .. })) => {
                    self.stats.bad_frames += 1;
                    self.drop_conn(tok, Some(format_args!("{peer}: {e}; closing")));
                }
                // A retired link may carry frames the machine no longer has a link for.
                Err(_) if retired => {}
                Err(e) => {
                    self.stats.bad_frames += 1;
                    self.drop_conn(tok, Some(format_args!("{peer}: {e}; closing")));
                }
            }
            self.drain();
            if used == 0 {
                return taken;
            }
        }
    }

    fn on_hello(&mut self, tok: Token, payload: &[u8]) {
        let Some(c) = self.conns.get_mut(&tok) else { return };
        let peer = peer_name(c);
        let hello = match Hello::decode(payload) {
            Ok(h) => h,
            Err(e) => {
                self.stats.handshake_failures += 1;
                self.drop_conn(tok, Some(format_args!("{peer}: bad hello: {e}; closing")));
                return;
            }
        };
        if let Some(want) = c.dialed.filter(|w| *w != hello.node_id) {
            self.stats.handshake_failures += 1;
            let got = hello.node_id;
            self.drop_conn(tok, Some(format_args!("dialed {want} but {got} answered; closing")));
            return;
        }
        if hello.node_id == self.me {
            self.stats.handshake_failures += 1;
            self.drop_conn(tok, Some(format_args!("{peer}: announces our own id; closing")));
            return;
        }
        // The prologue is both hellos as sent, the dialer's first: ours is encoded again (the
        // encoding is deterministic), theirs taken as it came.
        let ours = encode_hello(&Hello::new(self.me, M::ROLE, c.nonce));
        let ours = ours.get(PREFIX..).unwrap_or(&[]);
        let we_dialed = c.dialed.is_some();
        let peer_tag = LinkTag::of_nonce(hello.nonce);
        let link = if we_dialed { LinkTag::of_nonce(c.nonce).link } else { peer_tag.link };
        c.ends = Some(Ends { we_dialed, link, peer: peer_tag });
        let (dialer, acceptor) = if we_dialed { (ours, payload) } else { (payload, ours) };
        let started = Handshake::start(&self.key, we_dialed, dialer, acceptor)
            .and_then(|mut hs| hs.next_frame().map(|first| (hs, first)));
        match started {
            Ok((hs, first)) => {
                if let Some(f) = first {
                    c.push_raw(&f);
                }
                c.phase = Phase::Noise(Box::new(hs), hello.node_id);
                self.mark_dirty(tok);
            }
            Err(e) => {
                self.stats.handshake_failures += 1;
                self.drop_conn(tok, Some(format_args!("{peer}: {e}; closing")));
            }
        }
    }

    /// A Noise handshake message from the peer: answer it if it is our turn, and open the link
    /// once the handshake is done.
    fn on_handshake_message(&mut self, tok: Token, payload: &[u8]) {
        let Some(c) = self.conns.get_mut(&tok) else { return };
        let Phase::Noise(hs, peer) = &mut c.phase else { return };
        let peer = *peer;
        let step = hs.read(payload).and_then(|()| hs.next_frame());
        let reply = match step {
            Ok(reply) => reply,
            Err(e) => {
                self.stats.handshake_failures += 1;
                self.drop_conn(tok, Some(format_args!("{peer}: {e}; closing")));
                return;
            }
        };
        if let Some(f) = reply {
            c.push_raw(&f);
            self.mark_dirty(tok);
        }
        let Some(c) = self.conns.get_mut(&tok) else { return };
        let Phase::Noise(hs, _) = &c.phase else { return };
        if !hs.is_finished() {
            return;
        }
        let Phase::Noise(hs, _) = std::mem::replace(&mut c.phase, Phase::Hello) else { return };
        match hs.into_channel() {
            Ok(chan) => {
                c.chan = Some(Box::new(chan));
                self.on_authenticated(tok, peer);
            }
            Err(e) => {
                self.stats.handshake_failures += 1;
                self.drop_conn(tok, Some(format_args!("{peer}: {e}; closing")));
            }
        }
    }

    fn on_authenticated(&mut self, tok: Token, peer: NodeId) {
        self.stats.authenticated += 1;
        let Some(c) = self.conns.get_mut(&tok) else { return };
        c.phase = Phase::Open(peer);
        c.deadline = None;
        let counted = std::mem::take(&mut c.counted).then_some(c.source);
        let new_dialed_by_us = c.dialed.is_some();
        let new_ends = c.ends;
        if let Some(source) = counted {
            self.uncount(source);
        }
        if self.dialing.get(&peer) == Some(&tok) {
            self.dialing.remove(&peer);
        }
        let Some(&old) = self.active.get(&peer) else {
            self.active.insert(peer, tok);
            self.deferred.push_back(Input::Link(peer, LinkEvent::Connected));
            self.drain();
            return;
        };
        self.stats.duplicate_links += 1;
        let old_ends = self.conns.get(&old).and_then(|c| c.ends);
        let verdict = match (old_ends, new_ends) {
            (Some(o), Some(n)) => Duplicate::classify(&o, &n),
            _ => Duplicate::Redial,
        };
        if verdict == Duplicate::Redial {
            // The old link was lost at the other end (or by us, or the peer is a new process):
            // the machine's link was reset there, so ours must hear it too, and whatever still
            // arrives on the old one is stale.
            if !new_dialed_by_us && old_ends.is_some_and(|o| o.we_dialed) {
                self.stats.redials_across += 1;
            }
            if let Some(old) = self.lose_active(peer) {
                self.linger(old, Phase::Closing);
            }
            self.active.insert(peer, tok);
            self.deferred.push_back(Input::Link(peer, LinkEvent::Closed));
            self.deferred.push_back(Input::Link(peer, LinkEvent::Connected));
            self.drain();
            return;
        }
        // A simultaneous open: keep the link dialed by the lower id, on both sides. Only the
        // dialer of the kept one shuts the other: it finished the kept one's handshake last,
        // so the peer has it too, and no longer uses the other. Shut by its acceptor, the other
        // could still be the peer's only link, and the peer's machine would hear it close.
        let lower_dialed_new = new_dialed_by_us == (self.me < peer);
        let (kept, retired) = if lower_dialed_new { (tok, old) } else { (old, tok) };
        self.active.insert(peer, kept);
        if let Some(c) = self.conns.get_mut(&retired) {
            // The kept one is the lower id's dial: ours if we are the lower.
            c.hold = self.me > peer;
        }
        self.linger(retired, Phase::Retired(peer));
    }

    fn check_deadlines(&mut self, now: StdInstant) {
        if self.next_deadline.is_none_or(|d| d > now) {
            return;
        }
        let mut next: Option<StdInstant> = None;
        let mut expired = Vec::new();
        for (tok, c) in self.conns.iter() {
            match c.deadline {
                Some(d) if d <= now => expired.push(tok),
                Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                None => {}
            }
        }
        self.next_deadline = next;
        for tok in expired {
            let Some(c) = self.conns.get(&tok) else { continue };
            let peer = peer_name(c);
            let what = match c.phase {
                Phase::Connecting => "connect timed out",
                Phase::Hello | Phase::Noise(..) => "handshake timed out",
                // Lingering is over: nothing to log.
                _ => "",
            };
            if what.is_empty() {
                self.drop_conn(tok, None);
            } else {
                self.stats.handshake_failures += 1;
                self.drop_conn(tok, Some(format_args!("{peer}: {what}; closing")));
            }
        }
    }

    // ----- the loop ---------------------------------------------------------------------------

    /// One turn: wait for readiness or the next deadline (at most `max_wait`), handle what is
    /// ready, fire due timers, write what was queued.
    pub fn turn(&mut self, max_wait: Option<Duration>) -> io::Result<()> {
        self.flush_dirty();
        let timeout = self.wait_time(max_wait);
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        self.ready.clear();
        for ev in self.events.iter() {
            let r = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            let w = ev.is_writable() || ev.is_write_closed() || ev.is_error();
            self.ready.push((ev.token(), r, w));
        }
        let ready = std::mem::take(&mut self.ready);
        for &(tok, r, w) in &ready {
            self.dispatch(tok, r, w);
        }
        self.ready = ready;
        for tok in std::mem::take(&mut self.reread) {
            self.on_readable(tok);
        }
        self.housekeeping();
        self.flush_dirty();
        self.reports_synced();
        Ok(())
    }

    fn dispatch(&mut self, tok: Token, readable: bool, writable: bool) {
        if tok == LISTENER {
            self.accept();
            return;
        }
        if self.conns.contains_key(&tok) {
            if writable {
                self.on_writable(tok);
            }
            if readable {
                self.on_readable(tok);
            }
            return;
        }
        if self.jobs.on_readable(self.poll.registry(), tok, &mut self.proc_events) {
            self.deferred.extend(self.proc_events.drain(..).map(Input::Process));
            self.deferred.extend(self.jobs.barrier_requests.drain(..).map(Input::Barrier));
            self.drain();
            return;
        }
        if let Some(l) = self.launcher.as_mut() {
            if l.on_readable(self.poll.registry(), tok, &mut self.launched) {
                self.deferred.extend(self.launched.drain(..).map(|(h, r)| Input::Launched(h, r)));
                self.drain();
            }
        }
    }

    /// Timers of the machine, connection deadlines, processes, launches, paused accepts.
    fn housekeeping(&mut self) {
        let now = StdInstant::now();
        let t = self.now();
        if self.m.poll_timeout().is_some_and(|at| at <= t) {
            self.m.handle_timeout(t);
            self.drain();
        }
        self.check_deadlines(now);
        self.jobs.poll(self.poll.registry(), now, &mut self.proc_events);
        self.deferred.extend(self.proc_events.drain(..).map(Input::Process));
        if let Some(l) = self.launcher.as_mut() {
            l.poll(self.poll.registry(), &mut self.next_token, now, &mut self.launched);
            self.deferred.extend(self.launched.drain(..).map(|(h, r)| Input::Launched(h, r)));
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept();
        }
        self.drain();
    }

    fn wait_time(&self, max_wait: Option<Duration>) -> Option<Duration> {
        if !self.reread.is_empty() || !self.deferred.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = StdInstant::now();
        let machine = self.m.poll_timeout().map(|t| self.epoch + Duration::from_micros(t.as_micros()));
        let launcher = self.launcher.as_ref().and_then(Launcher::next_wake);
        let wake = [machine, self.next_deadline, self.jobs.next_wake(), launcher, self.accept_paused_until]
            .into_iter()
            .flatten()
            .min();
        let until = wake.map(|w| w.saturating_duration_since(now));
        match (until, max_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Close every connection gracefully (flush, shut our side, wait for the peer's end of
    /// stream) for at most `grace`.
    pub fn close_all(&mut self, grace: Duration) {
        let toks: Vec<Token> = self.conns.keys().collect();
        self.active.clear();
        self.dialing.clear();
        for tok in toks {
            if self.conns.get(&tok).is_some_and(Conn::in_handshake) {
                self.drop_conn(tok, None);
            } else {
                self.linger(tok, Phase::Closing);
            }
        }
        let end = StdInstant::now() + grace;
        while !self.conns.is_empty() {
            let now = StdInstant::now();
            if now >= end {
                break;
            }
            self.flush_dirty();
            let mut wait = end - now;
            if !self.reread.is_empty() {
                wait = Duration::ZERO;
            }
            if self.poll.poll(&mut self.events, Some(wait)).is_err() {
                break;
            }
            let toks: Vec<(Token, bool, bool)> = self
                .events
                .iter()
                .map(|e| (e.token(), e.is_readable() || e.is_read_closed(), e.is_writable() || e.is_write_closed()))
                .collect();
            for (tok, r, w) in toks {
                if self.conns.contains_key(&tok) {
                    if w {
                        self.write(tok);
                    }
                    if r {
                        self.on_readable(tok);
                    }
                }
            }
            for tok in std::mem::take(&mut self.reread) {
                self.on_readable(tok);
            }
        }
        let toks: Vec<Token> = self.conns.keys().collect();
        for tok in toks {
            self.drop_conn(tok, None);
        }
    }
}

/// Links lost to other peers that a driver remembers (the oldest is forgotten first): the
/// peers it lost links to recently, whose ends of those links may still be open.
pub const LOST_LINKS_KEPT: usize = 256;

fn micros_since(epoch: StdInstant) -> Instant {
    Instant(u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX))
}

fn peer_name(c: &Conn) -> String {
    match (&c.phase, c.dialed) {
        (Phase::Open(p) | Phase::Retired(p), _) => p.to_string(),
        (Phase::Noise(_, p), _) => p.to_string(),
        (_, Some(p)) => p.to_string(),
        _ => c.stream.peer_addr().map_or_else(|_| "a peer".to_string(), |a| format!("connection from {a}")),
    }
}
