//! Many `vmdesk` processes at once on one team store, as many logins: the
//! database alone keeps one live session per VM (as cli_race does on one
//! data directory, with the same figures).
#![allow(missing_docs, clippy::unwrap_used)]

use std::process::Stdio;

use vmdesk_postgres::testing::Store;
use vmdesk_tests::Vmdesk;

#[test]
fn two_hundred_processes_as_twenty_logins_on_a_fifty_vm_pool_get_fifty() {
    let store = Store::new();
    store.pool("race", 50);
    let logins: Vec<(String, String)> = (0..20).map(|_| store.user("st", false)).collect();
    // Each login on a desk of its own.
    let desks: Vec<Vmdesk> = (0..20).map(|_| Vmdesk::new()).collect();
    let url = |(user, pw): &(String, String)| {
        format!(
            "postgres://{user}:{pw}@{}:{}/{}?sslmode=disable",
            store.cluster.var("VMDESK_PG_HOST"),
            store.cluster.var("VMDESK_PG_PORT"),
            store.db
        )
    };
    let children: Vec<_> = (0..200)
        .map(|i| {
            let u = url(&logins[i % 20]);
            desks[i % 20]
                .command(&[
                    "--store",
                    &u,
                    "--json",
                    "session",
                    "open",
                    "--project",
                    "race",
                    "--no-wait",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn vmdesk")
        })
        .collect();
    let outputs = vmdesk_tests::race_outcome(
        children,
        50,
        "error: all 50 VMs of project \"race\" are in use",
    );
    for o in &outputs {
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        assert_eq!(s["status"], "REQUESTED");
    }
    let mut su = store.superuser();
    let r = su
        .query_one(
            "SELECT count(*) FILTER (WHERE status IN ('REQUESTED','STARTING','ACTIVE','TERMINATING')),
                    count(DISTINCT vm_id), count(*), count(DISTINCT user_id)
             FROM vmdesk.sessions",
            &[],
        )
        .unwrap();
    let (live, vms, all, users): (i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
    assert_eq!((live, vms, all), (50, 50, 50), "doubles or extra sessions");
    assert!(users > 1, "sessions from several logins");
}
