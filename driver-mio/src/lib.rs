//! # plush-mio
//!
//! Plush on real TCP: one thread, one `mio` event loop, one sans-IO machine from `plush-core`
//! (a client's [`plush_core::Node`] or the user's [`plush_core::Controller`]).
//!
//! Map of the crate:
//! - [`driver`]: the event loop ([`driver::Driver`]): listener, non-blocking connects with a
//!   timeout, the hello and authentication handshake, length-prefixed framing, bounded write
//!   queues, one link per peer, timers, and the dispatch of every core `Output`.
//! - [`auth`]: the pre-shared cluster [`Key`] (0600 key files) and the HMAC-SHA256
//!   challenge/response that follows the hellos.
//! - [`conn`]: one connection's phase, read buffer and write queue.
//! - [`process`]: job processes for `Output::Spawn` / `Output::Signal` (process groups,
//!   non-blocking pipes, reaping without SIGCHLD).
//! - [`launcher`]: the launchers for `Output::Launch`: local (client processes on loopback
//!   addresses), ssh (the system OpenSSH client, copying the binary where it is missing) and a
//!   user command template; at most 50 starting at once.
//! - [`transfer`]: storage for files pushed through the tree (`Output::Push*`): temporary
//!   file beside the destination, digest check, atomic rename; relays keep an unlinked spool.
//! - [`client`]: the client process (`plush client --listen ADDR --key-file F`), its fd budget.
//! - [`cluster`]: [`Cluster`], the controller side as a library: start, add hosts, run a
//!   command everywhere, gather merged results, dismantle.
//! - `sys`: the few libc calls std lacks (rlimit, group kill, fcntl): the only `unsafe`.
//!
//! Every queue and buffer has its bound in its doc comment. Nothing that comes from outside the
//! process (network bytes, files, the environment) is unwrapped.
#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod cluster;
pub mod conn;
pub mod driver;
pub mod launcher;
pub mod process;
mod sys;
pub mod transfer;

pub use auth::Key;
pub use client::ClientOptions;
pub use cluster::{
    BarrierInfo, Cluster, ClusterConfig, DismantleOutcome, HostInfo, JobSpec, Notice, PushJob, ResultGroup, RunOutcome,
};
pub use driver::{DriverConfig, DriverStats};
pub use launcher::{LaunchMethod, SshLaunch, READY_PREFIX};

/// Whether a process with this pid exists (not yet reaped counts).
pub fn process_exists(pid: u32) -> bool {
    sys::pid_exists(pid)
}

/// Raise the soft limit on open files to the hard limit; returns the soft limit in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    sys::raise_nofile_limit()
}
