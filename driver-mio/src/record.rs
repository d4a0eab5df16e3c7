//! The job record: what a client's jobs left on its host, kept in a small file so that the next
//! client on the same address can clean up after a predecessor that died without doing so.
//!
//! A job's process dies with its client (`PR_SET_PDEATHSIG`, see [`crate::sys::die_with_parent`]),
//! but what that process started (a shell's commands) does not: it is re-parented to init and
//! runs on. So the client writes down, after every loop turn in which a job started (a job's
//! end alone is left for the next write: its group has no process left to kill):
//! - the process group of every running job (its leader's pid, the leader's start time in
//!   clock ticks since boot, from `/proc/PID/stat`), and the client's session;
//! - the jobs it started, as (controller, session, job id, when), at most [`MAX_STARTED`], each
//!   for [`STARTED_FOR`]. The session is the cluster key's public tag
//!   ([`crate::auth::Key::session_tag`]): job ids restart at 1 in every session and a
//!   controller may listen on the same address every time, so (controller, job) alone named
//!   another session's job as this one's, and a host whose client had been killed during job
//!   N of one session answered job N of the next as lost, without running it.
//!
//! The next client started on the address reads the record back once its port is bound (a
//! client that cannot bind it, because the old one is only stopped, reads nothing and kills
//! nothing), kills with SIGKILL every recorded group that still has a member in the recorded
//! session started no earlier than the recorded leader (a pid reused by another group does not
//! match), and hands the started jobs of its own session to its node (those of other sessions
//! stay in the file for them): a job it is asked to run again is answered
//! as lost instead of run a second time (see `plush_core::control`), unless the job asks for
//! retries. A client that exits normally (dismantled, idle) removes its record: what it
//! started was finished or cancelled under its controller's eyes.
//!
//! The file is `$XDG_RUNTIME_DIR/plush/jobs-IP-PORT`, or `~/.cache/plush/jobs-IP-PORT` without
//! a runtime directory; without either (no home) there is no record, and a killed client's
//! grandchildren run on. It is rewritten whole (a temporary file renamed over it), read at most
//! [`MAX_RECORD`] bytes; lines it does not understand are skipped (a started job recorded
//! without a session, by an older client, among them). A client with nothing to
//! record (no job started) keeps no file.
//!
//! Bounds: one group per running job (`Config::max_jobs`), [`MAX_STARTED`] started jobs.

use plush_core::NodeId;
use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Started jobs remembered; the oldest is dropped past it.
pub const MAX_STARTED: usize = 64;
/// How long a started job is remembered: the linger time of a job a tree lost its controller
/// for (`Config::linger`'s default); past it nobody asks for the job again.
pub const STARTED_FOR: Duration = Duration::from_secs(600);
/// Largest record read.
pub const MAX_RECORD: u64 = 64 << 10;
/// First line of a record.
const MAGIC: &str = "plush-job-record 1";

/// A running job's process group, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    /// The job.
    pub job: u64,
    /// The group (its leader's pid).
    pub pgid: u32,
    /// The leader's start time, in clock ticks since boot (0: unknown).
    pub start: u64,
}

/// What a predecessor left, as read back by [`Record::open`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leftover {
    /// Groups that still had processes, killed.
    pub killed: Vec<u32>,
    /// Jobs the predecessor started in this client's session (controller, job), recent enough to
    /// be asked for again.
    pub started: Vec<(NodeId, u64)>,
}

/// The record of one client (see the module docs).
#[derive(Debug)]
pub struct Record {
    path: Option<PathBuf>,
    sid: u32,
    /// This client's session tag ([`crate::auth::Key::session_tag`]).
    session: u64,
    groups: Vec<Group>,
    /// (controller, session tag, job, unix seconds), oldest first.
    started: VecDeque<(NodeId, u64, u64, u64)>,
    /// What the file holds now.
    written: String,
}

/// Where the record of a client listening on `addr` lives (`None`: nowhere to keep it).
pub fn path_for(addr: SocketAddr) -> Option<PathBuf> {
    state_file(addr, "jobs-", "")
}

/// Where a detached client listening on `addr` writes what it would print on stderr
/// (`plush client --detach`): beside its record, `client-IP-PORT.log`.
pub fn log_path_for(addr: SocketAddr) -> Option<PathBuf> {
    state_file(addr, "client-", ".log")
}

/// `$XDG_RUNTIME_DIR/plush/PREFIX<ip>-<port>SUFFIX`, or under `~/.cache/plush` without it.
fn state_file(addr: SocketAddr, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("plush"),
        None => PathBuf::from(std::env::var_os("HOME").filter(|d| !d.is_empty())?).join(".cache").join("plush"),
    };
    let name = format!("{prefix}{}-{}{suffix}", addr.ip(), addr.port()).replace(':', "_");
    Some(dir.join(name))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// (process group, session, start time) of `pid`, from `/proc/PID/stat`.
pub fn proc_stat(pid: u32) -> Option<(u32, u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: fields resume after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) pgrp(5) session(6) ... starttime(22).
    let pgrp = f.get(2)?.parse().ok()?;
    let session = f.get(3)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((pgrp, session, start))
}

/// Processes of group `g` still running in session `sid`: the group is ours if its leader, when
/// still there, is the one recorded, and some member started no earlier than it.
fn group_alive(g: &Group, sid: u32) -> bool {
    if let Some((_, _, start)) = proc_stat(g.pgid) {
        if g.start != 0 && start != g.start {
            // The pid is another process's now.
            return false;
        }
    }
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()).any(|pid| {
        proc_stat(pid).is_some_and(|(pgrp, session, start)| pgrp == g.pgid && session == sid && start >= g.start)
    })
}

impl Record {
    /// A record kept at `path` (none: kept nowhere); nothing is read or written yet.
    fn at(path: Option<PathBuf>, session: u64) -> Record {
        Record {
            path,
            sid: crate::sys::session_id(),
            session,
            groups: Vec::new(),
            started: VecDeque::new(),
            written: String::new(),
        }
    }

    /// Read back what the previous client on `addr` left, kill its leftover groups, and start
    /// this client's record (keeping the predecessor's started jobs). `session`: this client's
    /// session tag ([`crate::auth::Key::session_tag`]); only the started jobs of that session
    /// are handed back. Call once the address is bound.
    pub fn open(addr: SocketAddr, session: u64) -> (Record, Leftover) {
        Record::open_at(path_for(addr), session)
    }

    /// [`Record::open`] with the file given.
    pub fn open_at(path: Option<PathBuf>, session: u64) -> (Record, Leftover) {
        let mut rec = Record::at(path, session);
        let mut left = Leftover::default();
        let Some(path) = rec.path.clone() else { return (rec, left) };
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir);
        }
        let text = read_limited(&path).unwrap_or_default();
        let mut lines = text.lines();
        if lines.next() == Some(MAGIC) {
            // `sid` may be 0: the session's leader is outside this pid namespace (a container
            // started in a session of the host's). Processes show that session as 0 too, so it
            // still matches; the leader's start time tells a reused pid apart.
            let (mut sid, mut groups) = (None::<u32>, Vec::new());
            let now = unix_now();
            for line in lines {
                let f: Vec<&str> = line.split_whitespace().collect();
                match f.as_slice() {
                    ["sid", s] => sid = s.parse().ok(),
                    ["group", job, pgid, start] => {
                        if let (Ok(job), Ok(pgid), Ok(start)) = (job.parse(), pgid.parse(), start.parse()) {
                            groups.push(Group { job, pgid, start });
                        }
                    }
                    ["started", ctrl, tag, job, at] => {
                        let parsed = (
                            ctrl.parse::<SocketAddr>(),
                            u64::from_str_radix(tag, 16),
                            job.parse::<u64>(),
                            at.parse::<u64>(),
                        );
                        if let (Ok(ctrl), Ok(tag), Ok(job), Ok(at)) = parsed {
                            if at + STARTED_FOR.as_secs() > now && rec.started.len() < MAX_STARTED {
                                rec.started.push_back((NodeId::new(ctrl), tag, job, at));
                                if tag == session {
                                    left.started.push((NodeId::new(ctrl), job));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            for g in groups {
                // pgid 0 or 1 would name no group or every process: never.
                if g.pgid > 1
                    && sid.is_some_and(|sid| group_alive(&g, sid))
                    && crate::sys::kill_group(g.pgid, libc::SIGKILL).is_ok()
                {
                    left.killed.push(g.pgid);
                }
            }
        }
        rec.write();
        (rec, left)
    }

    /// The jobs running now (`groups`) and the controller they run for: rewrite the file if
    /// anything changed. A job seen for the first time is remembered as started.
    pub fn update(&mut self, groups: &[Group], ctrl: Option<NodeId>) {
        if self.path.is_none() {
            return;
        }
        let now = unix_now();
        let mut fresh = groups.iter().any(|g| !self.groups.contains(g));
        if let Some(ctrl) = ctrl {
            let session = self.session;
            for g in groups {
                if !self.started.iter().any(|&(c, t, j, _)| c == ctrl && t == session && j == g.job) {
                    if self.started.len() >= MAX_STARTED {
                        self.started.pop_front();
                    }
                    self.started.push_back((ctrl, session, g.job, now));
                    fresh = true;
                }
            }
        }
        self.groups = groups.to_vec();
        // Only what a successor must know is written at once: a group or a started job. A
        // job's end alone waits for the next write (or the record's removal at exit): its
        // group, left in the file, has no process a successor could kill.
        if fresh {
            self.write();
        }
    }

    /// This process left its session (`plush client --detach`): the jobs it starts from now on
    /// run in its new one, which the record names for the next client on the address.
    pub fn session_changed(&mut self) {
        self.sid = crate::sys::session_id();
        self.write();
    }

    /// The client ends normally: its record goes with it.
    pub fn remove(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }

    /// The file's path, if there is one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn write(&mut self) {
        let Some(path) = &self.path else { return };
        if self.groups.is_empty() && self.started.is_empty() {
            // Nothing worth keeping: no file (a client that never ran a job leaves none).
            if !self.written.is_empty() || path.exists() {
                let _ = std::fs::remove_file(path);
            }
            self.written = String::new();
            return;
        }
        let mut text = format!("{MAGIC}\nsid {}\n", self.sid);
        for g in &self.groups {
            text.push_str(&format!("group {} {} {}\n", g.job, g.pgid, g.start));
        }
        for (c, t, j, at) in &self.started {
            text.push_str(&format!("started {} {t:016x} {j} {at}\n", c.addr()));
        }
        if text == self.written {
            return;
        }
        let name = path.file_name().map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
        let ok = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, path));
        if ok.is_err() {
            // No record (a read-only or full disk): the parent-death signal still holds.
            let _ = std::fs::remove_file(&tmp);
        }
        self.written = text;
    }
}

/// Do for a local client that was killed what the next client on its address would do, without
/// starting one: if the address is free (it stays bound here for the time of the clean-up, so no
/// client can take it meanwhile), kill the groups its record lists and remove the record.
/// Returns the groups killed. For a launcher that killed, or saw die, clients on this machine.
pub fn clean_up(addr: SocketAddr) -> Vec<u32> {
    let Some(path) = path_for(addr).filter(|p| p.exists()) else { return Vec::new() };
    // Held: proof that no client owns the record now.
    let Ok(_held) = std::net::TcpListener::bind(addr) else { return Vec::new() };
    // Whatever the session: the record goes.
    let (mut rec, left) = Record::open_at(Some(path), 0);
    rec.remove();
    left.killed
}

fn read_limited(path: &Path) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut s = String::new();
    f.take(MAX_RECORD).read_to_string(&mut s).ok()?;
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The session of the tests' clients.
    const SESSION: u64 = 0x5e55_1011;

    fn temp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("plush-record-test-{tag}-{}", std::process::id())).join("jobs-127.0.0.1-1")
    }

    #[test]
    fn a_successor_kills_the_groups_left_and_learns_the_jobs_started() {
        use std::os::unix::process::CommandExt;
        let path = temp("kill");
        let _ = std::fs::remove_file(&path);
        // A job's group whose leader already died, with a member left: `sh` backgrounds a sleep
        // and exits.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 >/dev/null & echo $!"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pgid = child.id();
        let (_, _, start) = proc_stat(pgid).unwrap();
        let ctrl = NodeId::new("127.0.0.9:9".parse().unwrap());
        let (mut rec, left) = Record::open_at(Some(path.clone()), SESSION);
        assert_eq!(left, Leftover::default());
        rec.update(&[Group { job: 7, pgid, start }], Some(ctrl));
        let mut out = String::new();
        use std::io::Read;
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let sleeper: u32 = out.trim().parse().unwrap();
        let _ = child.wait();
        assert!(crate::sys::pid_exists(sleeper));
        // The client dies without a word; the next one reads the record.
        let (rec2, left) = Record::open_at(Some(path.clone()), SESSION);
        assert_eq!(left.killed, vec![pgid]);
        assert_eq!(left.started, vec![(ctrl, 7)]);
        // Killed (a zombie until init reaps it: wait for it to go).
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            proc_stat(sleeper).is_none_or(|_| {
                std::fs::read_to_string(format!("/proc/{sleeper}/stat")).is_ok_and(|s| s.contains(") Z"))
            })
        });
        assert!(gone, "the left-over sleep still runs");
        // A third client: nothing left to kill; the started job is still remembered.
        drop(rec2);
        let (mut rec3, left) = Record::open_at(Some(path.clone()), SESSION);
        assert!(left.killed.is_empty());
        assert_eq!(left.started, vec![(ctrl, 7)]);
        rec3.remove();
        assert!(!path.exists());
        let _ = std::fs::remove_dir(path.parent().unwrap());
    }

    #[test]
    fn a_launcher_cleans_up_after_a_killed_local_client_only_on_a_free_address() {
        use std::os::unix::process::CommandExt;
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let Some(path) = path_for(addr) else { return }; // no home: nothing is ever recorded
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 >/dev/null & echo $!"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pgid = child.id();
        let (_, _, start) = proc_stat(pgid).unwrap();
        let (mut rec, _) = Record::open_at(Some(path.clone()), SESSION);
        rec.update(&[Group { job: 1, pgid, start }], None);
        drop(rec); // the client dies without a word
        let mut out = String::new();
        use std::io::Read;
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let _ = child.wait();
        // While someone holds the address (a stopped client), nothing is touched.
        let held = std::net::TcpListener::bind(addr).unwrap();
        assert!(clean_up(addr).is_empty());
        assert!(path.exists());
        drop(held);
        assert_eq!(clean_up(addr), vec![pgid]);
        assert!(!path.exists());
        assert!(clean_up(addr).is_empty(), "nothing left the second time");
    }

    /// Job ids restart at 1 in every session, and a controller may listen on the same address
    /// each time: a job a killed client started in one session is not the next session's job
    /// of the same id (that host answered it as lost, without running it), and the record
    /// keeps it for its own session.
    #[test]
    fn a_job_started_in_another_session_is_not_this_sessions() {
        let path = temp("session");
        let _ = std::fs::remove_file(&path);
        let ctrl = NodeId::new("127.0.0.9:9".parse().unwrap());
        let (mut rec, _) = Record::open_at(Some(path.clone()), SESSION);
        // Job 1 started, and the client dies with it running (its group is long gone).
        rec.update(&[Group { job: 1, pgid: u32::MAX, start: 0 }], Some(ctrl));
        drop(rec);
        // The next session's client on the address: job 1 of its controller is a new job.
        let (mut next, left) = Record::open_at(Some(path.clone()), SESSION + 1);
        assert!(left.started.is_empty(), "another session's job taken for this one's: {:?}", left.started);
        next.update(&[Group { job: 1, pgid: u32::MAX, start: 0 }], Some(ctrl));
        drop(next);
        // Either session's next client learns its own job 1, once.
        for s in [SESSION, SESSION + 1] {
            let (rec, left) = Record::open_at(Some(path.clone()), s);
            assert_eq!(left.started, vec![(ctrl, 1)], "session {s:x}");
            drop(rec);
        }
        // A line without a session (an older client's) names no session's job.
        std::fs::write(&path, format!("{MAGIC}\nsid 1\nstarted {} 1 {}\n", ctrl.addr(), unix_now())).unwrap();
        let (mut rec, left) = Record::open_at(Some(path.clone()), SESSION);
        assert!(left.started.is_empty());
        rec.remove();
        let _ = std::fs::remove_dir(path.parent().unwrap());
    }

    /// A job's end costs no write (a file created and renamed per job, on every host at once):
    /// the record keeps the ended job's group, which has no process left to kill, until a
    /// new job is written or the client removes its record.
    #[test]
    fn a_jobs_end_alone_is_not_written() {
        let path = temp("end");
        let _ = std::fs::remove_file(&path);
        let ctrl = NodeId::new("127.0.0.9:9".parse().unwrap());
        let (mut rec, _) = Record::open_at(Some(path.clone()), SESSION);
        let one = Group { job: 1, pgid: u32::MAX, start: 0 };
        rec.update(&[one], Some(ctrl));
        let after_start = std::fs::read_to_string(&path).unwrap();
        assert!(after_start.contains(&format!("group 1 {} 0", u32::MAX)), "{after_start}");
        // Job 1 ended: nothing new to say.
        rec.update(&[], Some(ctrl));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), after_start);
        // Job 2 started: written, without job 1's group.
        let two = Group { job: 2, pgid: u32::MAX - 1, start: 0 };
        rec.update(&[two], Some(ctrl));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&format!("group 1 {} 0", u32::MAX)), "{text}");
        assert!(text.contains(&format!("group 2 {} 0", u32::MAX - 1)), "{text}");
        drop(rec);
        // A successor kills nothing (no such process) and knows both jobs started.
        let (mut next, left) = Record::open_at(Some(path.clone()), SESSION);
        assert!(left.killed.is_empty());
        assert_eq!(left.started, vec![(ctrl, 1), (ctrl, 2)]);
        next.remove();
        let _ = std::fs::remove_dir(path.parent().unwrap());
    }

    #[test]
    fn a_reused_pid_is_not_killed() {
        // A group recorded with another start time than its leader's: not ours.
        let path = temp("reuse");
        let _ = std::fs::remove_file(&path);
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let (_, _, start) = proc_stat(pid).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{MAGIC}\nsid {}\ngroup 1 {pid} {}\n", crate::sys::session_id(), start + 1))
            .unwrap();
        let (mut rec, left) = Record::open_at(Some(path.clone()), SESSION);
        assert!(left.killed.is_empty());
        assert!(matches!(child.try_wait(), Ok(None)), "an unrelated process was killed");
        let _ = child.kill();
        let _ = child.wait();
        rec.remove();
        let _ = std::fs::remove_dir(path.parent().unwrap());
    }
}
