//! # plush-mio
//!
//! Plush on real TCP: one thread, one `mio` event loop, one sans-IO machine from `plush-core`
//! (a client's [`plush_core::Node`] or the user's [`plush_core::Controller`]).
//!
//! Map of the crate:
//! - [`driver`]: the event loop ([`driver::Driver`]): listener, non-blocking connects with a
//!   timeout, the hellos and the secure handshake (bounded per source and in total),
//!   length-prefixed framing inside sealed records, bounded write queues, one link per peer,
//!   timers, and the dispatch of every core `Output`.
//! - [`secure`]: the secure channel: a Noise `NNpsk0` handshake (the `snow` crate) with the
//!   cluster key as PSK, then AES-256-GCM records with counter nonces.
//! - [`auth`]: the pre-shared cluster [`Key`] (0600 key files; weak keys refused).
//! - [`conn`]: one connection's phase, read buffers, write queue and sealing.
//! - [`process`]: job processes for `Output::Spawn` / `Output::Signal` (process groups,
//!   non-blocking pipes, reaping without SIGCHLD).
//! - [`launcher`]: the launchers for `Output::Launch`: local (client processes on loopback
//!   addresses), ssh (the system OpenSSH client, copying the binary where it is missing) and a
//!   user command template; at most 50 starting at once.
//! - [`transfer`]: storage for files pushed through the tree (`Output::Push*`): temporary
//!   file beside the destination, digest check, atomic rename; relays keep an unlinked spool.
//! - [`record`]: the job record a client keeps on its host (its jobs' process groups, the
//!   jobs it started), read back by the next client on the same address.
//! - [`client`]: the client process (`plush client --listen ADDR --key-file F`), its fd budget.
//! - [`cluster`]: [`Cluster`], the controller side as a library: start, add hosts, run a
//!   command everywhere, gather merged results, dismantle.
//! - `sys`: the few libc calls std lacks (rlimit, group kill, fcntl): the only `unsafe`.
//!
//! Every queue and buffer has its bound in its doc comment. Nothing that comes from outside the
//! process (network bytes, files, the environment) is unwrapped.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod auth;
pub mod client;
pub mod cluster;
pub mod conn;
pub mod driver;
pub mod launcher;
pub mod process;
pub mod record;
pub mod secure;
pub mod spool;
// The libc calls std lacks; each `unsafe` block there says why it is sound.
#[allow(unsafe_code)]
mod sys;
pub mod transfer;

pub use auth::Key;
pub use client::{ClientOptions, MemberLauncher};
pub use cluster::probe;
pub use cluster::{
    BarrierInfo, Cluster, ClusterConfig, DismantleOutcome, HostInfo, JobSpec, PushJob, ResultGroup, RunOutcome,
    Streamed,
};
pub use driver::{DriverConfig, DriverStats};
pub use launcher::{client_builds, ClientBuild, KeySource, LaunchMethod, SshLaunch, READY_PREFIX};
pub use spool::{Body, SpilledOutput, SPILL_MEMORY};

/// The environment that lets a job run again on a host whose client was relaunched while it
/// ran there (`PLUSH_RETRY_LOST=1`; see `plush_core::control::RETRY_LOST_ENV`): add it to a
/// [`JobSpec`]'s `env`. Without it a job runs at most once per host.
pub fn retry_lost_env() -> Vec<(String, String)> {
    vec![(plush_core::control::RETRY_LOST_ENV.to_owned(), "1".to_owned())]
}

/// Whether a process with this pid exists (not yet reaped counts).
pub fn process_exists(pid: u32) -> bool {
    sys::pid_exists(pid)
}

/// Kill process `pid` (SIGKILL): a client an earlier controller started, which this one did
/// not (and cannot reap).
pub fn kill_process(pid: u32) -> std::io::Result<()> {
    sys::kill_pid(pid, libc::SIGKILL)
}

/// Give SIGINT, SIGTERM and SIGHUP back to whoever handles them next (the CLI, which cancels
/// and dismantles on them): the controller's key file is then removed by the ordinary exit
/// that follows, not by the handler that removes it when a signal kills the process.
pub fn release_exit_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        sys::release_signal(sig);
    }
}

/// A blocking TCP connection to `to` from the address `source` (any port), within `timeout`:
/// what a test or harness needs to speak to a client from an address of its choosing (the
/// driver dials so, from its own address).
pub fn connect_from(
    source: std::net::IpAddr,
    to: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<std::net::TcpStream> {
    let s = sys::connect_from(source, to)?;
    let end = std::time::Instant::now() + timeout;
    // Connected once the peer address is known (or an error is pending).
    loop {
        if let Some(e) = s.take_error()? {
            return Err(e);
        }
        match s.peer_addr() {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected && std::time::Instant::now() < end => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => return Err(std::io::ErrorKind::TimedOut.into()),
            Err(e) => return Err(e),
        }
    }
    s.set_nonblocking(false)?;
    Ok(s)
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
