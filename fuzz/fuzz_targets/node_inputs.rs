//! Arbitrary inputs to a client `Node` and to the `Controller`: frames from a few peers, link
//! events, process events, commands and timer ticks, in any order.
//!
//! The input is a script of steps; the first byte of a step picks what happens, the next bytes
//! its arguments (a peer out of four, a payload length, the payload). Both machines are driven
//! by the same script. Checked: nothing panics; each call produces a bounded number of outputs
//! (the core's queues have bounds); and a frame that does not decode is refused with an error
//! and changes nothing the driver can see (no output).
//!
//! A step may also start or end a batch of the node (`Node::begin_batch` / `end_batch`, as the
//! mio driver does around a turn's reads); within one, frames reach the node with their length
//! prefix through `Node::handle_frames` (sometimes with the script's own bytes as the prefix),
//! which must take whole frames only and never more than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plush_core::wire::{ExitStatus, Message};
use plush_core::{Command, Config, Controller, Instant, LinkEvent, Node, NodeId, ProcessEvent};
use std::time::Duration;

/// Most outputs one call may produce here (a handful of peers, small frames).
const MAX_OUTPUTS: usize = 10_000;

fn id(i: u8) -> NodeId {
    NodeId::loopback(u32::from(i % 4) + 1, 7000)
}

fn drain_node(n: &mut Node) -> usize {
    let mut k = 0;
    while n.poll_output().is_some() {
        k += 1;
        assert!(k < MAX_OUTPUTS, "unbounded outputs");
    }
    k
}

fn drain_ctrl(c: &mut Controller) -> usize {
    let mut k = 0;
    while c.poll_output().is_some() {
        k += 1;
        assert!(k < MAX_OUTPUTS, "unbounded outputs");
    }
    k
}

fuzz_target!(|data: &[u8]| {
    let cfg = Config::default();
    let mut now = Instant::ZERO;
    let mut node = Node::new(NodeId::loopback(0, 7000), cfg.clone(), 1, now);
    let mut ctrl = Controller::new(NodeId::loopback(9, 7000), cfg, 2, now);
    let _ = node.handle_command(now, Command::Join { bootstrap: vec![id(0)] });
    ctrl.add_hosts(now, &[id(0), id(1), id(2)]);
    drain_node(&mut node);
    drain_ctrl(&mut ctrl);
    let mut at = 0;
    let mut batching = false;
    while at < data.len() {
        let op = data[at];
        let peer = data.get(at + 1).copied().unwrap_or(0);
        at += 2;
        match op % 9 {
            0 | 1 | 2 => {
                // A frame from `peer`.
                let len = usize::from(data.get(at).copied().unwrap_or(0));
                at += 1;
                let payload = &data[at.min(data.len())..(at + len).min(data.len())];
                at += len;
                let decodes = Message::decode(payload).is_ok();
                let before = drain_node(&mut node);
                assert_eq!(before, 0);
                let r = if batching {
                    // As read from a socket: prefixed, or (peer's bit 6) the script's raw bytes.
                    let framed = if peer & 0x40 == 0 {
                        let mut f = (payload.len() as u32).to_be_bytes().to_vec();
                        f.extend_from_slice(payload);
                        f
                    } else {
                        payload.to_vec()
                    };
                    let (used, r) = node.handle_frames(now, id(peer), &framed);
                    assert!(used <= framed.len(), "took more than it was given");
                    if peer & 0x40 == 0 && r.is_ok() {
                        assert_eq!(used, framed.len(), "one whole frame is taken");
                    }
                    // Only the prefixed single frame says what `decodes` says.
                    if peer & 0x40 == 0 {
                        r
                    } else {
                        Ok(())
                    }
                } else {
                    node.handle_frame(now, id(peer), payload)
                };
                let outs = drain_node(&mut node);
                if !decodes && (!batching || peer & 0x40 == 0) {
                    assert!(r.is_err(), "a frame that does not decode is an error");
                    assert_eq!(outs, 0, "a refused frame changes nothing");
                }
                let r = ctrl.handle_frame(now, id(peer), payload);
                let outs = drain_ctrl(&mut ctrl);
                if !decodes {
                    assert!(r.is_err());
                    assert_eq!(outs, 0);
                }
            }
            3 => {
                let ev = [LinkEvent::Connected, LinkEvent::ConnectFailed, LinkEvent::Closed][usize::from(peer % 3)];
                node.handle_link(now, id(peer >> 2), ev);
                ctrl.handle_link(now, id(peer >> 2), ev);
            }
            4 => {
                now = now + Duration::from_millis(u64::from(peer) * 40);
                node.handle_timeout(now);
                ctrl.handle_timeout(now);
            }
            5 => {
                let job = u64::from(peer % 4);
                let ev = if peer & 0x80 == 0 {
                    ProcessEvent::Output { job, bytes: vec![b'x'; usize::from(peer)], err: peer & 1 == 1 }
                } else {
                    ProcessEvent::Exit { job, status: ExitStatus::Exited(i32::from(peer)) }
                };
                node.handle_process(now, ev);
            }
            6 => {
                let _ = node.handle_command(now, Command::BarrierEnter { name: format!("b{}", peer % 3) });
                node.handle_launched(now, id(peer), if peer & 1 == 0 { Ok(()) } else { Err("down") });
                ctrl.handle_launched(now, id(peer), if peer & 1 == 0 { Ok(()) } else { Err("down") });
            }
            8 => {
                if batching {
                    node.end_batch();
                } else {
                    node.begin_batch();
                }
                batching = !batching;
            }
            _ => {
                if let Some(t) = node.poll_timeout() {
                    now = now.max(t);
                    node.handle_timeout(now);
                }
                if let Some(t) = ctrl.poll_timeout() {
                    now = now.max(t);
                    ctrl.handle_timeout(now);
                }
            }
        }
        drain_node(&mut node);
        drain_ctrl(&mut ctrl);
    }
    if batching {
        node.end_batch();
        drain_node(&mut node);
    }
});
