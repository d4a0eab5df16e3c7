//! The controller's view of a host against reports that come late, or not at all: a census
//! answer (`Participants`) that left the host before its loss was reported does not make a
//! relaunched host joined, one of a member invited again does; and a checked report that a
//! host invited again is gone answers its invitation.

use plush_core::frame::encode_once;
use plush_core::wire::{ControlMsg, Message};
use plush_core::{Config, Controller, HostState, Instant, LinkEvent, NodeId, NodeSet, Output};

fn id(i: u32) -> NodeId {
    NodeId::loopback(i, 7000)
}

fn at(ms: u64) -> Instant {
    Instant(ms * 1000)
}

fn control(c: &mut Controller, t: u64, from: NodeId, msg: ControlMsg) -> Vec<Output> {
    let f = encode_once(&Message::Control(msg)).expect("encodes");
    c.handle_frame(at(t), from, &f[4..]).expect("a valid frame");
    std::iter::from_fn(|| c.poll_output()).collect()
}

/// Whether `out` sends the root an invitation of `host`.
fn invites(out: &[Output], root: NodeId, host: NodeId) -> bool {
    out.iter().any(|o| match o {
        Output::Transmit { to, frame } if *to == root => {
            matches!(Message::decode(&frame[4..]), Ok(Message::Control(ControlMsg::SetPeer { host: h, .. })) if h == host)
        }
        _ => false,
    })
}

/// A controller whose tree is root 1 with host 2 joined under it: (it, root, host).
fn joined_pair() -> (Controller, NodeId, NodeId) {
    let (root, host) = (id(1), id(2));
    let mut c = Controller::new(id(200), Config::default(), 1, at(0));
    c.add_hosts(at(0), &[root, host]);
    let _: Vec<Output> = std::iter::from_fn(|| c.poll_output()).collect();
    c.handle_link(at(1), root, LinkEvent::Connected);
    control(&mut c, 2, root, ControlMsg::SetRoot { root });
    control(&mut c, 2, root, ControlMsg::Joined { node: root, build: 0 });
    control(&mut c, 3, root, ControlMsg::Joined { node: host, build: 0 });
    (c, root, host)
}

#[test]
fn a_census_answer_older_than_a_loss_does_not_stop_the_relaunched_client_being_invited() {
    let (mut c, root, host) = joined_pair();
    assert_eq!(c.host_state(&host), Some(HostState::Joined));
    // The host's client dies: its parent, the root, reports it; the controller invites it
    // again, no client answers there, and the controller launches one.
    let out = control(&mut c, 5_000, root, ControlMsg::Disconnected { node: host, related: true });
    assert!(invites(&out, root, host), "invited again: {out:?}");
    let out = control(&mut c, 5_001, root, ControlMsg::InviteFailed { host });
    assert!(out.iter().any(|o| matches!(o, Output::Launch { host: h } if *h == host)), "{out:?}");
    // Meanwhile a census answer the host gave before it died arrives.
    let nodes: NodeSet = [root, host].into_iter().collect();
    control(&mut c, 5_002, root, ControlMsg::Participants { nodes, last: false });
    assert_eq!(c.host_state(&host), Some(HostState::Invited), "an old census answer made it joined");
    // The new client listens: it is invited, and joins when it says so.
    c.handle_launched(at(5_050), host, Ok(()));
    let out: Vec<Output> = std::iter::from_fn(|| c.poll_output()).collect();
    assert!(invites(&out, root, host), "the relaunched client was never invited: {out:?}");
    control(&mut c, 5_060, root, ControlMsg::Joined { node: host, build: 0 });
    assert_eq!(c.host_state(&host), Some(HostState::Joined));
}

#[test]
fn a_census_makes_joined_a_member_whose_own_word_did_not_come() {
    let (mut c, root, host) = joined_pair();
    // A member an earlier controller invited is adopted.
    let nodes: NodeSet = [root, host, id(9)].into_iter().collect();
    control(&mut c, 4, root, ControlMsg::Participants { nodes, last: false });
    assert_eq!(c.host_state(&id(9)), Some(HostState::Joined), "a member an earlier controller invited");
    // A loss reported while the host stayed in the tree (a partition that healed): the
    // invitation that follows reaches a member, whose own `Joined` may be lost on the way; the
    // census says it is there.
    let out = control(&mut c, 5_000, root, ControlMsg::Disconnected { node: host, related: true });
    assert!(invites(&out, root, host));
    assert_eq!(c.host_state(&host), Some(HostState::Invited));
    let nodes: NodeSet = [root, host].into_iter().collect();
    control(&mut c, 9_000, root, ControlMsg::Participants { nodes, last: false });
    assert_eq!(c.host_state(&host), Some(HostState::Joined), "a census answer of a member invited again");
}

#[test]
fn a_checked_loss_of_a_host_invited_again_answers_its_invitation() {
    let (mut c, root, host) = joined_pair();
    // Its host went silent: the root reports it, and the controller invites it again.
    let out = control(&mut c, 5_000, root, ControlMsg::Disconnected { node: host, related: true });
    assert!(invites(&out, root, host));
    assert_eq!(c.outstanding(), 1);
    // The root's check finds it gone (no `InviteFailed` comes for a connect that hangs, or the
    // root that had the invitation changed): the invitation is answered, and a client is
    // launched there, instead of the slot being held until the invitation expires.
    let out = control(&mut c, 8_000, root, ControlMsg::Disconnected { node: host, related: true });
    assert!(out.iter().any(|o| matches!(o, Output::Launch { host: h } if *h == host)), "{out:?}");
    // While the launch is under way, a further report changes nothing.
    let out = control(&mut c, 8_100, root, ControlMsg::Disconnected { node: host, related: true });
    assert!(!out.iter().any(|o| matches!(o, Output::Launch { .. })), "{out:?}");
    assert_eq!(c.host_state(&host), Some(HostState::Invited));
}
