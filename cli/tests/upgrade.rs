//! Client upgrades from the command line. The "old" clients are a copy of the `plush` binary
//! whose version record says another version (see `plush_mio::version`), started by the
//! command launcher; the controller is the real binary.
//! - `plush upgrade --max-down K` upgrades every host, never more than K down at once (as the
//!   controller measured, sampling every turn of its event loop), and at least one host was
//!   seen down (the restarts happened).
//! - `plush run` upgrades outdated clients by itself before running: every job's parent process
//!   (the client) then runs the installed copy; with `--no-upgrade` it still runs the old one.

mod common;

use common::{plush_env, processes_with};
use plush_mio::version::{LEN, MARKER};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A directory of this test's own, used as the clients' `HOME` too; removed on drop, after
/// killing any process still running a binary from it.
struct Home(PathBuf);

impl Home {
    fn new(tag: &str) -> Home {
        let dir = std::env::temp_dir().join(format!("plush-cli-upgrade-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Home(dir)
    }
    fn s(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        for pid in processes_with(&self.s()) {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of `plush` whose version record says `version`.
fn old_plush(dir: &Path, version: &str) -> PathBuf {
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_plush")).expect("read plush");
    let mut record = [0u8; LEN];
    record[..MARKER.len()].copy_from_slice(MARKER);
    let current = plush_mio::version();
    record[MARKER.len()..MARKER.len() + current.len()].copy_from_slice(current.as_bytes());
    let mut patched = [0u8; LEN];
    patched[..MARKER.len()].copy_from_slice(MARKER);
    patched[MARKER.len()..MARKER.len() + version.len()].copy_from_slice(version.as_bytes());
    let at = bytes.windows(LEN).position(|w| w == record).expect("a version record in plush");
    bytes[at..at + LEN].copy_from_slice(&patched);
    let path = dir.join("plush-old");
    std::fs::write(&path, &bytes).expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn free_port(n: u32, from: u16) -> u16 {
    (from..from + 500)
        .find(|&p| (1..=n).all(|i| std::net::TcpListener::bind(format!("127.0.0.{i}:{p}")).is_ok()))
        .expect("a free port")
}

#[test]
fn plush_upgrade_never_has_more_than_k_hosts_down() {
    let home = Home::new("k");
    let old = old_plush(&home.0, "0.0.0-old");
    let port = free_port(9, 19_000).to_string();
    let template = format!("{} client --listen {{addr}} --key-file -", old.display());
    let args = [
        "upgrade",
        "-w",
        "127.0.0.[1-9]",
        "--port",
        &port,
        "--launcher",
        "command",
        "--launcher-command",
        &template,
        "--max-down",
        "3",
        "--json",
    ];
    let ran = plush_env(&args, None, &[("HOME", &home.s())], Duration::from_secs(180));
    assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);
    let line = String::from_utf8_lossy(&ran.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert_eq!(v["outdated"], 9, "{v}");
    assert_eq!(v["upgraded"], 9, "{v}; stderr: {}", ran.stderr);
    assert_eq!(v["current"], 9, "{v}");
    assert_eq!(v["limit"], 3, "{v}");
    let max_down = v["max_down"].as_u64().expect("max_down");
    assert!(max_down <= 3, "{max_down} hosts down at once: {v}");
    assert!(max_down >= 1, "no host was ever seen restarting: {v}");
}

#[test]
fn plush_run_upgrades_outdated_clients_unless_told_not_to() {
    let home = Home::new("run");
    let old = old_plush(&home.0, "0.0.0-old");
    let template = format!("{} client --listen {{addr}} --key-file -", old.display());
    for (no_upgrade, port_from) in [(false, 27_600), (true, 28_200)] {
        let port = free_port(6, port_from).to_string();
        let mut args = vec![
            "run",
            "-w",
            "127.0.0.[1-6]",
            "--port",
            &port,
            "--launcher",
            "command",
            "--launcher-command",
            &template,
            "--json",
        ];
        if no_upgrade {
            args.push("--no-upgrade");
        }
        args.extend(["--", "sh", "-c", "readlink /proc/$PPID/exe"]);
        let ran = plush_env(&args, None, &[("HOME", &home.s())], Duration::from_secs(180));
        assert_eq!(ran.code, Some(0), "stderr: {}", ran.stderr);
        let out = String::from_utf8_lossy(&ran.stdout);
        let mut hosts = 0;
        for line in out.lines().filter(|l| l.contains("\"nodes\"")) {
            let group: serde_json::Value = serde_json::from_str(line).expect("JSON group");
            hosts += group["count"].as_u64().expect("count");
            // Local clients share one file: a later copy renamed over it leaves the running
            // one "(deleted)".
            let exe = group["stdout"].as_str().expect("stdout").trim().trim_end_matches(" (deleted)").to_string();
            if no_upgrade {
                assert_eq!(exe, old.display().to_string(), "{out}");
            } else {
                assert!(exe.starts_with(&format!("{}/.cache/plush/plush-", home.s())), "{out}");
            }
        }
        assert_eq!(hosts, 6, "{out}");
        if !no_upgrade {
            assert!(ran.stderr.contains("upgrading them"), "{}", ran.stderr);
        }
    }
}
