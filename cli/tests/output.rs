//! `plush run` output as a user sees it (issue 25): stdout and stderr apart in every mode, no
//! silent limit, `--max-output` said beside the group, `--outdir` and `--errdir`.
//!
//! Every run is bounded in time and checked for leftover clients (see `common`).

use serde_json::Value;
use std::time::Duration;

mod common;
use common::plush;

const LIMIT: Duration = Duration::from_secs(90);
const RULE: &str = "---------------";
const SCRIPT: &str = "echo out; echo err >&2";

#[test]
fn grouped_output_prints_stdout_on_stdout_and_stderr_on_stderr() {
    let r = plush(&["run", "--local", "4", "--", "sh", "-c", SCRIPT], LIMIT);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let group = format!("{RULE}\n127.0.0.[1-4] (4)\n{RULE}\n");
    assert_eq!(String::from_utf8_lossy(&r.stdout), format!("{group}out\n"));
    assert_eq!(r.stderr, format!("{group}err\n"));
}

#[test]
fn streamed_lines_go_to_the_matching_fd() {
    let r = plush(&["run", "--local", "4", "--stream", "--", "sh", "-c", SCRIPT], LIMIT);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let mut out: Vec<&str> = std::str::from_utf8(&r.stdout).expect("utf-8").lines().collect();
    let mut err: Vec<&str> = r.stderr.lines().collect();
    out.sort_unstable();
    err.sort_unstable();
    let hosts = (1..=4).map(|i| format!("127.0.0.{i}"));
    assert_eq!(out, hosts.clone().map(|h| format!("{h}: out")).collect::<Vec<_>>());
    assert_eq!(err, hosts.map(|h| format!("{h}: err")).collect::<Vec<_>>());
}

#[test]
fn json_has_stdout_and_stderr() {
    let r = plush(&["run", "--local", "3", "--json", "--", "sh", "-c", SCRIPT], LIMIT);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&r.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["stdout"], "out\n");
    assert_eq!(lines[0]["stderr"], "err\n");
    assert_eq!(lines[0]["truncated"], false);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
}

#[test]
fn every_line_streams_and_a_cap_is_said_beside_the_group() {
    // The run, at 10 hosts: each prints 10,000 lines of 100 bytes, and all arrive.
    let big = "head -c 1000000 /dev/zero | tr '\\0' a | fold -w 100";
    let r = plush(&["run", "--local", "10", "--stream", "--", "sh", "-c", big], LIMIT);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let text = String::from_utf8_lossy(&r.stdout);
    for i in 1..=10 {
        let prefix = format!("127.0.0.{i}: ");
        let n = text.lines().filter(|l| l.starts_with(&prefix) && l.len() == prefix.len() + 100).count();
        assert_eq!(n, 10_000, "host {i}");
    }
    // Grouped, whole: 1,000,000 bytes and 10,000 lines.
    let r = plush(&["run", "--local", "3", "--", "sh", "-c", big], LIMIT);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout.len(), format!("{RULE}\n127.0.0.[1-3] (3)\n{RULE}\n").len() + 1_010_000);
    // Capped: said beside the group.
    let r = plush(&["run", "--local", "3", "--max-output", "1K", "--", "sh", "-c", big], LIMIT);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.starts_with(&format!("{RULE}\n127.0.0.[1-3] (3) [output cut at 1 KiB]\n{RULE}\n")), "{text}");
    let r = plush(&["run", "--local", "3", "--json", "--max-output", "1K", "--", "sh", "-c", big], LIMIT);
    let first: Value =
        serde_json::from_str(String::from_utf8_lossy(&r.stdout).lines().next().unwrap_or("")).expect("JSON");
    assert_eq!(first["truncated"], true);
    assert_eq!(first["stdout"].as_str().map(str::len), Some(1024));
}

#[test]
fn outdir_and_errdir_hold_a_file_per_host() {
    let dir = std::env::temp_dir().join(format!("plush-outdir-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (out, err) = (dir.join("out"), dir.join("err"));
    for stream in [false, true] {
        let mut args = vec!["run", "--local", "3"];
        if stream {
            args.push("--stream");
        }
        let (o, e) = (out.to_string_lossy().into_owned(), err.to_string_lossy().into_owned());
        args.extend(["--outdir", &o, "--errdir", &e, "--", "sh", "-c", "echo \"out $PLUSH_NODE\"; echo err >&2"]);
        let r = plush(&args, LIMIT);
        assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
        for i in 1..=3 {
            let host = format!("127.0.0.{i}");
            let o = std::fs::read_to_string(out.join(&host)).expect("stdout file");
            assert!(o.starts_with("out 127.0.0.") && o.ends_with('\n') && o.lines().count() == 1, "{o:?}");
            assert_eq!(std::fs::read_to_string(err.join(&host)).expect("stderr file"), "err\n");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Resident memory of a process in KiB, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_reader_at_one_mib_per_second_loses_nothing_and_memory_stays_bounded() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let (hosts, bytes) = (10u32, 512u64 << 10);
    // Lines of 64 bytes: the host's address padded to 63.
    let script = format!("yes \"$(printf '%-63s' \"$PLUSH_NODE\")\" | head -c {bytes}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_plush"))
        .args(["run", "--local", &hosts.to_string(), "--stream", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the plush binary starts");
    let pid = child.id();
    let marker = format!("plush-key-{pid}-");
    let err = common::reader(child.stderr.take().expect("stderr"));
    let mut stdout = child.stdout.take().expect("stdout");
    // Read at 1 MiB/s, sampling memory as we go: plush's own, and its clients'.
    let t0 = Instant::now();
    let (mut got, mut buf) = (Vec::new(), vec![0u8; 16 << 10]);
    let (mut ctl_rss, mut client_rss) = (0u64, 0u64);
    loop {
        let n = stdout.read(&mut buf).expect("read plush's stdout");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        ctl_rss = ctl_rss.max(rss_kib(pid).unwrap_or(0));
        for c in common::processes_with(&marker) {
            client_rss = client_rss.max(rss_kib(c).unwrap_or(0));
        }
        let due = Duration::from_secs_f64(got.len() as f64 / f64::from(1 << 20));
        std::thread::sleep(due.saturating_sub(t0.elapsed()));
        assert!(t0.elapsed() < LIMIT, "still reading after {LIMIT:?}");
    }
    let status = child.wait().expect("reap plush");
    let left = common::processes_with(&marker);
    for p in &left {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    let stderr = String::from_utf8_lossy(&err.join().expect("stderr reader")).into_owned();
    assert!(left.is_empty(), "clients left: {left:?}");
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    let text = String::from_utf8_lossy(&got);
    let mut per: std::collections::BTreeMap<&str, u64> = Default::default();
    for line in text.lines() {
        let (host, payload) = line.split_once(": ").expect("host: line");
        assert_eq!(payload.len(), 63, "{line:?}");
        assert_eq!(payload.split(':').next(), Some(host), "{line:?}");
        *per.entry(host).or_default() += 1;
    }
    assert_eq!(per.len(), hosts as usize, "hosts that printed");
    assert!(per.values().all(|&n| n == bytes / 64), "lines per host: {per:?}");
    eprintln!(
        "1 MiB/s reader: {} bytes in {:?}; plush RSS {ctl_rss} KiB, client RSS {client_rss} KiB",
        got.len(),
        t0.elapsed()
    );
    assert!(ctl_rss <= 64 << 10, "the controller reached {ctl_rss} KiB");
    assert!(client_rss <= 16 << 10, "a client reached {client_rss} KiB");
}

#[test]
fn a_reader_that_pauses_longer_than_a_link_timeout_loses_nothing() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let (hosts, bytes) = (5u32, 1u64 << 20);
    let script = format!("yes \"$(printf '%-63s' \"$PLUSH_NODE\")\" | head -c {bytes}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_plush"))
        .args(["run", "--local", &hosts.to_string(), "--stream", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the plush binary starts");
    let marker = format!("plush-key-{}-", child.id());
    let err = common::reader(child.stderr.take().expect("stderr"));
    let mut stdout = child.stdout.take().expect("stdout");
    // The first bytes, then nothing read for 5 s: longer than a link's 3 s of silence, had the
    // controller's event loop waited in `write`.
    let mut got = vec![0u8; 4096];
    stdout.read_exact(&mut got).expect("first bytes");
    std::thread::sleep(Duration::from_secs(5));
    stdout.read_to_end(&mut got).expect("the rest");
    let status = child.wait().expect("reap plush");
    let left = common::processes_with(&marker);
    for p in &left {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    let stderr = String::from_utf8_lossy(&err.join().expect("stderr reader")).into_owned();
    assert!(left.is_empty(), "clients left: {left:?}");
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let lines = String::from_utf8_lossy(&got).lines().filter(|l| l.len() == 63 + ": 127.0.0.1".len()).count();
    assert_eq!(lines as u64, u64::from(hosts) * bytes / 64, "every line arrived");
}

/// Each of 8 hosts prints 200,000 bytes on stdout, the same as two or three others (by its
/// address's last number mod 3), and 150,000 bytes of its own on stderr: every output is a
/// distinct blob far above the 64 KiB memory bound the test sets, so all of them wait for
/// printing in the spill file.
const SPILLED: &str = "a=${PLUSH_NODE%%:*}; n=${a##*.}; yes \"stdout of group $((n % 3))\" | head -c 200000; \
                       yes \"stderr of $a\" | head -c 150000 >&2";

fn spilled_stdout(n: u32) -> Vec<u8> {
    format!("stdout of group {}\n", n % 3).bytes().cycle().take(200_000).collect()
}

fn spilled_stderr(n: u32) -> Vec<u8> {
    format!("stderr of 127.0.0.{n}\n").bytes().cycle().take(150_000).collect()
}

/// The groups of a grouped print: (header, body without the newline added after it).
fn print_groups_of(text: &[u8]) -> Vec<(String, Vec<u8>)> {
    let rule = format!("{RULE}\n");
    let mut groups = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        assert!(rest.starts_with(rule.as_bytes()), "a group starts with a rule");
        rest = &rest[rule.len()..];
        let k = rest.iter().position(|&b| b == b'\n').expect("a header line");
        let header = String::from_utf8_lossy(&rest[..k]).into_owned();
        rest = &rest[k + 1..];
        assert!(rest.starts_with(rule.as_bytes()), "the header is followed by a rule");
        rest = &rest[rule.len()..];
        // The body runs to the next rule at the start of a line (the bodies hold none).
        let end = rest.windows(rule.len() + 1).position(|w| w[0] == b'\n' && &w[1..] == rule.as_bytes());
        let (body, next) = match end {
            Some(e) => (&rest[..=e], &rest[e + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        groups.push((header, body.to_vec()));
        rest = next;
    }
    groups
}

/// The body as printed: a newline is added after one that does not end with one.
fn printed(mut body: Vec<u8>) -> Vec<u8> {
    if !body.ends_with(b"\n") {
        body.push(b'\n');
    }
    body
}

#[test]
fn grouped_outputs_above_the_memory_bound_are_printed_whole_from_the_spill_file() {
    let dir = std::env::temp_dir().join(format!("plush-spill-test-{}", std::process::id()));
    let (outdir, errdir) = (dir.join("out"), dir.join("err"));
    let env = [("PLUSH_SPILL_MEMORY", "64K")];
    let (o, e) = (outdir.to_string_lossy().into_owned(), errdir.to_string_lossy().into_owned());
    let args = ["run", "--local", "8", "--outdir", &o, "--errdir", &e, "--", "sh", "-c", SPILLED];
    let r = common::plush_env(&args, None, &env, LIMIT);
    assert_eq!(r.code, Some(0), "stderr: {}", &r.stderr[..r.stderr.len().min(2000)]);
    // stdout: three groups, regrouped by stdout alone (each host's whole output is distinct).
    let want_out = vec![
        ("127.0.0.[1,4,7] (3)".to_string(), printed(spilled_stdout(1))),
        ("127.0.0.[2,5,8] (3)".to_string(), printed(spilled_stdout(2))),
        ("127.0.0.[3,6] (2)".to_string(), printed(spilled_stdout(3))),
    ];
    let got_out = print_groups_of(&r.stdout);
    let sizes = |g: &[(String, Vec<u8>)]| g.iter().map(|(h, b)| (h.clone(), b.len())).collect::<Vec<_>>();
    assert_eq!(sizes(&got_out), sizes(&want_out));
    assert!(got_out == want_out, "stdout groups differ in content");
    // stderr: one group per host, every byte.
    let want_err: Vec<(String, Vec<u8>)> =
        (1..=8).map(|n| (format!("127.0.0.{n} (1)"), printed(spilled_stderr(n)))).collect();
    let got_err = print_groups_of(r.stderr.as_bytes());
    assert_eq!(sizes(&got_err), sizes(&want_err));
    assert!(got_err == want_err, "stderr groups differ in content");
    // The host files, written from the spill file as each result arrived.
    for n in 1..=8 {
        let out = std::fs::read(outdir.join(format!("127.0.0.{n}"))).expect("stdout file");
        let err = std::fs::read(errdir.join(format!("127.0.0.{n}"))).expect("stderr file");
        assert!(out == spilled_stdout(n) && err == spilled_stderr(n), "host {n}'s files differ");
    }
    let _ = std::fs::remove_dir_all(&dir);

    // JSON: every group whole, and the summary says the outputs went through the spill file.
    let args = ["run", "--local", "8", "--json", "--", "sh", "-c", SPILLED];
    let r = common::plush_env(&args, None, &env, LIMIT);
    assert_eq!(r.code, Some(0), "stderr: {}", &r.stderr[..r.stderr.len().min(2000)]);
    let lines: Vec<Value> =
        String::from_utf8_lossy(&r.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(lines.len(), 9, "8 groups and the summary");
    for g in &lines[..8] {
        let node = g["nodes"].as_str().expect("nodes");
        let n: u32 = node.rsplit('.').next().and_then(|x| x.parse().ok()).expect("one host per group");
        assert!(g["stdout"].as_str().is_some_and(|s| s.as_bytes() == spilled_stdout(n)), "{node}: stdout differs");
        assert!(g["stderr"].as_str().is_some_and(|s| s.as_bytes() == spilled_stderr(n)), "{node}: stderr differs");
    }
    let spilled = lines[8]["summary"]["spilled_bytes"].as_u64().expect("spilled_bytes");
    assert!(spilled >= 8 * 350_000, "every output went to the spill file: {spilled} bytes");
}
