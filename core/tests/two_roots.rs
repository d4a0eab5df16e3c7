//! The controller as the rendezvous of two trees: a second root announcing itself while the
//! followed one is linked is another tree (a fragment left by failures), not a successor. The
//! controller follows the lower root, asks it to check the other (whose answer to that check
//! merges the two trees), and follows the other at once if the kept root's link breaks.

use plush_core::wire::{encode_once, ControlMsg, JobKind, JobMsg, List, Message, RunSpec, Target};
use plush_core::{Config, Controller, Instant, LinkEvent, NodeId, Output};

fn id(i: u32) -> NodeId {
    NodeId::loopback(i, 7100)
}

fn at(ms: u64) -> Instant {
    Instant(ms * 1000)
}

fn frame(c: &mut Controller, t: u64, from: NodeId, msg: Message) -> Vec<Output> {
    let f = encode_once(&msg).expect("encodes");
    c.handle_frame(at(t), from, &f[4..]).expect("a valid frame");
    std::iter::from_fn(|| c.poll_output()).collect()
}

/// The control messages among `out` sent to `to`.
fn sent_to(out: &[Output], to: NodeId) -> Vec<ControlMsg> {
    out.iter()
        .filter_map(|o| match o {
            Output::Transmit { to: t, frame } if *t == to => match Message::decode(&frame[4..]) {
                Ok(Message::Control(m)) => Some(m),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A controller following `root` over an open link.
fn following(root: NodeId) -> Controller {
    let mut c = Controller::new(id(200), Config::default(), 1, at(0));
    c.attach(at(0), root);
    let _: Vec<Output> = std::iter::from_fn(|| c.poll_output()).collect();
    c.handle_link(at(1), root, LinkEvent::Connected);
    frame(&mut c, 2, root, Message::Control(ControlMsg::SetRoot { root }));
    assert_eq!(c.root(), Some(root));
    c
}

#[test]
fn a_higher_second_root_is_checked_by_the_followed_one() {
    let (low, high) = (id(3), id(9));
    let mut c = following(low);
    c.handle_link(at(3), high, LinkEvent::Connected);
    let out = frame(&mut c, 4, high, Message::Control(ControlMsg::SetRoot { root: high }));
    assert_eq!(c.root(), Some(low), "the lower root stays followed");
    assert!(
        sent_to(&out, low).contains(&ControlMsg::Disconnected { node: high, related: false }),
        "the followed root is asked to check the other: {out:?}"
    );
    assert!(
        !sent_to(&out, high).iter().any(|m| matches!(m, ControlMsg::SetCtrl { .. })),
        "the higher root is not adopted: {out:?}"
    );
    assert_eq!(c.stats().two_roots, 1);
}

#[test]
fn a_lower_second_root_is_followed_and_checks_the_old_one() {
    let (low, high) = (id(3), id(9));
    let mut c = following(high);
    c.handle_link(at(3), low, LinkEvent::Connected);
    let out = frame(&mut c, 4, low, Message::Control(ControlMsg::SetRoot { root: low }));
    assert_eq!(c.root(), Some(low), "the tree ends rooted at the lower root: follow it");
    let to_low = sent_to(&out, low);
    assert!(to_low.iter().any(|m| matches!(m, ControlMsg::SetCtrl { .. })), "{out:?}");
    assert!(to_low.contains(&ControlMsg::Disconnected { node: high, related: false }), "{out:?}");
}

#[test]
fn the_spare_root_is_asked_at_once_when_the_kept_ones_link_breaks() {
    let (low, high) = (id(3), id(9));
    let mut c = following(low);
    c.handle_link(at(3), high, LinkEvent::Connected);
    frame(&mut c, 4, high, Message::Control(ControlMsg::SetRoot { root: high }));
    assert_eq!(c.root(), Some(low));
    // The kept root dies: the other was its successor after all. It is asked at once, without
    // waiting to look for a root, and followed once it answers on its own link.
    c.handle_link(at(5), low, LinkEvent::Closed);
    let out: Vec<Output> = std::iter::from_fn(|| c.poll_output()).collect();
    assert!(sent_to(&out, high).iter().any(|m| matches!(m, ControlMsg::SetCtrl { .. })), "{out:?}");
    assert_eq!(c.root(), None, "no root is followed before it answers");
    frame(&mut c, 6, high, Message::Control(ControlMsg::SetRoot { root: high }));
    assert_eq!(c.root(), Some(high));
}

#[test]
fn a_successor_after_the_old_roots_link_broke_is_simply_followed() {
    let (old, new) = (id(3), id(9));
    let mut c = following(old);
    c.handle_link(at(3), old, LinkEvent::Closed);
    c.handle_link(at(4), new, LinkEvent::Connected);
    let out = frame(&mut c, 5, new, Message::Control(ControlMsg::SetRoot { root: new }));
    assert_eq!(c.root(), Some(new));
    assert!(!sent_to(&out, new).iter().any(|m| matches!(m, ControlMsg::Disconnected { .. })), "{out:?}");
    assert_eq!(c.stats().two_roots, 0);
}

#[test]
fn live_output_from_a_root_not_followed_is_acknowledged_once_taken() {
    let (low, high) = (id(3), id(9));
    let mut c = following(low);
    c.set_manual_output_ack(true);
    let spec = RunSpec {
        job: 1,
        kind: JobKind::Command,
        target: Target::All,
        argv: List(vec!["true".into()]),
        env: List(Vec::new()),
        cwd: None,
        timeout_ms: 0,
        stream: true,
        push: None,
        max_output: 0,
    };
    c.run(at(3), spec).expect("a job");
    c.handle_link(at(4), high, LinkEvent::Connected);
    frame(&mut c, 5, high, Message::Control(ControlMsg::SetRoot { root: high }));
    let output = JobMsg::Output { job: 1, node: high, bytes: b"out\n".to_vec(), err: false };
    frame(&mut c, 6, high, Message::Job(output));
    c.output_taken(at(7), 1, 4);
    let out: Vec<Output> = std::iter::from_fn(|| c.poll_output()).collect();
    let acked = out.iter().any(|o| match o {
        Output::Transmit { to, frame } if *to == high => {
            matches!(Message::decode(&frame[4..]), Ok(Message::Job(JobMsg::OutputAck { job: 1, bytes: 4 })))
        }
        _ => false,
    });
    assert!(acked, "the sender hears its bytes were shown, else it calls them lost: {out:?}");
}
