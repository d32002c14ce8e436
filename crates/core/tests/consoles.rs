//! The console port pool on a real SQLite file.
//!
//! Embedded-store only: recovery_reports_the_freed_ports_of_dead_processes
//! runs recover_all, which the team store does not offer yet (it answers
//! not_on_team_store); ports_of_a_dead_process_are_freed_by_cleanup differs
//! on the team store (below). The pool's other rules run on both stores in
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

// Differs on the team store: a dead process's port is freed there too (by
// console_cleanup, through console_release), but the event recorded is
// "console.close" (reason "the process serving the console is gone"), not
// "recovery.console" as here. (On both stores, with the port reserved by a
// second core of the desk that is then dropped.)
#[test]
fn ports_of_a_dead_process_are_freed_by_cleanup() {
    let (dir, hosts, core) = running();
    let g = reserve(&core);
    db(dir.path())
        .execute("UPDATE consoles SET worker = '4242-deadbeef'", [])
        .unwrap();
    drop(core);
    let core = open(dir.path(), &hosts);
    assert_eq!(core.console_cleanup().unwrap(), [g.port]);
    assert_eq!(core.console_stats((6100, 6101)).unwrap().allocated, 0);
    let e = &core.events("admin", 1).unwrap()[0];
    assert_eq!(e.action, "recovery.console");
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
