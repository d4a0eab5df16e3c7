//! `Cluster::start_push` end to end on loopback: real client processes, real sockets, real files.
//!
//! The clients are started by the local launcher through a small `sh` wrapper that gives each
//! one a working directory of its own (`BASE/<its address>/`, with an empty `inbox/`), so that a
//! relative destination is a different file on every host and each host's copy can be checked
//! on its own; absolute destinations are one file that every host writes (all on this machine).
//!
//! Every process a test starts is killed and reaped even when the test fails (the `Cluster`
//! kills its launched clients on drop; it is dropped before the directories are removed), every
//! wait is bounded, and the temporary directories (and the tmpfs mount) are removed by guards.

mod common;

use common::{client_bin, free_port};
use plush_core::wire::ExitStatus;
use plush_core::{HostState, NodeId};
use plush_mio::{process_exists, Cluster, ClusterConfig, PushJob, RunOutcome};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Longest a push may take here (the job's own timeout; the wait ends a few seconds later).
const PUSH_LIMIT: Duration = Duration::from_secs(180);
const JOIN_LIMIT: Duration = Duration::from_secs(60);
const CHUNK: u32 = 128 << 10;

/// A fresh directory under the temporary directory, removed (with its contents) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "plush-push-test-{tag}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir(&p).expect("create a temporary directory");
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tmpfs mounted at a directory, unmounted on drop (lazily if it is still busy).
struct Mount(PathBuf);

impl Mount {
    /// Mount a tmpfs of `size` (as `mount -o size=` reads it) at `dir`, or say why not.
    fn tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Mount(dir.to_path_buf()))
        } else {
            Err(format!("mount failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// `n` random bytes.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::fill(&mut v[..]);
    v
}

/// Write `data` to `dir/name` with `mode`; returns the path.
fn source_file(dir: &Path, name: &str, data: &[u8], mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write the source file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod the source file");
    p
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Temporary files of a push (`.NAME.plush-JOB-PID.tmp`) in `dir`.
fn temp_files(dir: &Path) -> Vec<String> {
    listing(dir).into_iter().filter(|n| n.contains(".plush-") && n.ends_with(".tmp")).collect()
}

/// Check that `path` holds exactly `data` with permission bits `mode`.
fn assert_copy(path: &Path, data: &[u8], mode: u32) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        got == data,
        "{}: {} bytes, expected {} identical bytes (first difference at {:?})",
        path.display(),
        got.len(),
        data.len(),
        got.iter().zip(data).position(|(a, b)| a != b)
    );
    let m = std::fs::metadata(path).expect("metadata").permissions().mode() & 0o7777;
    assert_eq!(m, mode, "{}: mode {m:o}, expected {mode:o}", path.display());
}

fn groups_text(out: &RunOutcome) -> String {
    out.groups
        .iter()
        .map(|g| {
            format!(
                "{:?} x{} [{:?}..] {:?}",
                g.status,
                g.nodes.len(),
                g.nodes.first(),
                String::from_utf8_lossy(&g.output)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn states(c: &Cluster) -> String {
    c.hosts().map(|(id, h)| format!("{id}: {:?} {:?}", h.state, h.why)).collect::<Vec<_>>().join(", ")
}

/// A controller whose clients (`n`, on 127.0.0.1.. at a free port from `port_from`) each run
/// in `base/<address>/` (created, with an empty `inbox/`), with at most `degree` children.
/// Returns once every host joined (the test fails otherwise).
fn start_cluster(n: u32, port_from: u16, base: &Path, degree: usize) -> (Cluster, Vec<NodeId>) {
    let _ = plush_mio::raise_fd_limit();
    let port = free_port(n, port_from);
    let hosts: Vec<NodeId> = (0..n).map(|i| NodeId::loopback(i, port)).collect();
    // sh -c SCRIPT sh BASE CLIENT DEGREE --listen ADDR --key-file FILE
    let script = r#"b=$1 c=$2 m=$3; shift 3; d="$b/$2"; mkdir -p "$d/inbox" && cd "$d" && exec "$c" client --max-children "$m" "$@""#;
    let mut cfg = ClusterConfig {
        client_program: PathBuf::from("/bin/sh"),
        client_args: vec![
            "-c".into(),
            script.into(),
            "plush-push-test-client".into(),
            base.as_os_str().to_owned(),
            client_bin().into_os_string(),
            degree.to_string().into(),
        ],
        ..ClusterConfig::default()
    };
    cfg.core.max_children = degree;
    let t0 = Instant::now();
    let mut c = Cluster::start(cfg).expect("start the controller");
    c.add_hosts(&hosts);
    let all = c.wait_until(JOIN_LIMIT, |c| c.count(HostState::Joined) == n as usize).expect("event loop");
    assert!(all, "not all {n} hosts joined: {}", states(&c));
    eprintln!("{n} clients (degree {degree}) joined in {:?}", t0.elapsed());
    (c, hosts)
}

fn host_dir(base: &Path, h: &NodeId) -> PathBuf {
    base.join(h.to_string())
}

fn push_job<'a>(src: &'a Path, dest: &'a str) -> PushJob<'a> {
    PushJob {
        src,
        dest,
        target: None,
        timeout: Some(PUSH_LIMIT),
        chunk: CHUNK,
        mode: None,
        upgrade: false,
        digest: None,
    }
}

/// Push and wait for every host's result (bounded by the job's timeout and a deadline).
fn push_and_wait(c: &mut Cluster, push: PushJob<'_>) -> RunOutcome {
    let job = c.start_push(push).expect("start the push");
    let end = Instant::now() + PUSH_LIMIT + Duration::from_secs(30);
    c.wait_job(job, |_, _, _| {}, || Instant::now() >= end).expect("event loop")
}

/// Every host in `hosts` succeeded (exit 0, no output), in one group, and no other result came.
fn assert_all_ok(out: &RunOutcome, hosts: &[NodeId]) {
    assert!(out.missing.is_empty(), "hosts without a result: {:?}; groups: {}", out.missing, groups_text(out));
    assert_eq!(out.groups.len(), 1, "one group, all successes: {}", groups_text(out));
    let g = &out.groups[0];
    assert_eq!(g.status, ExitStatus::Exited(0), "{}", groups_text(out));
    assert!(g.output.is_empty(), "a success has no output: {}", groups_text(out));
    assert_eq!(g.nodes, hosts, "every host exactly once");
}

/// Every host in `hosts` failed (exit 1) in a group whose output contains `what` and `dest`;
/// no host succeeded; every host answered once.
fn assert_all_failed(out: &RunOutcome, hosts: &[NodeId], what: &str, dest: &str) {
    assert!(out.missing.is_empty(), "hosts without a result: {:?}; groups: {}", out.missing, groups_text(out));
    let mut seen: Vec<NodeId> = Vec::new();
    for g in &out.groups {
        let text = String::from_utf8_lossy(&g.output);
        assert_eq!(g.status, ExitStatus::Exited(1), "every host fails: {}", groups_text(out));
        assert!(text.contains(what), "the error {what:?} is named: {}", groups_text(out));
        assert!(text.contains(dest), "the destination {dest:?} is named: {}", groups_text(out));
        assert!(text.starts_with("plush: "), "plush: DEST: error: {}", groups_text(out));
        seen.extend_from_slice(&g.nodes);
    }
    seen.sort_unstable();
    assert_eq!(seen, hosts, "every host named once in a failure group: {}", groups_text(out));
}

fn finish(mut c: Cluster) {
    let t0 = Instant::now();
    let pids = c.launched_pids();
    let d = c.dismantle(Duration::from_secs(30)).expect("dismantle");
    eprintln!("dismantled: {d:?} ({:?}); controller {:?}", t0.elapsed(), c.driver_stats());
    drop(c);
    for pid in pids {
        assert!(!process_exists(pid), "client {pid} still exists");
    }
}

#[test]
fn a_pushed_file_arrives_intact_on_every_host() {
    let base = TempDir::new("intact-hosts");
    let srcdir = TempDir::new("intact-src");
    let out_dir = TempDir::new("intact-out");
    // Not a whole number of chunks, and a mode the temporary file (0600) does not have.
    let data = random_bytes(3 * (1 << 20) + 12_345);
    let mode = 0o754;
    let src = source_file(srcdir.path(), "payload.bin", &data, mode);
    let (mut c, hosts) = start_cluster(20, 30_000, base.path(), 4);

    // Relative: each host's own `inbox/`, a directory named with a trailing `/`.
    let out = push_and_wait(&mut c, push_job(&src, "inbox/"));
    eprintln!("relative push: {} in {:?}", groups_text(&out), out.elapsed);
    assert_all_ok(&out, &hosts);
    for h in &hosts {
        let inbox = host_dir(base.path(), h).join("inbox");
        assert_copy(&inbox.join("payload.bin"), &data, mode);
        assert_eq!(listing(&inbox), ["payload.bin"], "{h}: only the file, no temporary file left");
    }

    // Absolute: a fresh directory with a trailing `/` (one file here, written by every host).
    let dest = format!("{}/", out_dir.path().display());
    let out = push_and_wait(&mut c, push_job(&src, &dest));
    eprintln!("absolute push: {} in {:?}", groups_text(&out), out.elapsed);
    assert_all_ok(&out, &hosts);
    assert_copy(&out_dir.path().join("payload.bin"), &data, mode);
    assert_eq!(listing(out_dir.path()), ["payload.bin"], "only the file, no temporary file left");
    let sent = c.driver_stats().chunk_bytes_sent;
    assert!(sent >= 2 * data.len() as u64, "the controller sent each file at least once: {sent} bytes");
    finish(c);
}

#[test]
fn a_digest_mismatch_is_reported_and_installs_nothing() {
    let base = TempDir::new("digest-hosts");
    let srcdir = TempDir::new("digest-src");
    let out_dir = TempDir::new("digest-out");
    let data = random_bytes(1 << 20);
    let src = source_file(srcdir.path(), "payload.bin", &data, 0o644);
    let mut wrong: [u8; 32] = Sha256::digest(&data).into();
    wrong[0] ^= 0x5a;
    let (mut c, hosts) = start_cluster(20, 30_500, base.path(), 4);

    let dest = format!("{}/", out_dir.path().display());
    let out = push_and_wait(&mut c, PushJob { digest: Some(wrong), ..push_job(&src, &dest) });
    eprintln!("wrong digest: {} in {:?}", groups_text(&out), out.elapsed);
    assert_all_failed(&out, &hosts, "digest mismatch", &out_dir.path().join("payload.bin").to_string_lossy());
    assert_eq!(listing(out_dir.path()), Vec::<String>::new(), "nothing installed, no temporary file left");
    // The same in each host's own directory.
    let out = push_and_wait(&mut c, PushJob { digest: Some(wrong), ..push_job(&src, "inbox/") });
    assert_all_failed(&out, &hosts, "digest mismatch", "inbox/payload.bin");
    for h in &hosts {
        let inbox = host_dir(base.path(), h).join("inbox");
        assert_eq!(listing(&inbox), Vec::<String>::new(), "{h}: nothing installed, no temporary file left");
    }
    finish(c);
}

#[test]
fn an_unwritable_destination_is_reported_by_host() {
    let base = TempDir::new("enotdir-hosts");
    let work = TempDir::new("enotdir-work");
    let data = random_bytes((1 << 20) + 7);
    let src = source_file(work.path(), "payload.bin", &data, 0o640);
    // The destination's parent is a regular file: ENOTDIR even for root.
    let plain = work.path().join("plain");
    std::fs::write(&plain, b"a regular file\n").expect("write");
    let (mut c, hosts) = start_cluster(20, 31_000, base.path(), 4);

    let bad = format!("{}/sub/", plain.display());
    let out = push_and_wait(&mut c, push_job(&src, &bad));
    eprintln!("ENOTDIR: {} in {:?}", groups_text(&out), out.elapsed);
    assert_all_failed(&out, &hosts, "Not a directory", &format!("{bad}payload.bin"));
    assert_eq!(std::fs::read(&plain).expect("read"), b"a regular file\n", "the file in the way is untouched");

    // The cluster is unharmed: the next push, to a good destination, reaches every host.
    let good = work.path().join("good");
    std::fs::create_dir(&good).expect("mkdir");
    let out = push_and_wait(&mut c, push_job(&src, &format!("{}/", good.display())));
    eprintln!("then: {} in {:?}", groups_text(&out), out.elapsed);
    assert_all_ok(&out, &hosts);
    assert_copy(&good.join("payload.bin"), &data, 0o640);
    assert_eq!(listing(&good), ["payload.bin"]);
    finish(c);
}

#[test]
fn a_full_disk_is_reported_by_host() {
    let base = TempDir::new("full-hosts");
    let work = TempDir::new("full-work");
    let mnt = TempDir::new("full-mnt");
    // Declared after the directory: unmounted before it is removed, whatever happens.
    let mount = match Mount::tmpfs(mnt.path(), "1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_is_reported_by_host: cannot mount a tmpfs: {why}");
            return;
        }
    };
    let data = random_bytes(4 << 20);
    let src = source_file(work.path(), "big.bin", &data, 0o644);
    let (mut c, hosts) = start_cluster(20, 31_500, base.path(), 4);

    let dest = format!("{}/", mnt.path().display());
    let out = push_and_wait(&mut c, push_job(&src, &dest));
    eprintln!("full disk: {} in {:?}", groups_text(&out), out.elapsed);
    assert_all_failed(&out, &hosts, "No space left on device", &mnt.path().join("big.bin").to_string_lossy());
    assert_eq!(listing(mnt.path()), Vec::<String>::new(), "no file and no temporary file left");
    finish(c);
    drop(mount);
}

#[test]
fn killing_the_root_mid_push_still_delivers_to_every_other_host() {
    let base = TempDir::new("killroot-hosts");
    let srcdir = TempDir::new("killroot-src");
    let size = 64 << 20;
    let data = random_bytes(size);
    let src = source_file(srcdir.path(), "big.bin", &data, 0o600);
    // Degree 2: a deep tree, so that the root's death cuts off a large subtree.
    let (mut c, hosts) = start_cluster(20, 32_000, base.path(), 2);
    let root = c.root().expect("a root");
    let clients = c.launched_clients();
    let (_, root_pid) = *clients.iter().find(|(h, _)| *h == root).expect("the root is a launched client");

    let sent0 = c.driver_stats().chunk_bytes_sent;
    // Smaller chunks: more of them in flight, a finer point to kill at.
    let job = c.start_push(PushJob { chunk: 64 << 10, ..push_job(&src, "inbox/") }).expect("start the push");
    let quarter = size as u64 / 4;
    let reached =
        c.wait_until(PUSH_LIMIT, |c| c.driver_stats().chunk_bytes_sent - sent0 >= quarter).expect("event loop");
    let sent_at_kill = c.driver_stats().chunk_bytes_sent - sent0;
    let before = c.job_outcome(job);
    assert!(reached, "the controller did not send a quarter of the file in {PUSH_LIMIT:?}: {sent_at_kill} bytes");
    assert!(
        sent_at_kill < size as u64 && before.result_count() == 0,
        "the transfer was over before the root could be killed ({sent_at_kill} of {size} bytes sent, results: {}): \
         use a bigger file",
        groups_text(&before)
    );
    let killed = Command::new("kill").args(["-9", &root_pid.to_string()]).status().expect("kill");
    assert!(killed.success(), "kill -9 {root_pid}");
    let t_kill = Instant::now();

    let end = Instant::now() + PUSH_LIMIT + Duration::from_secs(30);
    let out = c.wait_job(job, |_, _, _| {}, || Instant::now() >= end).expect("event loop");
    eprintln!(
        "root {root} (pid {root_pid}) killed at {sent_at_kill} of {size} bytes sent; new root {:?}; \
         results {:?} after the kill: {}; missing {:?}; controller {:?}",
        c.root(),
        t_kill.elapsed(),
        groups_text(&out),
        out.missing,
        c.driver_stats()
    );
    let others: Vec<NodeId> = hosts.iter().copied().filter(|h| *h != root).collect();
    let ok: Vec<NodeId> = out
        .groups
        .iter()
        .filter(|g| g.status == ExitStatus::Exited(0) && g.output.is_empty())
        .flat_map(|g| g.nodes.iter().copied())
        .collect();
    let not_ok: Vec<&NodeId> = others.iter().filter(|h| !ok.contains(h)).collect();
    assert!(not_ok.is_empty(), "hosts other than the killed root without success: {not_ok:?}; {}", groups_text(&out));
    for g in &out.groups {
        if g.status != ExitStatus::Exited(0) {
            assert_eq!(g.nodes, [root], "only the killed root may have failed: {}", groups_text(&out));
        }
    }
    // Dismantled first: reading 19 copies of 64 MiB takes a while on a loaded machine, and the
    // cluster's event loop does not run meanwhile.
    finish(c);
    for h in &others {
        let inbox = host_dir(base.path(), h).join("inbox");
        assert_copy(&inbox.join("big.bin"), &data, 0o600);
        assert_eq!(temp_files(&inbox), Vec::<String>::new(), "{h}: no temporary file left");
    }
}
