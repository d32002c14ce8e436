//! The set-up scripts on this machine: `scripts/libvirtd.sh` makes every
//! directory the daemons and vmdesk's domains use, and refuses a state
//! directory that is not root's own. The refusals run with a state directory
//! of their own (`VMDESK_LIBVIRT_STATE`) and never touch the running daemon.
#![allow(missing_docs)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The user that owns the state directory in the refusal tests.
const INTRUDER: &str = "vmdesk-intruder";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/libvirtd.sh")
}

fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `scripts/libvirtd.sh start` with this state directory.
fn start_with_state(state: &Path) -> Output {
    Command::new("bash")
        .arg(script())
        .arg("start")
        .env("VMDESK_LIBVIRT_STATE", state)
        .output()
        .expect("run scripts/libvirtd.sh")
}

/// The uid of the throw-away user, made if missing.
fn intruder_uid() -> u32 {
    let id = || {
        Command::new("id")
            .args(["-u", INTRUDER])
            .output()
            .expect("id")
    };
    let mut out = id();
    if !out.status.success() {
        let made = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                INTRUDER,
            ])
            .status()
            .expect("useradd");
        out = id();
        assert!(made.success() || out.status.success(), "useradd {INTRUDER}");
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a uid")
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn assert_refused(out: &Output, why: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {err}");
    assert!(
        err.contains("refusing the state directory") && err.contains(why),
        "{err}"
    );
}

#[test]
fn a_state_dir_another_user_owns_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root (the script starts system daemons)");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::os::unix::fs::chown(&state, Some(intruder_uid()), None).expect("chown");

    let out = start_with_state(&state);

    assert_refused(&out, "not root");
    assert_eq!(entries(&state), 0, "the script wrote into it");
}

#[test]
fn a_symlinked_state_dir_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let target = tmp.path().join("elsewhere");
    std::fs::create_dir(&target).expect("mkdir");
    let state = tmp.path().join("state");
    std::os::unix::fs::symlink(&target, &state).expect("symlink");

    let out = start_with_state(&state);

    assert_refused(&out, "symlink");
    assert_eq!(entries(&target), 0, "the script wrote through the link");
}

#[test]
fn a_state_dir_others_can_write_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");

    let out = start_with_state(&state);

    assert_refused(&out, "writable by group or others");
    assert_eq!(entries(&state), 0, "the script wrote into it");
}

#[test]
fn the_default_state_dir_is_root_owned_and_private() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let out = Command::new("bash")
        .arg(script())
        .arg("start")
        .env_remove("VMDESK_LIBVIRT_STATE")
        .output()
        .expect("run scripts/libvirtd.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let meta = std::fs::symlink_metadata("/run/vmdesk-libvirt").expect("/run/vmdesk-libvirt");
    assert!(meta.is_dir());
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.mode() & 0o077, 0, "mode {:o}", meta.mode());
}

#[test]
fn start_makes_every_directory_the_daemons_and_domains_use() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let out = Command::new("bash")
        .arg(script())
        .arg("start")
        .env_remove("VMDESK_LIBVIRT_STATE")
        .output()
        .expect("run scripts/libvirtd.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A domain's serial log (crates/libvirt: SYSTEM_LOG_DIR), the storage
    // pool's parent (/var/lib/libvirt/images/vmdesk), and the QEMU driver's
    // state, cache and run directories.
    for dir in [
        "/var/log/libvirt/qemu",
        "/var/lib/libvirt/images",
        "/var/lib/libvirt/qemu",
        "/var/cache/libvirt/qemu",
        "/run/libvirt",
    ] {
        assert!(Path::new(dir).is_dir(), "{dir} is missing");
    }
}
