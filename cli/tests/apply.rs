//! `plush apply` end to end: an application file with a partial barrier runs its phases in
//! order on local clients; a failing phase aborts what follows; restarts retry a failing
//! process on its host; a malformed file is refused with its line; files are copied to the
//! hosts before the first phase, and a copy that fails aborts.

use serde_json::Value;
use std::time::Duration;

mod common;
use common::plush;

const LIMIT: Duration = Duration::from_secs(120);

fn write_app(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("plush-apply-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let path = dir.join("app.toml");
    std::fs::write(&path, text).expect("write the app file");
    path
}

fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn a_partial_barrier_lets_the_next_phase_start_without_the_straggler() {
    // Host 127.0.0.5 takes 4 s in phase one; the barrier after it releases at 80% after 1 s,
    // so phase two starts (on every host) long before the straggler is done. Each host writes
    // the time it ran phase two, and the straggler the time it ended phase one.
    let marks = std::env::temp_dir().join(format!("plush-apply-times-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&marks);
    std::fs::create_dir_all(&marks).unwrap();
    let text = format!(
        r#"
[hosts]
local = 5

[[phase]]
name = "one"
run = ["sh", "-c", "case $PLUSH_NODE in 127.0.0.5:*) sleep 4; date +%s.%N > {m}/straggler;; esac; echo one"]
barrier = {{ threshold = 0.8, timeout = 1 }}

[[phase]]
name = "two"
run = ["sh", "-c", "date +%s.%N > {m}/two-$PLUSH_NODE; echo two"]
"#,
        m = marks.display()
    );
    let app = write_app("partial", &text);
    let r = plush(&["apply", app.to_str().unwrap(), "--json"], LIMIT);
    let read = |name: &str| -> f64 {
        std::fs::read_to_string(marks.join(name)).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(f64::NAN)
    };
    let straggler_done = read("straggler");
    // Phase two's marks are named by the node's address (`two-127.0.0.1:PORT`).
    let names: Vec<String> = std::fs::read_dir(&marks)
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    let twos: Vec<(String, f64)> = (1..=4)
        .map(|i| format!("two-127.0.0.{i}:"))
        .map(|p| names.iter().find(|n| n.starts_with(&p)).cloned().unwrap_or(p))
        .map(|n| (n.clone(), read(&n)))
        .collect();
    let _ = std::fs::remove_dir_all(&marks);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let docs = json_lines(&r.stdout);
    let barrier = docs.iter().find(|d| d.get("barrier").is_some()).expect("a barrier line");
    assert_eq!(barrier["released"], true, "{barrier}");
    assert_eq!(barrier["partial"], true, "{barrier}");
    assert_eq!(barrier["entered"], 4, "{barrier}");
    assert_eq!(barrier["expected"], 5, "{barrier}");
    for (host, t) in &twos {
        assert!(
            *t < straggler_done,
            "{host} ran phase two at {t}, not before the straggler ended phase one at {straggler_done}"
        );
    }
    // Both phases have every host's result: the straggler's phase one was waited for.
    let groups = |phase: &str| -> Vec<&Value> {
        docs.iter().filter(|d| d["phase"] == phase && d.get("nodes").is_some()).collect()
    };
    let one = groups("one");
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["count"], 5);
    assert_eq!(one[0]["stdout"], "one\n");
    let two = groups("two");
    assert_eq!(two.len(), 1, "{two:?}");
    assert_eq!(two[0]["count"], 5);
    let summary = &docs.last().expect("a summary")["summary"];
    assert_eq!(summary["phases_run"], 2, "{summary}");
    assert_eq!(summary["ok"], 10, "{summary}");
    assert_eq!(summary["exit"], 0);
}

#[test]
fn a_failing_phase_aborts_the_rest_and_restarts_retry_on_the_host() {
    // Phase one fails on one host the first time only (a marker file per run), and restarts
    // once: everyone succeeds. Phase two fails on 127.0.0.2 and aborts: phase three never runs.
    let dir = std::env::temp_dir().join(format!("plush-apply-marks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        r#"
[hosts]
local = 3

[[phase]]
name = "flaky"
run = ["sh", "-c", "m={dir}/$PLUSH_NODE; if [ ! -e $m ]; then touch $m; exit 7; fi; echo fine"]
on_failure = "restart"
restarts = 1

[[phase]]
name = "breaks"
run = ["sh", "-c", "case $PLUSH_NODE in 127.0.0.2:*) exit 5;; esac"]

[[phase]]
name = "never"
run = "echo never"
"#,
        dir = dir.display()
    );
    let app = write_app("abort", &text);
    let r = plush(&["apply", app.to_str().unwrap(), "--json"], LIMIT);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(r.code, Some(5), "stderr: {}", r.stderr);
    let docs = json_lines(&r.stdout);
    let flaky: Vec<&Value> = docs.iter().filter(|d| d["phase"] == "flaky" && d.get("nodes").is_some()).collect();
    assert_eq!(flaky.len(), 1, "{flaky:?}");
    assert_eq!(flaky[0]["count"], 3);
    assert_eq!(flaky[0]["exit"], 0);
    assert!(flaky[0]["stderr"].as_str().unwrap().contains("plush: restart 1 of 1 after exit 7"), "{}", flaky[0]);
    assert!(docs.iter().all(|d| d["phase"] != "never"), "phase three ran: {docs:?}");
    assert!(r.stderr.contains("127.0.0.2: phase breaks: exit 5"), "{}", r.stderr);
    let summary = &docs.last().unwrap()["summary"];
    assert_eq!(summary["aborted"], "breaks", "{summary}");
    assert_eq!(summary["phases_run"], 2, "{summary}");
}

#[test]
fn a_malformed_application_file_names_its_line_and_field() {
    let app = write_app(
        "bad",
        "[hosts]\nlocal = 3\n\n[[phase]]\nname = \"x\"\nrun = \"true\"\nbarrier = { threshold = 2 }\n",
    );
    let r = plush(&["apply", app.to_str().unwrap()], LIMIT);
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("line 7: phase[1].barrier.threshold: a fraction from 0 to 1"), "{}", r.stderr);
    let app = write_app("syntax", "[hosts]\nlocal = 3\n[[phase]]\nname = \"x\"\nrun = \"true\"\nfrobs = 1\n");
    let r = plush(&["apply", app.to_str().unwrap()], LIMIT);
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("line 6:") && r.stderr.contains("frobs"), "{}", r.stderr);
    let r = plush(&["apply", "/nonexistent/app.toml"], LIMIT);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("cannot read /nonexistent/app.toml"), "{}", r.stderr);
}

#[test]
fn files_are_copied_before_the_first_phase() {
    // data.txt, beside the application file, goes to every host (mode 640) and, a second
    // time, to a set of two; the phase checks the copy against the original on every host.
    let app = write_app("files", "");
    let dir = app.parent().unwrap().to_path_buf();
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let content = format!("data of test {}\n", std::process::id());
    std::fs::write(dir.join("data.txt"), &content).unwrap();
    let text = format!(
        r#"
[hosts]
local = 4

[sets]
two = "127.0.0.[1-2]"

[[files]]
src = "data.txt"
dest = "{out}/"
mode = "640"

[[files]]
src = "data.txt"
dest = "{out}/only-two"
hosts = "two"
mode = 0o600

[[phase]]
name = "check"
run = ["sh", "-c", "cmp {dir}/data.txt {out}/data.txt && stat -c %a {out}/data.txt {out}/only-two"]
"#,
        out = out.display(),
        dir = dir.display()
    );
    std::fs::write(&app, text).unwrap();
    let r = plush(&["apply", app.to_str().unwrap(), "--json"], LIMIT);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let docs = json_lines(&r.stdout);
    // Each file's outcome: every host of it ok.
    let copies: Vec<&Value> = docs.iter().filter(|d| d.get("file").is_some() && d.get("ok").is_some()).collect();
    assert_eq!(copies.len(), 2, "{docs:?}");
    assert_eq!((copies[0]["ok"].as_u64(), copies[0]["failed"].as_u64()), (Some(4), Some(0)), "{}", copies[0]);
    assert_eq!((copies[1]["ok"].as_u64(), copies[1]["failed"].as_u64()), (Some(2), Some(0)), "{}", copies[1]);
    // The phase ran after the copies, and found them on every host.
    let copied = docs.iter().rposition(|d| d.get("file").is_some()).expect("a file line");
    let started = docs.iter().position(|d| d["phase"] == "check" && d.get("started").is_some()).expect("started");
    assert!(copied < started, "{docs:?}");
    let check: Vec<&Value> = docs.iter().filter(|d| d["phase"] == "check" && d.get("nodes").is_some()).collect();
    assert_eq!(check.len(), 1, "{check:?}");
    assert_eq!(check[0]["count"], 4, "{}", check[0]);
    assert_eq!(check[0]["status"], "ok", "{}", check[0]);
    assert_eq!(check[0]["stdout"], "640\n600\n", "{}", check[0]);
    let summary = &docs.last().expect("a summary")["summary"];
    assert_eq!(summary["files_run"], 2, "{summary}");
    assert_eq!(summary["ok"], 4, "{summary}");
    assert_eq!(summary["exit"], 0, "{summary}");
}

#[test]
fn a_file_that_cannot_be_copied_is_named_and_aborts_or_is_refused_with_its_line() {
    // A src that does not exist: refused with its line before any host starts, also by --check.
    let app = write_app(
        "nosrc",
        "[hosts]\nlocal = 3\n\n[[files]]\nsrc = \"nosuch.txt\"\ndest = \"/tmp/\"\n\n[[phase]]\nname = \"x\"\nrun = \"true\"\n",
    );
    for check in [false, true] {
        let mut args = vec!["apply", app.to_str().unwrap()];
        if check {
            args.push("--check");
        }
        let r = plush(&args, LIMIT);
        assert_eq!(r.code, Some(2), "--check {check}: stderr: {}", r.stderr);
        assert!(r.stderr.contains("line 5: files[1].src: ") && r.stderr.contains("nosuch.txt"), "{}", r.stderr);
        assert!(r.stdout.is_empty(), "{}", String::from_utf8_lossy(&r.stdout));
    }
    // A destination that cannot be written: the hosts are named with the error, and no phase runs.
    let dir = app.parent().unwrap().to_path_buf();
    std::fs::write(dir.join("data.txt"), "x\n").unwrap();
    std::fs::write(
        &app,
        "[hosts]\nlocal = 3\n\n[[files]]\nsrc = \"data.txt\"\ndest = \"/nonexistent-plush-dir/data.txt\"\n\n[[phase]]\nname = \"never\"\nrun = \"echo never\"\n",
    )
    .unwrap();
    let r = plush(&["apply", app.to_str().unwrap()], LIMIT);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(r.code, Some(1), "stderr: {}", r.stderr);
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains("127.0.0.[1-3] (3) exit 1"), "{text}");
    assert!(text.contains("/nonexistent-plush-dir/data.txt: No such file or directory"), "{text}");
    assert!(!text.contains("never"), "the phase ran: {text}");
    assert!(r.stderr.contains("file data.txt (line 4) was not copied to 3 hosts: aborting"), "{}", r.stderr);
}
