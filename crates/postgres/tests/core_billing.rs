//! Metered billing with a simulated clock (moved from
//! crates/core/tests/billing.rs), on both stores: the embedded SQLite file
//! and a team store on PostgreSQL. A VM's start is taken as the instant its
//! creation (or session) returned: billing a few milliseconds more than the
//! hours given changes no whole credit.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use chrono::{DateTime, Duration, Utc};
use stores::Desks;
use vmdesk_core::{LedgerKind, Role, SessionStatus, VmCreate, VmStatus};

fn spec(name: &str) -> VmCreate {
    stores::own_vm(name)
}

/// `user`'s VM `name`, created and running since the instant returned.
fn running(d: &Desks, user: &str, name: &str) -> DateTime<Utc> {
    d.with(user, |c, me| {
        c.vm_create(me, &spec(name), true, None).unwrap()
    });
    Utc::now()
}

/// Bills up to `now` from the admin's core.
fn bill(d: &Desks, now: DateTime<Utc>) -> Vec<vmdesk_core::RuntimeCharge> {
    d.with(&d.admin(), |c, _| c.bill_runtime(now).unwrap())
}

/// A pool VM `vm0` in an active session of a user `bob` (with `credits`),
/// up since the instant returned.
fn bob_in_a_session(d: &Desks, credits: i64) -> (String, DateTime<Utc>) {
    d.pool(1);
    let bob = d.user("bob", false, credits);
    d.with(&bob, |c, me| {
        c.session_open(me, &stores::req(), true).unwrap()
    });
    (bob, Utc::now())
}

/// The credits charged to `user` for running time.
fn runtime_total(d: &Desks, user: &str) -> i64 {
    d.with(&d.admin(), |c, a| {
        c.credits_show(a, Some(user))
            .unwrap()
            .entries
            .iter()
            .filter(|e| e.kind == LedgerKind::Runtime)
            .map(|e| -e.amount)
            .sum()
    })
}

fn balance(d: &Desks, user: &str) -> i64 {
    d.with(user, |c, me| c.credits_show(me, None).unwrap().balance)
}

/// `user`'s own sessions' statuses.
fn sessions(d: &Desks, user: &str) -> Vec<SessionStatus> {
    d.with(user, |c, me| {
        c.session_list(me, false)
            .unwrap()
            .into_iter()
            .map(|s| s.status)
            .collect()
    })
}

/// A second admin `boss`, who takes the first admin's role away.
fn boss_alone(d: &Desks) -> String {
    let boss = d.user("boss", true, 0);
    let a = d.admin();
    d.with(&boss, |c, me| c.user_role(me, &a, Role::User).unwrap());
    boss
}

both!(
    running_time_is_charged_at_the_hourly_rate_with_fractions_carried,
    |d: &Desks| {
        d.pool(0);
        let ann = d.user("ann", false, 100);
        let t0 = running(d, &ann, "w1");
        // 34 credits to create -> 3.4 an hour at the default 10 %.
        bill(d, t0 + Duration::hours(2));
        assert_eq!(runtime_total(d, &ann), 6, "6.8 -> 6, 0.8 carried");
        bill(d, t0 + Duration::hours(3));
        assert_eq!(runtime_total(d, &ann), 10, "3.4 + 0.8 -> 4 more");
        // Billing again at the same instant charges nothing.
        assert!(bill(d, t0 + Duration::hours(3)).is_empty());
        assert_eq!(balance(d, &ann), 100 - 34 - 10);
    }
);

both!(
    nothing_is_billed_while_off_and_a_stop_ends_the_bill,
    |d: &Desks| {
        d.pool(0);
        let ann = d.user("ann", false, 100);
        d.with(&ann, |c, me| {
            c.vm_create(
                me,
                &VmCreate {
                    start: false,
                    ..spec("off")
                },
                true,
                None,
            )
            .unwrap();
        });
        let t0 = running(d, &ann, "w1");
        // Stopped at once: hours later, only the moment it ran is billed.
        d.with(&ann, |c, me| {
            c.vm_action(me, "w1", vmdesk_core::VmAction::Stop).unwrap()
        });
        let charges = bill(d, t0 + Duration::hours(5));
        assert!(charges.iter().all(|c| c.vm == "w1"), "{charges:?}");
        assert!(charges.iter().all(|c| c.seconds < 60), "{charges:?}");
        assert_eq!(runtime_total(d, &ann), 0);
        assert!(bill(d, t0 + Duration::hours(9)).is_empty());
    }
);

both!(
    a_pool_vm_is_billed_to_the_user_of_its_session,
    |d: &Desks| {
        let (bob, t0) = bob_in_a_session(d, 50);
        bill(d, t0 + Duration::hours(1));
        assert_eq!(runtime_total(d, &bob), 3);
        assert_eq!(runtime_total(d, &d.admin()), 0);
    }
);

both!(
    at_zero_the_session_ends_and_the_balance_is_not_overdrawn,
    |d: &Desks| {
        let (bob, t0) = bob_in_a_session(d, 2);
        let charges = bill(d, t0 + Duration::hours(2));
        assert!(charges[0].exhausted);
        assert_eq!(charges[0].credits, 2);
        assert_eq!(balance(d, &bob), 0);
        assert_eq!(sessions(d, &bob), [SessionStatus::Terminating]);
        d.with(&d.admin(), |c, _| c.drive_pending().unwrap());
        assert_eq!(sessions(d, &bob), [SessionStatus::Completed]);
        assert_eq!(d.events_named("credits.exhausted").len(), 1);
    }
);

both!(at_zero_a_users_own_vm_is_stopped, |d: &Desks| {
    d.pool(0);
    let ann = d.user("ann", false, 36);
    let t0 = running(d, &ann, "w1");
    bill(d, t0 + Duration::hours(1));
    d.with(&ann, |c, me| {
        assert_eq!(c.vm_show(me, "w1").unwrap().status, VmStatus::Stopped)
    });
    assert_eq!(balance(d, &ann), 0);
});

both!(a_balance_about_to_run_out_is_warned_of_once, |d: &Desks| {
    d.pool(0);
    let ann = d.user("ann", false, 40);
    let t0 = running(d, &ann, "w1");
    // 6 left after creation; 3.4 an hour: under an hour left after one more hour.
    bill(d, t0 + Duration::minutes(70));
    bill(d, t0 + Duration::minutes(71));
    assert_eq!(d.events_named("credits.low").len(), 1);
});

both!(
    at_zero_a_session_ends_even_when_no_user_is_named_admin_any_more,
    |d: &Desks| {
        let (bob, t0) = bob_in_a_session(d, 2);
        let boss = boss_alone(d);
        d.with(&boss, |c, _| {
            c.bill_runtime(t0 + Duration::hours(2)).unwrap()
        });
        assert_eq!(sessions(d, &bob), [SessionStatus::Terminating]);
    }
);

both!(
    at_zero_a_vm_is_stopped_even_when_no_user_is_named_admin_any_more,
    |d: &Desks| {
        d.pool(0);
        let ann = d.user("ann", false, 36);
        let boss = boss_alone(d);
        let t0 = running(d, &ann, "w1");
        d.with(&boss, |c, _| {
            c.bill_runtime(t0 + Duration::hours(1)).unwrap()
        });
        d.with(&ann, |c, me| {
            assert_eq!(c.vm_show(me, "w1").unwrap().status, VmStatus::Stopped)
        });
        let stop = d.with(&boss, |c, me| {
            c.events(me, 10_000)
                .unwrap()
                .into_iter()
                .find(|e| e.action == "vm.stop")
                .expect("a vm.stop event")
        });
        assert_eq!(stop.actor, "vmdesk", "the system acted, not a user");
    }
);

fn pass(wall: DateTime<Utc>, mono: std::time::Instant) -> vmdesk_core::Pass {
    vmdesk_core::Pass { wall, mono }
}

/// Bills a pass from the admin's core (the same core each time, which
/// remembers its previous pass).
fn bill_pass(
    d: &Desks,
    wall: DateTime<Utc>,
    mono: std::time::Instant,
) -> Vec<vmdesk_core::RuntimeCharge> {
    d.with(&d.admin(), |c, _| c.bill_pass(pass(wall, mono)).unwrap())
}

both!(
    a_wall_clock_jumping_forward_bills_only_the_time_observed,
    |d: &Desks| {
        d.pool(0);
        let ann = d.user("ann", false, 100);
        let t0 = running(d, &ann, "w1");
        let m0 = std::time::Instant::now();
        bill_pass(d, t0, m0);
        // The wall clock leaps 10 hours while one real hour passes.
        let charges = bill_pass(
            d,
            t0 + Duration::hours(11),
            m0 + std::time::Duration::from_secs(3600),
        );
        assert_eq!(charges[0].seconds, 3600);
        assert_eq!(runtime_total(d, &ann), 3, "one hour at 3.4");
        assert_eq!(d.events_named("clock.jump").len(), 1);
    }
);

both!(a_wall_clock_jumping_back_gives_no_free_time, |d: &Desks| {
    d.pool(0);
    let ann = d.user("ann", false, 100);
    // The VM has run for an hour at the first pass.
    let t0 = running(d, &ann, "w1") + Duration::hours(1);
    let m0 = std::time::Instant::now();
    bill_pass(d, t0, m0);
    let before = runtime_total(d, &ann);
    // The wall clock goes back 5 hours while 2 real hours pass.
    let charges = bill_pass(
        d,
        t0 - Duration::hours(3),
        m0 + std::time::Duration::from_secs(7200),
    );
    assert_eq!(charges[0].seconds, 7200);
    assert_eq!(
        runtime_total(d, &ann) - before,
        7,
        "two hours at 3.4 plus 0.4 carried"
    );
    assert_eq!(d.events_named("clock.jump").len(), 1);
    // And the next pass goes on from the corrected clock.
    let next = bill_pass(
        d,
        t0 - Duration::hours(2),
        m0 + std::time::Duration::from_secs(10_800),
    );
    assert_eq!(next[0].seconds, 3600);
});
