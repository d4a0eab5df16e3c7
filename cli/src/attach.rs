//! `plush attach [ID]` and `plush sessions`: take over a session whose controller died, and
//! list the sessions left behind. The journal they read is described in [`crate::journal`].
//!
//! **Attach.** Reads the session's journal (the most recent session when no id is given),
//! starts a controller under the session's cluster key, and reaches the overlay: `SetCtrl` to
//! the journal's root, then to the members, [`ATTACH_BATCH`] at a time every second, until a
//! root answers with `SetRoot` (at most [`ATTACH_TIMEOUT`]). The root links to the new
//! controller, takes a census and re-sends the results it holds. The jobs whose results were
//! not printed yet are taken over with the results the journal holds marked as received, so
//! that the tree's copies of them are dropped: every result group is shown once, whether it
//! arrived before the crash or after. Then the session goes on in its mode: `run` waits for
//! the rest, prints the grouped summary (the journal's results and the new ones) and exits with
//! `plush run`'s status, naming hosts that owed a result and are gone as lost; `shell` gives
//! the prompt back (unprinted jobs become background jobs); `apply` opens its barriers again,
//! prints the phases that ran and runs the later ones from its file; `push` and `upgrade`
//! dismantle (their transfers cannot be resumed
//! without their source's state). The journal's local clients are waited for at the dismantle,
//! and killed if they linger.
//!
//! **Sessions.** Lists each session directory: its command, age, hosts and their last known
//! states, jobs with their results, and whether the overlay still answers: a TCP connection and
//! an authenticated handshake under the session's key with the root, then with up to
//! [`PROBE_MEMBERS`] members, each within [`PROBE_TIMEOUT`].

use crate::journal::{self, GroupRec, JobRec, Journal, Record, Replayed};
use crate::session::{summary_json, Labels, OutputArgs, PrintOpts, Session, INTERRUPTED, UNREACHABLE};
use clap::Args;
use plush_core::{HostState, NodeId};
use plush_mio::{Cluster, ClusterConfig, ResultGroup};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Members sent `SetCtrl` at once while the root is not found.
pub const ATTACH_BATCH: usize = 16;
/// How long attaching may take to find the root before the overlay is given up for gone.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// After attaching, a resumed job whose remaining hosts are none of them joined (they died
/// while no controller watched) is given up this long after the last result arrived: the
/// root reports it complete sooner when it still knows it.
pub const RESUME_SETTLE: Duration = Duration::from_secs(10);
/// How long `plush sessions` waits for one member to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Members `plush sessions` tries besides the root.
pub const PROBE_MEMBERS: usize = 4;

/// Flags of `plush attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The session, as `plush sessions` names it [default: the most recent one].
    pub id: Option<String>,
    /// The state directory the session is in (as given to its controller with --state-dir)
    /// [default: $XDG_STATE_HOME, else ~/.local/state].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Keep the session's journal directory when the session ends.
    #[arg(long)]
    pub keep_session: bool,
    /// For a `shell` session: print JSON lines, as `plush shell --json`.
    #[arg(long)]
    pub json: bool,
    /// Attach even though the session's controller process still runs (it loses the overlay).
    #[arg(long)]
    pub force: bool,
}

/// Flags of `plush sessions`.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// The state directory [default: $XDG_STATE_HOME, else ~/.local/state].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// One JSON object per session.
    #[arg(long)]
    pub json: bool,
    /// Do not check whether the overlays answer.
    #[arg(long)]
    pub no_probe: bool,
}

/// The session directory `id` (or the most recent) under the state directory.
fn find(state_dir: Option<&Path>, id: Option<&str>) -> Result<(String, PathBuf), String> {
    let sessions = journal::sessions_dir(state_dir).ok_or("no state directory (neither $XDG_STATE_HOME nor $HOME)")?;
    let all = journal::list(&sessions);
    match id {
        Some(id) => {
            all.into_iter().find(|(x, _)| x == id).ok_or_else(|| format!("no session {id} in {}", sessions.display()))
        }
        None => all.into_iter().last().ok_or_else(|| format!("no session in {}", sessions.display())),
    }
}

/// A journaled group as the cluster's.
fn group(g: &GroupRec) -> ResultGroup {
    ResultGroup {
        status: g.status,
        truncated: g.truncated,
        output: g.output.clone(),
        nodes: g.nodes.clone(),
        stderr: g.stderr.clone(),
        spilled: None,
    }
}

/// Run `plush attach`.
pub fn run(args: &AttachArgs) -> ExitCode {
    let (id, dir) = match find(args.state_dir.as_deref(), args.id.as_deref()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("plush attach: {e}");
            return ExitCode::from(1);
        }
    };
    let read = match journal::read_dir(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("plush attach: session {id}: cannot read its journal: {e}");
            return ExitCode::from(1);
        }
    };
    if read.torn > 0 {
        eprintln!(
            "plush attach: session {id}: the last {} bytes of the journal were torn by the crash; ignored",
            read.torn
        );
    }
    let rep = journal::replay(&read.records);
    if rep.cmd.is_empty() || rep.controllers.is_empty() {
        eprintln!("plush attach: session {id}: its journal holds no session");
        return ExitCode::from(1);
    }
    let pid = rep.pid.or_else(|| journal::id_pid(&id));
    if journal::controller_alive(pid) && !args.force {
        eprintln!(
            "plush attach: session {id}: its controller (pid {}) still runs; attaching would take \
             its overlay away from it (--force to do it anyway)",
            pid.unwrap_or(0)
        );
        return ExitCode::from(1);
    }
    if rep.done {
        eprintln!("plush attach: session {id} ended (its overlay was dismantled); removing it");
        let _ = std::fs::remove_dir_all(&dir);
        return ExitCode::from(1);
    }
    let key = match plush_mio::Key::read_file(&dir.join(journal::KEY)) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("plush attach: session {id}: {e}");
            return ExitCode::from(1);
        }
    };
    let j = match Journal::reopen(&dir, read.valid_len) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("plush attach: session {id}: cannot write its journal: {e}");
            return ExitCode::from(1);
        }
    };
    let mut s = match attach_session(&rep, key, j, args.keep_session) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("plush attach: session {id}: cannot start a controller: {e}");
            return ExitCode::from(UNREACHABLE);
        }
    };
    // Jobs not printed yet: taken over before the root is reached, so that it gets them again.
    let (pending, copies): (Vec<&JobRec>, Vec<&JobRec>) =
        rep.jobs.iter().filter(|j| !j.shown).partition(|j| j.spec.kind == plush_core::wire::JobKind::Command);
    for j in copies {
        // The controller was the source of the file: its transfer state died with it.
        eprintln!(
            "plush attach: job {} (a file copy) cannot be taken over: {}/{} hosts had answered; \
             copy the file again",
            j.spec.job,
            j.got.len(),
            j.expected.len()
        );
    }
    for j in &pending {
        let shown: Vec<ResultGroup> = j.groups.iter().map(group).collect();
        if let Err(e) = s.c.resume_job(j.spec.clone(), j.owed(&rep.states), shown) {
            eprintln!("plush attach: job {}: cannot take it over: {e}", j.spec.job);
        }
    }
    // An application's barriers: the tree re-sends the entries it holds once linked, and the
    // controller decides the release.
    for (name, target, threshold, timeout_ms) in &rep.barriers {
        if let Err(e) = s.c.barrier(name, Some(target), *threshold, Duration::from_millis(*timeout_ms)) {
            eprintln!("plush attach: barrier {name}: cannot open it again: {e}");
        }
    }
    let reached = reach(&mut s, &rep);
    if !reached {
        eprintln!(
            "plush attach: session {id}: no member of its overlay answered within {} s; \
             printing what the journal holds",
            ATTACH_TIMEOUT.as_secs()
        );
    } else if let Some(root) = s.c.root() {
        eprintln!("plush attach: session {id}: attached to the overlay through its root {}", s.label(&root));
    }
    let code = match rep.cmd.as_str() {
        "shell" if reached => {
            let jobs = pending.iter().map(|j| (j.spec.job, j.spec.argv.0.join(" "))).collect();
            return crate::shell::resume(s, args.json, jobs);
        }
        "run" | "shell" | "apply" => {
            let code = finish_jobs(&mut s, &pending, reached);
            if rep.cmd == "apply" {
                go_on_applying(&mut s, &rep, &pending, reached, code)
            } else {
                code
            }
        }
        other => {
            eprintln!("plush attach: a `{other}` session is not resumed (its transfer cannot be): dismantling");
            UNREACHABLE
        }
    };
    s.dismantle();
    drop(s);
    ExitCode::from(code)
}

/// Wait for and print the results of `pending` jobs (the last one decides the status), as
/// `plush run` does; jobs shown before the crash print nothing. Returns the exit status.
fn finish_jobs(s: &mut Session, pending: &[&JobRec], reached: bool) -> u8 {
    let mut code = 0;
    for j in pending {
        let opts = PrintOpts {
            json: j.print.json,
            stream: j.print.stream,
            out: OutputArgs { max_output: j.print.max_output, ..OutputArgs::default() },
        };
        s.give_up_resumed = !reached;
        if let (Some(title), false) = (&j.print.title, j.print.json) {
            println!("=== {title} ({} hosts)", j.targeted.len());
        }
        let summary = s.resume_job(j.spec.job, j.targeted.clone(), opts.clone());
        code = if summary.interrupted { INTERRUPTED } else { summary.code };
        if opts.json {
            let line = summary_json(&summary, s.host_count(), &[("exit", json!(code)), ("attached", json!(true))]);
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        if summary.interrupted {
            break;
        }
    }
    if pending.is_empty() {
        eprintln!("plush attach: every result of the session was printed before the crash");
    }
    code
}

/// After the phases that ran were printed: run the application's later phases, unless one
/// that ran aborts it, the file cannot be read again, or the overlay is gone. The status.
fn go_on_applying(s: &mut Session, rep: &Replayed, pending: &[&JobRec], reached: bool, code: u8) -> u8 {
    let Some((file, json)) = rep.app.clone() else {
        eprintln!("plush attach: the journal does not name the application file: its later phases are not run");
        return code.max(1);
    };
    let app = match crate::apply::load(Path::new(&file)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("plush attach: {e}: the application's later phases are not run");
            return code.max(1);
        }
    };
    let phase_of = |j: &JobRec| {
        let name = j.print.title.as_deref()?.strip_prefix("phase ")?;
        app.phases.iter().position(|p| p.name == name)
    };
    let Some(last) = rep.jobs.iter().filter_map(phase_of).max() else {
        eprintln!("plush attach: no phase of {file} had started: run `plush apply` again");
        return code.max(1);
    };
    for j in pending {
        let Some(k) = phase_of(j) else { continue };
        if crate::apply::aborts(&app.phases[k], &s.c.job_outcome(j.spec.job).groups) {
            eprintln!("plush attach: phase {} failed on some host: aborting", app.phases[k].name);
            return code.max(1);
        }
    }
    if last + 1 >= app.phases.len() {
        return code;
    }
    if !reached {
        eprintln!("plush attach: the overlay is gone: the application's later phases are not run");
        return UNREACHABLE;
    }
    eprintln!("plush attach: going on with {file} from phase {}", app.phases[last + 1].name);
    crate::apply::resume(s, &app, json, last + 1, code)
}

/// A session for the journal's overlay, under its key, writing to `j`.
fn attach_session(rep: &Replayed, key: plush_mio::Key, j: Journal, keep: bool) -> std::io::Result<Session> {
    let ip = rep.controllers.first().map_or(std::net::Ipv4Addr::LOCALHOST.into(), |c| c.addr().ip());
    let cfg = ClusterConfig { listen: std::net::SocketAddr::new(ip, 0), ..ClusterConfig::default() };
    let c = Cluster::attach(cfg, key)?;
    let mut s = Session::adopt(c, "attach", rep.hosts.clone(), rep.unresolved.clone(), rep.label_by_name, keep);
    s.orphans = match &rep.clients {
        Some((key_file, clients)) => clients.iter().map(|(_, pid)| (*pid, key_file.clone())).collect(),
        None => Vec::new(),
    };
    let states: Vec<(NodeId, HostState)> = rep
        .hosts
        .iter()
        .filter_map(|(h, _)| rep.states.get(h).and_then(|c| journal::state_of(*c)).map(|s| (*h, s)))
        .collect();
    s.c.adopt_hosts(&states);
    let me = s.c.id();
    s.set_journal(j);
    s.log(&Record::Attached(me, std::process::id()), true);
    Ok(s)
}

/// Reach the overlay: `SetCtrl` to the root, then to the members, a batch a second, until a
/// root answers (at most [`ATTACH_TIMEOUT`]). Whether one did.
fn reach(s: &mut Session, rep: &Replayed) -> bool {
    let joined = |h: &NodeId| rep.states.get(h) == Some(&journal::state_code(HostState::Joined));
    let mut cands: Vec<NodeId> = rep.root.into_iter().collect();
    cands.extend(rep.hosts.iter().map(|(h, _)| *h).filter(|h| joined(h)));
    cands.extend(rep.hosts.iter().map(|(h, _)| *h).filter(|h| !joined(h)));
    let mut seen = std::collections::BTreeSet::new();
    cands.retain(|h| seen.insert(*h));
    if cands.is_empty() {
        return false;
    }
    let end = Instant::now() + ATTACH_TIMEOUT;
    let mut k = 0;
    while s.c.root().is_none() && Instant::now() < end {
        // The root alone first: it is the one most likely alive and answers at once.
        let n = if k == 0 { 1 } else { ATTACH_BATCH };
        let batch: Vec<NodeId> = cands.iter().cycle().skip(k % cands.len()).take(n.min(cands.len())).copied().collect();
        k += batch.len();
        s.c.attach_to(&batch);
        let turn = if k <= 1 { Duration::from_millis(500) } else { Duration::from_secs(1) };
        if let Err(e) = s.c.wait_until(turn, |c| c.root().is_some()) {
            eprintln!("plush attach: the event loop failed: {e}");
            return false;
        }
    }
    s.c.root().is_some()
}

/// Run `plush sessions`.
pub fn sessions(args: &SessionsArgs) -> ExitCode {
    let Some(dir) = journal::sessions_dir(args.state_dir.as_deref()) else {
        eprintln!("plush sessions: no state directory (neither $XDG_STATE_HOME nor $HOME)");
        return ExitCode::from(1);
    };
    let all = journal::list(&dir);
    if all.is_empty() && !args.json {
        println!("no session in {}", dir.display());
    }
    let mut out = std::io::stdout().lock();
    for (id, path) in all {
        let read = journal::read_dir(&path).unwrap_or_default();
        let rep = journal::replay(&read.records);
        let key = plush_mio::Key::read_file(&path.join(journal::KEY)).ok();
        let answers = match (&key, args.no_probe || rep.done) {
            (Some(key), false) => probe(&rep, key),
            _ => None,
        };
        let labels = Labels::new(&rep.hosts, rep.label_by_name);
        let mut counts = std::collections::BTreeMap::new();
        for (h, _) in &rep.hosts {
            *counts.entry(journal::state_name(rep.states.get(h).copied().unwrap_or(0))).or_insert(0usize) += 1;
        }
        if args.json {
            let hosts: Vec<serde_json::Value> = rep
                .hosts
                .iter()
                .map(|(h, name)| {
                    json!({"host": h.addr().to_string(), "name": name,
                           "state": journal::state_name(rep.states.get(h).copied().unwrap_or(0))})
                })
                .collect();
            let jobs: Vec<serde_json::Value> = rep
                .jobs
                .iter()
                .map(|j| {
                    json!({"job": j.spec.job, "argv": j.spec.argv.0, "expected": j.expected.len(),
                           "results": j.got.len(), "shown": j.shown})
                })
                .collect();
            let clients: Vec<serde_json::Value> = rep
                .clients
                .as_ref()
                .map(|(_, c)| c.iter().map(|(h, pid)| json!({"host": h.addr().to_string(), "pid": pid})).collect())
                .unwrap_or_default();
            let v = json!({
                "id": id, "dir": path.display().to_string(), "cmd": rep.cmd, "version": rep.version,
                "created_ms": rep.created_ms,
                "controllers": rep.controllers.iter().map(|c| c.addr().to_string()).collect::<Vec<_>>(),
                "root": rep.root.map(|r| r.addr().to_string()),
                "hosts": hosts, "states": counts, "jobs": jobs, "clients": clients,
                "key_file": rep.clients.as_ref().map(|(k, _)| k.clone()),
                "answers": answers.map(|a| a.addr().to_string()),
                "ended": rep.done, "torn_bytes": read.torn,
                "controller_alive": journal::controller_alive(rep.pid.or_else(|| journal::id_pid(&id))),
            });
            let _ = writeln!(out, "{v}");
            continue;
        }
        let age = journal::now_ms().saturating_sub(rep.created_ms) / 1000;
        let states: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ =
            writeln!(out, "{id}  plush {}  started {} ago", if rep.cmd.is_empty() { "?" } else { &rep.cmd }, ago(age));
        let all: Vec<NodeId> = rep.hosts.iter().map(|(h, _)| *h).collect();
        let _ = writeln!(out, "  hosts: {} ({}): {}", all.len(), states.join(", "), labels.fold(&all));
        for j in &rep.jobs {
            let shown = if j.shown { "printed" } else { "not printed yet" };
            let _ = writeln!(
                out,
                "  job {}: {}: {}/{} results received, {shown}",
                j.spec.job,
                j.spec.argv.0.join(" "),
                j.got.len(),
                j.expected.len()
            );
        }
        let pid = rep.pid.or_else(|| journal::id_pid(&id));
        let status = if rep.done {
            "ended".to_owned()
        } else if journal::controller_alive(pid) {
            format!("its controller still runs (pid {})", pid.unwrap_or(0))
        } else if args.no_probe {
            "not checked".to_owned()
        } else {
            match answers {
                Some(a) => format!("answers at {} (plush attach {id})", labels.label(&a)),
                None => "does not answer".to_owned(),
            }
        };
        let _ = writeln!(out, "  overlay: {status}");
    }
    ExitCode::SUCCESS
}

/// `secs` as "5 s", "3 min", "2 h".
fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

/// The first of the journal's root and a few joined members that answers a handshake.
fn probe(rep: &Replayed, key: &plush_mio::Key) -> Option<NodeId> {
    let joined = journal::state_code(HostState::Joined);
    let mut cands: Vec<NodeId> = rep.root.into_iter().collect();
    cands.extend(
        rep.hosts.iter().map(|(h, _)| *h).filter(|h| rep.states.get(h) == Some(&joined) && Some(*h) != rep.root),
    );
    cands.into_iter().take(1 + PROBE_MEMBERS).find(|h| plush_mio::probe(*h, key, PROBE_TIMEOUT).is_ok())
}
