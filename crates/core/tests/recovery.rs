//! Settling work a crashed worker left, on a real SQLite file.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use vmdesk_core::provider::{PowerState, Provider};
use vmdesk_core::{SessionRequest, SessionStatus, VmStatus};

const DEAD: &str = "4242-deadbeef";

fn req() -> SessionRequest {
    SessionRequest {
        project: "p".into(),
        ..Default::default()
    }
}

#[test]
fn a_starting_session_of_a_dead_worker_with_its_vm_off_becomes_failed() {
    let (dir, hosts, core) = with_pool(1);
    let s = core.session_open("admin", &req(), false).unwrap();
    db(dir.path())
        .execute(
            "UPDATE sessions SET status = 'STARTING', worker = ?1 WHERE id = ?2",
            rusqlite::params![DEAD, s.id],
        )
        .unwrap();
    drop(core);
    let core = open(dir.path(), &hosts);
    let s = core.session_list("admin", false).unwrap().remove(0);
    assert_eq!(s.status, SessionStatus::Failed);
    assert_eq!(core.vm_show("admin", "vm0").unwrap().session_id, None);
    let e = core.events("admin", 1).unwrap().remove(0);
    assert_eq!(e.action, "recovery.session");
    assert_eq!(e.details["was"], "STARTING");
    assert_eq!(e.details["now"], "FAILED");
}

#[test]
fn a_starting_session_of_a_dead_worker_with_its_vm_running_becomes_active() {
    let (dir, hosts, core) = with_pool(1);
    let s = core.session_open("admin", &req(), false).unwrap();
    let machine = core.vm_show("admin", "vm0").unwrap().provider_id.unwrap();
    hosts.0.start(&machine).unwrap();
    db(dir.path())
        .execute(
            "UPDATE sessions SET status = 'STARTING', worker = ?1 WHERE id = ?2",
            rusqlite::params![DEAD, s.id],
        )
        .unwrap();
    drop(core);
    let core = open(dir.path(), &hosts);
    assert_eq!(
        core.session_list("admin", false).unwrap()[0].status,
        SessionStatus::Active
    );
    assert_eq!(
        core.vm_show("admin", "vm0").unwrap().status,
        VmStatus::Running
    );
}

#[test]
fn a_terminating_session_of_a_dead_worker_is_finished() {
    let (dir, hosts, core) = with_pool(1);
    let s = core.session_open("admin", &req(), true).unwrap();
    db(dir.path())
        .execute(
            "UPDATE sessions SET status = 'TERMINATING', worker = ?1 WHERE id = ?2",
            rusqlite::params![DEAD, s.id],
        )
        .unwrap();
    drop(core);
    let core = open(dir.path(), &hosts);
    assert_eq!(
        core.session_list("admin", false).unwrap()[0].status,
        SessionStatus::Completed
    );
    let machine = core.vm_show("admin", "vm0").unwrap().provider_id.unwrap();
    assert_eq!(hosts.0.state(&machine), Some(PowerState::Stopped));
}

#[test]
fn a_vm_left_creating_by_a_dead_worker_becomes_failed_to_start() {
    let (dir, hosts, core) = with_pool(1);
    db(dir.path())
        .execute("UPDATE vms SET status = 'CREATING', worker = ?1", [DEAD])
        .unwrap();
    drop(core);
    let core = open(dir.path(), &hosts);
    assert_eq!(
        core.vm_show("admin", "vm0").unwrap().status,
        VmStatus::FailedToStart
    );
    assert_eq!(core.events("admin", 1).unwrap()[0].action, "recovery.vm");
}

#[test]
fn pending_work_of_a_live_worker_is_left_alone() {
    let (dir, hosts, core) = with_pool(1);
    // `core` registers as a worker when it drives; it stays alive below.
    let s = core.session_open("admin", &req(), false).unwrap();
    assert_eq!(core.drive_pending().unwrap(), 1);
    let live_worker = std::fs::read_dir(dir.path().join("workers"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let id = live_worker
        .file_name()
        .to_string_lossy()
        .trim_end_matches(".lock")
        .to_owned();
    db(dir.path())
        .execute(
            "UPDATE sessions SET status = 'STARTING', worker = ?1 WHERE id = ?2",
            rusqlite::params![id, s.id],
        )
        .unwrap();
    let other = open(dir.path(), &hosts);
    assert_eq!(
        other.session_list("admin", false).unwrap()[0].status,
        SessionStatus::Starting
    );
    drop(core);
}

#[test]
fn a_pending_request_without_a_worker_is_not_mistaken_for_a_crash() {
    let (dir, hosts, core) = with_pool(1);
    core.session_open("admin", &req(), false).unwrap();
    drop(core);
    let core = open(dir.path(), &hosts);
    assert_eq!(
        core.session_list("admin", false).unwrap()[0].status,
        SessionStatus::Requested
    );
}

#[test]
fn a_creation_whose_worker_lock_cannot_be_checked_is_left_alone() {
    let (dir, hosts, core) = with_pool(1);
    db(dir.path())
        .execute(
            "UPDATE vms SET status = 'CREATING', worker = '77-unreadable' WHERE name = 'vm0'",
            [],
        )
        .unwrap();
    // The lock file cannot be opened (a directory stands in its place, which
    // fails even for root, as an unreadable file would for a user).
    std::fs::create_dir_all(dir.path().join("workers/77-unreadable.lock")).unwrap();
    drop(core);
    let core = open(dir.path(), &hosts);
    assert_eq!(
        core.vm_show("admin", "vm0").unwrap().status,
        VmStatus::Creating,
        "a worker not known to be dead is not settled"
    );
    assert_eq!(
        count(
            dir.path(),
            "SELECT count(*) FROM events WHERE action LIKE 'recovery.%'"
        ),
        0
    );
}
