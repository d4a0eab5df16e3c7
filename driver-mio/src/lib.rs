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
    Streamed,
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

/// This build's version string: the crate version, or what the `PLUSH_VERSION` environment
/// variable said when the binary was built.
///
/// It is read at run time from [`version::TAG`], a fixed 64-byte record (`PLUSH-VERSION:` and
/// the string, NUL-padded) that can be patched in a copy of the binary: that is how the tests
/// make "a client built with another version".
pub fn version() -> String {
    version::read()
}

/// [`version`] as the core's `Config::build`: its FNV-1a hash (never 0).
pub fn build_hash() -> u64 {
    version::hash(&version())
}

pub mod version {
    //! The patchable version record; see [`crate::version`].

    /// The record's length.
    pub const LEN: usize = 64;
    /// The record's first bytes.
    pub const MARKER: &[u8; 14] = b"PLUSH-VERSION:";

    const fn tag(v: &str) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        let mut i = 0;
        while i < MARKER.len() {
            out[i] = MARKER[i];
            i += 1;
        }
        let b = v.as_bytes();
        let mut k = 0;
        while k < b.len() && MARKER.len() + k < LEN {
            out[MARKER.len() + k] = b[k];
            k += 1;
        }
        out
    }

    const VERSION: &str = match option_env!("PLUSH_VERSION") {
        Some(v) => v,
        None => env!("CARGO_PKG_VERSION"),
    };

    /// The record itself. `#[used]` keeps it in the binary; it is read through `black_box`, so
    /// that the compiler cannot fold the read into a constant and a patched copy says what its
    /// bytes say.
    #[used]
    pub static TAG: [u8; LEN] = tag(VERSION);

    pub(crate) fn read() -> String {
        let rec: &[u8; LEN] = std::hint::black_box(&TAG);
        let body = &rec[MARKER.len()..];
        let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
        String::from_utf8_lossy(&body[..end]).into_owned()
    }

    /// FNV-1a of `v`, never 0 (0 means "unknown" to the core).
    pub fn hash(v: &str) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in v.as_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h.max(1)
    }
}
