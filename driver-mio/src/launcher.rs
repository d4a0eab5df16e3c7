//! The local launcher: carries out `Output::Launch { host }` by starting a client process on
//! this machine, listening on the host's address (a `127.x.y.z` address from
//! `NodeId::loopback`, typically).
//!
//! The command is `<program> <args...> --listen <host addr> --key-file <file>` (by default
//! `<current exe> client ...`). The key travels in a 0600 file, never on a command line. A
//! launch counts as done when the client prints its ready line ([`READY_PREFIX`]) on stdout,
//! which it does once its listener is bound: the controller's next invitation then finds it.
//! It fails when the client exits first, or stays silent for [`Launcher::ready_timeout`] (it is
//! then killed). The client's stderr is inherited.
//!
//! Bounds: at most [`Launcher::max_in_flight`] launches (default [`MAX_IN_FLIGHT`]) wait for
//! their ready line at once; more wait in a queue, which holds at most one entry per host the
//! controller is inviting (its invitations are bounded by `Config::max_invitations`). The table
//! of started clients holds one entry per launch until the client exits and is reaped. Every
//! child is killed and reaped at [`Launcher::shutdown`] or on drop: none outlives its launcher
//! as a zombie.

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use plush_core::NodeId;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant as StdInstant};

/// Launches waiting for their ready line at once, by default.
pub const MAX_IN_FLIGHT: usize = 50;
/// What a client prints on stdout once it listens: this prefix, then its address.
pub const READY_PREFIX: &str = "plush-client listening ";
/// Longest ready line read; a longer line is a failed launch.
const MAX_LINE: usize = 256;
/// How often started clients are checked for an exit.
const REAP_EVERY: Duration = Duration::from_millis(100);

/// What a finished launch reports to the machine.
pub type LaunchResult = Result<(), &'static str>;

struct Started {
    host: NodeId,
    child: Child,
    /// While waiting for the ready line.
    stdout: Option<(Token, ChildStdout)>,
    line: Vec<u8>,
    deadline: StdInstant,
    exited: bool,
}

/// Starts clients as local processes. See the module docs.
pub struct Launcher {
    program: PathBuf,
    args: Vec<OsString>,
    key_file: PathBuf,
    /// Launches waiting for their ready line at once.
    pub max_in_flight: usize,
    /// How long a client may take to print its ready line.
    pub ready_timeout: Duration,
    queue: VecDeque<NodeId>,
    started: Vec<Started>,
    next_reap: StdInstant,
    /// Launches that could not even be started, reported at the next poll.
    failed: Vec<(NodeId, &'static str)>,
}

impl Launcher {
    /// A launcher running `program args... --listen ADDR --key-file KEY_FILE`.
    pub fn new(program: PathBuf, args: Vec<OsString>, key_file: PathBuf) -> Launcher {
        Launcher {
            program,
            args,
            key_file,
            max_in_flight: MAX_IN_FLIGHT,
            ready_timeout: Duration::from_secs(10),
            queue: VecDeque::new(),
            started: Vec::new(),
            next_reap: StdInstant::now(),
            failed: Vec::new(),
        }
    }

    /// `<current exe> client`.
    pub fn current_exe(key_file: PathBuf) -> io::Result<Launcher> {
        Ok(Launcher::new(std::env::current_exe()?, vec!["client".into()], key_file))
    }

    fn in_flight(&self) -> usize {
        self.started.iter().filter(|s| s.stdout.is_some()).count()
    }

    /// Ask for a client on `host`; it starts now or once a slot frees.
    pub fn launch(&mut self, registry: &Registry, next_token: &mut usize, host: NodeId) {
        if !self.queue.contains(&host) && !self.started.iter().any(|s| s.host == host && s.stdout.is_some()) {
            self.queue.push_back(host);
        }
        self.start_queued(registry, next_token);
    }

    fn start_queued(&mut self, registry: &Registry, next_token: &mut usize) {
        while self.in_flight() < self.max_in_flight {
            let Some(host) = self.queue.pop_front() else { return };
            if let Err(why) = self.start(registry, next_token, host) {
                self.failed.push((host, why));
            }
        }
    }

    fn start(&mut self, registry: &Registry, next_token: &mut usize, host: NodeId) -> Result<(), &'static str> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .arg("--listen")
            .arg(host.addr().to_string())
            .arg("--key-file")
            .arg(&self.key_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("plush-mio launcher: cannot start {}: {e}", self.program.display());
                return Err("the client program could not be started");
            }
        };
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the client's stdout could not be read");
        };
        let token = Token(*next_token);
        *next_token += 1;
        let fd = stdout.as_raw_fd();
        let ok = crate::sys::set_nonblocking(fd)
            .and_then(|()| registry.register(&mut SourceFd(&fd), token, Interest::READABLE));
        if ok.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the client's stdout could not be watched");
        }
        self.started.push(Started {
            host,
            child,
            stdout: Some((token, stdout)),
            line: Vec::new(),
            deadline: StdInstant::now() + self.ready_timeout,
            exited: false,
        });
        Ok(())
    }

    /// Whether `token` is a launch's stdout; if so, read it and report through `done`.
    pub fn on_readable(&mut self, registry: &Registry, token: Token, done: &mut Vec<(NodeId, LaunchResult)>) -> bool {
        let Some(s) = self.started.iter_mut().find(|s| s.stdout.as_ref().is_some_and(|(t, _)| *t == token)) else {
            return false;
        };
        let mut buf = [0u8; MAX_LINE];
        let verdict: Option<LaunchResult> = loop {
            let Some((_, out)) = s.stdout.as_mut() else { break None };
            match out.read(&mut buf) {
                Ok(0) => break Some(Err("the client exited before listening")),
                Ok(n) => {
                    s.line.extend_from_slice(&buf[..n]);
                    if let Some(end) = s.line.iter().position(|&b| b == b'\n') {
                        let line = &s.line[..end];
                        break Some(if line.starts_with(READY_PREFIX.as_bytes()) {
                            Ok(())
                        } else {
                            Err("the client printed something other than its ready line")
                        });
                    }
                    if s.line.len() > MAX_LINE {
                        break Some(Err("the client printed something other than its ready line"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Some(Err("the client's stdout failed")),
            }
        };
        if let Some(v) = verdict {
            if let Some((_, out)) = s.stdout.take() {
                let _ = registry.deregister(&mut SourceFd(&out.as_raw_fd()));
            }
            s.line = Vec::new();
            if v.is_err() {
                // Whatever state it is in, it is no client of ours.
                let _ = s.child.kill();
            }
            done.push((s.host, v));
        }
        true
    }

    /// Time out silent launches, reap exited clients, start queued launches.
    pub fn poll(
        &mut self,
        registry: &Registry,
        next_token: &mut usize,
        now: StdInstant,
        done: &mut Vec<(NodeId, LaunchResult)>,
    ) {
        done.extend(self.failed.drain(..).map(|(h, why)| (h, Err(why))));
        for s in self.started.iter_mut().filter(|s| s.stdout.is_some() && s.deadline <= now) {
            if let Some((_, out)) = s.stdout.take() {
                let _ = registry.deregister(&mut SourceFd(&out.as_raw_fd()));
            }
            let _ = s.child.kill();
            done.push((s.host, Err("the client did not start listening in time")));
        }
        if now >= self.next_reap {
            self.next_reap = now + REAP_EVERY;
            for s in self.started.iter_mut().filter(|s| !s.exited) {
                if let Ok(Some(_)) = s.child.try_wait() {
                    s.exited = true;
                }
            }
            // An exited client that is not waiting for its line is done with.
            self.started.retain(|s| !(s.exited && s.stdout.is_none()));
        }
        self.start_queued(registry, next_token);
        done.extend(self.failed.drain(..).map(|(h, why)| (h, Err(why))));
    }

    /// When [`Launcher::poll`] wants to run next.
    pub fn next_wake(&self) -> Option<StdInstant> {
        let deadline = self.started.iter().filter(|s| s.stdout.is_some()).map(|s| s.deadline).min();
        let reap = (!self.started.is_empty()).then_some(self.next_reap);
        let failed = (!self.failed.is_empty()).then(StdInstant::now);
        [deadline, reap, failed].into_iter().flatten().min()
    }

    /// Process ids of the clients started and not yet reaped.
    pub fn pids(&self) -> Vec<u32> {
        self.started.iter().filter(|s| !s.exited).map(|s| s.child.id()).collect()
    }

    /// (host, process id) of the clients started and not yet reaped.
    pub fn clients(&self) -> Vec<(NodeId, u32)> {
        self.started.iter().filter(|s| !s.exited).map(|s| (s.host, s.child.id())).collect()
    }

    /// Clients started and not yet reaped.
    pub fn running(&self) -> usize {
        self.started.iter().filter(|s| !s.exited).count()
    }

    /// Reap clients that exited; returns how many still run.
    pub fn reap(&mut self) -> usize {
        for s in self.started.iter_mut().filter(|s| !s.exited) {
            if let Ok(Some(_)) = s.child.try_wait() {
                s.exited = true;
            }
        }
        self.running()
    }

    /// Kill every client still running and reap them all. Returns how many had to be killed.
    pub fn shutdown(&mut self) -> usize {
        let mut killed = 0;
        for s in self.started.iter_mut().filter(|s| !s.exited) {
            if let Ok(Some(_)) = s.child.try_wait() {
                s.exited = true;
                continue;
            }
            let _ = s.child.kill();
            let _ = s.child.wait();
            s.exited = true;
            killed += 1;
        }
        self.queue.clear();
        self.started.clear();
        killed
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}
