//! A client relaunched during a job does not run that job again: the driver hands the node the
//! jobs its predecessor on the address started (`Node::set_prior_jobs`), and a `Run` of one of
//! them is answered `ExitStatus::Lost` instead of spawning, unless the job asks for retries
//! (`RETRY_LOST_ENV`). Jobs of another controller, and other jobs, run as usual.

use plush_core::control::{LOST_OUTPUT, RETRY_LOST_ENV};
use plush_core::frame::encode_once;
use plush_core::wire::{ControlMsg, ExitStatus, JobKind, JobMsg, List, Message, RunSpec, Target};
use plush_core::{Config, Instant, LinkEvent, Node, NodeId, Output};
use std::time::Duration;

fn spec(job: u64, env: Vec<(String, String)>) -> RunSpec {
    RunSpec {
        job,
        kind: JobKind::Command,
        target: Target::All,
        argv: List(vec!["true".into()]),
        env: List(env),
        cwd: None,
        timeout_ms: 0,
        stream: true,
        push: None,
        max_output: 0,
    }
}

fn send(n: &mut Node, now: Instant, from: NodeId, msg: Message) {
    let frame = encode_once(&msg).expect("encode");
    n.handle_frame(now, from, frame.payload()).expect("accepted");
}

/// A result sent up: (job, status, output).
type Sent = (u64, ExitStatus, Vec<u8>);

/// The node's outputs, drained: (jobs spawned, results sent to the controller).
fn drain(n: &mut Node) -> (Vec<u64>, Vec<Sent>) {
    let (mut spawned, mut results) = (Vec::new(), Vec::new());
    while let Some(o) = n.poll_output() {
        match o {
            Output::Spawn { job, .. } => spawned.push(job),
            Output::Transmit { frame, .. } => {
                if let Ok(Message::Job(JobMsg::Results { job, groups, .. })) = Message::decode(frame.payload()) {
                    results.extend(groups.0.into_iter().map(|g| (job, g.status, g.stderr)));
                }
            }
            _ => {}
        }
    }
    (spawned, results)
}

#[test]
fn a_job_the_previous_client_started_is_answered_lost_not_run_again() {
    let me = NodeId::loopback(1, 7000);
    let ctrl = NodeId::loopback(200, 7000);
    let other = NodeId::loopback(201, 7000);
    let mut n = Node::new(me, Config::default(), 1, Instant::ZERO);
    n.set_prior_jobs(&[(ctrl, 5), (other, 6), (ctrl, 8)]);
    let mut now = Instant::ZERO;
    // The controller invites the node directly: it founds the tree and becomes its root.
    n.handle_link(now, ctrl, LinkEvent::Connected);
    send(&mut n, now, ctrl, Message::Control(ControlMsg::SetPeer { host: me, ctrl }));
    let _ = drain(&mut n);
    assert_eq!(n.controller(), Some(ctrl));

    // Job 5 was started by the previous client for this controller: not run, answered Lost.
    send(&mut n, now, ctrl, Message::Job(JobMsg::Run(Box::new(spec(5, Vec::new())))));
    // Job 6 was another controller's; job 7 is new; job 8 asks to run again.
    send(&mut n, now, ctrl, Message::Job(JobMsg::Run(Box::new(spec(6, Vec::new())))));
    send(&mut n, now, ctrl, Message::Job(JobMsg::Run(Box::new(spec(7, Vec::new())))));
    let retry = vec![(RETRY_LOST_ENV.to_owned(), "1".to_owned())];
    send(&mut n, now, ctrl, Message::Job(JobMsg::Run(Box::new(spec(8, retry)))));
    let mut spawned = Vec::new();
    let mut results = Vec::new();
    for _ in 0..20 {
        let (s, r) = drain(&mut n);
        spawned.extend(s);
        results.extend(r);
        now = now + Duration::from_millis(50);
        n.handle_timeout(now);
    }
    spawned.sort_unstable();
    assert_eq!(spawned, vec![6, 7, 8], "jobs spawned");
    assert_eq!(results, vec![(5, ExitStatus::Lost, LOST_OUTPUT.to_vec())], "results sent up");
}
