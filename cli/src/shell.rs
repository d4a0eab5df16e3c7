//! `plush shell`: an interactive controller that keeps the overlay up between commands.
//!
//! It reads one command a line, from a terminal (with line editing and history, through
//! `rustyline`) or from a pipe (`printf 'run hostname\n' | plush shell --local 50`). While it
//! waits for a line the event loop keeps running (a reader thread hands lines over), so the
//! tree stays joined and heartbeats flow. Every command takes `--json`, and `plush shell
//! --json` makes it the default: then each command prints JSON lines, one document each.
//!
//! Commands (`help` lists them): `run [-w HOSTS] [--timeout S] [--stream] [--bg] CMD...`,
//! `push [-w HOSTS] [--timeout S] [--mode OCTAL] SRC DEST` (a file through the tree, as `plush
//! push`), `wait [JOB]`, `cancel [JOB]`, `hosts`, `tree`, `invite HOSTS...`, `barrier NAME
//! [--threshold F] [--timeout S]`, `status`, `disconnect` (also `quit`, `exit`, or the end of
//! the input: dismantle and leave). Barrier releases and root changes are announced as they
//! happen. Ctrl-C cancels the command running in the foreground.
//!
//! Exit status: that of the last `run`, `push` or `wait` (as `plush run`'s and `plush push`'s),
//! 2 when the last command was not understood (or `push` was given a `SRC` it cannot read),
//! else 0.
//!
//! Bounds: at most [`MAX_BG`] background jobs are listed (the oldest is dropped from the list;
//! the `Cluster` itself forgets jobs beyond `Config::max_jobs`); barriers are bounded by the
//! controller's; the reader thread holds at most one line ahead of the loop.

use crate::run::parse_timeout;
use crate::session::{ms, summary_json, HostArgs, OutputArgs, PrintOpts, Session, INTERRUPTED};
use clap::{Args, Parser};
use plush_core::{HostState, NodeId, Report};
use plush_mio::{JobSpec, PushJob};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

/// Chunk size of `push` (`plush push`'s default).
const PUSH_CHUNK: u32 = 128 << 10;

/// Background jobs listed for `wait`, `cancel` and `status` (`Config::max_jobs`' default).
pub const MAX_BG: usize = 64;

/// Flags of `plush shell`.
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The hosts to start with (none: add them with `invite`).
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Every command prints JSON lines (as if given `--json`).
    #[arg(long)]
    pub json: bool,
}

/// One shell command line, parsed with clap.
#[derive(Debug, Parser)]
#[command(
    name = "",
    no_binary_name = true,
    disable_help_flag = true,
    disable_version_flag = true,
    disable_help_subcommand = true,
    about = "plush shell: the overlay stays up between these commands; each takes --json.",
    override_usage = "COMMAND [ARGS]   (help COMMAND for its flags)"
)]
enum Line {
    /// Run a command on every joined host (or on -w HOSTS) and print the results grouped.
    Run {
        /// Only these hosts (host-set syntax, among the session's).
        #[arg(short = 'w', value_name = "HOSTS")]
        hosts: Vec<String>,
        /// Kill it after SECS seconds.
        #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
        timeout: Option<Duration>,
        /// Print every byte of output as it arrives, `host: line` on the matching fd.
        #[arg(long)]
        stream: bool,
        /// Start it and return at once; `wait` prints its results, `cancel` kills it.
        #[arg(long)]
        bg: bool,
        /// Run it again on a host whose client was relaunched while it ran there (by default
        /// such a host is reported lost during the job).
        #[arg(long)]
        retry_lost: bool,
        /// JSON lines.
        #[arg(long)]
        json: bool,
        /// Output cap and per-host files.
        #[command(flatten)]
        out: OutputArgs,
        /// The command and its arguments.
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Copy a file to every joined host (or to -w HOSTS) through the tree, and print the
    /// results grouped.
    ///
    /// The controller sends the file once, to the root; every host stores it, forwards it to
    /// its children, checks its SHA-256 and renames it into place: DEST, or DEST/NAME when DEST
    /// is a directory there or ends with `/`. A host whose copy failed is named with the error
    /// and left without the file. The status is 0 when every host has the file, 1 when a copy
    /// failed, 255 when a host was unreachable or lost, 2 when SRC cannot be read. Example:
    /// `push ./data.bin /tmp/`.
    Push {
        /// Only these hosts (host-set syntax, among the session's).
        #[arg(short = 'w', value_name = "HOSTS")]
        hosts: Vec<String>,
        /// Give up on hosts that have not stored the file after SECS seconds.
        #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
        timeout: Option<Duration>,
        /// Permission bits of the copies, in octal (e.g. 755) [default: those of SRC].
        #[arg(long, value_name = "OCTAL", value_parser = plush::appfile::parse_mode)]
        mode: Option<u32>,
        /// JSON lines.
        #[arg(long)]
        json: bool,
        /// The file to copy (a regular file on this machine).
        #[arg(value_name = "SRC")]
        src: PathBuf,
        /// Where it goes on each host.
        #[arg(value_name = "DEST")]
        dest: String,
    },
    /// Wait for a background job (the last one by default) and print its results.
    Wait {
        /// The job.
        job: Option<u64>,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Kill a background job (the last one by default) on every host.
    Cancel {
        /// The job.
        job: Option<u64>,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Every host: name, state, parent, depth in the tree, and the client's pid when local.
    Hosts {
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// The tree, drawn as text.
    Tree {
        /// JSON: one object per member with its parent.
        #[arg(long)]
        json: bool,
    },
    /// Invite more hosts (host-set syntax) and wait for them to join.
    Invite {
        /// The hosts.
        #[arg(required = true)]
        hosts: Vec<String>,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Open a barrier: released when every joined host entered it (`plush barrier NAME` from a
    /// job), or after --timeout once --threshold of them did.
    Barrier {
        /// The barrier.
        name: String,
        /// Fraction of hosts (0 to 1) enough for a release after --timeout.
        #[arg(long, default_value_t = 1.0)]
        threshold: f64,
        /// With --threshold: how long to wait for everyone first.
        #[arg(long, value_name = "SECS", value_parser = parse_timeout, default_value = "3600")]
        timeout: Duration,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Hosts by state, the root, the jobs and barriers.
    Status {
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Dismantle the overlay and leave.
    #[command(alias = "quit", alias = "exit")]
    Disconnect {
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// List the commands, or the flags of one.
    Help {
        /// The command.
        command: Option<String>,
    },
}

/// What the reader thread hands over.
enum Input {
    Line(String),
    End,
}

/// Read lines on a thread of their own: from a terminal with rustyline (a prompt once the loop
/// asks for the next line), else from stdin as it comes.
fn reader(ready: mpsc::Receiver<()>, tx: mpsc::SyncSender<Input>) {
    if std::io::stdin().is_terminal() {
        let Ok(mut rl) = rustyline::DefaultEditor::new() else {
            let _ = tx.send(Input::End);
            return;
        };
        while ready.recv().is_ok() {
            match rl.readline("plush> ") {
                Ok(line) => {
                    let _ = rl.add_history_entry(line.as_str());
                    if tx.send(Input::Line(line)).is_err() {
                        return;
                    }
                }
                // Ctrl-C at the prompt: a fresh prompt.
                Err(rustyline::error::ReadlineError::Interrupted) => {
                    if tx.send(Input::Line(String::new())).is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = tx.send(Input::End);
                    return;
                }
            }
        }
    } else {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(Input::Line(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(Input::End);
    }
}

/// The shell's state besides the session.
struct Shell {
    s: Session,
    json: bool,
    /// Background jobs not waited for, oldest first.
    bg: Vec<(u64, String)>,
    /// Barriers opened, in order.
    barriers: Vec<String>,
    status: u8,
}

/// Run `plush shell`.
pub fn run(args: &ShellArgs) -> ExitCode {
    let s = match Session::start(&args.hosts, "shell") {
        Ok(s) => s,
        Err(code) => return ExitCode::from(code),
    };
    let mut sh = Shell { s, json: args.json, bg: Vec::new(), barriers: Vec::new(), status: 0 };
    if sh.s.host_count() > 0 {
        let took = sh.s.join();
        sh.announce_join(took);
    }
    prompt_loop(sh)
}

/// Go on with a shell session whose controller died, through `s`, attached to its overlay
/// (`plush attach`): the prompt comes back.
/// `jobs`: the session's jobs whose results were not printed (taken over by the attaching
/// controller), with their command lines: they become background jobs (`wait` prints them).
pub fn resume(s: Session, json: bool, jobs: Vec<(u64, String)>) -> ExitCode {
    let joined = s.c.count(HostState::Joined);
    let mut sh = Shell { s, json, bg: Vec::new(), barriers: Vec::new(), status: 0 };
    let text = format!("attached: {joined} hosts joined");
    sh.out(false, &text, json!({"attached": true, "joined": joined}));
    for (job, command) in jobs.into_iter().rev().take(MAX_BG).rev() {
        let text = format!("job {job} taken over, in the background (`wait {job}` prints it): {command}");
        sh.out(false, &text, json!({"job": job, "resumed": true}));
        sh.bg.push((job, command));
    }
    prompt_loop(sh)
}

/// Read and run commands until the input ends or `disconnect`.
fn prompt_loop(mut sh: Shell) -> ExitCode {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (tx, rx) = mpsc::sync_channel(1);
    // The reader may block in a read when the shell leaves: it is not joined.
    std::thread::spawn(move || reader(ready_rx, tx));
    let _ = ready_tx.send(());
    loop {
        match rx.try_recv() {
            Ok(Input::Line(line)) => {
                let leave = sh.execute(&line);
                sh.notices();
                if leave {
                    break;
                }
                let _ = ready_tx.send(());
            }
            Ok(Input::End) | Err(mpsc::TryRecvError::Disconnected) => {
                sh.disconnect(sh.json);
                break;
            }
            Err(mpsc::TryRecvError::Empty) => {
                if let Err(e) = sh.s.c.pump(Duration::from_millis(20)) {
                    eprintln!("plush shell: the event loop failed: {e}");
                    break;
                }
                sh.notices();
            }
        }
    }
    ExitCode::from(sh.status)
}

impl Shell {
    fn out(&self, json: bool, text: &str, value: serde_json::Value) {
        let mut out = std::io::stdout().lock();
        if json || self.json {
            let _ = writeln!(out, "{value}");
        } else {
            let _ = writeln!(out, "{text}");
        }
        let _ = out.flush();
    }

    fn announce_join(&mut self, took: Duration) {
        let joined = self.s.c.count(HostState::Joined);
        let n = self.s.host_count();
        let text = format!("joined {joined}/{n} in {:.2} s", took.as_secs_f64());
        self.out(false, &text, json!({"joined": joined, "hosts": n, "build_ms": ms(took)}));
    }

    /// Barrier releases, late entries and root changes, as they happen.
    fn notices(&mut self) {
        for n in self.s.c.take_notices() {
            match n {
                Report::BarrierReleased { name, entered, expected, partial } => {
                    let how = if partial { "partially released" } else { "released" };
                    let text = format!("barrier {name} {how}: {entered}/{expected} entered");
                    let v = json!({"barrier": name, "released": true, "partial": partial, "entered": entered, "expected": expected});
                    self.out(false, &text, v);
                }
                Report::BarrierLate { name, nodes } => {
                    let nodes: Vec<NodeId> = nodes.iter().collect();
                    let text = format!("barrier {name}: late {}", self.s.fold(&nodes));
                    self.out(false, &text, json!({"barrier": name, "late": self.s.fold(&nodes)}));
                }
                Report::RootChanged(root) => {
                    let label = self.s.label(&root);
                    self.out(false, &format!("the root is now {label}"), json!({"root": label}));
                }
                _ => {}
            }
        }
    }

    /// Run one line; true when the shell should leave.
    fn execute(&mut self, line: &str) -> bool {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return false;
        }
        let Some(words) = shlex::split(line) else {
            eprintln!("plush shell: unbalanced quotes in: {line}");
            self.status = 2;
            return false;
        };
        let cmd = match Line::try_parse_from(&words) {
            Ok(c) => c,
            Err(e) => {
                let text = e.render().to_string();
                eprintln!("{}", text.trim_end());
                self.status = if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp) { 0 } else { 2 };
                return false;
            }
        };
        match cmd {
            Line::Run { hosts, timeout, stream, bg, retry_lost, json, out, command } => {
                self.run(&hosts, timeout, stream, bg, retry_lost, json, out, &command)
            }
            Line::Push { hosts, timeout, mode, json, src, dest } => self.push(&hosts, timeout, mode, json, &src, &dest),
            Line::Wait { job, json } => self.wait(job, json),
            Line::Cancel { job, json } => self.cancel(job, json),
            Line::Hosts { json } => self.hosts(json),
            Line::Tree { json } => self.tree(json),
            Line::Invite { hosts, json } => self.invite(&hosts, json),
            Line::Barrier { name, threshold, timeout, json } => self.barrier(&name, threshold, timeout, json),
            Line::Status { json } => self.show_status(json),
            Line::Disconnect { json } => {
                self.disconnect(json);
                return true;
            }
            Line::Help { command } => {
                use clap::CommandFactory;
                let mut c = Line::command();
                let text = match command.as_deref().and_then(|name| c.find_subcommand_mut(name)) {
                    Some(sub) => sub.render_long_help(),
                    None => c.render_help(),
                };
                let _ = writeln!(std::io::stdout(), "{text}");
                self.status = 0;
            }
        }
        false
    }

    /// The hosts `-w` names among the session's (`None`: all); an error is named, status 2.
    fn target(&mut self, cmd: &str, hosts: &[String]) -> Result<Option<Vec<NodeId>>, ()> {
        if hosts.is_empty() {
            return Ok(None);
        }
        match self.s.lookup(hosts) {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                eprintln!("plush shell: {cmd}: {e}");
                self.status = 2;
                Err(())
            }
        }
    }

    fn push(
        &mut self,
        hosts: &[String],
        timeout: Option<Duration>,
        mode: Option<u32>,
        json: bool,
        src: &Path,
        dest: &str,
    ) {
        let size = match crate::push::check_source(src) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("plush shell: push: {e}");
                self.status = 2;
                return;
            }
        };
        let Ok(target) = self.target("push", hosts) else { return };
        let json = json || self.json;
        let sent_before = self.s.c.driver_stats().chunk_bytes_sent;
        let push = PushJob {
            src,
            dest,
            target: target.as_deref(),
            timeout,
            chunk: PUSH_CHUNK,
            mode,
            upgrade: false,
            digest: None,
        };
        let summary = self.s.run_push(push, PrintOpts { json, stream: false, out: OutputArgs::default() });
        let sent = self.s.c.driver_stats().chunk_bytes_sent.saturating_sub(sent_before);
        self.status = if summary.interrupted { INTERRUPTED } else { summary.code };
        let hosts = target.as_ref().map_or(self.s.host_count(), Vec::len);
        if json {
            let extra = [("bytes", json!(size)), ("controller_bytes", json!(sent)), ("push_ms", json!(summary.run_ms))];
            self.out(true, "", summary_json(&summary, hosts, &extra));
        } else {
            let mib = |b: u64| b as f64 / f64::from(1 << 20);
            eprintln!(
                "plush shell: push: {:.1} MiB to {}/{hosts} hosts in {:.2} s; the controller sent {:.1} MiB",
                mib(size),
                summary.ok,
                summary.run_ms as f64 / 1000.0,
                mib(sent)
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        hosts: &[String],
        timeout: Option<Duration>,
        stream: bool,
        bg: bool,
        retry_lost: bool,
        json: bool,
        out: OutputArgs,
        command: &[String],
    ) {
        let Ok(target) = self.target("run", hosts) else { return };
        let argv: Vec<&str> = command.iter().map(String::as_str).collect();
        let env = if retry_lost { plush_mio::retry_lost_env() } else { Vec::new() };
        let spec =
            JobSpec { argv: &argv, target: target.as_deref(), timeout, stream, env: &env, max_output: out.max_output };
        let json = json || self.json;
        if bg {
            // Gathered, not streamed: nobody reads live output until `wait`, and unread live
            // output would hold the hosts' processes in `write`.
            match self.s.c.start_job(JobSpec { stream: false, ..spec }) {
                Ok(job) => {
                    let targeted = target.clone().unwrap_or_else(|| self.s.named.iter().map(|(h, _)| *h).collect());
                    let print =
                        crate::journal::PrintRec { json, stream: false, max_output: out.max_output, title: None };
                    self.s.log_job(job, targeted, print);
                    if self.bg.len() >= MAX_BG {
                        self.bg.remove(0);
                    }
                    self.bg.push((job, command.join(" ")));
                    self.out(json, &format!("job {job} started"), json!({"job": job, "started": true}));
                    self.status = 0;
                }
                Err(e) => {
                    eprintln!("plush shell: run: {e}");
                    self.status = 255;
                }
            }
            return;
        }
        let summary = self.s.run_job(spec, PrintOpts { json, stream, out });
        self.status = if summary.interrupted { INTERRUPTED } else { summary.code };
        if json {
            let line = summary_json(&summary, target.as_ref().map_or(self.s.host_count(), Vec::len), &[]);
            self.out(true, "", line);
        }
    }

    fn pick_bg(&mut self, job: Option<u64>) -> Option<u64> {
        let found = match job {
            Some(j) => self.bg.iter().position(|(b, _)| *b == j),
            None => self.bg.len().checked_sub(1),
        };
        match found {
            Some(k) => Some(self.bg.remove(k).0),
            None => {
                eprintln!("plush shell: no such background job{}", job.map_or(String::new(), |j| format!(" {j}")));
                self.status = 2;
                None
            }
        }
    }

    fn wait(&mut self, job: Option<u64>, json: bool) {
        let Some(job) = self.pick_bg(job) else { return };
        let json = json || self.json;
        let stop = crate::session::interrupt_flag();
        let out = match self.s.c.wait_job(job, |_, _, _| {}, || stop.load(std::sync::atomic::Ordering::Relaxed)) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("plush shell: wait: {e}");
                self.status = 255;
                return;
            }
        };
        let mut groups = out.groups;
        crate::session::sort_groups(&mut groups);
        crate::session::print_groups(&self.s.labels, &groups, json, None);
        self.s.log(&crate::journal::Record::Shown(job), true);
        for h in &out.missing {
            eprintln!("plush: {}: lost (joined, gave no result)", self.s.label(h));
        }
        let restarted =
            crate::session::name_restarted(&mut std::io::stderr().lock(), &self.s.labels, &out.lost, &groups);
        let mut code = crate::session::largest_code(&groups);
        if !out.missing.is_empty() {
            code = crate::session::UNREACHABLE;
        }
        self.status = code;
        if json {
            let ok: usize =
                groups.iter().filter(|g| crate::session::status_text(&g.status).is_none()).map(|g| g.nodes.len()).sum();
            let n: usize = groups.iter().map(|g| g.nodes.len()).sum();
            let lost = out.missing.len() + restarted;
            let v = json!({"summary": {"job": job, "ok": ok, "failed": n - ok - restarted, "lost": lost, "run_ms": ms(out.elapsed), "exit": code}});
            self.out(true, "", v);
        }
    }

    fn cancel(&mut self, job: Option<u64>, json: bool) {
        let Some(job) = self.pick_bg(job) else { return };
        match self.s.c.cancel(job) {
            Ok(()) => {
                // Back in the list: `wait` shows what the hosts reported.
                self.bg.push((job, String::new()));
                self.out(json, &format!("job {job} cancelled"), json!({"job": job, "cancelled": true}));
                self.status = 0;
            }
            Err(e) => {
                eprintln!("plush shell: cancel: {e}");
                self.status = 2;
            }
        }
    }

    /// Every member's parent (asked of the tree) and depth.
    fn topology(&mut self) -> (BTreeMap<NodeId, Option<NodeId>>, BTreeMap<NodeId, usize>) {
        let parents = match self.s.c.topology(Duration::from_secs(5)) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("plush shell: cannot ask the tree: {e}");
                BTreeMap::new()
            }
        };
        let mut depth = BTreeMap::new();
        for &n in parents.keys() {
            // Walk up; a loop (a tree changing under the question) stops at the member count.
            let (mut d, mut at) = (0usize, n);
            while let Some(Some(p)) = parents.get(&at) {
                d += 1;
                at = *p;
                if d > parents.len() {
                    break;
                }
            }
            depth.insert(n, d);
        }
        (parents, depth)
    }

    fn hosts(&mut self, json: bool) {
        let json = json || self.json;
        let (parents, depth) = self.topology();
        let pids: BTreeMap<NodeId, u32> =
            if self.s.local_launcher { self.s.c.launched_clients().into_iter().collect() } else { BTreeMap::new() };
        let mut out = std::io::stdout().lock();
        if !json {
            let _ = writeln!(out, "{:<24} {:<12} {:<24} {:>5} {:>8}", "HOST", "STATE", "PARENT", "DEPTH", "PID");
        }
        for (id, name) in &self.s.named {
            let state = self.s.c.host(id).map_or(HostState::Pending, |h| h.state);
            let parent = parents.get(id).copied().flatten().map(|p| self.s.label(&p));
            let d = depth.get(id);
            let pid = pids.get(id);
            if json {
                let v = json!({"host": name, "addr": id.addr().to_string(), "state": format!("{state:?}").to_lowercase(),
                               "parent": parent, "depth": d, "pid": pid});
                let _ = writeln!(out, "{v}");
            } else {
                let parent = match (parents.get(id), parent) {
                    (Some(None), _) => "(root)".to_owned(),
                    (_, Some(p)) => p,
                    _ => "-".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "{:<24} {:<12} {:<24} {:>5} {:>8}",
                    self.s.label(id),
                    format!("{state:?}").to_lowercase(),
                    parent,
                    d.map_or("-".into(), |d| d.to_string()),
                    pid.map_or("-".into(), |p| p.to_string())
                );
            }
        }
        let _ = out.flush();
        self.status = 0;
    }

    fn tree(&mut self, json: bool) {
        let json = json || self.json;
        let (parents, depth) = self.topology();
        let mut out = std::io::stdout().lock();
        if json {
            for (n, p) in &parents {
                let v = json!({"host": self.s.label(n), "parent": p.map(|p| self.s.label(&p)), "depth": depth.get(n)});
                let _ = writeln!(out, "{v}");
            }
            return;
        }
        let mut children: BTreeMap<Option<NodeId>, Vec<NodeId>> = BTreeMap::new();
        for (n, p) in &parents {
            children.entry(*p).or_default().push(*n);
        }
        let roots = children.get(&None).cloned().unwrap_or_default();
        let _ = writeln!(out, "controller {}", self.s.c.id());
        // Depth-first with an explicit stack: (node, prefix, last among siblings).
        let mut stack: Vec<(NodeId, String, bool)> =
            roots.iter().enumerate().rev().map(|(k, r)| (*r, String::new(), k + 1 == roots.len())).collect();
        let mut drawn = 0;
        while let Some((n, prefix, last)) = stack.pop() {
            drawn += 1;
            if drawn > parents.len() {
                break;
            }
            let kids = children.get(&Some(n)).map_or(0, Vec::len);
            let branch = if last { "└── " } else { "├── " };
            let count = if kids > 0 { format!(" ({kids})") } else { String::new() };
            let _ = writeln!(out, "{prefix}{branch}{}{count}", self.s.label(&n));
            let next = format!("{prefix}{}", if last { "    " } else { "│   " });
            if let Some(kids) = children.get(&Some(n)) {
                for (k, c) in kids.iter().enumerate().rev() {
                    stack.push((*c, next.clone(), k + 1 == kids.len()));
                }
            }
        }
        let missing = self.s.joined().iter().filter(|h| !parents.contains_key(h)).count();
        if missing > 0 {
            let _ = writeln!(out, "({missing} joined hosts did not answer)");
        }
        self.status = 0;
    }

    fn invite(&mut self, hosts: &[String], json: bool) {
        match self.s.invite_sets(hosts) {
            Ok(fresh) => {
                let took = self.s.join();
                let joined = self.s.c.count(HostState::Joined);
                let n = self.s.host_count();
                let text = format!("invited {fresh}; joined {joined}/{n} ({:.2} s since start)", took.as_secs_f64());
                self.out(json, &text, json!({"invited": fresh, "joined": joined, "hosts": n}));
                self.status = 0;
            }
            Err(e) => {
                eprintln!("plush shell: invite: {e}");
                self.status = 2;
            }
        }
    }

    fn barrier(&mut self, name: &str, threshold: f64, timeout: Duration, json: bool) {
        if !(0.0..=1.0).contains(&threshold) {
            eprintln!("plush shell: barrier: --threshold is a fraction from 0 to 1, not {threshold}");
            self.status = 2;
            return;
        }
        match self.s.c.barrier(name, None, threshold, timeout) {
            Ok(()) => {
                self.barriers.push(name.to_owned());
                let n = self.s.c.count(HostState::Joined);
                let text = format!("barrier {name} open for {n} hosts; jobs enter it with: \"$PLUSH\" barrier {name}");
                self.out(json, &text, json!({"barrier": name, "open": true, "hosts": n}));
                self.status = 0;
            }
            Err(e) => {
                eprintln!("plush shell: barrier {name}: {e}");
                self.status = 2;
            }
        }
    }

    fn show_status(&mut self, json: bool) {
        let c = &self.s.c;
        let counts: Vec<(String, usize)> =
            [HostState::Pending, HostState::Invited, HostState::Joined, HostState::Disconnected, HostState::Failed]
                .iter()
                .map(|s| (format!("{s:?}").to_lowercase(), c.count(*s)))
                .collect();
        let root = c.root().map(|r| self.s.label(&r));
        let jobs: Vec<serde_json::Value> = self
            .bg
            .iter()
            .map(|(j, cmd)| {
                let (got, expected) = c.job_progress(*j).unwrap_or((0, 0));
                json!({"job": j, "command": cmd, "results": got, "expected": expected, "settled": c.job_settled(*j)})
            })
            .collect();
        let barriers: Vec<serde_json::Value> = self
            .barriers
            .iter()
            .filter_map(|b| c.barrier_info(b).map(|i| (b, i)))
            .map(|(b, i)| json!({"barrier": b, "released": i.released, "partial": i.partial, "entered": i.entered, "expected": i.expected, "late": i.late.len()}))
            .collect();
        let up = c.uptime().as_secs_f64();
        if json || self.json {
            let mut states = serde_json::Map::new();
            for (k, v) in &counts {
                states.insert(k.clone(), json!(v));
            }
            let v = json!({"hosts": self.s.host_count(), "states": states, "unresolved": self.s.unresolved.len(),
                           "root": root, "uptime_s": up, "jobs": jobs, "barriers": barriers});
            self.out(true, "", v);
        } else {
            let states: Vec<String> = counts.iter().filter(|(_, v)| *v > 0).map(|(k, v)| format!("{k} {v}")).collect();
            let mut text = format!(
                "hosts {}: {}{}\nroot {}\nup {up:.1} s",
                self.s.host_count(),
                states.join(", "),
                if self.s.unresolved.is_empty() {
                    String::new()
                } else {
                    format!(", unresolved {}", self.s.unresolved.len())
                },
                root.as_deref().unwrap_or("-"),
            );
            for j in &jobs {
                text.push_str(&format!(
                    "\njob {}: {}/{} results{} ({})",
                    j["job"],
                    j["results"],
                    j["expected"],
                    if j["settled"] == true { ", done" } else { "" },
                    j["command"].as_str().unwrap_or("")
                ));
            }
            for b in &barriers {
                text.push_str(&format!(
                    "\nbarrier {}: {}",
                    b["barrier"].as_str().unwrap_or(""),
                    if b["released"] == true {
                        format!("released {}/{}", b["entered"], b["expected"])
                    } else {
                        "open".to_owned()
                    }
                ));
            }
            self.out(false, &text, json!(null));
        }
        self.status = 0;
    }

    fn disconnect(&mut self, json: bool) {
        let took = self.s.dismantle();
        let left = self.s.c.launched_pids().len();
        self.out(
            json,
            &format!("dismantled in {:.2} s", took.as_secs_f64()),
            json!({"dismantled": true, "dismantle_ms": ms(took), "left": left}),
        );
    }
}
