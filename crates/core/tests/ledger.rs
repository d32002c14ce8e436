//! The credit ledger on a real SQLite file.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use vmdesk_core::LedgerKind;

#[test]
fn concurrent_charges_never_overdraw_and_the_balance_is_the_sum() {
    let (dir, hosts, core) = with_pool(0);
    let cost = vmdesk_core::quote(1024, 20, 2).unwrap().cost;
    core.user_add("admin", "carol", false, 0).unwrap();
    core.credits_grant("admin", "carol", cost * 10, "ten VMs")
        .unwrap();
    drop(core);
    // 50 charges at once, each through its own connection (as separate processes would).
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (dir, hosts) = (dir.path(), hosts.clone());
                scope.spawn(move || {
                    open(dir, &hosts).charge(
                        "carol",
                        "carol",
                        cost,
                        LedgerKind::VmCreate,
                        &format!("vm {i}"),
                    )
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
            format!("not enough credits: the cost is {cost} but the balance of \"carol\" is 0")
        );
    }
    let core = open(dir.path(), &hosts);
    let statement = core.credits_show("carol", None).unwrap();
    assert_eq!(statement.balance, 0);
    assert_eq!(
        statement.entries.iter().map(|e| e.amount).sum::<i64>(),
        statement.balance
    );
    assert_eq!(statement.entries.len(), 11);
}

#[test]
fn a_refused_charge_changes_nothing() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "dan", false, 20).unwrap();
    let before = count(dir.path(), "SELECT count(*) FROM ledger")
        + count(dir.path(), "SELECT count(*) FROM events");
    let err = core
        .charge("dan", "dan", 21, LedgerKind::VmCreate, "too much")
        .unwrap_err();
    assert_eq!(err.code(), "insufficient_credits");
    let after = count(dir.path(), "SELECT count(*) FROM ledger")
        + count(dir.path(), "SELECT count(*) FROM events");
    assert_eq!(before, after);
    assert_eq!(core.credits_show("dan", None).unwrap().balance, 20);
}

#[test]
fn the_ledger_is_append_only() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "erin", false, 50).unwrap();
    let conn = db(dir.path());
    assert!(conn.execute("UPDATE ledger SET amount = 1000", []).is_err());
    assert!(conn.execute("DELETE FROM ledger", []).is_err());
    assert_eq!(core.credits_show("erin", None).unwrap().balance, 50);
}

#[test]
fn only_an_admin_grants_and_the_grant_is_logged() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "fay", false, 0).unwrap();
    assert_eq!(
        core.credits_grant("fay", "fay", 100, "self")
            .unwrap_err()
            .code(),
        "admin_only"
    );
    assert_eq!(count(dir.path(), "SELECT count(*) FROM ledger"), 0);
    core.credits_grant("admin", "fay", 100, "welcome").unwrap();
    let e = core.events("admin", 1).unwrap().remove(0);
    assert_eq!(
        (e.action.as_str(), e.details["amount"].as_i64()),
        ("credits.grant", Some(100))
    );
}

#[test]
fn a_user_sees_only_their_own_credits() {
    let (_dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "gus", false, 5).unwrap();
    core.user_add("admin", "hal", false, 5).unwrap();
    assert_eq!(
        core.credits_show("gus", Some("hal")).unwrap_err().code(),
        "admin_only"
    );
    assert_eq!(core.credits_show("admin", Some("hal")).unwrap().balance, 5);
}
