//! Launchers: carry out `Output::Launch { host }` by starting a client that listens on the
//! host's address. Three methods ([`LaunchMethod`]):
//! - `local` (the default): a client process on this machine, listening on the host's address
//!   (a `127.x.y.z` address from `NodeId::loopback`, typically). The command is
//!   `<program> <args...> --listen <host addr> --key-file <file>` (by default `<current exe>
//!   client ...`). Needs nothing.
//! - `ssh`: the system OpenSSH client in batch mode (never a password prompt), with the user's
//!   options passed through, runs `plush client --listen ADDR --key-file -` on the host (by its
//!   name), with the key on ssh's stdin. The launcher holds one build of plush per architecture
//!   ([`ClientBuild`]: the running binary alone, or a directory of builds, [`client_builds`]).
//!   The first login is ssh itself, started directly (no local shell), with the key on its
//!   stdin. Its remote command reads the host's architecture (`/proc/sys/kernel/arch` with the
//!   shell's `read` builtin, or `uname -m` on kernels without that file) and `exec`s the build
//!   for it, kept on the host under `~/.cache/plush/plush-<version>-<digest>`: on a host that
//!   has its build, a launch costs the same processes as pdsh's command (ssh here, the login
//!   shell there, which becomes the client). When the host lacks the build (first contact, or
//!   another build), the login exits with a status that names it, and a local shell script
//!   takes over the launch: it copies the build over ssh and runs it (two more logins). The
//!   client is run with `--detach`: once it listens and its ready line is out, it lets go of
//!   the login's stdin, stdout and stderr (what it has to say goes to `client-IP-PORT.log`
//!   beside its job record on the host, a file made on the first line) and leaves the login's
//!   session, so that the login, and the ssh here, end then, as a pdsh command's do: a
//!   launcher holds no ssh per running client, nor a host an sshd session. A
//!   host whose architecture has no build is refused in that first login, before anything is
//!   copied: the launch fails with [`no_build_reason`] (naming the architecture, see
//!   [`NO_BUILD_PREFIX`]).
//! - `command`: a user template run by `/bin/sh -c`, with `{host}`, `{addr}`, `{ip}`, `{port}`
//!   and `{plush}` (this machine's plush binary) replaced by shell-quoted values, and the key
//!   on its stdin (the client reads it with `--key-file -`).
//!
//! The key travels in a 0600 file or on a pipe, never on a command line. A member of the tree
//! that launches (tree launch, [`KeySource::Memory`]) has no key file: it holds the key in
//! memory and writes it to each launch's stdin (a pipe): the first ssh login reads it there;
//! the copy script reads it into a shell variable and hands it to the ssh that runs the client
//! with the `printf` builtin, on a pipe again, so the key is never on a command line nor on any
//! disk. A launch counts as
//! done when the client prints its ready line ([`READY_PREFIX`]) on stdout (through ssh for a
//! remote one), which it does once its listener is bound: the controller's next invitation then
//! finds it. It fails when the client (or ssh) exits first, or stays silent for
//! [`Launcher::ready_timeout`] (it is then killed, with its process group). A client whose
//! address is held by another process (a client that is stopped, not dead) says so on stdout
//! ([`ADDR_IN_USE_PREFIX`]), and the launch fails with exactly that reason ([`ADDR_IN_USE`]). Ssh's stderr (and
//! a local or command client's) is inherited. Every launch runs in a session of its own (`setsid`): Ctrl-C at the
//! controller's terminal does not reach it, and each launch gets its own share of the CPU where
//! the kernel groups CPU time by session (pdsh does the same).
//!
//! Bounds: at most [`Launcher::max_in_flight`] launches (default [`MAX_IN_FLIGHT`]) wait for
//! their ready line at once; more wait in a queue, which holds at most one entry per host the
//! controller is inviting (its invitations are bounded by `Config::max_invitations`). The table
//! of started clients holds one entry per launch until the client exits, its stdout ends, and
//! it is reaped; the table of host names one entry per named host. After the ready line the
//! launch's stdout stays watched, for its end only (what the client still writes there is
//! dropped), for at most [`MAX_WATCHED`] clients at once: the client, or its ssh, exits right
//! after its stdout ends, and is reaped then, so that a launcher whose clients run (the
//! controller's, a member's in tree launch) needs no timer for them. A launch that failed and
//! was killed, and a client past [`MAX_WATCHED`] (its stdout closed at its ready line), are
//! reaped by a timer (every 100 ms, `REAP_EVERY`). A launcher thus holds at most
//! [`Launcher::max_in_flight`] + [`MAX_WATCHED`] pipes.
//! An ssh launch keeps its one entry (and its slot, and its deadline: [`Launcher::ready_timeout`]
//! covers the copy too) while its first login's exit status is awaited (checked every 2 ms,
//! `AWAIT_EXIT_EVERY`: ssh exits right after its stdout ends) and while the copy script runs.
//! Every child is killed and reaped at [`Launcher::shutdown`] or on drop: none outlives its
//! launcher as a zombie.

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use plush_core::{LaunchResult, NodeId};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant as StdInstant};

/// Launches waiting for their ready line at once, by default.
pub const MAX_IN_FLIGHT: usize = 50;
/// What a client prints on stdout once it listens: this prefix, then its address.
pub const READY_PREFIX: &str = "plush-client listening ";
/// What a client prints on stdout instead of its ready line when its address is in use (then
/// the address). The launch fails with [`ADDR_IN_USE`].
pub const ADDR_IN_USE_PREFIX: &str = "plush-client address in use ";
/// Why a launch failed when the address was in use: a client may be there, only stopped
/// (SIGSTOP, a debugger), and may resume; it is not a failure of the launcher.
pub const ADDR_IN_USE: &str = "address in use: a client may be stopped there";
/// Longest ready line read; a longer line is a failed launch.
const MAX_LINE: usize = 256;
/// How often started clients are checked for an exit.
const REAP_EVERY: Duration = Duration::from_millis(100);
/// Started clients whose stdout stays watched after their ready line, at most, per launcher (so
/// that a launcher holds at most [`Launcher::max_in_flight`] + this many pipes); past it, a
/// client's stdout is closed at its ready line and its exit found by the timer.
pub const MAX_WATCHED: usize = 256;
/// How often a first ssh login whose stdout ended is checked for its exit status.
const AWAIT_EXIT_EVERY: Duration = Duration::from_millis(2);

/// How clients are started. See the module docs.
#[derive(Clone, Debug)]
pub enum LaunchMethod {
    /// `program args... --listen ADDR --key-file FILE` on this machine.
    Local {
        /// The client program.
        program: PathBuf,
        /// Its arguments before `--listen`.
        args: Vec<OsString>,
    },
    /// Through the system OpenSSH client.
    Ssh(SshLaunch),
    /// A user template, run by `/bin/sh -c`.
    Command {
        /// The template: `{host}`, `{addr}`, `{ip}`, `{port}`, `{plush}` are replaced.
        template: String,
        /// What `{plush}` stands for: this machine's plush binary.
        plush: PathBuf,
    },
}

/// Builds of plush an ssh launcher holds, at most (one per architecture): the remote side
/// reports a missing build with exit status 100 + its index, below the statuses of a shell
/// killed by a signal (128 + n).
pub const MAX_BUILDS: usize = 16;
/// Longest architecture name in a directory of builds.
pub const MAX_ARCH_LEN: usize = 32;
/// What an ssh launch prints on its stdout instead of a ready line when the host's `uname -m`
/// names an architecture the launcher has no build for (then that name). The launch fails with
/// [`no_build_reason`] for it.
pub const NO_BUILD_PREFIX: &str = "plush-launch no client build for ";
/// Exit status of the first ssh login when the host's architecture has no build.
const NO_BUILD_STATUS: u8 = 98;
/// Exit status of the first ssh login when build `i` is missing on the host: this plus `i`.
const MISSING_STATUS: u8 = 100;

/// Why a launch failed on a host whose architecture (`uname -m`) has no build, for the
/// architectures Linux names (the reason is a `&'static str`, as every launch failure's).
pub fn no_build_reason(arch: &str) -> &'static str {
    const KNOWN: [(&str, &str); 17] = [
        ("x86_64", "no client build for x86_64 (see --client-binaries)"),
        ("aarch64", "no client build for aarch64 (see --client-binaries)"),
        ("arm64", "no client build for arm64 (see --client-binaries)"),
        ("armv7l", "no client build for armv7l (see --client-binaries)"),
        ("armv6l", "no client build for armv6l (see --client-binaries)"),
        ("armv8l", "no client build for armv8l (see --client-binaries)"),
        ("i386", "no client build for i386 (see --client-binaries)"),
        ("i486", "no client build for i486 (see --client-binaries)"),
        ("i586", "no client build for i586 (see --client-binaries)"),
        ("i686", "no client build for i686 (see --client-binaries)"),
        ("riscv64", "no client build for riscv64 (see --client-binaries)"),
        ("ppc64le", "no client build for ppc64le (see --client-binaries)"),
        ("ppc64", "no client build for ppc64 (see --client-binaries)"),
        ("s390x", "no client build for s390x (see --client-binaries)"),
        ("loongarch64", "no client build for loongarch64 (see --client-binaries)"),
        ("mips64", "no client build for mips64 (see --client-binaries)"),
        ("mips", "no client build for mips (see --client-binaries)"),
    ];
    KNOWN
        .iter()
        .find(|(a, _)| *a == arch)
        .map_or("no client build for the host's architecture (an unknown uname -m; see --client-binaries)", |(_, r)| r)
}

/// The architecture this binary runs on, as `uname -m` names it.
pub fn own_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86" => "i686",
        "arm" => "armv7l",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        other => other,
    }
}

/// One build of plush, for the hosts of one architecture.
#[derive(Clone, Debug)]
pub struct ClientBuild {
    /// The architecture, as the host's `uname -m` names it (`x86_64`, `aarch64`).
    pub arch: String,
    /// The binary on this machine, copied to hosts that lack it.
    pub binary: PathBuf,
    /// Where the binary is kept on a host, relative to the remote home directory.
    pub remote_path: String,
}

impl ClientBuild {
    /// The build of `arch` in `binary`: the remote path names the package version and the
    /// first 8 bytes of the binary's SHA-256, so that another build (another architecture, or
    /// another compilation) is copied again while the same one never is.
    pub fn new(arch: String, binary: PathBuf) -> io::Result<ClientBuild> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut f = std::fs::File::open(&binary)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let digest: String = h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
        let remote_path = format!(".cache/plush/plush-{}-{digest}", env!("CARGO_PKG_VERSION"));
        Ok(ClientBuild { arch, binary, remote_path })
    }

    /// The build of `arch` in `binary`, as [`ClientBuild::new`], except that a binary kept
    /// where a launcher copies builds (`.../.cache/plush/plush-<version>-<16 hex digits>`, this
    /// package's version) is taken at its word: its name is its remote path, and it is not read
    /// (a member of the tree launching from its host runs such a copy; hashing tens of MB in
    /// every member would cost more than its launches).
    pub fn kept(arch: String, binary: PathBuf) -> io::Result<ClientBuild> {
        let prefix = format!("plush-{}-", env!("CARGO_PKG_VERSION"));
        let name = binary.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let in_cache = binary.parent().is_some_and(|d| d.ends_with(".cache/plush"));
        let digest = name.strip_prefix(&prefix).filter(|d| d.len() == 16 && d.bytes().all(|b| b.is_ascii_hexdigit()));
        match digest {
            Some(_) if in_cache => {
                let remote_path = format!(".cache/plush/{name}");
                Ok(ClientBuild { arch, binary, remote_path })
            }
            _ => ClientBuild::new(arch, binary),
        }
    }
}

/// The builds in a directory of builds: `DIR/<arch>/plush` for each architecture, named as
/// `uname -m` names it (`benches/dist.sh` makes one). Sub-directories without a `plush` file
/// are skipped; names longer than [`MAX_ARCH_LEN`] or with other characters than ASCII letters,
/// digits, `_`, `-` and `.` are refused, and so are more than [`MAX_BUILDS`] builds, or none.
/// Sorted by architecture.
pub fn client_builds(dir: &Path) -> io::Result<Vec<ClientBuild>> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {why}", dir.display()));
    let mut builds = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let binary = entry.path().join("plush");
        if !binary.is_file() {
            continue;
        }
        let name = entry.file_name();
        let Some(arch) = name.to_str().filter(|a| {
            !a.is_empty()
                && a.len() <= MAX_ARCH_LEN
                && a.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        }) else {
            return Err(bad(format!("{name:?} is not an architecture name (as uname -m prints it)")));
        };
        if builds.len() == MAX_BUILDS {
            return Err(bad(format!("more than {MAX_BUILDS} builds")));
        }
        builds.push(ClientBuild::new(arch.to_string(), binary)?);
    }
    if builds.is_empty() {
        return Err(bad("no build in it (DIR/<uname -m>/plush)".to_string()));
    }
    builds.sort_by(|a, b| a.arch.cmp(&b.arch));
    Ok(builds)
}

/// The ssh launch method: what to run and what to copy.
#[derive(Clone, Debug)]
pub struct SshLaunch {
    /// The ssh program. Default `ssh`.
    pub ssh: OsString,
    /// Options given to ssh before the host name (`-F config`, `-p 2222`, `-o Name=value`...);
    /// `-o BatchMode=yes` always comes first.
    pub options: Vec<String>,
    /// The builds copied to hosts that lack them, one per architecture (at most
    /// [`MAX_BUILDS`]; those past it are never used). A host whose architecture is not here
    /// is refused.
    pub builds: Vec<ClientBuild>,
    /// Extra arguments of the remote `plush client` (e.g. `--max-children 8`).
    pub client_args: Vec<String>,
}

impl SshLaunch {
    /// The ssh method with `binary` (this executable, typically) as the only build, for hosts
    /// of this machine's architecture ([`own_arch`]).
    pub fn new(binary: PathBuf, options: Vec<String>) -> io::Result<SshLaunch> {
        Ok(SshLaunch::with_builds(vec![ClientBuild::new(own_arch().to_string(), binary)?], options))
    }

    /// The ssh method with `builds` (from [`client_builds`], typically).
    pub fn with_builds(builds: Vec<ClientBuild>, options: Vec<String>) -> SshLaunch {
        SshLaunch { ssh: "ssh".into(), options, builds, client_args: Vec::new() }
    }

    /// The ssh command line (program and options up to the host name) for `name`.
    fn ssh_words(&self, name: &str) -> Vec<String> {
        let mut ssh = vec![self.ssh.to_string_lossy().into_owned(), "-o".into(), "BatchMode=yes".into()];
        ssh.extend(self.options.iter().cloned());
        ssh.push("--".into());
        ssh.push(name.to_string());
        ssh
    }

    /// The remote command that runs a kept build at `path` (a shell word) on `addr`, detached
    /// once it listens (`--detach`): the login ends then, and the client runs on by itself.
    fn run_command(&self, path: &str, addr: &str) -> String {
        let extra: String = self.client_args.iter().map(|a| format!(" {}", q(a))).collect();
        format!("exec {path} client --listen {} --key-file - --detach{extra}", q(addr))
    }

    /// The remote command of the first ssh login, run by the account's shell: it reads the
    /// host's architecture from `/proc/sys/kernel/arch` with the `read` builtin (no process;
    /// `uname -m` where the kernel lacks the file, before 6.1), refuses an architecture without
    /// a build ([`NO_BUILD_PREFIX`] and the name on stdout, exit [`NO_BUILD_STATUS`]), exits
    /// [`MISSING_STATUS`] + the build's index when the build is not kept there, and else
    /// `exec`s it: on a host that has its build, the login's shell becomes the client, as
    /// pdsh's becomes its command.
    fn first_remote(&self, addr: &str) -> String {
        let builds = &self.builds[..self.builds.len().min(MAX_BUILDS)];
        let mut remote =
            String::from("{ read -r a < /proc/sys/kernel/arch; } 2>/dev/null || a=$(uname -m); case $a in");
        for (i, b) in builds.iter().enumerate() {
            let status = usize::from(MISSING_STATUS) + i;
            remote.push_str(&format!(" {}) p={}; c={status};;", q(&b.arch), q(&b.remote_path)));
        }
        remote.push_str(&format!(
            " *) echo \"{NO_BUILD_PREFIX}$a\"; exit {NO_BUILD_STATUS};; esac; test -x \"$p\" || exit $c; {}",
            self.run_command("\"$p\"", addr)
        ));
        remote
    }

    /// The first login of a launch on `name`: ssh itself (no local shell), with the key on its
    /// stdin, running [`SshLaunch::first_remote`].
    fn first_login(&self, name: &str, addr: &str) -> Command {
        let words = self.ssh_words(name);
        let mut cmd = Command::new(&self.ssh);
        cmd.args(&words[1..]).arg(self.first_remote(addr));
        cmd
    }

    /// The local shell script run when the first login found build `index` missing on the
    /// host: it copies the build (to a temporary name, renamed into place) and runs it, in two
    /// more logins, reading the key from `key` (see [`KeySource`]). `None` for an index past
    /// the builds.
    fn copy_script(&self, name: &str, addr: &str, key: &KeySource, index: usize) -> Option<String> {
        let b = self.builds[..self.builds.len().min(MAX_BUILDS)].get(index)?;
        let ssh: String = self.ssh_words(name).iter().map(|w| q(w)).collect::<Vec<_>>().join(" ");
        // Where the last ssh reads the key from: the key file, or the variable the script read
        // it into from its own stdin (`printf` is a shell builtin: no command line holds it).
        let (feed, key, head) = match key {
            KeySource::File(f) => (String::new(), format!("< {}", q(&f.to_string_lossy())), String::new()),
            KeySource::Memory(_) => {
                ("printf '%s\\n' \"$k\" | ".to_string(), String::new(), "IFS= read -r k || exit 1\n".to_string())
            }
        };
        let path = q(&b.remote_path);
        let dir = q(b.remote_path.rsplit_once('/').map_or(".", |(d, _)| d));
        let copy = q(&format!(
            "mkdir -p {dir} && cat > {path}.tmp.$$ && chmod 755 {path}.tmp.$$ && mv -f {path}.tmp.$$ {path}"
        ));
        Some(format!(
            "{head}{ssh} {copy} < {bin} || \
             {{ echo \"plush: cannot copy the plush binary for \"{arch}\" to \"{who} >&2; exit 1; }}\n\
             {feed}exec {ssh} {} {key}\n",
            q(&self.run_command(&path, addr)),
            bin = q(&b.binary.to_string_lossy()),
            arch = q(&b.arch),
            who = q(name),
        ))
    }
}

/// `s` quoted for a POSIX shell. A string shlex cannot quote (one with a NUL byte, which no
/// command line can carry anyway) becomes the empty string `''`.
fn q(s: &str) -> String {
    shlex::try_quote(s).map_or_else(|_| "''".to_string(), |c| c.into_owned())
}

/// `template` with `{host}`, `{addr}`, `{ip}`, `{port}` and `{plush}` replaced by shell-quoted
/// values (one pass: a value is never scanned for placeholders).
pub fn fill_template(template: &str, name: &str, addr: std::net::SocketAddr, plush: &Path) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let (value, len) = if tail.starts_with("{host}") {
            (q(name), 6)
        } else if tail.starts_with("{addr}") {
            (q(&addr.to_string()), 6)
        } else if tail.starts_with("{ip}") {
            (q(&addr.ip().to_string()), 4)
        } else if tail.starts_with("{port}") {
            (addr.port().to_string(), 6)
        } else if tail.starts_with("{plush}") {
            (q(&plush.to_string_lossy()), 7)
        } else {
            ("{".to_string(), 1)
        };
        out.push_str(&value);
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

/// Kill a started client: its whole process group when it leads one (every launch does: an ssh
/// or command launch's shell may have children of its own), else the process.
fn kill(child: &mut Child, group: bool) {
    if group {
        let _ = crate::sys::kill_group(child.id(), libc::SIGKILL);
    }
    let _ = child.kill();
}

struct Started {
    host: NodeId,
    child: Child,
    /// It leads its own process group.
    group: bool,
    /// While waiting for the ready line.
    stdout: Option<(Token, ChildStdout)>,
    line: Vec<u8>,
    deadline: StdInstant,
    exited: bool,
    /// An ssh launch's first login: when it ends before the ready line, its exit status may ask
    /// for a copy of the build ([`SshLaunch::copy_script`]).
    first_login: bool,
    /// The first login's stdout ended before a ready line; its exit status is awaited
    /// ([`Launcher::poll`]). Its launch is still in flight.
    awaiting_exit: bool,
    /// Its ready line came: the launch is done, and its stdout is still watched, only for its
    /// end (the client, or its ssh, exits right after), so that no timer has to ask.
    ready: bool,
    /// Its stdout ended after the ready line: its exit is checked at every poll until reaped.
    exiting: bool,
}

impl Started {
    /// Still waiting for its ready line (or for the first login's exit status).
    fn waiting(&self) -> bool {
        !self.ready && (self.stdout.is_some() || self.awaiting_exit)
    }

    /// Not reaped, and nothing will say when it exits (its stdout is not watched): only a
    /// timer finds its exit (a launch that failed and was killed, typically).
    fn unwatched(&self) -> bool {
        !self.exited && self.stdout.is_none() && !self.awaiting_exit && !self.exiting
    }
}

/// The stdin of a launch that reads the key there: the key file, or a pipe the key is
/// written to ([`KeySource::Memory`]).
fn key_stdin(cmd: &mut Command, key: &KeySource) -> Result<(), &'static str> {
    match key {
        KeySource::File(f) => {
            let Ok(key) = std::fs::File::open(f) else {
                return Err("the key file could not be opened");
            };
            cmd.stdin(key);
        }
        KeySource::Memory(_) => {
            cmd.stdin(Stdio::piped());
        }
    }
    Ok(())
}

/// Where a launcher takes the cluster key it hands to the clients it starts.
#[derive(Clone)]
pub enum KeySource {
    /// A 0600 key file (the controller's).
    File(PathBuf),
    /// The key's line (64 hex digits and a newline), held in memory: a member of the tree that
    /// launches (tree launch), which has no key file and must not write one. It goes to every
    /// launch's stdin.
    Memory(Vec<u8>),
}

impl core::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            KeySource::File(p) => write!(f, "File({})", p.display()),
            KeySource::Memory(_) => write!(f, "Memory(..)"),
        }
    }
}

/// Starts clients as local processes. See the module docs.
pub struct Launcher {
    method: LaunchMethod,
    key: KeySource,
    /// Host names for the ssh and command methods; a host without one goes by its IP address.
    names: HashMap<NodeId, String>,
    /// Launches waiting for their ready line at once.
    pub max_in_flight: usize,
    /// How long a client may take to print its ready line.
    pub ready_timeout: Duration,
    /// Leave the clients started running when the launcher is dropped (a member's, in tree
    /// launch: they are members of the tree, and end with it by themselves; killing them when
    /// their launcher's client exits first would cut the tree's dismantle short). Their
    /// processes are then reaped by whoever inherits them. Off by default.
    pub detach_on_drop: bool,
    queue: VecDeque<NodeId>,
    started: Vec<Started>,
    next_reap: StdInstant,
    /// Launches that could not even be started, reported at the next poll.
    failed: Vec<(NodeId, &'static str)>,
    /// Hosts a local client was started on (one entry per host): at shutdown, what their
    /// clients' jobs left is cleaned up (see [`Launcher::shutdown`]).
    local_hosts: std::collections::BTreeSet<NodeId>,
    /// Hosts whose architecture has no build (one entry per host the controller invited), and
    /// the reason: the controller's later tries fail at once, without another ssh login.
    no_build: HashMap<NodeId, &'static str>,
    /// Started clients whose stdout is watched after their ready line (at most
    /// [`MAX_WATCHED`]).
    watched: usize,
}

impl Launcher {
    /// A launcher running `program args... --listen ADDR --key-file KEY_FILE`.
    pub fn new(program: PathBuf, args: Vec<OsString>, key_file: PathBuf) -> Launcher {
        Launcher::with_method(LaunchMethod::Local { program, args }, key_file)
    }

    /// A launcher using `method`, handing the key in `key_file` to the clients.
    pub fn with_method(method: LaunchMethod, key_file: PathBuf) -> Launcher {
        Launcher::with_key(method, KeySource::File(key_file))
    }

    /// A launcher using `method`, handing the key from `key` to the clients.
    pub fn with_key(method: LaunchMethod, key: KeySource) -> Launcher {
        Launcher {
            method,
            key,
            names: HashMap::new(),
            max_in_flight: MAX_IN_FLIGHT,
            ready_timeout: Duration::from_secs(10),
            detach_on_drop: false,
            queue: VecDeque::new(),
            started: Vec::new(),
            next_reap: StdInstant::now(),
            failed: Vec::new(),
            local_hosts: std::collections::BTreeSet::new(),
            no_build: HashMap::new(),
            watched: 0,
        }
    }

    /// `<current exe> client`.
    pub fn current_exe(key_file: PathBuf) -> io::Result<Launcher> {
        Ok(Launcher::new(std::env::current_exe()?, vec!["client".into()], key_file))
    }

    /// The name the ssh and command methods use for `host` (its IP address by default).
    pub fn set_name(&mut self, host: NodeId, name: String) {
        self.names.insert(host, name);
    }

    /// The launch method.
    pub fn method(&self) -> &LaunchMethod {
        &self.method
    }

    fn in_flight(&self) -> usize {
        self.started.iter().filter(|s| s.waiting()).count()
    }

    /// Ask for a client on `host`; it starts now or once a slot frees.
    pub fn launch(&mut self, registry: &Registry, next_token: &mut usize, host: NodeId) {
        if let Some(&why) = self.no_build.get(&host) {
            if !self.failed.iter().any(|(h, _)| *h == host) {
                self.failed.push((host, why));
            }
            return;
        }
        if !self.queue.contains(&host) && !self.started.iter().any(|s| s.host == host && s.waiting()) {
            self.queue.push_back(host);
        }
        self.start_queued(registry, next_token);
    }

    fn start_queued(&mut self, registry: &Registry, next_token: &mut usize) {
        while self.in_flight() < self.max_in_flight {
            let Some(host) = self.queue.pop_front() else { return };
            if let Err(why) = self.start(registry, next_token, host) {
                self.failed.push((host, why));
            }
        }
    }

    fn start(&mut self, registry: &Registry, next_token: &mut usize, host: NodeId) -> Result<(), &'static str> {
        let name = self.name(host);
        let mut first_login = false;
        let cmd = match &self.method {
            LaunchMethod::Local { program, args } => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg("--listen").arg(host.addr().to_string()).arg("--key-file");
                match &self.key {
                    KeySource::File(f) => cmd.arg(f).stdin(Stdio::null()),
                    KeySource::Memory(_) => cmd.arg("-").stdin(Stdio::piped()),
                };
                cmd
            }
            LaunchMethod::Ssh(ssh) => {
                first_login = true;
                let mut cmd = ssh.first_login(&name, &host.addr().to_string());
                key_stdin(&mut cmd, &self.key)?;
                cmd
            }
            LaunchMethod::Command { template, plush } => {
                let mut cmd = Command::new("/bin/sh");
                cmd.arg("-c").arg(fill_template(template, &name, host.addr(), plush));
                key_stdin(&mut cmd, &self.key)?;
                cmd
            }
        };
        let (child, token, stdout) = self.spawn(registry, next_token, cmd, &name)?;
        if matches!(self.method, LaunchMethod::Local { .. }) {
            self.local_hosts.insert(host);
        }
        self.started.push(Started {
            host,
            child,
            group: true,
            stdout: Some((token, stdout)),
            line: Vec::new(),
            deadline: StdInstant::now() + self.ready_timeout,
            exited: false,
            first_login,
            awaiting_exit: false,
            ready: false,
            exiting: false,
        });
        Ok(())
    }

    /// The name the ssh and command methods use for `host`.
    fn name(&self, host: NodeId) -> String {
        self.names.get(&host).cloned().unwrap_or_else(|| host.addr().ip().to_string())
    }

    /// Start `cmd` in a session of its own with its stdout on a pipe watched under a new token,
    /// handing it the key when its stdin is a pipe.
    fn spawn(
        &self,
        registry: &Registry,
        next_token: &mut usize,
        mut cmd: Command,
        name: &str,
    ) -> Result<(Child, Token, ChildStdout), &'static str> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        // Every launch leads a process group of its own (see `kill`).
        crate::sys::new_session(&mut cmd);
        let group = true;
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("plush launcher: cannot start the client for {name}: {e}");
                return Err("the client program could not be started");
            }
        };
        if let (KeySource::Memory(line), Some(mut stdin)) = (&self.key, child.stdin.take()) {
            // One short line: it fits in the pipe's buffer, so this does not block. Closed at
            // once (dropped), so the client sees the end of it.
            if io::Write::write_all(&mut stdin, line).is_err() {
                kill(&mut child, group);
                let _ = child.wait();
                return Err("the key could not be handed to the client");
            }
        }
        let Some(stdout) = child.stdout.take() else {
            kill(&mut child, group);
            let _ = child.wait();
            return Err("the client's stdout could not be read");
        };
        let token = Token(*next_token);
        *next_token += 1;
        let fd = stdout.as_raw_fd();
        let ok = crate::sys::set_nonblocking(fd)
            .and_then(|()| registry.register(&mut SourceFd(&fd), token, Interest::READABLE));
        if ok.is_err() {
            kill(&mut child, group);
            let _ = child.wait();
            return Err("the client's stdout could not be watched");
        }
        Ok((child, token, stdout))
    }

    /// The first ssh login of launch `i` ended before a ready line, with `status`: when it
    /// says a build is missing on the host, the copy script takes over the launch (same entry,
    /// same deadline); else the launch failed.
    fn after_first_login(
        &mut self,
        registry: &Registry,
        next_token: &mut usize,
        i: usize,
        status: std::process::ExitStatus,
    ) -> Result<(), &'static str> {
        let LaunchMethod::Ssh(ssh) = &self.method else { return Err("the client exited before listening") };
        let host = self.started[i].host;
        let missing = status.code().and_then(|c| c.checked_sub(i32::from(MISSING_STATUS)));
        let Some(index) = missing.and_then(|m| usize::try_from(m).ok()) else {
            return Err("the client exited before listening");
        };
        let name = self.name(host);
        let Some(script) = ssh.copy_script(&name, &host.addr().to_string(), &self.key, index) else {
            return Err("the client exited before listening");
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        cmd.stdin(if matches!(self.key, KeySource::Memory(_)) { Stdio::piped() } else { Stdio::null() });
        let (child, token, stdout) = self.spawn(registry, next_token, cmd, &name)?;
        let s = &mut self.started[i];
        s.child = child;
        s.stdout = Some((token, stdout));
        s.line = Vec::new();
        s.exited = false;
        s.first_login = false;
        s.awaiting_exit = false;
        Ok(())
    }

    /// Launches whose first ssh login ended before a ready line: once its exit status is
    /// known, either the copy starts or the launch fails (reported through `done`).
    fn settle_first_logins(
        &mut self,
        registry: &Registry,
        next_token: &mut usize,
        done: &mut Vec<(NodeId, LaunchResult)>,
    ) {
        for i in 0..self.started.len() {
            if !self.started[i].awaiting_exit {
                continue;
            }
            let status = match self.started[i].child.try_wait() {
                Ok(Some(status)) => status,
                Ok(None) => continue,
                Err(_) => {
                    let s = &mut self.started[i];
                    s.awaiting_exit = false;
                    kill(&mut s.child, s.group);
                    done.push((s.host, Err("the client exited before listening")));
                    continue;
                }
            };
            if let Err(why) = self.after_first_login(registry, next_token, i, status) {
                let s = &mut self.started[i];
                s.awaiting_exit = false;
                s.exited = true;
                done.push((s.host, Err(why)));
            }
        }
    }

    /// Whether `token` is a launch's stdout; if so, read it and report through `done`.
    pub fn on_readable(&mut self, registry: &Registry, token: Token, done: &mut Vec<(NodeId, LaunchResult)>) -> bool {
        let Some(s) = self.started.iter_mut().find(|s| s.stdout.as_ref().is_some_and(|(t, _)| *t == token)) else {
            return false;
        };
        let mut buf = [0u8; MAX_LINE];
        if s.ready {
            // Only its end matters now: what it still writes is dropped.
            loop {
                let Some((_, out)) = s.stdout.as_mut() else { return true };
                let ended = match out.read(&mut buf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) => e.kind() != io::ErrorKind::Interrupted,
                };
                if ended {
                    if let Some((_, out)) = s.stdout.take() {
                        let _ = registry.deregister(&mut SourceFd(&out.as_raw_fd()));
                        self.watched = self.watched.saturating_sub(1);
                    }
                    s.exiting = !s.exited;
                    return true;
                }
            }
        }
        let verdict: Option<LaunchResult> = loop {
            let Some((_, out)) = s.stdout.as_mut() else { break None };
            match out.read(&mut buf) {
                Ok(0) if s.first_login => {
                    // Its exit status says whether a build must be copied first: `poll`
                    // reads it (ssh exits right after its stdout ends).
                    if let Some((_, out)) = s.stdout.take() {
                        let _ = registry.deregister(&mut SourceFd(&out.as_raw_fd()));
                    }
                    s.awaiting_exit = true;
                    return true;
                }
                Ok(0) => break Some(Err("the client exited before listening")),
                Ok(n) => {
                    s.line.extend_from_slice(&buf[..n]);
                    if let Some(end) = s.line.iter().position(|&b| b == b'\n') {
                        let line = &s.line[..end];
                        break Some(if line.starts_with(READY_PREFIX.as_bytes()) {
                            Ok(())
                        } else if line.starts_with(ADDR_IN_USE_PREFIX.as_bytes()) {
                            Err(ADDR_IN_USE)
                        } else if let Some(arch) = line.strip_prefix(NO_BUILD_PREFIX.as_bytes()) {
                            let why = no_build_reason(&String::from_utf8_lossy(arch));
                            self.no_build.insert(s.host, why);
                            Err(why)
                        } else {
                            Err("the client printed something other than its ready line")
                        });
                    }
                    if s.line.len() > MAX_LINE {
                        break Some(Err("the client printed something other than its ready line"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break Some(Err("the client's stdout failed")),
            }
        };
        if let Some(v) = verdict {
            s.line = Vec::new();
            if v.is_ok() && self.watched < MAX_WATCHED {
                // Still watched, for its end (see `Started::ready`).
                s.ready = true;
                self.watched += 1;
            } else {
                s.ready = v.is_ok();
                if let Some((_, out)) = s.stdout.take() {
                    let _ = registry.deregister(&mut SourceFd(&out.as_raw_fd()));
                }
                if v.is_err() {
                    // Whatever state it is in, it is no client of ours.
                    kill(&mut s.child, s.group);
                }
            }
            done.push((s.host, v));
        }
        true
    }

    /// Time out silent launches, reap exited clients, start queued launches.
    pub fn poll(
        &mut self,
        registry: &Registry,
        next_token: &mut usize,
        now: StdInstant,
        done: &mut Vec<(NodeId, LaunchResult)>,
    ) {
        done.extend(self.failed.drain(..).map(|(h, why)| (h, Err(why))));
        self.settle_first_logins(registry, next_token, done);
        for s in self.started.iter_mut().filter(|s| s.waiting() && s.deadline <= now) {
            if let Some((_, out)) = s.stdout.take() {
                let _ = registry.deregister(&mut SourceFd(&out.as_raw_fd()));
            }
            s.awaiting_exit = false;
            kill(&mut s.child, s.group);
            done.push((s.host, Err("the client did not start listening in time")));
        }
        // Clients whose stdout ended are reaped at once; the unwatched ones every REAP_EVERY.
        let timed = now >= self.next_reap;
        if timed {
            self.next_reap = now + REAP_EVERY;
        }
        let mut reaped = false;
        for s in self.started.iter_mut().filter(|s| s.exiting || (timed && s.unwatched())) {
            if let Ok(Some(_)) = s.child.try_wait() {
                s.exited = true;
                s.exiting = false;
                reaped = true;
            }
        }
        if reaped || timed {
            // An exited client whose stdout is no longer watched is done with.
            self.started.retain(|s| !s.exited || s.waiting() || s.stdout.is_some());
        }
        self.start_queued(registry, next_token);
        done.extend(self.failed.drain(..).map(|(h, why)| (h, Err(why))));
    }

    /// When [`Launcher::poll`] wants to run next.
    pub fn next_wake(&self) -> Option<StdInstant> {
        let deadline = self.started.iter().filter(|s| s.waiting()).map(|s| s.deadline).min();
        // Only clients nothing else reports the exit of need the timer: a launcher whose
        // clients run (a member's, for the whole session) does not wake for them.
        let reap = self.started.iter().any(Started::unwatched).then_some(self.next_reap);
        let failed = (!self.failed.is_empty()).then(StdInstant::now);
        // A process whose stdout ended exits within moments: look again soon.
        let exiting =
            self.started.iter().any(|s| s.awaiting_exit || s.exiting).then(|| StdInstant::now() + AWAIT_EXIT_EVERY);
        [deadline, reap, failed, exiting].into_iter().flatten().min()
    }

    /// Process ids of the clients started and not yet reaped.
    pub fn pids(&self) -> Vec<u32> {
        self.started.iter().filter(|s| !s.exited).map(|s| s.child.id()).collect()
    }

    /// (host, process id) of the clients started and not yet reaped.
    pub fn clients(&self) -> Vec<(NodeId, u32)> {
        self.started.iter().filter(|s| !s.exited).map(|s| (s.host, s.child.id())).collect()
    }

    /// Clients started and not yet reaped.
    pub fn running(&self) -> usize {
        self.started.iter().filter(|s| !s.exited).count()
    }

    /// Reap clients that exited; returns how many still run.
    pub fn reap(&mut self) -> usize {
        for s in self.started.iter_mut().filter(|s| !s.exited) {
            if let Ok(Some(_)) = s.child.try_wait() {
                s.exited = true;
            }
        }
        self.running()
    }

    /// Kill every client still running and reap them all. Returns how many had to be killed.
    ///
    /// A client killed here (or that died earlier, SIGKILLed, and was never replaced) leaves its
    /// jobs' children running: the kill reaches its own process group, and the parent-death
    /// signal only its jobs' first processes. For local clients the launcher then does what the
    /// next client on the address would do: kill the groups in its job record
    /// ([`crate::record::clean_up`]).
    pub fn shutdown(&mut self) -> usize {
        let mut killed = 0;
        for s in self.started.iter_mut().filter(|s| !s.exited) {
            if let Ok(Some(_)) = s.child.try_wait() {
                s.exited = true;
                continue;
            }
            kill(&mut s.child, s.group);
            let _ = s.child.wait();
            s.exited = true;
            killed += 1;
        }
        self.queue.clear();
        self.started.clear();
        self.watched = 0;
        for host in std::mem::take(&mut self.local_hosts) {
            let left = crate::record::clean_up(host.addr());
            if !left.is_empty() {
                eprintln!("plush launcher: killed {} process group(s) left by the client on {host}", left.len());
            }
        }
        killed
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if !self.detach_on_drop {
            self.shutdown();
        }
    }
}
