//! A node's life around its jobs: the root's census of the members for a controller that
//! (re)connects, the dismantle that floods down and ends every client, the linger that ends a
//! tree whose controller is gone, the idle clock of a client with no link, and the timers that
//! drive them. See the protocol in [`super`].

use super::*;
use crate::contract::{Event, Output};
use crate::ctx::Ctx;
use crate::id::NodeId;
use crate::time::Instant;
use crate::tree::Tree;
use crate::wire::{ControlMsg, ExitStatus, JobKind, Message, RunSpec, Target};
use rand::RngExt;

impl Control {
    /// At the root: count the members for the controller (a job without processes).
    pub(super) fn start_census(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree) {
        self.census_seq += 1;
        let job = CENSUS_BIT | (u64::from(ctx.rng.random::<u32>()) << 24) | (self.census_seq & 0xff_ffff);
        let spec = RunSpec::new(job, JobKind::Census, Target::All, Vec::new());
        self.start_job(ctx, tree, spec, None);
    }

    pub(super) fn start_dismantle(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree) {
        if self.rare.dismantle.is_some() {
            return;
        }
        self.rare.dismantle = Some((ctx.now + ctx.cfg.dismantle_timer, ctx.now + ctx.cfg.heartbeat));
        ctx.event(Event::Dismantling);
        self.flood(ctx, tree, &Message::Control(ControlMsg::Disconnect));
        if tree.children().is_empty() {
            self.exit(ctx, tree);
        }
    }

    /// Leave the tree, close every link, tell the driver to end the process.
    pub fn exit(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree) {
        if self.exited {
            return;
        }
        self.exited = true;
        let _ = tree.leave(ctx);
        let peers: Vec<NodeId> = ctx.io.conns.iter().map(|(p, _, _)| *p).collect();
        for p in peers {
            ctx.close(&p);
        }
        self.jobs.clear();
        self.rare.barriers.clear();
        ctx.io.out.push_back(Output::Exit);
    }

    /// Whether [`Control::after`] would change nothing with `links` links.
    pub fn idle_settled(&self, links: usize) -> bool {
        (links == 0) == self.idle_since.is_some()
    }

    /// The tree changed our parent or root-ness: `detached` is whether we are now without a
    /// tree (no parent, not a root). Starts or stops the detached countdown (see `detached`).
    pub fn note_detached(&mut self, now: Instant, detached: bool) {
        if detached && self.ctrl.is_some() {
            self.rare.detached.get_or_insert(now);
        } else {
            self.rare.detached = None;
        }
    }

    /// After every input: idle expiry bookkeeping.
    pub fn after(&mut self, now: Instant, links: usize) {
        if links == 0 {
            self.idle_since.get_or_insert(now);
        } else {
            self.idle_since = None;
        }
    }

    pub fn idle_deadline(&self, idle_expiry: core::time::Duration) -> Option<Instant> {
        self.idle_since.map(|t| t + idle_expiry)
    }

    pub fn on_timeout(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree) {
        let now = ctx.now;
        let linger = self.linger(ctx.cfg.linger);
        if self.rare.dismantle.is_none() && tree.is_root() && self.rare.orphaned.is_some_and(|t| t + linger <= now) {
            // The controller did not come back within the linger: the tree ends.
            self.start_dismantle(ctx, tree);
            if self.exited {
                return;
            }
        }
        if self.rare.dismantle.is_none()
            && !tree.is_root()
            && tree.parent().is_none()
            && self.rare.detached.is_some_and(|t| t + linger <= now)
        {
            // No tree took us back within the linger (it may have ended meanwhile): our
            // subtree ends with us.
            self.start_dismantle(ctx, tree);
            if self.exited {
                return;
            }
        }
        if let Some((end, again)) = self.rare.dismantle {
            if end <= now {
                self.exit(ctx, tree);
                return;
            }
            if again <= now {
                self.rare.dismantle = Some((end, now + ctx.cfg.heartbeat));
                self.flood(ctx, tree, &Message::Control(ControlMsg::Disconnect));
            }
        }
        if self.idle_since.is_some_and(|t| t + ctx.cfg.idle_expiry <= now) {
            self.exit(ctx, tree);
            return;
        }
        if self.rare.maint.as_ref().is_some_and(|m| m.deadline <= now) {
            ctx.io.out.push_back(Output::Signal { job: MAINT_JOB });
            self.maintenance_done(ctx, tree, ExitStatus::TimedOut);
        }
        let mut k = 0;
        while k < self.jobs.len() {
            let j = &self.jobs[k];
            if j.linger_until.is_some_and(|t| t <= now) {
                self.forget_job(ctx, k);
                continue;
            }
            if let Own::Running(Some(d)) = j.own {
                if d <= now {
                    let job = j.spec.job;
                    ctx.io.out.push_back(Output::Signal { job });
                    self.finish_own(ctx, tree, k, ExitStatus::TimedOut);
                }
            }
            if self.jobs[k].flush_at.is_some_and(|t| t <= now) {
                self.flush_job(ctx, tree, k);
            }
            k += 1;
        }
        for k in 0..self.rare.barriers.len() {
            if self.rare.barriers[k].flush_at.is_some_and(|t| t <= now) {
                self.flush_barrier(ctx, tree, k);
            }
        }
        let mut i = 0;
        while i < self.rare.invites.len() {
            if self.rare.invites[i].expires <= now {
                self.rare.invites.remove(i);
            } else {
                i += 1;
            }
        }
        self.share_timeout(ctx, tree);
        let mut i = 0;
        while i < self.rare.verifying.len() {
            if self.rare.verifying[i].1 <= now {
                let (node, _) = self.rare.verifying.swap_remove(i);
                self.report_up(ctx, tree, ControlMsg::Disconnected { node, related: true });
            } else {
                i += 1;
            }
        }
        self.check_next(ctx);
    }
}
