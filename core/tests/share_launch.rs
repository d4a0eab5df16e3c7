//! Tree launch at a member: a host of its share that no client answers is launched, and only
//! the launch's result decides what comes next. A dial to the host that fails while the launch
//! is under way (a probe, a stray reconnect) is not the invitation failing: giving the host back
//! then had the controller launch it a second time, which found the member's client already
//! listening ("address in use") and waited out a back-off (issue 21, compare-ssh at 500 hosts).

use plush_core::frame::encode_once;
use plush_core::wire::{ControlMsg, List, Message};
use plush_core::{Config, Instant, LinkEvent, Node, NodeId, Output};

fn id(i: u32) -> NodeId {
    NodeId::loopback(i, 7000)
}

const ME: u32 = 1;
const HOST: u32 = 5;
const CTRL: u32 = 200;

fn at(ms: u64) -> Instant {
    Instant(ms * 1000)
}

fn outputs(n: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

fn from_ctrl(n: &mut Node, t: u64, msg: ControlMsg) -> Vec<Output> {
    let frame = encode_once(&Message::Control(msg)).expect("encodes");
    n.handle_frame(at(t), id(CTRL), &frame[4..]).expect("a valid frame");
    outputs(n)
}

/// Whether `out` gives `HOST` back to the controller (an `InviteFailed` on the way up).
fn gives_back(out: &[Output]) -> bool {
    out.iter().any(|o| match o {
        Output::Transmit { to, frame } if *to == id(CTRL) => {
            Message::decode(&frame[4..]).is_ok_and(|m| m.kind() == "control.invite_failed")
        }
        _ => false,
    })
}

fn launches(out: &[Output]) -> bool {
    out.iter().any(|o| matches!(o, Output::Launch { host } if *host == id(HOST)))
}

/// A root (invited directly by its controller) holding a share of one host, whose first
/// invitation found no client: its launch is under way.
fn launching() -> Node {
    let mut n = Node::new(id(ME), Config { tree_launch: true, ..Config::default() }, 7, at(0));
    n.handle_link(at(1), id(CTRL), LinkEvent::Connected);
    let _ = outputs(&mut n);
    from_ctrl(&mut n, 1, ControlMsg::SetPeer { host: id(ME), ctrl: id(CTRL) });
    let mut t = 2;
    while !n.is_root() && t < 20_000 {
        n.handle_timeout(at(t));
        let _ = outputs(&mut n);
        t += 100;
    }
    assert!(n.is_root(), "the directly invited host founds the tree");
    let out = from_ctrl(&mut n, t, ControlMsg::Share { hosts: List(vec![id(HOST)]), fanout: 4 });
    assert!(out.iter().any(|o| matches!(o, Output::Connect(p) if *p == id(HOST))), "invites its host: {out:?}");
    n.handle_link(at(t + 1), id(HOST), LinkEvent::ConnectFailed);
    let out = outputs(&mut n);
    assert!(launches(&out), "no client answered: it launches one: {out:?}");
    assert!(!gives_back(&out), "{out:?}");
    n
}

#[test]
fn a_dial_that_fails_during_the_launch_does_not_give_the_host_back() {
    let mut n = launching();
    let t = 30_000;
    n.handle_link(at(t), id(HOST), LinkEvent::ConnectFailed);
    let out = outputs(&mut n);
    assert!(!gives_back(&out), "given back while its launch was under way: {out:?}");
    assert!(!launches(&out), "launched twice: {out:?}");
    // The launch succeeds: the member invites the new client.
    n.handle_launched(at(t + 1), id(HOST), Ok(()));
    let out = outputs(&mut n);
    assert!(out.iter().any(|o| matches!(o, Output::Connect(p) if *p == id(HOST))), "{out:?}");
    // After the launch, a failed invitation does give the host back.
    n.handle_link(at(t + 2), id(HOST), LinkEvent::ConnectFailed);
    assert!(gives_back(&outputs(&mut n)), "an invitation that failed after the launch goes back");
}

#[test]
fn a_launch_that_fails_gives_the_host_back() {
    let mut n = launching();
    n.handle_launched(at(30_000), id(HOST), Err("ssh: connection refused"));
    assert!(gives_back(&outputs(&mut n)));
}
