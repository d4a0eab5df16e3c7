//! The maintenance script on loopback: every client runs the user's script before it joins;
//! a host whose script fails is reported with the script's status and output, and never
//! joins. Both ways an invitation travels are covered: the first host is invited by the
//! controller itself, the others by the root.

mod common;

use common::{cluster_config, free_port};
use plush_core::wire::ExitStatus;
use plush_core::{HostState, NodeId};
use plush_mio::Cluster;
use std::time::Duration;

#[test]
fn a_failing_maintenance_script_is_reported_for_its_host_and_that_host_does_not_join() {
    let _ = plush_mio::raise_fd_limit();
    let n = 8u32;
    let port = free_port(n, 33_000);
    let hosts: Vec<NodeId> = (0..n).map(|i| NodeId::loopback(i, port)).collect();
    let dir = std::env::temp_dir().join(format!("plush-maint-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Fails on the first host (invited directly by the controller) and on the fourth (invited
    // by the root); the others leave a mark that they ran it.
    let bad = [hosts[0], hosts[3]];
    let script = format!(
        "case \"$PLUSH_NODE\" in {}|{}) echo \"disk check failed on $PLUSH_NODE\"; exit 3;; esac\n\
         touch '{}'/\"ran-$PLUSH_NODE\"\n",
        bad[0],
        bad[1],
        dir.display()
    );
    let cfg = plush_mio::ClusterConfig { maintenance: Some(script), ..cluster_config() };
    let mut c = Cluster::start(cfg).expect("start the controller");
    c.add_hosts(&hosts);
    let settled = c
        .wait_until(Duration::from_secs(60), |c| {
            c.count(HostState::Joined) == hosts.len() - bad.len() && c.count(HostState::Failed) == bad.len()
        })
        .expect("loop");
    let states: Vec<String> = hosts.iter().map(|h| format!("{h} {:?}", c.host(h).map(|i| i.state))).collect();
    assert!(settled, "hosts did not settle: {states:?}");
    for h in &bad {
        let info = c.host(h).expect("a host the controller knows");
        assert_eq!(info.state, HostState::Failed, "{h}");
        assert_eq!(info.joined_at, None, "{h} joined at some point");
        let (status, output) = info.script.clone().expect("the script's failure is reported");
        assert_eq!(status, ExitStatus::Exited(3), "{h}");
        assert_eq!(output, format!("disk check failed on {h}"));
        assert!(!dir.join(format!("ran-{h}")).exists());
    }
    for h in hosts.iter().filter(|h| !bad.contains(h)) {
        assert_eq!(c.host(h).map(|i| i.state), Some(HostState::Joined), "{h}");
        assert!(c.host(h).and_then(|i| i.script.clone()).is_none(), "{h}");
        assert!(dir.join(format!("ran-{h}")).exists(), "{h} joined without running the script");
    }
    // The tree of the others works, and the failed hosts are not in it.
    let run = c.run(&["true"], Duration::from_secs(20)).expect("run");
    assert_eq!(run.result_count(), hosts.len() - bad.len(), "{:?}", run.groups);
    for g in &run.groups {
        assert!(bad.iter().all(|b| !g.nodes.contains(b)), "a failed host ran the job: {g:?}");
    }
    // The failed hosts' clients were told to exit; the others exit with the tree.
    let d = c.dismantle(Duration::from_secs(30)).expect("dismantle");
    assert_eq!(d.killed, 0, "clients had to be killed: {d:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
