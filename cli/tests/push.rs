//! `plush push --local N SRC DEST` end to end: the real binary starts N `plush client`
//! processes on loopback addresses, copies a file to every one of them through the tree, prints
//! the groups and a summary, and dismantles them.
//!
//! Every run is bounded in time (killed past its limit) and checked for leftovers: the clients of
//! a run are the processes whose command line names its key file, `plush-key-<pid>-...`; any
//! found once the run exited are killed, and the test fails. Temporary directories are removed
//! by a guard, also when a test fails.

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;
use common::plush;

const LIMIT: Duration = Duration::from_secs(90);
const RULE: &str = "---------------";

/// A fresh directory under the temporary directory, removed (with its contents) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!("plush-cli-push-{tag}-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir(&p).expect("create a temporary directory");
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// `DIR/` as a destination argument.
    fn dest(&self) -> String {
        format!("{}/", self.0.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` random bytes (from /dev/urandom).
fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut v)).expect("read /dev/urandom");
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

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

#[test]
fn a_local_push_copies_the_file_and_prints_a_summary() {
    let work = TempDir::new("ok-src");
    let out = TempDir::new("ok-dest");
    let data = random_bytes((2 << 20) + 3);
    let src = source_file(work.path(), "payload.bin", &data, 0o750);
    let r = plush(&["push", "--local", "10", s(&src), &out.dest()], LIMIT);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.code, Some(0), "stdout: {stdout}\nstderr: {}", r.stderr);
    assert_eq!(stdout, format!("{RULE}\n127.0.0.[1-10] (10)\n{RULE}\n"), "one group of successes, no output");
    let copy = out.path().join("payload.bin");
    let got = std::fs::read(&copy).expect("the copy exists");
    assert!(got == data, "the copy is identical: {} bytes, expected {}", got.len(), data.len());
    let mode = std::fs::metadata(&copy).expect("metadata").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o750, "the source's mode: {mode:o}");
    assert_eq!(listing(out.path()), ["payload.bin"], "no temporary file left");
    let summary = r.stderr.lines().find(|l| l.starts_with("plush push: ")).unwrap_or_else(|| {
        panic!("a summary line on stderr: {}", r.stderr);
    });
    assert!(summary.starts_with("plush push: 2.0 MiB to 10/10 hosts in "), "{summary}");
    assert!(summary.contains(" s; the controller sent "), "{summary}");
    eprintln!("plush push --local 10 (2 MiB): {:?}; {summary}", r.took);
}

#[test]
fn a_missing_source_is_a_usage_error_and_starts_no_client() {
    let work = TempDir::new("missing");
    let markers = work.path().join("launched");
    std::fs::create_dir(&markers).expect("mkdir");
    // Every launch this template makes leaves a file named after its host (and fails).
    let template = format!("touch {}/{{ip}}; exit 1", s(&markers));
    let missing = work.path().join("no-such-file.bin");
    let args = |src: &str| -> Vec<String> {
        ["push", "--local", "3", "--join-timeout", "1", "--launcher", "command", "--launcher-command", &template, src]
            .iter()
            .map(|a| a.to_string())
            .chain([work.dest()])
            .collect()
    };
    let run = |src: &str| {
        let a = args(src);
        plush(&a.iter().map(String::as_str).collect::<Vec<_>>(), LIMIT)
    };

    let r = run(s(&missing));
    assert_eq!(r.code, Some(2), "a usage error: {}", r.stderr);
    assert!(r.stderr.contains(s(&missing)), "the file is named: {}", r.stderr);
    assert!(r.stdout.is_empty(), "nothing on stdout: {}", String::from_utf8_lossy(&r.stdout));
    assert_eq!(listing(&markers), Vec::<String>::new(), "no client was launched; stderr: {}", r.stderr);
    eprintln!("missing SRC: exit 2 in {:?}: {}", r.took, r.stderr.trim());

    // A directory is not a file to push either.
    let r = run(s(&markers));
    assert_eq!(r.code, Some(2), "a usage error: {}", r.stderr);
    assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    assert_eq!(listing(&markers), Vec::<String>::new(), "no client was launched; stderr: {}", r.stderr);

    // The markers do show launches: with a file to push, every host is launched (and fails).
    let src = source_file(work.path(), "here.bin", b"x", 0o644);
    let r = run(s(&src));
    assert_eq!(r.code, Some(255), "hosts whose client never started are unreachable: {}", r.stderr);
    assert_eq!(listing(&markers), ["127.0.0.1", "127.0.0.2", "127.0.0.3"], "stderr: {}", r.stderr);
}

#[test]
fn json_summary_counts_controller_bytes_and_hosts() {
    let work = TempDir::new("json-src");
    let out = TempDir::new("json-dest");
    let size = 4 << 20;
    let data = random_bytes(size);
    let src = source_file(work.path(), "payload.bin", &data, 0o644);
    let r = plush(&["push", "--local", "10", "--json", s(&src), &out.dest()], LIMIT);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let stdout = String::from_utf8_lossy(&r.stdout);
    let lines: Vec<Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    assert_eq!(lines.len(), 2, "one group, one summary: {stdout}");
    let g = &lines[0];
    assert_eq!(g["count"], 10, "{g}");
    assert_eq!(g["exit"], 0, "{g}");
    assert_eq!(g["nodes"], "127.0.0.[1-10]", "{g}");
    assert_eq!(g["stdout"], "", "{g}");
    let sm = &lines[1]["summary"];
    assert_eq!(sm["hosts"], 10, "{sm}");
    assert_eq!(sm["ok"], sm["hosts"], "ok equals the host count: {sm}");
    assert_eq!(sm["failed"], 0, "{sm}");
    assert_eq!(sm["bytes"], size, "{sm}");
    assert_eq!(sm["exit"], 0, "{sm}");
    assert!(sm["push_ms"].is_u64(), "{sm}");
    let cb = sm["controller_bytes"].as_u64().unwrap_or_else(|| panic!("controller_bytes in {sm}"));
    // The controller sends each chunk once, to the root (plus frame headers).
    assert!(cb >= size as u64, "the controller sent the file at least once: {sm}");
    assert!(cb as f64 <= 1.1 * size as f64, "the controller sent the file about once, not per host: {sm}");
    assert!(std::fs::read(out.path().join("payload.bin")).expect("the copy") == data, "identical copy");
    eprintln!("plush push --local 10 --json (4 MiB): {sm}");
}

#[test]
fn an_unwritable_destination_exits_1_and_names_every_host() {
    let work = TempDir::new("bad-dest");
    let src = source_file(work.path(), "payload.bin", &random_bytes(100_000), 0o644);
    // The destination's parent is a regular file: ENOTDIR even for root.
    let plain = work.path().join("plain");
    std::fs::write(&plain, b"in the way\n").expect("write");
    let dest = format!("{}/sub/", s(&plain));
    let r = plush(&["push", "--local", "10", s(&src), &dest], LIMIT);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.code, Some(1), "a copy failed: stdout: {stdout}\nstderr: {}", r.stderr);
    for i in 1..=10 {
        let line = format!("plush: 127.0.0.{i}: exit 1");
        assert!(r.stderr.lines().any(|l| l == line), "{line:?} on stderr: {}", r.stderr);
    }
    let err = format!("plush: {dest}payload.bin: Not a directory");
    assert_eq!(stdout, format!("{RULE}\n127.0.0.[1-10] (10) exit 1\n{RULE}\n{err}\n"), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("to 0/10 hosts"), "{}", r.stderr);
    assert_eq!(std::fs::read(&plain).expect("read"), b"in the way\n", "the file in the way is untouched");
    assert_eq!(listing(work.path()), ["payload.bin", "plain"], "nothing else was created");
}
