//! `figures`: run the sweeps of `benches/figures.sh` with the `plush` binary, write the CSV and
//! draw the SVG plots (see `plush_benches::figures`).
//!
//! ```text
//! figures --plush PATH [--quick] [--out DIR] [--max-nodes N] [--min-nodes N] [--jobs J]
//!         [--large-only] [--append] [--replot]
//! ```
//!
//! `--large-only` runs only the curves drawn at every N (the tree with RanSub and a process
//! crash, and the star with its fd limit raised), for the largest points; `--append` adds the
//! new runs to the CSVs already in the output directory; `--replot` runs nothing and redraws
//! the plots from those CSVs. Every finished run is appended to `journal.jsonl` in the output
//! directory as it ends; `--resume` keeps the journal's runs and runs only the others.
//!
//! Simulations run `J` at a time (default 2); the local clusters (`plush run --local`) run one
//! at a time after them, alone on the machine. Each run is timed, and where `/usr/bin/time`
//! exists its peak RSS is read: `runs.csv` in the output directory lists every command with its
//! wall time, peak RSS and exit status.

use plush_benches::figures::{describe, jobs, plots, read_csv, samples_of, write_plot, Job, Sample, Sizes};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

struct Task {
    job: usize,
    x: f64,
    seed: u64,
}

struct Done {
    samples: Vec<Sample>,
    line: String,
}

fn run_one(plush: &str, job: &Job, t: &Task) -> Done {
    let args = job.args(t.x, t.seed);
    let timer = std::path::Path::new("/usr/bin/time").exists();
    let mut cmd = if timer {
        let mut c = Command::new("/usr/bin/time");
        c.args(["-f", "rss_kb=%M"]).arg(plush);
        c
    } else {
        Command::new(plush)
    };
    cmd.args(&args);
    let started = Instant::now();
    let out = cmd.output();
    let wall = started.elapsed().as_secs_f64();
    let (report, rss, code) = match &out {
        Ok(o) => {
            let stdout = String::from_utf8_lossy(&o.stdout);
            let report = stdout
                .lines()
                .rev()
                .find(|l| l.trim_start().starts_with('{'))
                .and_then(|l| serde_json::from_str::<Value>(l).ok());
            let stderr = String::from_utf8_lossy(&o.stderr);
            let rss = stderr.lines().rev().find_map(|l| l.strip_prefix("rss_kb=")).unwrap_or("").trim().to_owned();
            (report, rss, o.status.code().map_or("signal".into(), |c| c.to_string()))
        }
        Err(e) => {
            eprintln!("figures: cannot run {plush}: {e}");
            (None, String::new(), "spawn-failed".into())
        }
    };
    let command = format!("plush {}", args.join(" "));
    Done {
        samples: samples_of(job, t.x, t.seed, report.as_ref()),
        line: format!("\"{command}\",{wall:.3},{rss},{code}"),
    }
}

fn run_all(
    plush: &str,
    jobs: &Arc<Vec<Job>>,
    tasks: Vec<Task>,
    threads: usize,
    total: usize,
    done: &Mutex<Vec<Done>>,
    journal: &Mutex<Option<std::fs::File>>,
) {
    let queue = Arc::new(Mutex::new(tasks.into_iter().rev().collect::<Vec<_>>()));
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            let queue = Arc::clone(&queue);
            let jobs = Arc::clone(jobs);
            s.spawn(move || loop {
                let Some(t) = queue.lock().ok().and_then(|mut q| q.pop()) else { return };
                let d = run_one(plush, &jobs[t.job], &t);
                if let Ok(mut j) = journal.lock() {
                    if let Some(f) = j.as_mut() {
                        use std::io::Write as _;
                        let _ = writeln!(f, "{}", plush_benches::figures::journal_line(&d.samples, &d.line));
                    }
                }
                if let Ok(mut all) = done.lock() {
                    all.push(d);
                    eprintln!(
                        "figures: {}/{total} runs, {:.0} s: {}",
                        all.len(),
                        started.elapsed().as_secs_f64(),
                        all.last().map_or("", |d| d.line.as_str())
                    );
                }
            });
        }
    });
}

fn main() -> std::process::ExitCode {
    let mut quick = false;
    let mut out = PathBuf::from("docs/figures");
    let mut plush = String::from("plush");
    let mut max_nodes = 1e5;
    let mut threads = 2usize;
    let mut min_nodes = 0.0;
    let (mut large_only, mut append, mut replot, mut resume) = (false, false, false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_default();
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => out = PathBuf::from(val()),
            "--plush" => plush = val(),
            "--max-nodes" => max_nodes = val().parse().unwrap_or(max_nodes),
            "--jobs" => threads = val().parse().unwrap_or(threads),
            "--min-nodes" => min_nodes = val().parse().unwrap_or(min_nodes),
            "--large-only" => large_only = true,
            "--append" => append = true,
            "--replot" => replot = true,
            "--resume" => resume = true,
            other => {
                eprintln!("figures: unknown argument {other:?}\nusage: figures --plush PATH [--quick] [--out DIR] [--max-nodes N] [--jobs J]");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let mut sizes = if quick { Sizes::quick() } else { Sizes::full(max_nodes) };
    sizes.nodes.retain(|&n| n >= min_nodes);
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("figures: cannot create {}: {e}", out.display());
        return std::process::ExitCode::FAILURE;
    }
    let all_jobs = jobs(&sizes);
    // Jobs that sweep N (their template has `--nodes {N}`): the large-point filters apply to them.
    let sweeps_n = |j: &Job| j.template.contains("--nodes {N}") && !j.template.starts_with("run ");
    let jobs = Arc::new(if large_only || min_nodes > 0.0 {
        all_jobs
            .iter()
            .filter(|j| sweeps_n(j))
            .filter(|j| {
                !large_only || j.series.iter().any(|s| s.1 == "tree (Plush-M)" || s.1 == "star, fd limit raised")
            })
            .cloned()
            .collect::<Vec<_>>()
    } else {
        all_jobs.clone()
    });
    let (mut sims, mut locals) = (Vec::new(), Vec::new());
    // The journal: runs already done (with --resume), and where new ones are recorded.
    let journal_path = out.join("journal.jsonl");
    let mut resumed = Vec::new();
    if resume {
        for line in std::fs::read_to_string(&journal_path).unwrap_or_default().lines() {
            if let Some((run, command, samples)) = plush_benches::figures::parse_journal_line(line) {
                resumed.push((command, Done { samples, line: run }));
            }
        }
        eprintln!("figures: resuming after {} runs", resumed.len());
    }
    if !resume && !replot {
        let _ = std::fs::write(&journal_path, "");
    }
    let journal =
        Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(&journal_path).ok().filter(|_| !replot));
    let was_run = |job: &Job, x: f64, seed: u64| {
        let c = format!("plush {}", job.args(x, seed).join(" "));
        resumed.iter().any(|(r, _)| *r == c)
    };
    for (j, job) in jobs.iter().enumerate().filter(|_| !replot) {
        let local = job.template.starts_with("run ");
        for &x in &job.xs {
            for (k, &seed) in sizes.seeds.iter().enumerate() {
                if !local && k > 0 && x >= sizes.one_seed_from {
                    continue;
                }
                if was_run(job, x, seed) {
                    continue;
                }
                let t = Task { job: j, x, seed };
                if local {
                    locals.push(t)
                } else {
                    sims.push(t)
                }
            }
        }
    }
    // Small runs first: the plots fill from the left, the largest runs last.
    sims.sort_by(|a, b| a.x.total_cmp(&b.x).then(a.job.cmp(&b.job)));
    let total = sims.len() + locals.len();
    let started = Instant::now();
    let done = Mutex::new(resumed.into_iter().map(|r| r.1).collect::<Vec<_>>());
    run_all(&plush, &jobs, sims, threads, total, &done, &journal);
    run_all(&plush, &jobs, locals, 1, total, &done, &journal);
    let done = done.into_inner().unwrap_or_default();
    let wall = started.elapsed().as_secs_f64();

    let runs_path = out.join("runs.csv");
    let mut runs = match std::fs::read_to_string(&runs_path) {
        Ok(old) if append || replot => old,
        _ => String::from("command,wall_s,max_rss_kb,exit\n"),
    };
    let mut samples = Vec::new();
    if append || replot {
        for plot in plots() {
            samples.extend(read_csv(&out, &plot));
        }
    }
    for d in done {
        runs.push_str(&d.line);
        runs.push('\n');
        samples.extend(d.samples);
    }
    if !replot {
        runs.push_str(&format!("# sweep wall time {wall:.1} s, {threads} simulations at a time\n"));
    }
    if let Err(e) = std::fs::write(&runs_path, runs) {
        eprintln!("figures: cannot write runs.csv: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let mut failed = false;
    for plot in plots() {
        // The commands of the whole sweep (the plot may hold runs of several invocations).
        let mut whole = Sizes::full(1e6);
        if quick {
            whole = Sizes::quick();
        }
        // Each command with the values it was run with for this plot.
        let ran: std::collections::HashSet<&str> =
            samples.iter().filter(|s| s.plot == plot.name).map(|s| s.command.as_str()).collect();
        let seeds = whole.seeds.clone();
        let commands: Vec<String> = plush_benches::figures::jobs(&whole)
            .into_iter()
            .map(|mut j| {
                let job = j.clone();
                j.xs.retain(|&x| {
                    seeds.iter().any(|&sd| ran.contains(format!("plush {}", job.args(x, sd).join(" ")).as_str()))
                });
                j
            })
            .filter(|j| !j.xs.is_empty())
            .filter(|j| j.series.iter().any(|s| s.0 == plot.name))
            .map(|j| {
                describe(
                    &j,
                    &sizes.seeds,
                    if j.template.starts_with("run ") { f64::INFINITY } else { sizes.one_seed_from },
                )
            })
            .collect();
        if !samples.iter().any(|s| s.plot == plot.name && s.y.is_some()) {
            eprintln!("figures: no run gave {} a point", plot.name);
            failed = true;
        }
        match write_plot(&out, &plot, &samples, &commands) {
            Ok(p) => eprintln!("figures: wrote {}", p.display()),
            Err(e) => {
                eprintln!("figures: {e}");
                failed = true;
            }
        }
    }
    eprintln!("figures: sweep took {wall:.1} s");
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
