//! Job processes for `Output::Spawn` / `Output::Signal`.
//!
//! Each job runs in a process group of its own (`process_group(0)`), with stdin from
//! `/dev/null` and stdout and stderr on non-blocking pipes registered with the event loop. What
//! the pipes carry goes to the node as `ProcessEvent::Output` chunks, stdout and stderr apart
//! (at most [`READ_CHUNK`] bytes each). When the node's window up is full it asks for a pause
//! ([`Jobs::set_reading`]): the pipes are not read until it asks again, so the process blocks
//! in `write` (at most [`READ_CHUNK`] × 16 bytes per pipe were read after the last pause the
//! node could ask for: one turn's reads). Exits are collected without
//! SIGCHLD: while jobs run, [`Jobs::poll`] calls `try_wait` every [`REAP_EVERY`]. The exit is
//! reported once the process was reaped and both pipes reached their end, or [`EXIT_GRACE`]
//! after the reap if a background grandchild still holds a pipe open (the pipes are then
//! dropped). `Signal` kills the whole group with SIGKILL. Every child is reaped: at
//! [`Jobs::kill_all`] (and on drop) the remaining groups are killed and waited for.
//!
//! **A job dies with its client.** Each job's process gets a parent-death signal (SIGKILL when
//! the client dies, however it dies); the processes it started are killed by the next client on
//! the address, which finds their group in the job record ([`crate::record`], fed from
//! [`Jobs::groups`]).
//!
//! **Barriers.** Each job also gets one end of a Unix socket pair, inherited as the descriptor
//! named by the environment variable [`BARRIER_FD_ENV`] (with [`PLUSH_ENV`], the path of this
//! plush binary, and [`NODE_ENV`], the node's address): a process enters barrier NAME by
//! writing `NAME\n` on it (`plush barrier NAME` does) and goes on when the same line comes
//! back; `!NAME\n` comes back when the node refused (too many barriers, a name too long). A
//! line longer than [`MAX_BARRIER_LINE`] closes the socket. At most [`MAX_WAITING`] barriers
//! wait per job; more are refused.
//!
//! Bound: the node runs at most `Config::max_jobs` jobs at once, so this table holds at most
//! that many entries plus those killed and not yet reaped. The read buffer ([`READ_CHUNK`]
//! bytes) and the table's memory are freed once no job is left.

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use plush_core::wire::ExitStatus;
use plush_core::ProcessEvent;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant as StdInstant};

/// Largest output chunk handed to the node at once.
pub const READ_CHUNK: usize = 64 << 10;
/// How often running jobs are checked for an exit.
pub const REAP_EVERY: Duration = Duration::from_millis(20);
/// How long after a job's process exited its pipes may stay open (held by a grandchild)
/// before the exit is reported regardless.
pub const EXIT_GRACE: Duration = Duration::from_millis(200);
/// The environment variable naming a job's barrier descriptor.
pub const BARRIER_FD_ENV: &str = "PLUSH_BARRIER_FD";
/// The environment variable holding the path of the plush binary the client runs.
pub const PLUSH_ENV: &str = "PLUSH";
/// The environment variable holding the node's address (`ip:port`).
pub const NODE_ENV: &str = "PLUSH_NODE";
/// Longest request line on a barrier socket: a barrier name and its newline.
pub const MAX_BARRIER_LINE: usize = plush_core::control::MAX_NAME + 1;
/// Barriers one job may wait in at once.
pub const MAX_WAITING: usize = 8;

/// Reads per pipe per readiness event; a pipe that still has data is read again next turn.
const READS_PER_EVENT: usize = 16;

enum Pipe {
    Out(ChildStdout),
    Err(ChildStderr),
}

impl Pipe {
    fn fd(&self) -> i32 {
        match self {
            Pipe::Out(p) => p.as_raw_fd(),
            Pipe::Err(p) => p.as_raw_fd(),
        }
    }
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Pipe::Out(p) => p.read(buf),
            Pipe::Err(p) => p.read(buf),
        }
    }
}

/// The client's end of a job's barrier socket.
struct Ctl {
    token: Token,
    sock: UnixStream,
    /// A request line not complete yet.
    partial: Vec<u8>,
    /// Barriers the process waits in.
    waiting: Vec<String>,
}

struct ProcessJob {
    job: u64,
    child: Child,
    pipes: [Option<(Token, Pipe)>; 2],
    ctl: Option<Ctl>,
    status: Option<ExitStatus>,
    reaped_at: Option<StdInstant>,
    /// The process's start time in clock ticks since boot (0: unknown), for the job record.
    start: u64,
    /// The node asked not to read the pipes for now.
    paused: bool,
}

/// The running jobs of one node.
#[derive(Default)]
pub struct Jobs {
    jobs: Vec<ProcessJob>,
    next_reap: Option<StdInstant>,
    /// Pipes that may hold more data (their read loop stopped early).
    again: Vec<Token>,
    buf: Vec<u8>,
    /// The environment every job gets besides its own: the plush binary and the node.
    base_env: Vec<(String, String)>,
    /// Barriers processes asked to enter, for the driver to hand to the node.
    pub barrier_requests: Vec<String>,
    /// Changes whenever a job is added or removed (see [`Jobs::generation`]).
    generation: u64,
}

fn status_of(s: std::process::ExitStatus) -> ExitStatus {
    match (s.code(), s.signal()) {
        (Some(c), _) => ExitStatus::Exited(c),
        (None, Some(sig)) => ExitStatus::Signaled(sig),
        // Neither a code nor a signal (a stopped process is not reported by try_wait).
        (None, None) => ExitStatus::Exited(-1),
    }
}

impl Jobs {
    /// No jobs yet; every job will get `base_env` in its environment.
    pub fn with_env(base_env: Vec<(String, String)>) -> Jobs {
        let mut jobs = Jobs::default();
        jobs.base_env = base_env;
        jobs
    }

    /// Start a job. Failures are reported as an exit with `SpawnFailed` through `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        &mut self,
        registry: &Registry,
        next_token: &mut usize,
        job: u64,
        argv: &[String],
        env: &[(String, String)],
        cwd: Option<&str>,
        out: &mut VecDeque<ProcessEvent>,
    ) -> Result<(), String> {
        let Some((prog, args)) = argv.split_first() else {
            out.push_back(ProcessEvent::Exit { job, status: ExitStatus::SpawnFailed });
            return Err("empty command".into());
        };
        let mut cmd = Command::new(prog);
        cmd.envs(self.base_env.iter().map(|(k, v)| (k, v)));
        cmd.args(args).envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).stdout(Stdio::piped());
        cmd.stderr(Stdio::piped()).process_group(0);
        // The process dies with this client; what it starts is left to the job record.
        crate::sys::die_with_parent(&mut cmd);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        // The barrier socket: the child's end is inherited (close-on-exec cleared just for this
        // spawn; the driver is single-threaded, so no other spawn sees it); ours is watched.
        // Without one (out of descriptors) the job still runs, without barriers.
        let pair =
            UnixStream::pair().ok().filter(|(_, theirs)| crate::sys::set_cloexec(theirs.as_raw_fd(), false).is_ok());
        if let Some((_, theirs)) = &pair {
            cmd.env(BARRIER_FD_ENV, theirs.as_raw_fd().to_string());
        }
        let spawned = cmd.spawn();
        let ours = pair.map(|(ours, _theirs)| ours);
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                out.push_back(ProcessEvent::Exit { job, status: ExitStatus::SpawnFailed });
                return Err(format!("cannot start {prog:?}: {e}"));
            }
        };
        let mut pipes: [Option<(Token, Pipe)>; 2] = [None, None];
        let found = [child.stdout.take().map(Pipe::Out), child.stderr.take().map(Pipe::Err)];
        for (slot, pipe) in pipes.iter_mut().zip(found) {
            let Some(pipe) = pipe else { continue };
            let token = Token(*next_token);
            *next_token += 1;
            let fd = pipe.fd();
            let ok = crate::sys::set_nonblocking(fd)
                .and_then(|()| registry.register(&mut SourceFd(&fd), token, Interest::READABLE));
            if let Err(e) = ok {
                // Cannot watch it: kill what started and report the job as not started.
                let _ = crate::sys::kill_group(child.id(), libc::SIGKILL);
                let _ = child.wait();
                for (_, p) in pipes.iter().flatten() {
                    let _ = registry.deregister(&mut SourceFd(&p.fd()));
                }
                out.push_back(ProcessEvent::Exit { job, status: ExitStatus::SpawnFailed });
                return Err(format!("cannot watch the output of {prog:?}: {e}"));
            }
            *slot = Some((token, pipe));
        }
        let ctl = ours.and_then(|sock| {
            let token = Token(*next_token);
            *next_token += 1;
            let fd = sock.as_raw_fd();
            let ok = sock.set_nonblocking(true).is_ok()
                && registry.register(&mut SourceFd(&fd), token, Interest::READABLE).is_ok();
            ok.then(|| Ctl { token, sock, partial: Vec::new(), waiting: Vec::new() })
        });
        // The leader's start time tells its group from a later one under a reused pid.
        let start = crate::record::proc_stat(child.id()).map_or(0, |(_, _, start)| start);
        self.jobs.push(ProcessJob { job, child, pipes, ctl, status: None, reaped_at: None, start, paused: false });
        self.generation += 1;
        self.next_reap.get_or_insert(StdInstant::now() + REAP_EVERY);
        Ok(())
    }

    /// Kill the job's process group. Its exit is still reported when reaped (the node, which
    /// recorded the result already, ignores it).
    pub fn signal(&mut self, job: u64) {
        for j in self.jobs.iter_mut().filter(|j| j.job == job && j.status.is_none()) {
            let _ = crate::sys::kill_group(j.child.id(), libc::SIGKILL);
        }
    }

    /// Stop (`on: false`) or resume reading `job`'s pipes (`Output::ReadOutput`). Resuming
    /// reads them again next turn (readiness is edge-triggered: it would not tell again).
    pub fn set_reading(&mut self, job: u64, on: bool) {
        for j in self.jobs.iter_mut().filter(|j| j.job == job) {
            j.paused = !on;
            if on {
                self.again.extend(j.pipes.iter().flatten().map(|(t, _)| *t));
            }
        }
    }

    /// Whether `token` is one of our pipes; if so, read it (output goes to `out`).
    pub fn on_readable(&mut self, registry: &Registry, token: Token, out: &mut VecDeque<ProcessEvent>) -> bool {
        if let Some(k) = self.jobs.iter().position(|j| j.ctl.as_ref().is_some_and(|c| c.token == token)) {
            self.read_ctl(registry, k);
            return true;
        }
        let Some(k) = self.jobs.iter().position(|j| j.pipes.iter().flatten().any(|(t, _)| *t == token)) else {
            return false;
        };
        self.read_pipe(registry, k, token, out);
        true
    }

    /// Read barrier requests from job `k`'s socket; a bad one (too long, not UTF-8) or the end
    /// of the stream closes it.
    fn read_ctl(&mut self, registry: &Registry, k: usize) {
        let Some(ctl) = self.jobs[k].ctl.as_mut() else { return };
        let mut buf = [0u8; 256];
        let mut close = false;
        for _ in 0..READS_PER_EVENT {
            match ctl.sock.read(&mut buf) {
                Ok(0) => {
                    close = true;
                    break;
                }
                Ok(n) => {
                    for &b in &buf[..n] {
                        if b != b'\n' {
                            ctl.partial.push(b);
                            if ctl.partial.len() >= MAX_BARRIER_LINE {
                                close = true;
                                break;
                            }
                            continue;
                        }
                        let line = std::mem::take(&mut ctl.partial);
                        match String::from_utf8(line) {
                            Ok(name) if !name.is_empty() && ctl.waiting.len() < MAX_WAITING => {
                                if !ctl.waiting.contains(&name) {
                                    ctl.waiting.push(name.clone());
                                }
                                self.barrier_requests.push(name);
                            }
                            Ok(name) => {
                                let _ = ctl.sock.write_all(format!("!{name}\n").as_bytes());
                            }
                            Err(_) => close = true,
                        }
                        if close {
                            break;
                        }
                    }
                    if close {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    close = true;
                    break;
                }
            }
        }
        if close {
            if let Some(c) = self.jobs[k].ctl.take() {
                let _ = registry.deregister(&mut SourceFd(&c.sock.as_raw_fd()));
            }
        }
    }

    /// Barrier `name` was released (`ok`) or refused: answer every process waiting in it.
    /// A process that does not read its answers loses them (the write does not block).
    pub fn answer_barrier(&mut self, name: &str, ok: bool) {
        let line = if ok { format!("{name}\n") } else { format!("!{name}\n") };
        for c in self.jobs.iter_mut().filter_map(|j| j.ctl.as_mut()) {
            if let Some(p) = c.waiting.iter().position(|w| w == name) {
                c.waiting.swap_remove(p);
                let _ = c.sock.write_all(line.as_bytes());
            }
        }
    }

    fn read_pipe(&mut self, registry: &Registry, k: usize, token: Token, out: &mut VecDeque<ProcessEvent>) {
        if self.buf.len() < READ_CHUNK {
            self.buf.resize(READ_CHUNK, 0);
        }
        let j = &mut self.jobs[k];
        if j.paused {
            // Read again when resumed.
            return;
        }
        let Some(slot) = j.pipes.iter_mut().find(|p| p.as_ref().is_some_and(|(t, _)| *t == token)) else { return };
        for _ in 0..READS_PER_EVENT {
            let Some((_, pipe)) = slot.as_mut() else { return };
            let err = matches!(pipe, Pipe::Err(_));
            match pipe.read(&mut self.buf) {
                Ok(0) => {
                    // End of stream: stop watching the pipe.
                    if let Some((_, pipe)) = slot.take() {
                        let _ = registry.deregister(&mut SourceFd(&pipe.fd()));
                    }
                    return;
                }
                Ok(n) => out.push_back(ProcessEvent::Output { job: j.job, bytes: self.buf[..n].to_vec(), err }),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    if let Some((_, pipe)) = slot.take() {
                        let _ = registry.deregister(&mut SourceFd(&pipe.fd()));
                    }
                    return;
                }
            }
        }
        // The read budget ran out with data still coming: read again next turn (edge-triggered
        // readiness would not tell us again).
        self.again.push(token);
    }

    /// Reap exits and report the finished jobs through `out`. Also re-reads pipes whose read
    /// budget ran out.
    pub fn poll(&mut self, registry: &Registry, now: StdInstant, out: &mut VecDeque<ProcessEvent>) {
        for token in std::mem::take(&mut self.again) {
            if let Some(k) = self.jobs.iter().position(|j| j.pipes.iter().flatten().any(|(t, _)| *t == token)) {
                self.read_pipe(registry, k, token, out);
            }
        }
        if self.next_reap.is_none_or(|t| t > now) {
            return;
        }
        let mut k = 0;
        while k < self.jobs.len() {
            let j = &mut self.jobs[k];
            if j.status.is_none() {
                if let Ok(Some(s)) = j.child.try_wait() {
                    j.status = Some(status_of(s));
                    j.reaped_at = Some(now);
                }
            }
            let pipes_open = j.pipes.iter().any(Option::is_some);
            if j.paused && pipes_open && j.reaped_at.is_some() {
                // Output waits in the pipes for the window: the grace starts once read again.
                j.reaped_at = Some(now);
            }
            let grace_over = j.reaped_at.is_some_and(|t| now >= t + EXIT_GRACE);
            if let Some(status) = j.status.filter(|_| !pipes_open || grace_over) {
                for (_, p) in j.pipes.iter_mut().filter_map(Option::take) {
                    let _ = registry.deregister(&mut SourceFd(&p.fd()));
                }
                if let Some(c) = j.ctl.take() {
                    let _ = registry.deregister(&mut SourceFd(&c.sock.as_raw_fd()));
                }
                out.push_back(ProcessEvent::Exit { job: j.job, status });
                self.jobs.swap_remove(k);
                self.generation += 1;
                continue;
            }
            k += 1;
        }
        self.next_reap = if self.jobs.is_empty() { None } else { Some(now + REAP_EVERY) };
        if self.jobs.is_empty() && self.again.is_empty() {
            // Idle: hold no read buffer and no table sized for a burst of jobs.
            self.buf = Vec::new();
            self.jobs = Vec::new();
        }
    }

    /// When [`Jobs::poll`] wants to run next.
    pub fn next_wake(&self) -> Option<StdInstant> {
        if !self.again.is_empty() {
            return Some(StdInstant::now());
        }
        self.next_reap
    }

    /// Jobs whose process was started and not yet reported.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// The process groups of the jobs whose process has not been reaped, for the job record
    /// (see [`crate::record`]).
    pub fn groups(&self) -> Vec<crate::record::Group> {
        self.jobs
            .iter()
            .filter(|j| j.status.is_none())
            .map(|j| crate::record::Group { job: j.job, pgid: j.child.id(), start: j.start })
            .collect()
    }

    /// A number that changes whenever a job starts or is removed: [`Jobs::groups`] need only be
    /// read again when it did.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether no job runs.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Kill every job's process group and reap them all (at exit).
    pub fn kill_all(&mut self) {
        for j in &mut self.jobs {
            if j.status.is_none() {
                let _ = crate::sys::kill_group(j.child.id(), libc::SIGKILL);
                let _ = j.child.wait();
            }
        }
        self.jobs.clear();
        self.generation += 1;
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// From a job's process: enter barrier `name` through the socket the client gave the job (see
/// the module docs) and wait for its release, at most `timeout` when given. `Err` says why not
/// (refused, the client went away, timed out, or not inside a Plush job).
pub fn enter_barrier(name: &str, timeout: Option<Duration>) -> Result<(), String> {
    use std::io::{BufRead, BufReader};
    if name.is_empty() || name.len() >= MAX_BARRIER_LINE || name.contains('\n') {
        return Err(format!("a barrier name is 1 to {} bytes, without newlines", MAX_BARRIER_LINE - 1));
    }
    let fd = std::env::var(BARRIER_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{BARRIER_FD_ENV} is not set: run this from a job that Plush started"))?;
    let mut sock = crate::sys::inherited_unix_stream(fd).map_err(|e| format!("{BARRIER_FD_ENV}={fd}: {e}"))?;
    sock.set_read_timeout(timeout).map_err(|e| format!("cannot set the timeout: {e}"))?;
    sock.write_all(format!("{name}\n").as_bytes()).map_err(|e| format!("cannot reach the client: {e}"))?;
    let mut reader = BufReader::new(sock);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Err("the client went away before the release".into()),
            Ok(_) => {
                let got = line.trim_end_matches('\n');
                if got == name {
                    return Ok(());
                }
                if got.strip_prefix('!') == Some(name) {
                    return Err("refused by the client (too many barriers at once)".into());
                }
                // The answer to another barrier of this job: keep waiting for ours.
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err("timed out before the release".into())
            }
            Err(e) => return Err(format!("cannot read from the client: {e}")),
        }
    }
}
