//! The status-sync watcher survives a restart of the libvirt daemon: it
//! reconnects, re-reads the state, and sees what changed while it was away.
#![allow(missing_docs)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmdesk_tests::{virsh, KillOnDrop, Vmdesk};

fn libvirtd(action: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/libvirtd.sh");
    let ok = Command::new("bash")
        .arg(script)
        .arg(action)
        .stdout(Stdio::null())
        .status()
        .expect("run scripts/libvirtd.sh");
    assert!(ok.success(), "libvirtd {action} failed");
}

/// Starts the daemon again whatever happens to the test.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        libvirtd("start");
    }
}

#[test]
fn after_a_daemon_restart_the_watcher_reconnects_and_the_state_is_right() {
    let v = Vmdesk::new();
    let (machine, _cleanup) = v.qemu_pool_vm("r1");
    let s = v.json(&["session", "open", "--project", "lab"]);
    let sid = s["id"].as_i64().expect("id");
    let _watcher = KillOnDrop(
        v.command(&["sync", "--watch"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("watcher"),
    );
    std::thread::sleep(Duration::from_millis(1500));

    // The daemon goes away; while it is away, the VM's QEMU dies.
    let pid =
        std::fs::read_to_string(format!("/run/libvirt/qemu/{machine}.pid")).expect("QEMU pid file");
    let _restart = Restart;
    // Only the daemon: virtlogd (and the QEMUs it logs for) stay up.
    Command::new("pkill")
        .args(["-u", "0", "-x", "libvirtd"])
        .status()
        .expect("stop libvirtd");
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .expect("kill QEMU");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        v.json(&["session", "list"])[0]["status"],
        "ACTIVE",
        "nothing could be known while the daemon was away"
    );
    libvirtd("start");

    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20)
        && v.count(&format!(
            "SELECT count(*) FROM sessions WHERE id = {sid} AND status = 'TERMINATED'"
        )) == 0
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        v.json(&["session", "list"])[0]["status"],
        "TERMINATED",
        "not seen after the reconnection"
    );
    assert_eq!(v.json(&["vm", "show", "r1"])["status"], "STOPPED");
    assert_eq!(virsh(&["domstate", &machine]), "shut off");
}
