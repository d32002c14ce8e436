//! Status sync rules of the seed, on the in-memory host.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use vmdesk_core::provider::Provider;
use vmdesk_core::{SessionRequest, SessionStatus, VmStatus};

fn req() -> SessionRequest {
    SessionRequest {
        project: "p".into(),
        ..Default::default()
    }
}

fn machine(core: &vmdesk_core::Core, vm: &str) -> String {
    core.vm_show("admin", vm).unwrap().provider_id.unwrap()
}

#[test]
fn a_vm_stopped_under_an_active_session_terminates_it() {
    let (_dir, hosts, core) = with_pool(1);
    let s = core.session_open("admin", &req(), true).unwrap();
    hosts.0.force_off(&machine(&core, "vm0")).unwrap();
    let changes = core.sync_once("poll").unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].terminated_session, Some(s.id));
    assert_eq!(
        core.session_list("admin", false).unwrap()[0].status,
        SessionStatus::Terminated
    );
    let vm = core.vm_show("admin", "vm0").unwrap();
    assert_eq!((vm.status, vm.session_id), (VmStatus::Stopped, None));
    let e = core.events("admin", 1).unwrap().remove(0);
    assert_eq!(
        (e.action.as_str(), e.details["source"].as_str()),
        ("session.terminated", Some("poll"))
    );
}

#[test]
fn a_vm_found_running_while_the_database_says_stopped_becomes_running() {
    let (_dir, hosts, core) = with_pool(1);
    hosts.0.start(&machine(&core, "vm0")).unwrap();
    let changes = core.sync_once("poll").unwrap();
    assert_eq!(
        (changes[0].was, changes[0].now),
        (VmStatus::Stopped, VmStatus::Running)
    );
    assert_eq!(
        core.vm_show("admin", "vm0").unwrap().status,
        VmStatus::Running
    );
    // And nothing more the second time, but the time of the sync is kept.
    assert!(core.sync_once("poll").unwrap().is_empty());
    let vm = core.vm_show("admin", "vm0").unwrap();
    assert!(vm.synced_at.is_some());
    assert_eq!(vm.synced_by.as_deref(), Some("poll"));
}

#[test]
fn a_reboot_seen_between_stop_and_start_does_not_end_the_session() {
    let (_dir, hosts, core) = with_pool(1);
    core.session_open("admin", &req(), true).unwrap();
    let m = machine(&core, "vm0");
    hosts.0.force_off(&m).unwrap();
    let host = hosts.0.clone();
    let rebooter = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        host.start(&m).unwrap();
    });
    assert!(core.sync_once("poll").unwrap().is_empty());
    rebooter.join().unwrap();
    assert_eq!(
        core.session_list("admin", false).unwrap()[0].status,
        SessionStatus::Active
    );
}

#[test]
fn an_unreachable_host_makes_vms_unknown_and_ends_no_session() {
    let (_dir, hosts, core) = with_pool(2);
    core.session_open("admin", &req(), true).unwrap();
    *hosts.0.unreachable.lock().unwrap() = true;
    let changes = core.sync_once("poll").unwrap();
    assert!(changes
        .iter()
        .all(|c| c.now == VmStatus::Unknown && c.terminated_session.is_none()));
    assert_eq!(
        core.session_list("admin", false).unwrap()[0].status,
        SessionStatus::Active
    );
    *hosts.0.unreachable.lock().unwrap() = false;
    core.sync_once("poll").unwrap();
    assert_eq!(
        core.vm_show("admin", "vm0").unwrap().status,
        VmStatus::Running
    );
    assert_eq!(
        core.vm_show("admin", "vm1").unwrap().status,
        VmStatus::Stopped
    );
}

#[test]
fn a_vm_the_host_no_longer_knows_is_marked_unknown_and_reported() {
    let (_dir, hosts, core) = with_pool(1);
    hosts.0.undefine(&machine(&core, "vm0")).unwrap();
    core.sync_once("poll").unwrap();
    let vm = core.vm_show("admin", "vm0").unwrap();
    assert_eq!(vm.status, VmStatus::Unknown, "kept, not deleted");
    let e = core.events("admin", 1).unwrap().remove(0);
    assert_eq!(e.details["reason"], "the host no longer knows this VM");
}

#[test]
fn rows_in_a_transition_are_left_alone() {
    let (dir, hosts, core) = with_pool(1);
    let s = core.session_open("admin", &req(), false).unwrap();
    db(dir.path())
        .execute(
            "UPDATE sessions SET status = 'STARTING' WHERE id = ?1",
            [s.id],
        )
        .unwrap();
    hosts.0.start(&machine(&core, "vm0")).unwrap();
    assert!(core.sync_once("poll").unwrap().is_empty());
    assert_eq!(
        core.vm_show("admin", "vm0").unwrap().status,
        VmStatus::Stopped
    );
}

#[test]
fn a_pass_bills_the_running_time_it_reconciled() {
    let (dir, _hosts, core) = with_pool(1);
    core.user_add("admin", "bob", false, 50).unwrap();
    core.session_open("bob", &req(), true).unwrap();
    db(dir.path())
        .execute(
            "UPDATE vms SET started_at = ?1",
            [(chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339()],
        )
        .unwrap();
    core.sync_and_bill(false, "poll").unwrap();
    assert_eq!(
        count(
            dir.path(),
            "SELECT count(*) FROM ledger WHERE kind = 'runtime'"
        ),
        1
    );
}
