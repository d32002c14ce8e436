//! A user's own VMs: creation for credits, actions, metadata.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::sync::Mutex;

use common::*;
use vmdesk_core::provider::{PowerState, Provider};
use vmdesk_core::{Progress, SessionRequest, VmAction, VmCreate, VmStatus};

fn spec(name: &str) -> VmCreate {
    VmCreate {
        name: name.into(),
        ram_mb: 1024,
        disk_gb: 20,
        cpu_cores: 2,
        os_type: "blank".into(),
        host: None,
        start: true,
    }
}

fn with_user(credits: i64) -> (tempfile::TempDir, MemoryFactory, vmdesk_core::Core) {
    let (dir, hosts, core) = with_pool(0);
    core.user_add("admin", "ann", false, credits).unwrap();
    (dir, hosts, core)
}

#[test]
fn create_charges_the_quote_once_and_runs_the_vm() {
    let (_dir, hosts, core) = with_user(100);
    let vm = core.vm_create("ann", &spec("w1"), true, None).unwrap();
    assert_eq!(vm.status, VmStatus::Running);
    assert_eq!(vm.owner.as_deref(), Some("ann"));
    assert!(hosts
        .0
        .disks
        .lock()
        .unwrap()
        .contains(vm.provider_id.as_deref().unwrap()));
    assert_eq!(
        hosts.0.state(vm.provider_id.as_deref().unwrap()),
        Some(PowerState::Running)
    );
    let credits = core.credits_show("ann", None).unwrap();
    assert_eq!(credits.balance, 100 - 34);
    assert_eq!(
        credits.entries.iter().filter(|e| e.amount == -34).count(),
        1
    );
    assert_eq!(vm.metadata["cost"], 34);
    assert!(
        vm.uptime_seconds.is_some_and(|s| (0..5).contains(&s)),
        "{:?}",
        vm.uptime_seconds
    );
}

#[test]
fn create_without_enough_credits_states_cost_and_balance_and_creates_nothing() {
    let (dir, _hosts, core) = with_user(20);
    let err = core.vm_create("ann", &spec("w1"), true, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not enough credits: the cost is 34 but the balance of \"ann\" is 20"
    );
    assert_eq!(count(dir.path(), "SELECT count(*) FROM vms"), 0);
    assert_eq!(core.credits_show("ann", None).unwrap().balance, 20);
}

#[test]
fn create_with_no_start_leaves_the_vm_stopped() {
    let (_dir, hosts, core) = with_user(100);
    let vm = core
        .vm_create(
            "ann",
            &VmCreate {
                start: false,
                ..spec("w1")
            },
            true,
            None,
        )
        .unwrap();
    assert_eq!(vm.status, VmStatus::Stopped);
    assert_eq!(
        hosts.0.state(vm.provider_id.as_deref().unwrap()),
        Some(PowerState::Stopped)
    );
}

#[test]
fn a_refused_provisioning_fails_the_vm_without_refund_and_says_why() {
    let (_dir, hosts, core) = with_user(100);
    *hosts.0.refuse_start.lock().unwrap() = true;
    let err = core.vm_create("ann", &spec("w1"), true, None).unwrap_err();
    assert!(
        err.one_line().contains("no room for this VM"),
        "{}",
        err.one_line()
    );
    assert_eq!(
        core.vm_show("ann", "w1").unwrap().status,
        VmStatus::FailedToStart
    );
    assert_eq!(core.credits_show("ann", None).unwrap().balance, 66);
    let e = core.events("admin", 1).unwrap().remove(0);
    assert_eq!(e.action, "vm.create_failed");
    assert_eq!(e.details["refunded"], false);
    assert!(e.details["reason"].as_str().unwrap().contains("no room"));
}

#[test]
fn progress_is_reported_step_by_step_to_the_end() {
    let (_dir, _hosts, core) = with_user(100);
    let seen: Mutex<Vec<Progress>> = Mutex::new(Vec::new());
    let report = |p: &Progress| seen.lock().unwrap().push(p.clone());
    core.vm_create("ann", &spec("w1"), true, Some(&report))
        .unwrap();
    let seen = seen.into_inner().unwrap();
    let steps: Vec<u32> = seen.iter().map(|p| p.step).collect();
    assert_eq!(steps, vec![0, 1, 2, 3, 4]);
    assert!(seen.iter().all(|p| p.steps == 4 && p.vm == "w1"));
}

#[test]
fn a_background_creation_is_provisioned_by_a_worker() {
    let (_dir, _hosts, core) = with_user(100);
    let vm = core.vm_create("ann", &spec("w1"), false, None).unwrap();
    assert_eq!(vm.status, VmStatus::Creating);
    assert_eq!(core.drive_pending().unwrap(), 1);
    assert_eq!(core.vm_show("ann", "w1").unwrap().status, VmStatus::Running);
}

#[test]
fn an_unknown_os_is_refused_and_nothing_changes() {
    let (dir, _hosts, core) = with_user(100);
    let err = core
        .vm_create(
            "ann",
            &VmCreate {
                os_type: "windows95".into(),
                ..spec("w1")
            },
            true,
            None,
        )
        .unwrap_err();
    assert!(
        err.to_string().starts_with("unknown OS \"windows95\""),
        "{err}"
    );
    assert_eq!(count(dir.path(), "SELECT count(*) FROM vms"), 0);
    assert_eq!(core.credits_show("ann", None).unwrap().balance, 100);
}

#[test]
fn stop_start_restart_and_destroy_follow_the_host() {
    let (_dir, hosts, core) = with_user(100);
    let vm = core.vm_create("ann", &spec("w1"), true, None).unwrap();
    let machine = vm.provider_id.clone().unwrap();
    assert_eq!(
        core.vm_action("ann", "w1", VmAction::Stop).unwrap().status,
        VmStatus::Stopped
    );
    assert_eq!(hosts.0.state(&machine), Some(PowerState::Stopped));
    assert_eq!(
        core.vm_action("ann", "w1", VmAction::Start).unwrap().status,
        VmStatus::Running
    );
    assert_eq!(
        core.vm_action("ann", "w1", VmAction::Restart)
            .unwrap()
            .status,
        VmStatus::Running
    );
    assert_eq!(
        core.vm_action("ann", "w1", VmAction::Destroy)
            .unwrap()
            .status,
        VmStatus::Destroyed
    );
    assert_eq!(
        hosts.0.state(&machine),
        None,
        "the machine is still defined"
    );
    let actions: Vec<String> = core
        .events("ann", 4)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["vm.destroy", "vm.restart", "vm.start", "vm.stop"]);
}

#[test]
fn another_user_cannot_act_on_a_vm() {
    let (_dir, hosts, core) = with_user(100);
    core.user_add("admin", "bob", false, 0).unwrap();
    let vm = core.vm_create("ann", &spec("w1"), true, None).unwrap();
    assert_eq!(
        core.vm_action("bob", "w1", VmAction::Stop)
            .unwrap_err()
            .code(),
        "unknown_vm"
    );
    assert_eq!(
        hosts.0.state(vm.provider_id.as_deref().unwrap()),
        Some(PowerState::Running)
    );
    // An admin may.
    assert_eq!(
        core.vm_action("admin", "w1", VmAction::Stop)
            .unwrap()
            .status,
        VmStatus::Stopped
    );
}

#[test]
fn a_pool_vm_in_a_live_session_refuses_destroy() {
    let (_dir, hosts, core) = with_pool(1);
    core.session_open(
        "admin",
        &SessionRequest {
            project: "p".into(),
            ..Default::default()
        },
        true,
    )
    .unwrap();
    let err = core
        .vm_action("admin", "vm0", VmAction::Destroy)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("is held by session 1; close the session first"),
        "{err}"
    );
    let machine = core.vm_show("admin", "vm0").unwrap().provider_id.unwrap();
    assert_eq!(hosts.0.state(&machine), Some(PowerState::Running));
}

#[test]
fn metadata_is_merged() {
    let (_dir, _hosts, core) = with_user(100);
    core.vm_create("ann", &spec("w1"), true, None).unwrap();
    core.vm_meta("ann", "w1", &[("team".into(), "red".into())])
        .unwrap();
    let vm = core
        .vm_meta("ann", "w1", &[("owner".into(), "ann".into())])
        .unwrap();
    assert_eq!(vm.metadata["team"], "red");
    assert_eq!(vm.metadata["owner"], "ann");
    assert_eq!(vm.metadata["cost"], 34);
    assert!(core
        .vm_meta("ann", "w1", &[("bad key".into(), "x".into())])
        .is_err());
}

#[test]
fn concurrent_creations_never_overdraw() {
    let (dir, hosts, core) = with_user(340);
    drop(core);
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (dir, hosts) = (dir.path(), hosts.clone());
                scope.spawn(move || {
                    open(dir, &hosts).vm_create(
                        "ann",
                        &VmCreate {
                            start: false,
                            ..spec(&format!("c{i}"))
                        },
                        true,
                        None,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10);
    assert_eq!(count(dir.path(), "SELECT count(*) FROM vms"), 10);
    assert_eq!(
        count(dir.path(), "SELECT balance FROM users WHERE name = 'ann'"),
        0
    );
    assert_eq!(count(dir.path(), "SELECT sum(amount) FROM ledger WHERE user_id = (SELECT id FROM users WHERE name = 'ann')"), 0);
}

#[test]
fn an_imported_image_joins_the_catalog_and_a_bad_file_does_not() {
    let (dir, _hosts, core) = with_user(100);
    let good = dir.path().join("good.qcow2");
    // A qcow2 version 3 header (112 bytes) and the end of its extensions.
    let mut header = vec![0u8; 120];
    header[..8].copy_from_slice(b"QFI\xfb\0\0\0\x03");
    header[100..104].copy_from_slice(&112u32.to_be_bytes());
    std::fs::write(&good, header).unwrap();
    let bad = dir.path().join("bad.img");
    std::fs::write(&bad, b"not an image").unwrap();
    assert_eq!(
        core.os_import("admin", "tiny", &good).unwrap().kind,
        "image"
    );
    assert!(core
        .os_import("admin", "other", &bad)
        .unwrap_err()
        .to_string()
        .contains("is not a qcow2 image"));
    assert_eq!(
        core.os_import("ann", "mine", &good).unwrap_err().code(),
        "admin_only"
    );
    assert_eq!(
        core.os_import("admin", "tiny", &good).unwrap_err().code(),
        "already_exists"
    );
    let names: Vec<String> = core
        .os_list()
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, ["blank", "tiny"]);
    let vm = core
        .vm_create(
            "ann",
            &VmCreate {
                os_type: "tiny".into(),
                ..spec("w1")
            },
            true,
            None,
        )
        .unwrap();
    assert_eq!(vm.os_type, "tiny");
}

#[test]
fn own_vms_are_the_actors_only() {
    let (_dir, _hosts, core) = with_user(100);
    core.user_add("admin", "bob", false, 100).unwrap();
    core.vm_add("admin", &vm("pooled", "standard")).unwrap();
    core.vm_create("ann", &spec("a1"), true, None).unwrap();
    core.vm_create("bob", &spec("b1"), true, None).unwrap();
    let names: Vec<String> = core
        .vm_list_own("ann")
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["a1"]);
}

fn events_named(dir: &std::path::Path, action: &str) -> Vec<(String, String, serde_json::Value)> {
    db(dir)
        .prepare("SELECT severity, actor, details FROM events WHERE action = ?1 ORDER BY id")
        .unwrap()
        .query_map([action], |r| {
            let details: String = r.get(2)?;
            Ok((
                r.get(0)?,
                r.get(1)?,
                serde_json::from_str(&details).unwrap(),
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn an_all_digit_vm_name_is_refused_and_a_number_finds_a_vm_by_id() {
    let (dir, _hosts, core) = with_user(200);
    let err = core.vm_create("ann", &spec("17"), true, None).unwrap_err();
    assert_eq!(err.code(), "invalid_input");
    assert_eq!(count(dir.path(), "SELECT count(*) FROM vms"), 0);
    let w1 = core.vm_create("ann", &spec("w1"), true, None).unwrap();
    // A VM named like another's id (made before the rule) does not shadow it.
    db(dir.path())
        .execute(
            "INSERT INTO vms (name, os_type, ram_mb, disk_gb, cpu_cores, vm_type, status, owner_user_id,
                              host_id, created_at, updated_at)
             SELECT ?1, os_type, ram_mb, disk_gb, cpu_cores, vm_type, 'STOPPED', owner_user_id, host_id,
                    created_at, updated_at FROM vms WHERE id = ?2",
            rusqlite::params![w1.id.to_string(), w1.id],
        )
        .unwrap();
    assert_eq!(core.vm_show("ann", &w1.id.to_string()).unwrap().name, "w1");
}

#[test]
fn a_refused_action_leaves_a_warning_event_with_the_reason() {
    let (dir, _hosts, core) = with_pool(1);
    core.session_open(
        "admin",
        &SessionRequest {
            project: "p".into(),
            ..Default::default()
        },
        true,
    )
    .unwrap();
    let err = core.vm_action("admin", "vm0", VmAction::Stop).unwrap_err();
    let events = events_named(dir.path(), "vm.stop.failed");
    assert_eq!(events.len(), 1);
    let (severity, actor, details) = &events[0];
    assert_eq!((severity.as_str(), actor.as_str()), ("warning", "admin"));
    assert_eq!(details["code"], err.code());
    assert!(details["reason"]
        .as_str()
        .unwrap()
        .contains("held by session"));
}

#[test]
fn a_forbidden_destroy_leaves_a_warning_event() {
    let (dir, _hosts, core) = with_user(100);
    core.vm_create("ann", &spec("w1"), true, None).unwrap();
    core.user_add("admin", "eve", false, 0).unwrap();
    // ann's VM is not eve's to see: refused as unknown, and recorded.
    assert!(core.vm_action("eve", "w1", VmAction::Destroy).is_err());
    let events = events_named(dir.path(), "vm.destroy.failed");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1, "eve");
    assert_eq!(core.vm_show("ann", "w1").unwrap().status, VmStatus::Running);
}

#[test]
fn a_creation_refused_for_credits_leaves_a_warning_event() {
    let (dir, _hosts, core) = with_user(5);
    let err = core.vm_create("ann", &spec("w1"), true, None).unwrap_err();
    assert_eq!(err.code(), "insufficient_credits");
    let events = events_named(dir.path(), "vm.create.refused");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].2["code"], "insufficient_credits");
    assert_eq!(count(dir.path(), "SELECT count(*) FROM vms"), 0);
}

#[test]
fn an_allocation_during_a_destroy_does_not_get_the_vm_being_destroyed() {
    let (dir, hosts, core) = with_pool(1);
    let machine = core.vm_show("admin", "vm0").unwrap().provider_id.unwrap();
    hosts.0.start(&machine).unwrap();
    *hosts.0.force_off_delay.lock().unwrap() = std::time::Duration::from_millis(600);
    let core = std::sync::Arc::new(core);
    let destroyer = {
        let core = core.clone();
        std::thread::spawn(move || core.vm_action("admin", "vm0", VmAction::Destroy))
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let other = open(dir.path(), &hosts);
    let opened = other.session_open(
        "admin",
        &SessionRequest {
            project: "p".into(),
            ..Default::default()
        },
        false,
    );
    assert!(
        opened.is_err(),
        "allocated a VM being destroyed: {opened:?}"
    );
    destroyer.join().unwrap().unwrap();
    assert_eq!(
        count(dir.path(), "SELECT count(*) FROM sessions"),
        0,
        "no session was opened on it"
    );
}
