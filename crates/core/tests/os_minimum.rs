//! Each OS of the catalog carries the least memory and disk it boots with: a
//! creation or a pool VM below it is refused before anything is charged or
//! defined, and the launch form's price says so too.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use vmdesk_core::{BillingConfig, VmCreate};

/// A self-contained qcow2 image of 1 MiB.
fn plain(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", p.to_str().unwrap(), "1M"])
        .output()
        .unwrap();
    assert!(out.status.success());
    p
}

fn spec(name: &str, os: &str, ram_mb: i64, disk_gb: i64) -> VmCreate {
    VmCreate {
        name: name.into(),
        ram_mb,
        disk_gb,
        cpu_cores: 1,
        os_type: os.into(),
        host: None,
        start: true,
    }
}

#[test]
fn the_catalog_carries_each_os_minimum_and_whether_it_boots() {
    let (_dir, _hosts, core) = with_pool(0);
    let src = tempfile::tempdir().unwrap();
    core.os_import_with(
        "admin",
        "tiny",
        &plain(src.path(), "t.qcow2"),
        Some(128),
        Some(2),
    )
    .unwrap();
    core.os_import("admin", "plain", &plain(src.path(), "p.qcow2"))
        .unwrap();
    let list = core.os_list().unwrap();
    let by = |n: &str| list.iter().find(|o| o.name == n).unwrap().clone();
    assert!(!by("blank").boots, "blank boots to firmware only");
    assert_eq!((by("blank").min_ram_mb, by("blank").min_disk_gb), (64, 1));
    assert!(by("tiny").boots);
    assert_eq!((by("tiny").min_ram_mb, by("tiny").min_disk_gb), (128, 2));
    assert_eq!((by("plain").min_ram_mb, by("plain").min_disk_gb), (64, 1));
}

#[test]
fn a_creation_below_the_os_minimum_is_refused_and_nothing_is_charged() {
    let (dir, hosts, core) = with_pool(0);
    core.user_add("admin", "ann", false, 50).unwrap();
    let src = tempfile::tempdir().unwrap();
    core.os_import_with(
        "admin",
        "tiny",
        &plain(src.path(), "t.qcow2"),
        Some(128),
        Some(2),
    )
    .unwrap();
    let events_before = count(dir.path(), "SELECT count(*) FROM events");

    let e = core
        .vm_create("ann", &spec("small", "tiny", 64, 2), true, None)
        .unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
    assert!(
        e.to_string()
            .contains("tiny needs at least 128 MB of memory to boot"),
        "{e}"
    );
    let e = core
        .vm_create("ann", &spec("small", "tiny", 128, 1), true, None)
        .unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
    assert!(e.to_string().contains("at least 2 GB"), "{e}");

    assert_eq!(core.credits_show("ann", None).unwrap().balance, 50);
    assert_eq!(count(dir.path(), "SELECT count(*) FROM vms"), 0);
    assert_eq!(
        count(dir.path(), "SELECT count(*) FROM ledger WHERE amount < 0"),
        0
    );
    assert_eq!(
        count(dir.path(), "SELECT count(*) FROM events"),
        events_before
    );
    assert!(
        hosts.0.machines.lock().unwrap().is_empty(),
        "a machine was defined"
    );

    // At the minimum it is created and charged once.
    let vm = core
        .vm_create("ann", &spec("ok", "tiny", 128, 2), true, None)
        .unwrap();
    assert_eq!(vm.ram_mb, 128);
    let cost = vmdesk_core::quote(128, 2, 1).unwrap().cost;
    assert_eq!(core.credits_show("ann", None).unwrap().balance, 50 - cost);
}

#[test]
fn a_pool_vm_below_the_os_minimum_is_refused() {
    let (dir, _hosts, core) = with_pool(0);
    let src = tempfile::tempdir().unwrap();
    core.os_import_with(
        "admin",
        "tiny",
        &plain(src.path(), "t.qcow2"),
        Some(128),
        None,
    )
    .unwrap();
    let mut v = vm("pool-1", "standard");
    v.os_type = "tiny".into();
    v.ram_mb = 64;
    let e = core.vm_add("admin", &v).unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
    assert!(e.to_string().contains("128 MB"), "{e}");
    assert_eq!(count(dir.path(), "SELECT count(*) FROM vms"), 0);
}

#[test]
fn an_out_of_range_minimum_is_refused_at_import() {
    let (_dir, _hosts, core) = with_pool(0);
    let src = tempfile::tempdir().unwrap();
    let e = core
        .os_import_with(
            "admin",
            "tiny",
            &plain(src.path(), "t.qcow2"),
            Some(1),
            None,
        )
        .unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
    assert_eq!(core.os_list().unwrap().len(), 1);
}

#[test]
fn the_price_has_the_hourly_running_cost_of_the_billing_rate() {
    let (_dir, _hosts, core) = with_pool(0);
    let p = core.price("blank", 1024, 20, 2).unwrap();
    let cost = vmdesk_core::quote(1024, 20, 2).unwrap().cost;
    assert_eq!(p.cost, cost);
    assert_eq!(
        p.hourly_milli,
        cost * BillingConfig::default().hourly_percent * 10
    );
    let src = tempfile::tempdir().unwrap();
    core.os_import_with(
        "admin",
        "tiny",
        &plain(src.path(), "t.qcow2"),
        Some(128),
        None,
    )
    .unwrap();
    let e = core.price("tiny", 64, 1, 1).unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
    assert_eq!(
        core.price("nope", 64, 1, 1).unwrap_err().code(),
        "invalid_input"
    );
}

#[test]
fn an_admin_sets_an_imported_images_minimum_later() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "ann", false, 50).unwrap();
    let src = tempfile::tempdir().unwrap();
    core.os_import("admin", "tiny", &plain(src.path(), "t.qcow2"))
        .unwrap();
    let e = core
        .os_set_minimum("ann", "tiny", Some(96), None)
        .unwrap_err();
    assert_eq!(e.code(), "admin_only", "{e}");
    assert_eq!(
        core.os_set_minimum("admin", "blank", Some(96), None)
            .unwrap_err()
            .code(),
        "invalid_input"
    );
    let os = core
        .os_set_minimum("admin", "tiny", Some(96), None)
        .unwrap();
    assert_eq!((os.min_ram_mb, os.min_disk_gb), (96, 1));
    let events = count(
        dir.path(),
        "SELECT count(*) FROM events WHERE action = 'os.minimum'",
    );
    assert_eq!(events, 1);
    // The same values again change nothing and log nothing.
    core.os_set_minimum("admin", "tiny", Some(96), Some(1))
        .unwrap();
    assert_eq!(
        count(
            dir.path(),
            "SELECT count(*) FROM events WHERE action = 'os.minimum'"
        ),
        1
    );
    let e = core
        .vm_create("ann", &spec("small", "tiny", 64, 1), true, None)
        .unwrap_err();
    assert!(e.to_string().contains("96 MB"), "{e}");
}
