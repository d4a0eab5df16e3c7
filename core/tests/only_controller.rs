//! Only the controller starts work: a script reaches a member only from the controller's link,
//! an idle client runs only its inviter's script, and the root forwards invitations only from
//! the controller or a child. (Jobs already come only from above: see `control`'s docs.)

use plush_core::frame::encode_once;
use plush_core::wire::{ControlMsg, Message};
use plush_core::{Config, Instant, LinkEvent, Node, NodeId, Output, TreeState};

fn id(i: u32) -> NodeId {
    NodeId::loopback(i, 7000)
}

const ME: u32 = 1;
const CTRL: u32 = 200;

fn at(ms: u64) -> Instant {
    Instant(ms * 1000)
}

/// Every output until quiet.
fn outputs(n: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

fn send(n: &mut Node, t: u64, from: u32, msg: ControlMsg) -> Vec<Output> {
    n.handle_link(at(t), id(from), LinkEvent::Connected);
    let _ = outputs(n);
    let frame = encode_once(&Message::Control(msg)).expect("encodes");
    n.handle_frame(at(t), id(from), &frame[4..]).expect("a valid frame");
    outputs(n)
}

fn runs_script(out: &[Output], script: &str) -> bool {
    out.iter().any(|o| matches!(o, Output::Spawn { spec, .. } if spec.argv.0.iter().any(|a| a == script)))
}

fn talks_to(out: &[Output], peer: NodeId) -> bool {
    out.iter().any(|o| {
        matches!(o, Output::Connect(p) if *p == peer) || matches!(o, Output::Transmit { to, .. } if *to == peer)
    })
}

fn idle_node() -> Node {
    Node::new(id(ME), Config::default(), 7, at(0))
}

#[test]
fn an_idle_client_runs_its_inviters_script_and_no_one_elses() {
    // The inviter's own script runs before the client joins.
    let mut n = idle_node();
    send(&mut n, 1, 2, ControlMsg::Maintenance { script: "echo inviter".into() });
    let out = send(&mut n, 2, 2, ControlMsg::SetPeer { host: id(ME), ctrl: id(CTRL) });
    assert!(runs_script(&out, "echo inviter"), "{out:?}");

    // A script that came on another link is not run for this invitation.
    let mut n = idle_node();
    send(&mut n, 1, 3, ControlMsg::Maintenance { script: "echo stranger".into() });
    let out = send(&mut n, 2, 2, ControlMsg::SetPeer { host: id(ME), ctrl: id(CTRL) });
    assert!(!runs_script(&out, "echo stranger"), "another link's script ran: {out:?}");
    assert!(talks_to(&out, id(2)), "the invitation itself is obeyed: {out:?}");
}

/// A node that the controller invited directly: it founds the tree and is its root.
fn root() -> Node {
    let mut n = idle_node();
    send(&mut n, 1, CTRL, ControlMsg::SetPeer { host: id(ME), ctrl: id(CTRL) });
    for t in 2..50 {
        n.handle_timeout(at(t * 100));
        let _ = outputs(&mut n);
    }
    assert_eq!(n.state(), TreeState::Joined);
    assert!(n.is_root());
    n
}

#[test]
fn a_member_takes_scripts_only_from_the_controller() {
    let mut n = root();
    let before = n.stats().commands_rejected;
    send(&mut n, 6000, 9, ControlMsg::Maintenance { script: "echo member".into() });
    assert_eq!(n.stats().commands_rejected, before + 1, "a member's script is refused");
    // An invitation the controller asks for then carries no script of the member's.
    let out = send(&mut n, 6100, CTRL, ControlMsg::SetPeer { host: id(50), ctrl: id(CTRL) });
    let out = [out, {
        n.handle_link(at(6200), id(50), LinkEvent::Connected);
        outputs(&mut n)
    }]
    .concat();
    assert!(talks_to(&out, id(50)), "the controller's invitation goes out: {out:?}");
    let scripts: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Transmit { to, frame } if *to == id(50) => Message::decode(frame.payload()).ok(),
            _ => None,
        })
        .filter(|m| matches!(m, Message::Control(ControlMsg::Maintenance { .. })))
        .collect();
    assert!(scripts.is_empty(), "the member's script was forwarded: {scripts:?}");

    // The controller's own script is taken.
    let before = n.stats().commands_rejected;
    send(&mut n, 6300, CTRL, ControlMsg::Maintenance { script: "echo ctrl".into() });
    assert_eq!(n.stats().commands_rejected, before);
}

#[test]
fn the_root_forwards_invitations_only_from_the_controller_or_a_child() {
    let mut n = root();
    let before = n.stats().commands_rejected;
    let out = send(&mut n, 6000, 9, ControlMsg::SetPeer { host: id(60), ctrl: id(CTRL) });
    assert!(!talks_to(&out, id(60)), "a stranger's invitation was forwarded: {out:?}");
    assert_eq!(n.stats().commands_rejected, before + 1);
    let out = send(&mut n, 6100, CTRL, ControlMsg::SetPeer { host: id(60), ctrl: id(CTRL) });
    assert!(talks_to(&out, id(60)), "the controller's invitation is forwarded: {out:?}");
}
