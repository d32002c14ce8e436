//! A stop in progress is the backend's state: STOPPING with its deadline,
//! committed before the guest shuts down, and a second action is refused.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use vmdesk_core::provider::PowerState;
use vmdesk_core::{OpenOptions, SessionRequest, VmAction, VmCreate, VmStatus};

/// A core whose guests ignore ACPI and are forced off after 1.5 s.
fn slow_stop() -> (tempfile::TempDir, MemoryFactory, Arc<vmdesk_core::Core>) {
    let dir = tempfile::tempdir().unwrap();
    let hosts = MemoryFactory::default();
    let mut opts = OpenOptions::new(dir.path(), Arc::new(hosts.clone()));
    opts.start_timeout = Duration::from_secs(2);
    opts.shutdown_timeout = Duration::from_millis(1500);
    let core = vmdesk_core::Core::open(opts).unwrap();
    core.host_add("admin", "h", "test:///default").unwrap();
    core.project_create("admin", "p").unwrap();
    core.user_add("admin", "ann", false, 500).unwrap();
    *hosts.0.ignore_shutdown.lock().unwrap() = true;
    (dir, hosts, Arc::new(core))
}

fn create(core: &vmdesk_core::Core, name: &str) {
    core.vm_create(
        "ann",
        &VmCreate {
            name: name.into(),
            ram_mb: 1024,
            disk_gb: 20,
            cpu_cores: 2,
            os_type: "blank".into(),
            host: None,
            start: true,
        },
        true,
        None,
    )
    .unwrap();
}

fn row(dir: &std::path::Path, name: &str) -> (String, Option<String>) {
    db(dir)
        .query_row(
            "SELECT status, json_extract(metadata, '$.force_off_at') FROM vms WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

fn wait_status(dir: &std::path::Path, name: &str, status: &str) -> (String, Option<String>) {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = row(dir, name);
        if r.0 == status || std::time::Instant::now() > end {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stopping_vm_and_its_deadline_are_visible_to_another_connection() {
    let (dir, hosts, core) = slow_stop();
    create(&core, "w1");
    let before = chrono::Utc::now();
    let stopper = {
        let core = core.clone();
        std::thread::spawn(move || core.vm_action("ann", "w1", VmAction::Stop))
    };
    let (status, deadline) = wait_status(dir.path(), "w1", "STOPPING");
    assert_eq!(status, "STOPPING");
    let deadline = chrono::DateTime::parse_from_rfc3339(&deadline.expect("a force_off_at"))
        .unwrap()
        .with_timezone(&chrono::Utc);
    let ahead = deadline - before;
    assert!(
        ahead >= chrono::Duration::milliseconds(1400) && ahead <= chrono::Duration::seconds(3),
        "deadline {ahead} after the click"
    );
    // Another process's core sees it too, through the API.
    let other = open(dir.path(), &hosts);
    let vm = other.vm_show("ann", "w1").unwrap();
    assert_eq!(vm.status, VmStatus::Stopping);
    assert!(vm.metadata["force_off_at"].is_string());

    let vm = stopper.join().unwrap().unwrap();
    assert_eq!(vm.status, VmStatus::Stopped);
    assert!(
        vm.metadata.get("force_off_at").is_none(),
        "the deadline goes with the stop: {}",
        vm.metadata
    );
    assert_eq!(row(dir.path(), "w1"), ("STOPPED".into(), None));
}

#[test]
fn a_second_stop_restart_or_destroy_while_stopping_is_refused_without_a_second_event() {
    let (dir, hosts, core) = slow_stop();
    create(&core, "w1");
    let stopper = {
        let core = core.clone();
        std::thread::spawn(move || core.vm_action("ann", "w1", VmAction::Stop))
    };
    assert_eq!(wait_status(dir.path(), "w1", "STOPPING").0, "STOPPING");
    let other = open(dir.path(), &hosts);
    for action in [VmAction::Stop, VmAction::Restart, VmAction::Destroy] {
        let err = other.vm_action("ann", "w1", action).unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        assert!(
            err.to_string()
                .contains("already stopping and is forced off at ")
                && err
                    .to_string()
                    .contains(" UTC if the guest does not shut down"),
            "{action:?}: {err}"
        );
    }
    assert_eq!(stopper.join().unwrap().unwrap().status, VmStatus::Stopped);
    assert_eq!(
        count(
            dir.path(),
            "SELECT count(*) FROM events WHERE action LIKE 'vm.stop%' OR action LIKE 'vm.restart%'
                                           OR action LIKE 'vm.destroy%'"
        ),
        1,
        "one vm.stop event, no failure events"
    );
    let machine = core.vm_show("ann", "w1").unwrap().provider_id.unwrap();
    assert_eq!(hosts.0.state(&machine), Some(PowerState::Stopped));
}

#[test]
fn a_failed_stop_puts_the_vm_back_as_it_was() {
    let (dir, hosts, core) = slow_stop();
    create(&core, "w1");
    *hosts.0.unreachable.lock().unwrap() = true;
    assert!(core.vm_action("ann", "w1", VmAction::Stop).is_err());
    assert_eq!(row(dir.path(), "w1"), ("RUNNING".into(), None));
}

#[test]
fn a_closing_session_shows_its_vm_stopping_with_a_deadline() {
    let (dir, hosts, core) = slow_stop();
    core.vm_add("admin", &vm("vm0", "standard")).unwrap();
    let s = core
        .session_open(
            "admin",
            &SessionRequest {
                project: "p".into(),
                ..Default::default()
            },
            true,
        )
        .unwrap();
    let closer = {
        let core = core.clone();
        std::thread::spawn(move || core.session_close("admin", s.id, true))
    };
    let end = std::time::Instant::now() + Duration::from_secs(5);
    let mut seen = (String::new(), None);
    while std::time::Instant::now() < end {
        seen = row(dir.path(), "vm0");
        if seen.1.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(seen.0, "STOPPING");
    assert!(seen.1.is_some(), "no deadline while the session closes");
    let other = open(dir.path(), &hosts);
    let live = other.session_list("admin", false).unwrap();
    assert_eq!(live[0].status.to_string(), "TERMINATING");
    closer.join().unwrap().unwrap();
    assert_eq!(row(dir.path(), "vm0"), ("STOPPED".into(), None));
}

#[test]
fn metadata_of_a_destroyed_vm_is_refused() {
    let (_dir, _hosts, core) = slow_stop();
    *_hosts.0.ignore_shutdown.lock().unwrap() = false;
    create(&core, "w1");
    core.vm_action("ann", "w1", VmAction::Destroy).unwrap();
    let err = core
        .vm_meta("ann", "w1", &[("k".into(), "v".into())])
        .unwrap_err();
    assert!(err.to_string().contains("destroyed"), "{err}");
}
