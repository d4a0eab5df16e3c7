//! `plush sim`: run one simulated scenario and report on it.
//!
//! The flags map one to one onto [`plush_sim::Scenario`]; every value is checked while parsing,
//! so a bad one is reported by clap, naming the flag, with exit status 2. The seed is always
//! printed (and is the `seed` field of the JSON report), so any run can be reproduced; the
//! summary ends with the exact command line that does so.

use clap::{Args, ValueEnum};
use plush_sim::{CrashKind, Layout, Scenario, SimReport};
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Default number of nodes.
const DEFAULT_NODES: u32 = 1000;
/// Most nodes: simulated nodes are named `127.x.y.z`, which leaves 2^24 - 2 addresses.
const MAX_NODES: u32 = (1 << 24) - 2;
/// Default fan-out: RandTree's 12 children.
const DEFAULT_DEGREE: u32 = 12;
/// Default one-way latency range, in milliseconds: a testbed of clusters on one campus.
/// (`--latency 5..100` models a wide-area testbed such as PlanetLab.)
const DEFAULT_LATENCY: Latency = Latency { min_ms: 0.5, max_ms: 10.0 };
/// Default delay before a partition heals, in seconds.
const DEFAULT_HEAL_AFTER_S: f64 = 30.0;
/// Default limit on the simulated time of each phase, in seconds.
const DEFAULT_PHASE_LIMIT_S: f64 = 300.0;
/// Default per-node link budget.
const DEFAULT_FD_BUDGET: u32 = 1024;
/// Default RanSub subset size.
const DEFAULT_RANSUB_SIZE: u32 = 10;
/// Default RanSub epochs observed before the faults.
const DEFAULT_STEADY_EPOCHS: u32 = 4;
/// Default fd limit of the star's controller (`--controller-fds`).
const DEFAULT_CONTROLLER_FDS: u32 = 1024;
/// Largest degree: the root sends its children their sibling list in one message, and a list on
/// the wire holds at most this many entries.
const MAX_DEGREE: u32 = plush_core::wire::MAX_LIST as u32;

/// Flags of `plush sim`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("controller_return").args(["controller_back_after", "controller_never_back"])))]
pub struct SimArgs {
    /// Number of simulated nodes (at most 16,777,214).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_NODES,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_NODES)))]
    pub nodes: u32,

    /// Most children of any node in the tree (RandTree's fan-out).
    #[arg(long, value_name = "D", default_value_t = DEFAULT_DEGREE,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DEGREE)))]
    pub degree: u32,

    /// Master seed of every random choice in the run [default: derived from the clock, and
    /// printed].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,

    /// One-way delay of each frame, in milliseconds: the minimum plus an exponential tail,
    /// capped at the maximum.
    #[arg(long, value_name = "MIN_MS..MAX_MS", default_value_t = DEFAULT_LATENCY,
          allow_hyphen_values = true)]
    pub latency: Latency,

    /// Percent of packets lost (0 to 100): a lost frame arrives one TCP retransmission timeout
    /// (200 ms) late and the frames behind it on its link wait for it; a lost SYN or SYN-ACK
    /// delays its connect by 1 s. As `benches/netem.sh --loss` loses packets on real links.
    #[arg(long, value_name = "PCT", default_value_t = 0.0, value_parser = parse_percent,
          allow_negative_numbers = true)]
    pub loss: f64,

    /// How long a process crash's resets take to reach its peers, in milliseconds, drawn like
    /// --latency [default: the latency]. On one machine running many clients, the resets of a
    /// crash wake all its peers at once.
    #[arg(long, value_name = "MIN_MS..MAX_MS", allow_hyphen_values = true)]
    pub reset_latency: Option<Latency>,

    /// Fraction of the nodes to kill once the tree is built (0 to 1; the root is spared unless
    /// --kill-root).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0, value_parser = parse_fraction,
          allow_negative_numbers = true)]
    pub kill: f64,

    /// Kill the root as well.
    #[arg(long)]
    pub kill_root: bool,

    /// Kill the victims one after another, evenly over this many seconds: the root first, then
    /// by id, the order in which failover picks new roots (default: all at once).
    #[arg(long, value_name = "SECS", default_value_t = 0.0,
          value_parser = parse_non_negative_secs, allow_negative_numbers = true)]
    pub kill_spread: f64,

    /// How killed nodes die.
    #[arg(long, value_enum, default_value_t = Crash::Process)]
    pub crash: Crash,

    /// Cut this fraction of the nodes off from the rest (0 to 1), then heal the cut.
    #[arg(long, value_name = "FRACTION", value_parser = parse_fraction,
          allow_negative_numbers = true)]
    pub partition: Option<f64>,

    /// Seconds of simulated time before the partition heals.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_HEAL_AFTER_S,
          value_parser = parse_non_negative_secs, allow_negative_numbers = true)]
    pub heal_after: f64,

    /// Make the partition one-way: the rest cannot reach the cut-off nodes, they still reach it.
    #[arg(long, requires = "partition")]
    pub one_way: bool,

    /// Clog this many random tree links (all traffic held) until --heal-after.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub clogs: u32,

    /// Make this many random nodes refuse every connection until --heal-after.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub refuse: u32,

    /// Restart the killed nodes this many seconds after the fault; they rejoin.
    #[arg(long, value_name = "SECS", value_parser = parse_non_negative_secs, allow_negative_numbers = true)]
    pub restart_after: Option<f64>,

    /// Links each node may hold at once (its file-descriptor budget); idle unpinned links are
    /// closed least-recently-used first, tree links never.
    #[arg(long, value_name = "K", default_value_t = DEFAULT_FD_BUDGET,
          value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    pub fd_budget: u32,

    /// Size of RanSub's random subsets.
    #[arg(long, value_name = "S", default_value_t = DEFAULT_RANSUB_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub ransub_size: u32,

    /// Repair through the root only (no RanSub candidates), for comparison.
    #[arg(long)]
    pub no_ransub_repair: bool,

    /// RanSub epochs to observe before the faults, for the uniformity test.
    #[arg(long, value_name = "K", default_value_t = DEFAULT_STEADY_EPOCHS)]
    pub steady_epochs: u32,

    /// Longest simulated time, in seconds, that each phase may take to converge.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_PHASE_LIMIT_S,
          value_parser = parse_positive_secs, allow_negative_numbers = true)]
    pub phase_limit: f64,

    /// Run a job through the control plane: a controller invites (and launches) every host,
    /// then every node runs a simulated process of 0.5 to 1.5 s and the results travel up.
    #[arg(long)]
    pub job: bool,

    /// With --job: strike the faults while the job runs (else it runs after the repair).
    #[arg(long, requires = "job")]
    pub fault_during_job: bool,

    /// With --job: the number of distinct outputs among the nodes (1: all print the same line).
    #[arg(long, value_name = "K", default_value_t = 1, requires = "job",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub job_outputs: u32,

    /// With --job: kill the controller this many seconds after the job starts (with
    /// --controller-back-after or --controller-never-back). The JSON gains `controller`.
    #[arg(long, value_name = "SECS", requires = "job", requires = "controller_return",
          value_parser = parse_non_negative_secs, allow_negative_numbers = true)]
    pub controller_crash_at: Option<f64>,

    /// A new controller process comes back this many seconds after the crash: it resumes from
    /// what its journal holds (hosts, jobs, results shown) and must show every result once.
    #[arg(long, value_name = "SECS", requires = "controller_crash_at",
          value_parser = parse_non_negative_secs, allow_negative_numbers = true)]
    pub controller_back_after: Option<f64>,

    /// No controller comes back: the run checks that every node is gone within the linger
    /// and one RanSub epoch of the crash.
    #[arg(long, requires = "controller_crash_at")]
    pub controller_never_back: bool,

    /// How long the tree outlives its controller, in seconds [default: 600, the clients'
    /// default].
    #[arg(long, value_name = "SECS", value_parser = parse_non_negative_secs, allow_negative_numbers = true)]
    pub linger: Option<f64>,

    /// Print the report as one JSON object on standard output instead of a summary.
    #[arg(long)]
    pub json: bool,

    /// `tree`: Plush-M. `star`: Plush before it, the controller linked to every client (no
    /// tree, no RanSub; see `plush_sim::star`).
    #[arg(long, value_enum, default_value_t = LayoutArg::Tree)]
    pub layout: LayoutArg,

    /// With --layout star: client links the controller can hold at once (its fd limit); past
    /// it, connections are refused.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONTROLLER_FDS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub controller_fds: u32,

    /// With --job: one launch takes this many milliseconds at its launcher (a login and a
    /// process start), on top of a round trip, with --launch-fanout at once per launcher
    /// [default: 100, and any number at once, when neither flag is given].
    #[arg(long, value_name = "MS", requires = "job", value_parser = parse_launch_ms, allow_negative_numbers = true)]
    pub launch_ms: Option<f64>,

    /// Launches (with --job) or invitations (without) each launcher, the controller or a member
    /// with --launch-from tree, carries out at once [default: 32].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub launch_fanout: Option<u32>,

    /// Who starts the hosts. With --job: `controller` (the default, as `plush run`) invites and
    /// launches every host; `tree`: members that joined launch shares of the hosts. Without
    /// --job (no controller, no launch cost): `tree` (the default) has every member that
    /// joined invite the next ones, --launch-fanout at once; `controller` starts 50 at once
    /// in all, each asking random members and the founder.
    #[arg(long, value_enum)]
    pub launch_from: Option<LaunchFrom>,

    /// Run N scenarios drawn from every knob at once (see `plush_sim::swarm`) instead of one,
    /// in parallel, and check each against the swarm's oracle. Each failure prints the `plush
    /// sim` line that repeats it; the last line is the summary (JSON with --json). The other
    /// scenario flags are ignored.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub swarm: Option<u64>,

    /// With --swarm: run i draws its scenario from seed S + i.
    #[arg(long, value_name = "S", default_value_t = 1, requires = "swarm")]
    pub seed_base: u64,

    /// With --swarm: scenarios run at once [default: the machine's cores].
    #[arg(long, value_name = "J", requires = "swarm",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: Option<u32>,

    /// With --swarm: the range of node counts drawn.
    #[arg(long, value_name = "MIN..MAX", default_value = "50..2000", requires = "swarm")]
    pub swarm_nodes: NodeRange,
}

/// A range of node counts `MIN..MAX`, both included (`--swarm-nodes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRange {
    /// Fewest nodes (at least 2).
    pub min: u32,
    /// Most nodes (at most 16,777,214).
    pub max: u32,
}

impl FromStr for NodeRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once("..").ok_or_else(|| format!("expected MIN..MAX, such as 50..2000, not {s:?}"))?;
        let num = |x: &str| x.trim().parse::<u32>().map_err(|_| format!("{x:?} is not a node count"));
        let (min, max) = (num(a)?, num(b)?);
        if min < 2 || max > MAX_NODES || min > max {
            return Err(format!("need 2 <= MIN <= MAX <= {MAX_NODES}, not {min}..{max}"));
        }
        Ok(NodeRange { min, max })
    }
}

/// Who launches the hosts (`--launch-from`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LaunchFrom {
    /// The controller invites (and launches) every host.
    #[default]
    Controller,
    /// Members that joined launch and invite shares of the hosts (tree launch).
    Tree,
}

impl fmt::Display for LaunchFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LaunchFrom::Controller => "controller",
            LaunchFrom::Tree => "tree",
        })
    }
}

/// Default launches at once per launcher (`--launch-fanout`).
pub const DEFAULT_LAUNCH_FANOUT: u32 = 32;

/// How the nodes are connected (`--layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// Plush-M's tree.
    Tree,
    /// Plush's star: the controller linked to every client.
    Star,
}

/// How killed nodes die (`--crash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Crash {
    /// The process dies: its kernel resets every connection at once.
    Process,
    /// The whole host dies: silence, noticed only through timeouts.
    Host,
}

impl From<Crash> for CrashKind {
    fn from(c: Crash) -> Self {
        match c {
            Crash::Process => CrashKind::Process,
            Crash::Host => CrashKind::Host,
        }
    }
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Crash::Process => "process",
            Crash::Host => "host",
        })
    }
}

/// A latency range `MIN_MS..MAX_MS` (`--latency`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Smallest one-way delay, in milliseconds.
    pub min_ms: f64,
    /// Largest one-way delay, in milliseconds.
    pub max_ms: f64,
}

impl FromStr for Latency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (min, max) =
            s.split_once("..").ok_or_else(|| format!("expected MIN_MS..MAX_MS, such as 5..100, not {s:?}"))?;
        let min_ms = parse_ms(min, "minimum")?;
        let max_ms = parse_ms(max, "maximum")?;
        if min_ms > max_ms {
            return Err(format!("the minimum ({min_ms} ms) is larger than the maximum ({max_ms} ms)"));
        }
        Ok(Latency { min_ms, max_ms })
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.min_ms, self.max_ms)
    }
}

/// One bound of a latency range: a finite, non-negative number of milliseconds.
fn parse_ms(s: &str, which: &str) -> Result<f64, String> {
    let s = s.trim();
    let v: f64 = s.parse().map_err(|_| format!("the {which} {s:?} is not a number of milliseconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("the {which} must be a finite number of milliseconds, at least 0, not {s}"));
    }
    Ok(v)
}

/// A fraction between 0 and 1 inclusive.
fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("must be a fraction between 0 and 1, not {s}"));
    }
    Ok(v)
}

/// A percentage, 0 to 100.
fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("must be a percentage between 0 and 100, not {s}"));
    }
    Ok(v)
}

/// A finite number of seconds, at least 0.
fn parse_non_negative_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("must be a finite number of seconds, at least 0, not {s}"));
    }
    Ok(v)
}

/// A launch's time in milliseconds: finite, at least 0, at most an hour.
fn parse_launch_ms(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of milliseconds"))?;
    if !v.is_finite() || !(0.0..=3_600_000.0).contains(&v) {
        return Err(format!("must be a number of milliseconds from 0 to 3600000, not {s}"));
    }
    Ok(v)
}

/// A finite number of seconds, more than 0.
fn parse_positive_secs(s: &str) -> Result<f64, String> {
    let v = parse_non_negative_secs(s)?;
    if v == 0.0 {
        return Err("must be more than 0 seconds".to_owned());
    }
    Ok(v)
}

/// A seed from the clock, for runs that name none: the nanoseconds since the epoch and the
/// process id, mixed so that runs started in the same instant differ.
fn seed_from_clock() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default();
    // SplitMix64's finaliser: consecutive inputs give unrelated outputs.
    let mut z = nanos ^ (u64::from(std::process::id()) << 32);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SimArgs {
    /// The scenario these flags describe, with `seed` as its master seed.
    pub fn scenario(&self, seed: u64) -> Scenario {
        let mut scenario = Scenario {
            nodes: self.nodes,
            seed,
            latency_min_ms: self.latency.min_ms,
            latency_max_ms: self.latency.max_ms,
            loss: self.loss / 100.0,
            reset_latency_ms: self.reset_latency.map(|l| (l.min_ms, l.max_ms)),
            kill: self.kill,
            kill_root: self.kill_root,
            kill_spread_s: self.kill_spread,
            crash: self.crash.into(),
            partition: self.partition,
            heal_after_s: self.heal_after,
            one_way: self.one_way,
            clogs: self.clogs,
            refuse: self.refuse,
            restart_after_s: self.restart_after,
            steady_epochs: self.steady_epochs,
            phase_limit_s: self.phase_limit,
            job: self.job,
            fault_during_job: self.fault_during_job,
            job_outputs: self.job_outputs,
            controller_crash_at_s: self.controller_crash_at,
            controller_back_after_s: self.controller_back_after.filter(|_| !self.controller_never_back),
            ..Scenario::default()
        };
        if let Some(l) = self.linger {
            scenario.config.linger = std::time::Duration::from_secs_f64(l);
        }
        // The range checks keep these conversions lossless.
        scenario.config.max_children = self.degree as usize;
        scenario.config.max_links = self.fd_budget as usize;
        scenario.config.ransub_size = self.ransub_size as usize;
        scenario.config.ransub_repair = !self.no_ransub_repair;
        scenario.layout = if self.layout == LayoutArg::Star { Layout::Star } else { Layout::Tree };
        scenario.controller_fds = self.controller_fds;
        let fanout = self.launch_fanout.unwrap_or(DEFAULT_LAUNCH_FANOUT);
        if self.launch_ms.is_some() || self.launch_fanout.is_some() {
            let ms = self.launch_ms.unwrap_or(plush_sim::LAUNCH_MS);
            scenario.launch = Some(plush_sim::LaunchModel { ms, fanout });
            // As `plush run` does (runs without a launch model keep their earlier traces).
            scenario.config.launch_ahead = self.job;
        }
        scenario.config.tree_launch = self.job && self.launch_from == Some(LaunchFrom::Tree);
        scenario.paced_by_members = self.launch_from != Some(LaunchFrom::Controller);
        scenario.config.launch_fanout = fanout as usize;
        scenario
    }

    /// The command line that repeats this run: the seed, and every flag that differs from its
    /// default.
    pub fn reproduce(&self, seed: u64) -> String {
        let mut cmd = format!("plush sim --nodes {} --seed {seed}", self.nodes);
        // Writing to a String cannot fail.
        if self.degree != DEFAULT_DEGREE {
            let _ = write!(cmd, " --degree {}", self.degree);
        }
        if self.latency != DEFAULT_LATENCY {
            let _ = write!(cmd, " --latency {}", self.latency);
        }
        if self.loss != 0.0 {
            let _ = write!(cmd, " --loss {}", self.loss);
        }
        if let Some(r) = self.reset_latency {
            let _ = write!(cmd, " --reset-latency {r}");
        }
        if self.kill != 0.0 {
            let _ = write!(cmd, " --kill {}", self.kill);
        }
        if self.kill_root {
            cmd.push_str(" --kill-root");
        }
        if self.kill_spread != 0.0 {
            let _ = write!(cmd, " --kill-spread {}", self.kill_spread);
        }
        if self.crash != Crash::Process {
            let _ = write!(cmd, " --crash {}", self.crash);
        }
        if let Some(p) = self.partition {
            let _ = write!(cmd, " --partition {p}");
        }
        if self.one_way {
            cmd.push_str(" --one-way");
        }
        if self.clogs != 0 {
            let _ = write!(cmd, " --clogs {}", self.clogs);
        }
        if self.refuse != 0 {
            let _ = write!(cmd, " --refuse {}", self.refuse);
        }
        if let Some(t) = self.restart_after {
            let _ = write!(cmd, " --restart-after {t}");
        }
        if self.fd_budget != DEFAULT_FD_BUDGET {
            let _ = write!(cmd, " --fd-budget {}", self.fd_budget);
        }
        if self.ransub_size != DEFAULT_RANSUB_SIZE {
            let _ = write!(cmd, " --ransub-size {}", self.ransub_size);
        }
        if self.no_ransub_repair {
            cmd.push_str(" --no-ransub-repair");
        }
        if self.steady_epochs != DEFAULT_STEADY_EPOCHS {
            let _ = write!(cmd, " --steady-epochs {}", self.steady_epochs);
        }
        if self.heal_after != DEFAULT_HEAL_AFTER_S {
            let _ = write!(cmd, " --heal-after {}", self.heal_after);
        }
        if self.phase_limit != DEFAULT_PHASE_LIMIT_S {
            let _ = write!(cmd, " --phase-limit {}", self.phase_limit);
        }
        if self.job {
            cmd.push_str(" --job");
        }
        if self.fault_during_job {
            cmd.push_str(" --fault-during-job");
        }
        if self.job_outputs != 1 {
            let _ = write!(cmd, " --job-outputs {}", self.job_outputs);
        }
        if let Some(t) = self.controller_crash_at {
            let _ = write!(cmd, " --controller-crash-at {t}");
        }
        if let Some(t) = self.controller_back_after {
            let _ = write!(cmd, " --controller-back-after {t}");
        }
        if self.controller_never_back {
            cmd.push_str(" --controller-never-back");
        }
        if let Some(t) = self.linger {
            let _ = write!(cmd, " --linger {t}");
        }
        if self.layout == LayoutArg::Star {
            cmd.push_str(" --layout star");
        }
        if self.controller_fds != DEFAULT_CONTROLLER_FDS {
            let _ = write!(cmd, " --controller-fds {}", self.controller_fds);
        }
        if let Some(ms) = self.launch_ms {
            let _ = write!(cmd, " --launch-ms {ms}");
        }
        if let Some(k) = self.launch_fanout {
            let _ = write!(cmd, " --launch-fanout {k}");
        }
        if let Some(from) = self.launch_from {
            let _ = write!(cmd, " --launch-from {from}");
        }
        cmd
    }
}

/// Run `plush sim`: 0 when every phase converged without an invariant violation, else 1.
pub fn run(args: &SimArgs) -> ExitCode {
    if let Some(n) = args.swarm {
        return swarm(args, n);
    }
    let seed = match args.seed {
        Some(seed) => seed,
        None => {
            let seed = seed_from_clock();
            // Printed before the run too, so that even a run that never finishes can be repeated.
            eprintln!("plush sim: seed {seed} (from the clock)");
            seed
        }
    };
    let scenario = args.scenario(seed);
    if let Some(flag) = (scenario.layout == Layout::Star).then(|| plush_sim::star::unsupported(&scenario)).flatten() {
        eprintln!("plush sim: {flag} is not modelled with --layout star");
        return ExitCode::from(2);
    }
    let report = plush_sim::run(&scenario);

    let text = if args.json {
        match serde_json::to_string(&report) {
            Ok(json) => json,
            Err(e) => {
                eprintln!("plush sim: cannot encode the report as JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        summary(args, &report)
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        eprintln!("plush sim: cannot write the report: {e}");
        return ExitCode::FAILURE;
    }

    if report.converged && report.invariant_violations == 0 && report.controller.as_ref().is_none_or(|c| c.ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `plush sim --swarm N`: 0 when no run failed, else 1.
fn swarm(args: &SimArgs, runs: u64) -> ExitCode {
    let jobs = args.jobs.map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), |j| j as usize);
    let sizes = plush_sim::swarm::Sizes { min: args.swarm_nodes.min, max: args.swarm_nodes.max };
    let started = std::time::Instant::now();
    let json = args.json;
    let mut write_failed = false;
    let mut done = 0u64;
    let summary = plush_sim::swarm::run(runs, args.seed_base, jobs, sizes, |o| {
        done += 1;
        if !o.verdict.ok() {
            let line = if json {
                serde_json::json!({
                    "failure": o.seed,
                    "problems": o.verdict.problems,
                    "reproduce": o.command,
                })
                .to_string()
            } else {
                format!("failure: seed {}: {}\n  reproduce: {}", o.seed, o.verdict.problems.join("; "), o.command)
            };
            let mut out = std::io::stdout().lock();
            write_failed |= writeln!(out, "{line}").and_then(|()| out.flush()).is_err();
        }
        if done % 100 == 0 {
            eprintln!("plush sim: {done}/{runs} runs, {:.0} s", started.elapsed().as_secs_f64());
        }
    });
    let line = if json {
        match serde_json::to_string(&summary) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("plush sim: cannot encode the summary as JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        format!(
            "swarm: {} runs (seeds {}..{}), {} failures: {} not converged, {} RanSub miscounts, {} lost, {} \
             duplicates, {} invariant violations; {:.0} s on {jobs} threads",
            summary.runs,
            args.seed_base,
            args.seed_base.wrapping_add(runs),
            summary.failures,
            summary.not_converged,
            summary.ransub_miscounts,
            summary.lost,
            summary.duplicates,
            summary.invariant_violations,
            started.elapsed().as_secs_f64()
        )
    };
    let mut out = std::io::stdout().lock();
    if write_failed || writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        eprintln!("plush sim: cannot write the report");
        return ExitCode::FAILURE;
    }
    if summary.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A count with a metric suffix: `1234567.0` → `1.23 M`.
fn metric(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.2} k", x / 1e3)
    } else {
        format!("{x:.0} ")
    }
}

/// A p-value with three decimals, or `n/a` when there was too little data for a test.
fn p_value(p: f64) -> String {
    if p.is_nan() {
        "n/a".to_owned()
    } else {
        format!("{p:.3}")
    }
}

/// `yes` or `no`.
fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The human summary of a run: a handful of lines, ending with the command that repeats it.
fn summary(args: &SimArgs, r: &SimReport) -> String {
    let mut s = String::new();
    // Writing to a String cannot fail: the results of `writeln!` below are ignored.
    let _ = writeln!(s, "nodes {}  seed {}  degree {}  latency {} ms", r.nodes, r.seed, r.degree, args.latency);
    let _ = writeln!(
        s,
        "build      {:.1} s simulated; tree: {} root(s), {} orphan(s), {} loop(s), depth {}, \
         max children {}, {} disagreement(s)",
        r.build.sim_ms / 1e3,
        r.tree.roots,
        r.tree.orphans,
        r.tree.loops,
        r.tree.depth,
        r.tree.max_children,
        r.tree.disagreements
    );
    if args.job {
        let _ = writeln!(
            s,
            "launches   {} by the controller, {} by members; {} join(s) at the root during the build",
            r.build.launches_by_controller, r.build.launches_by_members, r.build.root_joins
        );
    }
    let _ = writeln!(
        s,
        "broadcast  {}/{} replies, avg {:.0} ms, max {:.0} ms",
        r.broadcast.replies, r.broadcast.expected, r.broadcast.avg_sim_ms, r.broadcast.max_sim_ms
    );
    let crash = match args.crash {
        Crash::Process => "process crash",
        Crash::Host => "host crash",
    };
    let _ = writeln!(
        s,
        "recovery   killed {} ({crash}{}), partitioned {}; {:.1} s to repair: {} root(s), \
         {} orphan(s), {} loop(s), depth {} ({} once rebalanced), max children {}; repairs {} via RanSub, {} via the \
         root; {} join(s) at the root",
        r.recovery.killed,
        if args.kill_root { ", root included" } else { "" },
        r.recovery.partitioned,
        r.recovery.sim_ms / 1e3,
        r.recovery.roots,
        r.recovery.orphans,
        r.recovery.loops,
        r.recovery.depth_whole,
        r.recovery.depth,
        r.recovery.max_children,
        r.recovery.via_ransub,
        r.recovery.via_root,
        r.recovery.root_joins
    );
    if let Some(j) = &r.job {
        let _ = writeln!(
            s,
            "job        {}/{} live nodes answered in {:.1} s; {} lost, {} duplicate(s); {} distinct output(s) in \
             {} message(s) at the controller; {} host(s) failed",
            j.expected - j.missing.len().min(j.expected as usize) as u32,
            j.expected,
            j.sim_ms / 1e3,
            j.lost,
            j.duplicates,
            j.distinct_outputs,
            j.merged_messages_at_controller,
            j.hosts_failed
        );
    }
    if let Some(c) = &r.controller {
        let back = match (c.never_back, c.attached_at_ms) {
            (true, _) => match c.gone_after_ms {
                Some(g) => format!("never back; every node gone {:.1} s after the crash", g / 1e3),
                None => format!("never back; {} node(s) still ran at the linger and one epoch", c.left),
            },
            (false, Some(a)) => format!("a new one attached at {:.1} s", a / 1e3),
            (false, None) => "the new one never attached".to_owned(),
        };
        let _ = writeln!(
            s,
            "controller crashed at {:.1} s, {back}; {} result(s) shown before, {} after; {} shown twice, {} missing",
            c.crashed_at_ms / 1e3,
            c.results_before,
            c.results_after,
            c.shown_twice,
            c.missing
        );
    }
    let _ = writeln!(
        s,
        "after      {}/{} replies, avg {:.0} ms, max {:.0} ms",
        r.broadcast_after.replies,
        r.broadcast_after.expected,
        r.broadcast_after.avg_sim_ms,
        r.broadcast_after.max_sim_ms
    );
    let _ = writeln!(
        s,
        "ransub     {} epoch(s), population {}; uniformity p = {} (all), {} (non-descendants) over {} \
         sample(s){}",
        r.ransub.epochs,
        r.ransub.population_last,
        p_value(r.ransub.uniformity_chi2_p),
        p_value(r.ransub.nondesc_chi2_p),
        r.ransub.samples,
        if r.ransub.samples < 100 { " (a weak test: --steady-epochs 200 for a strong one)" } else { "" }
    );
    let _ = writeln!(
        s,
        "links      budget {}, at most {} open on a node, {} eviction(s), {} of a pinned link, {} refused",
        r.conns.budget, r.conns.max_open, r.conns.evictions, r.conns.pinned_evictions, r.conns.refused
    );
    let _ = writeln!(s, "converged  {}; {} invariant violation(s)", yes_no(r.converged), r.invariant_violations);
    for v in &r.violations {
        let _ = writeln!(s, "  violation: {v}");
    }
    let _ = writeln!(
        s,
        "events     {} ({} frames), {:.1} s simulated, {} ms wall, {}events/s, {} B/node",
        r.events,
        r.frames,
        r.sim_end_ms / 1e3,
        r.wall_ms,
        metric(r.events_per_s),
        r.memory.bytes_per_node
    );
    let _ = writeln!(s, "trace      {}", r.trace_hash);
    let _ = write!(s, "reproduce: {}", args.reproduce(r.seed));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_parses_and_prints_back() {
        let l: Latency = "0.5..10".parse().unwrap();
        assert_eq!(l, DEFAULT_LATENCY);
        assert_eq!(l.to_string(), "0.5..10");
        let l: Latency = " 0.5 .. 2.25 ".parse().unwrap();
        assert_eq!((l.min_ms, l.max_ms), (0.5, 2.25));
        assert_eq!(l.to_string().parse::<Latency>(), Ok(l));
    }

    #[test]
    fn bad_latencies_are_refused() {
        for bad in ["", "5", "5-100", "a..1", "1..b", "9..1", "-1..5", "1..inf", "NaN..1"] {
            assert!(bad.parse::<Latency>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fractions_and_seconds_are_checked() {
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        for bad in ["1.5", "-0.1", "NaN", "x"] {
            assert!(parse_fraction(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_non_negative_secs("0"), Ok(0.0));
        assert!(parse_non_negative_secs("-1").is_err());
        assert!(parse_non_negative_secs("inf").is_err());
        assert!(parse_positive_secs("0").is_err());
        assert_eq!(parse_positive_secs("2.5"), Ok(2.5));
    }

    #[test]
    fn reproduce_names_the_seed_and_every_flag_off_its_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            sim: SimArgs,
        }
        let t = T::parse_from(["t", "--nodes", "50"]);
        assert_eq!(t.sim.reproduce(7), "plush sim --nodes 50 --seed 7");
        let argv = [
            "t",
            "--nodes",
            "50",
            "--degree",
            "4",
            "--latency",
            "1..2",
            "--loss",
            "0.1",
            "--reset-latency",
            "5..14",
            "--kill",
            "0.25",
            "--kill-root",
            "--crash",
            "host",
            "--partition",
            "0.5",
            "--heal-after",
            "10",
            "--phase-limit",
            "60",
        ];
        let t = T::parse_from(argv);
        let line = t.sim.reproduce(7);
        assert_eq!(
            line,
            "plush sim --nodes 50 --seed 7 --degree 4 --latency 1..2 --loss 0.1 --reset-latency 5..14 --kill 0.25 --kill-root \
             --crash host --partition 0.5 --heal-after 10 --phase-limit 60"
        );
        // The line parses back to the same scenario.
        let again = T::parse_from(line.split(' ').skip(1));
        assert_eq!(again.sim.reproduce(7), line);
        let s = t.sim.scenario(7);
        assert_eq!(s.config.max_children, 4);
        assert_eq!(s.crash, CrashKind::Host);
        assert_eq!(s.partition, Some(0.5));
        assert_eq!(s.loss, 0.001, "--loss is a percentage");
        assert_eq!(s.reset_latency_ms, Some((5.0, 14.0)));
    }

    #[test]
    fn a_swarm_failure_line_repeats_its_scenario() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            sim: SimArgs,
        }
        for seed in 1..300 {
            let sc = plush_sim::swarm::draw(seed, plush_sim::swarm::Sizes::default());
            let line = plush_sim::swarm::command(&sc);
            let t = T::parse_from(line.split(' ').skip(1));
            let again = t.sim.scenario(t.sim.seed.unwrap());
            assert_eq!(plush_sim::swarm::command(&again), line);
            assert_eq!(
                (again.nodes, again.seed, again.kill, again.kill_root, again.crash, again.partition, again.one_way),
                (sc.nodes, sc.seed, sc.kill, sc.kill_root, sc.crash, sc.partition, sc.one_way)
            );
            assert_eq!((again.latency_min_ms, again.latency_max_ms), (sc.latency_min_ms, sc.latency_max_ms));
            assert_eq!(
                (again.heal_after_s, again.clogs, again.refuse, again.restart_after_s),
                (sc.heal_after_s, sc.clogs, sc.refuse, sc.restart_after_s)
            );
            assert_eq!(
                (again.job, again.fault_during_job, again.job_outputs),
                (sc.job, sc.fault_during_job, sc.job_outputs)
            );
            assert_eq!(
                (again.config.max_children, again.config.max_links),
                (sc.config.max_children, sc.config.max_links)
            );
            assert_eq!((again.steady_epochs, again.phase_limit_s), (sc.steady_epochs, sc.phase_limit_s));
        }
    }

    #[test]
    fn swarm_flags_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            sim: SimArgs,
        }
        let t = T::parse_from(["t", "--swarm", "20", "--seed-base", "5", "--jobs", "2", "--swarm-nodes", "10..40"]);
        assert_eq!((t.sim.swarm, t.sim.seed_base, t.sim.jobs), (Some(20), 5, Some(2)));
        assert_eq!(t.sim.swarm_nodes, NodeRange { min: 10, max: 40 });
        assert!(T::try_parse_from(["t", "--seed-base", "5"]).is_err(), "--seed-base needs --swarm");
        for bad in ["1..5", "9..3", "x..4", "10"] {
            assert!(bad.parse::<NodeRange>().is_err(), "{bad:?} accepted");
        }
    }
}
