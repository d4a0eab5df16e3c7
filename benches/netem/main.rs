//! `netem`: real `plush client`s on an emulated network (issue 20).
//!
//! N hosts are Linux network namespaces (`pnm-198.18.x.y`), each with a veth pair to one bridge
//! that lives in a namespace of its own (`pnm-br`), an address from the benchmarking range
//! 198.18.0.0/15 (RFC 2544) and a real `plush client` started in it by the controller's
//! `command` launcher (`ip netns exec`). The controller (a [`Cluster`] of this process) runs in
//! its own namespace (`pnm-ctl`, 198.19.0.1). The bridge connects only these namespaces: no
//! interface of the machine's own namespace is on it, there is no route, NAT or forwarding out,
//! so no packet can leave the emulated cluster.
//!
//! Links: a `tbf` rate limit in both directions of every host's veth (`--rate`, 1gbit by
//! default), random loss on every packet a namespace receives (`--loss` percent, by nftables
//! `numgen random`). Every namespace has a permanent neighbour entry for every other address
//! (the kernel's ARP cache is shared by all namespaces and caps what it learns at 1,024 entries
//! in total, which 100 hosts overflow; see [`Net::fill_neighbours`]). This kernel has no
//! `netem`, so no delay is added: loss and rate limits bring TCP's own retransmission delays,
//! and the simulator's run for comparison is given the measured delays, which on one machine
//! with N clients are mostly scheduling, not the kernel's round trip: a frame's (`--latency`),
//! from the median to the 90th percentile of an accept's delay between two clients during the
//! SIGKILL repairs, and a crash's resets' (`--reset-latency`), the 10th to 90th percentile of
//! the survivors' reactions to the SIGKILL (all of them waking at once); half the kernel's
//! round trip (TCP connects) when the process-crash scenario did not run.
//!
//! Scenarios (each prints one JSON line on stdout): `build` (start to all joined), `recovery`
//! (the tree runs two RanSub epochs, then 25 % SIGKILL with the root: time until every survivor
//! is in one tree and until the relaunched hosts rejoined; the same with silent death: all of the
//! hosts' traffic dropped at once on the bridge, and their clients stopped with SIGSTOP; each
//! run `--recovery-runs` times, 3 by default, and the medians reported),
//! `partition` (two-way and one-way, healed after `--heal-after` s: time from the heal to one
//! tree), `link_cut` (one tree link cut both ways for `--heal-after` s: time from the heal to
//! one tree), `job` (a job through a SIGKILL, a partition and a silent death: lost and duplicated
//! results from the controller's report, checked against the file the job appends to on each
//! host), `push` (`--push-mib` MiB to every host through the tree and through a star where the
//! root serves every host; every copy checked by SHA-256), `sim` (`plush sim` with the same N,
//! the measured delay, loss and kill fraction, side by side: the median of nine seeds from
//! `--seed`, each listed). The last line is the summary.
//!
//! Teardown: every namespace whose name starts with `pnm-` (with its links, rules and qdiscs)
//! is deleted, after killing every process in it, on exit, on failure (a panic unwinds through
//! the guard), and on SIGINT/SIGTERM/SIGHUP (a flag every wait checks); leftovers of a crashed
//! earlier run are removed the same way before starting. Teardown is checked: no `pnm-`
//! namespace and no process in one may remain. Only one run at a time (the names are fixed).
//!
//! Needs root, `ip` (iproute2), `tc` and `nft`: without them it says so and exits 0 (skipped),
//! except under CI (`CI` set), where it exits 1.
//!
//! The clients run with `PLUSH_LOG=debug`: their logs (one per host, every line stamped with
//! the wall clock) time the recoveries exactly (see `last_tree_event`). With
//! `PLUSH_NETEM_KEEP=DIR` they are copied to DIR before the teardown, for a post-mortem.
//!
//! Bounds: N at most 1000 (addresses and the star's degree); every wait has a deadline; one
//! namespace, one veth pair and one client per host.

use plush_core::wire::ExitStatus;
use plush_core::{Config, HostState, NodeId};
use plush_mio::{Cluster, ClusterConfig, JobSpec, LaunchMethod, PushJob, RunOutcome};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Prefix of every namespace this harness makes.
const PREFIX: &str = "pnm-";
const BRIDGE_NS: &str = "pnm-br";
const CTL_NS: &str = "pnm-ctl";
/// The port every client listens on (each in its own namespace).
const CLIENT_PORT: u16 = 7100;
const CTL_PORT: u16 = 7000;
/// Where per-host directories (HOME of each client, job files) go.
const RUN_DIR: &str = "/tmp/pnm-run";
/// Largest N.
const MAX_HOSTS: usize = 1000;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

type Res<T> = Result<T, String>;

fn stopped() -> Res<()> {
    if STOP.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

#[derive(Clone, Debug)]
struct Opts {
    plush: PathBuf,
    hosts: usize,
    /// Percent of packets lost at each receiver.
    loss: f64,
    rate: String,
    push_mib: u64,
    heal_after: f64,
    /// Runs of each recovery scenario; the median is reported (see [`median_recovery`]).
    recovery_runs: usize,
    scenarios: BTreeSet<String>,
    seed: u64,
}

fn parse_opts() -> Res<Opts> {
    let mut o = Opts {
        plush: PathBuf::from("plush"),
        hosts: 30,
        loss: 0.1,
        rate: "1gbit".into(),
        push_mib: 100,
        heal_after: 5.0,
        recovery_runs: 3,
        scenarios: ["build", "recovery", "partition", "link_cut", "job", "push", "sim"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        seed: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--plush" => o.plush = PathBuf::from(val()?),
            "--hosts" => o.hosts = val()?.parse().map_err(e)?,
            "--loss" => o.loss = val()?.parse().map_err(e)?,
            "--rate" => o.rate = val()?,
            "--push-mib" => o.push_mib = val()?.parse().map_err(e)?,
            "--heal-after" => o.heal_after = val()?.parse().map_err(e)?,
            "--recovery-runs" => o.recovery_runs = val()?.parse::<usize>().map_err(e)?.clamp(1, 9),
            "--seed" => o.seed = val()?.parse().map_err(e)?,
            "--scenarios" => o.scenarios = val()?.split(',').map(str::to_owned).collect(),
            "-h" | "--help" => {
                println!(
                    "netem --plush PATH [--hosts N] [--loss PCT] [--rate RATE] [--push-mib M] \
                     [--heal-after S] [--recovery-runs K] [--seed S] [--scenarios build,recovery,partition,link_cut,job,push,sim]"
                );
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if !(4..=MAX_HOSTS).contains(&o.hosts) {
        return Err(format!("--hosts: from 4 to {MAX_HOSTS}"));
    }
    if !(0.0..=100.0).contains(&o.loss) {
        return Err("--loss: a percentage".into());
    }
    if !o.rate.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
        return Err("--rate: a tc rate such as 1gbit".into());
    }
    Ok(o)
}

fn run(cmd: &mut Command) -> Res<()> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|x| format!("{cmd:?}: {x}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn sh(line: &str) -> Res<()> {
    let v: Vec<&str> = line.split_whitespace().collect();
    run(Command::new(v[0]).args(&v[1..]))
}

/// Run `ip ARGS` with `input` on its stdin; `Err` carries its stderr when it fails.
fn ip_with_input(args: &[&str], input: &str) -> Res<()> {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(e)?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(input.as_bytes()).map_err(e)?;
    }
    let out = child.wait_with_output().map_err(e)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn nft(ns: &str, rules: &str) -> Res<()> {
    ip_with_input(&["netns", "exec", ns, "nft", "-f", "-"], rules).map_err(|x| format!("nft in {ns}: {x}: {rules}"))
}

fn ns_of(ip: Ipv4Addr) -> String {
    format!("{PREFIX}{ip}")
}

fn our_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect()
}

fn ns_pids(ns: &str) -> Vec<u32> {
    let out = Command::new("ip").args(["netns", "pids", ns]).output().map(|o| o.stdout).unwrap_or_default();
    let me = std::process::id();
    String::from_utf8_lossy(&out).split_whitespace().filter_map(|p| p.parse().ok()).filter(|&p| p != me).collect()
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(p) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a pid we read; no memory is touched.
        unsafe {
            libc::kill(p, sig);
        }
    }
}

/// Kill every process in our namespaces, delete the namespaces; (namespaces, processes) left.
fn teardown_all() -> (usize, usize) {
    for _ in 0..3 {
        let names = our_namespaces();
        if names.is_empty() {
            break;
        }
        for ns in &names {
            for p in ns_pids(ns) {
                signal(p, libc::SIGKILL);
            }
        }
        // The bridge namespace last: deleting a host's namespace removes its veth pair.
        let mut names = names;
        names.sort_by_key(|n| n == BRIDGE_NS);
        for ns in &names {
            let _ = run(Command::new("ip").args(["netns", "delete", ns]));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(d) = std::env::var_os("PLUSH_NETEM_KEEP") {
        // Keep the clients' logs for a post-mortem (see the module docs).
        let _ = Command::new("cp").arg("-r").arg(RUN_DIR).arg(d).stdin(Stdio::null()).status();
    }
    let _ = std::fs::remove_dir_all(RUN_DIR);
    let names = our_namespaces();
    let procs = names.iter().map(|n| ns_pids(n).len()).sum();
    (names.len(), procs)
}

/// The emulated network; torn down on drop.
struct Net {
    hosts: Vec<Ipv4Addr>,
    ctl: Ipv4Addr,
    /// This process's own network namespace, re-entered before teardown.
    home: File,
    checked: bool,
}

impl Net {
    fn host_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i as u32)
    }

    /// A namespace with `ip`/15 on `eth0`, linked to the bridge through `veth` (its name in the
    /// bridge's namespace), rate-limited both ways, with loss on what it receives.
    fn add_node(ns: &str, veth: &str, ip: Ipv4Addr, o: &Opts) -> Res<()> {
        sh(&format!("ip netns add {ns}"))?;
        sh(&format!("ip -n {BRIDGE_NS} link add {veth} type veth peer name eth0 netns {ns}"))?;
        sh(&format!("ip -n {BRIDGE_NS} link set {veth} master br0 up"))?;
        sh(&format!("ip -n {ns} addr add {ip}/15 dev eth0"))?;
        sh(&format!("ip -n {ns} link set eth0 address {}", mac_of(ip)))?;
        sh(&format!("ip -n {ns} link set eth0 up"))?;
        sh(&format!("ip -n {ns} link set lo up"))?;
        // A burst above the largest (GSO) packet, a queue of 100 ms at the rate.
        let tbf = format!("root tbf rate {} burst 512kb latency 100ms", o.rate);
        sh(&format!("tc -n {ns} qdisc add dev eth0 {tbf}"))?;
        sh(&format!("tc -n {BRIDGE_NS} qdisc add dev {veth} {tbf}"))?;
        // Loss in parts per million of received packets; fault rules go in fin/fout.
        let ppm = (o.loss * 10_000.0).round() as u64;
        let loss =
            if ppm > 0 { format!("iifname \"eth0\" numgen random mod 1000000 < {ppm} drop;") } else { String::new() };
        nft(
            ns,
            &format!(
                "table inet pnm {{\n chain loss {{ type filter hook input priority 0; policy accept; {loss} }}\n \
                 chain fin {{ type filter hook input priority -10; policy accept; }}\n \
                 chain fout {{ type filter hook output priority -10; policy accept; }}\n}}\n"
            ),
        )
    }

    fn make(o: &Opts) -> Res<Net> {
        let home = File::open("/proc/self/ns/net").map_err(e)?;
        let mut net = Net { hosts: Vec::new(), ctl: Ipv4Addr::new(198, 19, 0, 1), home, checked: false };
        sh(&format!("ip netns add {BRIDGE_NS}"))?;
        sh(&format!("ip -n {BRIDGE_NS} link add br0 type bridge"))?;
        sh(&format!("ip -n {BRIDGE_NS} link set br0 up"))?;
        Net::add_node(CTL_NS, "vctl", net.ctl, o)?;
        let _ = std::fs::remove_dir_all(RUN_DIR);
        for i in 0..o.hosts {
            stopped()?;
            let ip = Net::host_ip(i);
            Net::add_node(&ns_of(ip), &format!("v{i}"), ip, o)?;
            std::fs::create_dir_all(Path::new(RUN_DIR).join(ip.to_string())).map_err(e)?;
            net.hosts.push(ip);
        }
        net.fill_neighbours()?;
        // Into the controller's namespace: the cluster's sockets are made here.
        let f = File::open(format!("/run/netns/{CTL_NS}")).map_err(e)?;
        setns(&f)?;
        Ok(net)
    }

    /// Give every namespace a permanent neighbour entry for every other address. The kernel's
    /// ARP cache is one table for all namespaces, and its entries learned by ARP are capped in
    /// total (`gc_thresh3`, 1,024 by default): 100 hosts that talk to each other need up to
    /// 10,000, and past the cap a new neighbour is refused and the packets for it (a SYN and
    /// its retransmissions) are dropped without a trace. Each host of a real cluster has a
    /// table of its own; permanent entries are not counted against the cap.
    fn fill_neighbours(&self) -> Res<()> {
        let all: Vec<Ipv4Addr> = std::iter::once(self.ctl).chain(self.hosts.iter().copied()).collect();
        for me in &all {
            stopped()?;
            let ns = if *me == self.ctl { CTL_NS.to_owned() } else { ns_of(*me) };
            let batch: String = all
                .iter()
                .filter(|o| *o != me)
                .map(|o| format!("neigh replace {o} lladdr {} dev eth0 nud permanent\n", mac_of(*o)))
                .collect();
            ip_with_input(&["-n", &ns, "-batch", "-"], &batch)
                .map_err(|x| format!("ip -n {ns} -batch (neighbours): {x}"))?;
        }
        Ok(())
    }

    fn ids(&self) -> Vec<NodeId> {
        self.hosts.iter().map(|ip| NodeId::new(SocketAddr::from((*ip, CLIENT_PORT)))).collect()
    }

    /// Tear down and check; the error names what is left.
    fn teardown(&mut self) -> Res<()> {
        self.checked = true;
        let _ = setns(&self.home);
        let (ns, procs) = teardown_all();
        if ns == 0 && procs == 0 {
            eprintln!("netem: torn down (no namespace, link, rule or process left)");
            Ok(())
        } else {
            Err(format!("teardown left {ns} namespace(s) and {procs} process(es)"))
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if !self.checked {
            if let Err(x) = self.teardown() {
                eprintln!("netem: {x}");
            }
        }
    }
}

fn setns(f: &File) -> Res<()> {
    // SAFETY: setns(2) on an open namespace file; no memory is touched.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!("setns: {}", io::Error::last_os_error()))
    }
}

fn fault_rules(ip: Ipv4Addr, input: &str, output: &str) -> Res<()> {
    let ns = ns_of(ip);
    let mut r = String::from("flush chain inet pnm fin\nflush chain inet pnm fout\n");
    if !input.is_empty() {
        r += &format!("add rule inet pnm fin iifname \"eth0\" {input} drop\n");
    }
    if !output.is_empty() {
        r += &format!("add rule inet pnm fout oifname \"eth0\" {output} drop\n");
    }
    nft(&ns, &r)
}

fn heal(ips: &[Ipv4Addr]) -> Res<()> {
    for ip in ips {
        fault_rules(*ip, "", "")?;
    }
    Ok(())
}

/// A host's MAC address, made from its IPv4 address (locally administered).
fn mac_of(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

fn ip_of(n: &NodeId) -> Ipv4Addr {
    match n.addr().ip() {
        std::net::IpAddr::V4(v) => v,
        std::net::IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

/// A deterministic pick of `k` of `from` (xorshift on `seed`).
fn pick(from: &[NodeId], k: usize, seed: &mut u64) -> Vec<NodeId> {
    let mut v = from.to_vec();
    for i in (1..v.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        v.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
    v.truncate(k);
    v
}

struct Env<'a> {
    o: &'a Opts,
    net: &'a Net,
    ids: Vec<NodeId>,
    seed: u64,
}

impl Env<'_> {
    fn cluster(&self, degree: usize) -> Res<Cluster> {
        let template = format!(
            "cd {RUN_DIR}/{{ip}} && HOME={RUN_DIR}/{{ip}} PLUSH_LOG=debug exec ip netns exec {PREFIX}{{ip}} {{plush}} client \
             --max-children {degree} --listen {{addr}} --key-file - 2>> {RUN_DIR}/{{ip}}/client.log"
        );
        let cfg = ClusterConfig {
            listen: SocketAddr::from((self.net.ctl, CTL_PORT)),
            core: Config { max_children: degree, ..Config::default() },
            method: Some(LaunchMethod::Command { template, plush: self.o.plush.clone() }),
            launch_timeout: Duration::from_secs(30),
            lost_grace: Duration::from_secs(20),
            ..ClusterConfig::default()
        };
        Cluster::start(cfg).map_err(|x| format!("start the controller: {x}"))
    }

    /// A cluster of every host, all joined; and the time it took.
    fn built(&self, degree: usize) -> Res<(Cluster, Duration)> {
        let mut c = self.cluster(degree)?;
        let t0 = Instant::now();
        c.add_hosts(&self.ids);
        let n = self.ids.len();
        let ok =
            c.wait_until(Duration::from_secs(120), |c| c.count(HostState::Joined) == n || stop_now()).map_err(e)?;
        stopped()?;
        if !ok {
            return Err(format!("only {} of {n} joined: {:?}", c.count(HostState::Joined), c.failures()));
        }
        let took = t0.elapsed();
        match wait_one_tree(&mut c, &self.ids, Duration::from_secs(30))? {
            Some(_) => Ok((c, took)),
            None => Err("all joined but not in one tree".into()),
        }
    }

    fn victims(&mut self, c: &Cluster, fraction: f64, with_root: bool) -> Vec<NodeId> {
        let k = ((self.ids.len() as f64 * fraction).round() as usize).max(1);
        let root = c.root();
        let others: Vec<NodeId> = self.ids.iter().copied().filter(|h| Some(*h) != root).collect();
        let mut v = Vec::new();
        if let (true, Some(r)) = (with_root, root) {
            v.push(r);
        }
        let rest = k - v.len();
        v.extend(pick(&others, rest, &mut self.seed));
        v
    }

    fn survivors(&self, victims: &[NodeId]) -> Vec<NodeId> {
        self.ids.iter().copied().filter(|h| !victims.contains(h)).collect()
    }
}

fn stop_now() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// The live pid of the client of each of `hosts`.
fn pids(c: &Cluster, hosts: &[NodeId]) -> Res<Vec<u32>> {
    let cl = c.launched_clients();
    hosts
        .iter()
        .map(|h| {
            cl.iter()
                .rev()
                .find(|(x, p)| x == h && plush_mio::process_exists(*p))
                .map(|(_, p)| *p)
                .ok_or_else(|| format!("no live client for {h}"))
        })
        .collect()
}

/// Whether every one of `expect` is in the tree and the tree has one root. One poll waits at
/// most 150 ms for the members' answers: the first polls after a fault still ask the dead, and
/// a longer wait would be counted in the recovery time (it was, at 500 ms a poll).
fn one_tree(c: &mut Cluster, expect: &[NodeId]) -> Res<bool> {
    let topo = c.topology(Duration::from_millis(150)).map_err(e)?;
    let roots = topo.values().filter(|p| p.is_none()).count();
    Ok(roots == 1 && expect.iter().all(|h| topo.contains_key(h)))
}

/// Poll until every one of `expect` is in one tree; the time it took, `None` past `within`.
fn wait_one_tree(c: &mut Cluster, expect: &[NodeId], within: Duration) -> Res<Option<Duration>> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        stopped()?;
        if one_tree(c, expect)? {
            return Ok(Some(t0.elapsed()));
        }
        c.pump(Duration::from_millis(20)).map_err(e)?;
    }
    Ok(None)
}

/// RanSub epochs a fresh tree runs before a recovery scenario's fault, here and in the
/// simulator's run beside it (`--steady-epochs`): a cluster that fails has usually been up a
/// while, and its members' RanSub views (the repair's first candidates) are filled.
const SETTLE_EPOCHS: u32 = 2;

/// Let a fresh tree run [`SETTLE_EPOCHS`] RanSub epochs.
fn settle(c: &mut Cluster) -> Res<()> {
    let until = Instant::now() + Config::default().ransub_epoch * SETTLE_EPOCHS;
    while Instant::now() < until {
        stopped()?;
        c.pump(Duration::from_millis(50)).map_err(e)?;
    }
    Ok(())
}

/// The wall clock in ms since the Unix epoch, as the clients' debug log lines carry it.
fn wall_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// The last change of the tree's shape at any of `hosts` between `from` and `to` (wall-clock ms):
/// a parent, child or root event in their clients' logs (`PLUSH_LOG=debug` lines, which start
/// with the wall-clock ms). This is how the simulator times a recovery: the tree a poll found
/// whole has been whole since then. A relaunched victim joining (a child or parent among
/// `victims`) is not the survivors' repair, and the simulator's run has no relaunch: skipped.
fn last_tree_event(hosts: &[NodeId], victims: &[NodeId], from: u128, to: u128) -> Option<u128> {
    let rejoin: Vec<String> =
        victims.iter().flat_map(|v| [format!("ChildAdded({v})"), format!("ParentChanged(Some({v}))")]).collect();
    const SHAPE: [&str; 5] = ["ParentChanged(", "ChildAdded(", "ChildRemoved(", "BecameRoot", "StoppedBeingRoot"];
    let mut last = None;
    for h in hosts {
        let text = client_log(h);
        for (t, rest) in text.lines().filter_map(stamped) {
            if t < from
                || t > to
                || !rest.contains(": event ")
                || !SHAPE.iter().any(|k| rest.contains(k))
                || rejoin.iter().any(|r| rest.contains(r.as_str()))
            {
                continue;
            }
            last = Some(last.map_or(t, |l: u128| l.max(t)));
        }
    }
    last
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Silence `hosts` all at once: one nftables table on the bridge drops every frame from or to
/// them (one atomic rule set, so that no host goes silent much later than the first), then
/// their clients are stopped (SIGSTOP), so that they do not even run.
fn silence(c: &Cluster, hosts: &[NodeId]) -> Res<Vec<u32>> {
    let p = pids(c, hosts)?;
    let set: Vec<String> = hosts.iter().map(|h| ip_of(h).to_string()).collect();
    let set = set.join(", ");
    nft(
        BRIDGE_NS,
        &format!(
            "table bridge pnmsilent {{\n chain cut {{ type filter hook forward priority -10; policy accept; \
             ip saddr {{ {set} }} drop; ip daddr {{ {set} }} drop; }}\n}}\n"
        ),
    )?;
    for pid in &p {
        signal(*pid, libc::SIGSTOP);
    }
    Ok(p)
}

/// Undo [`silence`]: the stopped clients are killed (they may be relaunched), the bridge's
/// table deleted.
fn unsilence(stopped: &[u32]) -> Res<()> {
    for p in stopped {
        signal(*p, libc::SIGKILL);
        signal(*p, libc::SIGCONT);
    }
    nft(BRIDGE_NS, "delete table bridge pnmsilent\n")
}

/// Cut `cut` off from every other host and the controller; `one_way`: only what they receive
/// from the others is dropped.
fn partition(net: &Net, cut: &[NodeId], one_way: bool) -> Res<()> {
    let set: Vec<String> = cut.iter().map(|h| ip_of(h).to_string()).collect();
    let set = format!("{{ {} }}", set.join(", "));
    let _ = net;
    for h in cut {
        let out = if one_way { String::new() } else { format!("ip daddr != {set}") };
        fault_rules(ip_of(h), &format!("ip saddr != {set}"), &out)?;
    }
    Ok(())
}

fn scenario_build(env: &Env) -> Res<u128> {
    let (mut c, took) = env.built(plush_core::Config::default().max_children)?;
    println!("{{\"scenario\": \"build\", \"hosts\": {}, \"build_ms\": {}}}", env.ids.len(), ms(took));
    c.dismantle(Duration::from_secs(20)).map_err(e)?;
    Ok(ms(took))
}

/// What a recovery scenario measured.
struct Recovery {
    /// Until every survivor was in one tree (ms from the fault).
    one_ms: u128,
    /// Until the relaunched hosts had rejoined too (process crashes only).
    all_ms: Option<u128>,
    /// How long each survivor with a killed parent or child took to react to the reset: its
    /// first `ParentChanged(None)` or `ChildRemoved(victim)` (ms from the SIGKILL, sorted).
    /// The kernel sends the reset at once, so this is the time for news to reach a client's
    /// machine on this emulated cluster (scheduling included), which the simulator's latency
    /// stands for.
    reactions: Vec<u128>,
    /// One frame's delay when nothing else is going on, as far as the logs show it: from a
    /// parent's `ChildAdded(x)` (logged as it sends its accept) to `x`'s
    /// `ParentChanged(Some(parent))` (logged as the accept arrives), for the repairs after
    /// the SIGKILL (ms, sorted).
    hops: Vec<u128>,
}

/// Recovery after 25 % of the hosts (root included) die: by SIGKILL (`silent` false) or
/// silently.
fn scenario_recovery(env: &mut Env, silent: bool) -> Res<Recovery> {
    let (mut c, _) = env.built(Config::default().max_children)?;
    settle(&mut c)?;
    let victims = env.victims(&c, 0.25, true);
    let survivors = env.survivors(&victims);
    let p = pids(&c, &victims)?;
    let t0 = Instant::now();
    let t0_wall = wall_ms();
    let stopped_pids = if silent {
        silence(&c, &victims)?
    } else {
        for pid in &p {
            signal(*pid, libc::SIGKILL);
        }
        Vec::new()
    };
    wait_one_tree(&mut c, &survivors, Duration::from_secs(120))?
        .ok_or("the survivors were not in one tree within 120 s")?;
    // From before the first fault until a poll saw one tree: an upper bound, by up to a poll.
    let polled_ms = ms(t0.elapsed());
    // The tree has been whole since its shape last changed, as the simulator counts it.
    let now_wall = wall_ms();
    let one_ms =
        last_tree_event(&survivors, &victims, t0_wall, now_wall).map_or(polled_ms, |t| t.saturating_sub(t0_wall));
    let reactions = if silent { Vec::new() } else { first_reactions(&survivors, &victims, t0_wall, now_wall) };
    let hops = if silent { Vec::new() } else { accept_delays(&survivors, t0_wall, now_wall) };
    let mut all_ms = None;
    if !silent {
        all_ms = wait_one_tree(&mut c, &env.ids, Duration::from_secs(120))?.map(|_| ms(t0.elapsed()));
        if all_ms.is_none() {
            return Err("the relaunched hosts did not rejoin within 120 s".into());
        }
    } else {
        unsilence(&stopped_pids)?;
    }
    let kind = if silent { "silent" } else { "process" };
    println!(
        "{{\"scenario\": \"recovery\", \"crash\": \"{kind}\", \"hosts\": {}, \"killed\": {}, \"root_killed\": true, \
         \"one_tree_ms\": {one_ms}, \"one_tree_polled_ms\": {polled_ms}, \"relaunched_rejoined_ms\": {}}}",
        env.ids.len(),
        victims.len(),
        all_ms.map_or("null".into(), |x| x.to_string())
    );
    c.dismantle(Duration::from_secs(20)).map_err(e)?;
    Ok(Recovery { one_ms, all_ms, reactions, hops })
}

/// [`scenario_recovery`] `--recovery-runs` times (3 by default): the median of the times to one
/// tree and of the relaunched hosts' rejoins, and every run's reactions and accept delays. One
/// run is one draw from a spread the simulator's figure (a median of nine seeds) summarises: a
/// repair either completes in a few message delays or meets a lost packet and waits a
/// retransmission timeout (200 ms, in about half of the runs at 0.1 % loss), on the real
/// clients as in the simulator, so a single run against a median could land either side of a
/// factor of two.
fn median_recovery(env: &mut Env, silent: bool) -> Res<Recovery> {
    let mut runs = Vec::new();
    for _ in 0..env.o.recovery_runs.max(1) {
        runs.push(scenario_recovery(env, silent)?);
    }
    let median = |mut v: Vec<u128>| {
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    let one_ms = median(runs.iter().map(|r| r.one_ms).collect()).unwrap_or(0);
    let all: Vec<u128> = runs.iter().filter_map(|r| r.all_ms).collect();
    let all_ms = if all.len() == runs.len() { median(all) } else { None };
    let mut reactions: Vec<u128> = runs.iter().flat_map(|r| r.reactions.iter().copied()).collect();
    reactions.sort_unstable();
    let mut hops: Vec<u128> = runs.into_iter().flat_map(|r| r.hops).collect();
    hops.sort_unstable();
    Ok(Recovery { one_ms, all_ms, reactions, hops })
}

/// The log of `host`'s client (empty if it cannot be read).
fn client_log(host: &NodeId) -> String {
    std::fs::read_to_string(Path::new(RUN_DIR).join(ip_of(host).to_string()).join("client.log")).unwrap_or_default()
}

/// A debug log line's wall-clock stamp (ms) and the rest of the line; `None` for other lines.
fn stamped(line: &str) -> Option<(u128, &str)> {
    let (stamp, rest) = line.split_once(' ')?;
    Some((stamp.parse().ok()?, rest))
}

/// For each of `hosts` that reacted to the death of one of `victims` between `from` and `to`
/// (wall-clock ms), the delay of its first reaction (see [`Recovery::reactions`]), sorted.
fn first_reactions(hosts: &[NodeId], victims: &[NodeId], from: u128, to: u128) -> Vec<u128> {
    let gone: Vec<String> = victims.iter().map(|v| format!("event ChildRemoved({v})")).collect();
    let mut out = Vec::new();
    for h in hosts {
        let text = client_log(h);
        let first = text.lines().filter_map(stamped).find_map(|(t, rest)| {
            let hit = rest.contains("event ParentChanged(None)") || gone.iter().any(|g| rest.contains(g.as_str()));
            t.checked_sub(from).filter(|_| t <= to && hit)
        });
        out.extend(first);
    }
    out.sort_unstable();
    out
}

/// The delays of the accepts among `hosts` between `from` and `to` (wall-clock ms; see
/// [`Recovery::hops`]), sorted: for each `ParentChanged(Some(p))` at a host, the time since
/// `p`'s last `ChildAdded` of that host.
fn accept_delays(hosts: &[NodeId], from: u128, to: u128) -> Vec<u128> {
    let mut added: BTreeMap<(String, String), u128> = BTreeMap::new();
    let mut joined: Vec<(String, String, u128)> = Vec::new();
    for h in hosts {
        let me = h.to_string();
        for (t, rest) in client_log(h).lines().filter_map(stamped) {
            if t < from || t > to {
                continue;
            }
            let inner =
                |key: &str| rest.split_once(key).and_then(|(_, x)| x.split_once(')')).map(|(x, _)| x.to_owned());
            if let Some(child) = inner("event ChildAdded(") {
                added.insert((me.clone(), child), t);
            } else if let Some(parent) = inner("event ParentChanged(Some(") {
                joined.push((parent, me.clone(), t));
            }
        }
    }
    let mut out: Vec<u128> = joined
        .into_iter()
        .filter_map(|(parent, child, t)| added.get(&(parent, child)).and_then(|&a| t.checked_sub(a)))
        .collect();
    out.sort_unstable();
    out
}

/// A quarter of the hosts cut off for `heal_after` s; the time from the heal to all in one tree.
fn scenario_partition(env: &mut Env, one_way: bool) -> Res<u128> {
    let (mut c, _) = env.built(Config::default().max_children)?;
    let cut = pick(&env.ids, env.ids.len() / 4, &mut env.seed);
    partition(env.net, &cut, one_way)?;
    let until = Instant::now() + Duration::from_secs_f64(env.o.heal_after);
    while Instant::now() < until {
        stopped()?;
        c.pump(Duration::from_millis(50)).map_err(e)?;
    }
    heal(&cut.iter().map(ip_of).collect::<Vec<_>>())?;
    let healed =
        wait_one_tree(&mut c, &env.ids, Duration::from_secs(120))?.ok_or("not one tree within 120 s of the heal")?;
    println!(
        "{{\"scenario\": \"partition\", \"one_way\": {one_way}, \"hosts\": {}, \"cut\": {}, \"heal_after_s\": {}, \
         \"heal_ms\": {}}}",
        env.ids.len(),
        cut.len(),
        env.o.heal_after,
        ms(healed)
    );
    c.dismantle(Duration::from_secs(20)).map_err(e)?;
    Ok(ms(healed))
}

/// One tree link (a member below the root and its parent) cut both ways for `heal_after` s;
/// the time from the heal to all in one tree.
fn scenario_link_cut(env: &mut Env) -> Res<u128> {
    let (mut c, _) = env.built(Config::default().max_children)?;
    let topo = c.topology(Duration::from_secs(5)).map_err(e)?;
    let (child, parent) = topo.iter().find_map(|(h, p)| p.map(|p| (*h, p))).ok_or("no tree link in the topology")?;
    let pip = ip_of(&parent);
    fault_rules(ip_of(&child), &format!("ip saddr {pip}"), &format!("ip daddr {pip}"))?;
    let until = Instant::now() + Duration::from_secs_f64(env.o.heal_after);
    while Instant::now() < until {
        stopped()?;
        c.pump(Duration::from_millis(50)).map_err(e)?;
    }
    heal(&[ip_of(&child)])?;
    let healed =
        wait_one_tree(&mut c, &env.ids, Duration::from_secs(120))?.ok_or("not one tree within 120 s of the heal")?;
    println!(
        "{{\"scenario\": \"link_cut\", \"hosts\": {}, \"child\": \"{child}\", \"parent\": \"{parent}\", \
         \"cut_s\": {}, \"heal_ms\": {}}}",
        env.ids.len(),
        env.o.heal_after,
        ms(healed)
    );
    c.dismantle(Duration::from_secs(20)).map_err(e)?;
    Ok(ms(healed))
}

/// The lines each host's job wrote, by file name (the host's address).
fn job_files(dir: &Path) -> BTreeMap<String, usize> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|x| {
                    let t = std::fs::read_to_string(x.path()).unwrap_or_default();
                    (x.file_name().to_string_lossy().into_owned(), t.lines().count())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A job through `fault` ("kill", "partition", "silent"): (lost, duplicates) among the hosts
/// the fault spared (and, for the partition, the cut-off ones, which must deliver after the
/// heal).
fn job_through(env: &mut Env, fault: &str) -> Res<(usize, usize)> {
    let (mut c, _) = env.built(Config::default().max_children)?;
    let dir = Path::new(RUN_DIR).join(format!("job-{fault}"));
    std::fs::create_dir_all(&dir).map_err(e)?;
    let script = "echo $$ >> \"$RUNDIR/$PLUSH_NODE\"; sleep 4; echo done";
    let env_vars = vec![("RUNDIR".to_owned(), dir.display().to_string())];
    let argv = ["sh", "-c", script];
    let job = c
        .start_job(JobSpec {
            argv: &argv,
            target: None,
            timeout: None,
            stream: false,
            env: &env_vars,
            max_output: None,
        })
        .map_err(e)?;
    let n = env.ids.len();
    // Hosts that have not started it within 60 s are reported (`not_started_before_fault`) and
    // count as lost unless their result arrives.
    c.wait_until(Duration::from_secs(60), |_| job_files(&dir).len() == n || stop_now()).map_err(e)?;
    stopped()?;
    let late = n - job_files(&dir).len().min(n);
    if late > 0 {
        // Who did not start, and where the tree has them (the poll asks each member its parent).
        let files = job_files(&dir);
        let topo = c.topology(Duration::from_secs(2)).map_err(e)?;
        for h in env.ids.iter().filter(|h| !files.contains_key(&h.addr().to_string())) {
            eprintln!("netem: job {fault}: {h} has not started it after 60 s; its parent: {:?}", topo.get(h));
        }
    }
    let (victims, stopped_pids) = match fault {
        "kill" => {
            let v = env.victims(&c, 0.25, true);
            for p in pids(&c, &v)? {
                signal(p, libc::SIGKILL);
            }
            (v, Vec::new())
        }
        "silent" => {
            let v = env.victims(&c, 0.25, true);
            let p = silence(&c, &v)?;
            (v, p)
        }
        _ => {
            let cut = pick(&env.ids, n / 4, &mut env.seed);
            partition(env.net, &cut, false)?;
            let until = Instant::now() + Duration::from_secs_f64(env.o.heal_after);
            while Instant::now() < until {
                stopped()?;
                c.pump(Duration::from_millis(50)).map_err(e)?;
            }
            heal(&cut.iter().map(ip_of).collect::<Vec<_>>())?;
            (Vec::new(), Vec::new())
        }
    };
    let end = Instant::now() + Duration::from_secs(120);
    let out: RunOutcome = c.wait_job(job, |_, _, _| {}, || Instant::now() >= end || stop_now()).map_err(e)?;
    stopped()?;
    if !stopped_pids.is_empty() {
        unsilence(&stopped_pids)?;
    }
    let spared = env.survivors(&victims);
    let mut times: BTreeMap<NodeId, usize> = BTreeMap::new();
    for g in &out.groups {
        if g.status == ExitStatus::Exited(0) {
            for h in &g.nodes {
                *times.entry(*h).or_default() += 1;
            }
        }
    }
    let files = job_files(&dir);
    let lost_hosts: Vec<NodeId> = spared.iter().copied().filter(|h| !times.contains_key(h)).collect();
    let lost = lost_hosts.len();
    for h in &lost_hosts {
        // A post-mortem on CI, where the logs are gone with the run: what the controller knows
        // of the host, and the end of its client's log.
        let how: Vec<String> =
            out.groups.iter().filter(|g| g.nodes.contains(h)).map(|g| format!("{:?}", g.status)).collect();
        let missing = out.missing.contains(h);
        let log = client_log(h);
        let tail: Vec<&str> = log.lines().rev().take(25).collect();
        eprintln!("netem: job {fault}: {h} lost (results {how:?}, missing {missing}); its client log ends:");
        for l in tail.iter().rev() {
            eprintln!("  {l}");
        }
    }
    if lost > 0 || late > 0 {
        for h in &env.ids {
            for l in client_log(h).lines().filter(|l| l.contains("panicked") || l.contains("cannot ")) {
                eprintln!("netem: job {fault}: {h}: {l}");
            }
        }
    }
    let dup_reports: usize = times.values().map(|k| k - 1).sum();
    let dup_runs: usize = files.values().map(|k| k.saturating_sub(1)).sum();
    // A result reported done must come from a host whose file holds exactly one run.
    let unbacked = times.keys().filter(|h| files.get(&h.addr().to_string()) != Some(&1)).count();
    println!(
        "{{\"scenario\": \"job\", \"fault\": \"{fault}\", \"hosts\": {n}, \"spared\": {}, \"ok\": {}, \"lost\": {lost}, \
         \"duplicate_reports\": {dup_reports}, \"duplicate_runs\": {dup_runs}, \"reported_without_run\": {unbacked}, \
         \"complete\": {}, \"elapsed_ms\": {}, \"not_started_before_fault\": {late}}}",
        spared.len(),
        times.len(),
        out.complete,
        ms(out.elapsed)
    );
    c.dismantle(Duration::from_secs(20)).map_err(e)?;
    Ok((lost + unbacked, dup_reports + dup_runs))
}

fn sha256(path: &Path) -> Option<String> {
    let out = Command::new("sha256sum").arg(path).output().ok()?;
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().map(str::to_owned)
}

/// Push `push_mib` MiB to every host with `degree`; seconds, and the root's children.
fn push_once(env: &Env, src: &Path, want: &str, degree: usize) -> Res<(f64, usize)> {
    let (mut c, _) = env.built(degree)?;
    let topo = c.topology(Duration::from_secs(5)).map_err(e)?;
    let root = c.root();
    let root_children = topo.values().filter(|p| p.is_some() && **p == root).count();
    let t0 = Instant::now();
    let job = c
        .start_push(PushJob {
            src,
            dest: "~/payload.bin",
            target: None,
            timeout: Some(Duration::from_secs(600)),
            chunk: 128 << 10,
            mode: None,
            upgrade: false,
            digest: None,
        })
        .map_err(e)?;
    let end = Instant::now() + Duration::from_secs(660);
    let out = c.wait_job(job, |_, _, _| {}, || Instant::now() >= end || stop_now()).map_err(e)?;
    let secs = t0.elapsed().as_secs_f64();
    stopped()?;
    let ok: usize = out.groups.iter().filter(|g| g.status == ExitStatus::Exited(0)).map(|g| g.nodes.len()).sum();
    if ok != env.ids.len() {
        return Err(format!("push (degree {degree}): {ok} of {} hosts ok: {:?}", env.ids.len(), out.groups));
    }
    c.dismantle(Duration::from_secs(20)).map_err(e)?;
    for ip in &env.net.hosts {
        let f = Path::new(RUN_DIR).join(ip.to_string()).join("payload.bin");
        let got = sha256(&f);
        let _ = std::fs::remove_file(&f);
        if got.as_deref() != Some(want) {
            return Err(format!("push (degree {degree}): {} has sha256 {got:?}, expected {want}", f.display()));
        }
    }
    Ok((secs, root_children))
}

fn scenario_push(env: &Env) -> Res<(f64, f64)> {
    let src = Path::new(RUN_DIR).join("payload.src");
    {
        let mut f = File::create(&src).map_err(e)?;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..env.o.push_mib {
            for b in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
            }
            f.write_all(&buf).map_err(e)?;
        }
    }
    let want = sha256(&src).ok_or("sha256sum of the source")?;
    let (tree, tree_children) = push_once(env, &src, &want, Config::default().max_children)?;
    let (star, star_children) = push_once(env, &src, &want, env.ids.len() + 1)?;
    let _ = std::fs::remove_file(&src);
    println!(
        "{{\"scenario\": \"push\", \"hosts\": {}, \"mib\": {}, \"rate\": \"{}\", \"push_tree_s\": {tree:.3}, \
         \"push_star_s\": {star:.3}, \"root_children_tree\": {tree_children}, \"root_children_star\": {star_children}, \
         \"verified\": {}}}",
        env.ids.len(),
        env.o.push_mib,
        env.o.rate,
        2 * env.ids.len()
    );
    Ok((tree, star))
}

/// Round trip from the controller's namespace to the clients: TCP connects, in ms (median,
/// and the 90th percentile).
fn measure_rtt(env: &Env) -> Res<(f64, f64)> {
    let (mut c, _) = env.built(Config::default().max_children)?;
    let mut v = Vec::new();
    for round in 0..3 {
        for h in env.ids.iter().skip(round).step_by(3) {
            let t = Instant::now();
            if TcpStream::connect_timeout(&h.addr(), Duration::from_secs(2)).is_ok() {
                v.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    c.dismantle(Duration::from_secs(20)).map_err(e)?;
    if v.is_empty() {
        return Err("no connect succeeded".into());
    }
    v.sort_by(f64::total_cmp);
    Ok((v[v.len() / 2], v[v.len() * 9 / 10]))
}

/// Seeds of `plush sim` per comparison: the real run is one draw of the victims and of the
/// scheduling, so is one simulated run; the median of a few is what the model says.
const SIM_SEEDS: u64 = 9;

/// `plush sim` with the same N, kill fraction and latency, for [`SIM_SEEDS`] seeds from the
/// run's: the median recovery time in ms, and each run's.
fn sim_recovery(o: &Opts, lat: &str, reset: Option<&str>, host_crash: bool) -> Res<(f64, Vec<f64>)> {
    let mut runs = Vec::new();
    for k in 0..SIM_SEEDS {
        runs.push(sim_recovery_one(o, o.seed + k, lat, reset, host_crash)?);
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    Ok((sorted[sorted.len() / 2], runs))
}

/// One `plush sim` run of [`sim_recovery`]: its recovery time in ms.
fn sim_recovery_one(o: &Opts, seed: u64, lat: &str, reset: Option<&str>, host_crash: bool) -> Res<f64> {
    let mut cmd = Command::new(&o.plush);
    cmd.args(["sim", "--nodes", &o.hosts.to_string(), "--seed", &seed.to_string(), "--kill", "0.25"]);
    // The same settling as the real run's (`SETTLE_EPOCHS`) between the build and the fault.
    cmd.args(["--kill-root", "--latency", lat, "--steady-epochs", &SETTLE_EPOCHS.to_string(), "--json"]);
    // The same loss: a repair that meets it waits a retransmission timeout, here as there.
    cmd.args(["--loss", &o.loss.to_string()]);
    if let Some(r) = reset {
        cmd.args(["--reset-latency", r]);
    }
    if host_crash {
        cmd.args(["--crash", "host"]);
    }
    let out = cmd.output().map_err(e)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("\"recovery\"").ok_or_else(|| format!("plush sim: no recovery in {text}"))?;
    let rest = &text[at..];
    let k = rest.find("\"sim_ms\":").ok_or("plush sim: no sim_ms")? + "\"sim_ms\":".len();
    let num: String =
        rest[k..].chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '-').collect();
    num.parse().map_err(|x| format!("plush sim: sim_ms {num:?}: {x}"))
}

fn ratio(sim: f64, real: u128) -> String {
    if real == 0 {
        "null".into()
    } else {
        format!("{:.2}", sim / real as f64)
    }
}

fn opt(x: Option<u128>) -> String {
    x.map_or("null".into(), |v| v.to_string())
}

fn optf(x: Option<f64>) -> String {
    x.map_or("null".into(), |v| format!("{v:.3}"))
}

fn main() {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(x) => {
            eprintln!("netem: {x}");
            std::process::exit(2);
        }
    };
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["ip -V", "tc -V", "nft --version"].iter().all(|l| sh(l).is_ok());
    if !(root && tools) {
        let why = if root { "needs `ip`, `tc` (iproute2) and `nft` (nftables)" } else { "needs root" };
        if ci {
            eprintln!("netem: FAILED: {why} (under CI this is required)");
            std::process::exit(1);
        }
        eprintln!("netem: skipped: {why}");
        std::process::exit(0);
    }
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(s, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    }
    let _ = plush_mio::raise_fd_limit();
    let left = teardown_all();
    if left != (0, 0) {
        eprintln!("netem: FAILED: leftovers of an earlier run could not be removed: {left:?}");
        std::process::exit(1);
    }
    let code = match main_inner(&o) {
        Ok(()) => 0,
        Err(x) if x == "interrupted" => {
            eprintln!("netem: interrupted");
            130
        }
        Err(x) => {
            eprintln!("netem: FAILED: {x}");
            1
        }
    };
    let left = teardown_all();
    if left != (0, 0) {
        eprintln!("netem: FAILED: teardown left {left:?}");
        std::process::exit(1);
    }
    std::process::exit(code);
}

fn main_inner(o: &Opts) -> Res<()> {
    eprintln!("netem: making {} hosts (rate {}, loss {} %)", o.hosts, o.rate, o.loss);
    let t = Instant::now();
    let mut net = match Net::make(o) {
        Ok(n) => n,
        Err(x) => {
            return Err(format!("cannot make the namespaces: {x}"));
        }
    };
    eprintln!("netem: network made in {:.1} s", t.elapsed().as_secs_f64());
    let mut env = Env { o, ids: net.ids(), net: &net, seed: o.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1 };
    let sc = |s: &str| o.scenarios.contains(s);
    let mut build = None;
    let (mut rp, mut rp_all, mut rs) = (None, None, None);
    let mut reactions = Vec::new();
    let mut hops = Vec::new();
    let mut heal_ms = None;
    let (mut lost, mut dups) = (None::<usize>, None::<usize>);
    let (mut tree, mut star) = (None, None);
    let (mut sim_p, mut sim_s) = (None, None);
    if sc("build") {
        build = Some(scenario_build(&env)?);
    }
    if sc("recovery") {
        let r = median_recovery(&mut env, false)?;
        rp = Some(r.one_ms);
        rp_all = r.all_ms;
        reactions = r.reactions;
        hops = r.hops;
        rs = Some(median_recovery(&mut env, true)?.one_ms);
    }
    if sc("partition") {
        let two = scenario_partition(&mut env, false)?;
        let one = scenario_partition(&mut env, true)?;
        heal_ms = Some(two.max(one));
    }
    if sc("link_cut") {
        scenario_link_cut(&mut env)?;
    }
    if sc("job") {
        let (mut l, mut d) = (0, 0);
        for f in ["kill", "partition", "silent"] {
            let (a, b) = job_through(&mut env, f)?;
            l += a;
            d += b;
        }
        lost = Some(l);
        dups = Some(d);
    }
    if sc("push") {
        let (a, b) = scenario_push(&env)?;
        tree = Some(a);
        star = Some(b);
    }
    if sc("sim") {
        let (rtt, rtt90) = measure_rtt(&env)?;
        // The simulator's delays (a minimum plus an exponential tail, capped at a maximum),
        // from the process-crash scenario when it ran. A frame (handed to the receiving
        // machine, scheduling included): an accept's delay, from its median (at least 0.5 ms,
        // half the logs' resolution) to its 90th percentile (see [`Recovery::hops`]). A crash's
        // resets: the survivors' reactions, 10th to 90th percentile, the queue of a burst that
        // wakes every peer at once on two cores. (One latency from the reactions for every
        // frame put a burst's queueing on each: the simulator's repairs took three times the
        // real ones.) Without that scenario: half the kernel's round trip (TCP connects), from
        // the median to the 90th percentile, for both.
        let pct = |v: &Vec<u128>, q: usize| v.get((v.len() * q / 100).min(v.len().saturating_sub(1))).copied();
        let range = |lo: f64, hi: f64| {
            let lo = lo.max(0.01);
            format!("{lo:.3}..{:.3}", hi.max(lo + 0.001))
        };
        let measured = reactions.len() >= 5 && hops.len() >= 5;
        let (lat, reset, from) = match (pct(&hops, 50), pct(&hops, 90), pct(&reactions, 10), pct(&reactions, 90)) {
            (Some(a), Some(b), Some(c), Some(d)) if measured => {
                let lo = (a as f64).max(0.5);
                (range(lo, (b as f64).max(lo + 0.5)), Some(range(c as f64, d as f64)), "accepts_and_reactions")
            }
            _ => (range(rtt / 2.0, rtt90 / 2.0), None, "tcp_connects"),
        };
        let reset_json = reset.as_ref().map_or("null".to_owned(), |r| format!("\"{r}\""));
        let (p, p_runs) = sim_recovery(o, &lat, reset.as_deref(), false)?;
        let (s, s_runs) = sim_recovery(o, &lat, reset.as_deref(), true)?;
        let list = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
        println!(
            "{{\"scenario\": \"sim\", \"hosts\": {}, \"rtt_ms\": {rtt:.3}, \"latency\": \"{lat}\", \"reset_latency\": {reset_json}, \
             \"latency_from\": \"{from}\", \
             \"sim_recovery_process_ms\": {p:.0}, \"recovery_process_ms\": {}, \"ratio_process\": {}, \
             \"sim_recovery_silent_ms\": {s:.0}, \"recovery_silent_ms\": {}, \"ratio_silent\": {}, \
             \"sim_seeds\": \"{}..{}\", \"sim_runs_process_ms\": [{}], \"sim_runs_silent_ms\": [{}]}}",
            o.hosts,
            opt(rp),
            rp.map_or("null".into(), |r| ratio(p, r)),
            opt(rs),
            rs.map_or("null".into(), |r| ratio(s, r)),
            o.seed,
            o.seed + SIM_SEEDS - 1,
            list(&p_runs),
            list(&s_runs),
        );
        sim_p = Some(p);
        sim_s = Some(s);
    }
    let _ = rp_all;
    drop(env);
    net.teardown()?;
    println!(
        "{{\"hosts\": {}, \"build_ms\": {}, \"recovery_process_ms\": {}, \"recovery_silent_ms\": {}, \
         \"partition_heal_ms\": {}, \"job_lost\": {}, \"job_duplicates\": {}, \"push_tree_s\": {}, \
         \"push_star_s\": {}, \"sim_recovery_process_ms\": {}, \"sim_recovery_silent_ms\": {}}}",
        o.hosts,
        opt(build),
        opt(rp),
        opt(rs),
        opt(heal_ms),
        lost.map_or("null".into(), |x| x.to_string()),
        dups.map_or("null".into(), |x| x.to_string()),
        optf(tree),
        optf(star),
        sim_p.map_or("null".into(), |x| format!("{x:.0}")),
        sim_s.map_or("null".into(), |x| format!("{x:.0}")),
    );
    Ok(())
}
