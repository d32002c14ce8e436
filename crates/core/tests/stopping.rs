//! A stop in progress is the backend's state: STOPPING with its deadline,
//! committed before the guest shuts down, and a second action is refused.
//!
//! Embedded-store only: metadata_of_a_destroyed_vm_is_refused, as VM
//! metadata (vm_meta) is not on the team store yet (it answers
//! not_on_team_store). The other stopping tests run on both stores in
//! crates/postgres/tests/core_stopping.rs.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use vmdesk_core::{OpenOptions, VmAction, VmCreate};

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
