//! Sessions on a real libvirt daemon running real (tiny, diskless) QEMU VMs.
#![allow(missing_docs)]

use vmdesk_tests::{qemu_uri, virsh, Machine, Vmdesk};

#[test]
fn a_sessions_vm_runs_on_qemu_while_active_and_is_off_after_close() {
    let v = Vmdesk::new();
    let (machine, _cleanup) = v.qemu_pool_vm("tiny");
    assert_eq!(virsh(&["domstate", &machine]), "shut off");

    let s = v.json(&["session", "open", "--project", "lab"]);
    assert_eq!(s["status"], "ACTIVE");
    assert_eq!(virsh(&["domstate", &machine]), "running");
    assert_eq!(v.json(&["vm", "show", "tiny"])["status"], "RUNNING");

    // The guest has no OS to honour ACPI: it is forced off after the timeout.
    let id = s["id"].to_string();
    let closed = v.json(&["--shutdown-timeout", "1", "session", "close", &id]);
    assert_eq!(closed["status"], "COMPLETED");
    assert_eq!(virsh(&["domstate", &machine]), "shut off");
    let shown = v.json(&["vm", "show", "tiny"]);
    assert_eq!(shown["status"], "STOPPED");
    assert!(shown["session_id"].is_null());
}

#[test]
fn the_domain_xml_carries_the_vmdesk_marker_and_safe_values() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "qemu", "--uri", &qemu_uri()]);
    v.json(&["project", "create", "lab"]);
    let vm = v.json(&[
        "vm",
        "add",
        "marked",
        "--pool",
        "lab",
        "--host",
        "qemu",
        "--ram-mb",
        "96",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    let machine = vm["provider_id"].as_str().expect("machine name").to_owned();
    let _cleanup = Machine(machine.clone());
    let xml = virsh(&["dumpxml", &machine]);
    assert!(xml.contains("urn:vmdesk:machine:1"), "{xml}");
    assert!(xml.contains(&format!("id=\"{}\"", vm["id"])), "{xml}");
    assert!(xml.contains("<memory unit='KiB'>98304</memory>"), "{xml}");
    assert!(xml.contains("<listen type='socket'/>"), "{xml}");
    assert!(!xml.contains("127.0.0.1"), "{xml}");
}
