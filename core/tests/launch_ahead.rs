//! Launches ahead of the invitation (`Config::launch_ahead`): on a cold start the controller
//! launches the hosts next in line together with the one that founds the tree, instead of one
//! launch after the other; each is invited through the root once both its launch and the root
//! are there, and none founds a second tree.

use plush_core::frame::encode_once;
use plush_core::wire::{ControlMsg, Message};
use plush_core::{Config, Controller, HostState, Instant, LinkEvent, NodeId, Output};

fn id(i: u32) -> NodeId {
    NodeId::loopback(i, 7000)
}

const CTRL: u32 = 200;

fn at(ms: u64) -> Instant {
    Instant(ms * 1000)
}

fn outputs(c: &mut Controller) -> Vec<Output> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

fn launched(out: &[Output]) -> Vec<NodeId> {
    out.iter().filter_map(|o| if let Output::Launch { host } = o { Some(*host) } else { None }).collect()
}

/// The hosts invited in `out` (`SetPeer`), and to whom each invitation went.
fn invitations(out: &[Output]) -> Vec<(NodeId, NodeId)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Transmit { to, frame } => match Message::decode(&frame[4..]) {
                Ok(Message::Control(ControlMsg::SetPeer { host, .. })) => Some((host, *to)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The peers dialled in `out` (a direct invitation goes out once its link is up).
fn dials(out: &[Output]) -> Vec<NodeId> {
    out.iter().filter_map(|o| if let Output::Connect(p) = o { Some(*p) } else { None }).collect()
}

fn from(c: &mut Controller, t: u64, peer: u32, msg: ControlMsg) -> Vec<Output> {
    let frame = encode_once(&Message::Control(msg)).expect("encodes");
    c.handle_frame(at(t), id(peer), &frame[4..]).expect("a valid frame");
    outputs(c)
}

/// A controller with hosts 1..=n, up to `window` invitations out, whose first host had no
/// client: it is being launched. Returns the controller and what that step output.
fn cold(n: u32, window: usize, ahead: bool) -> (Controller, Vec<Output>) {
    cold_with(n, Config { launch_ahead: ahead, max_invitations: window, ..Config::default() })
}

fn cold_with(n: u32, cfg: Config) -> (Controller, Vec<Output>) {
    let mut c = Controller::new(id(CTRL), cfg, 1, at(0));
    let hosts: Vec<NodeId> = (1..=n).map(id).collect();
    c.add_hosts(at(0), &hosts);
    let out = outputs(&mut c);
    assert_eq!(dials(&out), vec![id(1)], "the first host is invited directly: {out:?}");
    c.handle_link(at(1), id(1), LinkEvent::ConnectFailed);
    let out = outputs(&mut c);
    (c, out)
}

#[test]
fn a_cold_start_launches_the_next_hosts_with_the_first() {
    let (_, out) = cold(10, 4, false);
    assert_eq!(launched(&out), vec![id(1)], "without launch_ahead the first host is launched alone");

    // With tree launch the members launch all hosts but the first.
    let tree = Config { launch_ahead: true, tree_launch: true, max_invitations: 4, ..Config::default() };
    let (_, out) = cold_with(10, tree);
    assert_eq!(launched(&out), vec![id(1)], "tree launch: the first host alone");

    let (mut c, out) = cold(10, 4, true);
    assert_eq!(launched(&out), vec![id(1), id(2), id(3), id(4)], "up to the window, in order: {out:?}");
    assert!(invitations(&out).is_empty() && dials(&out).is_empty(), "invited before its launch: {out:?}");
    assert_eq!(c.outstanding(), 4);
    assert_eq!(c.stats().launches_ahead, 3);
    for h in 2..=4 {
        assert_eq!(c.host_state(&id(h)), Some(HostState::Invited));
    }

    // Host 2's launch is done before the tree has a root: it waits (a direct invitation would
    // found a second tree).
    c.handle_launched(at(300), id(2), Ok(()));
    let out = outputs(&mut c);
    assert!(dials(&out).is_empty(), "invited before the tree had a root: {out:?}");

    // The first host's launch is done: it is invited directly, and founds the tree.
    c.handle_launched(at(310), id(1), Ok(()));
    let out = outputs(&mut c);
    assert_eq!(dials(&out), vec![id(1)], "{out:?}");
    c.handle_link(at(320), id(1), LinkEvent::Connected);
    let out = outputs(&mut c);
    assert_eq!(invitations(&out), vec![(id(1), id(1))], "{out:?}");
    let out = from(&mut c, 330, 1, ControlMsg::SetRoot { root: id(1) });
    // Host 2 (ready) goes out through the root; hosts 3 and 4 are still being launched.
    assert_eq!(invitations(&out), vec![(id(2), id(1))], "{out:?}");
    let out = from(&mut c, 340, 1, ControlMsg::Joined { node: id(1), build: 0 });
    assert!(launched(&out).is_empty(), "{out:?}");

    // A launch done after the root is there: invited through it at once.
    c.handle_launched(at(350), id(3), Ok(()));
    let out = outputs(&mut c);
    assert!(invitations(&out).contains(&(id(3), id(1))), "{out:?}");
    // A launch ahead that failed (a client already listens there, say): no back-off, it is
    // invited through the root at once, as any host.
    c.handle_launched(at(360), id(4), Err("address in use: a client may be stopped there"));
    let out = outputs(&mut c);
    assert_eq!(c.host_state(&id(4)), Some(HostState::Invited));
    assert!(invitations(&out).contains(&(id(4), id(1))), "{out:?}");
}

#[test]
fn a_host_launched_ahead_founds_the_tree_when_the_first_cannot() {
    let (mut c, _) = cold(6, 3, true);
    c.handle_launched(at(300), id(2), Ok(()));
    let out = outputs(&mut c);
    assert!(dials(&out).is_empty(), "{out:?}");
    // The first host cannot be launched: the ready one is invited directly in its place.
    c.handle_launched(at(310), id(1), Err("ssh: no route to host"));
    let out = outputs(&mut c);
    assert_eq!(dials(&out), vec![id(2)], "{out:?}");
    // Host 3, still being launched, waits for the root host 2 founds.
    c.handle_launched(at(320), id(3), Ok(()));
    let out = outputs(&mut c);
    assert!(dials(&out).is_empty(), "a second direct invitation: {out:?}");
    c.handle_link(at(330), id(2), LinkEvent::Connected);
    let out = outputs(&mut c);
    assert_eq!(invitations(&out), vec![(id(2), id(2))], "{out:?}");
    let out = from(&mut c, 340, 2, ControlMsg::SetRoot { root: id(2) });
    // Host 3 goes out through the root (and so does the next host, in the first host's slot).
    assert!(invitations(&out).contains(&(id(3), id(2))), "{out:?}");
    assert!(invitations(&out).iter().all(|(_, to)| *to == id(2)), "{out:?}");
}

#[test]
fn when_every_launch_ahead_is_still_under_way_the_first_done_founds_the_tree() {
    let (mut c, _) = cold(6, 3, true);
    c.handle_launched(at(300), id(1), Err("ssh: no route to host"));
    let out = outputs(&mut c);
    assert!(dials(&out).is_empty(), "nobody is ready to found it yet: {out:?}");
    assert!(launched(&out).is_empty(), "the launches under way fill the window: {out:?}");
    c.handle_launched(at(320), id(3), Ok(()));
    let out = outputs(&mut c);
    assert_eq!(dials(&out), vec![id(3)], "{out:?}");
    c.handle_launched(at(330), id(2), Ok(()));
    let out = outputs(&mut c);
    assert!(dials(&out).is_empty(), "a second direct invitation: {out:?}");
}
