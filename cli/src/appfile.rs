//! Application files for `plush apply`: hosts, named host sets, files to copy, and phases run
//! one after another, with a barrier (full or partial) after a phase and a failure policy per
//! phase. In the spirit of Plush's XML application specification, written in TOML:
//!
//! ```toml
//! [hosts]
//! local = 10                     # or: hosts = "node[01-10]" / hostfile = "..."; exclude = "..."
//! launcher = "local"             # local | ssh | command (optional; defaults as `plush run`)
//! launch_from = "tree"           # controller | tree (optional; `--launch-from`, controller)
//!
//! [sets]
//! first = "127.0.0.[1-5]"        # host sets, among the hosts (by name; by address with local)
//!
//! [[phase]]
//! name = "prepare"
//! hosts = "all"                  # "all" (the default), a set's name, or a host set
//! run = "sh -c 'echo preparing'" # split like a shell; or an array of words
//! timeout = 30                   # seconds (optional)
//! on_failure = "abort"           # abort (the default) | ignore | restart
//! restarts = 2                   # with restart: how many times a failed process is restarted
//! barrier = { threshold = 0.8, timeout = 5 }   # after this phase (optional; see below)
//!
//! [[files]]                      # copied, in order, before the first phase
//! src = "data.bin"               # on this machine, relative to the application file's directory
//! dest = "/tmp/"                 # on the hosts (a directory, or ending with `/`: DEST/NAME)
//! hosts = "first"                # as a phase's (optional; "all" by default)
//! mode = "644"                   # octal: "644", 644 or 0o644 (optional; default: that of src)
//! timeout = 60                   # seconds (optional)
//! ```
//!
//! A phase's barrier is entered by each host's process once it ended (after its restarts); the
//! next phase starts when the barrier is released: when every host of the phase entered, or
//! (partial) after `timeout` seconds once `threshold` of them did. Without a barrier the next
//! phase starts once every host of this one answered.
//!
//! [`parse`] checks everything it can without the network: unknown or missing fields, types,
//! ranges, host-set syntax, set names, modes. Its errors name the line and the field. Whether a
//! file to copy exists is the caller's business ([`FileSpec::source`] says where it is).
//!
//! Bounds: at most [`MAX_PHASES`] phases, [`MAX_FILES`] files and [`MAX_SETS`] sets; a file of
//! at most [`MAX_FILE`] bytes.

use crate::hostset::expand_at_most;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use toml::Spanned;

/// Most phases in a file.
pub const MAX_PHASES: usize = 256;
/// Most files to copy in a file.
pub const MAX_FILES: usize = 256;
/// Most named sets in a file.
pub const MAX_SETS: usize = 256;
/// Largest application file.
pub const MAX_FILE: usize = 1 << 20;
/// Most hosts one host set in a file may name.
const MAX_HOSTS: usize = 1 << 20;

/// What a phase does when a host's process fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop: no later phase starts, running ones are cancelled.
    Abort,
    /// Go on.
    Ignore,
    /// Restart the process on its host, at most `restarts` times, then go on.
    Restart(u32),
}

/// A validated barrier.
#[derive(Clone, Debug, PartialEq)]
pub struct BarrierSpec {
    /// Fraction of the phase's hosts enough for a release after `timeout_s` (1: all).
    pub threshold: f64,
    /// Seconds to wait for every host before a partial release.
    pub timeout_s: f64,
}

/// Where a phase runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Where {
    /// Every host.
    All,
    /// These host names (expanded).
    Names(Vec<String>),
}

/// A validated phase.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseSpec {
    /// Its name (unique in the file).
    pub name: String,
    /// Where it runs.
    pub hosts: Where,
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// Seconds before it is killed.
    pub timeout_s: Option<f64>,
    /// The failure policy.
    pub on_failure: OnFailure,
    /// The barrier after it.
    pub barrier: Option<BarrierSpec>,
    /// Its line in the file.
    pub line: usize,
}

/// A validated file to copy (`[[files]]`).
#[derive(Clone, Debug, PartialEq)]
pub struct FileSpec {
    /// The file on this machine, as written (relative to the application file's directory:
    /// see [`FileSpec::source`]).
    pub src: String,
    /// Where it goes on each host (`DEST/NAME` when a directory there, or ending with `/`).
    pub dest: String,
    /// The hosts it goes to.
    pub hosts: Where,
    /// Permission bits of the copies; `None`: those of `src`.
    pub mode: Option<u32>,
    /// Seconds before hosts that have not stored it are given up.
    pub timeout_s: Option<f64>,
    /// The line of its `[[files]]` table.
    pub line: usize,
    /// The line of its `src` field.
    pub src_line: usize,
}

impl FileSpec {
    /// Where `src` is, for an application file in directory `dir`.
    pub fn source(&self, dir: &std::path::Path) -> std::path::PathBuf {
        dir.join(&self.src)
    }
}

/// Permission bits in octal (`755`, `0755`, `0o755`), 0 to 7777.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.starts_with(['+', '-']) => Ok(m),
        _ => Err(format!("{s:?} is not a mode in octal (0 to 7777)")),
    }
}

/// The `[hosts]` table, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostsSpec {
    /// `local = N`.
    pub local: Option<u32>,
    /// Host sets.
    pub sets: Vec<String>,
    /// A host file (relative to the application file's directory is the caller's business).
    pub hostfile: Option<String>,
    /// Host sets left out.
    pub exclude: Vec<String>,
    /// `local`, `ssh` or `command`.
    pub launcher: Option<String>,
    /// The clients' port.
    pub port: Option<u16>,
    /// The tree's degree.
    pub degree: Option<u32>,
    /// Options for ssh.
    pub ssh_options: Vec<String>,
    /// The command launcher's template.
    pub launcher_command: Option<String>,
    /// `controller` or `tree` (`--launch-from`).
    pub launch_from: Option<String>,
    /// A maintenance script file every client runs before it joins (relative to the
    /// application file's directory is the caller's business).
    pub maintenance: Option<String>,
}

/// A validated application file.
#[derive(Clone, Debug, PartialEq)]
pub struct AppSpec {
    /// The hosts.
    pub hosts: HostsSpec,
    /// The files to copy, in order, before the first phase.
    pub files: Vec<FileSpec>,
    /// The phases, in order.
    pub phases: Vec<PhaseSpec>,
}

/// One string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHosts {
    local: Option<Spanned<i64>>,
    hosts: Option<Spanned<OneOrMany>>,
    hostfile: Option<String>,
    exclude: Option<Spanned<OneOrMany>>,
    launcher: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    degree: Option<Spanned<i64>>,
    #[serde(default)]
    ssh_options: Vec<String>,
    launcher_command: Option<String>,
    launch_from: Option<Spanned<String>>,
    maintenance: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBarrier {
    threshold: Option<Spanned<f64>>,
    timeout: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPhase {
    name: Spanned<String>,
    hosts: Option<Spanned<String>>,
    run: Spanned<OneOrMany>,
    timeout: Option<Spanned<f64>>,
    on_failure: Option<Spanned<String>>,
    restarts: Option<Spanned<i64>>,
    barrier: Option<Spanned<RawBarrier>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCopy {
    src: Option<Spanned<String>>,
    dest: Option<Spanned<String>>,
    hosts: Option<Spanned<String>>,
    /// A string or an integer, both read in octal (checked in [`file_of`]).
    mode: Option<Spanned<toml::Value>>,
    timeout: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    hosts: Spanned<RawHosts>,
    #[serde(default)]
    sets: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    files: Vec<Spanned<RawCopy>>,
    #[serde(default)]
    phase: Vec<Spanned<RawPhase>>,
}

/// An error in an application file: where, which field, what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppError {
    /// 1-based line.
    pub line: usize,
    /// The field (`phase[2].barrier.threshold`), when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "line {}: {field}: {}", self.line, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

impl std::error::Error for AppError {}

/// The 1-based line of byte `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    text.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1
}

struct Ctx<'a> {
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) -> AppError {
        AppError { line: line_of(self.text, span.start), field: Some(field.into()), message: message.into() }
    }
}

/// Parse and validate an application file.
pub fn parse(text: &str) -> Result<AppSpec, AppError> {
    parse_at_most(text, MAX_HOSTS)
}

/// [`parse`], with every host set in the file limited to `max_hosts` names (the fuzz target
/// keeps its executions fast with a small one).
pub fn parse_at_most(text: &str, max_hosts: usize) -> Result<AppSpec, AppError> {
    if text.len() > MAX_FILE {
        return Err(AppError { line: 1, field: None, message: format!("the file is larger than {MAX_FILE} bytes") });
    }
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        // The message names the field (serde's "missing field `run`", "unknown field ...").
        AppError { line, field: None, message: e.message().trim().to_owned() }
    })?;
    let cx = Ctx { text };
    let hosts = hosts_of(&cx, raw.hosts, max_hosts)?;
    if raw.sets.len() > MAX_SETS {
        return Err(AppError { line: 1, field: Some("sets".into()), message: format!("more than {MAX_SETS} sets") });
    }
    let mut sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, set) in &raw.sets {
        if name == "all" {
            return Err(cx.err(set.span(), format!("sets.{name}"), "\"all\" means every host: pick another name"));
        }
        let names =
            expand_at_most(set.get_ref(), max_hosts).map_err(|e| cx.err(set.span(), format!("sets.{name}"), e))?;
        sets.insert(name.clone(), names);
    }
    if raw.files.len() > MAX_FILES {
        return Err(AppError { line: 1, field: Some("files".into()), message: format!("more than {MAX_FILES} files") });
    }
    let files = raw
        .files
        .into_iter()
        .enumerate()
        .map(|(k, f)| file_of(&cx, k, f, &sets, max_hosts))
        .collect::<Result<Vec<FileSpec>, AppError>>()?;
    if raw.phase.is_empty() {
        return Err(AppError {
            line: line_of(text, text.len()),
            field: Some("phase".into()),
            message: "no [[phase]]: nothing to do".into(),
        });
    }
    if raw.phase.len() > MAX_PHASES {
        return Err(AppError {
            line: 1,
            field: Some("phase".into()),
            message: format!("more than {MAX_PHASES} phases"),
        });
    }
    let mut phases: Vec<PhaseSpec> = Vec::new();
    for (k, p) in raw.phase.into_iter().enumerate() {
        let line = line_of(text, p.span().start);
        let p = p.into_inner();
        let at = |field: &str| format!("phase[{}].{field}", k + 1);
        let name = p.name.get_ref().trim().to_owned();
        if name.is_empty() || name.len() > 100 || name.contains(['\n', '\r']) {
            return Err(cx.err(p.name.span(), at("name"), "a name of 1 to 100 characters on one line"));
        }
        if phases.iter().any(|q| q.name == name) {
            return Err(cx.err(p.name.span(), at("name"), format!("a second phase named {name:?}")));
        }
        let hosts = where_of(&cx, p.hosts.as_ref(), &sets, at("hosts"), max_hosts)?;
        let run_span = p.run.span();
        let argv = match p.run.into_inner() {
            OneOrMany::One(s) => {
                shlex::split(&s).ok_or_else(|| cx.err(run_span.clone(), at("run"), "unbalanced quotes"))?
            }
            OneOrMany::Many(v) => v,
        };
        if argv.is_empty() || argv[0].is_empty() {
            return Err(cx.err(run_span, at("run"), "an empty command"));
        }
        let timeout_s = timeout_of(&cx, p.timeout.as_ref(), at("timeout"))?;
        let restarts = match &p.restarts {
            None => None,
            Some(r) => Some(
                u32::try_from(*r.get_ref())
                    .ok()
                    .filter(|&r| r <= 100)
                    .ok_or_else(|| cx.err(r.span(), at("restarts"), "0 to 100"))?,
            ),
        };
        let on_failure = match p.on_failure.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
            None | Some(("abort", _)) => OnFailure::Abort,
            Some(("ignore", _)) => OnFailure::Ignore,
            Some(("restart", _)) => OnFailure::Restart(restarts.unwrap_or(1)),
            Some((other, span)) => {
                return Err(cx.err(
                    span,
                    at("on_failure"),
                    format!("{other:?}: one of \"abort\", \"ignore\", \"restart\""),
                ))
            }
        };
        if let (Some(r), false) = (&p.restarts, matches!(on_failure, OnFailure::Restart(_))) {
            return Err(cx.err(r.span(), at("restarts"), "goes with on_failure = \"restart\""));
        }
        let barrier = match p.barrier {
            None => None,
            Some(b) => {
                let b = b.into_inner();
                let threshold = match &b.threshold {
                    None => 1.0,
                    Some(t) if (0.0..=1.0).contains(t.get_ref()) => *t.get_ref(),
                    Some(t) => return Err(cx.err(t.span(), at("barrier.threshold"), "a fraction from 0 to 1")),
                };
                let timeout_s = match &b.timeout {
                    None if threshold < 1.0 => {
                        return Err(AppError {
                            line,
                            field: Some(at("barrier.timeout")),
                            message: "a partial barrier (threshold below 1) needs a timeout".into(),
                        })
                    }
                    None => 3600.0,
                    Some(t) if t.get_ref().is_finite() && *t.get_ref() > 0.0 && *t.get_ref() <= 1e9 => *t.get_ref(),
                    Some(t) => return Err(cx.err(t.span(), at("barrier.timeout"), "seconds, more than 0")),
                };
                Some(BarrierSpec { threshold, timeout_s })
            }
        };
        phases.push(PhaseSpec { name, hosts, argv, timeout_s, on_failure, barrier, line });
    }
    Ok(AppSpec { hosts, files, phases })
}

/// Where a phase or a file goes: "all" (also when not given), a set's name, or a host set.
fn where_of(
    cx: &Ctx<'_>,
    hosts: Option<&Spanned<String>>,
    sets: &BTreeMap<String, Vec<String>>,
    field: String,
    max_hosts: usize,
) -> Result<Where, AppError> {
    let Some(h) = hosts.filter(|h| h.get_ref() != "all") else { return Ok(Where::All) };
    if let Some(names) = sets.get(h.get_ref()) {
        return Ok(Where::Names(names.clone()));
    }
    expand_at_most(h.get_ref(), max_hosts)
        .map(Where::Names)
        .map_err(|e| cx.err(h.span(), field, format!("neither \"all\", a set's name, nor a host set: {e}")))
}

/// A timeout in seconds, more than 0.
fn timeout_of(cx: &Ctx<'_>, t: Option<&Spanned<f64>>, field: String) -> Result<Option<f64>, AppError> {
    match t {
        None => Ok(None),
        Some(t) if t.get_ref().is_finite() && *t.get_ref() > 0.0 && *t.get_ref() <= 1e9 => Ok(Some(*t.get_ref())),
        Some(t) => Err(cx.err(t.span(), field, "seconds, more than 0")),
    }
}

/// The `k`th (0-based) `[[files]]` table.
fn file_of(
    cx: &Ctx<'_>,
    k: usize,
    raw: Spanned<RawCopy>,
    sets: &BTreeMap<String, Vec<String>>,
    max_hosts: usize,
) -> Result<FileSpec, AppError> {
    let line = line_of(cx.text, raw.span().start);
    let f = raw.into_inner();
    let at = |field: &str| format!("files[{}].{field}", k + 1);
    let path = |v: Option<Spanned<String>>, field: &str, what: &str| -> Result<(String, usize), AppError> {
        match v {
            None => Err(AppError { line, field: Some(at(field)), message: format!("missing: {what}") }),
            Some(p) if p.get_ref().is_empty() || p.get_ref().contains('\0') => {
                Err(cx.err(p.span(), at(field), "a path, not empty, without NUL"))
            }
            Some(p) => Ok((p.get_ref().clone(), line_of(cx.text, p.span().start))),
        }
    };
    let (src, src_line) =
        path(f.src, "src", "the file to copy, on this machine (relative to the application file's directory)")?;
    let (dest, _) = path(f.dest, "dest", "where the file goes on the hosts")?;
    let hosts = where_of(cx, f.hosts.as_ref(), sets, at("hosts"), max_hosts)?;
    let mode = match &f.mode {
        None => None,
        Some(m) => {
            let bad = |why: String| cx.err(m.span(), at("mode"), why);
            let mode = match m.get_ref() {
                toml::Value::String(t) => parse_mode(t).map_err(bad)?,
                toml::Value::Integer(v) => {
                    // 0o755 (or 0x1ed) is taken as written; a decimal 755 is read in octal, as chmod's.
                    let written = cx.text.get(m.span()).unwrap_or("");
                    if written.starts_with("0o") || written.starts_with("0x") || written.starts_with("0b") {
                        u32::try_from(*v)
                            .ok()
                            .filter(|&m| m <= 0o7777)
                            .ok_or_else(|| bad(format!("{written} is not a mode (0 to 0o7777)")))?
                    } else {
                        parse_mode(&v.to_string())
                            .map_err(|_| bad(format!("{v} is not a mode in octal (0 to 7777)")))?
                    }
                }
                other => {
                    return Err(bad(format!(
                        "a {}: a mode is a string (\"644\") or an integer (644, 0o644), in octal",
                        other.type_str()
                    )))
                }
            };
            Some(mode)
        }
    };
    let timeout_s = timeout_of(cx, f.timeout.as_ref(), at("timeout"))?;
    Ok(FileSpec { src, dest, hosts, mode, timeout_s, line, src_line })
}

fn hosts_of(cx: &Ctx<'_>, raw: Spanned<RawHosts>, max_hosts: usize) -> Result<HostsSpec, AppError> {
    let span = raw.span();
    let raw = raw.into_inner();
    let local = match &raw.local {
        None => None,
        Some(n) => Some(
            u32::try_from(*n.get_ref())
                .ok()
                .filter(|&n| (1..=65_534).contains(&n))
                .ok_or_else(|| cx.err(n.span(), "hosts.local", "1 to 65534"))?,
        ),
    };
    let sets = raw.hosts.map(|h| (h.span(), h.into_inner().into_vec()));
    let given = usize::from(local.is_some()) + usize::from(sets.is_some()) + usize::from(raw.hostfile.is_some());
    if given != 1 {
        return Err(cx.err(span, "hosts", "exactly one of local, hosts, hostfile"));
    }
    let sets = match sets {
        Some((span, sets)) => {
            for s in &sets {
                expand_at_most(s, max_hosts).map_err(|e| cx.err(span.clone(), "hosts.hosts", e))?;
            }
            sets
        }
        None => Vec::new(),
    };
    let exclude = match raw.exclude {
        Some(x) => {
            let span = x.span();
            let v = x.into_inner().into_vec();
            for s in &v {
                expand_at_most(s, max_hosts).map_err(|e| cx.err(span.clone(), "hosts.exclude", e))?;
            }
            v
        }
        None => Vec::new(),
    };
    if let Some(l) = &raw.launcher {
        if !["local", "ssh", "command"].contains(&l.get_ref().as_str()) {
            return Err(cx.err(
                l.span(),
                "hosts.launcher",
                format!("{:?}: one of \"local\", \"ssh\", \"command\"", l.get_ref()),
            ));
        }
    }
    if let Some(l) = &raw.launch_from {
        if !["controller", "tree"].contains(&l.get_ref().as_str()) {
            return Err(cx.err(
                l.span(),
                "hosts.launch_from",
                format!("{:?}: one of \"controller\", \"tree\"", l.get_ref()),
            ));
        }
    }
    let port = match &raw.port {
        None => None,
        Some(p) => Some(
            u16::try_from(*p.get_ref())
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| cx.err(p.span(), "hosts.port", "1 to 65535"))?,
        ),
    };
    let degree = match &raw.degree {
        None => None,
        Some(d) => Some(
            u32::try_from(*d.get_ref())
                .ok()
                .filter(|&d| (1..=plush_core::wire::MAX_LIST as u32).contains(&d))
                .ok_or_else(|| cx.err(d.span(), "hosts.degree", format!("1 to {}", plush_core::wire::MAX_LIST)))?,
        ),
    };
    Ok(HostsSpec {
        local,
        sets,
        hostfile: raw.hostfile,
        exclude,
        launcher: raw.launcher.map(Spanned::into_inner),
        port,
        degree,
        ssh_options: raw.ssh_options,
        launcher_command: raw.launcher_command,
        launch_from: raw.launch_from.map(Spanned::into_inner),
        maintenance: raw.maintenance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[hosts]
local = 5

[sets]
first = "127.0.0.[1-2]"

[[phase]]
name = "one"
run = "sh -c 'echo hi'"
barrier = { threshold = 0.5, timeout = 2 }

[[phase]]
name = "two"
hosts = "first"
run = ["echo", "two"]
on_failure = "restart"
restarts = 3
timeout = 10
"#;

    #[test]
    fn a_good_file_parses() {
        let app = parse(GOOD).unwrap();
        assert_eq!(app.hosts.local, Some(5));
        assert_eq!(app.phases.len(), 2);
        assert_eq!(app.phases[0].argv, ["sh", "-c", "echo hi"]);
        assert_eq!(app.phases[0].barrier, Some(BarrierSpec { threshold: 0.5, timeout_s: 2.0 }));
        assert_eq!(app.phases[0].on_failure, OnFailure::Abort);
        assert_eq!(app.phases[1].hosts, Where::Names(vec!["127.0.0.1".into(), "127.0.0.2".into()]));
        assert_eq!(app.phases[1].on_failure, OnFailure::Restart(3));
        assert_eq!(app.phases[1].timeout_s, Some(10.0));
        assert_eq!(app.phases[1].line, 13);
        assert_eq!(app.hosts.maintenance, None);
        let app = parse(&GOOD.replace("local = 5", "local = 5\nmaintenance = \"check.sh\"")).unwrap();
        assert_eq!(app.hosts.maintenance.as_deref(), Some("check.sh"));
        assert_eq!(app.hosts.launch_from, None);
        let app = parse(&GOOD.replace("local = 5", "local = 5\nlaunch_from = \"tree\"")).unwrap();
        assert_eq!(app.hosts.launch_from.as_deref(), Some("tree"));
    }

    fn error_of(text: &str) -> AppError {
        parse(text).unwrap_err()
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let e = error_of(&GOOD.replace("threshold = 0.5", "threshold = 1.5"));
        assert_eq!((e.line, e.field.as_deref()), (11, Some("phase[1].barrier.threshold")), "{e}");
        let e = error_of(&GOOD.replace("hosts = \"first\"", "hosts = \"nosuch[\""));
        assert_eq!((e.line, e.field.as_deref()), (15, Some("phase[2].hosts")), "{e}");
        let e = error_of(&GOOD.replace("on_failure = \"restart\"", "on_failure = \"retry\""));
        assert_eq!((e.line, e.field.as_deref()), (17, Some("phase[2].on_failure")), "{e}");
        let e = error_of(&GOOD.replace("timeout = 10", "timeuot = 10"));
        assert_eq!(e.line, 19, "{e}");
        assert!(e.message.contains("timeuot"), "{e}");
        let e = error_of(&GOOD.replace("run = [\"echo\", \"two\"]\n", ""));
        assert!(e.message.contains("missing field `run`"), "{e}");
        let e = error_of(&GOOD.replace("timeout = 2 }", "}"));
        assert_eq!(e.field.as_deref(), Some("phase[1].barrier.timeout"), "{e}");
        let e = error_of(&GOOD.replace("local = 5", "local = 5\nhosts = \"a,b\""));
        assert_eq!(e.field.as_deref(), Some("hosts"), "{e}");
        let e = error_of(&GOOD.replace("name = \"two\"", "name = \"one\""));
        assert_eq!((e.line, e.field.as_deref()), (14, Some("phase[2].name")), "{e}");
        let e = error_of("[hosts]\nlocal = 2\n[[phase]]\nname = \"x\"\nrun = \"a 'b\"\n");
        assert_eq!((e.line, e.field.as_deref()), (5, Some("phase[1].run")), "{e}");
        let e = error_of("[hosts\nlocal = 2\n");
        assert_eq!(e.line, 1, "{e}");
        let e = error_of(&GOOD.replace("local = 5", "local = 5\nlaunch_from = \"members\""));
        assert_eq!((e.line, e.field.as_deref()), (4, Some("hosts.launch_from")), "{e}");
    }

    const FILES: &str = r#"
[hosts]
local = 5

[sets]
first = "127.0.0.[1-2]"

[[files]]
src = "data.txt"
dest = "/tmp/"

[[files]]
src = "/etc/hostname"
dest = "/tmp/h"
hosts = "first"
mode = "640"
timeout = 5

[[phase]]
name = "one"
run = "true"
"#;

    #[test]
    fn files_parse_in_order() {
        let app = parse(FILES).unwrap();
        assert_eq!(app.files.len(), 2);
        let (a, b) = (&app.files[0], &app.files[1]);
        assert_eq!((a.src.as_str(), a.dest.as_str(), &a.hosts), ("data.txt", "/tmp/", &Where::All));
        assert_eq!((a.mode, a.timeout_s, a.line, a.src_line), (None, None, 8, 9));
        assert_eq!(a.source(std::path::Path::new("/apps")), std::path::Path::new("/apps/data.txt"));
        assert_eq!(b.source(std::path::Path::new("/apps")), std::path::Path::new("/etc/hostname"));
        assert_eq!(b.hosts, Where::Names(vec!["127.0.0.1".into(), "127.0.0.2".into()]));
        assert_eq!((b.mode, b.timeout_s, b.line), (Some(0o640), Some(5.0), 12));
        // A mode in every spelling: a string or an integer, read in octal; 0o as written.
        for (mode, want) in [("\"755\"", 0o755), ("\"0o755\"", 0o755), ("755", 0o755), ("0o755", 0o755), ("0", 0)] {
            let app = parse(&FILES.replace("mode = \"640\"", &format!("mode = {mode}"))).unwrap();
            assert_eq!(app.files[1].mode, Some(want), "mode = {mode}");
        }
    }

    #[test]
    fn file_errors_name_the_line_and_the_field() {
        let e = error_of(&FILES.replace("src = \"data.txt\"\n", ""));
        assert_eq!((e.line, e.field.as_deref()), (8, Some("files[1].src")), "{e}");
        assert!(e.message.starts_with("missing"), "{e}");
        let e = error_of(&FILES.replace("dest = \"/tmp/h\"\n", ""));
        assert_eq!((e.line, e.field.as_deref()), (12, Some("files[2].dest")), "{e}");
        let e = error_of(&FILES.replace("src = \"data.txt\"", "src = \"\""));
        assert_eq!((e.line, e.field.as_deref()), (9, Some("files[1].src")), "{e}");
        for bad in ["\"789\"", "\"rwx\"", "\"17777\"", "\"-7\"", "\"\"", "8", "-1", "0o17777", "true"] {
            let e = error_of(&FILES.replace("mode = \"640\"", &format!("mode = {bad}")));
            assert_eq!(e.line, 16, "mode = {bad}: {e}");
            assert_eq!(e.field.as_deref(), Some("files[2].mode"), "mode = {bad}: {e}");
        }
        let e = error_of(&FILES.replace("timeout = 5", "timeout = -5"));
        assert_eq!((e.line, e.field.as_deref()), (17, Some("files[2].timeout")), "{e}");
        let e = error_of(&FILES.replace("hosts = \"first\"", "hosts = \"nosuch[\""));
        assert_eq!((e.line, e.field.as_deref()), (15, Some("files[2].hosts")), "{e}");
        let e = error_of(&FILES.replace("dest = \"/tmp/\"", "dest = \"/tmp/\"\nowner = \"root\""));
        assert_eq!(e.line, 11, "{e}");
        assert!(e.message.contains("unknown field `owner`"), "{e}");
        let e = error_of(&FILES.replace("src = \"data.txt\"", "src = 3"));
        assert_eq!(e.line, 9, "{e}");
    }
}
