//! Storage for transfers: what the driver does for `Output::PushOpen`, `PushWrite`, `PushSend`,
//! `PushDone` and `PushForget` (see `plush_core::transfer` for the protocol).
//!
//! - A **target** writes the file to a temporary file beside its destination
//!   (`.NAME.plush-JOB-PID.tmp`, mode 0600, space reserved up front with `posix_fallocate`, so that
//!   a full disk is reported before the first chunk), hashes the chunks as they come (they come
//!   in order), and at the end checks the SHA-256, sets the mode and renames the file into place:
//!   a copy that does not match is removed and never installed.
//! - A **relay** (a member that is not a target), or a target that cannot write its
//!   destination, keeps the chunks in an unlinked file in the temporary directory: it serves
//!   children that are behind or that move under it, and vanishes with the process.
//! - The **source** (at the controller) is the user's file, opened read-only.
//!
//! Chunks sent from storage are read back with `pread` (the open descriptor stays valid after
//! the rename, or after a relay's file was unlinked). Errors are reported once per transfer,
//! as text for the host's result: `plush: DEST: No space left on device`.
//!
//! Bounds: one open file per transfer this node takes part in (at most `Config::max_jobs`);
//! no chunk is held in memory beyond the one being read or written.

use plush_core::frame::{chunk_frame, Frame};
use plush_core::wire::{PushSpec, RunSpec};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

struct Entry {
    spec: Rc<RunSpec>,
    /// Where chunks are kept (`None`: nowhere; children behind us cannot be served).
    file: Option<File>,
    /// A target's temporary file, until installed or removed.
    temp: Option<PathBuf>,
    /// A target's destination (`None` for relays and the source).
    dest: Option<PathBuf>,
    hasher: Sha256,
    /// An error was reported for this host: nothing is installed.
    failed: bool,
}

/// The transfers of one node. See the module docs.
#[derive(Default)]
pub struct Store {
    entries: FxHashMap<u64, Entry>,
}

/// `e` without its " (os error N)" tail: the same failure reads the same on every host, so
/// that results merge.
fn plain(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(k) => s[..k].to_string(),
        None => s,
    }
}

/// The destination of a push on this host: `~/` expanded, and `path/name` when `path` names a
/// directory (or ends with `/`).
pub fn destination(push: &PushSpec) -> PathBuf {
    let mut p = match push.path.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME").map_or_else(|| PathBuf::from(&push.path), |h| Path::new(&h).join(rest)),
        None => PathBuf::from(&push.path),
    };
    if push.path.ends_with('/') || p.is_dir() {
        p.push(&push.name);
    }
    p
}

/// An unlinked file in the temporary directory.
fn spool(job: u64) -> io::Result<File> {
    let dir = std::env::temp_dir();
    for attempt in 0..16u32 {
        let p = dir.join(format!("plush-spool-{}-{job}-{attempt}", std::process::id()));
        match OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&p) {
            Ok(f) => {
                let _ = std::fs::remove_file(&p);
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free spool name"))
}

impl Store {
    /// Transfers with storage open.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no transfer is open.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The controller's side: `path` is the file the spec describes.
    pub fn add_source(&mut self, job: u64, spec: Rc<RunSpec>, path: &Path) -> io::Result<()> {
        let file = File::open(path)?;
        let entry = Entry { spec, file: Some(file), temp: None, dest: None, hasher: Sha256::new(), failed: false };
        self.entries.insert(job, entry);
        Ok(())
    }

    /// `Output::PushOpen`. Returns the error to report for this host (a target whose
    /// destination cannot be written); the transfer is relayed all the same.
    pub fn open(&mut self, job: u64, spec: Rc<RunSpec>, install: bool) -> Option<String> {
        let push = spec.push.as_ref()?;
        let mut entry =
            Entry { spec: Rc::clone(&spec), file: None, temp: None, dest: None, hasher: Sha256::new(), failed: false };
        let mut error = None;
        if install {
            let dest = destination(push);
            if push.upgrade {
                // The client cache (`~/.cache/plush/`) may not exist yet.
                if let Some(dir) = dest.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
            }
            let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let temp = dest.with_file_name(format!(".{name}.plush-{job}-{}.tmp", std::process::id()));
            let opened = OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(&temp);
            match opened.and_then(|f| match crate::sys::reserve(&f, push.size) {
                Ok(()) => Ok(f),
                Err(e) => {
                    let _ = std::fs::remove_file(&temp);
                    Err(e)
                }
            }) {
                Ok(f) => {
                    entry.file = Some(f);
                    entry.temp = Some(temp);
                    entry.dest = Some(dest);
                }
                Err(e) => {
                    error = Some(format!("plush: {}: {}", dest.display(), plain(&e)));
                    entry.failed = true;
                }
            }
        }
        if entry.file.is_none() {
            entry.file = spool(job).ok();
        }
        self.entries.insert(job, entry);
        error
    }

    /// `Output::PushWrite`. Returns the error to report (once) if this host is a target whose
    /// copy just failed.
    pub fn write(&mut self, job: u64, index: u32, data: &[u8]) -> Option<String> {
        let e = self.entries.get_mut(&job)?;
        let push = e.spec.push.as_ref()?;
        e.hasher.update(data);
        let at = u64::from(index) * u64::from(push.chunk);
        let r = match e.file.as_ref() {
            Some(f) => f.write_all_at(data, at),
            None => return None,
        };
        match r {
            Ok(()) => None,
            Err(err) => {
                let what = e.dest.as_ref().map_or_else(|| "spool".to_string(), |d| d.display().to_string());
                if let Some(t) = e.temp.take() {
                    let _ = std::fs::remove_file(t);
                }
                let report = (e.dest.is_some() && !e.failed).then(|| format!("plush: {what}: {}", plain(&err)));
                e.failed = true;
                report
            }
        }
    }

    /// `Output::PushSend`: chunk `index` as a frame, read back from storage.
    pub fn frame(&mut self, job: u64, index: u32, max_frame: usize) -> io::Result<Frame> {
        let e = self.entries.get(&job).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "unknown transfer"))?;
        let push = e.spec.push.as_ref().ok_or_else(|| io::Error::other("not a push"))?;
        let f = e.file.as_ref().ok_or_else(|| io::Error::other("no storage for this transfer"))?;
        let mut buf = vec![0u8; push.chunk_len(index)];
        f.read_exact_at(&mut buf, u64::from(index) * u64::from(push.chunk))?;
        chunk_frame(job, index, &buf, max_frame).ok_or_else(|| io::Error::other("chunk larger than a frame"))
    }

    /// `Output::PushDone` at a target: check the digest, set the mode, rename into place.
    /// `Ok(path)` once installed; `Err(text)` to report.
    pub fn done(&mut self, job: u64) -> Result<PathBuf, String> {
        let e = self.entries.get_mut(&job).ok_or_else(|| "plush: unknown transfer".to_string())?;
        let push = e.spec.push.as_ref().ok_or_else(|| "plush: not a push".to_string())?;
        let (Some(temp), Some(dest)) = (e.temp.take(), e.dest.clone()) else {
            return Err("plush: the copy failed earlier".to_string());
        };
        let got: [u8; 32] = core::mem::take(&mut e.hasher).finalize().into();
        if got != push.digest {
            let _ = std::fs::remove_file(&temp);
            e.failed = true;
            return Err(format!(
                "plush: {}: digest mismatch (expected sha256 {}, got {}); not installed",
                dest.display(),
                hex8(&push.digest),
                hex8(&got)
            ));
        }
        // Keep only a read-only handle on the installed file: a program cannot be executed while
        // a process holds it open for writing (ETXTBSY), and an upgrade executes it.
        let installed = e
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("no file"))
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(push.mode & 0o7777)))
            .and_then(|()| File::open(&temp))
            .and_then(|ro| std::fs::rename(&temp, &dest).map(|()| ro));
        match installed {
            Ok(ro) => {
                e.file = Some(ro);
                Ok(dest)
            }
            Err(err) => {
                let _ = std::fs::remove_file(&temp);
                e.failed = true;
                Err(format!("plush: {}: {}", dest.display(), plain(&err)))
            }
        }
    }

    /// Whether the transfer is a client upgrade.
    pub fn is_upgrade(&self, job: u64) -> bool {
        self.entries.get(&job).and_then(|e| e.spec.push.as_ref()).is_some_and(|p| p.upgrade)
    }

    /// The job was cancelled or timed out here: never install it.
    pub fn cancel(&mut self, job: u64) {
        if let Some(e) = self.entries.get_mut(&job) {
            if let Some(t) = e.temp.take() {
                let _ = std::fs::remove_file(t);
            }
            e.failed = true;
        }
    }

    /// `Output::PushForget`: close the storage, remove an uninstalled temporary file.
    pub fn forget(&mut self, job: u64) {
        if let Some(mut e) = self.entries.remove(&job) {
            if let Some(t) = e.temp.take() {
                let _ = std::fs::remove_file(t);
            }
        }
    }

    /// Forget every transfer (the process ends).
    pub fn clear(&mut self) {
        let jobs: Vec<u64> = self.entries.keys().copied().collect();
        for j in jobs {
            self.forget(j);
        }
    }
}

fn hex8(d: &[u8; 32]) -> String {
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, read in 1 MiB blocks.
pub fn file_digest(path: &Path) -> io::Result<[u8; 32]> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}
