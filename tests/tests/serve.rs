//! `vmdesk serve` on a team store of the test's own: two serves, one leads
//! (its `serve.lead` event names its pid); the leader is killed with SIGKILL
//! in the middle of its work and the other leads within 5 s; meanwhile a
//! running VM is billed, and never twice for the same interval (the seconds
//! charged never exceed the seconds it ran). A plain user cannot serve.
#![allow(missing_docs, clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmdesk_postgres::testing::Store;
use vmdesk_tests::{bin, KillOnDrop};

/// `vmdesk serve --foreground` as `user`, on a data dir and settings of its own.
fn serve(store: &Store, user: &str, password: &str, dir: &std::path::Path) -> KillOnDrop {
    let settings = dir.join("settings.toml");
    std::fs::write(
        &settings,
        "[sync]\nfast_interval_secs = 1\nfull_interval_secs = 2\n",
    )
    .unwrap();
    KillOnDrop(
        Command::new(bin())
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--config")
            .arg(&settings)
            .arg("--store")
            .arg(store.url(user, None))
            .args(["serve", "--foreground"])
            .env("PGPASSWORD", password)
            .env_remove("VMDESK_USER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vmdesk serve"),
    )
}

/// The pids of the serve.lead events, in order.
fn leads(store: &Store) -> Vec<u32> {
    store
        .superuser()
        .query(
            "SELECT (details->>'pid')::int FROM vmdesk.events WHERE action = 'serve.lead' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i32>(0) as u32)
        .collect()
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// VM `web`'s billing: thousandths of a credit charged (ledger plus the
/// carried fraction), the seconds up to which it is billed, and the
/// thousandths those seconds cost at its rate (1024 MB, 20 GB, 2 CPUs cost
/// 34; 10 % an hour: 3400 thousandths an hour).
fn billing(store: &Store) -> (i64, f64, f64) {
    let r = store
        .superuser()
        .query_one(
            "SELECT (SELECT coalesce(-sum(amount), 0) FROM vmdesk.ledger l WHERE l.vm_id = v.id AND kind = 'runtime')::bigint * 1000
                        + v.billing_milli,
                    coalesce(extract(epoch FROM v.billed_until - v.started_at), 0)::float8
             FROM vmdesk.vms v WHERE name = 'web'",
            &[],
        )
        .unwrap();
    let secs: f64 = r.get(1);
    (r.get(0), secs, secs * 3400.0 / 3600.0)
}

#[test]
fn one_serve_leads_and_another_takes_over_within_seconds_without_billing_twice() {
    let store = Store::new();
    let (ann, _) = store.user("ann", false);
    let mut admin = store.admin();
    admin
        .execute("SELECT vmdesk.credits_grant($1, 100000, 'lab')", &[&ann])
        .unwrap();
    admin
        .execute(
            "SELECT vmdesk.host_add('h', 'libvirt', 'test:///default')",
            &[],
        )
        .unwrap();
    // A VM of ann's that has run for an hour: the machine is the test
    // driver's own running domain "test", which every serve's driver has.
    store
        .superuser()
        .execute(
            "INSERT INTO vmdesk.vms (name, os_type, ram_mb, disk_gb, cpu_cores, vm_type, status, owner_user_id,
                                     host_id, provider_id, started_at)
             SELECT 'web', 'blank', 1024, 20, 2, 'standard', 'RUNNING', u.id, h.id, 'test', now() - interval '1 hour'
             FROM vmdesk.users u, vmdesk.hosts h WHERE u.name = $1 AND h.name = 'h'",
            &[&ann],
        )
        .unwrap();

    // Any user can ask which serve leads: none yet.
    use vmdesk_core::team::prelude::*;
    let (watch, watch_pw) = store.user("watch", false);
    let watcher = vmdesk_postgres::PgStore::connect(store.target(&watch, &watch_pw)).unwrap();
    let leading = || watcher.serve_leader().unwrap().map(|l| l.1 as u32);
    assert_eq!(leading(), None);
    // A plain login grabbing the lead's lock (a key anyone could name once)
    // does not keep the serves from leading: the key is the store's secret.
    let mut squatter = store.connect(&watch, &watch_pw);
    squatter
        .execute("SELECT pg_advisory_lock(7283461, 2)", &[])
        .unwrap();
    assert!(
        squatter
            .query_one("SELECT vmdesk.serve_lock_key()", &[])
            .is_err(),
        "a plain login reads the lead's key"
    );

    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut serves: Vec<KillOnDrop> = dirs
        .iter()
        .map(|d| serve(&store, &store.admin, &store.admin_pw, d.path()))
        .collect();
    let first = wait_for("a serve leads", Duration::from_secs(30), || {
        leads(&store).first().copied()
    });
    assert_eq!(leads(&store).len(), 1, "one leads, the other waits");
    drop(squatter);
    assert_eq!(leading(), Some(first));
    // The hour is billed by the leader.
    wait_for("the first charge", Duration::from_secs(20), || {
        (billing(&store).1 >= 3600.0).then_some(())
    });

    // Killed mid-work: the other leads within 5 s.
    let leader = serves.iter().position(|s| s.0.id() == first).unwrap();
    let killed_at = Instant::now();
    serves[leader].0.kill().unwrap();
    serves[leader].0.wait().unwrap();
    let second = wait_for("the other serve leads", Duration::from_secs(5), || {
        leads(&store).get(1).copied()
    });
    let took = killed_at.elapsed();
    assert_ne!(second, first);
    assert_eq!(second, serves[1 - leader].0.id());
    eprintln!("takeover after the leader's SIGKILL: {took:?}");
    assert_eq!(leading(), Some(second));

    // The new leader goes on billing, and no interval is charged twice:
    // what was charged is what the billed seconds cost (less a thousandth
    // per pass, each rounding down), never more.
    let before = billing(&store).1;
    wait_for(
        "a charge by the new leader",
        Duration::from_secs(10),
        || (billing(&store).1 > before + 1.0).then_some(()),
    );
    let (charged, secs, cost) = billing(&store);
    assert!(
        charged as f64 <= cost + 1.0,
        "{charged} thousandths charged for {secs} s that cost {cost}: an interval was billed twice"
    );
    assert!(
        charged as f64 >= cost - 50.0,
        "{charged} charged for {secs} s that cost {cost}"
    );
    let (balance, sum): (i64, i64) = {
        let r = store
            .superuser()
            .query_one(
                "SELECT u.balance, (SELECT sum(amount)::bigint FROM vmdesk.ledger WHERE user_id = u.id)
                 FROM vmdesk.users u WHERE name = $1",
                &[&ann],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(balance, sum);
    assert!(balance < 100000);
}

#[test]
fn a_plain_user_cannot_serve() {
    let store = Store::new();
    let (ann, pw) = store.user("ann", false);
    let dir = tempfile::tempdir().unwrap();
    let mut s = serve(&store, &ann, &pw, dir.path());
    let status = s
        .exits_within(Duration::from_secs(30))
        .expect("serve ends by itself");
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(s.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("only an administrator may run vmdesk serve"),
        "{err}"
    );
    assert!(leads(&store).is_empty());
}
