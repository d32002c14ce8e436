//! Metered billing with a simulated clock.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use chrono::{DateTime, Duration, Utc};
use common::*;
use vmdesk_core::{SessionRequest, SessionStatus, VmCreate, VmStatus};

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

/// A pool VM `vm0` in an active session of `bob` (with `credits`), up since t0.
fn bob_in_a_session(credits: i64) -> (tempfile::TempDir, vmdesk_core::Core, DateTime<Utc>) {
    let (dir, _hosts, core) = with_pool(1);
    core.user_add("admin", "bob", false, credits).unwrap();
    core.session_open(
        "bob",
        &SessionRequest {
            project: "p".into(),
            ..Default::default()
        },
        true,
    )
    .unwrap();
    let t0 = Utc::now();
    started(dir.path(), "vm0", t0);
    (dir, core, t0)
}

fn runtime_total(dir: &std::path::Path, user: &str) -> i64 {
    count(dir, &format!("SELECT coalesce(-sum(amount), 0) FROM ledger WHERE kind = 'runtime' AND user_id = (SELECT id FROM users WHERE name = '{user}')"))
}

#[test]
fn running_time_is_charged_at_the_hourly_rate_with_fractions_carried() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "ann", false, 100).unwrap();
    core.vm_create("ann", &spec("w1"), true, None).unwrap();
    let t0 = Utc::now();
    started(dir.path(), "w1", t0);
    // 34 credits to create -> 3.4 an hour at the default 10 %.
    core.bill_runtime(t0 + Duration::hours(2)).unwrap();
    assert_eq!(runtime_total(dir.path(), "ann"), 6, "6.8 -> 6, 0.8 carried");
    core.bill_runtime(t0 + Duration::hours(3)).unwrap();
    assert_eq!(runtime_total(dir.path(), "ann"), 10, "3.4 + 0.8 -> 4 more");
    // Billing again at the same instant charges nothing.
    assert!(core
        .bill_runtime(t0 + Duration::hours(3))
        .unwrap()
        .is_empty());
    assert_eq!(
        core.credits_show("ann", None).unwrap().balance,
        100 - 34 - 10
    );
}

#[test]
fn nothing_is_billed_while_off_and_a_stop_ends_the_bill() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "ann", false, 100).unwrap();
    core.vm_create(
        "ann",
        &VmCreate {
            start: false,
            ..spec("off")
        },
        true,
        None,
    )
    .unwrap();
    core.vm_create("ann", &spec("w1"), true, None).unwrap();
    let t0 = Utc::now();
    started(dir.path(), "w1", t0);
    db(dir.path())
        .execute(
            "UPDATE vms SET status = 'STOPPED', last_stopped = ?1 WHERE name = 'w1'",
            [(t0 + Duration::minutes(60)).to_rfc3339()],
        )
        .unwrap();
    core.bill_runtime(t0 + Duration::hours(5)).unwrap();
    assert_eq!(runtime_total(dir.path(), "ann"), 3, "one hour at 3.4");
    assert!(core
        .bill_runtime(t0 + Duration::hours(9))
        .unwrap()
        .is_empty());
}

#[test]
fn a_pool_vm_is_billed_to_the_user_of_its_session() {
    let (dir, core, t0) = bob_in_a_session(50);
    core.bill_runtime(t0 + Duration::hours(1)).unwrap();
    assert_eq!(runtime_total(dir.path(), "bob"), 3);
    assert_eq!(runtime_total(dir.path(), "admin"), 0);
}

#[test]
fn at_zero_the_session_ends_and_the_balance_is_not_overdrawn() {
    let (dir, core, t0) = bob_in_a_session(2);
    let charges = core.bill_runtime(t0 + Duration::hours(2)).unwrap();
    assert!(charges[0].exhausted);
    assert_eq!(charges[0].credits, 2);
    assert_eq!(core.credits_show("bob", None).unwrap().balance, 0);
    assert_eq!(
        core.session_list("bob", false).unwrap()[0].status,
        SessionStatus::Terminating
    );
    core.drive_pending().unwrap();
    assert_eq!(
        core.session_list("bob", false).unwrap()[0].status,
        SessionStatus::Completed
    );
    assert_eq!(
        count(
            dir.path(),
            "SELECT count(*) FROM events WHERE action = 'credits.exhausted'"
        ),
        1
    );
}

#[test]
fn at_zero_a_users_own_vm_is_stopped() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "ann", false, 36).unwrap();
    core.vm_create("ann", &spec("w1"), true, None).unwrap();
    let t0 = Utc::now();
    started(dir.path(), "w1", t0);
    core.bill_runtime(t0 + Duration::hours(1)).unwrap();
    assert_eq!(core.vm_show("ann", "w1").unwrap().status, VmStatus::Stopped);
    assert_eq!(core.credits_show("ann", None).unwrap().balance, 0);
}

#[test]
fn a_balance_about_to_run_out_is_warned_of_once() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "ann", false, 40).unwrap();
    core.vm_create("ann", &spec("w1"), true, None).unwrap();
    let t0 = Utc::now();
    started(dir.path(), "w1", t0);
    // 6 left after creation; 3.4 an hour: under an hour left after one more hour.
    core.bill_runtime(t0 + Duration::minutes(70)).unwrap();
    core.bill_runtime(t0 + Duration::minutes(71)).unwrap();
    assert_eq!(
        count(
            dir.path(),
            "SELECT count(*) FROM events WHERE action = 'credits.low'"
        ),
        1
    );
}

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

#[test]
fn at_zero_a_session_ends_even_when_no_user_is_named_admin_any_more() {
    let (dir, core, t0) = bob_in_a_session(2);
    core.user_add("admin", "boss", true, 0).unwrap();
    core.user_role("boss", "admin", vmdesk_core::Role::User)
        .unwrap();
    core.bill_runtime(t0 + Duration::hours(2)).unwrap();
    assert_eq!(
        core.session_list("bob", false).unwrap()[0].status,
        SessionStatus::Terminating
    );
    drop(dir);
}

fn pass(wall: DateTime<Utc>, mono: std::time::Instant) -> vmdesk_core::Pass {
    vmdesk_core::Pass { wall, mono }
}

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
