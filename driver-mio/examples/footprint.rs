//! `footprint`: what a local Plush cluster costs, measured on real processes. Run by
//! `benches/footprint.sh`, which builds the release `plush` binary and hands it over:
//!
//! ```text
//! footprint --plush PATH [--static-plush PATH] [--small N] [--large N] [--idle SECS]
//!           [--pid-file FILE] [--stripped-bytes N] [--json]
//! ```
//!
//! 1. `--small` clients (default 10) on loopback addresses: once all are joined and no launch
//!    is in flight (the controller holds no launch pipe), the controller's open fds
//!    (`/proc/self/fd`, less the directory being read; fds this process was started with are
//!    counted too, and marked in the listing). Dismantled.
//! 2. `--large` clients (default 1000): the time from `Cluster::start` to all joined, the
//!    controller's fds at that moment, the time `run(["hostname"])` takes until every host's
//!    result is back, then `--idle` seconds (default 3) of idling with the controller's loop
//!    running, then two samples of the sockets' activity `SAMPLE_GAP` (4 s) apart.
//! 3. The idle client measured. The tree is read from the kernel: each client's sockets in
//!    `/proc/PID/fd` are matched end to end through `/proc/net/tcp`; links without heartbeats
//!    between the two samples (per `ss`: unpinned links, such as a joiner's first contact or a
//!    root's probe, which close after `Config::link_idle`) are left out; the rest is rooted at
//!    `Cluster::root()`. The root is taken if it has `Config::max_children` (12) children, else
//!    the first client that has. Its `VmRSS` and its open fds (all of them, idle links too).
//! 4. Dismantled; every launched pid is checked gone.
//! 5. With `--static-plush` (the static musl `dist` build, `benches/dist.sh`): phases 2 to 4
//!    again with clients of that binary; its size and its idle client's `VmRSS`.
//!
//! Stdout: unless `--json`, a table and details; always, last, one JSON line with
//! `client_rss_kib`, `client_fds`, `binary_bytes`, `controller_fds_10`, `controller_fds_1000`,
//! `launch_join_1000_ms`, `hostname_1000_ms`, `static_binary_bytes`, `static_client_rss_kib`
//! (`null` for what could not be measured, or without `--static-plush`; the names
//! stay the same when `--small` or `--large` change the sizes). Progress goes to stderr. With
//! `--pid-file`, every launched client's pid is appended to the file as soon as it is known, so
//! that the calling script can kill leftovers if this process is killed. Exit status 0 when
//! everything was measured and every client is gone, else 1.

use plush_core::{Config, HostState, NodeId};
use plush_mio::{process_exists, Cluster, ClusterConfig};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: footprint --plush PATH [--static-plush PATH] [--small N] [--large N] [--idle SECS] \
                     [--pid-file FILE] [--stripped-bytes N] [--json]";

/// Fds above 2 this process was started with (the caller's, not the controller's).
static INHERITED: OnceLock<Vec<(u32, String)>> = OnceLock::new();

fn inherited(fd: &(u32, String)) -> bool {
    INHERITED.get().is_some_and(|v| v.contains(fd))
}

#[derive(Clone)]
struct Opts {
    plush: PathBuf,
    static_plush: Option<PathBuf>,
    small: u32,
    large: u32,
    idle: Duration,
    pid_file: Option<PathBuf>,
    stripped_bytes: Option<u64>,
    json: bool,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        plush: PathBuf::new(),
        static_plush: None,
        small: 10,
        large: 1000,
        idle: Duration::from_secs(3),
        pid_file: None,
        stripped_bytes: None,
        json: false,
    };
    let mut plush = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--json" {
            o.json = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| v.parse::<u32>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--plush" => plush = Some(PathBuf::from(value)),
            "--static-plush" => o.static_plush = Some(PathBuf::from(value)),
            "--small" => o.small = num(&value)?.max(1),
            "--large" => o.large = num(&value)?.max(1),
            "--idle" => o.idle = Duration::from_secs(u64::from(num(&value)?)),
            "--pid-file" => o.pid_file = Some(PathBuf::from(value)),
            "--stripped-bytes" => o.stripped_bytes = value.parse().ok(),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    o.plush = plush.ok_or_else(|| format!("--plush is required\n{USAGE}"))?;
    Ok(o)
}

/// A port free on the first `n` loopback addresses, searched from `start`.
fn free_port(n: u32, start: u16) -> Option<u16> {
    'port: for port in start..start.saturating_add(500) {
        let mut held = Vec::new();
        for i in 0..n {
            match TcpListener::bind(NodeId::loopback(i, port).addr()) {
                Ok(l) => held.push(l),
                Err(_) => continue 'port,
            }
        }
        return Some(port);
    }
    None
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ----- /proc ---------------------------------------------------------------------------------

/// Open fds of `pid` (this process for `None`) and what each points to, by number.
fn open_fds(pid: Option<u32>) -> Vec<(u32, String)> {
    let dir = pid.map_or_else(|| "/proc/self/fd".to_string(), |p| format!("/proc/{p}/fd"));
    // Reading our own fd directory opens it: that one is left out.
    let reading = format!("/proc/{}/fd", std::process::id());
    let Ok(rd) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut v = Vec::new();
    for e in rd.flatten() {
        let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let target = std::fs::read_link(e.path()).map_or_else(|_| "?".to_string(), |t| t.display().to_string());
        if pid.is_none() && target == reading {
            continue;
        }
        v.push((n, target));
    }
    v.sort();
    v
}

/// A `/proc/PID/status` field in kB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn socket_inode(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// One TCP socket from `/proc/net/tcp{,6}`: addresses as the kernel prints them, and its state.
struct Sock {
    local: String,
    remote: String,
    state: u8,
}

const ESTABLISHED: u8 = 0x01;
/// Pinned links (parent, child, controller) carry a heartbeat every `Config::heartbeat` (1 s)
/// and are declared dead after `Config::dead_after` (3 s) of silence; a link counts as pinned
/// when it sent and received within this long at both of two samples `SAMPLE_GAP` apart, and its
/// byte counters grew in between. One exchange (a root's probe, a late join message) cannot pass
/// both samples, the gap being longer than the window.
const ACTIVE_WITHIN_MS: u64 = 3000;
const SAMPLE_GAP: Duration = Duration::from_secs(4);
const LISTEN: u8 = 0x0A;

fn state_name(st: u8) -> &'static str {
    match st {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        _ => "?",
    }
}

/// `0100007F:1F90` as `127.0.0.1:8080` (IPv6 addresses are left as printed).
fn show_addr(a: &str) -> String {
    let Some((ip, port)) = a.split_once(':') else { return a.to_string() };
    let port = u16::from_str_radix(port, 16).map_or_else(|_| port.to_string(), |p| p.to_string());
    if ip.len() == 8 {
        if let Ok(v) = u32::from_str_radix(ip, 16) {
            // The kernel prints the address's bytes (network order) as one native u32.
            return format!("{}:{port}", Ipv4Addr::from(v.to_ne_bytes()));
        }
    }
    format!("[{ip}]:{port}")
}

/// Every TCP socket of this network namespace, by inode (inode 0, time-wait, left out).
fn tcp_table() -> HashMap<u64, Sock> {
    let mut t = HashMap::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(s) = std::fs::read_to_string(file) else { continue };
        for line in s.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let (Ok(state), Ok(inode)) = (u8::from_str_radix(f[3], 16), f[9].parse::<u64>()) else { continue };
            if inode != 0 {
                t.insert(inode, Sock { local: f[1].to_string(), remote: f[2].to_string(), state });
            }
        }
    }
    t
}

/// For each established TCP socket (by inode): the milliseconds since it last sent or received,
/// whichever is longer, and the bytes it sent and received. From `ss -tinHe state established`
/// (iproute2); `None` without it.
fn tcp_activity() -> Option<HashMap<u64, (u64, u64)>> {
    let out = std::process::Command::new("ss").args(["-tinHe", "state", "established"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut m = HashMap::new();
    let mut inode: Option<u64> = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            inode = line.split_whitespace().find_map(|w| w.strip_prefix("ino:")).and_then(|v| v.parse().ok());
        } else if let Some(ino) = inode.take() {
            let field = |name: &str| {
                line.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|v| v.parse::<u64>().ok())
            };
            let last = field("lastsnd:").unwrap_or(u64::MAX).max(field("lastrcv:").unwrap_or(u64::MAX));
            let bytes = field("bytes_sent:").unwrap_or(0) + field("bytes_received:").unwrap_or(0);
            m.insert(ino, (last, bytes));
        }
    }
    Some(m)
}

/// The sockets active (see [`ACTIVE_WITHIN_MS`]) at both samples, with traffic in between.
fn active_sockets(a: &HashMap<u64, (u64, u64)>, b: &HashMap<u64, (u64, u64)>) -> HashSet<u64> {
    b.iter()
        .filter(|(ino, &(last_b, bytes_b))| {
            last_b <= ACTIVE_WITHIN_MS
                && a.get(ino).is_some_and(|&(last_a, bytes_a)| last_a <= ACTIVE_WITHIN_MS && bytes_b > bytes_a)
        })
        .map(|(&ino, _)| ino)
        .collect()
}

/// Who holds a socket.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Controller,
    Client(usize),
}

/// The sockets of the controller and the clients, matched end to end.
struct SocketMap {
    table: HashMap<u64, Sock>,
    owner: HashMap<u64, Owner>,
    by_ends: HashMap<(String, String), u64>,
}

impl SocketMap {
    fn read(clients: &[(NodeId, u32)]) -> SocketMap {
        let mut owner = HashMap::new();
        for (_, t) in open_fds(None) {
            if let Some(i) = socket_inode(&t) {
                owner.insert(i, Owner::Controller);
            }
        }
        for (k, &(_, pid)) in clients.iter().enumerate() {
            for (_, t) in open_fds(Some(pid)) {
                if let Some(i) = socket_inode(&t) {
                    owner.insert(i, Owner::Client(k));
                }
            }
        }
        let table = tcp_table();
        let by_ends = table.iter().map(|(&i, s)| ((s.local.clone(), s.remote.clone()), i)).collect();
        SocketMap { table, owner, by_ends }
    }

    /// The owner of the other end of TCP socket `inode`, if it is one of ours.
    fn peer(&self, inode: u64) -> Option<Owner> {
        let s = self.table.get(&inode)?;
        let other = self.by_ends.get(&(s.remote.clone(), s.local.clone()))?;
        self.owner.get(other).copied()
    }

    /// What fd `target` is, in words.
    fn describe(&self, target: &str, clients: &[(NodeId, u32)]) -> String {
        let Some(inode) = socket_inode(target) else { return target.to_string() };
        let Some(s) = self.table.get(&inode) else { return format!("{target} (not TCP: unix or netlink socket)") };
        if s.state == LISTEN {
            return format!("TCP listener on {}", show_addr(&s.local));
        }
        let peer = match self.peer(inode) {
            Some(Owner::Controller) => " (to the controller itself)".to_string(),
            Some(Owner::Client(k)) => format!(" (client {} pid {})", clients[k].0, clients[k].1),
            None => String::new(),
        };
        format!("TCP {} {} -> {}{peer}", state_name(s.state), show_addr(&s.local), show_addr(&s.remote))
    }
}

/// One client's fds, sorted by kind.
#[derive(Default, Clone)]
struct ClientFds {
    total: usize,
    listeners: usize,
    /// Established links to other clients: their index.
    to_clients: Vec<usize>,
    /// Established links to other clients that carried no heartbeat: unpinned links (a
    /// joiner's first contact, a root's probe), which close after `Config::link_idle`.
    idle_to_clients: usize,
    to_controller: usize,
    other_sockets: usize,
    other: Vec<String>,
}

/// The tree as the sockets show it.
struct Tree {
    fds: Vec<ClientFds>,
    children: Vec<usize>,
    reached: usize,
    links: usize,
    root: Option<usize>,
}

/// The tree from the sockets: client-client links, less those `active` (when known) leaves out,
/// rooted at `root`.
fn read_tree(clients: &[(NodeId, u32)], root: Option<NodeId>, map: &SocketMap, active: Option<&HashSet<u64>>) -> Tree {
    let mut fds = vec![ClientFds::default(); clients.len()];
    for (k, &(_, pid)) in clients.iter().enumerate() {
        let f = &mut fds[k];
        for (_, t) in open_fds(Some(pid)) {
            f.total += 1;
            let Some(inode) = socket_inode(&t) else {
                f.other.push(t);
                continue;
            };
            match map.table.get(&inode) {
                Some(s) if s.state == LISTEN => f.listeners += 1,
                Some(s) if s.state == ESTABLISHED => match map.peer(inode) {
                    Some(Owner::Client(_)) if active.is_some_and(|a| !a.contains(&inode)) => f.idle_to_clients += 1,
                    Some(Owner::Client(j)) => f.to_clients.push(j),
                    Some(Owner::Controller) => f.to_controller += 1,
                    None => f.other_sockets += 1,
                },
                _ => f.other_sockets += 1,
            }
        }
    }
    let links = fds.iter().map(|f| f.to_clients.len()).sum::<usize>() / 2;
    let root = root.and_then(|r| clients.iter().position(|(id, _)| *id == r));
    let mut children = vec![0; clients.len()];
    let mut parent: Vec<Option<usize>> = vec![None; clients.len()];
    let mut seen = vec![false; clients.len()];
    let mut reached = 0;
    if let Some(r) = root {
        let mut q = VecDeque::from([r]);
        seen[r] = true;
        while let Some(i) = q.pop_front() {
            reached += 1;
            for &j in &fds[i].to_clients {
                if Some(j) == parent[i] {
                    continue;
                }
                children[i] += 1;
                if !seen[j] {
                    seen[j] = true;
                    parent[j] = Some(i);
                    q.push_back(j);
                }
            }
        }
    }
    Tree { fds, children, reached, links, root }
}

impl Tree {
    /// Every one of `n` clients reached from the root over exactly `n - 1` links.
    fn exact(&self, n: usize) -> bool {
        self.reached == n && self.links + 1 == n
    }
}

// ----- the phases -------------------------------------------------------------------------------

fn config(o: &Opts) -> ClusterConfig {
    ClusterConfig { client_program: o.plush.clone(), client_args: vec!["client".into()], ..ClusterConfig::default() }
}

fn record_pids(o: &Opts, pids: &[u32]) {
    let Some(path) = &o.pid_file else { return };
    let mut text = String::new();
    for p in pids {
        let _ = writeln!(text, "{p}");
    }
    let f = std::fs::OpenOptions::new().create(true).append(true).open(path);
    if let Err(e) = f.and_then(|mut f| f.write_all(text.as_bytes())) {
        eprintln!("footprint: cannot write {}: {e}", path.display());
    }
}

/// Wait until every one of `n` hosts joined, recording launched pids as they come.
fn join_all(c: &mut Cluster, o: &Opts, n: usize, timeout: Duration) -> std::io::Result<bool> {
    let mut recorded = std::collections::BTreeSet::new();
    let mut last_note = Instant::now();
    let ok = c.wait_until(timeout, |c| {
        let fresh: Vec<u32> = c.launched_pids().into_iter().filter(|p| !recorded.contains(p)).collect();
        if !fresh.is_empty() {
            record_pids(o, &fresh);
            recorded.extend(fresh);
        }
        if last_note.elapsed() >= Duration::from_secs(2) {
            last_note = Instant::now();
            eprintln!("footprint: {} of {n} joined, {} launched", c.count(HostState::Joined), recorded.len());
        }
        c.count(HostState::Joined) == n
    })?;
    Ok(ok)
}

/// Run the loop until the controller holds no launch pipe (a launch in flight: the read end of
/// a starting client's stdout), at most 5 s.
fn launches_done(c: &mut Cluster) -> std::io::Result<bool> {
    c.wait_until(Duration::from_secs(5), |_| open_fds(None).iter().all(|f| !f.1.starts_with("pipe:") || inherited(f)))
}

fn fd_listing(clients: &[(NodeId, u32)]) -> Vec<String> {
    let map = SocketMap::read(clients);
    open_fds(None)
        .into_iter()
        .map(|f| {
            let from = if inherited(&f) { " (inherited from the caller)" } else { "" };
            format!("fd {}: {}{from}", f.0, map.describe(&f.1, clients))
        })
        .collect()
}

/// Dismantle and check every pid gone; returns the pids still there.
fn finish(c: &mut Cluster, pids: &[u32]) -> Vec<u32> {
    match c.dismantle(Duration::from_secs(60)) {
        Ok(d) => eprintln!("footprint: dismantled in {:?}: {} exited, {} killed", d.elapsed, d.exited, d.killed),
        Err(e) => eprintln!("footprint: dismantle failed: {e}"),
    }
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| process_exists(p)).collect();
        if left.is_empty() || Instant::now() >= end {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A controller inviting `n` local clients on a port free from `port_from` on; and when it
/// started. `None` (said on stderr) when no port is free or the controller cannot start.
fn start(o: &Opts, n: u32, port_from: u16) -> Option<(Cluster, Instant)> {
    let Some(port) = free_port(n, port_from) else {
        eprintln!("footprint: no free port for {n} clients");
        return None;
    };
    let hosts: Vec<NodeId> = (0..n).map(|i| NodeId::loopback(i, port)).collect();
    let t0 = Instant::now();
    let mut c = match Cluster::start(config(o)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("footprint: cannot start the controller: {e}");
            return None;
        }
    };
    c.add_hosts(&hosts);
    Some((c, t0))
}

#[derive(Default)]
struct Small {
    fds: Option<usize>,
    listing: Vec<String>,
    join_ms: Option<u64>,
    leftover: Vec<u32>,
}

fn small_phase(o: &Opts) -> Small {
    let mut r = Small::default();
    let n = o.small;
    let Some((mut c, t0)) = start(o, n, 29_000) else { return r };
    let joined = join_all(&mut c, o, n as usize, Duration::from_secs(60)).unwrap_or(false);
    if joined {
        r.join_ms = Some(ms(t0.elapsed()));
        if !launches_done(&mut c).unwrap_or(false) {
            eprintln!("footprint: a launch pipe is still open in the controller after 5 s");
        }
        let clients = c.launched_clients();
        r.listing = fd_listing(&clients);
        r.fds = Some(r.listing.len());
    } else {
        eprintln!("footprint: {} of {n} joined; failures {:?}", c.count(HostState::Joined), c.failures());
    }
    let pids = c.launched_pids();
    record_pids(o, &pids);
    r.leftover = finish(&mut c, &pids);
    r
}

#[derive(Default)]
struct Large {
    join_ms: Option<u64>,
    fds_at_join: Option<usize>,
    listing_at_join: Vec<String>,
    listing_idle: Vec<String>,
    hostname_ms: Option<u64>,
    hostname_note: String,
    chosen: Option<Chosen>,
    tree_note: String,
    histogram: BTreeMap<usize, usize>,
    rss_all: Vec<u64>,
    idled: Option<Duration>,
    heartbeat_filter: bool,
    other_twelve: Option<String>,
    root_note: String,
    leftover: Vec<u32>,
}

struct Chosen {
    how: String,
    id: NodeId,
    pid: u32,
    rss_kib: u64,
    anon_kib: Option<u64>,
    file_kib: Option<u64>,
    fds: ClientFds,
    children: usize,
}

fn large_phase(o: &Opts) -> Large {
    let mut r = Large::default();
    let n = o.large;
    let Some((mut c, t0)) = start(o, n, 30_000) else { return r };
    let timeout = Duration::from_secs(20) + Duration::from_millis(50) * n;
    let joined = join_all(&mut c, o, n as usize, timeout).unwrap_or(false);
    if joined {
        let took = t0.elapsed();
        r.join_ms = Some(ms(took));
        eprintln!("footprint: {n} joined in {took:?}");
        if !launches_done(&mut c).unwrap_or(false) {
            eprintln!("footprint: a launch pipe is still open in the controller after 5 s");
        }
        let clients = c.launched_clients();
        r.listing_at_join = fd_listing(&clients);
        r.fds_at_join = Some(r.listing_at_join.len());
        measure_run(&mut c, n as usize, &mut r);
        let idle_from = Instant::now();
        let _ = c.wait_until(o.idle, |_| false);
        // Links besides the tree's (a joiner's first contact, a root's probe) stay open, unpinned,
        // until `Config::link_idle`: they are told apart by their lack of heartbeats.
        let first = tcp_activity();
        let _ = c.wait_until(SAMPLE_GAP, |_| false);
        let active = first.zip(tcp_activity()).map(|(a, b)| active_sockets(&a, &b));
        if active.is_none() {
            eprintln!("footprint: `ss` (iproute2) did not run: unpinned links count as tree links");
        }
        let clients = c.launched_clients();
        let tree = read_tree(&clients, c.root(), &SocketMap::read(&clients), active.as_ref());
        r.heartbeat_filter = active.is_some();
        r.idled = Some(idle_from.elapsed());
        record_pids(o, &clients.iter().map(|&(_, p)| p).collect::<Vec<_>>());
        r.listing_idle = fd_listing(&clients);
        measure_clients(&clients, &tree, &mut r);
    } else {
        eprintln!(
            "footprint: {} of {n} joined in {:?}; {} failed, e.g. {:?}",
            c.count(HostState::Joined),
            t0.elapsed(),
            c.count(HostState::Failed),
            c.failures().first()
        );
    }
    let pids = c.launched_pids();
    record_pids(o, &pids);
    r.leftover = finish(&mut c, &pids);
    r
}

fn measure_run(c: &mut Cluster, n: usize, r: &mut Large) {
    match c.run(&["hostname"], Duration::from_secs(30)) {
        Ok(out) if out.result_count() == n => {
            r.hostname_ms = Some(ms(out.elapsed));
            r.hostname_note =
                format!("{} result reports, {} group(s), complete={}", out.reports, out.groups.len(), out.complete);
            eprintln!("footprint: hostname on {n} in {:?} ({})", out.elapsed, r.hostname_note);
        }
        Ok(out) => {
            r.hostname_note = format!(
                "only {} of {n} results in {:?} ({} missing)",
                out.result_count(),
                out.elapsed,
                out.missing.len()
            );
            eprintln!("footprint: hostname: {}", r.hostname_note);
        }
        Err(e) => {
            r.hostname_note = format!("run failed: {e}");
            eprintln!("footprint: hostname: {}", r.hostname_note);
        }
    }
}

/// One client's fds in words.
fn fd_summary(f: &ClientFds) -> String {
    format!(
        "{} fds: {} listener, {} links to clients, {} to the controller, {} idle unpinned links, {} other sockets, \
         other fds {:?}",
        f.total,
        f.listeners,
        f.to_clients.len(),
        f.to_controller,
        f.idle_to_clients,
        f.other_sockets,
        f.other
    )
}

fn measure_clients(clients: &[(NodeId, u32)], tree: &Tree, r: &mut Large) {
    for &k in &tree.children {
        *r.histogram.entry(k).or_default() += 1;
    }
    r.rss_all = clients.iter().filter_map(|&(_, p)| status_kib(p, "VmRSS:")).collect();
    r.rss_all.sort_unstable();
    let idle: usize = tree.fds.iter().map(|f| f.idle_to_clients).sum();
    let filter = if r.heartbeat_filter {
        format!("{} unpinned client-client sockets without heartbeats left out", idle)
    } else {
        "no heartbeat filter (`ss` unavailable)".to_string()
    };
    let shape = if tree.exact(clients.len()) {
        "exactly a tree: child counts are exact"
    } else {
        "not exactly a tree: child counts are estimates (every link but the one towards the root counts)"
    };
    r.tree_note = format!(
        "{} of {} clients reached from the root over {} client-client links ({filter}); {shape}",
        tree.reached,
        clients.len(),
        tree.links
    );
    if let Some(k) = tree.root {
        r.root_note = format!(
            "{} (pid {}): {} children; {}",
            clients[k].0,
            clients[k].1,
            tree.children[k],
            fd_summary(&tree.fds[k])
        );
    }
    let degree = Config::default().max_children;
    // Another client with `degree` children, not the root, for comparison.
    if let Some(k) = (0..clients.len()).find(|&k| Some(k) != tree.root && tree.children[k] == degree) {
        let (id, pid) = clients[k];
        r.other_twelve = Some(format!(
            "{id} (pid {pid}): VmRSS {} KiB (RssAnon {} KiB); {}",
            opt(status_kib(pid, "VmRSS:")),
            opt(status_kib(pid, "RssAnon:")),
            fd_summary(&tree.fds[k])
        ));
    }
    let (pick, how) = match tree.root {
        Some(root) if tree.children[root] == degree => {
            (Some(root), format!("the root (Cluster::root()), which has {degree} children"))
        }
        _ => match tree.children.iter().position(|&k| k == degree) {
            Some(k) => (Some(k), format!("the first client with {degree} children (the root has not)")),
            None => {
                let most = (0..clients.len()).max_by_key(|&k| tree.children[k]);
                (most, format!("no client has {degree} children; the one with the most"))
            }
        },
    };
    let Some(k) = pick else { return };
    let (id, pid) = clients[k];
    let Some(rss) = status_kib(pid, "VmRSS:") else { return };
    r.chosen = Some(Chosen {
        how: format!(
            "{how}: children counted from the sockets in each client's /proc/PID/fd, matched end to end \
             through /proc/net/tcp, links without heartbeats (per `ss`) left out, the tree rooted at the root"
        ),
        id,
        pid,
        rss_kib: rss,
        anon_kib: status_kib(pid, "RssAnon:"),
        file_kib: status_kib(pid, "RssFile:"),
        fds: tree.fds[k].clone(),
        children: tree.children[k],
    });
}

// ----- output -----------------------------------------------------------------------------------

fn opt(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

fn row(name: &str, value: Option<impl std::fmt::Display>, unit: &str, target: &str, ok: Option<bool>) {
    let verdict = match ok {
        Some(true) => "ok",
        Some(false) => "OVER",
        None => "",
    };
    let value = value.map_or_else(|| "-".to_string(), |v| format!("{v} {unit}"));
    println!("  {name:<22} {value:>14}   {target:<24} {verdict}");
}

fn main() {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let at_start: Vec<(u32, String)> = open_fds(None).into_iter().filter(|(n, _)| *n > 2).collect();
    if !at_start.is_empty() {
        eprintln!("footprint: started with fds above 2 open (counted, and inherited by every client): {at_start:?}");
    }
    let _ = INHERITED.set(at_start);
    match plush_mio::raise_fd_limit() {
        Ok(n) if u64::from(o.large) * 3 > n => {
            eprintln!("footprint: fd limit {n} may be too low for {} clients", o.large)
        }
        Ok(_) => {}
        Err(e) => eprintln!("footprint: cannot raise the fd limit: {e}"),
    }
    let binary_bytes = std::fs::metadata(&o.plush).map(|m| m.len()).ok();
    if binary_bytes.is_none() {
        eprintln!("footprint: cannot read {}", o.plush.display());
    }
    eprintln!("footprint: phase 1: {} clients", o.small);
    let small = small_phase(&o);
    eprintln!("footprint: phase 2: {} clients", o.large);
    let large = large_phase(&o);
    let chosen = large.chosen.as_ref();
    let client_rss = chosen.map(|c| c.rss_kib);
    let client_fds = chosen.map(|c| c.fds.total);
    let statics = o.static_plush.as_ref().map(|p| {
        eprintln!("footprint: phase 3: {} clients of the static build {}", o.large, p.display());
        let bytes = std::fs::metadata(p).map(|m| m.len()).ok();
        (bytes, large_phase(&Opts { plush: p.clone(), ..o.clone() }))
    });
    let static_bytes = statics.as_ref().and_then(|(b, _)| *b);
    let static_chosen = statics.as_ref().and_then(|(_, l)| l.chosen.as_ref());
    let static_rss = static_chosen.map(|c| c.rss_kib);

    if !o.json {
        let (s, l) = (o.small, o.large);
        println!("Plush footprint: {} (release plush)", o.plush.display());
        println!("  {:<22} {:>14}   {:<24}", "metric", "value", "target");
        row("client_rss_kib", client_rss, "KiB", "<= 4096 (goal 2048)", client_rss.map(|v| v <= 4096));
        row("client_fds", client_fds, "", "", None);
        row("binary_bytes", binary_bytes, "B", "", None);
        row(&format!("controller_fds_{s}"), small.fds, "", "<= 8", small.fds.map(|v| v <= 8));
        row(&format!("controller_fds_{l}"), large.fds_at_join, "", "<= 8", large.fds_at_join.map(|v| v <= 8));
        row(&format!("launch_join_{l}_ms"), large.join_ms, "ms", "<= 10000", large.join_ms.map(|v| v <= 10_000));
        row(&format!("hostname_{l}_ms"), large.hostname_ms, "ms", "<= 2000", large.hostname_ms.map(|v| v <= 2000));
        if o.static_plush.is_some() {
            row("static_binary_bytes", static_bytes, "B", "<= 4194304", static_bytes.map(|v| v <= 4 << 20));
            row("static_client_rss_kib", static_rss, "KiB", "<= 2048", static_rss.map(|v| v <= 2048));
        }
        println!();
        if let Some(c) = chosen {
            println!("Idle client measured: {} (pid {}), {} children. Chosen as {}", c.id, c.pid, c.children, c.how);
            println!(
                "  VmRSS {} KiB (RssAnon {} KiB, RssFile {} KiB); {}",
                c.rss_kib,
                opt(c.anon_kib),
                opt(c.file_kib),
                fd_summary(&c.fds)
            );
        }
        if let Some(other) = &large.other_twelve {
            println!("For comparison, a non-root client with 12 children: {other}");
        }
        if let (Some(p), Some(c)) = (&o.static_plush, static_chosen) {
            println!(
                "Static build {}: idle client {} (pid {}), {} children, VmRSS {} KiB (RssAnon {} KiB, RssFile {} KiB)",
                p.display(),
                c.id,
                c.pid,
                c.children,
                c.rss_kib,
                opt(c.anon_kib),
                opt(c.file_kib)
            );
        }
        if let Some(b) = o.stripped_bytes {
            println!("binary_bytes includes debug info ([profile.release] debug = 1); stripped: {b} B");
        }
        if let Some(d) = large.idled {
            println!("Idle clients measured after the hostname job and {:.1} s of idling", d.as_secs_f64());
        }
        if !large.root_note.is_empty() {
            println!("Root: {}", large.root_note);
        }
        if !large.tree_note.is_empty() {
            println!("Tree from the sockets: {}", large.tree_note);
            let h: Vec<String> = large.histogram.iter().map(|(k, n)| format!("{k} children: {n}")).collect();
            println!("  {}", h.join(", "));
        }
        if let (Some(min), Some(max)) = (large.rss_all.first(), large.rss_all.last()) {
            let med = large.rss_all[large.rss_all.len() / 2];
            println!("VmRSS of all {} clients: min {min} KiB, median {med} KiB, max {max} KiB", large.rss_all.len());
        }
        if !large.hostname_note.is_empty() {
            println!("hostname: {}", large.hostname_note);
        }
        if let Some(ms) = small.join_ms {
            println!("{s} clients joined in {ms} ms");
        }
        for (title, list) in [
            (format!("Controller fds, {s} clients joined"), &small.listing),
            (format!("Controller fds, {l} clients joined"), &large.listing_at_join),
            (format!("Controller fds, {l} clients, after hostname and idling"), &large.listing_idle),
        ] {
            if !list.is_empty() {
                println!("{title} ({}):", list.len());
                for line in list {
                    println!("  {line}");
                }
            }
        }
        let left = small.leftover.len() + large.leftover.len();
        println!("Clients left running after dismantling: {left}");
    }
    println!(
        "{{\"client_rss_kib\":{},\"client_fds\":{},\"binary_bytes\":{},\"controller_fds_10\":{},\
         \"controller_fds_1000\":{},\"launch_join_1000_ms\":{},\"hostname_1000_ms\":{},\
         \"static_binary_bytes\":{},\"static_client_rss_kib\":{}}}",
        opt(client_rss),
        opt(client_fds),
        opt(binary_bytes),
        opt(small.fds),
        opt(large.fds_at_join),
        opt(large.join_ms),
        opt(large.hostname_ms),
        opt(static_bytes),
        opt(static_rss)
    );
    let _ = std::io::stdout().flush();
    let static_leftover = statics.as_ref().map_or(&[][..], |(_, l)| &l.leftover[..]);
    let leftover: Vec<u32> = small.leftover.iter().chain(&large.leftover).chain(static_leftover).copied().collect();
    if !leftover.is_empty() {
        eprintln!("footprint: clients still running after dismantling: {leftover:?}");
    }
    let measured = [client_rss, client_fds.map(|v| v as u64), binary_bytes, small.fds.map(|v| v as u64)]
        .iter()
        .chain(&[large.fds_at_join.map(|v| v as u64), large.join_ms, large.hostname_ms])
        .all(Option::is_some)
        && (o.static_plush.is_none() || (static_bytes.is_some() && static_rss.is_some()));
    std::process::exit(if measured && leftover.is_empty() { 0 } else { 1 });
}
