//! `--maintenance FILE` end to end: every client runs the script before it joins; a host whose
//! script fails is named on stderr with the script's status and output, gets no job, and the
//! run exits 255 (a host not reached), with every client gone afterwards.

use std::time::Duration;

mod common;
use common::plush;

const LIMIT: Duration = Duration::from_secs(90);

fn script_file(tag: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("plush-maint-cli-{}-{tag}.sh", std::process::id()));
    std::fs::write(&path, text).expect("write the script");
    path
}

#[test]
fn a_host_whose_maintenance_script_fails_is_named_and_gets_no_job() {
    let marks = std::env::temp_dir().join(format!("plush-maint-cli-{}-marks", std::process::id()));
    let _ = std::fs::remove_dir_all(&marks);
    std::fs::create_dir_all(&marks).expect("temp dir");
    let script = script_file(
        "fail",
        &format!(
            "case \"$PLUSH_NODE\" in 127.0.0.3:*) echo 'no scratch space'; exit 3;; esac\n\
             touch '{}'/\"${{PLUSH_NODE%:*}}\"\n",
            marks.display()
        ),
    );
    let path = script.display().to_string();
    let r = plush(&["run", "--local", "5", "--maintenance", &path, "--", "echo", "hi"], LIMIT);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.code, Some(255), "stdout: {stdout}\nstderr: {}", r.stderr);
    assert!(stdout.contains("127.0.0.[1-2,4-5] (4)"), "stdout: {stdout}");
    assert!(
        r.stderr.contains("plush: 127.0.0.3: not joined: maintenance script failed (exit 3): no scratch space"),
        "stderr: {}",
        r.stderr
    );
    let mut ran: Vec<String> = std::fs::read_dir(&marks)
        .expect("marks")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ran.sort();
    assert_eq!(ran, ["127.0.0.1", "127.0.0.2", "127.0.0.4", "127.0.0.5"], "hosts that ran the script and joined");
    let _ = std::fs::remove_dir_all(&marks);
    let _ = std::fs::remove_file(&script);
}

#[test]
fn a_maintenance_script_that_cannot_be_read_is_a_usage_error() {
    let r = plush(&["run", "--local", "2", "--maintenance", "/nonexistent/plush-script", "--", "true"], LIMIT);
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("--maintenance /nonexistent/plush-script"), "stderr: {}", r.stderr);
    let big = script_file("big", &"#".repeat(plush_core::wire::MAX_SCRIPT + 1));
    let path = big.display().to_string();
    let r = plush(&["run", "--local", "2", "--maintenance", &path, "--", "true"], LIMIT);
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("at most 64 KiB"), "stderr: {}", r.stderr);
    let _ = std::fs::remove_file(&big);
}
