//! `vmdesk store migrate`: a real embedded data dir, made by the core, copied
//! into a fresh team store; every balance, VM, session and event there, the
//! logins made, a second migration refused, and a migrated user working
//! against the team store through the core's interface.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;
use vmdesk_core::team::prelude::*;
use vmdesk_core::{Core, LedgerKind, SessionRequest, SessionStatus, VmCreate};
use vmdesk_postgres::migrate::{self, Report};
use vmdesk_postgres::testing::{token, Store};
use vmdesk_postgres::PgStore;

/// Migrations make cluster-wide logins (the desk's `admin` among them):
/// one test at a time in this file.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Desk {
    dir: tempfile::TempDir,
    _hosts: common::MemoryFactory,
    core: Core,
    users: Vec<String>,
}

fn req() -> SessionRequest {
    SessionRequest {
        project: "p".into(),
        ..Default::default()
    }
}

/// admin + 3 users (one an admin), grants and charges, a pool of 6 with a
/// workspace, sessions active, closed and pending, an own VM, events.
fn desk() -> Desk {
    let (dir, hosts, core) = common::with_pool(6);
    let tag = token(6);
    let (ann, bob, cid) = (
        format!("ann_{tag}"),
        format!("bob_{tag}"),
        format!("cid_{tag}"),
    );
    core.user_add("admin", &ann, false, 100).unwrap();
    core.user_add("admin", &bob, false, 50).unwrap();
    core.user_add("admin", &cid, true, 0).unwrap();
    core.workspace_create("admin", "w", "p").unwrap();
    core.credits_grant("admin", &ann, 25, "course").unwrap();
    core.credits_grant("admin", &cid, 7, "helper").unwrap();
    core.credits_grant("admin", "admin", 3, "self").unwrap();
    core.charge(&ann, &ann, 30, LedgerKind::Adjustment, "lab fee")
        .unwrap();
    core.charge("admin", &bob, 10, LedgerKind::Adjustment, "late")
        .unwrap();
    // An active session, a closed one, a pending one.
    let s = core.session_open(&ann, &req(), true).unwrap();
    assert_eq!(s.status, SessionStatus::Active);
    let s = core.session_open(&bob, &req(), true).unwrap();
    core.session_close(&bob, s.id, true).unwrap();
    let w = SessionRequest {
        workspace: Some("w".into()),
        ..req()
    };
    core.session_open(&bob, &w, true).unwrap();
    core.session_open(&cid, &req(), false).unwrap();
    // An own VM, paid from ann's credits.
    core.vm_create(
        &ann,
        &VmCreate {
            name: format!("own-{tag}"),
            ram_mb: 512,
            disk_gb: 2,
            cpu_cores: 1,
            os_type: "blank".into(),
            host: Some("h".into()),
            start: false,
        },
        true,
        None,
    )
    .unwrap();
    Desk {
        dir,
        _hosts: hosts,
        core,
        users: vec![ann, bob, cid],
    }
}

fn sqlite(dir: &Path) -> rusqlite::Connection {
    common::db(dir)
}

fn count_sqlite(dir: &Path, table: &str) -> i64 {
    common::count(dir, &format!("SELECT count(*) FROM {table}"))
}

fn count_pg(st: &Store, table: &str) -> i64 {
    st.superuser()
        .query_one(&format!("SELECT count(*) FROM vmdesk.{table}"), &[])
        .unwrap()
        .get(0)
}

const TABLES: &[&str] = &[
    "users",
    "projects",
    "workspaces",
    "hosts",
    "vms",
    "sessions",
    "ledger",
    "events",
    "quarantine",
];

fn migrate_into(st: &Store, dir: &Path) -> Report {
    let report = migrate::from_embedded(dir, &st.superuser_target()).expect("migrate");
    for l in &report.logins_created {
        st.forget_login(l);
    }
    report
}

/// Rows of a query as strings (NULL as "-"), for comparing two stores.
fn rows_sqlite(dir: &Path, sql: &str) -> Vec<Vec<String>> {
    let c = sqlite(dir);
    let mut stmt = c.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        Ok((0..n)
            .map(|i| match r.get_ref(i).unwrap() {
                rusqlite::types::ValueRef::Null => "-".to_owned(),
                rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                other => format!("{other:?}"),
            })
            .collect())
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn rows_pg(st: &Store, sql: &str) -> Vec<Vec<String>> {
    st.superuser()
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i).unwrap_or_else(|| "-".into()))
                .collect()
        })
        .collect()
}

#[test]
fn a_desk_moves_to_an_empty_team_store_with_every_balance_vm_session_and_event() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = desk();
    let dir = d.dir.path();
    let st = Store::new();
    let report = migrate_into(&st, dir);
    println!("{report}");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());

    // Counts, table by table: the report's, the desk's and the store's.
    for t in TABLES {
        let n = count_sqlite(dir, t);
        assert_eq!(report.rows(t), n, "{t} in the report");
        let extra = match *t {
            "users" => 1,  // the store's own first admin
            "events" => 2, // its init and the migration
            _ => 0,
        };
        assert_eq!(count_pg(&st, t), n + extra, "{t} in the team store");
    }
    assert!(report.rows("events") > 10 && report.rows("ledger") == 8);
    assert_eq!(report.balances_checked, 4);
    for kept in ["consoles", "os_images", "settings"] {
        assert!(
            report.skipped.iter().any(|s| s.what == kept),
            "{kept} said to stay on the desk"
        );
    }

    // Every balance equal, and equal to its ledger.
    let desk_bal: HashMap<String, i64> = rows_sqlite(dir, "SELECT name, balance FROM users")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect();
    let mut su = st.superuser();
    for (name, bal) in &desk_bal {
        let row = su
            .query_one(
                "SELECT u.balance, (SELECT coalesce(sum(amount), 0)::bigint FROM vmdesk.ledger l WHERE l.user_id = u.id)
                 FROM vmdesk.users u WHERE name = $1",
                &[name],
            )
            .unwrap();
        let (b, sum): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!((b, sum), (*bal, *bal), "{name}'s balance");
    }
    assert_eq!(report.credits_total, desk_bal.values().sum::<i64>());

    // Rows field by field.
    let same = |what: &str, lite: &str, pg: &str| {
        let (a, b) = (rows_sqlite(dir, lite), rows_pg(&st, pg));
        assert!(!a.is_empty(), "{what}: nothing to compare");
        assert_eq!(a, b, "{what}");
    };
    same(
        "users",
        "SELECT id, name, role, created_at FROM users ORDER BY id",
        "SELECT id::text, name, role, vmdesk.ts(created_at) FROM vmdesk.users WHERE name NOT LIKE 'adm\\_%' ORDER BY id + 0",
    );
    same(
        "vms",
        "SELECT id, name, status, owner_user_id, project_id, host_id, live_session_id, provider_id, worker,
                start_after_create, last_stopped, created_at, updated_at FROM vms ORDER BY id",
        "SELECT id::text, name, status, owner_user_id::text, project_id::text, host_id::text,
                live_session_id::text, provider_id, worker, (start_after_create::int)::text,
                vmdesk.ts(last_stopped), vmdesk.ts(created_at), vmdesk.ts(updated_at) FROM vmdesk.vms ORDER BY id + 0",
    );
    same(
        "sessions",
        "SELECT id, vm_id, user_id, project_id, workspace_id, status, worker, created_at, started_at, ended_at
         FROM sessions ORDER BY id",
        "SELECT id::text, vm_id::text, user_id::text, project_id::text, workspace_id::text, status, worker,
                vmdesk.ts(created_at), vmdesk.ts(started_at), vmdesk.ts(ended_at) FROM vmdesk.sessions ORDER BY id + 0",
    );
    same(
        "ledger",
        "SELECT id, user_id, amount, kind, reason, vm_id, session_id, actor, created_at FROM ledger ORDER BY id",
        "SELECT id::text, user_id::text, amount::text, kind, reason, vm_id::text, session_id::text, actor,
                vmdesk.ts(created_at) FROM vmdesk.ledger ORDER BY id + 0",
    );
    same(
        "events",
        "SELECT id, type, action, severity, actor, vm_id, session_id, created_at FROM events ORDER BY id",
        &format!(
            "SELECT id::text, type, action, severity, actor, vm_id::text, session_id::text, vmdesk.ts(created_at)
             FROM vmdesk.events WHERE id <= {} ORDER BY id + 0",
            count_sqlite(dir, "events")
        ),
    );
    // Details and metadata as JSON values; whom each event is about.
    let lite_details: Vec<Value> = rows_sqlite(dir, "SELECT details FROM events ORDER BY id")
        .into_iter()
        .map(|r| serde_json::from_str(&r[0]).unwrap())
        .collect();
    let pg_details: Vec<Value> = rows_pg(
        &st,
        &format!(
            "SELECT details::text FROM vmdesk.events WHERE id <= {} ORDER BY id + 0",
            lite_details.len()
        ),
    )
    .into_iter()
    .map(|r| serde_json::from_str(&r[0]).unwrap())
    .collect();
    assert_eq!(lite_details, pg_details);
    let ann = &d.users[0];
    let opened: Vec<Vec<String>> = rows_pg(
        &st,
        "SELECT u.name FROM vmdesk.events e JOIN vmdesk.sessions s ON s.id = e.session_id
         JOIN vmdesk.users u ON u.id = e.subject_id WHERE e.action = 'session.open' AND s.user_id = u.id",
    );
    assert_eq!(opened.len() as i64, count_sqlite(dir, "sessions"));
    let granted = rows_pg(
        &st,
        &format!(
            "SELECT count(*)::text FROM vmdesk.events e JOIN vmdesk.users u ON u.id = e.subject_id
             WHERE e.action = 'credits.grant' AND u.name = '{ann}'"
        ),
    );
    assert_eq!(
        granted[0][0], "2",
        "ann's grants (opening and course) are about ann"
    );

    // Identities continue past the copy.
    let next_event: i64 = su
        .query_one(
            "SELECT vmdesk.record('system', 'test', 'info', 'vmdesk', NULL, NULL, NULL, '{}')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(next_event > count_sqlite(dir, "events") + 1);

    // Logins: made for every desk user, each in the store's groups.
    for u in d.users.iter() {
        assert!(report.logins_created.contains(u), "{u} got a login");
    }
    assert!(
        report.logins_created.iter().any(|l| l == "admin")
            || report.logins_existing.iter().any(|l| l == "admin")
    );
    let r = vmdesk_postgres::roles(&st.db);
    let cid = &d.users[2];
    let member = |who: &str, group: &str| -> bool {
        st.superuser()
            .query_one("SELECT pg_has_role($1, $2, 'MEMBER')", &[&who, &group])
            .unwrap()
            .get(0)
    };
    assert!(member(ann, &r.users) && !member(ann, &r.admins));
    assert!(member(cid, &r.admins) && member("admin", &r.admins));

    // A migrated user, given a password, works against the team store.
    let pw = token(16);
    su.batch_execute(&format!("ALTER ROLE \"{ann}\" PASSWORD '{pw}'"))
        .unwrap();
    let store = PgStore::connect(st.target(ann, &pw)).unwrap();
    let statement = store.credits_show(ann).unwrap();
    let desk_statement = d.core.credits_show("admin", Some(ann)).unwrap();
    assert_eq!(statement.balance, desk_bal[ann]);
    assert_eq!(statement.balance, desk_statement.balance);
    let amounts = |s: &vmdesk_core::CreditStatement| -> Vec<(i64, i64, String)> {
        s.entries
            .iter()
            .map(|e| (e.id, e.amount, e.reason.clone()))
            .collect()
    };
    assert_eq!(amounts(&statement), amounts(&desk_statement));
    assert_eq!(store.session_list(false).unwrap().len(), 1);
    assert!(store
        .vm_list(false)
        .unwrap()
        .iter()
        .any(|v| v.owner.as_deref() == Some(ann.as_str())));
    // The store's own first admin still is, under a new id.
    let admin = PgStore::connect(st.target(&st.admin, &st.admin_pw)).unwrap();
    assert_eq!(admin.user_list().unwrap().len(), 5);

    // A second migration is refused and changes nothing.
    let before: Vec<i64> = TABLES.iter().map(|t| count_pg(&st, t)).collect();
    let err = migrate::from_embedded(dir, &st.superuser_target()).unwrap_err();
    assert_eq!(err.code(), Some(migrate::NOT_EMPTY), "{err}");
    assert!(err.to_string().contains("not empty"), "{err}");
    let after: Vec<i64> = TABLES.iter().map(|t| count_pg(&st, t)).collect();
    assert_eq!(before, after);
    assert_eq!(store.credits_show(ann).unwrap().balance, desk_bal[ann]);
}

#[test]
fn a_desk_user_named_like_the_first_admin_becomes_it_and_a_newer_desk_is_refused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let st = Store::new();
    let (dir, _hosts, core) = common::with_pool(1);
    core.user_add("admin", &st.admin, false, 40).unwrap();
    core.charge("admin", &st.admin, 15, LedgerKind::Adjustment, "fee")
        .unwrap();
    // Too new a desk: refused before anything is written.
    let newer = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("vmdesk.db"), newer.path().join("vmdesk.db")).unwrap();
    drop(core);
    sqlite(newer.path())
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = migrate::from_embedded(newer.path(), &st.superuser_target()).unwrap_err();
    assert_eq!(err.code(), Some(migrate::CANNOT_COPY), "{err}");
    assert!(err.to_string().contains("newer"), "{err}");
    let err =
        migrate::from_embedded(Path::new("/nonexistent"), &st.superuser_target()).unwrap_err();
    assert!(err.to_string().contains("no vmdesk store"), "{err}");
    assert_eq!(count_pg(&st, "users"), 1);

    let report = migrate_into(&st, dir.path());
    assert_eq!(report.merged_admin.as_deref(), Some(st.admin.as_str()));
    assert!(!report.logins_created.contains(&st.admin));
    assert_eq!(
        count_pg(&st, "users"),
        2,
        "admin and the first admin, merged"
    );
    let admin = PgStore::connect(st.target(&st.admin, &st.admin_pw)).unwrap();
    let me = admin.whoami().unwrap();
    assert_eq!((me.balance, me.role), (25, vmdesk_core::Role::Admin));
    // Its init event is about it still.
    let about: i64 = st
        .superuser()
        .query_one(
            "SELECT subject_id FROM vmdesk.events WHERE action = 'store.init'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(about, me.id);
}

#[test]
fn a_desk_of_realistic_size_moves_in_well_under_a_few_seconds() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, _hosts, core) = common::with_pool(20);
    let users: Vec<String> = (0..10).map(|i| format!("u{i}_{}", token(5))).collect();
    for u in &users {
        core.user_add("admin", u, false, 0).unwrap();
    }
    // 200 ledger lines: 100 grants and 100 charges.
    for i in 0..100 {
        let u = &users[i % users.len()];
        core.credits_grant("admin", u, 20, "weekly").unwrap();
        core.charge("admin", u, 5, LedgerKind::Adjustment, "fee")
            .unwrap();
    }
    // Sessions opened and closed on the pool.
    for u in users.iter().take(10) {
        let s = core.session_open(u, &req(), true).unwrap();
        if u.starts_with("u1") || u.starts_with("u3") {
            continue;
        }
        core.session_close(u, s.id, true).unwrap();
    }
    // Up to 1000 events in all (the rest as the core records system events).
    let have = count_sqlite(dir.path(), "events");
    let c = sqlite(dir.path());
    for i in have..1000 {
        c.execute(
            "INSERT INTO events (type, action, severity, actor, details, created_at)
             VALUES ('system', 'sync.pass', 'info', 'vmdesk', json_object('pass', ?1), ?2)",
            rusqlite::params![i, "2026-01-01T00:00:00.000Z"],
        )
        .unwrap();
    }
    assert_eq!(count_sqlite(dir.path(), "events"), 1000);
    let st = Store::new();
    let t = Instant::now();
    let report = migrate_into(&st, dir.path());
    let took = t.elapsed();
    println!("{report}");
    println!(
        "migrated {} events, {} ledger lines, {} sessions, {} users in {:?}",
        report.rows("events"),
        report.rows("ledger"),
        report.rows("sessions"),
        report.rows("users"),
        took
    );
    assert_eq!(report.rows("events"), 1000);
    assert_eq!(report.rows("ledger"), 200);
    assert_eq!(report.balances_checked, 11);
    assert!(took.as_secs() < 10, "{took:?}");
}
