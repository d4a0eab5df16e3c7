//! The controller's side of membership: invitations sent and paced, hosts that cannot be
//! reached retried or launched, hosts that failed or disconnected. See the protocol in
//! [`crate::control`].

use super::*;
use crate::contract::{HostState, Output};
use crate::id::NodeId;
use crate::time::Instant;
use crate::wire::{ControlMsg, Message};
use std::collections::VecDeque;

/// Where a host launched ahead of its invitation ([`Config::launch_ahead`]) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ahead {
    /// Not launched ahead (or invited since).
    No,
    /// Its launch is under way: nobody invites it until the launch is done.
    Launching,
    /// Launched, waiting for a root to invite it through.
    Ready,
}

impl Controller {
    pub(super) fn unreachable(&mut self, now: Instant, host: NodeId) {
        // Without a root (the first host, invited directly) nobody else can launch it.
        let mut launch_here = !self.cfg.launch_at_root || self.root.is_none();
        let Some(h) = self.host(&host) else { return };
        if h.state != HostState::Invited {
            return;
        }
        if core::mem::take(&mut h.shared) {
            // Tree launch: a member could not launch it from its share. It is ours now: we
            // launch it ourselves, as without tree launch, and invite it through the root.
            self.shared_out -= 1;
            launch_here = true;
        }
        let Some(h) = self.host(&host) else { return };
        if launch_here && !h.launched {
            h.launched = true;
            self.stats.launches += 1;
            self.io.out.push_back(Output::Launch { host });
            let founding = self.root.is_none() && self.counts[HostState::Joined as usize] == 0;
            if self.cfg.launch_ahead && !self.cfg.tree_launch && founding && self.direct == Some(host) {
                self.launch_ahead(now);
            }
        } else {
            self.retry_later(now, host, "no Plush client answers there");
        }
    }

    /// The host could not be reached or launched: try again after a back-off (5 s, doubling, at
    /// most a minute), until it has been tried for [`Config::invitation_expiry`]; then it fails.
    /// A host cut off by a partition thus comes back when the partition heals.
    pub(super) fn retry_later(&mut self, now: Instant, host: NodeId, why: &'static str) {
        let expiry = self.cfg.invitation_expiry;
        let base = self.cfg.join_retry;
        let Some(h) = self.host(&host) else { return };
        if h.first_try.is_some_and(|t| t + expiry <= now) {
            self.fail(now, host, why);
            return;
        }
        h.strikes += 1;
        h.launched = false;
        let wait = (base * (1u32 << (h.strikes - 1).min(4))).min(core::time::Duration::from_secs(60));
        // The reason goes with the state, so that a user waiting on the host sees why.
        self.set_state(now, host, HostState::Disconnected, Some(why));
        self.later.push_back((now + wait, host));
    }

    pub(super) fn disconnected(&mut self, now: Instant, node: NodeId) {
        let window = self.cfg.failed_window;
        let limit = self.cfg.failed_after_disconnects as usize;
        let recheck = self.cfg.recheck_delay;
        let Some(h) = self.host(&node) else { return };
        if h.state != HostState::Joined {
            return;
        }
        h.disconnects.retain(|t| *t + window > now);
        h.disconnects.push(now);
        // Its parent or children may have died with it, unreported: check the tree soon.
        self.census_soon(now, now + recheck);
        let Some(h) = self.host(&node) else { return };
        if h.disconnects.len() >= limit {
            self.fail(now, node, "disconnected too often");
        } else {
            self.set_state(now, node, HostState::Disconnected, None);
            self.requeue(node, false);
        }
    }

    /// Ask the root for a census at `at`, or as soon after it as one per
    /// [`Config::recheck_delay`] allows; one already due stays as it is.
    pub(super) fn census_soon(&mut self, now: Instant, at: Instant) {
        if self.census_at.is_none() {
            let earliest = self.census_asked.map_or(now, |t| t + self.cfg.recheck_delay);
            self.census_at = Some(at.max(earliest));
        }
    }

    pub(super) fn fail(&mut self, now: Instant, host: NodeId, why: &'static str) {
        self.set_state(now, host, HostState::Failed, Some(why));
        self.forget.insert(host);
        self.forget_at.get_or_insert(now + self.cfg.ack_interval);
    }

    /// With no root and no member left (the whole overlay restarted, or died), invitations
    /// that went out through a former root are lost with it; waiting for them would hold the
    /// direct invitation that founds the tree again until they expire, and then fail hosts
    /// that are alive. They go back to the front of the queue instead, without a strike.
    pub(super) fn drop_orphaned_invitations(&mut self, now: Instant) {
        let direct = self.direct.filter(|d| self.host_state(d) == Some(HostState::Invited));
        // (Hosts launched ahead were never invited: they wait for the tree.)
        if self.outstanding - self.ahead <= usize::from(direct.is_some()) {
            return;
        }
        let orphans: Vec<NodeId> = self
            .hosts
            .iter()
            .filter(|h| h.state == HostState::Invited && Some(h.id) != direct && h.ahead == Ahead::No)
            .map(|h| h.id)
            .collect();
        for host in orphans.into_iter().rev() {
            self.set_state(now, host, HostState::Disconnected, None);
            self.queue.push_front(host);
        }
    }

    /// Send the invitation: through the root, or to the host itself when there is no tree yet.
    ///
    /// While a tree exists (a host is joined) but its root is unknown (the root link broke, or
    /// the root changed and has not announced itself yet), the invitation waits: the host stays
    /// `Invited`, and every `Invited` host is invited again through the root once one announces
    /// itself (see `set_root`). Inviting it directly would make it found a tree of its own.
    pub(super) fn invite(&mut self, now: Instant, host: NodeId) {
        let me = self.me;
        let to = match self.root {
            Some(root) => {
                if self.direct == Some(host) {
                    self.direct = None;
                }
                root
            }
            None if self.counts[HostState::Joined as usize] > 0 => return,
            None => {
                self.direct = Some(host);
                self.seek_at.get_or_insert(now + self.cfg.join_retry);
                host
            }
        };
        self.stats.invitations += 1;
        if let (true, Some(script)) = (to == host, self.script.clone()) {
            self.send(now, to, Message::Control(ControlMsg::Maintenance { script }));
        }
        self.send(now, to, Message::Control(ControlMsg::SetPeer { host, ctrl: me }));
    }

    /// `host`, taken from a queue, counts as invited from now on (its expiry timed), if it was
    /// waiting for an invitation (pending or disconnected); `false` for a stale queue entry.
    fn mark_invited(&mut self, now: Instant, host: NodeId) -> bool {
        if !matches!(self.host_state(&host), Some(HostState::Pending | HostState::Disconnected)) {
            return false;
        }
        self.set_state(now, host, HostState::Invited, None);
        self.invited.push_back((host, now));
        true
    }

    /// Invite pending hosts while fewer than `max_invitations` are outstanding.
    pub(super) fn pump(&mut self, now: Instant) {
        if self.later.iter().any(|(t, _)| *t <= now) {
            let (due, wait): (VecDeque<_>, VecDeque<_>) = self.later.drain(..).partition(|(t, _)| *t <= now);
            self.later = wait;
            for (_, host) in due {
                self.requeue(host, true);
            }
        }
        if self.dismantling {
            return;
        }
        let founded = self.counts[HostState::Joined as usize] > 0;
        if self.root.is_none() && !founded {
            self.drop_orphaned_invitations(now);
            if self.ahead > 0 && self.outstanding == self.ahead {
                // The host invited to found the tree failed, and hosts were launched ahead of
                // it: one whose launch is done founds it (invited directly); else the first
                // launch that is done will.
                if let Some(ready) = self.hosts.iter().find(|h| h.ahead == Ahead::Ready).map(|h| h.id) {
                    self.take_ahead(ready);
                    self.invite(now, ready);
                }
                return;
            }
        }
        while self.outstanding - self.shared_out < self.cfg.max_invitations {
            // Without a root, only the first host is invited (directly); the rest wait.
            if self.root.is_none() && (founded || self.outstanding > 0) {
                return;
            }
            let next = if !self.cfg.tree_launch {
                self.queue.pop_front()
            } else if self.root.is_some() || founded {
                // Tree launch: the queue goes out in shares; we invite only our own.
                self.own.pop_front()
            } else {
                self.own.pop_front().or_else(|| self.queue.pop_front())
            };
            let Some(host) = next else { return };
            if self.mark_invited(now, host) {
                self.invite(now, host);
            }
        }
    }
}

/// Launches ahead of the invitation (see [`Config::launch_ahead`]).
impl Controller {
    /// The host invited to found the tree has no client and is being launched: launch the
    /// hosts next in line too, up to [`Config::max_invitations`] outstanding (not with tree
    /// launch, where members launch all but the first). They count as
    /// `Invited`; each is invited once its launch is done (see `handle_launched`).
    pub(super) fn launch_ahead(&mut self, now: Instant) {
        while self.outstanding < self.cfg.max_invitations {
            let Some(host) = self.queue.pop_front() else { return };
            if !self.mark_invited(now, host) {
                continue;
            }
            if let Some(h) = self.host(&host) {
                h.launched = true;
                h.ahead = Ahead::Launching;
            }
            self.ahead += 1;
            self.stats.launches += 1;
            self.stats.launches_ahead += 1;
            self.io.out.push_back(Output::Launch { host });
        }
    }

    /// `host` is no longer launched ahead (its invitation goes out, or its launch ended); it
    /// was what it returns.
    pub(super) fn take_ahead(&mut self, host: NodeId) -> Ahead {
        let Some(h) = self.host(&host) else { return Ahead::No };
        let was = core::mem::replace(&mut h.ahead, Ahead::No);
        if was != Ahead::No {
            self.ahead -= 1;
        }
        was
    }

    /// Whether a host launched ahead must wait for the tree: it has no root yet, and another
    /// host's direct invitation is out to found it.
    pub(super) fn founding_elsewhere(&self, host: NodeId) -> bool {
        self.root.is_none()
            && self.counts[HostState::Joined as usize] == 0
            && self.direct.is_some_and(|d| d != host && self.host_state(&d) == Some(HostState::Invited))
    }
}

/// Tree launch (see [`Config::tree_launch`]).
impl Controller {
    /// A host to invite again (after a back-off, or a disconnect): with tree launch, this
    /// controller does it itself; without, it waits in the queue as any host.
    pub(super) fn requeue(&mut self, host: NodeId, front: bool) {
        let q = if self.cfg.tree_launch { &mut self.own } else { &mut self.queue };
        if front {
            q.push_front(host);
        } else {
            q.push_back(host);
        }
    }

    /// Hand `member` (it joined) a share of the hosts not yet invited: at most
    /// [`crate::wire::MAX_LIST`], in the queue's order. They are `Invited` from now on; the
    /// member launches and invites them, or gives them back (`InviteFailed`).
    pub(super) fn give_share(&mut self, now: Instant, member: NodeId) {
        if self.dismantling {
            return;
        }
        let mut hosts = Vec::new();
        while hosts.len() < crate::wire::MAX_LIST {
            let Some(host) = self.queue.pop_front() else { break };
            if host != member && matches!(self.host_state(&host), Some(HostState::Pending | HostState::Disconnected)) {
                hosts.push(host);
            }
        }
        if hosts.is_empty() {
            return;
        }
        for &host in &hosts {
            self.set_state(now, host, HostState::Invited, None);
            self.invited.push_back((host, now));
            if let Some(h) = self.host(&host) {
                h.shared = true;
            }
            self.shared_out += 1;
        }
        self.stats.shares += 1;
        self.stats.shared_hosts += hosts.len() as u64;
        let fanout = u16::try_from(self.cfg.launch_fanout.max(1)).unwrap_or(u16::MAX);
        let hosts = crate::wire::List(hosts);
        self.send(now, member, Message::Control(ControlMsg::Share { hosts, fanout }));
        self.share_at = (!self.queue.is_empty()).then_some(now + self.cfg.join_retry);
    }

    /// Hosts are still to be shared and no share went out for a while: hand one to a random
    /// joined member (the scan of the hosts happens at most once per [`Config::join_retry`]).
    pub(super) fn share_to_anyone(&mut self, now: Instant) {
        if self.queue.is_empty() || self.dismantling {
            return;
        }
        let members: Vec<NodeId> = self.hosts.iter().filter(|h| h.state == HostState::Joined).map(|h| h.id).collect();
        if members.is_empty() {
            self.share_at = Some(now + self.cfg.join_retry);
            return;
        }
        let k = rand::RngExt::random_range(&mut self.rng, 0..members.len());
        self.give_share(now, members[k]);
    }
}
