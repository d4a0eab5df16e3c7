//! `--client-binaries DIR`: the ssh launcher copies each host the build for its `uname -m`,
//! and refuses a host whose architecture has none, by name, before copying anything.
//!
//! The ssh here is a stand-in on `PATH` (a shell script): it logs each login, skips ssh's
//! options up to `--` and the host name, and runs the remote command with `/bin/sh` in a
//! directory of its own standing for the remote home. The real ssh is tested against a real
//! sshd in driver-mio/tests/launchers.rs.

mod common;

use common::plush_env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// The architecture of this machine as `uname -m` names it.
fn uname_m() -> String {
    let out = std::process::Command::new("uname").arg("-m").output().expect("uname -m");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A scratch directory with a stand-in `ssh`, a remote home and a builds directory; removed on
/// drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("plush-client-builds-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
        std::fs::create_dir_all(dir.join("home")).expect("mkdir");
        let ssh = dir.join("bin/ssh");
        std::fs::write(
            &ssh,
            "#!/bin/sh\n\
             echo \"login $*\" >> \"$FAKE_SSH_LOG\"\n\
             while [ $# -gt 0 ]; do a=$1; shift; [ \"$a\" = -- ] && break; done\n\
             shift\n\
             cd \"$FAKE_SSH_HOME\" || exit 255\n\
             exec /bin/sh -c \"$*\"\n",
        )
        .expect("write the stand-in ssh");
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Scratch(dir)
    }

    /// `builds/<arch>/plush` for each of `archs`: a copy of the plush binary with a tag
    /// appended, so that its digest (and kept name) is its own.
    fn builds(&self, archs: &[&str]) -> PathBuf {
        let dir = self.0.join("builds");
        for arch in archs {
            std::fs::create_dir_all(dir.join(arch)).expect("mkdir");
            let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_plush")).expect("read plush");
            bytes.extend_from_slice(format!("\nbuild for {arch}\n").as_bytes());
            let bin = dir.join(arch).join("plush");
            std::fs::write(&bin, bytes).expect("write a build");
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        dir
    }

    fn run(&self, builds: &Path, port: &str, join_timeout: &str) -> common::Ran {
        let path = format!("{}:{}", self.0.join("bin").display(), std::env::var("PATH").unwrap_or_default());
        let log = self.0.join("ssh.log");
        let home = self.0.join("home");
        plush_env(
            &[
                "run",
                "-w",
                "localhost",
                "--port",
                port,
                "--client-binaries",
                &builds.display().to_string(),
                "--join-timeout",
                join_timeout,
                "--",
                "echo",
                "ok",
            ],
            None,
            &[
                ("PATH", &path),
                ("FAKE_SSH_LOG", &log.display().to_string()),
                ("FAKE_SSH_HOME", &home.display().to_string()),
            ],
            LIMIT,
        )
    }

    fn logins(&self) -> Vec<String> {
        std::fs::read_to_string(self.0.join("ssh.log")).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    fn kept(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.0.join("home/.cache/plush"))
            .map_or_else(|_| Vec::new(), |d| d.flatten().map(|e| e.path()).collect())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_host_whose_architecture_has_no_build_is_named_with_it_and_nothing_is_copied() {
    let s = Scratch::new("none");
    let arch = uname_m();
    let builds = s.builds(&["riscv64", "s390x"].map(|a| if a == arch { "mips" } else { a }));
    let r = s.run(&builds, "47611", "3");
    assert_eq!(r.code, Some(255), "stderr: {}", r.stderr);
    let line = format!("no client build for {arch} (see --client-binaries)");
    let named = r.stderr.lines().any(|l| l.starts_with("plush: localhost: unreachable: ") && l.ends_with(&line));
    assert!(named, "no {line:?} for localhost in: {}", r.stderr);
    // One login (the one that asked uname -m; the controller's later tries are refused without
    // one), no copy.
    let logins = s.logins();
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert!(s.kept().is_empty(), "copied: {:?}", s.kept());
}

#[test]
fn the_build_for_the_hosts_architecture_is_copied_and_runs() {
    let s = Scratch::new("match");
    let arch = uname_m();
    let other = if arch == "aarch64" { "x86_64" } else { "aarch64" };
    let builds = s.builds(&[arch.as_str(), other]);
    let r = s.run(&builds, "47612", "30");
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert!(String::from_utf8_lossy(&r.stdout).contains("ok"));
    // The host's build, byte for byte, and only it, is kept in the remote home.
    let kept = s.kept();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let want = std::fs::read(builds.join(&arch).join("plush")).expect("read the build");
    assert_eq!(std::fs::read(&kept[0]).expect("read the copy"), want, "{kept:?} is not the {arch} build");
    // Logins: ask (missing), copy, run.
    assert_eq!(s.logins().len(), 3, "{:?}", s.logins());

    // A second run finds it in place: one login, no copy.
    let before = std::fs::metadata(&kept[0]).and_then(|m| m.modified()).expect("mtime");
    let r = s.run(&builds, "47613", "30");
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(s.logins().len(), 4, "{:?}", s.logins());
    assert_eq!(std::fs::metadata(&kept[0]).and_then(|m| m.modified()).expect("mtime"), before);
}

#[test]
fn client_binaries_goes_with_the_ssh_launcher_only() {
    let r = common::plush(
        &["run", "--local", "1", "--client-binaries", "/nonexistent", "--", "true"],
        Duration::from_secs(20),
    );
    assert_ne!(r.code, Some(0), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("--client-binaries"), "{}", r.stderr);
}
