//! The controller's link and membership, client side: what a node does when the tree changes
//! under it (attached, became root, lost a parent or child), the control messages (`SetCtrl`,
//! `SetPeer` invitations, status checks, reports passed up), and the maintenance script an
//! invited client runs before it joins. See the protocol in [`super`].

use super::held::UpItem;
use super::*;
use crate::conn::Pin;
use crate::contract::{Event, Output};
use crate::ctx::Ctx;
use crate::id::NodeId;
use crate::tree::{Tree, TreeState};
use crate::wire::{ControlMsg, ExitStatus, JobKind, JobMsg, Message, RunSpec, Target};
use smallvec::SmallVec;
use std::rc::Rc;

impl Control {
    /// We attached to a parent (first join or repair).
    pub fn on_attached(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, was_root: bool) {
        // Our controller is with us only if it said so itself since we became root: one that
        // left us orphaned may be dead, or replaced by a new one the tree we join follows.
        let with_ctrl = was_root && self.rare.orphaned.is_none();
        if was_root {
            self.stopped_root(ctx);
        }
        if core::mem::take(&mut self.announce) {
            self.report_up(ctx, tree, ControlMsg::Joined { node: self.me, build: ctx.cfg.build });
        }
        if let (Some(ctrl), Some(p)) = (self.ctrl, tree.parent()) {
            if with_ctrl {
                // The new root must learn the controller, and tell it. An orphaned root keeps
                // quiet: naming a dead controller would take the tree away from a live one.
                self.send(ctx, p, ControlMsg::SetCtrl { ctrl });
            }
        }
        self.resend_all(ctx, tree);
        self.pump_share(ctx, tree);
    }

    /// We became a root (failover, or a fragment that found no tree).
    pub fn on_became_root(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree) {
        if let Some(ctrl) = self.ctrl {
            // Alone until the controller's `SetCtrl` says otherwise: the linger counts from now.
            self.rare.orphaned = Some(ctx.now);
            self.send(ctx, ctrl, ControlMsg::SetRoot { root: self.me });
            if core::mem::take(&mut self.announce) {
                // The first member of a new overlay.
                self.send(ctx, ctrl, ControlMsg::Joined { node: self.me, build: ctx.cfg.build });
            }
            self.link_ctrl(ctx, ctrl);
            // A new root: the controller learns the tree as it is now.
            self.start_census(ctx, tree);
        }
        self.resend_all(ctx, tree);
        self.pump_share(ctx, tree);
    }

    /// We stopped being a root without a new parent (we left).
    pub fn on_attached_nowhere(&mut self, ctx: &mut Ctx<'_>) {
        self.stopped_root(ctx);
    }

    pub(super) fn stopped_root(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(ctrl) = self.ctrl {
            if self.ctrl_linked {
                ctx.unpin(&ctrl, Pin::Controller);
                ctx.release(&ctrl);
            }
        }
        self.ctrl_linked = false;
        self.rare.orphaned = None;
        // Invitations in progress die with our root-ness; the controller retries them.
        self.rare.invites.clear();
        self.rare.verifying.clear();
        self.rare.to_check.clear();
    }

    pub(super) fn link_ctrl(&mut self, ctx: &mut Ctx<'_>, ctrl: NodeId) {
        self.ctrl_linked = true;
        // The link may still be connecting: pin it once it is in the table (send opens it).
        ctx.pin(ctrl, Pin::Controller);
    }

    /// A child attached: tell it who the controller is, and what jobs run.
    pub fn on_child_added(&mut self, ctx: &mut Ctx<'_>, child: NodeId) {
        if let Some(ctrl) = self.ctrl {
            self.send(ctx, child, ControlMsg::SetCtrl { ctrl });
        }
        if let Some(l) = self.linger {
            let ms = u64::try_from(l.as_millis()).unwrap_or(u64::MAX);
            self.send(ctx, child, ControlMsg::Linger { ms });
        }
        for j in self.jobs.iter_mut().filter(|j| j.known) {
            j.answered.retain(|c| *c != child);
            ctx.send_msg(child, &Message::Job(JobMsg::Run(Box::new((*j.spec).clone()))));
        }
        if let Some((_, _)) = self.rare.dismantle {
            self.send(ctx, child, ControlMsg::Disconnect);
        }
    }

    pub fn on_child_removed(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, child: NodeId) {
        for k in 0..self.jobs.len() {
            self.jobs[k].answered.retain(|c| *c != child);
            if let Some(x) = self.jobs[k].xfer.as_mut() {
                x.drop_feed(&child);
            }
            let job = self.jobs[k].spec.job;
            let NodeJob { up: u, held, .. } = &mut self.jobs[k];
            u.blobs.drop_from(&child);
            u.awaiting.retain(|a| a.0 != child);
            u.deferred.retain(|d| d.0 != child);
            u.release(ctx, tree, job, held);
            self.maybe_flush(ctx, tree, k);
        }
        if self.rare.dismantle.is_some() && tree.children().is_empty() {
            self.exit(ctx, tree);
        }
    }

    /// A parent or child link failed: report the peer lost. `related`: it was our parent or
    /// child (the root believes such reports).
    pub fn on_peer_lost(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, peer: NodeId, related: bool, failed: bool) {
        // Chunks in flight to it died with the link: if it comes back, it asks again.
        for j in self.jobs.iter_mut() {
            if let Some(x) = j.xfer.as_mut() {
                x.drop_feed(&peer);
            }
        }
        self.output_link_lost(ctx, tree, peer, false);
        if Some(peer) == self.ctrl {
            if tree.is_root() {
                self.ctrl_linked = false;
                // The linger counts from the first loss (a failed reconnect does not restart it).
                self.rare.orphaned.get_or_insert(ctx.now);
            }
            return;
        }
        if let Some(k) = self.rare.verifying.iter().position(|v| v.0 == peer) {
            // A report we were checking: the node is indeed gone.
            self.rare.verifying.swap_remove(k);
            self.check_next(ctx);
            self.report_up(ctx, tree, ControlMsg::Disconnected { node: peer, related: true });
            // The same link may carry an invitation to it (the controller is inviting it
            // again): that one failed too.
            if let Some(k) = self.rare.invites.iter().position(|i| i.host == peer && i.sent) {
                if failed {
                    self.invite_unreachable(ctx, tree, k);
                }
            }
            return;
        }
        if self.share.as_ref().is_some_and(|s| s.active.iter().any(|i| i.host == peer)) {
            // A host of our share: only a connect that failed tells (a link that opened
            // delivered the invitation, and the host left the share then).
            if failed {
                self.share_unreachable(ctx, tree, peer);
            }
            return;
        }
        if let Some(k) = self.rare.invites.iter().position(|i| i.host == peer) {
            // A link that opened and closed again delivered the invitation; only a connect
            // that failed means no client runs there.
            if failed {
                self.invite_unreachable(ctx, tree, k);
            }
            return;
        }
        if self.rare.dismantle.is_some() {
            return;
        }
        if related {
            self.report_up(ctx, tree, ControlMsg::Disconnected { node: peer, related });
        } else if failed && self.ctrl.is_some() && tree.peers().contains(&peer) {
            // A known member we could not reach: hearsay, which the root checks (its own failed
            // connect is evidence enough). Not queued when there is no way up.
            if let Some(up) = self.up(tree) {
                self.scrub_census(peer);
                self.send(ctx, up, ControlMsg::Disconnected { node: peer, related: tree.is_root() });
            }
        }
    }

    pub(super) fn invite_unreachable(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, k: usize) {
        let inv = &mut self.rare.invites[k];
        if inv.launching {
            // A dial during our launch failed: the client is not up yet. The launch decides.
            return;
        }
        if ctx.cfg.launch_at_root && !inv.launched {
            inv.launched = true;
            inv.launching = true;
            ctx.io.out.push_back(Output::Launch { host: inv.host });
        } else {
            let host = inv.host;
            self.rare.invites.remove(k);
            self.report_up(ctx, tree, ControlMsg::InviteFailed { host });
            self.pump_invites(ctx);
        }
    }

    /// The link to `peer` failed, or a new connection `replaced` it: live output in flight on
    /// it may be missing, and each stream says so through the way up, at once unless the way up
    /// is that failed link (then once there is one).
    fn output_link_lost(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, peer: NodeId, replaced: bool) {
        let up = self.up(tree).filter(|u| replaced || *u != peer);
        for k in 0..self.jobs.len() {
            if self.jobs[k].up.link_lost(&peer) && up.is_some() {
                self.pump_up(ctx, tree, k);
            }
        }
    }

    /// A link to `peer` opened: an invitation to it was delivered and frees its slot.
    pub fn on_link_up(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, peer: NodeId, replaced: bool) {
        if replaced && Some(peer) == self.ctrl && self.ctrl_linked {
            // A new connection from the controller replaced the one we had (a controller
            // process that came back at the same address before its old connection's reset
            // reached us): what was in flight on the old one is gone. Its `SetCtrl` then counts
            // as a reconnect, and everything held is sent again.
            self.ctrl_linked = false;
        }
        if replaced {
            self.output_link_lost(ctx, tree, peer, true);
        }
        if let Some(s) = self.share.as_mut() {
            if let Some(k) = s.active.iter().position(|i| i.host == peer) {
                // Our invitation (and the host's part of our share) reached it: its slot is free.
                s.active.swap_remove(k);
                self.pump_share(ctx, tree);
                return;
            }
        }
        let Some(inv) = self.rare.invites.iter_mut().find(|i| i.host == peer && i.sent && !i.connected) else { return };
        inv.connected = true;
        self.pump_invites(ctx);
    }

    /// The driver launched a client on `host` (at the root), or failed to.
    pub fn on_launched(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, host: NodeId, ok: bool) {
        let Some(k) = self.rare.invites.iter().position(|i| i.host == host) else {
            self.share_launched(ctx, tree, host, ok);
            return;
        };
        self.rare.invites[k].launching = false;
        match (ok, self.ctrl) {
            (true, Some(ctrl)) => self.send_invitation(ctx, host, ctrl),
            _ => {
                self.rare.invites.remove(k);
                self.report_up(ctx, tree, ControlMsg::InviteFailed { host });
                self.pump_invites(ctx);
            }
        }
    }

    /// Re-send everything held (after a reconfiguration), and what waited for a way up.
    pub(super) fn resend_all(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree) {
        let Some(up) = self.up(tree) else { return };
        // Results and barrier entries first: a link still connecting queues a bounded number of
        // frames, and reports matter less (the controller's census recovers membership).
        for k in 0..self.jobs.len() {
            let j = &mut self.jobs[k];
            j.unsent = j.held.clone();
            j.told_complete = false;
            // A new way up: results and blobs go again from what is held, live output goes on.
            // (Live output in flight on a link that failed was said missing when it failed.)
            j.up.way_up_changed(up, |p| ctx.io.conns.state(p) == Some(crate::conn::LinkState::Open));
            j.up.sent_blobs.clear();
            j.up.queue.retain(|i| matches!(i, UpItem::Output { .. }));
            if let Some(x) = j.xfer.as_mut().filter(|x| !x.complete() && x.asked) {
                // A new parent: it feeds us from where we are.
                x.ask(ctx, j.spec.job, up);
            }
            self.flush_job(ctx, tree, k);
        }
        for k in 0..self.rare.barriers.len() {
            let b = &mut self.rare.barriers[k];
            b.unsent = b.held.clone();
            self.flush_barrier(ctx, tree, k);
        }
        while let Some(r) = self.rare.reports.pop_front() {
            self.send(ctx, up, r);
        }
    }

    pub fn on_control(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, from: NodeId, msg: ControlMsg) {
        match msg {
            // A member is never the controller: naming one so is bad input, and obeying it
            // would make the node send to itself.
            ControlMsg::SetCtrl { ctrl } | ControlMsg::SetPeer { ctrl, .. } if ctrl == self.me => {
                ctx.io.stats.commands_rejected += 1;
                ctx.event(Event::CommandRejected(from));
            }
            ControlMsg::SetCtrl { ctrl } => self.on_set_ctrl(ctx, tree, from, ctrl),
            ControlMsg::SetPeer { host, ctrl } => self.on_set_peer(ctx, tree, from, host, ctrl),
            ControlMsg::Joined { node, build } => {
                if tree.is_root() {
                    self.rare.invites.retain(|i| i.host != node);
                    self.pump_invites(ctx);
                }
                self.pass_up(ctx, tree, from, ControlMsg::Joined { node, build });
            }
            ControlMsg::InviteFailed { host } => self.pass_up(ctx, tree, from, ControlMsg::InviteFailed { host }),
            ControlMsg::Share { hosts, fanout } => self.on_share(ctx, tree, from, hosts.0, fanout),
            ControlMsg::Disconnected { node, related } => {
                if tree.is_root() && !related && node != self.me {
                    // Hearsay (or the controller asking): check before telling the controller.
                    let known = self.rare.verifying.iter().any(|v| v.0 == node) || self.rare.to_check.contains(&node);
                    if !known && self.rare.to_check.len() < MAX_CHECKS_WAITING {
                        self.rare.to_check.push_back(node);
                        self.check_next(ctx);
                    }
                } else if tree.is_root() && node != self.me {
                    // A parent's or child's report, passed on unchecked (`related` false toward
                    // the controller means "not checked by the root"): the controller asks
                    // for a check when it may be stale.
                    self.pass_up(ctx, tree, from, ControlMsg::Disconnected { node, related: false });
                } else if node != self.me {
                    self.pass_up(ctx, tree, from, ControlMsg::Disconnected { node, related });
                }
            }
            ControlMsg::GetStatus => {
                // A node on its way back into the tree counts as present: it was not lost.
                let joined = matches!(tree.state(), TreeState::Joined | TreeState::Joining);
                if joined {
                    // A root checks on us: if it is another tree's (we were left out of its
                    // census), probe it, and the two trees merge (see `crate::tree`).
                    let _ = tree.add_peers(ctx, &[from]);
                    tree.probe_peer(ctx, from);
                }
                self.send(ctx, from, ControlMsg::Status { joined })
            }
            ControlMsg::Status { joined } => {
                if let Some(k) = self.rare.verifying.iter().position(|v| v.0 == from) {
                    self.rare.verifying.swap_remove(k);
                    ctx.release(&from);
                    self.check_next(ctx);
                    if !joined {
                        self.report_up(ctx, tree, ControlMsg::Disconnected { node: from, related: true });
                    }
                }
            }
            ControlMsg::Forget { nodes } => {
                if !self.command_ok(ctx, tree, from) {
                    return;
                }
                tree.forget(&nodes);
                self.rare.invites.retain(|i| !nodes.contains(&i.host));
                self.pump_invites(ctx);
                self.flood(ctx, tree, &Message::Control(ControlMsg::Forget { nodes }));
            }
            ControlMsg::Disconnect if tree.state() == TreeState::Idle && self.ctrl == Some(from) => {
                // Not in the tree (its maintenance script failed): the controller lets it go.
                self.exit(ctx, tree);
            }
            ControlMsg::Disconnect => {
                if !self.command_ok(ctx, tree, from) {
                    return;
                }
                self.start_dismantle(ctx, tree);
            }
            ControlMsg::Maintenance { script } => {
                // From the controller (to a root, or to the host it invites directly), or, to an
                // idle client, from an inviter just before its SetPeer (checked there).
                let idle = tree.state() == TreeState::Idle && self.rare.maint.is_none();
                if script.len() <= crate::wire::MAX_SCRIPT && (idle || self.ctrl == Some(from)) {
                    self.rare.script = Some((script.into(), from));
                } else {
                    ctx.io.stats.commands_rejected += 1;
                    ctx.event(Event::CommandRejected(from));
                }
            }
            ControlMsg::Census => {
                // Only the controller asks, and only the root counts.
                if tree.is_root() && self.ctrl == Some(from) {
                    self.start_census(ctx, tree);
                }
            }
            ControlMsg::Linger { ms } => {
                // From the controller, or from our parent passing it down.
                if self.ctrl != Some(from) && tree.parent() != Some(from) {
                    ctx.io.stats.commands_rejected += 1;
                    ctx.event(Event::CommandRejected(from));
                    return;
                }
                let linger = core::time::Duration::from_millis(ms);
                if self.linger != Some(linger) {
                    self.linger = Some(linger);
                    self.flood(ctx, tree, &Message::Control(ControlMsg::Linger { ms }));
                }
            }
            // Only the controller takes these.
            ControlMsg::SetRoot { .. } | ControlMsg::Participants { .. } | ControlMsg::MaintenanceFailed { .. } => {}
        }
    }

    /// Start waiting status checks while fewer than [`MAX_STATUS_CHECKS`] are under way: each
    /// asks the node (`GetStatus`); no answer within twice the connect timeout, or a link that
    /// fails, means it is gone. (With none waiting, `rare` is only read: an idle node stays
    /// without one.)
    pub(super) fn check_next(&mut self, ctx: &mut Ctx<'_>) {
        while self.rare.verifying.len() < MAX_STATUS_CHECKS && !self.rare.to_check.is_empty() {
            let Some(node) = self.rare.to_check.pop_front() else { break };
            self.rare.verifying.push((node, ctx.now + ctx.cfg.connect_timeout * 2));
            self.send(ctx, node, ControlMsg::GetStatus);
        }
    }

    /// A report travelling up: passed toward the controller, unless it came from above.
    pub(super) fn pass_up(&mut self, ctx: &mut Ctx<'_>, tree: &Tree, from: NodeId, msg: ControlMsg) {
        if self.is_above(tree, from) {
            return;
        }
        self.report_up(ctx, tree, msg);
    }

    pub(super) fn command_ok(&mut self, ctx: &mut Ctx<'_>, tree: &Tree, from: NodeId) -> bool {
        if self.is_above(tree, from) {
            return true;
        }
        ctx.io.stats.commands_rejected += 1;
        ctx.event(Event::CommandRejected(from));
        false
    }

    pub(super) fn flood(&self, ctx: &mut Ctx<'_>, tree: &Tree, msg: &Message) {
        let Ok(frame) = ctx.io.pool.encode(msg, ctx.cfg.max_frame) else { return };
        for &c in tree.children() {
            ctx.send_frame(c, frame.clone());
        }
    }

    pub(super) fn on_set_ctrl(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, from: NodeId, ctrl: NodeId) {
        if from == ctrl && tree.state() == TreeState::Idle {
            // The controller looks for its tree through us, but we are in none (a client that
            // restarted, after an upgrade or a crash): say so, and it invites us again.
            // The link stays: the invitation that follows comes on it.
            self.send(ctx, ctrl, ControlMsg::Disconnected { node: self.me, related: true });
            return;
        }
        let changed = self.ctrl != Some(ctrl);
        self.ctrl = Some(ctrl);
        if from == ctrl {
            // The controller itself.
            if tree.is_root() {
                // It is there: no lingering.
                self.rare.orphaned = None;
                let reconnect = !self.ctrl_linked || changed;
                self.link_ctrl(ctx, ctrl);
                self.send(ctx, ctrl, ControlMsg::SetRoot { root: self.me });
                if reconnect {
                    self.start_census(ctx, tree);
                    self.resend_all(ctx, tree);
                }
            } else if let Some(p) = tree.parent().filter(|_| tree.state() == TreeState::Joined) {
                // Not the root: pass it up; the root answers.
                self.send(ctx, p, ControlMsg::SetCtrl { ctrl });
                ctx.release(&from);
            }
            if changed {
                self.flood(ctx, tree, &Message::Control(ControlMsg::SetCtrl { ctrl }));
            }
            return;
        }
        if tree.parent() == Some(from) {
            if changed {
                self.flood(ctx, tree, &Message::Control(ControlMsg::SetCtrl { ctrl }));
            }
            return;
        }
        // From below: on its way up to the root.
        if tree.is_root() {
            if !self.ctrl_linked || changed {
                // The controller comes back to us through a member: it may have missed changes.
                self.send(ctx, ctrl, ControlMsg::SetRoot { root: self.me });
                self.link_ctrl(ctx, ctrl);
                self.start_census(ctx, tree);
                self.resend_all(ctx, tree);
            } else {
                // The controller asks a member where its root is, so it does not know us, whatever
                // our link says: our `SetRoot` was lost (sent into a partition, say, that healed
                // since). Say it again; its acknowledgements then fetch what it missed.
                self.send(ctx, ctrl, ControlMsg::SetRoot { root: self.me });
            }
        } else if let Some(p) = tree.parent().filter(|_| tree.state() == TreeState::Joined) {
            self.send(ctx, p, ControlMsg::SetCtrl { ctrl });
        }
        if changed {
            self.flood(ctx, tree, &Message::Control(ControlMsg::SetCtrl { ctrl }));
        }
    }

    pub(super) fn on_set_peer(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, from: NodeId, host: NodeId, ctrl: NodeId) {
        if host == self.me {
            // An invitation for us: join through the sender, or found the tree if the controller
            // itself asks.
            self.ctrl = Some(ctrl);
            match tree.state() {
                TreeState::Idle if self.rare.maint.is_some() => {} // joins once its script succeeds
                TreeState::Idle => {
                    self.announce = true;
                    let boot = (from != ctrl).then_some(from);
                    // Only the inviter's own script runs: one sent on another link is dropped.
                    if self.rare.script.as_ref().is_some_and(|(_, by)| *by != from) {
                        self.rare.script = None;
                    }
                    // So is a share's part from anyone but the inviter (tree launch).
                    if self.share.as_ref().is_some_and(|s| s.by.is_some_and(|by| by != from)) {
                        self.share = None;
                    }
                    if let Some((script, _)) = self.rare.script.clone() {
                        self.run_maintenance(ctx, &script, boot);
                    } else {
                        // Founding a tree is reported as BecameRoot, which tells the controller.
                        let _ = tree.start(ctx, boot.as_slice());
                    }
                }
                // Already a member: say so (the controller may have thought us gone), and keep
                // the inviter as a peer. Only a root forwards invitations, so an inviter that is
                // not our root is the root of another tree, which the controller sees and we do
                // not (a fragment left by failures, that none of its probes met): probe it now,
                // and the two trees merge (see `crate::tree`).
                TreeState::Joined | TreeState::Joining => {
                    if from != ctrl {
                        let _ = tree.add_peers(ctx, &[from]);
                        tree.probe_peer(ctx, from);
                    }
                    self.report_up(ctx, tree, ControlMsg::Joined { node: self.me, build: ctx.cfg.build });
                }
                TreeState::Left => {}
            }
            return;
        }
        // An invitation to forward: the controller asks, the root forwards. A node that is not
        // the root (the controller's view is stale) passes it up.
        if !tree.is_root() {
            if let Some(up) = self.up(tree).filter(|_| Some(from) == self.ctrl || tree.children().contains(&from)) {
                self.send(ctx, up, ControlMsg::SetPeer { host, ctrl });
            }
            return;
        }
        // The root forwards the controller's invitations (a root that does not know its
        // controller yet takes the sender's word that it is), or those a child passes up.
        let from_ctrl = self.ctrl.map_or(from == ctrl, |c| c == from);
        if !from_ctrl && !tree.children().contains(&from) {
            ctx.io.stats.commands_rejected += 1;
            ctx.event(Event::CommandRejected(from));
            return;
        }
        if tree.children().contains(&host) {
            self.send(ctx, from, ControlMsg::Joined { node: host, build: 0 });
            return;
        }
        match self.rare.invites.iter_mut().find(|i| i.host == host) {
            // Asked again (a new root, or a relaunched client): send it again.
            Some(inv) if inv.sent => self.send_invitation(ctx, host, ctrl),
            Some(_) => {}
            None => {
                if self.rare.invites.len() >= ctx.cfg.max_invitations {
                    self.send(ctx, from, ControlMsg::InviteFailed { host });
                    return;
                }
                let expires = ctx.now + ctx.cfg.invitation_expiry;
                self.rare.invites.push(Invite {
                    host,
                    launched: false,
                    launching: false,
                    expires,
                    sent: false,
                    connected: false,
                });
            }
        }
        self.pump_invites(ctx);
    }

    /// Invite `host`: the maintenance script first, if there is one, then `SetPeer`.
    pub(super) fn send_invitation(&self, ctx: &mut Ctx<'_>, host: NodeId, ctrl: NodeId) {
        if let Some((script, _)) = &self.rare.script {
            self.send(ctx, host, ControlMsg::Maintenance { script: script.to_string() });
        }
        self.send(ctx, host, ControlMsg::SetPeer { host, ctrl });
    }

    /// Start the maintenance script before joining (through `boot`, or founding the tree).
    pub(super) fn run_maintenance(&mut self, ctx: &mut Ctx<'_>, script: &str, boot: Option<NodeId>) {
        let timeout = ctx.cfg.maintenance_timeout;
        let argv = vec!["/bin/sh".to_string(), "-c".to_string(), script.to_string()];
        let spec = RunSpec {
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            ..RunSpec::new(MAINT_JOB, JobKind::Command, Target::All, argv)
        };
        self.rare.maint = Some(Maint { boot, deadline: ctx.now + timeout, output: Vec::new() });
        ctx.io.out.push_back(Output::Spawn { job: MAINT_JOB, spec: Rc::new(spec) });
    }

    /// The maintenance script ended: join if it succeeded, else tell the controller and stay
    /// out of the tree.
    pub(super) fn maintenance_done(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, status: ExitStatus) {
        let Some(m) = self.rare.maint.take() else { return };
        if status == ExitStatus::Exited(0) {
            if tree.state() == TreeState::Idle {
                let _ = tree.start(ctx, m.boot.as_slice());
            }
            return;
        }
        self.announce = false;
        if let Some(ctrl) = self.ctrl {
            let msg = ControlMsg::MaintenanceFailed { node: self.me, status, output: m.output };
            self.send(ctx, ctrl, msg);
        }
    }

    /// Send waiting invitations while fewer than [`invite_slots`] are in flight.
    pub(super) fn pump_invites(&mut self, ctx: &mut Ctx<'_>) {
        let Some(ctrl) = self.ctrl else { return };
        let mut active = self.rare.invites.iter().filter(|i| i.sent && !i.connected).count();
        let slots = invite_slots(ctx.cfg);
        for k in 0..self.rare.invites.len() {
            if active >= slots {
                break;
            }
            if !self.rare.invites[k].sent {
                self.rare.invites[k].sent = true;
                active += 1;
                let host = self.rare.invites[k].host;
                self.send_invitation(ctx, host, ctrl);
            }
        }
    }
}

/// Tree launch at a member (see [`crate::Config::tree_launch`] and the module docs).
impl Control {
    /// A share of hosts to launch and invite: from the controller at any time, or, before we
    /// join, from the member that launched us (its part, kept only if its invitation follows).
    /// Hosts beyond [`MAX_SHARE`] go back to the controller at once.
    pub(super) fn on_share(
        &mut self,
        ctx: &mut Ctx<'_>,
        tree: &mut Tree,
        from: NodeId,
        hosts: Vec<NodeId>,
        fanout: u16,
    ) {
        let from_ctrl = self.ctrl == Some(from);
        if !from_ctrl && (tree.state() != TreeState::Idle || self.rare.maint.is_some()) {
            ctx.io.stats.commands_rejected += 1;
            ctx.event(Event::CommandRejected(from));
            return;
        }
        let me = self.me;
        let share = self.share.get_or_insert_with(Box::default);
        share.fanout = usize::from(fanout.max(1));
        if !from_ctrl {
            share.by = Some(from);
        }
        let mut over = Vec::new();
        for h in hosts.into_iter().filter(|h| *h != me) {
            if share.todo.len() < MAX_SHARE {
                share.todo.push_back(h);
            } else {
                over.push(h);
            }
        }
        for host in over {
            self.report_up(ctx, tree, ControlMsg::InviteFailed { host });
        }
        self.pump_share(ctx, tree);
    }

    /// Start hosts of our share while fewer than its fan-out are under way: invite each (a
    /// client may run there already); one that does not answer is launched
    /// ([`Control::share_unreachable`]). Only a member (joined, or the root) that knows its
    /// controller does this; the others wait.
    pub(super) fn pump_share(&mut self, ctx: &mut Ctx<'_>, tree: &Tree) {
        let Some(ctrl) = self.ctrl else { return };
        let member = tree.is_root() || tree.state() == TreeState::Joined;
        if !member || self.rare.dismantle.is_some() || self.exited {
            return;
        }
        let Some(s) = self.share.as_mut() else { return };
        let mut start: SmallVec<[NodeId; 8]> = SmallVec::new();
        while s.active.len() < s.fanout {
            let Some(host) = s.todo.pop_front() else { break };
            if s.active.iter().any(|i| i.host == host) {
                continue;
            }
            if ctx.io.conns.state(&host) != Some(crate::conn::LinkState::Open) {
                // Under way until its link opens (no event comes for a link open already).
                let expires = ctx.now + ctx.cfg.invitation_expiry;
                s.active.push(ShareInvite { host, launched: false, launching: false, expires, portion: Vec::new() });
            }
            start.push(host);
        }
        if s.todo.is_empty() && s.active.is_empty() {
            self.share = None;
        }
        for host in start {
            self.send_invitation(ctx, host, ctrl);
        }
    }

    /// No client answered at `host`, a host of our share: launch one, or, if we did already,
    /// give it back to the controller.
    fn share_unreachable(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, host: NodeId) {
        let Some(s) = self.share.as_mut() else { return };
        let Some(inv) = s.active.iter_mut().find(|i| i.host == host) else { return };
        if inv.launching {
            // A dial during our launch failed (a probe, say): the client is not up yet, and
            // giving the host back now would have the controller launch it a second time.
            return;
        }
        if !inv.launched {
            inv.launched = true;
            inv.launching = true;
            ctx.io.out.push_back(Output::Launch { host });
        } else {
            self.share_failed(ctx, tree, host);
        }
    }

    /// The driver launched a client on `host` of our share, or could not: invite the new client,
    /// handing it a part of our share (see below), or give the host back to the controller.
    fn share_launched(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, host: NodeId, ok: bool) {
        let Some(ctrl) = self.ctrl else { return };
        let Some(s) = self.share.as_mut() else { return };
        let Some(k) = s.active.iter().position(|i| i.host == host && i.launched) else { return };
        s.active[k].launching = false;
        if !ok {
            self.share_failed(ctx, tree, host);
            return;
        }
        // Its part: an even split of what is left between it, the other hosts under way and
        // us, so the launches fan out down the tree; at most `MAX_LIST`, the most a message
        // carries. Taken from the end: we go on from the front.
        let n = (s.todo.len() / (s.active.len() + 1)).min(crate::wire::MAX_LIST);
        let at = s.todo.len() - n;
        let portion: Vec<NodeId> = s.todo.drain(at..).collect();
        s.active[k].portion = portion.clone();
        if !portion.is_empty() {
            let fanout = u16::try_from(s.fanout).unwrap_or(u16::MAX);
            let hosts = crate::wire::List(portion);
            self.send(ctx, host, ControlMsg::Share { hosts, fanout });
        }
        self.send_invitation(ctx, host, ctrl);
    }

    /// We could not launch or invite `host` of our share: its part comes back to us, and the
    /// host goes back to the controller, which tries it itself.
    fn share_failed(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree, host: NodeId) {
        let Some(s) = self.share.as_mut() else { return };
        let Some(k) = s.active.iter().position(|i| i.host == host) else { return };
        let inv = s.active.swap_remove(k);
        s.todo.extend(inv.portion);
        self.report_up(ctx, tree, ControlMsg::InviteFailed { host });
        self.pump_share(ctx, tree);
    }

    /// Hosts of our share under way past their expiry go back to the controller.
    pub(super) fn share_timeout(&mut self, ctx: &mut Ctx<'_>, tree: &mut Tree) {
        let now = ctx.now;
        let expired: SmallVec<[NodeId; 4]> = match &self.share {
            Some(s) => s.active.iter().filter(|i| i.expires <= now).map(|i| i.host).collect(),
            None => return,
        };
        for host in expired {
            self.share_failed(ctx, tree, host);
        }
    }
}
