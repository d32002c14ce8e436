//! The console port pool on a real SQLite file.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
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
fn nine_hundred_concurrent_reservations_take_nine_hundred_distinct_ports() {
    let (dir, hosts, _core) = running();
    let ports: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..900)
            .map(|_| {
                let (dir, hosts) = (dir.path(), hosts.clone());
                s.spawn(move || {
                    // Each its own connection, as separate processes would be.
                    let core = open(dir, &hosts);
                    core.console_reserve("admin", "vm0", (6100, 6999), &[], TTL)
                        .unwrap()
                        .port
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), 900);
    assert_eq!(
        (distinct.first(), distinct.last()),
        (Some(&6100), Some(&6999))
    );

    let core = open(dir.path(), &hosts);
    let err = core
        .console_reserve("admin", "vm0", (6100, 6999), &[], TTL)
        .unwrap_err();
    assert_eq!(err.code(), "port_pool_exhausted");
    assert_eq!(
        err.to_string(),
        "the console port pool 6100-6999 is exhausted: all 900 ports are allocated"
    );
    let stats = core.console_stats((6100, 6999)).unwrap();
    assert_eq!(
        (stats.allocated, stats.free, stats.health.as_str()),
        (900, 0, "warning")
    );
}

#[test]
fn a_token_opens_its_console_once() {
    let (_dir, _hosts, core) = running();
    let g = reserve(&core);
    assert_eq!(
        core.console_redeem(g.port, "wrong").unwrap_err().code(),
        "console_refused"
    );
    assert_eq!(core.console_redeem(g.port, &g.token).unwrap().name, "vm0");
    let again = core.console_redeem(g.port, &g.token).unwrap_err();
    assert_eq!(
        again.to_string(),
        "the console refused the connection: the token was already used"
    );
}

#[test]
fn an_expired_token_is_refused() {
    let (_dir, _hosts, core) = running();
    let g = core
        .console_reserve("admin", "vm0", (6100, 6101), &[], Duration::from_millis(1))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let err = core.console_redeem(g.port, &g.token).unwrap_err();
    assert!(err.to_string().ends_with("the token has expired"), "{err}");
}

#[test]
fn skipped_ports_are_not_reserved() {
    let (_dir, _hosts, core) = running();
    let g = core
        .console_reserve("admin", "vm0", (6100, 6102), &[6100, 6101], TTL)
        .unwrap();
    assert_eq!(g.port, 6102);
}

#[test]
fn a_stopped_vm_has_no_console_and_nothing_is_reserved() {
    let (dir, _hosts, core) = with_pool(1);
    let err = core
        .console_reserve("admin", "vm0", (6100, 6101), &[], TTL)
        .unwrap_err();
    assert_eq!(err.code(), "console_unavailable");
    assert_eq!(count(dir.path(), "SELECT count(*) FROM consoles"), 0);
}

#[test]
fn a_user_without_a_session_may_not_open_a_pool_vms_console() {
    let (dir, _hosts, core) = running();
    core.user_add("admin", "bob", false, 0).unwrap();
    let err = core
        .console_reserve("bob", "vm0", (6100, 6101), &[], TTL)
        .unwrap_err();
    assert_eq!(err.code(), "forbidden");
    assert_eq!(count(dir.path(), "SELECT count(*) FROM consoles"), 0);
}

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

#[test]
fn a_token_redeemed_after_the_vm_stopped_is_refused_and_frees_the_port() {
    let (dir, _hosts, core) = running();
    let g = reserve(&core);
    db(dir.path())
        .execute("UPDATE vms SET status = 'STOPPED'", [])
        .unwrap();

    let err = core.console_redeem(g.port, &g.token).unwrap_err();

    assert_eq!(err.code(), "console_unavailable");
    assert!(err.to_string().contains("not RUNNING"), "{err}");
    assert_eq!(count(dir.path(), "SELECT count(*) FROM consoles"), 0);
}

#[test]
fn a_token_redeemed_after_the_session_ended_is_refused_and_frees_the_port() {
    let (dir, _hosts, core) = with_pool(1);
    core.user_add("admin", "bob", false, 1000).unwrap();
    let req = vmdesk_core::SessionRequest {
        project: "p".into(),
        ..Default::default()
    };
    core.session_open("bob", &req, true).unwrap();
    let g = core
        .console_reserve("bob", "vm0", (6100, 6101), &[], TTL)
        .unwrap();
    // The session ends; the VM runs on (another user may take it next).
    db(dir.path())
        .execute("UPDATE sessions SET status = 'COMPLETED'", [])
        .unwrap();

    let err = core.console_redeem(g.port, &g.token).unwrap_err();

    assert_eq!(err.code(), "forbidden");
    assert_eq!(count(dir.path(), "SELECT count(*) FROM consoles"), 0);
}

#[test]
fn a_wrong_token_keeps_the_console_for_the_right_one() {
    let (dir, _hosts, core) = running();
    let g = reserve(&core);
    db(dir.path())
        .execute("UPDATE vms SET status = 'STOPPED'", [])
        .unwrap();

    let err = core.console_redeem(g.port, "wrong").unwrap_err();

    assert_eq!(err.code(), "console_refused");
    assert_eq!(count(dir.path(), "SELECT count(*) FROM consoles"), 1);
}

#[test]
fn a_huge_token_lifetime_saturates_and_the_token_opens_its_console() {
    let (_dir, _hosts, core) = running();

    let g = core
        .console_reserve("admin", "vm0", (6100, 6101), &[], Duration::MAX)
        .unwrap();

    assert_eq!(g.expires_at, "9999-12-31T23:59:59.999Z");
    assert_eq!(core.console_redeem(g.port, &g.token).unwrap().name, "vm0");
}
