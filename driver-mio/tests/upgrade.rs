//! Client upgrades on loopback: clients built with another version string (a copy of the client
//! binary whose patchable version record says so) announce their build when they join; the
//! controller finds them outdated, pushes its own client binary through the tree, and each
//! client installs it, restarts on it at the same address (same process, same pid: `exec`)
//! and rejoins with the controller's build. With `--no-upgrade` the push fails on those hosts
//! and they stay as they were.
//!
//! The tests run one at a time (a lock): they set `HOME` for the clients, and a binary written
//! while another thread forks would be held open for writing by the child for a moment, which
//! makes executing it fail (ETXTBSY).

mod common;

use common::{client_bin, cluster_config, free_port};
use plush_core::wire::ExitStatus;
use plush_core::{HostState, NodeId};
use plush_mio::version::{LEN, MARKER};
use plush_mio::{process_exists, Cluster};
use std::path::{Path, PathBuf};
use std::time::Duration;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A copy of the client binary whose version record says `version`.
fn patched_client(dir: &Path, version: &str) -> PathBuf {
    let mut bytes = std::fs::read(client_bin()).expect("read the client binary");
    let mut record = [0u8; LEN];
    record[..MARKER.len()].copy_from_slice(MARKER);
    let current = plush_mio::version();
    record[MARKER.len()..MARKER.len() + current.len()].copy_from_slice(current.as_bytes());
    let mut patched = record;
    patched[MARKER.len()..].fill(0);
    patched[MARKER.len()..MARKER.len() + version.len()].copy_from_slice(version.as_bytes());
    let mut found = 0;
    let mut k = 0;
    while k + LEN <= bytes.len() {
        if bytes[k..k + LEN] == record {
            bytes[k..k + LEN].copy_from_slice(&patched);
            found += 1;
            k += LEN;
        } else {
            k += 1;
        }
    }
    assert!(found > 0, "no version record in {}", client_bin().display());
    let path = dir.join("plush-mio-client-old");
    std::fs::write(&path, &bytes).expect("write the patched client");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A fresh directory for this test binary's files, also used as the clients' `HOME`.
fn test_home(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("plush-upgrade-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn exe_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| p.display().to_string()).unwrap_or_default()
}

fn start(n: u32, port_from: u16, program: PathBuf, extra: &[&str]) -> (Cluster, Vec<NodeId>) {
    let _ = plush_mio::raise_fd_limit();
    let port = free_port(n, port_from);
    let hosts: Vec<NodeId> = (0..n).map(|i| NodeId::loopback(i, port)).collect();
    let mut cfg = cluster_config();
    cfg.client_program = program;
    cfg.client_args.extend(extra.iter().map(Into::into));
    let mut c = Cluster::start(cfg).expect("start the controller");
    c.add_hosts(&hosts);
    let all = c.wait_until(Duration::from_secs(60), |c| c.count(HostState::Joined) == n as usize).expect("loop");
    assert!(all, "not all joined");
    (c, hosts)
}

#[test]
fn clients_of_another_version_are_upgraded_and_rejoin_with_the_controllers_build() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let home = test_home("up");
    // The clients inherit it: they install the upgrade under it, not in the real home.
    std::env::set_var("HOME", &home);
    let old = patched_client(&home, "0.0.0-old");
    let (mut c, hosts) = start(12, 18_000, old.clone(), &[]);
    let mut outdated = c.outdated();
    outdated.sort();
    assert_eq!(outdated, hosts, "every client announced the other build");
    let pids = c.launched_clients();
    for (_, pid) in &pids {
        assert_eq!(exe_of(*pid), old.display().to_string(), "runs the old binary");
    }

    let job = c.start_upgrade(&outdated, &client_bin(), false).expect("start the upgrade");
    let out = c.wait_job(job, |_, _, _| {}, || false).expect("wait");
    let ok: usize = out.groups.iter().filter(|g| g.status == ExitStatus::Exited(0)).map(|g| g.nodes.len()).sum();
    assert_eq!(ok, hosts.len(), "every host installed the new client: {:?}", out.groups);

    let back = c.wait_until(Duration::from_secs(60), |c| hosts.iter().all(|h| c.current(h))).expect("loop");
    let behind: Vec<_> = hosts
        .iter()
        .filter(|h| !c.current(h))
        .map(|h| format!("{h} {:?} {:?}", c.host(h).map(|i| i.state), c.host(h).and_then(|i| i.why)))
        .collect();
    assert!(back, "hosts not back with the controller's build: {behind:?}");
    assert!(c.outdated().is_empty());
    // Same processes (exec keeps the pid), now running the installed copy.
    for (h, pid) in &pids {
        assert!(process_exists(*pid), "{h}: client {pid} is gone");
        let exe = exe_of(*pid);
        assert!(exe.contains(".cache/plush/plush-"), "{h}: client {pid} runs {exe}");
        assert!(exe.starts_with(&home.display().to_string()), "{h}: installed outside HOME: {exe}");
    }
    // And they work: a command reaches every one.
    let run = c.run(&["true"], Duration::from_secs(20)).expect("run");
    assert_eq!(run.result_count(), hosts.len(), "{:?} missing {:?}", run.groups, run.missing);
    let d = c.dismantle(Duration::from_secs(30)).expect("dismantle");
    assert_eq!(d.killed, 0, "every upgraded client exited by itself");
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn clients_with_no_upgrade_refuse_it_and_stay_as_they_are() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let home = test_home("held");
    std::env::set_var("HOME", &home);
    let old = patched_client(&home, "0.0.0-held");
    let (mut c, hosts) = start(4, 18_600, old.clone(), &["--no-upgrade"]);
    assert_eq!(c.outdated().len(), hosts.len());
    let job = c.start_upgrade(&hosts, &client_bin(), false).expect("start the upgrade");
    let out = c.wait_job(job, |_, _, _| {}, || false).expect("wait");
    assert_eq!(out.result_count(), hosts.len());
    for g in &out.groups {
        assert_eq!(g.status, ExitStatus::Exited(1), "{g:?}");
        let text = String::from_utf8_lossy(&g.output);
        assert!(text.contains("upgrades are disabled"), "{text}");
    }
    std::thread::sleep(Duration::from_millis(500));
    c.pump(Duration::from_millis(100)).expect("loop");
    assert_eq!(c.outdated().len(), hosts.len(), "nobody restarted");
    for (_, pid) in c.launched_clients() {
        assert_eq!(exe_of(pid), old.display().to_string());
    }
    let _ = c.dismantle(Duration::from_secs(30));
}
