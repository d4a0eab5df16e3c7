//! The figures of `benches/figures.sh`: the seed's experiments (Topilski 2008, figures 4.1 to
//! 4.5) swept with `plush sim --json` (tree and star) and `plush run --local`, written as CSV and
//! drawn as SVG.
//!
//! A sweep is a list of [`Job`]s: one command line each (a template with `{N}` for the swept
//! value and `{S}` for the seed), run once per seed, and the figures read from its JSON report
//! ([`Extract`]). [`plots`] names the figures; [`write_plot`] writes `NAME.csv` (every run's
//! value), `NAME.txt` (the exact commands) and `NAME.svg` (median and min–max per point) into
//! one directory. The runner is the caller's: the `figures` binary runs the `plush` binary, the
//! tests run the simulator in process ([`scenario_for`]).

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// How a value is read from a run's JSON report; `None` when the run failed that phase (the
/// value then counts as a failure, not a point).
pub type Extract = fn(&Value) -> Option<f64>;

/// One command of a sweep, run once per (value, seed).
#[derive(Clone, Debug)]
pub struct Job {
    /// The `plush` arguments, with `{N}` and `{S}` for the swept value and the seed.
    pub template: String,
    /// The swept values.
    pub xs: Vec<f64>,
    /// What the run contributes: (plot, series, how to read the value).
    pub series: Vec<(&'static str, &'static str, Extract)>,
}

impl Job {
    /// The `plush` arguments for value `x` and seed `seed`.
    pub fn args(&self, x: f64, seed: u64) -> Vec<String> {
        let n = if x.fract() == 0.0 { format!("{}", x as u64) } else { format!("{x}") };
        self.template
            .replace("{N}", &n)
            .replace("{S}", &seed.to_string())
            .split_whitespace()
            .map(String::from)
            .collect()
    }
}

/// One value of one run.
#[derive(Clone, Debug)]
pub struct Sample {
    /// The plot it belongs to.
    pub plot: &'static str,
    /// Its curve.
    pub series: &'static str,
    /// The swept value.
    pub x: f64,
    /// The run's seed (or repetition).
    pub seed: u64,
    /// The value, `None` when that phase failed (not converged, refused, lost).
    pub y: Option<f64>,
    /// The command, as run.
    pub command: String,
}

/// A point drawn for reference, such as the thesis's figures.
#[derive(Clone, Debug)]
pub struct Mark {
    /// Where: x from `x0` to `x1` (a point when equal) at height `y`.
    pub x0: f64,
    /// See `x0`.
    pub x1: f64,
    /// See `x0`.
    pub y: f64,
    /// Its label in the legend.
    pub label: &'static str,
}

/// A figure.
#[derive(Clone, Debug)]
pub struct Plot {
    /// File name without extension.
    pub name: &'static str,
    /// Title, drawn above the plot.
    pub title: &'static str,
    /// Axis descriptions.
    pub x_label: &'static str,
    /// See `x_label`.
    pub y_label: &'static str,
    /// Logarithmic axes.
    pub log_x: bool,
    /// See `log_x`.
    pub log_y: bool,
    /// Reference marks.
    pub marks: Vec<Mark>,
    /// A sentence under the commands in `NAME.txt`: what to know when reading the plot.
    pub note: &'static str,
}

/// Sweep sizes.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// Node counts of the N sweeps.
    pub nodes: Vec<f64>,
    /// Node counts run only with the first seed (large points).
    pub one_seed_from: f64,
    /// Node count of the degree and kill-fraction sweeps.
    pub fixed_nodes: u32,
    /// Local cluster sizes (`plush run --local`).
    pub local: Vec<f64>,
    /// Seeds per point.
    pub seeds: Vec<u64>,
}

impl Sizes {
    /// `--quick`: every plot from a tiny sweep.
    pub fn quick() -> Sizes {
        Sizes {
            nodes: vec![10.0, 30.0, 100.0],
            one_seed_from: f64::INFINITY,
            fixed_nodes: 100,
            local: vec![10.0, 30.0],
            seeds: vec![1, 2, 3],
        }
    }

    /// The full sweep, up to `max_nodes`.
    pub fn full(max_nodes: f64) -> Sizes {
        let all = [10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6];
        Sizes {
            nodes: all.into_iter().filter(|&n| n <= max_nodes).collect(),
            one_seed_from: 1e5,
            fixed_nodes: 1000,
            local: vec![10.0, 30.0, 100.0, 300.0, 1000.0],
            seeds: vec![1, 2, 3],
        }
    }
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn built(v: &Value) -> bool {
    f(v, &["tree", "roots"]) == Some(1.0) && f(v, &["tree", "orphans"]) == Some(0.0)
}

fn build_s(v: &Value) -> Option<f64> {
    built(v).then(|| f(v, &["build", "sim_ms"]).map(|x| x / 1e3))?
}

fn all_replied(v: &Value) -> bool {
    let b = v.get("broadcast");
    b.is_some() && f(v, &["broadcast", "replies"]) == f(v, &["broadcast", "expected"])
}

fn bcast_avg_s(v: &Value) -> Option<f64> {
    (built(v) && all_replied(v)).then(|| f(v, &["broadcast", "avg_sim_ms"]).map(|x| x / 1e3))?
}

fn bcast_max_s(v: &Value) -> Option<f64> {
    (built(v) && all_replied(v)).then(|| f(v, &["broadcast", "max_sim_ms"]).map(|x| x / 1e3))?
}

fn converged(v: &Value) -> bool {
    v.get("converged").and_then(Value::as_bool) == Some(true)
}

fn recovery_s(v: &Value) -> Option<f64> {
    converged(v).then(|| f(v, &["recovery", "sim_ms"]).map(|x| x / 1e3))?
}

fn root_joins(v: &Value) -> Option<f64> {
    converged(v).then(|| f(v, &["recovery", "root_joins"]))?
}

fn local_build_s(v: &Value) -> Option<f64> {
    let s = v.get("summary")?;
    (f(s, &["ok"]) == f(s, &["hosts"])).then(|| f(s, &["build_ms"]).map(|x| x / 1e3))?
}

fn local_run_s(v: &Value) -> Option<f64> {
    let s = v.get("summary")?;
    (f(s, &["ok"]) == f(s, &["hosts"])).then(|| f(s, &["run_ms"]).map(|x| x / 1e3))?
}

/// The raised fd limit of the "star, fd limit raised" curve: more than any sweep's clients.
pub const RAISED_FDS: u32 = 1 << 24;

/// Every command of a sweep of `sizes`.
pub fn jobs(sizes: &Sizes) -> Vec<Job> {
    let n = sizes.nodes.clone();
    let fixed = sizes.fixed_nodes;
    let tree = "sim --json --nodes {N} --seed {S} --kill 0.25";
    let star = "sim --json --layout star --nodes {N} --seed {S} --kill 0.25";
    let raised =
        format!("sim --json --layout star --controller-fds {RAISED_FDS} --nodes {{N}} --seed {{S}} --kill 0.25");
    let mut v = vec![
        Job {
            template: tree.into(),
            xs: n.clone(),
            series: vec![
                ("build_vs_n", "tree (Plush-M)", build_s),
                ("broadcast_vs_n", "tree, average", bcast_avg_s),
                ("broadcast_vs_n", "tree, maximum", bcast_max_s),
                ("recovery_vs_n", "tree + RanSub, process crash", recovery_s),
            ],
        },
        Job {
            template: format!("{tree} --crash host"),
            xs: n.clone(),
            series: vec![("recovery_vs_n", "tree + RanSub, silent crash", recovery_s)],
        },
        Job {
            template: format!("{tree} --no-ransub-repair"),
            xs: n.clone(),
            series: vec![("recovery_vs_n", "tree, root only, process crash", recovery_s)],
        },
        Job {
            template: format!("{tree} --no-ransub-repair --crash host"),
            xs: n.clone(),
            series: vec![("recovery_vs_n", "tree, root only, silent crash", recovery_s)],
        },
        Job {
            template: star.into(),
            xs: n.clone(),
            series: vec![
                ("build_vs_n", "star, fd limit 1,024", build_s),
                ("broadcast_vs_n", "star (fd 1,024), average", bcast_avg_s),
                ("broadcast_vs_n", "star (fd 1,024), maximum", bcast_max_s),
                ("recovery_vs_n", "star (fd 1,024), process crash", recovery_s),
            ],
        },
        Job {
            template: format!("{star} --crash host"),
            xs: n.clone(),
            series: vec![("recovery_vs_n", "star (fd 1,024), silent crash", recovery_s)],
        },
        Job {
            template: raised,
            xs: n.clone(),
            series: vec![
                ("build_vs_n", "star, fd limit raised", build_s),
                ("broadcast_vs_n", "star (fd raised), maximum", bcast_max_s),
                ("recovery_vs_n", "star (fd raised), process crash", recovery_s),
            ],
        },
    ];
    let degrees = vec![12.0, 24.0, 48.0, 96.0];
    v.push(Job {
        template: format!("sim --json --nodes {fixed} --seed {{S}} --kill 0.25 --degree {{N}}"),
        xs: degrees.clone(),
        series: vec![("recovery_vs_degree", "process crash", recovery_s)],
    });
    v.push(Job {
        template: format!("sim --json --nodes {fixed} --seed {{S}} --kill 0.25 --degree {{N}} --crash host"),
        xs: degrees,
        series: vec![("recovery_vs_degree", "silent crash", recovery_s)],
    });
    let kills = vec![0.05, 0.1, 0.25, 0.5];
    v.push(Job {
        template: format!("sim --json --nodes {fixed} --seed {{S}} --kill {{N}}"),
        xs: kills.clone(),
        series: vec![("root_load_vs_kill", "RanSub repair", root_joins)],
    });
    v.push(Job {
        template: format!("sim --json --nodes {fixed} --seed {{S}} --kill {{N}} --no-ransub-repair"),
        xs: kills,
        series: vec![("root_load_vs_kill", "root only (--no-ransub-repair)", root_joins)],
    });
    v.push(Job {
        template: "run --local {N} --json -- true".into(),
        xs: sizes.local.clone(),
        series: vec![
            ("local_vs_sim", "loopback: build (launch + join)", local_build_s),
            ("local_vs_sim", "loopback: run `true`, all results", local_run_s),
        ],
    });
    v.push(Job {
        template: "sim --json --nodes {N} --seed {S}".into(),
        xs: sizes.local.clone(),
        series: vec![
            ("local_vs_sim", "simulator: build (joins, no launch)", build_s),
            ("local_vs_sim", "simulator: broadcast, last reply", bcast_max_s),
        ],
    });
    v
}

/// The figures.
pub fn plots() -> Vec<Plot> {
    vec![
        Plot {
            name: "build_vs_n",
            title: "Build time against N (thesis fig. 4.1)",
            x_label: "nodes N",
            y_label: "simulated build time (s)",
            log_x: true,
            log_y: true,
            marks: vec![],
            note: "No launch cost. The tree: every member that joined invites the next nodes, 32 at once (tree \
                   launch, the simulator's default without --job). The star: its controller starts 50 at a time, \
                   the only launcher it has. The star with the default fd limit of 1,024 fails past 1,024 clients \
                   (refused, never joined): no point there.",
        },
        Plot {
            name: "broadcast_vs_n",
            title: "Broadcast round trip against N (thesis fig. 4.2)",
            x_label: "nodes N",
            y_label: "time to a reply at the root/controller (s)",
            log_x: true,
            log_y: true,
            marks: vec![Mark { x0: 1000.0, x1: 1000.0, y: 10.0, label: "thesis: < 10 s on average at 1,000 nodes" }],
            note: "Average and last reply of one broadcast from the root (tree) or the controller (star), every \
                   live node replying. Latency 0.5..10 ms one way (a campus testbed).",
        },
        Plot {
            name: "recovery_vs_n",
            title: "Recovery after a 25 % kill against N (thesis figs. 4.3, 4.4)",
            x_label: "nodes N",
            y_label: "simulated recovery time (s)",
            log_x: true,
            log_y: true,
            marks: vec![
                Mark { x0: 10.0, x1: 100.0, y: 12.0, label: "thesis: Plush-M ~12 s (PlanetLab, 10-100 hosts)" },
                Mark { x0: 10.0, x1: 100.0, y: 7.0, label: "thesis: Plush star ~7 s (PlanetLab, 10-100 hosts)" },
            ],
            note: "From the kill to every survivor in one tree (star: to the controller dropping every dead \
                   client), read at 250 ms ticks. Process crash: the kernel resets the links; silent crash \
                   (--crash host): noticed by the 3 s heartbeat timeout.",
        },
        Plot {
            name: "recovery_vs_degree",
            title: "Recovery after a 25 % kill against the degree (thesis fig. 4.5)",
            x_label: "degree (most children per node)",
            y_label: "simulated recovery time (s)",
            log_x: true,
            log_y: false,
            marks: vec![],
            note: "Tree with RanSub repair.",
        },
        Plot {
            name: "root_load_vs_kill",
            title: "Root load during repair against the kill fraction",
            x_label: "fraction of nodes killed",
            y_label: "joins handled by the root during repair",
            log_x: false,
            log_y: false,
            marks: vec![],
            note: "Process crashes. RanSub repair sends orphans to random non-descendants first; root-only sends \
                   every orphan to the root.",
        },
        Plot {
            name: "local_vs_sim",
            title: "Real local clusters against the simulator",
            x_label: "clients N",
            y_label: "time (s)",
            log_x: true,
            log_y: true,
            marks: vec![],
            note: "Loopback: real client processes on 127.x addresses (plush run --local, launch included), on a \
                   shared 2-core machine. Simulator: the same N, joins without launch, 0.5..10 ms latency.",
        },
    ]
}

/// A named curve: (x, median, min, max) per point.
type Curve<'a> = (&'a str, Vec<(f64, f64, f64, f64)>);

/// Median, least and most of `ys` (not empty).
pub fn spread(ys: &mut [f64]) -> (f64, f64, f64) {
    ys.sort_by(f64::total_cmp);
    let m = ys.len() / 2;
    let med = if ys.len() % 2 == 1 { ys[m] } else { (ys[m - 1] + ys[m]) / 2.0 };
    (med, ys[0], ys[ys.len() - 1])
}

/// One curve: (x, median, min, max) per point with at least one value.
pub fn curve(samples: &[&Sample]) -> Vec<(f64, f64, f64, f64)> {
    let mut by: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for s in samples {
        if let Some(y) = s.y {
            by.entry(s.x.to_bits()).or_default().push(y);
        }
    }
    let mut v: Vec<_> = by
        .into_iter()
        .map(|(x, mut ys)| {
            let (m, lo, hi) = spread(&mut ys);
            (f64::from_bits(x), m, lo, hi)
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Write `plot`'s CSV, commands and SVG into `dir` from `samples` (the plot's own are picked);
/// `commands` are the exact command lines that made them (a line each). Returns the SVG's path.
pub fn write_plot(
    dir: &Path,
    plot: &Plot,
    samples: &[Sample],
    commands: &[String],
) -> Result<std::path::PathBuf, String> {
    let mine: Vec<&Sample> = samples.iter().filter(|s| s.plot == plot.name).collect();
    let mut csv = String::from("series,x,seed,value,command\n");
    for s in &mine {
        let y = s.y.map_or_else(|| "failed".to_owned(), |y| format!("{y}"));
        let _ = writeln!(csv, "\"{}\",{},{},{},\"{}\"", s.series, s.x, s.seed, y, s.command);
    }
    let io = |e: std::io::Error| e.to_string();
    std::fs::write(dir.join(format!("{}.csv", plot.name)), csv).map_err(io)?;
    let mut txt = format!("{}\n\nData: {}.csv (every run; \"failed\" where the phase did not converge). Points: median over the seeds, bars from min to max.\n{}\n\nCommands:\n", plot.title, plot.name, plot.note.split_whitespace().collect::<Vec<_>>().join(" "));
    for c in commands {
        let _ = writeln!(txt, "  {c}");
    }
    std::fs::write(dir.join(format!("{}.txt", plot.name)), txt).map_err(io)?;

    let mut names: Vec<&'static str> = Vec::new();
    for s in &mine {
        if !names.contains(&s.series) {
            names.push(s.series);
        }
    }
    let curves: Vec<Curve> = names
        .iter()
        .map(|n| {
            let v: Vec<&Sample> = mine.iter().copied().filter(|s| s.series == *n).collect();
            (*n, curve(&v))
        })
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for (_, c) in &curves {
        for &(x, _, lo, hi) in c {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(lo);
            y1 = y1.max(hi);
        }
    }
    for m in &plot.marks {
        x0 = x0.min(m.x0);
        x1 = x1.max(m.x1);
        y0 = y0.min(m.y);
        y1 = y1.max(m.y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (1.0, 10.0, 1.0, 10.0);
    }
    let (x0, x1) =
        if plot.log_x { (x0 / 1.5, x1 * 1.5) } else { (x0 - (x1 - x0) * 0.05, x1 + (x1 - x0) * 0.05 + 1e-9) };
    let span = (x1 - x0) * 0.05;
    // Room above the curves for the legend.
    let legend = curves.len() + plot.marks.len();
    let (y0, y1) = if plot.log_y {
        let (lo, hi) = (y0.max(1e-4) / 2.0, y1.max(1e-4) * 2.0);
        (lo, hi * (hi / lo).powf(0.06 * legend as f64 + 0.1))
    } else {
        (0.0f64.min(y0), y1 * (1.15 + 0.07 * legend as f64) + 1e-9)
    };
    let path = dir.join(format!("{}.svg", plot.name));
    let svg_path = path.clone();
    let root = SVGBackend::new(&svg_path, (900, 600)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        match (plot.log_x, plot.log_y) {
            (true, true) => chart(&root, plot, (x0..x1).log_scale(), (y0..y1).log_scale(), true, span, &curves)?,
            (true, false) => chart(&root, plot, (x0..x1).log_scale(), y0..y1, true, span, &curves)?,
            (false, true) => chart(&root, plot, x0..x1, (y0..y1).log_scale(), false, span, &curves)?,
            (false, false) => chart(&root, plot, x0..x1, y0..y1, false, span, &curves)?,
        }
        root.present()?;
        Ok(())
    };
    let drawn = draw().map_err(|e| format!("{}: {e}", path.display()));
    drop(root);
    drawn?;
    Ok(path)
}

/// Point marker number `i`: circle, triangle, square, diamond, in turn, filled then hollow.
fn marker<DB: DrawingBackend>(at: (i32, i32), i: usize, color: RGBColor) -> DynElement<'static, DB, (i32, i32)> {
    let style = if (i / 4) % 2 == 0 { color.filled() } else { color.stroke_width(2) };
    let (x, y) = at;
    match i % 4 {
        0 => Circle::new((x, y), 4, style).into_dyn(),
        1 => Polygon::new(vec![(x, y - 5), (x - 5, y + 4), (x + 5, y + 4)], style).into_dyn(),
        2 => Rectangle::new([(x - 4, y - 4), (x + 4, y + 4)], style).into_dyn(),
        _ => Polygon::new(vec![(x, y - 5), (x - 5, y), (x, y + 5), (x + 5, y)], style).into_dyn(),
    }
}

/// A tick label: integers without decimals and with thousands separators, else at most three
/// significant digits.
pub fn tick(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() >= 1.0 && v.abs() < 1e15 {
        let digits = format!("{}", v.abs() as u64);
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        if v < 0.0 {
            out.insert(0, '-');
        }
        out
    } else {
        let s = format!("{v:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s.is_empty() {
            "0".into()
        } else {
            s.to_owned()
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn chart<'a, X, Y>(
    root: &DrawingArea<SVGBackend<'a>, Shift>,
    plot: &Plot,
    xr: X,
    yr: Y,
    log_x: bool,
    x_span: f64,
    curves: &[Curve],
) -> Result<(), Box<dyn std::error::Error + 'a>>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut ch = ChartBuilder::on(root)
        .caption(plot.title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(xr, yr)?;
    ch.configure_mesh()
        .x_desc(plot.x_label)
        .y_desc(plot.y_label)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let k = curves.len() as f64;
    for (i, (name, c)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        // Curves are shifted sideways by a few percent each, so that equal points stay visible.
        let shift = 1.0 + 0.025 * (i as f64 - (k - 1.0) / 2.0);
        let at = |x: f64| if log_x { x * shift } else { x + (shift - 1.0) * x_span };
        let pts: Vec<(f64, f64, f64, f64)> = c.iter().map(|p| (at(p.0), p.1, p.2, p.3)).collect();
        ch.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), color.stroke_width(2)))?.label(*name).legend(
            move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (20, 0)], color.stroke_width(2))
                    + marker((10, 0), i, color)
            },
        );
        ch.draw_series(pts.iter().map(|p| EmptyElement::at((p.0, p.1)) + marker((0, 0), i, color)))?;
        ch.draw_series(pts.iter().map(|p| ErrorBar::new_vertical(p.0, p.2, p.1, p.3, color, 6)))?;
    }
    for (i, m) in plot.marks.iter().enumerate() {
        let color = if i % 2 == 0 { BLACK } else { RGBColor(120, 120, 120) };
        let pts = if m.x0 == m.x1 { vec![(m.x0, m.y)] } else { vec![(m.x0, m.y), (m.x1, m.y)] };
        ch.draw_series(pts.iter().map(|&p| Cross::new(p, 7, color.stroke_width(2))))?
            .label(m.label)
            .legend(move |(x, y)| Cross::new((x + 10, y), 5, color.stroke_width(2)));
        if pts.len() == 2 {
            ch.draw_series(LineSeries::new(pts, color.stroke_width(1)))?;
        }
    }
    ch.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

/// The command lines of `job` as run, shortened: one line per template with the values and
/// seeds it ran with.
pub fn describe(job: &Job, seeds: &[u64], one_seed_from: f64) -> String {
    let xs: Vec<String> = job.xs.iter().map(|x| format!("{x}")).collect();
    let many = job.xs.iter().filter(|&&x| x < one_seed_from).count();
    let seeds_s: Vec<String> = seeds.iter().map(u64::to_string).collect();
    let mut s = format!("plush {}   with N in {{{}}}", job.template, xs.join(", "));
    if job.template.contains("{S}") {
        let _ = write!(s, ", S in {{{}}}", seeds_s.join(", "));
        if many < job.xs.len() {
            let _ = write!(s, " (only S = {} for N >= {one_seed_from})", seeds[0]);
        }
    } else {
        let _ = write!(s, ", {} repetitions", seeds.len());
    }
    s
}

/// The simulator scenario of `plush` arguments `args` (the flags [`jobs`] uses), for running a
/// sweep in process; `None` for anything else (such as `plush run`).
pub fn scenario_for(args: &[String]) -> Option<plush_sim::Scenario> {
    if args.first().map(String::as_str) != Some("sim") {
        return None;
    }
    let mut sc = plush_sim::Scenario::default();
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--json" => {}
            "--nodes" => sc.nodes = val().parse().ok()?,
            "--seed" => sc.seed = val().parse().ok()?,
            "--kill" => sc.kill = val().parse().ok()?,
            "--degree" => sc.config.max_children = val().parse().ok()?,
            "--controller-fds" => sc.controller_fds = val().parse().ok()?,
            "--no-ransub-repair" => sc.config.ransub_repair = false,
            "--crash" => {
                sc.crash = if val() == "host" { plush_sim::CrashKind::Host } else { plush_sim::CrashKind::Process }
            }
            "--layout" => sc.layout = if val() == "star" { plush_sim::Layout::Star } else { plush_sim::Layout::Tree },
            _ => return None,
        }
    }
    Some(sc)
}

/// Collect one run's samples.
pub fn samples_of(job: &Job, x: f64, seed: u64, report: Option<&Value>) -> Vec<Sample> {
    let command = format!("plush {}", job.args(x, seed).join(" "));
    job.series
        .iter()
        .map(|&(plot, series, read)| Sample {
            plot,
            series,
            x,
            seed,
            y: report.and_then(read),
            command: command.clone(),
        })
        .collect()
}

/// Read back the samples of `plot` from its CSV in `dir` (written by [`write_plot`]), so that
/// runs can be added to a sweep or the plots redrawn without running it again. Rows whose
/// series no [`jobs`] curve names are skipped.
pub fn read_csv(dir: &Path, plot: &Plot) -> Vec<Sample> {
    let Ok(text) = std::fs::read_to_string(dir.join(format!("{}.csv", plot.name))) else { return Vec::new() };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let Some(rest) = line.strip_prefix('"') else { continue };
        let Some((series, rest)) = rest.split_once("\",") else { continue };
        let mut it = rest.splitn(4, ',');
        let (Some(x), Some(seed), Some(y), Some(cmd)) = (it.next(), it.next(), it.next(), it.next()) else { continue };
        let Some((_, series)) = lookup(plot.name, series) else { continue };
        let (Ok(x), Ok(seed)) = (x.parse::<f64>(), seed.parse::<u64>()) else { continue };
        out.push(Sample {
            plot: plot.name,
            series,
            x,
            seed,
            y: y.parse::<f64>().ok(),
            command: cmd.trim_matches('"').to_owned(),
        });
    }
    out
}

/// The static names of curve `series` of plot `plot`, if a [`jobs`] curve has them.
pub fn lookup(plot: &str, series: &str) -> Option<(&'static str, &'static str)> {
    jobs(&Sizes::quick())
        .iter()
        .flat_map(|j| j.series.iter().map(|s| (s.0, s.1)))
        .find(|s| s.0 == plot && s.1 == series)
}

/// One journal line: a run's samples as JSON, so that an interrupted sweep can resume.
pub fn journal_line(samples: &[Sample], runs_line: &str) -> String {
    let v: Vec<serde_json::Value> =
        samples.iter().map(|s| serde_json::json!([s.plot, s.series, s.x, s.seed, s.y, s.command])).collect();
    serde_json::json!({ "run": runs_line, "samples": v }).to_string()
}

/// Read a journal line back: the run's line of `runs.csv`, its command and its samples.
pub fn parse_journal_line(line: &str) -> Option<(String, String, Vec<Sample>)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let run = v.get("run")?.as_str()?.to_owned();
    let mut samples = Vec::new();
    let mut command = String::new();
    for s in v.get("samples")?.as_array()? {
        let a = s.as_array()?;
        let (plot, series) = lookup(a.first()?.as_str()?, a.get(1)?.as_str()?)?;
        command = a.get(5)?.as_str()?.to_owned();
        samples.push(Sample {
            plot,
            series,
            x: a.get(2)?.as_f64()?,
            seed: a.get(3)?.as_u64()?,
            y: a.get(4)?.as_f64(),
            command: command.clone(),
        });
    }
    Some((run, command, samples))
}
