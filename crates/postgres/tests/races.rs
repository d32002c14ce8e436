//! Cross-desk races on the team store: many logins, many connections, at
//! once. The database alone keeps the rules: one live session per VM, and a
//! balance never below zero.
mod common;

use std::sync::{Arc, Barrier};

use common::Store;

#[test]
fn two_hundred_concurrent_opens_by_twenty_logins_on_fifty_vms_give_fifty_sessions() {
    let s = Store::new();
    s.pool("lab", 50);
    let logins: Vec<(String, String)> = (0..20).map(|_| s.user("st", false)).collect();
    // Every client connects first, then all ask at the same moment.
    let barrier = Arc::new(Barrier::new(200));
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let (name, pw) = logins[i % 20].clone();
            let target = s.target(&name, &pw);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = target.connect().expect("connect");
                barrier.wait();
                c.query_one(
                    "SELECT vm_id FROM vmdesk.session_open('lab', NULL, NULL, NULL)",
                    &[],
                )
                .map(|r| r.get::<_, i64>(0))
                .map_err(vmdesk_postgres::Error::from)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut vms: Vec<i64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let refusals: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(vms.len(), 50, "sessions opened");
    assert_eq!(refusals.len(), 150);
    for e in &refusals {
        assert_eq!(e.code(), Some("VDA03"), "{e}");
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
        assert!(e.to_string().contains("are in use"), "{e}");
    }
    vms.sort();
    vms.dedup();
    assert_eq!(vms.len(), 50, "no VM was given twice");
    let mut su = s.superuser();
    let (live, doubles): (i64, i64) = {
        let r = su
            .query_one(
                "SELECT count(*),
                        count(*) - count(DISTINCT vm_id)
                 FROM vmdesk.sessions WHERE status IN ('REQUESTED', 'STARTING', 'ACTIVE', 'TERMINATING')",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((live, doubles), (50, 0));
    let opened: i64 = su
        .query_one(
            "SELECT count(*) FROM vmdesk.events WHERE action = 'session.open'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(opened, 50, "one event per session, none for a refusal");
}

#[test]
fn fifty_concurrent_charges_on_a_balance_for_ten_take_exactly_ten() {
    let s = Store::new();
    let (ann, pw) = s.user("ann", false);
    s.admin()
        .execute("SELECT vmdesk.credits_grant($1, 10, 'lab')", &[&ann])
        .unwrap();
    let barrier = Arc::new(Barrier::new(50));
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let target = s.target(&ann, &pw);
            let (barrier, ann) = (barrier.clone(), ann.clone());
            std::thread::spawn(move || {
                let mut c = target.connect().expect("connect");
                barrier.wait();
                c.execute("SELECT vmdesk.charge($1, 1, 'runtime', 'race')", &[&ann])
                    .map_err(vmdesk_postgres::Error::from)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 10);
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(e.code(), Some("VDB01"), "{e}");
    }
    let mut su = s.superuser();
    let r = su
        .query_one(
            "SELECT u.balance, (SELECT sum(amount)::bigint FROM vmdesk.ledger l WHERE l.user_id = u.id)
             FROM vmdesk.users u WHERE name = $1",
            &[&ann],
        )
        .unwrap();
    let (balance, sum): (i64, i64) = (r.get(0), r.get(1));
    assert_eq!(balance, 0);
    assert_eq!(sum, balance);
}

#[test]
fn eight_concurrent_billing_passes_charge_an_interval_once() {
    let s = Store::new();
    let (ann, _) = s.user("ann", false);
    let mut a = s.admin();
    a.execute("SELECT vmdesk.credits_grant($1, 100000, 'lab')", &[&ann])
        .unwrap();
    a.execute(
        "SELECT vmdesk.host_add('h', 'libvirt', 'test:///default')",
        &[],
    )
    .unwrap();
    // Ran for ten hours: 34 credits' VM at 10 % an hour = 34 credits.
    s.superuser()
        .execute(
            "INSERT INTO vmdesk.vms (name, os_type, ram_mb, disk_gb, cpu_cores, vm_type, status, owner_user_id,
                                     host_id, provider_id, started_at)
             SELECT 'web', 'blank', 1024, 20, 2, 'standard', 'RUNNING', u.id, h.id, 'm',
                    '2026-01-01T00:00:00Z'::timestamptz
             FROM vmdesk.users u, vmdesk.hosts h WHERE u.name = $1 AND h.name = 'h'",
            &[&ann],
        )
        .unwrap();
    let id: i64 = a
        .query_one("SELECT id FROM vmdesk.vms WHERE name = 'web'", &[])
        .unwrap()
        .get(0);
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let target = s.target(&s.admin, &s.admin_pw);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = target.connect().expect("connect");
                barrier.wait();
                c.query_one(
                    "SELECT credits FROM vmdesk.bill_vm($1, '2026-01-01T10:00:00Z', NULL, 10, 3600)",
                    &[&id],
                )
                .unwrap()
                .get::<_, Option<i64>>(0)
                .unwrap_or(0)
            })
        })
        .collect();
    let taken: Vec<i64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(taken.iter().sum::<i64>(), 34, "{taken:?}");
    assert_eq!(taken.iter().filter(|t| **t > 0).count(), 1, "{taken:?}");
    let balance: i64 = s
        .superuser()
        .query_one("SELECT balance FROM vmdesk.users WHERE name = $1", &[&ann])
        .unwrap()
        .get(0);
    assert_eq!(balance, 100000 - 34);
}
