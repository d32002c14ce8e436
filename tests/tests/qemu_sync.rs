//! Status sync against a real QEMU host.
#![allow(missing_docs)]

use vmdesk_tests::{qemu_uri, virsh, Machine, Vmdesk};

#[test]
fn a_vm_destroyed_behind_vmdesks_back_ends_its_session_at_the_next_sync() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "qemu", "--uri", &qemu_uri()]);
    v.json(&["project", "create", "lab"]);
    let vm = v.json(&[
        "vm",
        "add",
        "s1",
        "--pool",
        "lab",
        "--host",
        "qemu",
        "--ram-mb",
        "64",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    let machine = vm["provider_id"].as_str().expect("machine").to_owned();
    let _cleanup = Machine(machine.clone());
    let s = v.json(&["session", "open", "--project", "lab"]);
    assert_eq!(s["status"], "ACTIVE");
    assert_eq!(
        v.json(&["sync", "--once"]).as_array().map(Vec::len),
        Some(0),
        "in sync already"
    );

    virsh(&["destroy", &machine]);
    let changes = v.json(&["sync", "--once"]);
    assert_eq!(changes[0]["now"], "STOPPED");
    assert_eq!(changes[0]["terminated_session"], s["id"]);
    assert_eq!(v.json(&["session", "list"])[0]["status"], "TERMINATED");
    assert_eq!(v.json(&["vm", "show", "s1"])["status"], "STOPPED");

    // Started behind vmdesk's back: found running.
    virsh(&["start", &machine]);
    let changes = v.json(&["sync", "--once"]);
    assert_eq!(
        (changes[0]["was"].as_str(), changes[0]["now"].as_str()),
        (Some("STOPPED"), Some("RUNNING"))
    );
}
