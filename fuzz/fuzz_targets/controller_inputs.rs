//! The `Controller` driven by an arbitrary script: frames from a few peers (well-formed messages
//! built from arbitrary fields, and arbitrary bytes), link events, launch results, time going
//! forward, and the user's commands, in any order.
//!
//! The input is structured (`arbitrary`): a small configuration, then at most `MAX_STEPS` steps.
//! The harness plays the driver and keeps a model of what the controller told it (open links,
//! hosts added, failed hosts, jobs and their reported nodes, barriers).
//!
//! Checked after every step: nothing panics; the outputs drain within a bound; every frame sent
//! is whole and decodes, and goes on a link the driver has open; a frame is accepted exactly when
//! it decodes and its link is open, and a refused one changes nothing the driver can see; the
//! host counts match the host table, whose size is the hosts added plus members adopted, and
//! every host added is in it; invitations outstanding = hosts `Invited` <= `max_invitations`; a
//! failed host stays failed and is reported once; the last report of each host is its state;
//! the root, when known, holds the only root pin; results are reported once per node and job,
//! and `results_of` is the union of what was reported; a job completes and a barrier is released
//! at most once; a chunk is only ever sent for a push job started, within its file, and the
//! controller never stores one; the user's commands are refused exactly when they must be; and after
//! `handle_timeout(now)`, `poll_timeout` is never at or before `now` (this target found a
//! barrier past its deadline that kept asking for a timer in the past; fixed, with a regression
//! test in `driver-sim/tests/control.rs`).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use plush_core::control::{MAX_BARRIERS, MAX_NAME};
use plush_core::controller::ControllerError;
use plush_core::wire::{ControlMsg, ExitStatus, Group, JobKind, JobMsg, List, Message, PushSpec, RunSpec, Target, TreeMsg};
use plush_core::frame::split_frame;
use plush_core::{Config, Controller, HostState, InputError, Instant, LinkEvent, NodeId, NodeSet, Output, Report};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Steps per input at most: each execution stays fast.
const MAX_STEPS: usize = 64;
/// Most outputs one step may produce (a handful of peers, small messages).
const MAX_OUTPUTS: usize = 10_000;
/// Peers the script talks about; node sets reach a little past them (members never added).
const PEERS: u8 = 20;
/// The root pin of a link (`conn::Pin::Root`).
const PIN_ROOT: u8 = 4;

fn peer(p: u8) -> NodeId {
    NodeId::loopback(u32::from(p % PEERS), 7000)
}

fn job_id(j: u8) -> u64 {
    u64::from(j % 16)
}

fn barrier_name(n: u8) -> String {
    format!("b{}", n % 8)
}

/// A node set as runs: (first node, run length - 1), a few of each.
#[derive(Arbitrary, Debug)]
struct Set(Vec<(u8, u8)>);

impl Set {
    fn build(&self) -> NodeSet {
        let mut s = NodeSet::new();
        for &(start, len) in self.0.iter().take(8) {
            for k in 0..=u32::from(len % 8) {
                s.insert(NodeId::loopback(u32::from(start % (PEERS + 8)) + k, 7000));
            }
        }
        s
    }
}

#[derive(Arbitrary, Debug)]
enum Status {
    Exited(i8),
    Signaled(i8),
    TimedOut,
    Cancelled,
    SpawnFailed,
    Lost,
}

impl Status {
    fn get(&self) -> ExitStatus {
        match *self {
            Status::Exited(c) => ExitStatus::Exited(i32::from(c)),
            Status::Signaled(s) => ExitStatus::Signaled(i32::from(s)),
            Status::TimedOut => ExitStatus::TimedOut,
            Status::Cancelled => ExitStatus::Cancelled,
            Status::SpawnFailed => ExitStatus::SpawnFailed,
            Status::Lost => ExitStatus::Lost,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct GroupIn {
    status: Status,
    truncated: bool,
    output: Vec<u8>,
    nodes: Set,
}

/// A message a peer may send the controller, from arbitrary fields. `SetRoot { root: None }` is
/// from the sender itself (the only `SetRoot` the controller follows); the variants from `SetCtrl`
/// on are messages the controller has no use for.
#[derive(Arbitrary, Debug)]
enum Msg {
    SetRoot { root: Option<u8> },
    Joined { node: u8 },
    InviteFailed { host: u8 },
    Disconnected { node: u8, related: bool },
    Participants { nodes: Set, last: bool },
    Results { job: u8, groups: Vec<GroupIn>, complete: bool },
    Output { job: u8, node: u8, bytes: Vec<u8>, err: bool },
    BarrierEnter { name: u8, nodes: Set },
    SetCtrl { ctrl: u8 },
    SetPeer { host: u8 },
    GetStatus,
    Status { joined: bool },
    Forget { nodes: Set },
    Disconnect,
    Census,
    Ack { job: u8, nodes: Set },
    Cancel { job: u8 },
    BarrierRelease { name: u8 },
    Heartbeat,
    JoinReject,
    ChunkAck { job: u8, next: u16, resume: bool },
    MaintenanceFailed { node: Option<u8>, status: i32, output: Vec<u8> },
    Maintenance { script: String },
    Chunk { job: u8, index: u16 },
}

impl Msg {
    fn build(&self, from: NodeId) -> Message {
        let c = Message::Control;
        let j = Message::Job;
        match self {
            Msg::SetRoot { root } => c(ControlMsg::SetRoot { root: root.map_or(from, peer) }),
            Msg::Joined { node } => c(ControlMsg::Joined { node: peer(*node), build: 0 }),
            Msg::InviteFailed { host } => c(ControlMsg::InviteFailed { host: peer(*host) }),
            Msg::Disconnected { node, related } => c(ControlMsg::Disconnected { node: peer(*node), related: *related }),
            Msg::Participants { nodes, last } => c(ControlMsg::Participants { nodes: nodes.build(), last: *last }),
            Msg::Results { job, groups, complete } => j(JobMsg::Results {
                job: job_id(*job),
                groups: List(
                    groups
                        .iter()
                        .take(8)
                        .map(|g| Group {
                            status: g.status.get(),
                            truncated: g.truncated,
                            output: g.output.iter().copied().take(64).collect(),
                            nodes: g.nodes.build(),
                            stderr: Vec::new(),
                            blob: None,
                        })
                        .collect(),
                ),
                complete: *complete,
            }),
            Msg::Output { job, node, bytes, err } => j(JobMsg::Output {
                job: job_id(*job),
                node: peer(*node),
                bytes: bytes.iter().copied().take(64).collect(),
                err: *err,
            }),
            Msg::BarrierEnter { name, nodes } => {
                j(JobMsg::BarrierEnter { name: barrier_name(*name), nodes: nodes.build() })
            }
            Msg::SetCtrl { ctrl } => c(ControlMsg::SetCtrl { ctrl: peer(*ctrl) }),
            Msg::SetPeer { host } => c(ControlMsg::SetPeer { host: peer(*host), ctrl: from }),
            Msg::GetStatus => c(ControlMsg::GetStatus),
            Msg::Status { joined } => c(ControlMsg::Status { joined: *joined }),
            Msg::Forget { nodes } => c(ControlMsg::Forget { nodes: nodes.build() }),
            Msg::Disconnect => c(ControlMsg::Disconnect),
            Msg::Census => c(ControlMsg::Census),
            Msg::Ack { job, nodes } => j(JobMsg::Ack { job: job_id(*job), nodes: nodes.build() }),
            Msg::Cancel { job } => j(JobMsg::Cancel { job: job_id(*job) }),
            Msg::BarrierRelease { name } => j(JobMsg::BarrierRelease { name: barrier_name(*name) }),
            Msg::Heartbeat => Message::Tree(TreeMsg::Heartbeat),
            Msg::JoinReject => Message::Tree(TreeMsg::JoinReject),
            Msg::ChunkAck { job, next, resume } => {
                j(JobMsg::ChunkAck { job: job_id(*job), next: u32::from(*next), resume: *resume })
            }
            Msg::MaintenanceFailed { node, status, output } => c(ControlMsg::MaintenanceFailed {
                node: node.map_or(from, peer),
                status: ExitStatus::Exited(*status),
                output: output.clone(),
            }),
            Msg::Maintenance { script } => c(ControlMsg::Maintenance { script: script.clone() }),
            Msg::Chunk { job, index } => j(JobMsg::Chunk { job: job_id(*job), index: u32::from(*index), data: Vec::new() }),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Link {
    Connected,
    ConnectFailed,
    Closed,
}

/// One step of the script. `Frame`: a well-formed message from `from` (`None`: from the root, or
/// peer 0 without one: most of what reaches a controller comes from its root); `Raw`: arbitrary
/// bytes from `from`; for both, `connect`: the peer opens the link first if the driver has none open.
/// `Advance`: time goes forward by `n` milliseconds, or seconds, then the timers run; `Timeout`:
/// time goes forward to the controller's next timer (if later), then the timers run; for both,
/// `alive`: the root (if any) sends a heartbeat just before, as a live root does. `Tree`: a
/// shortcut to a formed tree (`root` opens a link if none is open and announces itself, then
/// reports each member joined), so that short scripts reach what needs one. The others are the
/// driver's reports and the user's commands.
#[derive(Arbitrary, Debug)]
enum Step {
    Frame { from: Option<u8>, connect: bool, msg: Msg },
    Raw { from: u8, connect: bool, bytes: Vec<u8> },
    Link { peer: u8, ev: Link },
    Launched { host: u8, ok: bool },
    Advance { n: u16, secs: bool, alive: bool },
    Timeout { alive: bool },
    AddHosts(Vec<u8>),
    /// With `push` (size in bytes, chunk size): a push job of a file of that shape.
    Run { job: u8, census_bit: bool, census: bool, target: Option<Set>, stream: bool, push: Option<(u16, u8)> },
    Cancel { job: u8 },
    Forget { job: u8 },
    Barrier { name: u8, long: bool, target: Option<Set>, threshold: u8, timeout_ms: u16 },
    Dismantle,
    Attach { member: u8 },
    Tree { root: u8, members: Set },
}

#[derive(Arbitrary, Debug)]
struct Setup {
    seed: u64,
    max_invitations: u8,
    max_jobs: u8,
    failed_after: u8,
    launch_at_root: bool,
    hosts: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    steps: Vec<Step>,
}

/// What the driver knows of the controller, from its outputs and its own calls.
#[derive(Default)]
struct Model {
    /// Links open as the driver sees them.
    open: BTreeSet<NodeId>,
    added: BTreeSet<NodeId>,
    failed: BTreeSet<NodeId>,
    /// Tracked jobs: nodes reported, complete.
    jobs: BTreeMap<u64, (NodeSet, bool)>,
    /// Push jobs started: their chunk count.
    pushes: BTreeMap<u64, u32>,
    /// Barriers opened: deadline, released.
    barriers: BTreeMap<String, (Instant, bool)>,
}

fn target_of(s: &Option<Set>) -> Target {
    s.as_ref().map_or(Target::All, |s| Target::Nodes(s.build()))
}

/// Drain the outputs of one step, checking each against the model; returns how many.
fn drain(c: &mut Controller, m: &mut Model, cfg: &Config) -> usize {
    let mut k = 0;
    let mut last: BTreeMap<NodeId, HostState> = BTreeMap::new();
    while let Some(out) = c.poll_output() {
        k += 1;
        assert!(k < MAX_OUTPUTS, "unbounded outputs");
        match out {
            Output::Transmit { to, frame } => {
                assert!(m.open.contains(&to), "transmit to {to} without an open link");
                let (payload, used) = split_frame(&frame, cfg.max_frame)
                    .expect("a frame the controller sends has a valid prefix")
                    .expect("a frame the controller sends is whole");
                assert_eq!(used, frame.len(), "one frame per transmit");
                if let Err(e) = Message::decode(payload) {
                    panic!("the controller sent a frame that does not decode: {e}");
                }
            }
            Output::Connect(_) => {}
            Output::Close(p) => {
                m.open.remove(&p);
            }
            Output::Launch { host } => {
                assert_eq!(c.host_state(&host), Some(HostState::Invited), "launch of a host not invited: {host}");
            }
            Output::Event(_) => {}
            Output::Report(r) => match *r {
                Report::Host { host, state, why: _ } => {
                    assert!(!m.failed.contains(&host), "a failed host changed state: {host} to {state:?}");
                    if state == HostState::Failed {
                        m.failed.insert(host);
                    }
                    last.insert(host, state);
                }
                Report::RootChanged(_) => {}
                Report::Result { job, nodes, .. } => {
                    let (got, _) = m.jobs.get_mut(&job).unwrap_or_else(|| panic!("result of an untracked job {job}"));
                    assert!(!nodes.is_empty(), "an empty result");
                    assert_eq!(nodes.minus(got), nodes, "a node's result reported twice");
                    got.extend(&nodes);
                }
                Report::Stream { .. } | Report::Blob { .. } => {}
                Report::JobComplete { job } => {
                    let (_, complete) =
                        m.jobs.get_mut(&job).unwrap_or_else(|| panic!("completion of an untracked job {job}"));
                    assert!(!*complete, "job {job} completed twice");
                    *complete = true;
                }
                Report::BarrierReleased { name, entered, expected, partial } => {
                    let (_, released) = m.barriers.get_mut(&name).expect("release of an unknown barrier");
                    assert!(!*released, "barrier {name} released twice");
                    *released = true;
                    assert!(entered <= expected, "more entered than expected");
                    assert_eq!(partial, !(entered == expected && expected > 0), "partial iff not all");
                }
                Report::MaintenanceFailed { host, status: _, output } => {
                    assert_eq!(c.host_state(&host), Some(HostState::Failed), "a failed script leaves {host} failed");
                    assert!(output.len() <= plush_core::wire::MAX_SCRIPT_OUTPUT, "output not capped");
                }
                Report::BarrierLate { name, nodes } => {
                    assert!(m.barriers.get(&name).is_some_and(|b| b.1), "late entry into a barrier not released");
                    assert!(!nodes.is_empty());
                }
            },
            Output::PushSend { to, job, index } => {
                assert!(m.open.contains(&to), "chunk sent to {to} without an open link");
                let chunks = m.pushes.get(&job).unwrap_or_else(|| panic!("chunk of a job that is no push: {job}"));
                assert!(index < *chunks, "chunk {index} of a file of {chunks} chunks");
            }
            Output::PushForget { job } => {
                assert!(m.pushes.contains_key(&job), "forgot a push never started: {job}");
            }
            Output::Spawn { .. } | Output::Signal { .. } | Output::ReadOutput { .. } | Output::Exit => {
                panic!("the controller runs no processes: {out:?}")
            }
            Output::PushOpen { .. } | Output::PushWrite { .. } | Output::PushDone { .. } => {
                panic!("the controller stores no transfer: {out:?}")
            }
        }
    }
    for (host, state) in last {
        assert_eq!(c.host_state(&host), Some(state), "the last report of {host} is not its state");
    }
    k
}

/// What must hold between steps.
fn check(c: &Controller, m: &Model, cfg: &Config) {
    let counts = c.host_counts();
    let mut tally = [0usize; 5];
    let mut n = 0;
    for (_, s) in c.hosts() {
        tally[s as usize] += 1;
        n += 1;
    }
    assert_eq!(counts, tally, "host counts do not match the host table");
    assert_eq!(counts.iter().sum::<usize>(), n);
    for h in &m.added {
        assert!(c.host_state(h).is_some(), "host {h} added but not in the table");
    }
    for h in &m.failed {
        assert_eq!(c.host_state(h), Some(HostState::Failed), "failed host {h} came back");
    }
    assert_eq!(c.outstanding(), counts[HostState::Invited as usize], "outstanding != hosts invited");
    assert!(c.outstanding() <= cfg.max_invitations, "more invitations outstanding than allowed");
    assert!(c.stats().max_outstanding <= cfg.max_invitations as u64);
    for (&job, (got, _)) in &m.jobs {
        assert_eq!(c.results_of(job), Some(got), "results of job {job} differ from what was reported");
    }
    // The root holds the only root pin, on a link the driver has open.
    if let Some(root) = c.root() {
        assert!(m.open.contains(&root), "root {root} without an open link");
    }
    for p in 0..PEERS + 16 {
        let id = NodeId::loopback(u32::from(p), 7000);
        assert_eq!(c.link_pins(&id) & PIN_ROOT != 0, c.root() == Some(id), "root pin on {id}");
    }
}

/// The timers at `now`; `alive`: the root sends a heartbeat first.
fn timers(c: &mut Controller, m: &mut Model, cfg: &Config, now: Instant, alive: bool) {
    if let Some(root) = c.root().filter(|_| alive) {
        let beat = postcard::to_allocvec(&Message::Tree(TreeMsg::Heartbeat)).expect("a message encodes");
        frame(c, m, cfg, now, root, false, &beat);
    }
    c.handle_timeout(now);
    drain(c, m, cfg);
    if let Some(t) = c.poll_timeout() {
        assert!(t > now, "after handle_timeout({now:?}) the next timeout {t:?} is not in the future");
    }
}

fn frame(c: &mut Controller, m: &mut Model, cfg: &Config, now: Instant, from: NodeId, connect: bool, payload: &[u8]) {
    if connect && !m.open.contains(&from) {
        m.open.insert(from);
        c.handle_link(now, from, LinkEvent::Connected);
        drain(c, m, cfg);
    }
    let decodes = Message::decode(payload).is_ok();
    let open = m.open.contains(&from);
    let r = c.handle_frame(now, from, payload);
    let outs = drain(c, m, cfg);
    match r {
        Ok(()) => assert!(decodes && open, "a frame accepted that does not decode or has no link"),
        Err(InputError::Decode(_)) => assert!(!decodes, "a frame that decodes refused"),
        Err(InputError::NoLink(p)) => {
            assert_eq!(p, from);
            assert!(decodes && !open, "a frame on an open link refused for no link");
        }
    }
    if !(decodes && open) {
        assert_eq!(outs, 0, "a refused frame changes nothing");
    }
}

fuzz_target!(|input: Input| {
    let s = &input.setup;
    let cfg = Config {
        max_invitations: 1 + usize::from(s.max_invitations % 8),
        max_jobs: 1 + usize::from(s.max_jobs % 8),
        failed_after_disconnects: 1 + u32::from(s.failed_after % 4),
        launch_at_root: s.launch_at_root,
        ..Config::default()
    };
    let mut now = Instant::ZERO;
    let mut m = Model::default();
    let mut c = Controller::new(NodeId::loopback(200, 7000), cfg.clone(), s.seed, now);
    let hosts: Vec<NodeId> = s.hosts.iter().take(32).map(|&h| peer(h)).collect();
    c.add_hosts(now, &hosts);
    m.added.extend(hosts);
    drain(&mut c, &mut m, &cfg);
    check(&c, &m, &cfg);

    for step in input.steps.iter().take(MAX_STEPS) {
        match step {
            Step::Frame { from, connect, msg } => {
                let from = from.map_or_else(|| c.root().unwrap_or(peer(0)), peer);
                let msg = msg.build(from);
                let payload = postcard::to_allocvec(&msg).expect("a message encodes");
                assert_eq!(Message::decode(&payload).as_ref(), Ok(&msg), "round trip");
                frame(&mut c, &mut m, &cfg, now, from, *connect, &payload);
            }
            Step::Raw { from, connect, bytes } => frame(&mut c, &mut m, &cfg, now, peer(*from), *connect, bytes),
            Step::Link { peer: p, ev } => {
                let p = peer(*p);
                let ev = match ev {
                    Link::Connected => {
                        m.open.insert(p);
                        LinkEvent::Connected
                    }
                    Link::ConnectFailed => {
                        m.open.remove(&p);
                        LinkEvent::ConnectFailed
                    }
                    Link::Closed => {
                        m.open.remove(&p);
                        LinkEvent::Closed
                    }
                };
                c.handle_link(now, p, ev);
                drain(&mut c, &mut m, &cfg);
            }
            Step::Launched { host, ok } => {
                c.handle_launched(now, peer(*host), if *ok { Ok(()) } else { Err("launch failed") });
                drain(&mut c, &mut m, &cfg);
            }
            Step::Advance { n, secs, alive } => {
                let d = if *secs { Duration::from_secs(u64::from(*n)) } else { Duration::from_millis(u64::from(*n)) };
                now = now + d;
                timers(&mut c, &mut m, &cfg, now, *alive);
            }
            Step::Timeout { alive } => {
                if let Some(t) = c.poll_timeout() {
                    now = now.max(t);
                }
                timers(&mut c, &mut m, &cfg, now, *alive);
            }
            Step::AddHosts(hs) => {
                let hs: Vec<NodeId> = hs.iter().take(32).map(|&h| peer(h)).collect();
                c.add_hosts(now, &hs);
                m.added.extend(hs);
                drain(&mut c, &mut m, &cfg);
            }
            Step::Run { job, census_bit, census, target, stream, push } => {
                let id = job_id(*job) | if *census_bit { 1 << 63 } else { 0 };
                let push = push.map(|(size, chunk)| PushSpec {
                    path: "f".to_string(),
                    name: "f".to_string(),
                    mode: 0o644,
                    size: u64::from(size),
                    digest: [0; 32],
                    chunk: u32::from(chunk),
                    upgrade: false,
                    build: 0,
                });
                let chunks = push.as_ref().and_then(|p| p.chunks());
                let spec = RunSpec {
                    job: id,
                    kind: match (&push, *census) {
                        (Some(_), _) => JobKind::Push,
                        (None, true) => JobKind::Census,
                        (None, false) => JobKind::Command,
                    },
                    target: target_of(target),
                    argv: List(vec!["true".to_string()]),
                    env: List(Vec::new()),
                    cwd: None,
                    timeout_ms: 0,
                    stream: *stream,
                    push: push.clone(),
                    max_output: 0,
                };
                let want = if *census_bit || m.jobs.contains_key(&id) {
                    Err(ControllerError::Duplicate)
                } else if m.jobs.len() >= cfg.max_jobs {
                    Err(ControllerError::Full)
                } else if push.is_some() && chunks.is_none() {
                    Err(ControllerError::BadPush)
                } else {
                    Ok(())
                };
                let r = c.run(now, spec);
                assert_eq!(r, want, "run {id}");
                if r.is_ok() {
                    m.jobs.insert(id, (NodeSet::new(), false));
                    if let Some(n) = chunks {
                        m.pushes.insert(id, n);
                    }
                }
                drain(&mut c, &mut m, &cfg);
            }
            Step::Cancel { job } => {
                let id = job_id(*job);
                let r = c.cancel(now, id);
                assert_eq!(r.is_ok(), m.jobs.contains_key(&id), "cancel {id}");
                drain(&mut c, &mut m, &cfg);
            }
            Step::Forget { job } => {
                let id = job_id(*job);
                c.forget(id);
                m.jobs.remove(&id);
                assert_eq!(c.results_of(id), None);
                drain(&mut c, &mut m, &cfg);
            }
            Step::Barrier { name, long, target, threshold, timeout_ms } => {
                let name = if *long { "x".repeat(MAX_NAME + 1) } else { barrier_name(*name) };
                let want = if *long || m.barriers.contains_key(&name) {
                    Err(ControllerError::Duplicate)
                } else if m.barriers.len() >= MAX_BARRIERS {
                    Err(ControllerError::Full)
                } else {
                    Ok(())
                };
                let r = c.barrier(
                    now,
                    &name,
                    target_of(target),
                    f64::from(*threshold) / 255.0,
                    Duration::from_millis(u64::from(*timeout_ms)),
                );
                assert_eq!(r, want, "barrier {name}");
                if r.is_ok() {
                    m.barriers.insert(name, (now + Duration::from_millis(u64::from(*timeout_ms)), false));
                }
                drain(&mut c, &mut m, &cfg);
            }
            Step::Dismantle => {
                c.dismantle(now);
                drain(&mut c, &mut m, &cfg);
            }
            Step::Attach { member } => {
                c.attach(now, peer(*member));
                drain(&mut c, &mut m, &cfg);
            }
            Step::Tree { root, members } => {
                let root = peer(*root);
                let mut msgs = vec![Message::Control(ControlMsg::SetRoot { root })];
                msgs.extend(members.build().iter().map(|node| Message::Control(ControlMsg::Joined { node, build: 0 })));
                for msg in msgs {
                    let payload = postcard::to_allocvec(&msg).expect("a message encodes");
                    frame(&mut c, &mut m, &cfg, now, root, true, &payload);
                }
            }
        }
        check(&c, &m, &cfg);
    }
});
