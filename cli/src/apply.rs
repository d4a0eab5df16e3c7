//! `plush apply APP.toml`: run an application file (see [`plush::appfile`]): invite its hosts,
//! run its phases in order with their barriers and failure policies, print each phase's
//! results grouped, dismantle.
//!
//! How a phase runs: one job on the phase's hosts (those joined). Its command is wrapped in a
//! small `/bin/sh` script on each host that restarts it on failure (`on_failure = "restart"`,
//! at most `restarts` times; the last exit status counts) and then, when the phase has a
//! barrier, enters it (`"$PLUSH" barrier NAME`, see [`crate::barrier`]) before exiting with
//! the command's status. The controller opens the barrier with the phase's threshold and
//! timeout and starts the next phase when it is released and the hosts that entered gave
//! their results. Without a barrier, the next phase starts once every host of this one
//! answered. With `on_failure = "abort"` (the default) a failed host stops the application:
//! no later phase starts and jobs still running are cancelled. Hosts left behind by a partial
//! barrier finish in the background; their results are waited for (within their timeouts)
//! before the end.
//!
//! Files to copy (`[[files]]`) are pushed through the tree ([`Session::run_push`]), one after
//! another in the file's order, once the hosts joined and before the first phase; each `src` is
//! relative to the application file's directory, and checked before any host is started (also
//! with `--check`). A copy that failed on some host (`DEST` not writable, no space) aborts the
//! application as a failed phase with `on_failure = "abort"` does: no phase runs. Hosts
//! unreachable or lost during a copy count as in a phase (exit 255), without aborting.
//!
//! Exit status: the largest over the copies and phases (as `plush run`'s), 255 when a host was
//! unreachable or lost, 2 for a bad command line or application file (its line and field are
//! named), 130 after Ctrl-C.

use crate::session::{
    ms, print_groups, status_text, HostArgs, LauncherKind, PrintOpts, Session, INTERRUPTED, UNREACHABLE,
};
use clap::Args;
use plush::appfile::{self, AppError, AppSpec, FileSpec, OnFailure, PhaseSpec, Where};
use plush_core::wire::ExitStatus;
use plush_core::{HostState, NodeId};
use plush_mio::{JobSpec, PushJob};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Chunk size of the files copied (`plush push`'s default).
const CHUNK: u32 = 128 << 10;

/// How long, after a barrier's release, the results of the hosts that entered it may take.
const AFTER_RELEASE: Duration = Duration::from_secs(10);

/// Flags of `plush apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The application file (TOML; see `plush apply --help` for its layout).
    pub file: std::path::PathBuf,
    /// Hosts given here replace the file's `[hosts]` table.
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Print JSON lines: per phase its groups (with a `phase` field) and barrier, then a
    /// summary.
    #[arg(long)]
    pub json: bool,
    /// Check the file and stop.
    #[arg(long)]
    pub check: bool,
    /// Output cap, and per-host files (with a directory per phase: DIR/PHASE/HOST).
    #[command(flatten)]
    pub out: crate::session::OutputArgs,
}

/// The wrapper every phase's command runs in (see the module docs): `$1` restarts allowed,
/// `$2` the barrier (empty: none), then the command.
const WRAPPER: &str = r#"r=$1; b=$2; shift 2; n=0
while :; do "$@"; s=$?
  [ $s -eq 0 ] && break; [ $n -ge $r ] && break; n=$((n+1))
  echo "plush: restart $n of $r after exit $s" >&2
done
[ -n "$b" ] && "$PLUSH" barrier "$b"
exit $s"#;

/// What one phase gave.
struct PhaseRun {
    job: Option<u64>,
    targeted: Vec<NodeId>,
    barrier: Option<String>,
}

/// Run `plush apply`.
pub fn run(args: &ApplyArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("plush apply: cannot read {}: {e}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let app = match appfile::parse(&text) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("plush apply: {}: {e}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let dir = args.file.parent().unwrap_or(Path::new("."));
    for (k, f) in app.files.iter().enumerate() {
        if let Err(e) = crate::push::check_source(&f.source(dir)) {
            let e = AppError { line: f.src_line, field: Some(format!("files[{}].src", k + 1)), message: e };
            eprintln!("plush apply: {}: {e}", args.file.display());
            return ExitCode::from(2);
        }
    }
    let mut hosts = if args.hosts.given() {
        args.hosts.clone()
    } else {
        // The file names the hosts; --linger given here still holds.
        HostArgs { linger: args.hosts.linger, ..host_args(&app, &args.file) }
    };
    hosts.session = args.hosts.session.clone();
    if args.check {
        let files = match app.files.len() {
            0 => String::new(),
            1 => "1 file to copy, ".to_owned(),
            n => format!("{n} files to copy, "),
        };
        println!("{}: {files}{} phases, valid", args.file.display(), app.phases.len());
        return ExitCode::SUCCESS;
    }
    let mut s = match Session::start(&hosts, "apply") {
        Ok(s) => s,
        Err(code) => return ExitCode::from(code),
    };
    s.output = args.out.clone();
    let file = std::fs::canonicalize(&args.file).unwrap_or_else(|_| args.file.clone());
    s.log(&crate::journal::Record::App { file: file.display().to_string(), json: args.json }, false);
    let code = apply(&mut s, &app, dir, args.json);
    s.dismantle();
    drop(s);
    ExitCode::from(code)
}

/// The host flags the file's `[hosts]` table stands for (a host file is relative to the file).
fn host_args(app: &AppSpec, file: &std::path::Path) -> HostArgs {
    let h = &app.hosts;
    let dir = file.parent().unwrap_or(std::path::Path::new("."));
    HostArgs {
        local: h.local,
        hosts: h.sets.clone(),
        hostfile: h.hostfile.as_ref().map(|f| dir.join(f)),
        exclude: h.exclude.clone(),
        port: h.port.unwrap_or(crate::session::DEFAULT_PORT),
        launcher: h.launcher.as_deref().map(|l| match l {
            "local" => LauncherKind::Local,
            "ssh" => LauncherKind::Ssh,
            _ => LauncherKind::Command,
        }),
        ssh_options: h.ssh_options.clone(),
        launcher_command: h.launcher_command.clone(),
        // The default: `plush-clients` beside this binary, else this binary alone.
        client_binaries: None,
        degree: h.degree.unwrap_or(12),
        join_timeout: None,
        fanout: 50,
        no_upgrade: false,
        maintenance: h.maintenance.as_ref().map(|f| dir.join(f)),
        linger: None,
        launch_from: if h.launch_from.as_deref() == Some("tree") {
            crate::sim::LaunchFrom::Tree
        } else {
            crate::sim::LaunchFrom::Controller
        },
        launch_fanout: crate::sim::DEFAULT_LAUNCH_FANOUT,
        session: crate::session::SessionArgs::default(),
    }
}

fn say(json: bool, text: &str, v: serde_json::Value) {
    if json {
        println!("{v}");
    } else {
        eprintln!("plush apply: {text}");
    }
}

/// The hosts of a phase or a file: every host, or those named (among the session's).
fn targets(s: &Session, hosts: &Where) -> Result<Vec<NodeId>, String> {
    match hosts {
        Where::All => Ok(s.named.iter().map(|(id, _)| *id).collect()),
        Where::Names(names) => s.lookup(names),
    }
}

/// How a file copy ended.
enum Copied {
    /// On every host it reached, with this exit status (255: some were unreachable or lost).
    Done(u8),
    /// Failed on some host, with this exit status: abort.
    Failed(u8),
    /// Its hosts are not the session's (exit 2), or Ctrl-C (130): abort with exactly this.
    Stopped(u8),
}

/// Copy one file (the `k`th, 0-based) through the tree, printing its results as `plush push`.
fn copy_file(s: &mut Session, k: usize, f: &FileSpec, dir: &Path, json: bool) -> Copied {
    let targeted = match targets(s, &f.hosts) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("plush apply: files[{}] (line {}): {e}", k + 1, f.line);
            return Copied::Stopped(2);
        }
    };
    let joined = targeted.iter().filter(|h| s.c.host(h).is_some_and(|i| i.state == HostState::Joined)).count();
    say(
        json,
        &format!("file {} to {} on {joined} hosts", f.src, f.dest),
        json!({"file": f.src, "dest": f.dest, "started": joined}),
    );
    if !json {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "=== file {} -> {} ({} hosts)", f.src, f.dest, targeted.len());
        let _ = out.flush();
    }
    let src = f.source(dir);
    let push = PushJob {
        src: &src,
        dest: &f.dest,
        target: Some(&targeted),
        timeout: f.timeout_s.map(Duration::from_secs_f64),
        chunk: CHUNK,
        mode: f.mode,
        upgrade: false,
        digest: None,
    };
    let sum = s.run_push(push, PrintOpts { json, stream: false, out: Default::default() });
    if json {
        say(
            true,
            "",
            json!({"file": f.src, "dest": f.dest, "ok": sum.ok, "failed": sum.failed, "lost": sum.lost,
                   "unreachable": sum.unreachable, "push_ms": sum.run_ms, "exit": sum.code}),
        );
    }
    if sum.interrupted {
        return Copied::Stopped(INTERRUPTED);
    }
    if sum.failed > 0 {
        say(
            json,
            &format!("file {} (line {}) was not copied to {} hosts: aborting", f.src, f.line, sum.failed),
            json!({"file": f.src, "abort": true}),
        );
        return Copied::Failed(sum.code.max(1));
    }
    Copied::Done(sum.code)
}

/// Copy the files, then run the phases; returns the exit status.
fn apply(s: &mut Session, app: &AppSpec, dir: &Path, json: bool) -> u8 {
    let build = s.join();
    let joined = s.c.count(HostState::Joined);
    say(
        json,
        &format!("{joined}/{} hosts joined in {:.2} s", s.host_count(), build.as_secs_f64()),
        json!({"joined": joined, "hosts": s.host_count(), "build_ms": ms(build)}),
    );
    let stop = crate::session::interrupt_flag();
    stop.store(false, Ordering::Relaxed);
    let mut aborted: Option<String> = None;
    let mut code = 0u8;
    let mut files_run = 0;
    for (k, f) in app.files.iter().enumerate() {
        files_run += 1;
        let abort_with = match copy_file(s, k, f, dir, json) {
            Copied::Done(c) => {
                code = code.max(c);
                continue;
            }
            Copied::Failed(c) => code.max(c),
            Copied::Stopped(c) => c,
        };
        code = abort_with;
        aborted = Some(format!("files[{}]", k + 1));
        break;
    }
    if aborted.is_some() {
        return finish(s, app, json, Ran { runs: Vec::new(), from: 0, aborted, code, files_run, joined, build });
    }
    let ran = run_phases(s, app, json, 0, code, files_run, joined, build);
    finish(s, app, json, ran)
}

/// What running the phases gave, for [`finish`].
pub struct Ran {
    runs: Vec<PhaseRun>,
    /// The index of `runs[0]`'s phase.
    from: usize,
    aborted: Option<String>,
    code: u8,
    files_run: usize,
    joined: usize,
    build: Duration,
}

/// Go on with an application whose controller died (`plush attach`), through `s`: its phases
/// from `from` on, then print them. `code`: the status so far.
pub fn resume(s: &mut Session, app: &AppSpec, json: bool, from: usize, code: u8) -> u8 {
    let joined = s.c.count(HostState::Joined);
    let ran = run_phases(s, app, json, from, code, app.files.len(), joined, Duration::ZERO);
    finish(s, app, json, ran)
}

/// Run the phases from `from` on, in order (see the module docs).
#[allow(clippy::too_many_arguments)]
fn run_phases(
    s: &mut Session,
    app: &AppSpec,
    json: bool,
    from: usize,
    mut code: u8,
    files_run: usize,
    joined: usize,
    build: Duration,
) -> Ran {
    let stop = crate::session::interrupt_flag();
    stop.store(false, Ordering::Relaxed);
    let mut runs: Vec<PhaseRun> = Vec::new();
    let mut aborted: Option<String> = None;
    for (k, p) in app.phases.iter().enumerate().skip(from) {
        let targeted = match targets(s, &p.hosts) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("plush apply: phase {} (line {}): {e}", p.name, p.line);
                code = 2;
                aborted = Some(p.name.clone());
                break;
            }
        };
        let run = start_phase(s, k, p, targeted, json);
        let ok = wait_phase(s, p, &run, json, &stop);
        runs.push(run);
        if stop.load(Ordering::Relaxed) {
            aborted = Some(p.name.clone());
            code = INTERRUPTED;
            break;
        }
        if !ok && p.on_failure == OnFailure::Abort {
            say(
                json,
                &format!("phase {} failed on some host: aborting", p.name),
                json!({"phase": p.name, "abort": true}),
            );
            aborted = Some(p.name.clone());
            break;
        }
    }
    Ran { runs, from, aborted, code, files_run, joined, build }
}

/// Wait for the stragglers, print every phase that ran, and the JSON summary; the exit status.
fn finish(s: &mut Session, app: &AppSpec, json: bool, ran: Ran) -> u8 {
    let Ran { runs, from, aborted, mut code, files_run, joined, build } = ran;
    let stop = crate::session::interrupt_flag();
    if aborted.is_some() {
        for r in &runs {
            if let Some(job) = r.job.filter(|j| !s.c.job_settled(*j)) {
                let _ = s.c.cancel(job);
            }
        }
    }
    // Stragglers (partial barriers, cancelled jobs): wait for them, within their timeouts.
    for r in &runs {
        if let Some(job) = r.job {
            let _ = s.c.wait_job(job, |_, _, _| {}, || stop.load(Ordering::Relaxed));
        }
    }
    // Results, phase by phase.
    let mut totals = (0usize, 0usize, 0usize, 0usize);
    for (r, p) in runs.iter().zip(app.phases.iter().skip(from)) {
        let (c, ok, failed, lost, unreachable) = report_phase(s, p, r, json);
        code = code.max(c);
        totals.0 += ok;
        totals.1 += failed;
        totals.2 += lost;
        totals.3 += unreachable;
    }
    if aborted.is_some() && code == 0 {
        code = 1;
    }
    if json {
        let v = json!({"summary": {"hosts": s.host_count(), "joined": joined, "files": app.files.len(),
            "files_run": files_run, "phases": app.phases.len(),
            "phases_run": runs.len(), "aborted": aborted, "ok": totals.0, "failed": totals.1, "lost": totals.2,
            "unreachable": totals.3, "build_ms": ms(build), "exit": code}});
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }
    code
}

/// Read and parse an application file (errors as `plush apply` prints them).
pub fn load(file: &Path) -> Result<AppSpec, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    appfile::parse(&text).map_err(|e| format!("{}: {e}", file.display()))
}

/// Whether a phase whose results were `groups` stops the application (it failed somewhere,
/// and aborts on failure).
pub fn aborts(p: &PhaseSpec, groups: &[plush_mio::ResultGroup]) -> bool {
    p.on_failure == OnFailure::Abort && groups.iter().any(|g| status_text(&g.status).is_some())
}

/// Open the phase's barrier and start its job.
fn start_phase(s: &mut Session, k: usize, p: &PhaseSpec, targeted: Vec<NodeId>, json: bool) -> PhaseRun {
    let joined: Vec<NodeId> =
        targeted.iter().filter(|h| s.c.host(h).is_some_and(|i| i.state == HostState::Joined)).copied().collect();
    let barrier = p.barrier.as_ref().map(|_| format!("phase-{}-{}", k + 1, p.name));
    if let (Some(b), Some(spec)) = (&barrier, &p.barrier) {
        let timeout = Duration::from_secs_f64(spec.timeout_s);
        if let Err(e) = s.c.barrier(b, Some(&joined), spec.threshold, timeout) {
            eprintln!("plush apply: phase {}: cannot open its barrier: {e}", p.name);
        }
        s.log(
            &crate::journal::Record::Barrier {
                name: b.clone(),
                target: joined.clone(),
                threshold: spec.threshold,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            },
            false,
        );
    }
    let restarts = match p.on_failure {
        OnFailure::Restart(n) => n,
        _ => 0,
    };
    let restarts = restarts.to_string();
    let mut argv: Vec<&str> =
        vec!["/bin/sh", "-c", WRAPPER, "plush-phase", &restarts, barrier.as_deref().unwrap_or("")];
    argv.extend(p.argv.iter().map(String::as_str));
    let timeout = p.timeout_s.map(Duration::from_secs_f64);
    // A phase that restarts its process on failure may also run again on a host whose client
    // restarted during it; the others run at most once per host.
    let env = if restarts != "0" { plush_mio::retry_lost_env() } else { Vec::new() };
    let mut job = None;
    if !joined.is_empty() {
        match s.c.start_job(JobSpec {
            argv: &argv,
            target: Some(&joined),
            timeout,
            stream: false,
            env: &env,
            max_output: s.output.max_output,
        }) {
            Ok(j) => {
                job = Some(j);
                let title = Some(format!("phase {}", p.name));
                let print = crate::journal::PrintRec { json, stream: false, max_output: s.output.max_output, title };
                s.log_job(j, targeted.clone(), print);
            }
            Err(e) => eprintln!("plush apply: phase {}: cannot start: {e}", p.name),
        }
    }
    say(
        json,
        &format!("phase {} started on {} hosts", p.name, joined.len()),
        json!({"phase": p.name, "started": joined.len()}),
    );
    PhaseRun { job, targeted, barrier }
}

/// Wait until the next phase may start (see the module docs); false when a host failed.
fn wait_phase(s: &mut Session, p: &PhaseSpec, r: &PhaseRun, json: bool, stop: &AtomicBool) -> bool {
    let Some(job) = r.job else { return true };
    match &r.barrier {
        None => {
            if let Err(e) = s.c.wait_job(job, |_, _, _| {}, || stop.load(Ordering::Relaxed)) {
                eprintln!("plush apply: the event loop failed: {e}");
            }
        }
        Some(b) => {
            let mut released_at: Option<Instant> = None;
            loop {
                if stop.load(Ordering::Relaxed) || s.c.job_settled(job) {
                    break;
                }
                if let Some(info) = s.c.barrier_info(b).filter(|i| i.released) {
                    let at = *released_at.get_or_insert_with(Instant::now);
                    let got = s.c.job_progress(job).map_or(0, |(g, _)| g);
                    if u64::try_from(got).unwrap_or(u64::MAX) >= info.entered || at.elapsed() >= AFTER_RELEASE {
                        break;
                    }
                }
                if let Err(e) = s.c.pump(Duration::from_millis(50)) {
                    eprintln!("plush apply: the event loop failed: {e}");
                    break;
                }
            }
            if let Some(info) = s.c.barrier_info(b) {
                let how = match (info.released, info.partial) {
                    (false, _) => "not released",
                    (true, true) => "partially released",
                    (true, false) => "released",
                };
                say(
                    json,
                    &format!("barrier after {}: {how}, {}/{} entered", p.name, info.entered, info.expected),
                    json!({"phase": p.name, "barrier": b, "released": info.released, "partial": info.partial,
                           "entered": info.entered, "expected": info.expected}),
                );
            }
        }
    }
    let outcome = s.c.job_outcome(job);
    !outcome.groups.iter().any(|g| status_text(&g.status).is_some())
}

/// Print one phase's groups (and name its failures); returns (code, ok, failed, lost,
/// unreachable).
fn report_phase(s: &mut Session, p: &PhaseSpec, r: &PhaseRun, json: bool) -> (u8, usize, usize, usize, usize) {
    let out = r.job.map(|j| s.c.job_outcome(j));
    let mut groups = out.as_ref().map_or_else(Vec::new, |o| o.groups.clone());
    crate::session::sort_groups(&mut groups);
    if json {
        let mut o = std::io::stdout().lock();
        for g in &groups {
            let _ = crate::session::write_group_json(&mut o, &s.labels, g, &[("phase", json!(p.name))]);
        }
    } else {
        println!("=== phase {} ({} hosts)", p.name, r.targeted.len());
        print_groups(&s.labels, &groups, false, s.output.max_output);
    }
    if let Some(job) = r.job {
        s.log(&crate::journal::Record::Shown(job), true);
    }
    let phase_dir = |d: &Option<std::path::PathBuf>| d.as_ref().map(|d| d.join(p.name.replace(['/', '\\'], "_")));
    let dirs = crate::session::OutputArgs {
        max_output: None,
        outdir: phase_dir(&s.output.outdir),
        errdir: phase_dir(&s.output.errdir),
    };
    let mut files = crate::session::HostFiles::new(&dirs);
    if files.any() {
        for g in &groups {
            for &node in &g.nodes {
                files.write_body(&s.labels, node, false, g.stdout_body());
                files.write_body(&s.labels, node, true, g.stderr_body());
            }
        }
    }
    let (mut ok, mut failed) = (0, 0);
    // Hosts whose client restarted during the phase (it was not run again there) count as lost.
    let restarted = out
        .as_ref()
        .map_or(0, |o| crate::session::name_restarted(&mut std::io::stderr().lock(), &s.labels, &o.lost, &groups));
    for g in groups.iter().filter(|g| g.status != ExitStatus::Lost) {
        match status_text(&g.status) {
            None => ok += g.nodes.len(),
            Some(why) => {
                failed += g.nodes.len();
                for h in &g.nodes {
                    eprintln!("plush: {}: phase {}: {why}", s.label(h), p.name);
                }
            }
        }
    }
    let answered: std::collections::BTreeSet<NodeId> = groups.iter().flat_map(|g| g.nodes.iter().copied()).collect();
    let missing = out.as_ref().map_or_else(Vec::new, |o| o.missing.clone());
    let lost = missing.iter().filter(|h| !answered.contains(h)).count() + restarted;
    for h in missing.iter().filter(|h| !answered.contains(h)) {
        eprintln!("plush: {}: phase {}: lost (joined, gave no result)", s.label(h), p.name);
    }
    let expected: std::collections::BTreeSet<NodeId> = out.as_ref().map_or_else(Default::default, |o| {
        o.groups.iter().flat_map(|g| g.nodes.iter().copied()).chain(o.missing.iter().copied()).collect()
    });
    let unreachable: Vec<&NodeId> = r.targeted.iter().filter(|h| !expected.contains(h)).collect();
    for h in &unreachable {
        eprintln!("plush: {}: phase {}: unreachable (not joined)", s.label(h), p.name);
    }
    let mut code = crate::session::largest_code(&groups);
    if lost > 0 || !unreachable.is_empty() {
        code = UNREACHABLE;
    }
    (code, ok, failed, lost, unreachable.len())
}
