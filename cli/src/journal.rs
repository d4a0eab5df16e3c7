//! The session journal: what a controller must remember to survive its own crash (see
//! `plush attach` in [`crate::attach`]).
//!
//! Every controller (`run`, `shell`, `apply`, `push`, `upgrade`) keeps one in a directory of its
//! own, `STATE/plush/sessions/ID/`, where STATE is `--state-dir`, else `$XDG_STATE_HOME`, else
//! `~/.local/state`. The directory holds:
//! - `key`: the cluster key (0600, 64 hex digits, as `plush client --key-file` reads it);
//! - `journal`: an append-only log of [`Record`]s: the session (command, controller), the hosts
//!   and their states, the root, the local clients' process ids, the jobs with their specs and
//!   targets, and every result group received.
//!
//! **Format.** The file starts with [`MAGIC`]; then records, each `len: u32 LE`, `crc: u32 LE`
//! (CRC-32 of the payload) and `len` bytes of payload (a postcard-encoded [`Record`]). A
//! record is written with one `write` call. A reader takes records up to the first one that is
//! incomplete, fails its checksum or does not decode, and ignores the rest: a crash at any byte
//! leaves a readable journal whose torn tail is dropped (and truncated away before the journal
//! is appended to again). Nothing is ever rewritten in place.
//!
//! **Durability.** Result records are written by the controller's event loop as the results
//! arrive, and `fdatasync`ed before the next frame leaves for any peer (the results'
//! acknowledgement among them) and at the end of the loop's turn, before the caller sees them:
//! one sync per turn, however many results came in it. So a result is either in the journal
//! or still held by the tree, and on disk before it is shown. Job and `Shown` records are
//! synced as they are written. Other records are written without a sync (a crash of the
//! controller process keeps them in the page cache; only a machine crash can lose them, and
//! none of them loses a result).
//!
//! **Why a log and not SQLite or redb.** The journal is written in one order, read whole once
//! (at attach, or by `plush sessions`), and never queried or updated: an append-only log does
//! exactly that in a hundred lines, with one `write` and at most one `fdatasync` per result,
//! no page cache of its own, no extra C library (SQLite) or file format to trust, and a
//! recovery rule simple enough to test at every byte offset (see the tests). A database would
//! buy transactions and indexes the journal does not need.
//!
//! Bounds: a record is at most [`MAX_RECORD`] bytes (a larger result is written with its
//! output cut to fit, and marked truncated); reading holds the whole file in memory, large
//! outputs (recorded chunk by chunk as [`Record::Blob`]s) put together included.

use plush_core::wire::{ExitStatus, RunSpec};
use plush_core::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The first bytes of a journal file.
pub const MAGIC: &[u8; 8] = b"PLUSHJ01";
/// Largest record payload, in bytes (256 MiB).
pub const MAX_RECORD: usize = 256 << 20;
/// Bytes before each payload: length and checksum.
const HEADER: usize = 8;
/// The journal file's name in a session directory.
pub const JOURNAL: &str = "journal";
/// The key file's name in a session directory.
pub const KEY: &str = "key";

/// How a job's results are printed (kept with the job, for `plush attach`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrintRec {
    /// JSON lines.
    pub json: bool,
    /// Live output.
    pub stream: bool,
    /// The user's output cap.
    pub max_output: Option<u64>,
    /// A title printed above its results (`apply`'s phase: `phase NAME`).
    pub title: Option<String>,
}

/// One journal record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// The session began (always the first record).
    Session {
        /// `run`, `shell`, `apply`, `push` or `upgrade`.
        cmd: String,
        /// The Plush version of the controller.
        version: String,
        /// Milliseconds since the Unix epoch.
        created_ms: u64,
        /// The controller's id (its listen address).
        controller: NodeId,
        /// Hosts are named by name (`-w`/`-f`), not by address (`--local`).
        label_by_name: bool,
        /// Clients were started by the local launcher (their process ids are recorded).
        local: bool,
    },
    /// Hosts invited, with their names.
    Hosts(Vec<(NodeId, String)>),
    /// Names that did not resolve, and why.
    Unresolved(Vec<(String, String)>),
    /// A host's state changed (the controller's `HostState` as a number: pending, invited,
    /// joined, disconnected, failed).
    State(NodeId, u8),
    /// The tree's root changed.
    Root(NodeId),
    /// The local clients' process ids, and the key file they were given.
    Clients {
        /// The key file in the command lines of the clients.
        key_file: String,
        /// (host, process id).
        clients: Vec<(NodeId, u32)>,
    },
    /// A job started.
    Job {
        /// What was sent to the tree.
        spec: Box<RunSpec>,
        /// Hosts joined and targeted when it started (the ones that owe a result).
        expected: Vec<NodeId>,
        /// Hosts targeted (joined or not).
        targeted: Vec<NodeId>,
        /// How its results are printed.
        print: PrintRec,
    },
    /// A result group received (synced before it is acknowledged or shown).
    Result {
        /// The job.
        job: u64,
        /// How it ended.
        status: ExitStatus,
        /// The output was cut.
        truncated: bool,
        /// stdout.
        #[serde(with = "serde_bytes")]
        output: Vec<u8>,
        /// stderr.
        #[serde(with = "serde_bytes")]
        stderr: Vec<u8>,
        /// The hosts.
        nodes: Vec<NodeId>,
    },
    /// The job's summary was printed: nothing of it is to be shown again.
    Shown(u64),
    /// A controller attached to the session's overlay (after a crash of the previous one):
    /// its id and process id.
    Attached(NodeId, u32),
    /// An application file (`plush apply`): its absolute path, and `--json`.
    App {
        /// The file.
        file: String,
        /// JSON lines.
        json: bool,
    },
    /// A barrier was opened (apply's phases).
    Barrier {
        /// Its name.
        name: String,
        /// The hosts expected.
        target: Vec<NodeId>,
        /// The fraction enough after the timeout.
        threshold: f64,
        /// The timeout.
        timeout_ms: u64,
    },
    /// The session ended (the overlay was dismantled).
    Done,
    /// Bytes of a large output as they arrived (the controller hands them out before the
    /// result groups that name the output, see `plush_core::Report::Blob`): in order per
    /// output, a chunk at offset 0 starting it again.
    Blob {
        /// The job.
        job: u64,
        /// The output's name (SHA-256 of stdout's length, stdout and stderr).
        digest: [u8; 32],
        /// Where `data` starts in the output.
        offset: u64,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A result group whose output is a large output recorded before as [`Record::Blob`]s
    /// (synced, as [`Record::Result`] is).
    BlobResult {
        /// The job.
        job: u64,
        /// How it ended.
        status: ExitStatus,
        /// The output was cut.
        truncated: bool,
        /// The output's name.
        digest: [u8; 32],
        /// Bytes of stdout at the start of the output (stderr follows).
        stdout_len: u64,
        /// Bytes of the output.
        len: u64,
        /// The hosts.
        nodes: Vec<NodeId>,
    },
    /// A job held open while the build goes on (`true`: every host that joins owes it a
    /// result too, see `Cluster::set_job_open`), or closed (`false`, after a [`Record::Job`]
    /// naming every host it expects).
    Open(u64, bool),
}

/// Encode a record with its header.
pub fn encode(rec: &Record) -> io::Result<Vec<u8>> {
    let payload = postcard::to_allocvec(rec).map_err(io::Error::other)?;
    if payload.len() > MAX_RECORD {
        return Err(io::Error::other(format!("a journal record of {} bytes is too large", payload.len())));
    }
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// What a journal file holds.
#[derive(Clone, Debug, Default)]
pub struct Read {
    /// The records, in order.
    pub records: Vec<Record>,
    /// Bytes of the file that hold them (magic included): where to append.
    pub valid_len: u64,
    /// Bytes after them that were ignored (a torn tail).
    pub torn: u64,
}

/// Decode a journal file's bytes: the records up to the first torn or damaged one.
pub fn decode_all(bytes: &[u8]) -> Read {
    let mut r = Read::default();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        r.torn = bytes.len() as u64;
        return r;
    }
    let mut at = MAGIC.len();
    while let Some(head) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_RECORD {
            break;
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else { break };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(rec) = postcard::from_bytes::<Record>(payload) else { break };
        r.records.push(rec);
        at += HEADER + len;
    }
    r.valid_len = at as u64;
    r.torn = (bytes.len() - at) as u64;
    r
}

/// Read the journal in session directory `dir`.
pub fn read_dir(dir: &Path) -> io::Result<Read> {
    let bytes = std::fs::read(dir.join(JOURNAL))?;
    Ok(decode_all(&bytes))
}

/// An open journal, appended to.
pub struct Journal {
    file: File,
    /// The session directory.
    pub dir: PathBuf,
    /// The session id (the directory's name).
    pub id: String,
    /// A write failed (reported once; the session goes on without a journal).
    failed: bool,
}

impl Journal {
    /// Create session `id` under `sessions` (the `.../plush/sessions` directory): the
    /// directory (0700), the key file and the journal with its magic.
    pub fn create(sessions: &Path, id: &str, key: &plush_mio::Key) -> io::Result<Journal> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(sessions)?;
        let dir = sessions.join(id);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        key.write_new_file(&dir.join(KEY))?;
        use std::os::unix::fs::OpenOptionsExt;
        // Results may hold secrets: readable by the user alone, as the key.
        let mut file = OpenOptions::new().create_new(true).append(true).mode(0o600).open(dir.join(JOURNAL))?;
        file.write_all(MAGIC)?;
        file.sync_data()?;
        // The directory entries themselves.
        File::open(&dir).and_then(|d| d.sync_all())?;
        Ok(Journal { file, dir, id: id.to_owned(), failed: false })
    }

    /// Open session directory `dir` to append to it, cutting a torn tail off first (records
    /// after it would be unreadable).
    pub fn reopen(dir: &Path, valid_len: u64) -> io::Result<Journal> {
        let file = OpenOptions::new().append(true).open(dir.join(JOURNAL))?;
        if valid_len < MAGIC.len() as u64 {
            file.set_len(0)?;
            (&file).write_all(MAGIC)?;
        } else if file.metadata()?.len() > valid_len {
            file.set_len(valid_len)?;
        }
        file.sync_data()?;
        let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Journal { file, dir: dir.to_path_buf(), id, failed: false })
    }

    /// Append `rec`; with `sync`, wait until it is on disk (`fdatasync`). A failure is
    /// reported once on stderr; the session goes on without its journal.
    pub fn append(&mut self, rec: &Record, sync: bool) -> bool {
        if self.failed {
            return false;
        }
        let r = encode(rec).and_then(|b| self.file.write_all(&b)).and_then(|()| {
            if sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = r {
            self.failed = true;
            eprintln!(
                "plush: session journal {}: {e}; the session cannot be attached to after a crash",
                self.dir.display()
            );
            return false;
        }
        true
    }

    /// Wait until everything appended is on disk (`fdatasync`).
    pub fn sync(&mut self) -> bool {
        if self.failed {
            return false;
        }
        if let Err(e) = self.file.sync_data() {
            self.failed = true;
            eprintln!(
                "plush: session journal {}: {e}; the session cannot be attached to after a crash",
                self.dir.display()
            );
            return false;
        }
        true
    }

    /// Remove the session directory (the session ended).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sessions directory: `state/plush/sessions` for `--state-dir state`, else
/// `$XDG_STATE_HOME`, else `$HOME/.local/state`; `None` without any of them.
pub fn sessions_dir(state_dir: Option<&Path>) -> Option<PathBuf> {
    let base = match state_dir {
        Some(d) => d.to_path_buf(),
        None => match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
            Some(x) => PathBuf::from(x),
            None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".local/state"),
        },
    };
    Some(base.join("plush").join("sessions"))
}

/// A new session id: the time in milliseconds and the process id, so that ids sort by age.
pub fn new_id() -> String {
    format!("{:013}-{}", now_ms(), std::process::id())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The session directories under `sessions`, oldest first (by id).
pub fn list(sessions: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(sessions) else { return Vec::new() };
    let mut v: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().join(JOURNAL).is_file())
        .filter_map(|e| Some((e.file_name().to_str()?.to_owned(), e.path())))
        .collect();
    v.sort();
    v
}

/// A result group as the journal holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRec {
    /// How it ended.
    pub status: ExitStatus,
    /// The output was cut.
    pub truncated: bool,
    /// stdout.
    pub output: Vec<u8>,
    /// stderr.
    pub stderr: Vec<u8>,
    /// The hosts (none of them in an earlier group of the job).
    pub nodes: Vec<NodeId>,
}

/// A job as the journal holds it.
#[derive(Clone, Debug)]
pub struct JobRec {
    /// What was sent to the tree.
    pub spec: RunSpec,
    /// Hosts that owe a result.
    pub expected: Vec<NodeId>,
    /// Hosts targeted.
    pub targeted: Vec<NodeId>,
    /// How its results are printed.
    pub print: PrintRec,
    /// Result groups received, each host at most once across them.
    pub groups: Vec<GroupRec>,
    /// Every host in `groups`.
    pub got: BTreeSet<NodeId>,
    /// Its summary was printed.
    pub shown: bool,
    /// Held open when the journal ends (see [`Record::Open`]): every host joined then owes a
    /// result too ([`JobRec::owed`]).
    pub open: bool,
}

impl JobRec {
    /// The hosts that owe a result: `expected`, and, while the job was held open, every host
    /// the journal last saw joined (`states`).
    pub fn owed(&self, states: &std::collections::BTreeMap<NodeId, u8>) -> Vec<NodeId> {
        if !self.open {
            return self.expected.clone();
        }
        let joined = states.iter().filter(|(_, st)| state_of(**st) == Some(plush_core::HostState::Joined));
        let all: BTreeSet<NodeId> = self.expected.iter().copied().chain(joined.map(|(h, _)| *h)).collect();
        all.into_iter().collect()
    }
}

/// A session as its journal tells it.
#[derive(Clone, Debug, Default)]
pub struct Replayed {
    /// The command (`run`, `shell`, ...); empty if the journal lost even its first record.
    pub cmd: String,
    /// The controller's version.
    pub version: String,
    /// When it began (ms since the epoch).
    pub created_ms: u64,
    /// The controllers, the first one first, then every one that attached.
    pub controllers: Vec<NodeId>,
    /// The process id of the session's last controller (from the session id, or the last
    /// `Attached` record).
    pub pid: Option<u32>,
    /// Hosts named by name.
    pub label_by_name: bool,
    /// Clients started by the local launcher.
    pub local: bool,
    /// Hosts invited, in order.
    pub hosts: Vec<(NodeId, String)>,
    /// Names that did not resolve.
    pub unresolved: Vec<(String, String)>,
    /// Each host's last state (see [`Record::State`]).
    pub states: std::collections::BTreeMap<NodeId, u8>,
    /// The last root.
    pub root: Option<NodeId>,
    /// The local clients' key file and process ids (the last record of them).
    pub clients: Option<(String, Vec<(NodeId, u32)>)>,
    /// The jobs, in order.
    pub jobs: Vec<JobRec>,
    /// The application file and `--json` (`apply`).
    pub app: Option<(String, bool)>,
    /// Barriers opened: name, hosts, threshold, timeout (ms).
    pub barriers: Vec<(String, Vec<NodeId>, f64, u64)>,
    /// The session ended.
    pub done: bool,
}

/// The process id a session id names (`MS-PID`).
pub fn id_pid(id: &str) -> Option<u32> {
    id.rsplit_once('-').and_then(|(_, p)| p.parse().ok())
}

/// Whether the session's last controller (`pid`) still runs: the process exists, is not a
/// zombie, and runs plush (its command line's first word ends in `plush`).
pub fn controller_alive(pid: Option<u32>) -> bool {
    let Some(pid) = pid.filter(|p| *p != std::process::id()) else { return false };
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let exe = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    exe.ends_with(b"plush")
}

/// The controller's `HostState` as journaled.
pub fn state_code(s: plush_core::HostState) -> u8 {
    s as u8
}

/// The state a journaled code stands for (`None` for a code this build does not know).
pub fn state_of(code: u8) -> Option<plush_core::HostState> {
    use plush_core::HostState::*;
    [Pending, Invited, Joined, Disconnected, Failed].into_iter().find(|s| state_code(*s) == code)
}

/// A journaled state's name.
pub fn state_name(code: u8) -> &'static str {
    ["pending", "invited", "joined", "disconnected", "failed"].get(usize::from(code)).copied().unwrap_or("?")
}

/// Fold records into the session they tell of. A result's hosts already seen for its job are
/// dropped (so no result is ever yielded twice, whatever the log holds), and a result of a job
/// the log does not hold is ignored.
pub fn replay(records: &[Record]) -> Replayed {
    let mut s = Replayed::default();
    // Large outputs being put together from their chunks, by name.
    let mut blobs: std::collections::HashMap<[u8; 32], Vec<u8>> = std::collections::HashMap::new();
    for rec in records {
        match rec {
            Record::Session { cmd, version, created_ms, controller, label_by_name, local } => {
                s.cmd.clone_from(cmd);
                s.version.clone_from(version);
                s.created_ms = *created_ms;
                s.controllers.push(*controller);
                s.label_by_name = *label_by_name;
                s.local = *local;
            }
            Record::Hosts(h) => {
                for (id, name) in h {
                    if !s.hosts.iter().any(|(x, _)| x == id) {
                        s.hosts.push((*id, name.clone()));
                    }
                }
            }
            Record::Unresolved(u) => s.unresolved.extend(u.iter().cloned()),
            Record::State(h, st) => {
                s.states.insert(*h, *st);
            }
            Record::Root(r) => s.root = Some(*r),
            Record::Clients { key_file, clients } => s.clients = Some((key_file.clone(), clients.clone())),
            Record::Job { spec, expected, targeted, print } => {
                if let Some(j) = s.jobs.iter_mut().find(|j| j.spec.job == spec.job) {
                    // Logged again when a job held open during the build closes: whoever joined
                    // meanwhile owes a result too.
                    let all: BTreeSet<NodeId> = j.expected.iter().chain(expected).copied().collect();
                    j.expected = all.into_iter().collect();
                } else {
                    s.jobs.push(JobRec {
                        spec: (**spec).clone(),
                        expected: expected.clone(),
                        targeted: targeted.clone(),
                        print: print.clone(),
                        groups: Vec::new(),
                        got: BTreeSet::new(),
                        shown: false,
                        open: false,
                    });
                }
            }
            Record::Result { job, status, truncated, output, stderr, nodes } => {
                let Some(j) = s.jobs.iter_mut().find(|j| j.spec.job == *job) else { continue };
                let fresh: Vec<NodeId> = nodes.iter().copied().filter(|n| j.got.insert(*n)).collect();
                if !fresh.is_empty() {
                    j.groups.push(GroupRec {
                        status: *status,
                        truncated: *truncated,
                        output: output.clone(),
                        stderr: stderr.clone(),
                        nodes: fresh,
                    });
                }
            }
            Record::Shown(job) => {
                if let Some(j) = s.jobs.iter_mut().find(|j| j.spec.job == *job) {
                    j.shown = true;
                }
            }
            Record::Attached(c, pid) => {
                s.controllers.push(*c);
                s.pid = Some(*pid);
            }
            Record::App { file, json } => s.app = Some((file.clone(), *json)),
            Record::Barrier { name, target, threshold, timeout_ms } => {
                s.barriers.retain(|b| b.0 != *name);
                s.barriers.push((name.clone(), target.clone(), *threshold, *timeout_ms));
            }
            Record::Done => s.done = true,
            Record::Open(job, open) => {
                if let Some(j) = s.jobs.iter_mut().find(|j| j.spec.job == *job) {
                    j.open = *open;
                }
            }
            Record::Blob { digest, offset, data, .. } => {
                let b = blobs.entry(*digest).or_default();
                if *offset == 0 {
                    b.clear();
                }
                if *offset == b.len() as u64 {
                    b.extend_from_slice(data);
                }
            }
            Record::BlobResult { job, status, truncated, digest, stdout_len, len, nodes } => {
                let Some(j) = s.jobs.iter_mut().find(|j| j.spec.job == *job) else { continue };
                // The controller only names an output it has whole, and its chunks were
                // recorded before: a result whose bytes are not all here was never shown.
                let Some(b) = blobs.get(digest).filter(|b| b.len() as u64 == *len && *stdout_len <= *len) else {
                    continue;
                };
                let fresh: Vec<NodeId> = nodes.iter().copied().filter(|n| j.got.insert(*n)).collect();
                if !fresh.is_empty() {
                    let (out, err) = b.split_at(*stdout_len as usize);
                    j.groups.push(GroupRec {
                        status: *status,
                        truncated: *truncated,
                        output: out.to_vec(),
                        stderr: err.to_vec(),
                        nodes: fresh,
                    });
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use plush_core::wire::{JobKind, List, Target};

    fn node(i: u32) -> NodeId {
        NodeId::loopback(i, 4000)
    }

    fn spec(job: u64) -> RunSpec {
        RunSpec {
            job,
            kind: JobKind::Command,
            target: Target::All,
            argv: List(vec!["echo".into(), "hi".into()]),
            env: List(Vec::new()),
            cwd: None,
            timeout_ms: 0,
            stream: false,
            push: None,
            max_output: 0,
        }
    }

    fn sample() -> Vec<Record> {
        let hosts: Vec<(NodeId, String)> = (0..6).map(|i| (node(i), format!("h{i}"))).collect();
        let mut v = vec![
            Record::Session {
                cmd: "run".into(),
                version: "0".into(),
                created_ms: 1,
                controller: node(100),
                label_by_name: false,
                local: true,
            },
            Record::Hosts(hosts),
            Record::Root(node(0)),
            Record::Job {
                spec: Box::new(spec(1)),
                expected: (0..6).map(node).collect(),
                targeted: (0..6).map(node).collect(),
                print: PrintRec::default(),
            },
        ];
        for i in 0..6 {
            v.push(Record::State(node(i), 2));
            v.push(Record::Result {
                job: 1,
                status: ExitStatus::Exited(i as i32 % 2),
                truncated: false,
                output: format!("out {i}\n").into_bytes(),
                stderr: Vec::new(),
                nodes: vec![node(i)],
            });
        }
        v
    }

    fn file_of(records: &[Record]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = MAGIC.to_vec();
        let mut ends = Vec::new();
        for r in records {
            bytes.extend(encode(r).unwrap());
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    #[test]
    fn a_whole_journal_reads_back_as_written() {
        let recs = sample();
        let (bytes, _) = file_of(&recs);
        let r = decode_all(&bytes);
        assert_eq!(r.records, recs);
        assert_eq!(r.valid_len, bytes.len() as u64);
        assert_eq!(r.torn, 0);
        let s = replay(&r.records);
        assert_eq!(s.cmd, "run");
        assert_eq!(s.jobs.len(), 1);
        assert_eq!(s.jobs[0].got.len(), 6);
        assert_eq!(s.root, Some(node(0)));
    }

    /// A job held open while the build went on (`plush run`'s command, started at the first
    /// join): a journal that ends while it is open says that every host joined by then owes a
    /// result, not only those joined when it started; once closed, the job record written at
    /// the close says whom it expects, and hosts joining later owe nothing.
    #[test]
    fn a_job_held_open_owes_results_from_every_host_joined_until_it_closed() {
        let mut v = sample();
        v.truncate(3);
        v.push(Record::State(node(0), 2));
        v.push(Record::Job {
            spec: Box::new(spec(1)),
            expected: vec![node(0)],
            targeted: (0..6).map(node).collect(),
            print: PrintRec::default(),
        });
        v.push(Record::Open(1, true));
        v.push(Record::State(node(1), 2));
        v.push(Record::State(node(2), 2));
        v.push(Record::State(node(3), 1));
        let (bytes, _) = file_of(&v);
        let r = decode_all(&bytes);
        assert_eq!(r.records, v, "the records read back as written");
        let s = replay(&r.records);
        assert!(s.jobs[0].open);
        assert_eq!(s.jobs[0].owed(&s.states), vec![node(0), node(1), node(2)]);
        // Closed: the job record written then names whom it expects (and is merged).
        v.push(Record::Job {
            spec: Box::new(spec(1)),
            expected: vec![node(1), node(2)],
            targeted: (0..6).map(node).collect(),
            print: PrintRec::default(),
        });
        v.push(Record::Open(1, false));
        v.push(Record::State(node(4), 2));
        let s = replay(&v);
        assert_eq!(s.jobs.len(), 1);
        assert!(!s.jobs[0].open);
        assert_eq!(s.jobs[0].owed(&s.states), vec![node(0), node(1), node(2)]);
    }

    /// A large output journaled chunk by chunk, then named by two result groups: replay puts
    /// it together, splits stdout from stderr, and yields each host once; cut anywhere before
    /// the result, the result is not there, and a chunk lost in the middle loses the result.
    #[test]
    fn a_large_output_is_put_together_from_its_chunks() {
        let mut recs = sample();
        recs.truncate(4);
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let digest = [7u8; 32];
        let chunk = |offset: usize, len: usize| Record::Blob {
            job: 1,
            digest,
            offset: offset as u64,
            data: content[offset..offset + len].to_vec(),
        };
        let result = |nodes: Vec<NodeId>| Record::BlobResult {
            job: 1,
            status: ExitStatus::Exited(0),
            truncated: false,
            digest,
            stdout_len: 6_000,
            len: content.len() as u64,
            nodes,
        };
        // A first copy started and begun again (offset 0), then whole.
        recs.extend([chunk(0, 3_000), chunk(0, 4_000), chunk(4_000, 6_000)]);
        recs.push(result(vec![node(0), node(1)]));
        recs.push(result(vec![node(1), node(2)]));
        let (bytes, ends) = file_of(&recs);
        let s = replay(&decode_all(&bytes).records);
        let groups = &s.jobs[0].groups;
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].output, content[..6_000].to_vec());
        assert_eq!(groups[0].stderr, content[6_000..].to_vec());
        assert_eq!(groups[0].nodes, vec![node(0), node(1)]);
        assert_eq!(groups[1].nodes, vec![node(2)], "node 1 is yielded once");
        // Cut before the first result's end: no result of the blob.
        let cut = &bytes[..ends[recs.len() - 2] - 1];
        assert!(replay(&decode_all(cut).records).jobs[0].groups.is_empty());
        // The middle chunk missing: the output is not whole, nothing is yielded.
        let mut holed = recs.clone();
        holed.remove(5);
        assert!(replay(&holed).jobs[0].groups.is_empty());
    }

    /// Cut the journal at every byte offset: the records read are exactly those that ended at
    /// or before the cut, and no host's result is yielded twice.
    #[test]
    fn a_journal_torn_at_any_offset_reads_its_whole_records_and_never_a_result_twice() {
        let mut recs = sample();
        // A duplicate of an earlier result (a re-sent group) must not count twice either.
        recs.push(Record::Result {
            job: 1,
            status: ExitStatus::Exited(0),
            truncated: false,
            output: b"out 0\n".to_vec(),
            stderr: Vec::new(),
            nodes: vec![node(0), node(1)],
        });
        let (bytes, ends) = file_of(&recs);
        for cut in 0..=bytes.len() {
            let r = decode_all(&bytes[..cut]);
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(r.records.len(), whole, "cut at {cut}");
            assert_eq!(r.records[..], recs[..whole]);
            let expect_valid = if cut < MAGIC.len() { 0 } else { ends[..whole].last().copied().unwrap_or(MAGIC.len()) };
            assert_eq!(r.valid_len, expect_valid as u64, "cut at {cut}");
            assert_eq!(r.valid_len + r.torn, cut as u64);
            let s = replay(&r.records);
            for j in &s.jobs {
                let mut seen = BTreeSet::new();
                for g in &j.groups {
                    for n in &g.nodes {
                        assert!(seen.insert(*n), "cut at {cut}: {n} yielded twice");
                    }
                }
                assert_eq!(seen, j.got);
            }
        }
    }

    /// A flipped byte anywhere in a record ends the journal there: the records before it read.
    #[test]
    fn a_damaged_record_ends_the_journal_before_it() {
        let recs = sample();
        let (bytes, ends) = file_of(&recs);
        for at in MAGIC.len()..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x5a;
            let r = decode_all(&b);
            let before = ends.iter().filter(|&&e| e <= at).count();
            assert!(r.records.len() == before, "flip at {at}: {} records, {before} before it", r.records.len());
        }
    }

    #[test]
    fn a_reopened_journal_drops_its_torn_tail_and_appends_after_the_last_whole_record() {
        let dir = std::env::temp_dir().join(format!("plush-journal-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = plush_mio::Key::generate();
        let mut j = Journal::create(&dir, "s1", &key).unwrap();
        let recs = sample();
        for r in &recs {
            assert!(j.append(r, true));
        }
        drop(j);
        let path = dir.join("s1").join(JOURNAL);
        let full = std::fs::read(&path).unwrap();
        // Tear the last record in its middle.
        std::fs::write(&path, &full[..full.len() - 3]).unwrap();
        let r = read_dir(&dir.join("s1")).unwrap();
        assert_eq!(r.records.len(), recs.len() - 1);
        assert!(r.torn > 0);
        let mut j = Journal::reopen(&dir.join("s1"), r.valid_len).unwrap();
        assert!(j.append(&Record::Done, true));
        let r = read_dir(&dir.join("s1")).unwrap();
        assert_eq!(r.torn, 0);
        assert_eq!(r.records.len(), recs.len());
        assert_eq!(r.records.last(), Some(&Record::Done));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("s1").join(KEY)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key file is 0600");
        assert!(plush_mio::Key::read_file(&dir.join("s1").join(KEY)).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
