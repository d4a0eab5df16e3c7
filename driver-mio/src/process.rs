//! Job processes for `Output::Spawn` / `Output::Signal`.
//!
//! Each job runs in a process group of its own (`process_group(0)`), with stdin from
//! `/dev/null` and stdout and stderr on non-blocking pipes registered with the event loop. What
//! the pipes carry goes to the node as `ProcessEvent::Output` chunks (at most
//! [`READ_CHUNK`] bytes each; the node caps what it keeps at `Config::max_output`, the rest is
//! read and discarded so the process never blocks on a full pipe). Exits are collected without
//! SIGCHLD: while jobs run, [`Jobs::poll`] calls `try_wait` every [`REAP_EVERY`]. The exit is
//! reported once the process was reaped and both pipes reached their end, or [`EXIT_GRACE`]
//! after the reap if a background grandchild still holds a pipe open (the pipes are then
//! dropped). `Signal` kills the whole group with SIGKILL. Every child is reaped: at
//! [`Jobs::kill_all`] (and on drop) the remaining groups are killed and waited for.
//!
//! Bound: the node runs at most `Config::max_jobs` jobs at once, so this table holds at most
//! that many entries plus those killed and not yet reaped. The read buffer ([`READ_CHUNK`]
//! bytes) and the table's memory are freed once no job is left.

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use plush_core::wire::ExitStatus;
use plush_core::ProcessEvent;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
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

struct Job {
    job: u64,
    child: Child,
    pipes: [Option<(Token, Pipe)>; 2],
    status: Option<ExitStatus>,
    reaped_at: Option<StdInstant>,
}

/// The running jobs of one node.
#[derive(Default)]
pub struct Jobs {
    jobs: Vec<Job>,
    next_reap: Option<StdInstant>,
    /// Pipes that may hold more data (their read loop stopped early).
    again: Vec<Token>,
    buf: Vec<u8>,
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
        cmd.args(args).envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).stdout(Stdio::piped());
        cmd.stderr(Stdio::piped()).process_group(0);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = match cmd.spawn() {
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
        self.jobs.push(Job { job, child, pipes, status: None, reaped_at: None });
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

    /// Whether `token` is one of our pipes; if so, read it (output goes to `out`).
    pub fn on_readable(&mut self, registry: &Registry, token: Token, out: &mut VecDeque<ProcessEvent>) -> bool {
        let Some(k) = self.jobs.iter().position(|j| j.pipes.iter().flatten().any(|(t, _)| *t == token)) else {
            return false;
        };
        self.read_pipe(registry, k, token, out);
        true
    }

    fn read_pipe(&mut self, registry: &Registry, k: usize, token: Token, out: &mut VecDeque<ProcessEvent>) {
        if self.buf.len() < READ_CHUNK {
            self.buf.resize(READ_CHUNK, 0);
        }
        let j = &mut self.jobs[k];
        let Some(slot) = j.pipes.iter_mut().find(|p| p.as_ref().is_some_and(|(t, _)| *t == token)) else { return };
        for _ in 0..READS_PER_EVENT {
            let Some((_, pipe)) = slot.as_mut() else { return };
            match pipe.read(&mut self.buf) {
                Ok(0) => {
                    // End of stream: stop watching the pipe.
                    if let Some((_, pipe)) = slot.take() {
                        let _ = registry.deregister(&mut SourceFd(&pipe.fd()));
                    }
                    return;
                }
                Ok(n) => out.push_back(ProcessEvent::Output { job: j.job, bytes: self.buf[..n].to_vec() }),
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
            let grace_over = j.reaped_at.is_some_and(|t| now >= t + EXIT_GRACE);
            if let Some(status) = j.status.filter(|_| !pipes_open || grace_over) {
                for (_, p) in j.pipes.iter_mut().filter_map(Option::take) {
                    let _ = registry.deregister(&mut SourceFd(&p.fd()));
                }
                out.push_back(ProcessEvent::Exit { job: j.job, status });
                self.jobs.swap_remove(k);
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
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        self.kill_all();
    }
}
