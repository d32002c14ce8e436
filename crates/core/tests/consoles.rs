//! The console port pool on a real SQLite file.
//!
//! Embedded-store only: recovery_reports_the_freed_ports_of_dead_processes
//! runs recover_all, which the team store does not offer yet (it answers
//! not_on_team_store). The pool's other rules run on both stores in
//! crates/postgres/tests/core_consoles.rs.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

const TTL: Duration = Duration::from_secs(60);

/// A pool with one VM `vm0`, RUNNING.
fn running() -> (tempfile::TempDir, MemoryFactory, vmdesk_core::Core) {
    let (dir, hosts, core) = with_pool(1);
    db(dir.path())
        .execute("UPDATE vms SET status = 'RUNNING'", [])
        .unwrap();
    (dir, hosts, core)
}

/// The admin's console on `vm0`, from a two-port pool.
fn reserve(core: &vmdesk_core::Core) -> vmdesk_core::ConsoleGrant {
    core.console_reserve("admin", "vm0", (6100, 6101), &[], TTL)
        .unwrap()
}

#[test]
fn recovery_reports_the_freed_ports_of_dead_processes() {
    let (dir, _hosts, core) = running();
    let g = reserve(&core);
    db(dir.path())
        .execute("UPDATE consoles SET worker = '4242-deadbeef'", [])
        .unwrap();

    let done = core.recover_all("admin").unwrap();

    let freed: Vec<_> = done
        .iter()
        .filter(|e| e.action == "recovery.console")
        .map(|e| e.details["port"].as_u64())
        .collect();
    assert_eq!(freed, [Some(u64::from(g.port))]);
}
