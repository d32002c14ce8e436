//! Allocation of pool VMs to sessions, on a real SQLite file.
//!
//! Embedded-store only: the_database_refuses_a_second_live_session_on_one_vm
//! writes the SQLite file directly, past the allocator, to show its unique
//! index holds. The allocator's rules run on both stores in
//! crates/postgres/tests/core_allocator.rs.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use vmdesk_core::SessionRequest;

#[test]
fn the_database_refuses_a_second_live_session_on_one_vm() {
    let (dir, _hosts, core) = with_pool(1);
    let s = core
        .session_open(
            "admin",
            &SessionRequest {
                project: "p".into(),
                ..Default::default()
            },
            false,
        )
        .unwrap();
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
