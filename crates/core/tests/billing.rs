//! Metered billing with a simulated clock.
//!
//! Embedded-store only, for now: the tests left here differ on the team
//! store (each says how). The other billing tests run on both stores in
//! crates/postgres/tests/core_billing.rs.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use chrono::{DateTime, Duration, Utc};
use common::*;
use vmdesk_core::{VmCreate, VmStatus};

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

/// Pretends the VM came up at `at`.
fn started(dir: &std::path::Path, vm: &str, at: DateTime<Utc>) {
    db(dir)
        .execute(
            "UPDATE vms SET started_at = ?2 WHERE name = ?1",
            rusqlite::params![vm, at.to_rfc3339()],
        )
        .unwrap();
}

fn runtime_total(dir: &std::path::Path, user: &str) -> i64 {
    count(dir, &format!("SELECT coalesce(-sum(amount), 0) FROM ledger WHERE kind = 'runtime' AND user_id = (SELECT id FROM users WHERE name = '{user}')"))
}

// Differs on the team store: the VM is stopped there too, but its vm.stop
// event's actor is the login of the admin whose desk billed (Core::bill_at's
// team branch stops it with vm_action(t.login(), ..)), not the system,
// "vmdesk".
#[test]
fn at_zero_a_vm_is_stopped_even_when_no_user_is_named_admin_any_more() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "boss", true, 0).unwrap();
    core.user_role("boss", "admin", vmdesk_core::Role::User)
        .unwrap();
    core.user_add("boss", "ann", false, 36).unwrap();
    core.vm_create("ann", &spec("w1"), true, None).unwrap();
    let t0 = Utc::now();
    started(dir.path(), "w1", t0);
    core.bill_runtime(t0 + Duration::hours(1)).unwrap();
    assert_eq!(core.vm_show("ann", "w1").unwrap().status, VmStatus::Stopped);
    let actor: String = db(dir.path())
        .query_row(
            "SELECT actor FROM events WHERE action = 'vm.stop' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(actor, "vmdesk", "the system acted, not a user");
}

fn pass(wall: DateTime<Utc>, mono: std::time::Instant) -> vmdesk_core::Pass {
    vmdesk_core::Pass { wall, mono }
}

// Differs on the team store: the charge is the same (3600 s, 3 credits), but
// no clock.jump event reaches the team store: Core::bill_pass records it
// with self.write on the desk's own SQLite file, so the admin's events on
// the team store have none (the same for the next test).
#[test]
fn a_wall_clock_jumping_forward_bills_only_the_time_observed() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "ann", false, 100).unwrap();
    core.vm_create("ann", &spec("w1"), true, None).unwrap();
    let t0 = Utc::now();
    let m0 = std::time::Instant::now();
    started(dir.path(), "w1", t0);
    core.bill_pass(pass(t0, m0)).unwrap();
    // The wall clock leaps 10 hours while one real hour passes.
    let charges = core
        .bill_pass(pass(
            t0 + Duration::hours(11),
            m0 + std::time::Duration::from_secs(3600),
        ))
        .unwrap();
    assert_eq!(charges[0].seconds, 3600);
    assert_eq!(runtime_total(dir.path(), "ann"), 3, "one hour at 3.4");
    assert_eq!(
        count(
            dir.path(),
            "SELECT count(*) FROM events WHERE action = 'clock.jump'"
        ),
        1
    );
}

// Differs on the team store: no clock.jump event there (see above).
#[test]
fn a_wall_clock_jumping_back_gives_no_free_time() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "ann", false, 100).unwrap();
    core.vm_create("ann", &spec("w1"), true, None).unwrap();
    let t0 = Utc::now();
    let m0 = std::time::Instant::now();
    started(dir.path(), "w1", t0 - Duration::hours(1));
    core.bill_pass(pass(t0, m0)).unwrap();
    let before = runtime_total(dir.path(), "ann");
    // The wall clock goes back 5 hours while 2 real hours pass.
    let charges = core
        .bill_pass(pass(
            t0 - Duration::hours(3),
            m0 + std::time::Duration::from_secs(7200),
        ))
        .unwrap();
    assert_eq!(charges[0].seconds, 7200);
    assert_eq!(
        runtime_total(dir.path(), "ann") - before,
        7,
        "two hours at 3.4 plus 0.4 carried"
    );
    assert_eq!(
        count(
            dir.path(),
            "SELECT count(*) FROM events WHERE action = 'clock.jump'"
        ),
        1
    );
    // And the next pass goes on from the corrected clock.
    let next = core
        .bill_pass(pass(
            t0 - Duration::hours(2),
            m0 + std::time::Duration::from_secs(10_800),
        ))
        .unwrap();
    assert_eq!(next[0].seconds, 3600);
}
