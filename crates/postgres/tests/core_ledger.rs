//! The credit ledger (moved from crates/core/tests/ledger.rs), on both
//! stores: the embedded SQLite file and a team store on PostgreSQL.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use stores::Desks;
use vmdesk_core::LedgerKind;

both!(
    concurrent_charges_never_overdraw_and_the_balance_is_the_sum,
    |d: &Desks| {
        let cost = vmdesk_core::quote(1024, 20, 2).unwrap().cost;
        let carol = d.user("carol", false, 0);
        let a = d.admin();
        d.with(&a, |c, a| {
            c.credits_grant(a, &carol, cost * 10, "ten VMs").unwrap()
        });
        // 30 charges at once, each through its own connection (as separate
        // processes, or desks, would).
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..30)
                .map(|i| {
                    let carol = &carol;
                    scope.spawn(move || {
                        d.with_another(carol, |c, me| {
                            c.charge(me, me, cost, LedgerKind::VmCreate, &format!("vm {i}"))
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10);
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(e.code(), "insufficient_credits", "{e}");
            assert_eq!(
                e.to_string(),
                format!("not enough credits: the cost is {cost} but the balance of {carol:?} is 0")
            );
        }
        d.with(&carol, |c, me| {
            let statement = c.credits_show(me, None).unwrap();
            assert_eq!(statement.balance, 0);
            assert_eq!(
                statement.entries.iter().map(|e| e.amount).sum::<i64>(),
                statement.balance
            );
            assert_eq!(statement.entries.len(), 11);
        });
    }
);

both!(a_refused_charge_changes_nothing, |d: &Desks| {
    let dan = d.user("dan", false, 20);
    let entries = |d: &Desks| {
        d.with(&dan, |c, me| {
            c.credits_show(me, None).unwrap().entries.len()
        })
    };
    let (ledger, events) = (entries(d), d.events(10_000).len());
    let err = d.with(&dan, |c, me| {
        c.charge(me, me, 21, LedgerKind::VmCreate, "too much")
            .unwrap_err()
    });
    assert_eq!(err.code(), "insufficient_credits");
    assert_eq!(entries(d), ledger, "no ledger entry");
    assert_eq!(d.events(10_000).len(), events, "no event");
    d.with(&dan, |c, me| {
        assert_eq!(c.credits_show(me, None).unwrap().balance, 20)
    });
});

both!(only_an_admin_grants_and_the_grant_is_logged, |d: &Desks| {
    let fay = d.user("fay", false, 0);
    d.with(&fay, |c, me| {
        assert_eq!(
            c.credits_grant(me, me, 100, "self").unwrap_err().code(),
            "admin_only"
        );
        assert!(c.credits_show(me, None).unwrap().entries.is_empty());
    });
    let a = d.admin();
    d.with(&a, |c, a| c.credits_grant(a, &fay, 100, "welcome").unwrap());
    let e = d.events(1).remove(0);
    assert_eq!(
        (e.action.as_str(), e.details["amount"].as_i64()),
        ("credits.grant", Some(100))
    );
});

both!(a_user_sees_only_their_own_credits, |d: &Desks| {
    let gus = d.user("gus", false, 5);
    let hal = d.user("hal", false, 5);
    d.with(&gus, |c, me| {
        assert_eq!(
            c.credits_show(me, Some(&hal)).unwrap_err().code(),
            "admin_only"
        )
    });
    let a = d.admin();
    d.with(&a, |c, a| {
        assert_eq!(c.credits_show(a, Some(&hal)).unwrap().balance, 5)
    });
});
