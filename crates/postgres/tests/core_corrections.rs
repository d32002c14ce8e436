//! An admin's corrections of the ledger (issue 16) and the event filters by
//! user and time, on both stores: adjustments either way never below zero,
//! a failed creation's charge refunded once (also when two desks race for
//! it), events for both.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use stores::Desks;
use vmdesk_core::{EventQuery, LedgerKind, VmStatus};

fn balance(d: &Desks, user: &str) -> i64 {
    d.with(&d.admin(), |c, a| {
        c.credits_show(a, Some(user)).unwrap().balance
    })
}

fn entries(d: &Desks, user: &str) -> usize {
    d.with(&d.admin(), |c, a| {
        c.credits_show(a, Some(user)).unwrap().entries.len()
    })
}

/// `user`'s VM `name`, whose creation the host refused (charged, FAILED_TO_START).
fn failed_creation(d: &Desks, user: &str, name: &str) -> i64 {
    *d.host().refuse_start.lock().unwrap() = true;
    let before = balance(d, user);
    d.with(user, |c, me| {
        c.vm_create(me, &stores::own_vm(name), true, None)
            .unwrap_err()
    });
    *d.host().refuse_start.lock().unwrap() = false;
    let vm = d.with(user, |c, me| c.vm_show(me, name).unwrap());
    assert_eq!(vm.status, VmStatus::FailedToStart);
    before - balance(d, user)
}

both!(
    adjustments_go_either_way_and_never_below_zero,
    |d: &Desks| {
        d.pool(0);
        let ann = d.user("ann", false, 100);
        let admin = d.admin();
        let s = d.with(&admin, |c, a| {
            c.credits_adjust(a, &ann, 50, "a missed grant").unwrap()
        });
        assert_eq!(s.balance, 150);
        let last = s.entries.last().unwrap();
        assert_eq!((last.kind, last.amount), (LedgerKind::Adjustment, 50));
        assert_eq!(last.actor, admin);

        let n = entries(d, &ann);
        let err = d.with(&admin, |c, a| {
            c.credits_adjust(a, &ann, -151, "too much").unwrap_err()
        });
        assert_eq!(err.code(), "below_zero", "{}", err.one_line());
        assert_eq!(
            err.to_string(),
            format!(
                "an adjustment of -151 would take the balance of \"{ann}\" below zero: it is 150"
            )
        );
        assert_eq!((balance(d, &ann), entries(d, &ann)), (150, n));

        let s = d.with(&admin, |c, a| {
            c.credits_adjust(a, &ann, -150, "all of it").unwrap()
        });
        assert_eq!(s.balance, 0);

        for (amount, reason, code) in [(0, "zero", "invalid_input"), (5, "", "invalid_input")] {
            let err = d.with(&admin, |c, a| {
                c.credits_adjust(a, &ann, amount, reason).unwrap_err()
            });
            assert_eq!(err.code(), code, "{}", err.one_line());
        }
        let err = d.with(&ann, |c, me| {
            c.credits_adjust(me, me, 5, "mine").unwrap_err()
        });
        assert_eq!(err.code(), "admin_only");
        assert_eq!(balance(d, &ann), 0);

        let ev = d.events_named("credits.adjust");
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(ev[0].details["user"], ann.as_str());
        assert_eq!(ev[0].actor, admin);
    }
);

both!(a_failed_creations_charge_is_refunded_once, |d: &Desks| {
    d.pool(0);
    let ann = d.user("ann", false, 100);
    let admin = d.admin();
    let charged = failed_creation(d, &ann, "w1");
    assert!(charged > 0);

    let err = d.with(&ann, |c, me| {
        c.credits_refund(me, "w1", "mine").unwrap_err()
    });
    assert_eq!(err.code(), "admin_only");

    let e = d.with(&admin, |c, a| {
        c.credits_refund(a, "w1", "the host refused").unwrap()
    });
    let vm = d.with(&admin, |c, a| c.vm_show(a, "w1").unwrap());
    assert_eq!(
        (e.kind, e.amount, e.vm_id),
        (LedgerKind::Refund, charged, Some(vm.id))
    );
    assert_eq!(vm.metadata["refunded"], e.id);
    assert_eq!(balance(d, &ann), 100);

    let n = entries(d, &ann);
    let err = d.with(&admin, |c, a| {
        c.credits_refund(a, "w1", "again").unwrap_err()
    });
    assert_eq!(err.code(), "not_refundable");
    assert!(
        err.to_string()
            .ends_with(&format!("it was refunded already (ledger entry {})", e.id)),
        "{err}"
    );
    assert_eq!((balance(d, &ann), entries(d, &ann)), (100, n));

    // A VM that was created fine is not refunded.
    d.with(&ann, |c, me| {
        c.vm_create(me, &stores::own_vm("w2"), true, None).unwrap()
    });
    let err = d.with(&admin, |c, a| c.credits_refund(a, "w2", "no").unwrap_err());
    assert_eq!(err.code(), "not_refundable");
    assert!(err.to_string().contains("it is RUNNING"), "{err}");
    let err = d.with(&admin, |c, a| {
        c.credits_refund(a, "nosuch", "no").unwrap_err()
    });
    assert_eq!(err.code(), "unknown_vm");

    let ev = d.events_named("credits.refund");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].vm_id, Some(vm.id));
    assert_eq!(ev[0].details["amount"], charged);
    assert_eq!(ev[0].details["user"], ann.as_str());
});

both!(two_desks_racing_to_refund_refund_once, |d: &Desks| {
    d.pool(0);
    let ann = d.user("ann", false, 100);
    let admin = d.admin();
    let charged = failed_creation(d, &ann, "w1");
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let racers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    d.with_another(&admin, |c, a| {
                        c.credits_refund(a, "w1", "raced")
                            .map(|_| ())
                            .map_err(|e| e.code().to_owned())
                    })
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(c) if c == "not_refundable" || c == "busy")),
        "{results:?}"
    );
    assert_eq!(balance(d, &ann), 100);
    let refunds = d
        .with(&admin, |c, a| {
            c.credits_show(a, Some(&ann)).unwrap().entries
        })
        .into_iter()
        .filter(|e| e.kind == LedgerKind::Refund)
        .map(|e| e.amount)
        .collect::<Vec<_>>();
    assert_eq!(refunds, vec![charged]);
});

both!(events_are_filtered_by_user_and_time, |d: &Desks| {
    d.pool(0);
    let ann = d.user("ann", false, 10);
    let bob = d.user("bob", false, 10);
    let admin = d.admin();
    d.with(&admin, |c, a| {
        c.credits_adjust(a, &bob, 5, "bob's").unwrap()
    });
    let q = |user: Option<&str>, since: Option<&str>| EventQuery {
        limit: 100,
        user: user.map(str::to_owned),
        since: since.map(str::to_owned),
        ..Default::default()
    };
    let about =
        |who: &str, asking: &str| d.with(asking, |c, me| c.events_query(me, &q(Some(who), None)));
    let bobs = about(&bob, &admin).unwrap();
    assert!(!bobs.is_empty());
    assert!(
        bobs.iter()
            .all(|e| e.details["user"] == bob.as_str() || e.actor == bob),
        "{bobs:?}"
    );
    assert!(bobs.iter().any(|e| e.action == "credits.adjust"));
    // bob asks for his own: the same; ann asks for bob's: refused.
    assert_eq!(about(&bob, &bob).unwrap(), bobs);
    assert_eq!(about(&bob, &ann).unwrap_err().code(), "admin_only");
    assert_eq!(about("nobody", &admin).unwrap_err().code(), "unknown_user");

    let all = |since: &str| d.with(&admin, |c, a| c.events_query(a, &q(None, Some(since))));
    assert!(!all("2000-01-01T00:00:00+02:00").unwrap().is_empty());
    assert!(all("2999-01-01T00:00:00Z").unwrap().is_empty());
    assert_eq!(all("monday").unwrap_err().code(), "invalid_input");
    let newest = d.with(&admin, |c, a| c.events(a, 1).unwrap()).remove(0);
    let since_newest = all(&newest.created_at).unwrap();
    assert_eq!(since_newest.first().map(|e| e.id), Some(newest.id));
});
