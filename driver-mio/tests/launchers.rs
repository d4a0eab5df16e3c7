//! The ssh and command launchers, end to end.
//!
//! The ssh test starts a real OpenSSH server on a loopback port with host and user keys it
//! generates, and launches every client through the system ssh client. Run as root, it logs in
//! as a dedicated account with `/bin/sh` as its login shell (created if missing), as a cluster
//! account would be, so the binary really has to be copied into another home; run as anyone
//! else, sshd can only log that user in. Without `/usr/sbin/sshd` the test says so and passes,
//! except under CI (`CI` set), where it fails: `.ci/run` installs openssh-server.
//!
//! Every process started is killed and reaped, also when a test fails (guards with `Drop`).

mod common;

use common::{client_bin, cluster_config, free_port};
use plush_core::wire::ExitStatus;
use plush_core::{HostState, NodeId};
use plush_mio::launcher::{no_build_reason, own_arch};
use plush_mio::{client_builds, process_exists, Cluster, ClusterConfig, LaunchMethod, SshLaunch};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";
/// The account the ssh test logs in as when run by root.
const TEST_USER: &str = "plush-ssh-test";

fn states(c: &Cluster) -> String {
    c.hosts().map(|(id, h)| format!("{id}: {:?} {:?}", h.state, h.why)).collect::<Vec<_>>().join(", ")
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("run sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An sshd on 127.0.0.1, its files, and the account it lets in. Stopped and cleaned on drop.
struct Sshd {
    child: Child,
    dir: PathBuf,
    user: String,
    home: PathBuf,
    /// The ssh client configuration that sends every host name to this server.
    client_config: PathBuf,
}

impl Sshd {
    /// One at a time: each test's cleanup kills the account's processes.
    fn start(port_from: u16) -> Option<(std::sync::MutexGuard<'static, ()>, Sshd)> {
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let lock = ONE.lock().unwrap_or_else(|e| e.into_inner());
        if !Path::new(SSHD).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{SSHD} is missing under CI: .ci/run must install openssh-server"
            );
            eprintln!("SKIPPED: {SSHD} is not installed (apt-get install openssh-server)");
            return None;
        }
        let root = sh("id -u") == "0";
        let user = if root {
            if !Command::new("id")
                .arg(TEST_USER)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                sh(&format!("useradd --create-home --shell /bin/sh {TEST_USER}"));
            }
            // Without PAM, sshd refuses accounts whose password is locked (useradd's "!"):
            // "*" has no password either, but is not locked.
            sh(&format!("usermod -p '*' {TEST_USER}"));
            // Privilege separation needs its empty directory.
            std::fs::create_dir_all("/run/sshd").expect("make /run/sshd");
            TEST_USER.to_string()
        } else {
            sh("id -un")
        };
        let home = PathBuf::from(sh(&format!("getent passwd {user} | cut -d: -f6")));
        let port = free_port(1, port_from);
        let dir = std::env::temp_dir().join(format!("plush-sshd-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("make the sshd directory");
        // The logged-in user reads authorized_keys: the directory must be open to it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let d = dir.display();
        sh(&format!(
            "ssh-keygen -q -t ed25519 -N '' -f {d}/host_key && ssh-keygen -q -t ed25519 -N '' -f {d}/user_key"
        ));
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).expect("authorized_keys");
        std::fs::set_permissions(dir.join("authorized_keys"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin no\nAllowUsers {user}\n\
             MaxStartups 100:30:200\nMaxSessions 100\nLogLevel ERROR\n"
        );
        std::fs::write(dir.join("sshd_config"), config).expect("write sshd_config");
        let client_config = dir.join("ssh_config");
        std::fs::write(
            &client_config,
            format!(
                "Host *\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {d}/user_key\n  \
                 IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
            ),
        )
        .expect("write ssh_config");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start sshd");
        let s = Sshd { child, dir, user, home, client_config };
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "sshd did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some((lock, s))
    }

    /// Processes of the logged-in account running a client.
    fn remote_clients(&self) -> Vec<u32> {
        let out = Command::new("pgrep").args(["-u", &self.user, "-f", "client --listen"]).output().expect("pgrep");
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.user == TEST_USER {
            let _ = Command::new("pkill").args(["-KILL", "-u", TEST_USER]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `ssh` processes running a client command for `port` (a launch's login).
fn ssh_logins(port: u16) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let wanted = format!(":{port}");
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "ssh"))
        .filter(|pid| {
            let line = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
                .replace(['\0', '\''], " ");
            line.contains("client --listen") && line.contains(&wanted)
        })
        .collect()
}

/// The builds kept in `dir` (the remote `.cache/plush`): its `plush-*` files. Running clients
/// keep their logs there too (`client-IP-PORT.log`, see `plush client --detach`).
fn kept_builds(dir: &Path) -> Vec<PathBuf> {
    let mut kept: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the copy")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|f| f.to_string_lossy().starts_with("plush-")))
        .collect();
    kept.sort();
    kept
}

fn ssh_cluster(sshd: &Sshd) -> Cluster {
    let ssh = SshLaunch::new(client_bin(), vec!["-F".into(), sshd.client_config.display().to_string()])
        .expect("hash the client binary");
    ssh_cluster_with(ssh)
}

fn ssh_cluster_with(ssh: SshLaunch) -> Cluster {
    let cfg = ClusterConfig {
        method: Some(LaunchMethod::Ssh(ssh)),
        launch_timeout: Duration::from_secs(60),
        ..ClusterConfig::default()
    };
    Cluster::start(cfg).expect("start the controller")
}

#[test]
fn the_ssh_launcher_copies_the_binary_once_and_its_clients_run_jobs() {
    let Some((_one, sshd)) = Sshd::start(29_000) else { return };
    let remote = sshd.home.join(".cache/plush");
    let _ = std::fs::remove_dir_all(&remote);
    let n = 8;
    let port = free_port(n, 29_100);
    let hosts: Vec<(NodeId, String)> =
        (0..n).map(|i| NodeId::loopback(i, port)).map(|id| (id, format!("host-{}", id.addr().ip()))).collect();

    let copied = {
        let mut c = ssh_cluster(&sshd);
        c.add_named_hosts(&hosts);
        let all = c.wait_until(Duration::from_secs(90), |c| c.count(HostState::Joined) == n as usize).expect("loop");
        assert!(all, "{}", states(&c));
        // The binary was copied into the account's home, under its version and digest.
        let kept = kept_builds(&remote);
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert!(kept[0].file_name().is_some_and(|f| f.to_string_lossy().starts_with("plush-0.")), "{kept:?}");
        // Each login ended once its client listened (`--detach`, as a pdsh command's ends): the
        // clients run on, and no ssh of the launches does.
        let end = Instant::now() + Duration::from_secs(10);
        while !ssh_logins(port).is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(ssh_logins(port), Vec::<u32>::new(), "ssh logins still running");
        assert_eq!(sshd.remote_clients().len(), n as usize);
        // The jobs run as the account logged in over ssh.
        let out = c.run(&["id", "-un"], Duration::from_secs(20)).expect("run");
        assert_eq!(out.result_count(), n as usize, "missing {:?}", out.missing);
        assert_eq!(out.groups.len(), 1);
        assert_eq!(out.groups[0].status, ExitStatus::Exited(0));
        assert_eq!(String::from_utf8_lossy(&out.groups[0].output).trim(), sshd.user);
        let ssh_pids = c.launched_pids();
        assert_eq!(sshd.remote_clients().len(), n as usize);
        let d = c.dismantle(Duration::from_secs(30)).expect("dismantle");
        assert_eq!(d.killed, 0, "every client exits by itself");
        assert!(ssh_pids.iter().all(|&p| !process_exists(p)));
        let end = Instant::now() + Duration::from_secs(10);
        while !sshd.remote_clients().is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(sshd.remote_clients(), Vec::<u32>::new(), "no client left on the hosts");
        let m = std::fs::metadata(&kept[0]).expect("stat");
        (kept[0].clone(), m.ino(), m.mtime_nsec(), m.mtime())
    };

    // A second controller finds the same build in place and does not copy it again.
    let mut c = ssh_cluster(&sshd);
    c.add_named_hosts(&hosts[..3]);
    let all = c.wait_until(Duration::from_secs(60), |c| c.count(HostState::Joined) == 3).expect("loop");
    assert!(all, "{}", states(&c));
    let m = std::fs::metadata(&copied.0).expect("stat");
    assert_eq!((m.ino(), m.mtime_nsec(), m.mtime()), (copied.1, copied.2, copied.3), "copied again");
    let d = c.dismantle(Duration::from_secs(30)).expect("dismantle");
    assert_eq!(d.killed, 0);
}

#[test]
fn an_ssh_host_that_refuses_is_reported_by_name() {
    let Some((_one, sshd)) = Sshd::start(29_050) else { return };
    let port = free_port(2, 29_200);
    let good = (NodeId::loopback(0, port), "good".to_string());
    let bad = (NodeId::loopback(1, port), "bad".to_string());
    // `bad` is sent to a port where nothing listens.
    let cfg = sshd.dir.join("ssh_config");
    let text = std::fs::read_to_string(&cfg).expect("read ssh_config");
    std::fs::write(&cfg, format!("Host bad\n  Port 9\n{text}")).expect("write ssh_config");
    let mut c = ssh_cluster(&sshd);
    c.add_named_hosts(&[good.clone(), bad.clone()]);
    let joined = c.wait_until(Duration::from_secs(60), |c| c.count(HostState::Joined) == 1).expect("loop");
    assert!(joined, "{}", states(&c));
    assert_eq!(c.host(&good.0).map(|h| h.state), Some(HostState::Joined));
    let tried =
        c.wait_until(Duration::from_secs(30), |c| c.host(&bad.0).is_some_and(|h| h.why.is_some())).expect("loop");
    let info = c.host(&bad.0);
    assert!(tried, "{info:?}");
    assert_ne!(info.as_ref().map(|h| h.state), Some(HostState::Joined));
    assert_eq!(info.and_then(|h| h.why), Some("the client exited before listening"));
    c.dismantle(Duration::from_secs(30)).expect("dismantle");
}

/// A directory of client builds for the tests, removed on drop.
struct BuildsDir(PathBuf);

impl BuildsDir {
    /// `DIR/<arch>/plush` for each of `archs`: a copy of the client binary with `tag` and the
    /// architecture appended, unless `tag` is empty (bytes past an ELF file's end change its
    /// digest, not what it runs).
    fn new(name: &str, archs: &[&str], tag: &[u8]) -> BuildsDir {
        let dir = std::env::temp_dir().join(format!("plush-builds-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for arch in archs {
            std::fs::create_dir_all(dir.join(arch)).expect("mkdir");
            let mut bytes = std::fs::read(client_bin()).expect("read the client binary");
            if !tag.is_empty() {
                bytes.extend_from_slice(tag);
                bytes.extend_from_slice(arch.as_bytes());
            }
            let bin = dir.join(arch).join("plush");
            std::fs::write(&bin, bytes).expect("write a build");
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        BuildsDir(dir)
    }
}

impl Drop for BuildsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ssh_options(sshd: &Sshd) -> Vec<String> {
    vec!["-F".into(), sshd.client_config.display().to_string()]
}

#[test]
fn the_ssh_launcher_copies_the_build_for_the_hosts_architecture_from_the_builds_directory() {
    let Some((_one, sshd)) = Sshd::start(29_400) else { return };
    let remote = sshd.home.join(".cache/plush");
    let _ = std::fs::remove_dir_all(&remote);
    // This machine's architecture (the host's: it is the same machine) and another one, each
    // a distinct build.
    let other = if own_arch() == "aarch64" { "x86_64" } else { "aarch64" };
    let dir = BuildsDir::new("match", &[own_arch(), other], b"\nplush test build\n");
    let builds = client_builds(&dir.0).expect("read the builds directory");
    assert_eq!(builds.len(), 2, "{builds:?}");
    let ours = builds.iter().find(|b| b.arch == own_arch()).expect("the host's build").clone();
    let theirs = builds.iter().find(|b| b.arch == other).expect("the other build").clone();
    assert_ne!(ours.remote_path, theirs.remote_path, "builds are kept apart by digest");
    let own = SshLaunch::new(client_bin(), Vec::new()).expect("hash the client binary");
    assert_ne!(own.builds[0].remote_path, ours.remote_path, "the directory's build is another file");

    let port = free_port(2, 29_450);
    let hosts: Vec<(NodeId, String)> = (0..2).map(|i| (NodeId::loopback(i, port), format!("arch-host-{i}"))).collect();
    let mut c = ssh_cluster_with(SshLaunch::with_builds(builds, ssh_options(&sshd)));
    c.add_named_hosts(&hosts);
    let all = c.wait_until(Duration::from_secs(60), |c| c.count(HostState::Joined) == 2).expect("loop");
    assert!(all, "{}", states(&c));
    // Only the build for the host's architecture was copied, byte for byte, under its digest.
    let kept = kept_builds(&remote);
    assert_eq!(kept, vec![sshd.home.join(&ours.remote_path)]);
    assert_eq!(std::fs::read(&kept[0]).expect("read the copy"), std::fs::read(&ours.binary).expect("read the build"));
    // And it is what the clients run.
    let mut running = Vec::new();
    for pid in sshd.remote_clients() {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("the client's executable");
        running.push(exe);
    }
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(running.iter().all(|e| *e == kept[0]), "{running:?} against {kept:?}");
    let out = c.run(&["echo", "ok"], Duration::from_secs(20)).expect("run");
    assert_eq!(out.result_count(), 2, "missing {:?}", out.missing);
    let d = c.dismantle(Duration::from_secs(30)).expect("dismantle");
    assert_eq!(d.killed, 0);
}

#[test]
fn an_ssh_host_whose_architecture_has_no_build_is_refused_by_name_before_any_copy() {
    let Some((_one, sshd)) = Sshd::start(29_500) else { return };
    let remote = sshd.home.join(".cache/plush");
    let _ = std::fs::remove_dir_all(&remote);
    // Builds for other architectures only.
    let dir = BuildsDir::new("lacking", &["riscv64", "s390x"], b"");
    let builds = client_builds(&dir.0).expect("read the builds directory");
    assert!(builds.iter().all(|b| b.arch != own_arch()));
    let port = free_port(1, 29_550);
    let host = (NodeId::loopback(0, port), "odd-arch-host".to_string());
    let mut c = ssh_cluster_with(SshLaunch::with_builds(builds, ssh_options(&sshd)));
    c.add_named_hosts(std::slice::from_ref(&host));
    let tried =
        c.wait_until(Duration::from_secs(60), |c| c.host(&host.0).is_some_and(|h| h.why.is_some())).expect("loop");
    let info = c.host(&host.0);
    assert!(tried, "{info:?}");
    assert_ne!(info.as_ref().map(|h| h.state), Some(HostState::Joined));
    // The failure names the architecture (the host's, as uname -m says it; the command line
    // prints it under the host's name: cli/tests/client_builds.rs).
    let why = info.and_then(|h| h.why);
    assert_eq!(why, Some(no_build_reason(own_arch())));
    assert!(why.is_some_and(|w| w.contains(own_arch())), "{why:?}");
    // Nothing was copied, nothing runs.
    assert!(!remote.exists() || std::fs::read_dir(&remote).expect("read").next().is_none(), "a copy was made");
    assert_eq!(sshd.remote_clients(), Vec::<u32>::new());
    c.dismantle(Duration::from_secs(30)).expect("dismantle");
}

#[test]
fn a_builds_directory_is_read_by_architecture_and_checked() {
    let dir = BuildsDir::new("read", &["x86_64", "aarch64"], b"");
    std::fs::create_dir_all(dir.0.join("empty")).expect("mkdir");
    let builds = client_builds(&dir.0).expect("read");
    let archs: Vec<&str> = builds.iter().map(|b| b.arch.as_str()).collect();
    assert_eq!(archs, ["aarch64", "x86_64"], "sorted, the directory without a plush skipped");
    assert!(builds.iter().all(|b| b.remote_path.starts_with(".cache/plush/plush-")));
    let empty = BuildsDir::new("none", &[], b"");
    std::fs::create_dir_all(&empty.0).expect("mkdir");
    assert!(client_builds(&empty.0).is_err(), "a directory without builds is refused");
    let bad = BuildsDir::new("bad", &["x86 64"], b"");
    assert!(client_builds(&bad.0).is_err(), "an architecture name with a space is refused");
    assert_eq!(no_build_reason("aarch64"), "no client build for aarch64 (see --client-binaries)");
    assert!(no_build_reason("pdp11").contains("unknown"));
}

#[test]
fn the_command_launcher_fills_its_template_and_hands_the_key_on_stdin() {
    let n = 5;
    let port = free_port(n, 29_300);
    let hosts: Vec<NodeId> = (0..n).map(|i| NodeId::loopback(i, port)).collect();
    let marker = std::env::temp_dir().join(format!("plush-command-launch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&marker);
    std::fs::create_dir_all(&marker).expect("mkdir");
    // The template records each {host} it was given, then starts the client reading the key
    // from stdin.
    let template =
        format!("touch {}/{{host}} && exec {{plush}} client --listen {{addr}} --key-file -", marker.display());
    let cfg =
        ClusterConfig { method: Some(LaunchMethod::Command { template, plush: client_bin() }), ..cluster_config() };
    let mut c = Cluster::start(cfg).expect("start");
    c.add_hosts(&hosts);
    let all = c.wait_until(Duration::from_secs(30), |c| c.count(HostState::Joined) == n as usize).expect("loop");
    assert!(all, "{}", states(&c));
    let mut seen: Vec<String> = std::fs::read_dir(&marker)
        .expect("read")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    seen.sort();
    let mut want: Vec<String> = hosts.iter().map(|h| h.addr().ip().to_string()).collect();
    want.sort();
    assert_eq!(seen, want);
    let out = c.run(&["echo", "ok"], Duration::from_secs(10)).expect("run");
    assert_eq!(out.result_count(), n as usize);
    let pids = c.launched_pids();
    let d = c.dismantle(Duration::from_secs(20)).expect("dismantle");
    assert_eq!(d.killed, 0);
    assert!(pids.iter().all(|&p| !process_exists(p)));
    let _ = std::fs::remove_dir_all(&marker);
}

#[test]
fn templates_quote_what_they_substitute() {
    let addr = "127.0.0.9:7000".parse().expect("addr");
    let t = plush_mio::launcher::fill_template(
        "ssh {host} {plush} client --listen {addr} # {ip} {port} {other}",
        "a b;rm",
        addr,
        Path::new("/x y/plush"),
    );
    assert_eq!(t, "ssh 'a b;rm' '/x y/plush' client --listen 127.0.0.9:7000 # 127.0.0.9 7000 {other}");
}

/// An ssh configuration for one launcher of a tree launch: `base` (the sshd's), with the key
/// `key`, that records every login it makes: ssh runs `LocalCommand` on this machine once a
/// login is made, and it appends the host name it was given (`%n`) to `log` (created writable
/// by all: members log in as the account). The launch records of [`launched_hosts`].
fn recording_config(sshd: &Sshd, name: &str, key: &str) -> (PathBuf, PathBuf) {
    let log = sshd.dir.join(format!("{name}.launches"));
    std::fs::write(&log, "").expect("make the launch record");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let text = std::fs::read_to_string(&sshd.client_config).expect("read ssh_config");
    let text = text.replace("user_key", key)
        + &format!("  PermitLocalCommand yes\n  LocalCommand echo %n >> {}\n", log.display());
    let config = sshd.dir.join(format!("ssh_config_{name}"));
    std::fs::write(&config, text).expect("write the ssh configuration");
    (config, log)
}

/// The hosts (IP addresses) that the logins recorded in `log` went to (see
/// [`recording_config`]): the controller names them `host-IP`, members by their IP address.
fn launched_hosts(log: &Path) -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().map(|l| l.trim().trim_start_matches("host-").to_string()).filter(|h| !h.is_empty()).collect()
}

/// Kills, on drop, every client listening on `port` that runs as `user` (the clients members
/// launched are not this test's children, and outlive their launchers by design).
struct PortClients {
    user: String,
    port: u16,
}

impl Drop for PortClients {
    fn drop(&mut self) {
        let pattern = format!("client --listen 127\\.0\\.0\\.[0-9]+:{}", self.port);
        let _ = Command::new("pkill").args(["-KILL", "-u", &self.user, "-f", &pattern]).status();
    }
}

#[test]
fn a_tree_launch_over_ssh_has_members_launch_most_hosts_and_every_host_joins() {
    let Some((_one, sshd)) = Sshd::start(29_600) else { return };
    let n = 20;
    let port = free_port(n, 29_700);
    let _clients = PortClients { user: sshd.user.clone(), port };
    // Members log in from their own hosts (here, as the account): a key that account can read,
    // as host-based authentication or a forwarded agent would give them.
    let d = sshd.dir.display();
    sh(&format!("cp {d}/user_key {d}/member_key && chmod 600 {d}/member_key"));
    if sshd.user == TEST_USER {
        sh(&format!("chown {TEST_USER} {d}/member_key"));
    }
    // The controller and the members log in with configurations of their own, each recording
    // its logins: every ssh ends once its client listens (`--detach`), so the launches are
    // counted from these records, not from the processes that run.
    let (ctrl_config, ctrl_log) = recording_config(&sshd, "controller", "user_key");
    let (member_config, member_log) = recording_config(&sshd, "members", "member_key");
    let options = vec!["-F".to_string(), ctrl_config.display().to_string()];
    let mut ssh = SshLaunch::new(client_bin(), options).expect("hash the client binary");
    let member_options = vec!["-F".to_string(), member_config.display().to_string()];
    ssh.client_args = plush_mio::MemberLauncher::Ssh(member_options).client_flags();
    let cfg = ClusterConfig {
        method: Some(LaunchMethod::Ssh(ssh)),
        launch_timeout: Duration::from_secs(60),
        core: plush_core::Config { tree_launch: true, launch_fanout: 3, ..plush_core::Config::default() },
        ..ClusterConfig::default()
    };
    let mut c = Cluster::start(cfg).expect("start the controller");
    let hosts: Vec<(NodeId, String)> =
        (0..n).map(|i| NodeId::loopback(i, port)).map(|id| (id, format!("host-{}", id.addr().ip()))).collect();
    c.add_named_hosts(&hosts);
    let all = c.wait_until(Duration::from_secs(120), |c| c.count(HostState::Joined) == n as usize).expect("loop");
    assert!(all, "{}", states(&c));
    let (by_ctrl, by_members) = (launched_hosts(&ctrl_log), launched_hosts(&member_log));
    eprintln!("tree launch: {} host(s) launched by the controller, {} by members", by_ctrl.len(), by_members.len());
    assert_eq!(by_ctrl.len() + by_members.len(), n as usize, "one launch per host: {by_ctrl:?} {by_members:?}");
    assert!(by_ctrl.is_disjoint(&by_members), "a host launched twice: {by_ctrl:?} {by_members:?}");
    assert!(by_members.len() >= n as usize / 2, "members launched {by_members:?}, the controller {by_ctrl:?}");
    assert_eq!(c.controller_stats().launches as usize, by_ctrl.len(), "the controller's own count agrees");
    assert!(c.controller_stats().shares >= 1);
    let out = c.run(&["id", "-un"], Duration::from_secs(30)).expect("run");
    assert_eq!(out.result_count(), n as usize, "missing {:?}", out.missing);
    assert_eq!(out.groups.len(), 1);
    assert_eq!(out.groups[0].status, ExitStatus::Exited(0));
    let d = c.dismantle(Duration::from_secs(30)).expect("dismantle");
    assert_eq!(d.killed, 0, "every client the controller launched exits by itself");
    let end = Instant::now() + Duration::from_secs(15);
    while !sshd.remote_clients().is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sshd.remote_clients(), Vec::<u32>::new(), "no client left on the hosts");
}

#[test]
fn a_kept_copy_is_taken_at_its_name_and_any_other_binary_is_hashed() {
    let dir = std::env::temp_dir().join(format!("plush-kept-{}", std::process::id()));
    let cache = dir.join(".cache/plush");
    std::fs::create_dir_all(&cache).expect("mkdir");
    let name = format!("plush-{}-0123456789abcdef", env!("CARGO_PKG_VERSION"));
    std::fs::write(cache.join(&name), b"not the binary whose digest the name says").expect("write");
    let kept = plush_mio::ClientBuild::kept("x86_64".into(), cache.join(&name)).expect("kept");
    assert_eq!(kept.remote_path, format!(".cache/plush/{name}"), "taken at its name");
    // Elsewhere, or under another name, the binary is read and hashed.
    std::fs::write(dir.join(&name), b"not the binary whose digest the name says").expect("write");
    let other = plush_mio::ClientBuild::kept("x86_64".into(), dir.join(&name)).expect("hashed");
    let hashed = plush_mio::ClientBuild::new("x86_64".into(), dir.join(&name)).expect("hashed");
    assert_eq!(other.remote_path, hashed.remote_path);
    assert_ne!(other.remote_path, kept.remote_path);
    let _ = std::fs::remove_dir_all(&dir);
}
