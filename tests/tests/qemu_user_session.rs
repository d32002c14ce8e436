//! A desktop user who is not root: `qemu:///session` (a per-user libvirtd
//! that libvirt starts on demand) runs VMs whose files live under the user's
//! own directories. The tests run the real binary as a throw-away user.
#![allow(missing_docs)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use vmdesk_tests::vnc::{connect, Rfb, TEST_ORIGIN};
use vmdesk_tests::{bin, has_shell, serial_until_shell, KillOnDrop};

/// The throw-away user the tests run as (created if missing).
const USER: &str = "vmdesk-session-test";

/// A home directory of the test user, its session daemon stopped and its
/// machines removed on drop.
struct SessionUser {
    home: tempfile::TempDir,
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn id(flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, USER]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

impl SessionUser {
    /// A fresh home for the test user; `None` when this process cannot make
    /// one (not root).
    fn new() -> Option<Self> {
        if !is_root() {
            eprintln!("skipped: creating and becoming a throw-away user needs root");
            return None;
        }
        // Made once, by one test: on a fresh machine the tests' threads
        // raced to make it, and one read the user before it was whole.
        static MADE: std::sync::Once = std::sync::Once::new();
        MADE.call_once(|| {
            if id("-u").is_none() {
                let ok = Command::new("useradd")
                    .args(["-M", "-s", "/usr/sbin/nologin", USER])
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok && id("-u").is_some(), "useradd {USER} failed");
            }
        });
        let (uid, gid) = (id("-u")?, id("-g")?);
        let home = tempfile::Builder::new()
            .prefix("vmdesk-session-")
            .tempdir_in("/tmp")
            .expect("home");
        for dir in ["", "run"] {
            let p = home.path().join(dir);
            std::fs::create_dir_all(&p).expect("mkdir");
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown");
        }
        Some(Self { home })
    }

    fn home(&self) -> &Path {
        self.home.path()
    }

    /// A command run as the test user with its own home and runtime dir.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", USER, "--", "env", "-i"])
            .arg(format!("HOME={}", self.home().display()))
            .arg(format!(
                "XDG_RUNTIME_DIR={}",
                self.home().join("run").display()
            ))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .arg(program)
            .args(args);
        c
    }

    /// `vmdesk --json ARGS` as the test user on its data dir.
    fn vmdesk(&self, args: &[&str]) -> Output {
        let data = self.home().join("data");
        let mut all = vec!["--data-dir", data.to_str().expect("utf-8"), "--json"];
        all.extend_from_slice(args);
        self.command(&bin(), &all).output().expect("run vmdesk")
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.vmdesk(args);
        assert!(
            out.status.success(),
            "vmdesk {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("one JSON document")
    }

    fn virsh(&self, args: &[&str]) -> String {
        let mut all = vec!["-q", "-c", "qemu:///session"];
        all.extend_from_slice(args);
        let out = self
            .command(Path::new("/usr/bin/virsh"), &all)
            .output()
            .expect("virsh");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A copy of the tiny-linux image the test user can read.
    fn tiny_linux(&self) -> Option<PathBuf> {
        let src = vmdesk_tests::tiny_linux();
        if !src.exists() {
            return None;
        }
        let dst = self.home().join("tiny-linux.qcow2");
        std::fs::copy(&src, &dst).expect("copy the image");
        let (uid, gid) = (id("-u"), id("-g"));
        std::os::unix::fs::chown(&dst, uid, gid).expect("chown");
        Some(dst)
    }
}

impl Drop for SessionUser {
    fn drop(&mut self) {
        for name in self.virsh(&["list", "--all", "--name"]).lines() {
            self.virsh(&["destroy", name]);
            self.virsh(&["undefine", name]);
        }
        let pidfile = self.home().join("run/libvirt/libvirtd.pid");
        if let Ok(pid) = std::fs::read_to_string(pidfile) {
            // The user's own daemon, started for this home only.
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository")
}

#[test]
fn make_run_as_a_user_who_cannot_reach_the_system_daemon_adds_the_session_daemon() {
    let Some(u) = SessionUser::new() else { return };
    // The system daemon's socket is root's alone here (scripts/libvirtd.sh).
    let out = u
        .command(
            Path::new("/usr/bin/virsh"),
            &["-q", "-c", "qemu:///system", "version"],
        )
        .output()
        .expect("virsh");
    if out.status.success() {
        eprintln!("skipped: this user reaches qemu:///system, which run.sh rightly picks");
        return;
    }
    let data = u.home().join("data");
    let mut c = u.command(Path::new("/usr/bin/env"), &[]);
    c.arg(format!("VMDESK_DATA_DIR={}", data.display()))
        .args(["timeout", "120", "bash"])
        .arg(repo().join("scripts/run.sh"))
        .arg("--no-window");
    let out = c.output().expect("run.sh");
    assert!(
        out.status.success(),
        "run.sh failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let hosts = u.json(&["host", "list"]);
    assert_eq!(hosts[0]["name"], "local", "{hosts}");
    assert_eq!(hosts[0]["uri"], "qemu:///session", "{hosts}");
}

fn add_session_host(u: &SessionUser) {
    u.json(&["host", "add", "local", "--uri", "qemu:///session"]);
    u.json(&["credits", "grant", "admin", "1000", "--reason", "tests"]);
}

#[test]
fn a_user_who_is_not_root_creates_a_running_vm_on_the_session_daemon() {
    let Some(u) = SessionUser::new() else { return };
    add_session_host(&u);
    let vm = u.json(&[
        "vm",
        "create",
        "box",
        "--ram-mb",
        "64",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    assert_eq!(vm["status"], "RUNNING", "{vm}");
    let machine = vm["provider_id"].as_str().expect("machine");
    assert_eq!(u.virsh(&["domstate", machine]), "running");
    // Its disk is in the user's own storage pool.
    let disk = u.virsh(&["vol-path", "--pool", "vmdesk", &format!("{machine}.qcow2")]);
    assert!(
        disk.starts_with(
            &u.home()
                .join(".local/share/libvirt/images/vmdesk")
                .display()
                .to_string()
        ),
        "{disk}"
    );
}

#[test]
fn a_session_vm_logs_its_serial_console_under_the_users_cache_dir() {
    let Some(u) = SessionUser::new() else { return };
    let Some(image) = u.tiny_linux() else {
        eprintln!("skipped: target/os/tiny-linux.qcow2 is missing (make os-image)");
        return;
    };
    add_session_host(&u);
    u.json(&["os", "import", "tiny-linux", image.to_str().expect("utf-8")]);
    let vm = u.json(&[
        "vm",
        "create",
        "linux",
        "--os",
        "tiny-linux",
        "--ram-mb",
        "128",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    assert_eq!(vm["status"], "RUNNING", "{vm}");
    let machine = vm["provider_id"].as_str().expect("machine");
    let log = u
        .home()
        .join(format!(".cache/libvirt/qemu/log/{machine}-serial.log"));
    let console = serial_until_shell(&log, Duration::from_secs(90));
    assert!(
        has_shell(&console),
        "no shell in {}: {console}",
        log.display()
    );
}

#[test]
fn a_session_vms_console_opens_through_the_bridge() {
    use std::io::{BufRead, BufReader};
    let Some(u) = SessionUser::new() else { return };
    add_session_host(&u);
    let vm = u.json(&[
        "vm",
        "create",
        "box",
        "--ram-mb",
        "64",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    assert_eq!(vm["status"], "RUNNING", "{vm}");
    let data = u.home().join("data");
    let mut child = u
        .command(
            &bin(),
            &[
                "--data-dir",
                data.to_str().expect("utf-8"),
                "--json",
                "console",
                "open",
                "box",
                "--origin",
                TEST_ORIGIN,
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("console open");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let _bridge = KillOnDrop(child);
    let mut text = String::new();
    let console = loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).expect("read") > 0,
            "no console: {text}"
        );
        text.push_str(&line);
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            break v;
        }
    };
    let url = console["url"].as_str().expect("url").to_owned();
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let ws = connect(&url, TEST_ORIGIN).await.expect("accepted");
            let mut rfb = Rfb::new(ws);
            let init = rfb.handshake().await;
            assert!(init.width > 0 && init.height > 0, "{init:?}");
            let mut ws = rfb.into_inner();
            let _ = ws.close(None).await;
        });
}
