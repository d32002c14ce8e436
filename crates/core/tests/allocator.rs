//! Allocation of pool VMs to sessions, on a real SQLite file.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use vmdesk_core::provider::PowerState;
use vmdesk_core::{Error, SessionRequest, SessionStatus, VmStatus};

fn req(project: &str) -> SessionRequest {
    SessionRequest {
        project: project.into(),
        ..Default::default()
    }
}

#[test]
fn open_with_wait_starts_the_vm_and_makes_the_session_active() {
    let (_dir, hosts, core) = with_pool(1);
    let s = core.session_open("admin", &req("p"), true).unwrap();
    assert_eq!(s.status, SessionStatus::Active);
    let vm = core.vm_show("admin", "vm0").unwrap();
    assert_eq!(vm.status, VmStatus::Running);
    assert_eq!(vm.session_id, Some(s.id));
    assert_eq!(
        hosts.0.state(vm.provider_id.as_deref().unwrap()),
        Some(PowerState::Running)
    );
}

#[test]
fn open_without_wait_returns_requested_and_touches_no_host() {
    let (_dir, hosts, core) = with_pool(1);
    let s = core.session_open("admin", &req("p"), false).unwrap();
    assert_eq!(s.status, SessionStatus::Requested);
    let vm = core.vm_show("admin", "vm0").unwrap();
    assert_eq!(
        hosts.0.state(vm.provider_id.as_deref().unwrap()),
        Some(PowerState::Stopped)
    );
}

#[test]
fn a_pending_session_is_driven_to_active_by_a_worker() {
    let (_dir, _hosts, core) = with_pool(1);
    let s = core.session_open("admin", &req("p"), false).unwrap();
    assert_eq!(core.drive_pending().unwrap(), 1);
    let s = core
        .session_list("admin", false)
        .unwrap()
        .into_iter()
        .find(|x| x.id == s.id)
        .unwrap();
    assert_eq!(s.status, SessionStatus::Active);
}

#[test]
fn a_vm_in_a_live_session_is_not_allocated_again() {
    let (_dir, _hosts, core) = with_pool(2);
    let a = core.session_open("admin", &req("p"), false).unwrap();
    let b = core.session_open("admin", &req("p"), false).unwrap();
    assert_ne!(a.vm_id, b.vm_id);
    let err = core.session_open("admin", &req("p"), false).unwrap_err();
    assert!(matches!(err, Error::AllInUse { total: 2, .. }), "{err}");
    assert_eq!(err.to_string(), "all 2 VMs of project \"p\" are in use");
}

#[test]
fn the_least_recently_stopped_vm_goes_first() {
    let (_dir, _hosts, core) = with_pool(3);
    // vm0 and vm1 are used and closed in that order; vm2 has never been stopped.
    for _ in 0..2 {
        let s = core.session_open("admin", &req("p"), true).unwrap();
        core.session_close("admin", s.id, true).unwrap();
    }
    let first = core.session_open("admin", &req("p"), false).unwrap();
    assert_eq!(first.vm_name, "vm2", "never stopped goes first");
    let second = core.session_open("admin", &req("p"), false).unwrap();
    assert_eq!(second.vm_name, "vm0", "then the one stopped longest ago");
}

#[test]
fn a_type_is_honoured_and_a_missing_type_is_named() {
    let (_dir, _hosts, core) = with_pool(1);
    core.vm_add("admin", &vm("gpu0", "gpu")).unwrap();
    let s = core
        .session_open(
            "admin",
            &SessionRequest {
                project: "p".into(),
                vm_type: Some("gpu".into()),
                ..Default::default()
            },
            false,
        )
        .unwrap();
    assert_eq!(s.vm_name, "gpu0");
    let err = core
        .session_open(
            "admin",
            &SessionRequest {
                project: "p".into(),
                vm_type: Some("tpu".into()),
                ..Default::default()
            },
            false,
        )
        .unwrap_err();
    assert_eq!(err.code(), "no_vm_of_type");
    assert_eq!(err.to_string(), "project \"p\" has no VM of type \"tpu\"");
}

#[test]
fn an_empty_pool_and_an_unknown_project_are_named() {
    let (_dir, _hosts, core) = with_pool(0);
    assert_eq!(
        core.session_open("admin", &req("p"), false)
            .unwrap_err()
            .code(),
        "pool_empty"
    );
    assert_eq!(
        core.session_open("admin", &req("nope"), false)
            .unwrap_err()
            .code(),
        "unknown_project"
    );
}

#[test]
fn workspaces_of_one_project_share_its_pool_exclusively() {
    let (_dir, _hosts, core) = with_pool(1);
    core.workspace_create("admin", "team-a", "p").unwrap();
    core.workspace_create("admin", "team-b", "p").unwrap();
    let a = SessionRequest {
        project: "p".into(),
        workspace: Some("team-a".into()),
        vm_type: None,
    };
    let b = SessionRequest {
        project: "p".into(),
        workspace: Some("team-b".into()),
        vm_type: None,
    };
    let s = core.session_open("admin", &a, false).unwrap();
    assert_eq!(s.workspace.as_deref(), Some("team-a"));
    assert_eq!(
        core.session_open("admin", &b, false).unwrap_err().code(),
        "all_in_use"
    );
}

#[test]
fn closing_shuts_the_vm_down_and_frees_it() {
    let (_dir, hosts, core) = with_pool(1);
    let s = core.session_open("admin", &req("p"), true).unwrap();
    let closed = core.session_close("admin", s.id, true).unwrap();
    assert_eq!(closed.status, SessionStatus::Completed);
    let vm = core.vm_show("admin", "vm0").unwrap();
    assert_eq!(vm.status, VmStatus::Stopped);
    assert_eq!(vm.session_id, None);
    assert!(vm.last_stopped.is_some());
    assert_eq!(
        hosts.0.state(vm.provider_id.as_deref().unwrap()),
        Some(PowerState::Stopped)
    );
    // Free again.
    assert_eq!(
        core.session_open("admin", &req("p"), false).unwrap().vm_id,
        s.vm_id
    );
}

#[test]
fn a_guest_that_ignores_shutdown_is_forced_off_after_the_timeout() {
    let (_dir, hosts, core) = with_pool(1);
    *hosts.0.ignore_shutdown.lock().unwrap() = true;
    let s = core.session_open("admin", &req("p"), true).unwrap();
    let closed = core.session_close("admin", s.id, true).unwrap();
    assert_eq!(closed.status, SessionStatus::Completed);
    let vm = core.vm_show("admin", "vm0").unwrap();
    assert_eq!(
        hosts.0.state(vm.provider_id.as_deref().unwrap()),
        Some(PowerState::Stopped)
    );
    let ended = core.events("admin", 1).unwrap().remove(0);
    assert_eq!(ended.action, "session.ended");
    assert_eq!(ended.details["forced_off"], true);
}

#[test]
fn a_start_the_host_refuses_fails_the_session_and_frees_the_vm() {
    let (_dir, hosts, core) = with_pool(1);
    *hosts.0.refuse_start.lock().unwrap() = true;
    let err = core.session_open("admin", &req("p"), true).unwrap_err();
    assert_eq!(err.code(), "provider");
    assert!(
        err.one_line().contains("no room for this VM"),
        "{}",
        err.one_line()
    );
    let s = core.session_list("admin", false).unwrap().remove(0);
    assert_eq!(s.status, SessionStatus::Failed);
    assert!(s.error.unwrap().contains("no room"));
    *hosts.0.refuse_start.lock().unwrap() = false;
    assert_eq!(
        core.session_open("admin", &req("p"), true).unwrap().status,
        SessionStatus::Active
    );
}

#[test]
fn a_user_cannot_close_another_users_session() {
    let (dir, _hosts, core) = with_pool(1);
    core.user_add("admin", "alice", false, 0).unwrap();
    core.user_add("admin", "bob", false, 0).unwrap();
    let s = core.session_open("alice", &req("p"), false).unwrap();
    let err = core.session_close("bob", s.id, false).unwrap_err();
    assert_eq!(err.code(), "forbidden");
    assert_eq!(
        count(
            dir.path(),
            "SELECT count(*) FROM sessions WHERE status = 'REQUESTED'"
        ),
        1
    );
}

#[test]
fn a_requested_session_closed_before_it_starts_is_cancelled() {
    let (_dir, _hosts, core) = with_pool(1);
    let s = core.session_open("admin", &req("p"), false).unwrap();
    assert_eq!(
        core.session_close("admin", s.id, true).unwrap().status,
        SessionStatus::Completed
    );
    assert_eq!(core.vm_show("admin", "vm0").unwrap().session_id, None);
}

#[test]
fn the_database_refuses_a_second_live_session_on_one_vm() {
    let (dir, _hosts, core) = with_pool(1);
    let s = core.session_open("admin", &req("p"), false).unwrap();
    // Even a writer that bypasses the allocator cannot break the rule.
    let err = db(dir.path())
        .execute(
            "INSERT INTO sessions (vm_id, user_id, project_id, status, created_at, updated_at)
             SELECT vm_id, user_id, project_id, 'ACTIVE', 'now', 'now' FROM sessions WHERE id = ?1",
            [s.id],
        )
        .unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
}

#[test]
fn concurrent_requesters_in_separate_connections_never_share_a_vm() {
    let (dir, hosts, core) = with_pool(20);
    drop(core);
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..60)
            .map(|_| {
                let (dir, hosts) = (dir.path(), hosts.clone());
                scope.spawn(move || open(dir, &hosts).session_open("admin", &req("p"), false))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 20);
    let mut vms: Vec<i64> = ok.iter().map(|s| s.vm_id).collect();
    vms.sort_unstable();
    vms.dedup();
    assert_eq!(vms.len(), 20, "a VM was allocated twice");
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(e.code(), "all_in_use", "{e}");
    }
}

#[test]
fn concurrent_requesters_sharing_one_core_are_batched_without_sharing_a_vm() {
    let (dir, _hosts, core) = with_pool(20);
    // 60 threads of one process: refused requests share batches with granted ones.
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..60)
            .map(|_| scope.spawn(|| core.session_open("admin", &req("p"), false)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut vms: Vec<i64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|s| s.vm_id)
        .collect();
    assert_eq!(vms.len(), 20);
    vms.sort_unstable();
    vms.dedup();
    assert_eq!(vms.len(), 20, "a VM was allocated twice");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| e.code() == "all_in_use"));
    // A refused request left nothing behind: 20 sessions, 20 open events.
    assert_eq!(count(dir.path(), "SELECT count(*) FROM sessions"), 20);
    assert_eq!(
        count(
            dir.path(),
            "SELECT count(*) FROM events WHERE action = 'session.open'"
        ),
        20
    );
}
