//! `Controller::adopt_job` (issue 19, `plush attach`): a controller that takes over a job an
//! earlier controller started reports only the results it was not given as already shown, and
//! its acknowledgement covers both.

use plush_core::frame::encode_once;
use plush_core::wire::{ControlMsg, ExitStatus, Group, JobKind, JobMsg, List, Message, RunSpec, Target};
use plush_core::{Config, Controller, Instant, LinkEvent, NodeId, NodeSet, Output, Report};

fn id(i: u32) -> NodeId {
    NodeId::loopback(i, 7000)
}

fn at(ms: u64) -> Instant {
    Instant(ms * 1000)
}

fn spec(job: u64) -> RunSpec {
    RunSpec {
        job,
        kind: JobKind::Command,
        target: Target::All,
        argv: List(vec!["true".into()]),
        env: List(Vec::new()),
        cwd: None,
        timeout_ms: 0,
        stream: false,
        push: None,
        max_output: 0,
    }
}

fn frame(c: &mut Controller, t: u64, from: NodeId, msg: Message) -> Vec<Output> {
    let f = encode_once(&msg).expect("encodes");
    c.handle_frame(at(t), from, &f[4..]).expect("a valid frame");
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn group(nodes: &[u32], out: &str) -> Group {
    Group {
        status: ExitStatus::Exited(0),
        truncated: false,
        output: out.as_bytes().to_vec(),
        nodes: nodes.iter().map(|&i| id(i)).collect(),
        stderr: Vec::new(),
        blob: None,
    }
}

#[test]
fn a_resumed_job_reports_only_the_results_not_shown_and_acknowledges_all() {
    let root = id(1);
    let mut c = Controller::new(id(200), Config::default(), 1, at(0));
    let shown: NodeSet = [id(1), id(2)].into_iter().collect();
    c.adopt_job(at(0), spec(7), shown, false).expect("the job is taken over");
    // Resuming the same job again is refused, as a duplicate run is.
    assert!(c.adopt_job(at(0), spec(7), NodeSet::new(), false).is_err());
    c.attach(at(0), root);
    let out: Vec<Output> = std::iter::from_fn(|| c.poll_output()).collect();
    assert!(out.iter().any(|o| matches!(o, Output::Connect(p) if *p == root)), "{out:?}");
    c.handle_link(at(1), root, LinkEvent::Connected);
    let out = frame(&mut c, 2, root, Message::Control(ControlMsg::SetRoot { root }));
    // The new root gets the job (it may not know it), as any root does.
    let sent_run = out.iter().any(|o| match o {
        Output::Transmit { to, frame } if *to == root => {
            matches!(Message::decode(&frame[4..]), Ok(Message::Job(JobMsg::Run(s))) if s.job == 7)
        }
        _ => false,
    });
    assert!(sent_run, "the job goes to the root: {out:?}");
    // The root re-sends everything it holds: nodes 1 and 2 (shown before the crash) and 3.
    let groups = List(vec![group(&[1, 2], "a"), group(&[3], "b")]);
    let out = frame(&mut c, 3, root, Message::Job(JobMsg::Results { job: 7, groups, complete: true }));
    let reported: Vec<NodeId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Report(r) => match &**r {
                Report::Result { job: 7, nodes, .. } => Some(nodes.iter().collect::<Vec<_>>()),
                _ => None,
            },
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(reported, vec![id(3)], "only the result not shown before is reported");
    assert_eq!(c.stats().duplicate_results, 2);
    assert_eq!(c.results_of(7).map(NodeSet::len), Some(3));
    // The acknowledgement covers the shown results too: the tree drops them.
    c.handle_timeout(at(4));
    let acked = std::iter::from_fn(|| c.poll_output()).any(|o| match o {
        Output::Transmit { to, frame } if to == root => matches!(
            Message::decode(&frame[4..]),
            Ok(Message::Job(JobMsg::Ack { job: 7, nodes })) if nodes.len() == 3
        ),
        _ => false,
    });
    assert!(acked, "an Ack of all three nodes");
}
