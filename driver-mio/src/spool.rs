//! Result outputs kept at the controller until they are printed: in memory up to a bound, else
//! in an anonymous temporary file ([`crate::ClusterConfig::spill_memory`]).
//!
//! With spilling on, the controller core hands the bytes of large outputs out as they arrive
//! (`Controller::set_blob_reports`, [`plush_core::Report::Blob`]) and the cluster
//! stores them here: an output goes to memory if it fits in what is left of the bound, else to
//! the job's temporary file, written at its place as the chunks come. Result groups then name
//! it ([`ResultGroup::spilled`]) and are printed from there ([`Body`]), so grouped mode holds
//! in memory at most the bound of output bytes, plus the chunks of one turn of the event loop,
//! however large and however many the distinct outputs are.
//!
//! The temporary file has no name (`O_TMPFILE`; where the file system lacks it, a fresh name
//! unlinked at once), so nothing is left behind whatever ends the process; it is freed when the
//! job is forgotten and no group handed out names it any more. Should the file not be
//! creatable or writable, the output stays in memory instead (never lost; the bound is then
//! exceeded, and [`Spool::errors`] counts it).

use crate::cluster::ResultGroup;
use plush_core::id::NodeId;
use plush_core::wire::BlobRef;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Bytes of result outputs a cluster keeps in memory by default when spilling
/// ([`crate::ClusterConfig::spill_memory`]); past it, outputs go to a temporary file.
pub const SPILL_MEMORY: u64 = 16 << 20;
/// Bytes read from a temporary file at once when printing or comparing.
const READ_CHUNK: usize = 64 << 10;
/// Outputs being received at once per job; the oldest is dropped past it (the controller core
/// accepts no more: `plush_core::control::MAX_PARTIAL_BLOBS`).
const MAX_PARTIAL: usize = plush_core::control::MAX_PARTIAL_BLOBS;

/// A result group's output kept in a temporary file: stdout then stderr, `len` bytes at
/// `offset`.
#[derive(Clone, Debug)]
pub struct SpilledOutput {
    file: Arc<File>,
    offset: u64,
    stdout_len: u64,
    len: u64,
    /// `plush_core::control::digest_of` the content.
    digest: [u8; 32],
}

impl PartialEq for SpilledOutput {
    fn eq(&self, other: &SpilledOutput) -> bool {
        self.digest == other.digest && self.len == other.len && self.stdout_len == other.stdout_len
    }
}

impl Eq for SpilledOutput {}

/// One stream (stdout or stderr) of a result group's output, wherever it is kept.
#[derive(Clone, Copy, Debug)]
pub enum Body<'a> {
    /// In memory.
    Mem(&'a [u8]),
    /// In a temporary file; `err`: the stderr part of the output.
    File(&'a SpilledOutput, bool),
}

impl Body<'_> {
    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Body::Mem(b) => b.len() as u64,
            Body::File(s, false) => s.stdout_len,
            Body::File(s, true) => s.len - s.stdout_len,
        }
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Call `f` on its bytes in order, in pieces of at most 64 KiB for a file.
    pub fn for_each_chunk(&self, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        match self {
            Body::Mem(b) => f(b),
            Body::File(s, err) => {
                let start = s.offset + if *err { s.stdout_len } else { 0 };
                let mut buf = vec![0u8; READ_CHUNK.min(usize::try_from(self.len()).unwrap_or(READ_CHUNK))];
                let mut done = 0;
                while done < self.len() {
                    let n = (self.len() - done).min(buf.len() as u64) as usize;
                    s.file.read_exact_at(&mut buf[..n], start + done)?;
                    f(&buf[..n])?;
                    done += n as u64;
                }
                Ok(())
            }
        }
    }

    /// Write it all to `w`.
    pub fn write_to(&self, w: &mut dyn Write) -> io::Result<()> {
        self.for_each_chunk(|c| w.write_all(c))
    }

    /// Its last byte, if any.
    pub fn last(&self) -> io::Result<Option<u8>> {
        match self {
            Body::Mem(b) => Ok(b.last().copied()),
            Body::File(s, err) if !self.is_empty() => {
                let end = s.offset + if *err { s.len } else { s.stdout_len };
                let mut b = [0u8];
                s.file.read_exact_at(&mut b, end - 1)?;
                Ok(Some(b[0]))
            }
            Body::File(..) => Ok(None),
        }
    }

    /// All of it in memory (for small outputs; a large one costs its size).
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut v = Vec::with_capacity(usize::try_from(self.len()).unwrap_or(0));
        self.for_each_chunk(|c| {
            v.extend_from_slice(c);
            Ok(())
        })?;
        Ok(v)
    }

    /// Whether both hold the same bytes. Two spilled streams that are each all of their output
    /// (the other stream empty) compare by digest; others are read and compared (only when
    /// their sizes are equal). A read error compares unequal.
    pub fn same(&self, other: &Body<'_>) -> bool {
        if self.len() != other.len() {
            return false;
        }
        match (self, other) {
            (Body::Mem(a), Body::Mem(b)) => a == b,
            (Body::File(a, ea), Body::File(b, eb)) if ea == eb && self.len() == a.len && other.len() == b.len => {
                // Each is its whole output: the digests name the bytes.
                a.digest == b.digest
            }
            _ => {
                let mut rest = match other.to_reader() {
                    Ok(r) => r,
                    Err(_) => return false,
                };
                let mut equal = true;
                let r = self.for_each_chunk(|c| {
                    if equal {
                        equal = rest.next_equals(c)?;
                    }
                    Ok(())
                });
                r.is_ok() && equal
            }
        }
    }

    fn to_reader(self) -> io::Result<Reader> {
        match self {
            Body::Mem(b) => Ok(Reader { mem: Some(b.to_vec()), file: None, at: 0, end: b.len() as u64 }),
            Body::File(s, err) => {
                let start = s.offset + if err { s.stdout_len } else { 0 };
                Ok(Reader { mem: None, file: Some(Arc::clone(&s.file)), at: start, end: start + self.len() })
            }
        }
    }
}

/// Reads a body piece by piece, to compare with another.
struct Reader {
    mem: Option<Vec<u8>>,
    file: Option<Arc<File>>,
    at: u64,
    end: u64,
}

impl Reader {
    /// Whether the next `c.len()` bytes equal `c`.
    fn next_equals(&mut self, c: &[u8]) -> io::Result<bool> {
        let n = c.len() as u64;
        if self.at + n > self.end {
            return Ok(false);
        }
        let eq = match (&self.mem, &self.file) {
            (Some(m), _) => &m[self.at as usize..(self.at + n) as usize] == c,
            (None, Some(f)) => {
                let mut buf = vec![0u8; c.len()];
                f.read_exact_at(&mut buf, self.at)?;
                buf == c
            }
            (None, None) => false,
        };
        self.at += n;
        Ok(eq)
    }
}

impl ResultGroup {
    /// Its stdout, wherever it is kept.
    pub fn stdout_body(&self) -> Body<'_> {
        match &self.spilled {
            Some(s) => Body::File(s, false),
            None => Body::Mem(&self.output),
        }
    }

    /// Its stderr, wherever it is kept.
    pub fn stderr_body(&self) -> Body<'_> {
        match &self.spilled {
            Some(s) => Body::File(s, true),
            None => Body::Mem(&self.stderr),
        }
    }
}

/// An anonymous temporary file in the temporary directory (see the module docs). Made here
/// with `O_TMPFILE` rather than with a crate: the fallback is a few lines, and the build gains
/// no dependency.
fn anonymous_file() -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    let tmp = std::fs::OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(&dir);
    if let Ok(f) = tmp {
        return Ok(f);
    }
    let mut last = io::Error::other("no name free");
    for _ in 0..16 {
        let path = dir.join(format!("plush-spill-{}-{:016x}", std::process::id(), rand::random::<u64>()));
        match std::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path) {
            Ok(f) => {
                let _ = std::fs::remove_file(&path);
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Where one output's bytes go.
#[derive(Debug)]
enum Place {
    Mem(Vec<u8>),
    /// At this offset of the job's file.
    File(u64),
}

#[derive(Debug)]
struct Partial {
    from: NodeId,
    digest: [u8; 32],
    total: u64,
    got: u64,
    place: Place,
}

/// A whole output: in memory (split into stdout and stderr at the first group naming it), or
/// in the file.
#[derive(Debug)]
enum Whole {
    Content(Vec<u8>),
    Split(Arc<Vec<u8>>, Arc<Vec<u8>>),
    File(SpilledOutput),
}

/// One job's outputs (see the module docs). Bounds: at most [`MAX_PARTIAL`] outputs being
/// received; one entry per distinct large output.
#[derive(Debug, Default)]
pub(crate) struct JobSpool {
    file: Option<Arc<File>>,
    /// Bytes of the file in use.
    end: u64,
    partial: Vec<Partial>,
    whole: Vec<([u8; 32], Whole)>,
    /// Bytes of this job's outputs in memory (counted in [`Spool::in_memory`]).
    in_memory: u64,
}

/// The cluster's spill state: the bound, and what is in memory.
#[derive(Debug, Default)]
pub(crate) struct Spool {
    /// The bound ([`crate::ClusterConfig::spill_memory`]).
    pub limit: u64,
    /// Bytes of outputs in memory, all jobs.
    pub in_memory: u64,
    /// Outputs kept in memory past the bound because the temporary file failed.
    pub errors: u64,
    /// Output bytes written to temporary files.
    pub spilled: u64,
}

impl Spool {
    fn file(&mut self, j: &mut JobSpool) -> Option<Arc<File>> {
        if j.file.is_none() {
            match anonymous_file() {
                Ok(f) => j.file = Some(Arc::new(f)),
                Err(_) => self.errors += 1,
            }
        }
        j.file.clone()
    }

    /// Room for `n` more bytes in memory.
    fn fits(&self, n: u64) -> bool {
        self.in_memory.saturating_add(n) <= self.limit
    }

    fn take_memory(&mut self, j: &mut JobSpool, n: u64) {
        self.in_memory += n;
        j.in_memory += n;
    }

    fn give_memory(&mut self, j: &mut JobSpool, n: u64) {
        self.in_memory = self.in_memory.saturating_sub(n);
        j.in_memory = j.in_memory.saturating_sub(n);
    }

    /// A job is forgotten: its memory counts no more.
    pub fn forget(&mut self, j: &JobSpool) {
        self.in_memory = self.in_memory.saturating_sub(j.in_memory);
    }

    /// A chunk of a large output (`Report::Blob`, in order per sender and digest).
    pub fn blob(&mut self, j: &mut JobSpool, from: NodeId, digest: [u8; 32], offset: u64, total: u64, data: &[u8]) {
        if j.whole.iter().any(|w| w.0 == digest) {
            return;
        }
        let k = match j.partial.iter().position(|p| p.from == from && p.digest == digest) {
            Some(k) if offset == 0 => {
                // That sender starts again (a new root).
                let p = j.partial.remove(k);
                if let Place::Mem(v) = p.place {
                    self.give_memory(j, v.capacity() as u64);
                }
                None
            }
            Some(k) => Some(k),
            None => None,
        };
        let k = match k {
            Some(k) => k,
            None if offset == 0 => {
                if j.partial.len() >= MAX_PARTIAL {
                    let p = j.partial.remove(0);
                    if let Place::Mem(v) = p.place {
                        self.give_memory(j, v.capacity() as u64);
                    }
                }
                let place = if self.fits(total) {
                    None
                } else {
                    self.file(j).map(|_| {
                        let at = j.end;
                        j.end += total;
                        Place::File(at)
                    })
                };
                let place = place.unwrap_or_else(|| {
                    self.take_memory(j, total);
                    Place::Mem(Vec::with_capacity(usize::try_from(total).unwrap_or(0)))
                });
                j.partial.push(Partial { from, digest, total, got: 0, place });
                j.partial.len() - 1
            }
            None => return,
        };
        let p = &mut j.partial[k];
        if p.got != offset || p.total != total || offset.saturating_add(data.len() as u64) > total {
            // The core took it, so this does not happen; drop the output if it does.
            let p = j.partial.remove(k);
            if let Place::Mem(v) = p.place {
                self.give_memory(j, v.capacity() as u64);
            }
            return;
        }
        let failed = match &mut p.place {
            Place::Mem(v) => {
                v.extend_from_slice(data);
                false
            }
            Place::File(at) => {
                let at = *at;
                let failed = j.file.as_ref().is_none_or(|f| f.write_all_at(data, at + offset).is_err());
                if !failed {
                    self.spilled += data.len() as u64;
                }
                failed
            }
        };
        if failed {
            // The file failed: keep the output in memory from here on (read back what it has).
            self.errors += 1;
            let p = &mut j.partial[k];
            let mut v = vec![0u8; usize::try_from(offset).unwrap_or(0)];
            if let (Place::File(at), Some(f)) = (&p.place, &j.file) {
                let _ = f.read_exact_at(&mut v, *at);
            }
            v.extend_from_slice(data);
            p.place = Place::Mem(v);
            let total = p.total;
            self.take_memory(j, total);
        }
        let p = &mut j.partial[k];
        p.got += data.len() as u64;
        if p.got == total {
            let p = j.partial.remove(k);
            let whole = match (p.place, &j.file) {
                (Place::Mem(v), _) => Whole::Content(v),
                (Place::File(at), Some(f)) => {
                    Whole::File(SpilledOutput { file: Arc::clone(f), offset: at, stdout_len: 0, len: total, digest })
                }
                (Place::File(_), None) => return,
            };
            // Copies on their way from other senders are not needed any more.
            let mut freed = 0;
            j.partial.retain(|q| {
                if q.digest != digest {
                    return true;
                }
                if let Place::Mem(v) = &q.place {
                    freed += v.capacity() as u64;
                }
                false
            });
            self.give_memory(j, freed);
            j.whole.push((digest, whole));
        }
    }

    /// A group naming blob `b`: its stdout and stderr, in memory or in the file; `None` if it
    /// is not here (the core reports only groups whose blob arrived, so this does not happen).
    pub fn named(&mut self, j: &mut JobSpool, b: &BlobRef) -> Option<Stored> {
        let w = j.whole.iter_mut().find(|w| w.0 == b.digest)?;
        let at = usize::try_from(b.stdout_len).ok()?;
        if let Whole::Content(v) = &mut w.1 {
            let v = std::mem::take(v);
            if at > v.len() {
                return None;
            }
            let err = v[at..].to_vec();
            let mut out = v;
            out.truncate(at);
            w.1 = Whole::Split(Arc::new(out), Arc::new(err));
        }
        match &w.1 {
            Whole::Split(o, e) => Some(Stored::Mem(Arc::clone(o), Arc::clone(e))),
            Whole::File(s) if b.stdout_len <= s.len => {
                Some(Stored::File(Arc::new(SpilledOutput { stdout_len: b.stdout_len, ..s.clone() })))
            }
            _ => None,
        }
    }

    /// An inline output (in a result group itself): kept in memory if it fits, else written to
    /// the file.
    pub fn inline(&mut self, j: &mut JobSpool, stdout: &[u8], stderr: &[u8]) -> Stored {
        let n = (stdout.len() + stderr.len()) as u64;
        if n == 0 || self.fits(n) {
            self.take_memory(j, n);
            return Stored::Mem(Arc::new(stdout.to_vec()), Arc::new(stderr.to_vec()));
        }
        if let Some(f) = self.file(j) {
            let at = j.end;
            if f.write_all_at(stdout, at).and_then(|()| f.write_all_at(stderr, at + stdout.len() as u64)).is_ok() {
                j.end += n;
                self.spilled += n;
                let digest = plush_core::control::digest_of(stdout, stderr);
                let s = SpilledOutput { file: f, offset: at, stdout_len: stdout.len() as u64, len: n, digest };
                return Stored::File(Arc::new(s));
            }
        }
        self.errors += 1;
        self.take_memory(j, n);
        Stored::Mem(Arc::new(stdout.to_vec()), Arc::new(stderr.to_vec()))
    }
}

/// Where a result group's output is kept.
#[derive(Clone, Debug)]
pub(crate) enum Stored {
    /// stdout and stderr in memory.
    Mem(Arc<Vec<u8>>, Arc<Vec<u8>>),
    /// In the job's file.
    File(Arc<SpilledOutput>),
}

impl Stored {
    /// Equal outputs (for merging reports into groups).
    pub fn same(&self, other: &Stored) -> bool {
        match (self, other) {
            (Stored::Mem(a, b), Stored::Mem(c, d)) => (Arc::ptr_eq(a, c) || a == c) && (Arc::ptr_eq(b, d) || b == d),
            (Stored::File(a), Stored::File(b)) => a == b,
            // The same output may be in memory once and in the file once (the bound filled up
            // between two reports of it).
            (Stored::Mem(o, e), Stored::File(f)) | (Stored::File(f), Stored::Mem(o, e)) => {
                (o.len() + e.len()) as u64 == f.len
                    && o.len() as u64 == f.stdout_len
                    && plush_core::control::digest_of(o, e) == f.digest
            }
        }
    }
}
