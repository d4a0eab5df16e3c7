//! `plush client` end to end: a controller (the `plush_mio::Cluster` library) launches three
//! `plush client` processes on loopback addresses, runs a command on them and dismantles them.
//! The `Cluster` kills and reaps whatever it launched, even when an assertion fails.

use plush_core::wire::ExitStatus;
use plush_core::{HostState, NodeId};
use plush_mio::{Cluster, ClusterConfig};
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn plush_client_processes_join_run_and_exit() {
    // A port free on 127.0.0.1-3 (other test binaries use 21000-24999).
    let port = (25_000..25_500)
        .find(|&p| (0..3).all(|i| std::net::TcpListener::bind(NodeId::loopback(i, p).addr()).is_ok()))
        .expect("a free port");
    let hosts: Vec<NodeId> = (0..3).map(|i| NodeId::loopback(i, port)).collect();
    let cfg = ClusterConfig { client_program: PathBuf::from(env!("CARGO_BIN_EXE_plush")), ..ClusterConfig::default() };
    let mut c = Cluster::start(cfg).expect("start the controller");
    c.add_hosts(&hosts);
    let joined = c.wait_until(Duration::from_secs(30), |c| c.count(HostState::Joined) == 3).expect("event loop");
    assert!(joined, "{:?}", c.hosts().collect::<Vec<_>>());
    let pids = c.launched_pids();
    assert_eq!(pids.len(), 3);
    let out = c.run(&["echo", "from plush client"], Duration::from_secs(10)).expect("run");
    assert_eq!(out.result_count(), 3, "{:?}", out.groups);
    assert_eq!(out.groups.len(), 1);
    assert_eq!(out.groups[0].status, ExitStatus::Exited(0));
    assert_eq!(out.groups[0].output, b"from plush client\n");
    let d = c.dismantle(Duration::from_secs(20)).expect("dismantle");
    assert_eq!(d.killed, 0, "every client exited by itself");
    assert!(pids.iter().all(|&p| !plush_mio::process_exists(p)));
}
