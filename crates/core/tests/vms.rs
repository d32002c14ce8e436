//! A user's own VMs: creation for credits, actions, metadata.
//!
//! Embedded-store only: an_imported_image_joins_the_catalog_and_a_bad_file_does_not
//! (the OS catalog is each desk's own files in its data dir, not the
//! store's); an_all_digit_vm_name_is_refused_and_a_number_finds_a_vm_by_id
//! (writes a legacy row into the SQLite file). The other VM tests run on
//! both stores in crates/postgres/tests/core_vms.rs (metadata in core_admin.rs).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use vmdesk_core::VmCreate;

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
