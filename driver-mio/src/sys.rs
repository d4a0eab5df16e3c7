//! The few system calls std does not offer, each wrapped once: the only `unsafe` in the crate.

use std::io;
use std::os::fd::RawFd;

/// Raise the soft limit on open files to the hard limit. Returns the soft limit in force
/// afterwards (the old one if raising failed).
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: `want` is a valid rlimit; failure leaves the limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere.
    Ok(lim.rlim_cur as u64)
}

/// Send `sig` to the process `pid` (never to a group: pid 0, 1 and negative ones are refused).
pub fn kill_pid(pid: u32, sig: i32) -> io::Result<()> {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return Err(io::ErrorKind::InvalidInput.into()) };
    if pid <= 1 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Send `sig` to every process of the group `pgid`.
pub fn kill_group(pgid: u32, sig: i32) -> io::Result<()> {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return Err(io::ErrorKind::InvalidInput.into()) };
    if pgid <= 1 {
        // Never signal "every process" (-1) or our own group by accident (0).
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: kill has no memory effects; a negative pid names a process group.
    if unsafe { libc::kill(-pgid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a process with this pid exists (a zombie counts: it has not been reaped).
pub fn pid_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Put a file descriptor in non-blocking mode.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns; F_GETFL/F_SETFL touch no memory.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Set or clear a descriptor's close-on-exec flag (cleared: the next child inherits it).
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns; F_GETFD/F_SETFD touch no memory.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
        if libc::fcntl(fd, libc::F_SETFD, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether an error is "too many open files" (per process or system-wide).
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Mark every descriptor above stderr close-on-exec, so that descriptors this process inherited
/// without the flag (from a shell, a test harness, an editor) do not leak into every client
/// the launcher starts. Descriptors std opens have the flag already.
pub fn cloexec_inherited() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let fds: Vec<RawFd> =
        dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).filter(|&fd| fd > 2).collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD only change a descriptor flag; a descriptor that closed since
        // the listing (the directory's own) fails with EBADF, which is ignored.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Hand the heap memory malloc holds free back to the kernel: glibc's `malloc_trim(0)`, which
/// releases every whole free page inside the heap, not only at its top (which is all glibc
/// does by itself, past `M_TRIM_THRESHOLD`). Other C libraries: nothing is done.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim_heap() {
    // SAFETY: malloc_trim takes malloc's own lock and only walks its free lists, returning
    // their pages to the kernel; no memory in use is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// See the glibc version: nothing to do with other C libraries.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_heap() {}

/// Most lines of `/proc/self/smaps` read by [`release_code_pages`] (a client maps a few dozen
/// regions, about 25 lines each).
const MAX_MAPS_LINES: usize = 4096;

/// Unmap the pages of this executable's code and read-only data that the process has mapped, so
/// that the resident set of an idle process holds what it runs and reads from now on, not all
/// it ran since it started (command-line parsing, the job it ran, their strings and tables, and
/// what the kernel maps around each page it faults in: up to 64 KiB at a time). The pages stay
/// in the page cache (shared, and reclaimable) and are mapped again on their next use. Returns
/// the bytes of mappings released.
///
/// Only private mappings of the running executable's file (matched by inode in
/// `/proc/self/smaps`) are touched: read-only executable ones (no process writes its code:
/// there are no text relocations in a Rust binary), and read-only ones that hold no anonymous
/// page (`Anonymous: 0 kB`: none was written, by the loader's relocations or anything else, so
/// every resident page is a clean copy of the file; a read-only mapping cannot be written from
/// now on). `MADV_DONTNEED` loses nothing there. Anything else (data, relocated read-only data,
/// libraries, the heap) is left alone.
#[cfg(target_os = "linux")]
pub fn release_code_pages() -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(exe) = std::fs::metadata("/proc/self/exe") else { return 0 };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return 0 };
    // The mapping being read: (start, end, executable), when it is one of the candidates.
    let mut current: Option<(usize, usize, bool)> = None;
    let mut released = 0;
    for line in smaps.lines().take(MAX_MAPS_LINES) {
        let mut f = line.split_ascii_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            // A mapping's header: start-end perms offset dev inode path.
            current = None;
            let (Some(perms), Some(_), Some(_), Some(inode)) = (f.next(), f.next(), f.next(), f.next()) else {
                continue;
            };
            if !matches!(perms, "r-xp" | "r--p") || inode.parse::<u64>().ok() != Some(exe.ino()) {
                continue;
            }
            let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
                continue;
            };
            if end > start {
                current = Some((start, end, perms == "r-xp"));
            }
        } else if first == "Anonymous:" {
            let Some((start, end, exec)) = current.take() else { continue };
            let clean = f.next().and_then(|kb| kb.parse::<u64>().ok()) == Some(0);
            if !(exec || clean) {
                continue;
            }
            // SAFETY: [start, end) is a whole mapping of this process as the kernel lists it: a
            // private, read-only mapping of the executable's file, either executable (code is
            // never written) or without an anonymous page (none was ever written, and it is
            // read-only). MADV_DONTNEED drops its page table entries; every page is a clean copy
            // of the file, so the next access maps the same bytes again from the page cache. No
            // Rust object is made to live in such a mapping but constants, which are re-read
            // from the file unchanged.
            if unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) } == 0 {
                released += end - start;
            }
        }
    }
    released
}

/// Nothing to do off Linux.
#[cfg(not(target_os = "linux"))]
pub fn release_code_pages() -> usize {
    0
}

/// Allocations of this many bytes or more get pages of their own (see [`map_large_allocations`]).
/// Unused with other C libraries than glibc (the static musl build).
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
pub const MMAP_THRESHOLD: i32 = 1 << 20;

/// Make glibc give every allocation of [`MMAP_THRESHOLD`] bytes or more pages of its own, returned
/// to the kernel when freed. By default glibc raises that threshold up to 32 MiB as large blocks
/// are freed, after which multi-MiB buffers (large outputs passing through a relay, 10 MiB each)
/// come from the heap, whose freed middle stays resident: a root relaying 100 outputs of 10 MiB
/// grew to 140 MB while holding under 30 MB. Setting the threshold fixes it (and stops the
/// raising). Other C libraries: nothing is done.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn map_large_allocations() {
    // SAFETY: mallopt only sets a parameter of malloc, under malloc's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// See the glibc version: nothing to do with other C libraries.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn map_large_allocations() {}

/// Take ownership of an inherited descriptor as a Unix stream: `fd` must be open (checked) and
/// used by nothing else in this process (the caller's promise: it came from the environment
/// for this purpose).
pub fn inherited_unix_stream(fd: RawFd) -> io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::FromRawFd;
    if fd <= 2 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: F_GETFD only reads a flag; it fails with EBADF when `fd` is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above) and, by the caller's promise, owned by nobody else.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    Ok(std::os::unix::net::UnixStream::from(owned))
}

/// Start `cmd`'s child in a session (and so a process group) of its own: signals from the
/// controlling terminal (Ctrl-C) do not reach it, its group can be killed as one, and, where the
/// scheduler groups CPU time by session (Linux autogroup), each launch gets a fair share instead
/// of all of them sharing the controller's (pdsh does the same; measured: 40 concurrent ssh
/// logins took 6.3 s from one session, 2.7 s with one session each).
pub fn new_session(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec; setsid is async-signal-safe
    // and touches no memory of the parent. Failing (already a group leader: impossible right
    // after fork) leaves the child in our session, which only loses the benefits above.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

/// Make `cmd`'s child die with this process: the kernel sends it SIGKILL when the thread that
/// started it exits (`PR_SET_PDEATHSIG`; the client's event loop is its only thread). If this
/// process died between the fork and the `prctl`, the child sees another parent and does not
/// start. Only the child itself is covered: its own children (a shell's commands) are killed
/// by the next client on the address, from the job record (see `crate::record`).
#[cfg(target_os = "linux")]
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs in the child between fork and exec; prctl and getppid are
    // async-signal-safe system calls and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Elsewhere there is no parent-death signal: the job record alone cleans up.
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_cmd: &mut std::process::Command) {}

/// Leave the session that started this process, as a daemon does: stdin, stdout and stderr
/// become `/dev/null`, then the process forks: the parent exits at once with status 0 (so an ssh
/// login that ran it ends, as pdsh's command does) and the child goes on in a session of its
/// own, holding nothing of the login. What it writes on stderr from then on goes to `log`, a file
/// made on the first line ([`open_deferred_stderr`]): most clients have nothing to say, and 500
/// clients of one account creating and removing a file each in one directory spent a CPU second
/// on its lock (compare-ssh, one machine). Call it while the process has a single thread: only
/// the calling thread continues in the child.
pub fn detach(log: Option<std::path::PathBuf>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    for fd in 0..3 {
        dup_onto(null.as_raw_fd(), fd)?;
    }
    if let Ok(mut pending) = DEFERRED_STDERR.lock() {
        *pending = log;
    }
    // SAFETY: fork in a process with one thread (the caller's promise): the child is a copy of
    // it and goes on; the parent calls only `_exit`, which runs no destructor and no atexit
    // handler (nothing of the child's is flushed or removed twice).
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: setsid only changes this process's session; it fails only for a group
            // leader, which a child just forked is not.
            unsafe { libc::setsid() };
            Ok(())
        }
        // SAFETY: see above.
        _ => unsafe { libc::_exit(0) },
    }
}

/// Where stderr goes once something is written there, after [`detach`]; `None` once opened.
static DEFERRED_STDERR: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);

/// Before a line goes to stderr: a detached process's log file is made now (mode 0600,
/// truncated, its directory created) and put on stderr, once; it stays `/dev/null` if the file
/// cannot be made. Does nothing otherwise.
pub fn open_deferred_stderr() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let Some(path) = DEFERRED_STDERR.lock().ok().and_then(|mut p| p.take()) else { return };
    if let Some(dir) = path.parent() {
        let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir);
    }
    if let Ok(f) = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path) {
        let _ = dup_onto(f.as_raw_fd(), 2);
    }
}

/// The session id of this process (0 if it cannot be read).
pub fn session_id() -> u32 {
    // SAFETY: getsid(0) only reads this process's session id.
    let sid = unsafe { libc::getsid(0) };
    u32::try_from(sid).unwrap_or(0)
}

/// Reserve `size` bytes for `f` with `posix_fallocate`, so that a full disk shows now rather
/// than mid-way. File systems that cannot reserve space are left to report it on write.
pub fn reserve(f: &std::fs::File, size: u64) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    if size == 0 {
        return Ok(());
    }
    let Ok(len) = libc::off_t::try_from(size) else { return Err(io::Error::from_raw_os_error(libc::EFBIG)) };
    // SAFETY: a valid open descriptor; posix_fallocate touches nothing else.
    let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len) };
    match r {
        0 | libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Adopt an inherited listening socket (`plush client --listen-fd N`, after an upgrade
/// re-executed the client): `fd` must be open, above stdio, and owned by nobody else.
pub fn inherited_listener(fd: RawFd) -> io::Result<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    if fd <= 2 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: F_GETFD only reads a flag; it fails with EBADF when `fd` is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above) and, by the caller's promise, owned by nobody else.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let l = std::net::TcpListener::from(owned);
    // A descriptor that is not a listening TCP socket fails here.
    l.local_addr()?;
    Ok(l)
}

/// Make `from` this process's descriptor `to` (dup2), for a program about to be executed.
pub fn dup_onto(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on descriptors this process owns; it touches no memory.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The file the fatal-signal handler removes: a leaked, NUL-terminated path, or null.
static DOOMED_FILE: std::sync::atomic::AtomicPtr<libc::c_char> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// The handler of [`remove_on_fatal_signals`]: remove the file, then die of the signal as the
/// default disposition would.
extern "C" fn remove_file_and_die(sig: libc::c_int) {
    let p = DOOMED_FILE.load(std::sync::atomic::Ordering::Acquire);
    // SAFETY: unlink, signal and raise are async-signal-safe; `p` is null or a NUL-terminated
    // string that is never freed.
    unsafe {
        if !p.is_null() {
            libc::unlink(p);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Remove `path` when a signal that would kill the process arrives: SIGHUP (the terminal was
/// lost), SIGTERM, SIGQUIT and, with `sigint`, SIGINT; then die of that signal as before. A
/// signal that already has a handler keeps it. One file per process: a later call replaces it
/// (the previous path's few bytes are kept, since a handler may be reading them).
pub fn remove_on_fatal_signals(path: &std::path::Path, sigint: bool) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return };
    DOOMED_FILE.store(c.into_raw(), std::sync::atomic::Ordering::Release);
    let mut sigs = vec![libc::SIGHUP, libc::SIGTERM, libc::SIGQUIT];
    if sigint {
        sigs.push(libc::SIGINT);
    }
    for sig in sigs {
        let handler = remove_file_and_die as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: installs an async-signal-safe handler; the previous disposition is put back
        // at once when it was not the default (somebody else handles that signal).
        unsafe {
            let old = libc::signal(sig, handler);
            if old != libc::SIG_DFL && old != handler {
                libc::signal(sig, old);
            }
        }
    }
}

/// No file is to be removed on a signal any more (it was removed the ordinary way).
pub fn forget_doomed_file() {
    DOOMED_FILE.store(std::ptr::null_mut(), std::sync::atomic::Ordering::Release);
}

/// Give `sig` back its default disposition if [`remove_on_fatal_signals`] took it, so that a
/// handler installed next (the CLI's cancel-and-dismantle flag) does not chain into ours.
pub fn release_signal(sig: i32) {
    let handler = remove_file_and_die as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: only resets `sig` to its default when our handler holds it.
    unsafe {
        let old = libc::signal(sig, libc::SIG_DFL);
        if old != handler {
            libc::signal(sig, old);
        }
    }
}

/// Start a non-blocking TCP connect to `to` from `source` (any port): the connection carries
/// the node's own address, as its id says, not whichever address the route would pick (on
/// loopback, every local client would otherwise connect from 127.0.0.1). The connect completes
/// in the background, as `mio`'s does.
pub fn connect_from(source: std::net::IpAddr, to: std::net::SocketAddr) -> io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let (family, local, remote) = match (source, to) {
        (std::net::IpAddr::V4(s), std::net::SocketAddr::V4(t)) => {
            (libc::AF_INET, sockaddr_v4(s, 0), sockaddr_v4(*t.ip(), t.port()))
        }
        (std::net::IpAddr::V6(s), std::net::SocketAddr::V6(t)) => {
            (libc::AF_INET6, sockaddr_v6(s, 0), sockaddr_v6(*t.ip(), t.port()))
        }
        // Families differ: let the kernel choose the source.
        _ => return std::net::TcpStream::connect(to).and_then(|s| s.set_nonblocking(true).map(|()| s)),
    };
    // SAFETY: a fresh socket; on every error path it is closed before returning.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is ours and open; from here on the std stream owns (and closes) it.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    // SAFETY: the addresses are valid sockaddr structures of the lengths given.
    if unsafe { libc::bind(fd, local.0.as_ptr().cast(), local.1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::connect(fd, remote.0.as_ptr().cast(), remote.1) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(stream)
}

/// A sockaddr_in as bytes, with its length.
fn sockaddr_v4(ip: std::net::Ipv4Addr, port: u16) -> (Vec<u8>, libc::socklen_t) {
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>();
    // SAFETY: reading the bytes of a plain C struct.
    let bytes = unsafe { std::slice::from_raw_parts((&sa as *const libc::sockaddr_in).cast::<u8>(), len) }.to_vec();
    (bytes, len as libc::socklen_t)
}

/// A sockaddr_in6 as bytes, with its length.
fn sockaddr_v6(ip: std::net::Ipv6Addr, port: u16) -> (Vec<u8>, libc::socklen_t) {
    let sa = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: port.to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr { s6_addr: ip.octets() },
        sin6_scope_id: 0,
    };
    let len = std::mem::size_of::<libc::sockaddr_in6>();
    // SAFETY: reading the bytes of a plain C struct.
    let bytes = unsafe { std::slice::from_raw_parts((&sa as *const libc::sockaddr_in6).cast::<u8>(), len) }.to_vec();
    (bytes, len as libc::socklen_t)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// A `/proc/self/status` field in kB.
    fn status_kib(field: &str) -> Option<u64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
    }

    #[test]
    fn released_code_pages_come_back_as_they_run() {
        // Touch a good deal of code first (formatting, collections, the file system).
        let before_text: String = (0..1000).map(|i| format!("{i:x}")).collect();
        let file_before = status_kib("RssFile:").expect("RssFile");
        let released = super::release_code_pages();
        let file_after = status_kib("RssFile:").expect("RssFile");
        assert!(released > 0, "no code mapping of the executable found");
        assert!(file_after < file_before, "RssFile {file_before} kB -> {file_after} kB");
        // The code runs on, mapped back as it is used, and computes the same.
        let after_text: String = (0..1000).map(|i| format!("{i:x}")).collect();
        assert_eq!(before_text, after_text);
        // Data is untouched: a second call finds the same mappings.
        assert_eq!(super::release_code_pages(), released);
        // Read-only data never written (constants, before and after the code) went too, not
        // only the code.
        let exe = std::fs::read_link("/proc/self/exe").expect("the executable");
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let code: usize = maps
            .lines()
            .filter(|l| l.contains(" r-xp ") && l.ends_with(&*exe.to_string_lossy()))
            .filter_map(|l| l.split_once(' ')?.0.split_once('-'))
            .filter_map(|(a, b)| Some(usize::from_str_radix(b, 16).ok()? - usize::from_str_radix(a, 16).ok()?))
            .sum();
        assert!(released > code, "{released} bytes released, {code} of them code");
    }
}
