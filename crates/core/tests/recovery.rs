//! Settling work a crashed worker left, on a real SQLite file. The other
//! recovery tests run on both stores: crates/postgres/tests/core_recovery.rs.
//!
//! Embedded-store only:
//! - a_creation_whose_worker_lock_cannot_be_checked_is_left_alone: puts a directory in place of the worker's lock file in the data dir; the team store tells a worker's liveness by its advisory lock, not by files.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use vmdesk_core::VmStatus;

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
