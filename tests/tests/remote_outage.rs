//! A remote host that hangs or loses its daemons: its VMs become UNKNOWN,
//! the local host stays responsive, and once it is back it is reconnected
//! and reconciled. (A test binary of its own: it freezes and kills the
//! shared remote host's daemons, which other remote tests must not see.)
#![allow(missing_docs)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmdesk_tests::remote::{script, wait_for, Remote};
use vmdesk_tests::{virsh, Machine, Vmdesk};

/// Brings the remote host back whatever happens to the test.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        script("thaw");
        script("start");
    }
}

fn status(v: &Vmdesk, vm: &str) -> Value {
    v.json(&["vm", "show", vm])["status"].clone()
}

fn create(v: &Vmdesk, name: &str, host: &str) -> String {
    let vm = v.json(&[
        "vm",
        "create",
        name,
        "--os",
        "tiny-linux",
        "--ram-mb",
        "128",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
        "--host",
        host,
    ]);
    assert_eq!(vm["status"], "RUNNING", "{vm}");
    vm["provider_id"].as_str().expect("machine").to_owned()
}

#[test]
fn a_hung_or_dead_remote_host_degrades_to_unknown_without_stalling_the_local_one() {
    let Some(remote) = Remote::get() else { return };
    let v = remote.desk();
    let near = create(&v, "near", "local");
    let _near = Machine(near.clone());
    let far = create(&v, "far", "remote");
    let _far = remote.machine(&far);
    let _watcher = v.watcher();
    let _restore = Restore;

    // 1. The remote host hangs: TCP still answers, nothing else does.
    script("freeze");
    let took = wait_for("far UNKNOWN", Duration::from_secs(40), || {
        status(&v, "far") == "UNKNOWN"
    });
    eprintln!("far UNKNOWN {took:?} after the remote host froze");
    // The local host is unaffected: a VM stopped behind vmdesk's back there
    // is seen, and an action on it is as quick as ever.
    virsh(&["destroy", &near]);
    let took = wait_for(
        "near STOPPED while remote hangs",
        Duration::from_secs(20),
        || status(&v, "near") == "STOPPED",
    );
    eprintln!("near STOPPED {took:?} after its destroy, with the remote host hung");
    let t = Instant::now();
    v.json(&["vm", "start", "near"]);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "starting a local VM took {:?} while the remote host hangs",
        t.elapsed()
    );
    // A creation without a host goes where it can: the hung host is passed
    // over (after its connect timeout), and nothing is charged for it twice.
    let placed = v.json(&[
        "vm",
        "create",
        "placed",
        "--os",
        "tiny-linux",
        "--ram-mb",
        "128",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    let _placed = Machine(placed["provider_id"].as_str().expect("machine").to_owned());
    assert_eq!(placed["host"], "local", "{placed}");
    assert_eq!(status(&v, "far"), "UNKNOWN");
    let hosts = v.json(&["host", "list"]);
    let row = hosts
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["name"] == "remote")
        .expect("remote")
        .clone();
    assert_eq!(row["reachable"], false, "{row}");

    // Back: reconnected, and far is RUNNING again.
    script("thaw");
    let took = wait_for(
        "far RUNNING after the thaw",
        Duration::from_secs(40),
        || status(&v, "far") == "RUNNING",
    );
    eprintln!("far RUNNING {took:?} after the remote host thawed");

    // 2. Its daemons die (sshd and libvirtd; the VM's QEMU stays), and
    // while they are away the VM's QEMU dies too.
    script("kill-daemons");
    wait_for(
        "far UNKNOWN with the daemons dead",
        Duration::from_secs(40),
        || status(&v, "far") == "UNKNOWN",
    );
    let killed = Command::new("pkill")
        .args(["-9", "-u", "vmdesk-remote", "-f", &format!("guest={far}")])
        .status()
        .expect("pkill");
    assert!(killed.success(), "far's QEMU was running");
    assert_eq!(
        status(&v, "far"),
        "UNKNOWN",
        "nothing is known while it is away"
    );
    script("start");
    let took = wait_for("far STOPPED, reconciled", Duration::from_secs(40), || {
        status(&v, "far") == "STOPPED"
    });
    eprintln!("far STOPPED {took:?} after the daemons came back");
    assert_eq!(status(&v, "near"), "RUNNING");
}
