//! Barriers, client side: `BarrierEnter` travels up like results (merged, held until released,
//! sent again after a reconfiguration); the controller decides, and `BarrierRelease` floods
//! down. A node entering a barrier already released passes at once. See [`super`].

use super::*;
use crate::contract::Event;
use crate::ctx::Ctx;
use crate::nodeset::NodeSet;
use crate::tree::Tree;
use crate::wire::{JobMsg, Message};

impl Control {
    /// The local process enters barrier `name`.
    pub fn enter_barrier(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, name: String) -> bool {
        if name.len() > MAX_NAME {
            return false;
        }
        if self.released.contains(&name) {
            // Released already: pass, and let the controller know we were late.
            ctx.event(Event::BarrierReleased(name.clone()));
            if let Some(up) = self.up(tree) {
                let msg = JobMsg::BarrierEnter { name, nodes: NodeSet::one(self.me) };
                ctx.send_msg(up, &Message::Job(msg));
            }
            return true;
        }
        let me = NodeSet::one(self.me);
        if !self.barrier_entries(ctx, tree, name.clone(), &me) {
            return false;
        }
        if let Some(b) = self.rare.barriers.iter_mut().find(|b| b.name == name) {
            b.waiting = true;
        }
        true
    }

    pub(super) fn barrier_entries(
        &mut self,
        ctx: &mut Ctx<'_>,
        tree: &mut Tree,
        name: String,
        nodes: &NodeSet,
    ) -> bool {
        let k = match self.rare.barriers.iter().position(|b| b.name == name) {
            Some(k) => k,
            None => {
                if self.rare.barriers.len() >= MAX_BARRIERS {
                    return false;
                }
                self.rare.barriers.push(NodeBarrier {
                    name,
                    waiting: false,
                    held: NodeSet::new(),
                    unsent: NodeSet::new(),
                    flush_at: None,
                });
                self.rare.barriers.len() - 1
            }
        };
        let b = &mut self.rare.barriers[k];
        b.held.extend(nodes);
        b.unsent.extend(nodes);
        if b.flush_at.is_none() {
            let delay = if tree.is_root() { ctx.cfg.ctrl_merge_delay } else { ctx.cfg.merge_delay };
            b.flush_at = Some(ctx.now + delay);
        }
        true
    }

    pub(super) fn flush_barrier(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, k: usize) {
        let Some(up) = self.up(tree) else {
            self.rare.barriers[k].flush_at = None;
            return;
        };
        let b = &mut self.rare.barriers[k];
        b.flush_at = None;
        if b.unsent.is_empty() {
            return;
        }
        let msg = JobMsg::BarrierEnter { name: b.name.clone(), nodes: core::mem::take(&mut b.unsent) };
        ctx.send_msg(up, &Message::Job(msg));
    }

    pub(super) fn release_barrier(&mut self, ctx: &mut Ctx<'_>, name: String) {
        if let Some(k) = self.rare.barriers.iter().position(|b| b.name == name) {
            let b = self.rare.barriers.swap_remove(k);
            if b.waiting {
                ctx.event(Event::BarrierReleased(name.clone()));
            }
        }
        if !self.released.contains(&name) {
            if self.released.len() == MAX_RELEASED {
                self.released.pop_front();
            }
            self.released.push_back(name);
        }
    }
}
