//! Status sync against a real QEMU host.
#![allow(missing_docs)]

use vmdesk_tests::{virsh, Vmdesk};

#[test]
fn a_vm_destroyed_behind_vmdesks_back_ends_its_session_at_the_next_sync() {
    let v = Vmdesk::new();
    let (machine, _cleanup) = v.qemu_pool_vm("s1");
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

#[test]
fn with_events_a_destroyed_vm_ends_its_session_within_two_seconds() {
    let v = Vmdesk::new();
    let (machine, _cleanup) = v.qemu_pool_vm("e1");
    let s = v.json(&["session", "open", "--project", "lab"]);
    assert_eq!(s["status"], "ACTIVE");

    let mut watcher = v.watcher();
    assert!(
        watcher.0.try_wait().expect("watcher").is_none(),
        "the watcher exited"
    );

    let t = std::time::Instant::now();
    virsh(&["destroy", &machine]);
    let sid = s["id"].as_i64().expect("id");
    while t.elapsed() < std::time::Duration::from_secs(10)
        && v.count(&format!(
            "SELECT count(*) FROM sessions WHERE id = {sid} AND status = 'TERMINATED'"
        )) == 0
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let took = t.elapsed();
    assert_eq!(v.json(&["session", "list"])[0]["status"], "TERMINATED");
    assert!(
        took < std::time::Duration::from_secs(2),
        "seen after {took:?}"
    );
    eprintln!("drift seen through events after {took:?}");
    let e = &v.json(&["events", "--limit", "1"])[0];
    assert_eq!(
        (e["action"].as_str(), e["details"]["source"].as_str()),
        (Some("session.terminated"), Some("event"))
    );
}

#[test]
fn with_events_a_vm_stopped_and_started_at_once_keeps_its_session() {
    let v = Vmdesk::new();
    let (machine, _cleanup) = v.qemu_pool_vm("r1");
    let s = v.json(&["session", "open", "--project", "lab"]);
    assert_eq!(s["status"], "ACTIVE");
    let _watcher = v.watcher();

    // A reboot as the host sees it: the machine stops, then starts again
    // inside the grace (800 ms).
    virsh(&["destroy", &machine]);
    virsh(&["start", &machine]);
    std::thread::sleep(std::time::Duration::from_secs(3));

    assert_eq!(v.json(&["session", "list"])[0]["status"], "ACTIVE");
    assert_eq!(v.json(&["vm", "show", "r1"])["status"], "RUNNING");
    let sid = s["id"].as_i64().expect("id");
    assert_eq!(
        v.count(&format!(
            "SELECT count(*) FROM events WHERE session_id = {sid} AND action = 'session.terminated'"
        )),
        0
    );
}
