//! Every byte of output, stdout and stderr apart, on loopback with real clients (issue 25).
//!
//! Each host writes a known output derived from its own address (`PLUSH_NODE`), so the test
//! checks every host's bytes by digest without keeping them. Every process is killed and reaped
//! on drop (the `Cluster` does), and every wait is bounded.

mod common;

use common::{cluster_config, free_port, rss_kib};
use plush_core::wire::ExitStatus;
use plush_core::{HostState, NodeId};
use plush_mio::{Cluster, JobSpec};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// What `sh -c 'yes "$PLUSH_NODE" | head -c N'` prints on `node`.
fn yes_output(node: &NodeId, n: u64) -> Vec<u8> {
    let line = format!("{node}\n").into_bytes();
    line.iter().copied().cycle().take(n as usize).collect()
}

fn join(n: u32, port_from: u16) -> (Cluster, Vec<NodeId>) {
    let _ = plush_mio::raise_fd_limit();
    let port = free_port(n, port_from);
    let hosts: Vec<NodeId> = (0..n).map(|i| NodeId::loopback(i, port)).collect();
    let mut c = Cluster::start(cluster_config()).expect("start the controller");
    c.add_hosts(&hosts);
    let all = c.wait_until(Duration::from_secs(60), |c| c.count(HostState::Joined) == n as usize).expect("event loop");
    assert!(all, "not all {n} joined");
    (c, hosts)
}

/// Per (host, stderr): bytes and SHA-256 of what streamed in.
#[derive(Default)]
struct Sums(BTreeMap<(NodeId, bool), (u64, Sha256)>);

impl Sums {
    fn add(&mut self, chunks: Vec<plush_mio::Streamed>) -> u64 {
        let mut n = 0;
        for c in chunks {
            let e = self.0.entry((c.node, c.err)).or_insert_with(|| (0, Sha256::new()));
            e.0 += c.bytes.len() as u64;
            e.1.update(&c.bytes);
            n += c.bytes.len() as u64;
        }
        n
    }

    fn check(self, hosts: &[NodeId], out_bytes: u64, err_line: &str) {
        let mut got = self.0;
        for h in hosts {
            let (n, sum) = got.remove(&(*h, false)).unwrap_or_else(|| panic!("{h}: no stdout at all"));
            assert_eq!(n, out_bytes, "{h}: stdout bytes");
            let want: [u8; 32] = Sha256::digest(yes_output(h, out_bytes)).into();
            assert_eq!(<[u8; 32]>::from(sum.finalize()), want, "{h}: stdout differs");
            let (n, sum) = got.remove(&(*h, true)).unwrap_or_else(|| panic!("{h}: no stderr at all"));
            let want_err = format!("{err_line} {h}\n");
            assert_eq!(n, want_err.len() as u64, "{h}: stderr bytes");
            assert_eq!(<[u8; 32]>::from(sum.finalize()), <[u8; 32]>::from(Sha256::digest(want_err.as_bytes())));
        }
        assert!(got.is_empty(), "output of hosts never asked: {:?}", got.keys().collect::<Vec<_>>());
    }
}

/// `yes $PLUSH_NODE | head -c BYTES` on stdout, then one line on stderr.
fn command(bytes: u64, err_line: &str) -> Vec<String> {
    let script = format!("yes \"$PLUSH_NODE\" | head -c {bytes}; echo \"{err_line} $PLUSH_NODE\" >&2");
    vec!["sh".into(), "-c".into(), script]
}

/// Run `argv` streaming; the reader takes output at most `rate` bytes a second (None: as fast
/// as it comes). Returns the sums, the largest client RSS seen (KiB) and our own largest RSS.
fn stream(c: &mut Cluster, argv: &[String], rate: Option<u64>) -> (Sums, u64, u64, plush_mio::RunOutcome) {
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let spec = JobSpec { argv: &argv, target: None, timeout: None, stream: true, env: &[], max_output: None };
    let job = c.start_job(spec).expect("start");
    let pids = c.launched_pids();
    let mut sums = Sums::default();
    let t0 = Instant::now();
    let mut taken = 0u64;
    let mut last_rss = Instant::now();
    let (mut client_rss, mut own_rss) = (0u64, 0u64);
    let limit = Instant::now() + Duration::from_secs(240);
    let out = c
        .wait_job(
            job,
            |c, _, _| {
                let allowed = rate.is_none_or(|r| taken < (t0.elapsed().as_secs_f64() * r as f64) as u64);
                if allowed {
                    let (chunks, dropped) = c.take_streams(job);
                    assert_eq!(dropped, 0, "live output dropped at the controller");
                    taken += sums.add(chunks);
                }
                if last_rss.elapsed() >= Duration::from_millis(200) {
                    last_rss = Instant::now();
                    client_rss = client_rss.max(pids.iter().filter_map(|&p| rss_kib(p)).max().unwrap_or(0));
                    own_rss = own_rss.max(rss_kib(std::process::id()).unwrap_or(0));
                }
            },
            || Instant::now() >= limit,
        )
        .expect("wait");
    let (chunks, _) = c.take_streams(job);
    sums.add(chunks);
    (sums, client_rss, own_rss, out)
}

#[test]
fn thirty_clients_stream_five_mib_each_and_every_byte_arrives() {
    let (mut c, hosts) = join(30, 23_000);
    let bytes = 5 * MIB;
    let t0 = Instant::now();
    let (sums, client_rss, own_rss, out) = stream(&mut c, &command(bytes, "done"), None);
    let took = t0.elapsed();
    assert!(out.missing.is_empty(), "missing results: {:?}", out.missing);
    for g in &out.groups {
        assert_eq!(g.status, ExitStatus::Exited(0));
        assert!(g.output.is_empty() && g.stderr.is_empty(), "a streamed job's result carries its output again");
        assert!(!g.truncated);
    }
    let received: u64 = sums.0.values().map(|v| v.0).sum();
    // Counted at the controller: exactly the bytes handed to the reader, no second copy.
    assert_eq!(c.controller_stats().output_bytes, received);
    sums.check(&hosts, bytes, "done");
    let total = 30 * bytes;
    eprintln!(
        "30 x 5 MiB streamed in {took:?} ({:.0} MiB/s at the controller); largest client RSS {client_rss} KiB, \
         test process RSS {own_rss} KiB",
        total as f64 / MIB as f64 / took.as_secs_f64(),
    );
    assert!(client_rss <= 16 * 1024, "a client's RSS reached {client_rss} KiB");
    c.dismantle(Duration::from_secs(30)).expect("dismantle");
}

#[test]
fn a_slow_reader_slows_the_hosts_and_loses_nothing() {
    let (mut c, hosts) = join(30, 23_600);
    let bytes = 256 << 10;
    // 7.5 MiB at 1 MiB/s: the hosts write far faster, so the windows fill and their
    // processes wait in `write`.
    let (sums, client_rss, own_rss, out) = stream(&mut c, &command(bytes, "slow"), Some(MIB));
    assert!(out.missing.is_empty(), "missing results: {:?}", out.missing);
    sums.check(&hosts, bytes, "slow");
    eprintln!("slow reader: largest client RSS {client_rss} KiB, test process RSS {own_rss} KiB");
    assert!(client_rss <= 16 * 1024, "a client's RSS reached {client_rss} KiB");
    assert!(own_rss <= 64 * 1024, "the controller's process reached {own_rss} KiB");
    c.dismantle(Duration::from_secs(30)).expect("dismantle");
}

#[test]
fn thirty_identical_outputs_of_five_mib_reach_the_controller_about_once() {
    let (mut c, hosts) = join(30, 24_200);
    let bytes = 5 * MIB;
    let script = format!("yes plush | head -c {bytes}; echo same >&2");
    let out = c.run(&["sh", "-c", &script], Duration::from_secs(120)).expect("run");
    assert!(out.missing.is_empty(), "missing results: {:?}", out.missing);
    assert_eq!(out.groups.len(), 1, "identical outputs merge: {} groups", out.groups.len());
    let g = &out.groups[0];
    assert_eq!(g.nodes, hosts);
    assert_eq!(g.status, ExitStatus::Exited(0));
    assert_eq!(g.output.len() as u64, bytes);
    assert_eq!(g.output, b"plush\n".iter().copied().cycle().take(bytes as usize).collect::<Vec<u8>>());
    assert_eq!(g.stderr, b"same\n");
    let got = c.controller_stats().output_bytes;
    eprintln!(
        "30 identical 5 MiB outputs: the controller received {got} output bytes ({:.2} x 5 MiB)",
        got as f64 / bytes as f64
    );
    assert!(got * 10 < bytes * 12, "the controller received {got} bytes, 1.2 x 5 MiB is {}", bytes * 12 / 10);
    c.dismantle(Duration::from_secs(30)).expect("dismantle");
}

#[test]
fn stdout_and_stderr_stay_apart_in_every_mode() {
    let (mut c, hosts) = join(5, 24_800);
    let script = "echo out; echo err >&2; echo out2; echo err2 >&2";
    // Grouped.
    let out = c.run(&["sh", "-c", script], Duration::from_secs(20)).expect("run");
    assert_eq!(out.groups.len(), 1);
    assert_eq!(out.groups[0].output, b"out\nout2\n");
    assert_eq!(out.groups[0].stderr, b"err\nerr2\n");
    // Grouped, large: the output travels as a blob and is still split right.
    let big = "yes o | head -c 100000; yes e | head -c 50000 >&2";
    let out = c.run(&["sh", "-c", big], Duration::from_secs(20)).expect("run");
    assert_eq!(out.groups.len(), 1);
    assert_eq!(out.groups[0].output, b"o\n".repeat(50_000));
    assert_eq!(out.groups[0].stderr, b"e\n".repeat(25_000));
    // Same stdout, different stderr: different groups.
    let out = c.run(&["sh", "-c", "echo same; echo \"$PLUSH_NODE\" >&2"], Duration::from_secs(20)).expect("run");
    assert_eq!(out.groups.len(), 5, "merged by (status, stdout, stderr)");
    // Streamed.
    let argv: Vec<String> = vec!["sh".into(), "-c".into(), script.into()];
    let (sums, _, _, _) = stream(&mut c, &argv, None);
    for h in &hosts {
        let (n, _) = sums.0[&(*h, false)];
        assert_eq!(n, 9, "{h}: stdout");
        let (n, _) = sums.0[&(*h, true)];
        assert_eq!(n, 9, "{h}: stderr");
    }
    // A cap: cut and marked.
    let spec = JobSpec {
        argv: &["sh", "-c", "yes | head -c 10000"],
        target: None,
        timeout: None,
        stream: false,
        env: &[],
        max_output: Some(100),
    };
    let job = c.start_job(spec).expect("start");
    let out = c.wait_job(job, |_, _, _| {}, || false).expect("wait");
    assert_eq!(out.groups.len(), 1);
    assert!(out.groups[0].truncated);
    assert_eq!(out.groups[0].output, b"y\n".repeat(50));
    c.dismantle(Duration::from_secs(30)).expect("dismantle");
}
