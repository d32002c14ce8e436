//! A user with a plain PostgreSQL client (psql) under their own login can do
//! nothing vmdesk's rules would refuse them: each attempt below is refused by
//! the server, and the store is byte for byte what it was.
mod common;

use common::Store;

/// Every table's rows, as text, in a stable order (read by the superuser).
fn snapshot(s: &Store) -> Vec<String> {
    let mut su = s.superuser();
    [
        "users", "projects", "workspaces", "hosts", "vms", "sessions", "ledger", "events", "consoles",
    ]
    .iter()
    .map(|t| {
        su.query_one(
            &format!("SELECT coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '') FROM vmdesk.{t} x"),
            &[],
        )
        .unwrap()
        .get::<_, String>(0)
    })
    .collect()
}

struct World {
    s: Store,
    ann: (String, String),
    bob: (String, String),
    bob_session: i64,
    bob_id: i64,
    pool_vm: i64,
}

fn world() -> World {
    let s = Store::new();
    s.pool("lab", 2);
    let ann = s.user("ann", false);
    let bob = s.user("bob", false);
    let mut a = s.admin();
    for u in [&ann.0, &bob.0] {
        a.execute("SELECT vmdesk.credits_grant($1, 50, 'course')", &[u])
            .unwrap();
    }
    let mut b = s.connect(&bob.0, &bob.1);
    let bob_session: i64 = b
        .query_one(
            "SELECT id FROM vmdesk.session_open('lab', NULL, NULL, NULL)",
            &[],
        )
        .unwrap()
        .get(0);
    let bob_id: i64 = a
        .query_one("SELECT id FROM vmdesk.users WHERE name = $1", &[&bob.0])
        .unwrap()
        .get(0);
    let pool_vm: i64 = a
        .query_one("SELECT min(id) FROM vmdesk.vms", &[])
        .unwrap()
        .get(0);
    World {
        s,
        ann,
        bob,
        bob_session,
        bob_id,
        pool_vm,
    }
}

/// Runs `sql` as `who` with psql and asserts the server refused it with a
/// message containing `why`.
fn refused(w: &World, who: &(String, String), sql: &str, why: &str) {
    let out = w.s.psql(&who.0, &who.1, sql);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ERROR") && err.contains(why),
        "{} was not refused with {why:?}: {sql}\nstdout: {}\nstderr: {err}",
        who.0,
        String::from_utf8_lossy(&out.stdout),
    );
}

fn rows(w: &World, who: &(String, String), sql: &str) -> String {
    let out = w.s.psql(&who.0, &who.1, sql);
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_plain_user_with_psql_is_refused_everything_core_would_refuse() {
    let w = world();
    let before = snapshot(&w.s);
    let ann = &w.ann;
    let admins = vmdesk_postgres::roles(&w.s.db).admins;
    let (sid, bob_id, vm) = (w.bob_session, w.bob_id, w.pool_vm);

    // Credits: no grant to oneself, no charge of another, no balance by hand.
    refused(
        &w,
        ann,
        &format!("SELECT vmdesk.credits_grant('{}', 1000, 'free')", ann.0),
        "only an admin may",
    );
    refused(
        &w,
        ann,
        &format!(
            "SELECT vmdesk.charge('{}', 5, 'adjustment', 'spite')",
            w.bob.0
        ),
        "may not charge the credits of",
    );
    refused(
        &w,
        ann,
        &format!(
            "UPDATE vmdesk.users SET balance = 1000000 WHERE name = '{}'",
            ann.0
        ),
        "permission denied for table users",
    );
    refused(&w, ann, &format!("INSERT INTO vmdesk.ledger (user_id, amount, kind, reason, actor) SELECT id, 1000, 'grant', 'x', 'x' FROM vmdesk.users WHERE name = '{}'", ann.0), "permission denied for table ledger");
    refused(&w, ann, &format!("SELECT vmdesk.debit(u, -1000, 'grant', 'x', 'x', NULL, 'x') FROM vmdesk.users u WHERE name = '{}'", ann.0), "permission denied for function debit");

    // The ledger is append-only: nobody rewrites it, not even an admin.
    refused(
        &w,
        ann,
        "UPDATE vmdesk.ledger SET amount = 1",
        "permission denied for table ledger",
    );
    refused(
        &w,
        ann,
        "DELETE FROM vmdesk.ledger",
        "permission denied for table ledger",
    );
    refused(
        &w,
        ann,
        "TRUNCATE vmdesk.ledger",
        "permission denied for table ledger",
    );
    let admin = (w.s.admin.clone(), w.s.admin_pw.clone());
    refused(
        &w,
        &admin,
        "DELETE FROM vmdesk.ledger",
        "permission denied for table ledger",
    );

    // Another user's session: not taken, not ended, not driven.
    refused(
        &w,
        ann,
        &format!("SELECT vmdesk.session_close({sid}, NULL)"),
        "it is not theirs",
    );
    refused(
        &w,
        ann,
        &format!("SELECT vmdesk.session_advance({sid}, 'FAILED', 'gone')"),
        "it is not theirs",
    );
    refused(&w, ann, &format!("UPDATE vmdesk.sessions SET user_id = (SELECT id FROM vmdesk.users WHERE name = '{}') WHERE id = {sid}", ann.0), "permission denied for table sessions");
    refused(
        &w,
        ann,
        &format!("UPDATE vmdesk.vms SET live_session_id = NULL WHERE id = {vm}"),
        "permission denied for table vms",
    );
    refused(
        &w,
        ann,
        &format!("SELECT vmdesk.vm_set_status({vm}, 'DESTROYED', NULL)"),
        "it is not theirs",
    );

    // Roles, hosts, prices, users: an admin's.
    refused(
        &w,
        ann,
        &format!("SELECT vmdesk.user_role('{}', 'admin')", ann.0),
        "only an admin may",
    );
    refused(
        &w,
        ann,
        &format!("GRANT \"{admins}\" TO \"{}\"", ann.0),
        "must have admin option",
    );
    refused(
        &w,
        ann,
        &format!("SET ROLE \"{admins}\""),
        "permission denied",
    );
    refused(
        &w,
        ann,
        "SELECT vmdesk.user_add('mallory', true, NULL)",
        "only an admin may",
    );
    refused(
        &w,
        ann,
        "SELECT vmdesk.host_add('evil', 'libvirt', 'qemu:///system')",
        "only an admin may",
    );
    refused(
        &w,
        ann,
        "SELECT vmdesk.project_create('mine')",
        "only an admin may",
    );
    refused(
        &w,
        ann,
        "SELECT vmdesk.vm_add('free', 'lab', 'h-lab', 'x', 96, 1, 1, NULL, NULL, NULL)",
        "only an admin may",
    );
    refused(&w, ann, "CREATE OR REPLACE FUNCTION vmdesk.price(bigint, bigint, bigint) RETURNS bigint LANGUAGE sql AS 'SELECT 0::bigint'", "permission denied for schema vmdesk");
    refused(
        &w,
        ann,
        "INSERT INTO vmdesk.hosts (name, kind, uri) VALUES ('evil', 'libvirt', 'qemu:///system')",
        "permission denied for table hosts",
    );

    // The key of the serve's lead is the admins' secret.
    refused(
        &w,
        ann,
        "SELECT vmdesk.serve_lock_key()",
        "only an admin may",
    );
    refused(
        &w,
        ann,
        "SELECT * FROM vmdesk.secrets",
        "permission denied for table secrets",
    );

    // The event log is written by the functions only.
    refused(&w, ann, "INSERT INTO vmdesk.events (type, action, severity, actor) VALUES ('admin', 'fake', 'info', 'bob')", "permission denied for table events");
    refused(
        &w,
        ann,
        "SELECT vmdesk.record('admin', 'fake', 'info', 'bob', NULL, NULL, NULL, '{}')",
        "permission denied for function record",
    );

    // Reading another user's ledger, events or sessions yields nothing; one's
    // own is there (so the filter is not simply "nothing").
    assert_eq!(
        rows(
            &w,
            ann,
            &format!("SELECT count(*) FROM vmdesk.ledger WHERE user_id = {bob_id}")
        ),
        "0"
    );
    assert_eq!(
        rows(
            &w,
            ann,
            &format!(
                "SELECT count(*) FROM vmdesk.events WHERE actor = '{}' OR subject_id = {bob_id}",
                w.bob.0
            )
        ),
        "0"
    );
    assert_eq!(
        rows(
            &w,
            ann,
            &format!("SELECT count(*) FROM vmdesk.sessions WHERE id = {sid}")
        ),
        "0"
    );
    assert_eq!(
        rows(
            &w,
            ann,
            &format!(
                "SELECT count(*) FROM vmdesk.users WHERE name = '{}'",
                w.bob.0
            )
        ),
        "0"
    );
    assert_eq!(rows(&w, ann, "SELECT count(*) FROM vmdesk.ledger"), "1");
    assert_eq!(
        rows(
            &w,
            &w.bob,
            &format!("SELECT count(*) FROM vmdesk.sessions WHERE id = {sid}")
        ),
        "1"
    );

    assert_eq!(
        snapshot(&w.s),
        before,
        "a refused attempt changed the store"
    );
}

#[test]
fn the_ledger_is_append_only_even_for_its_owner() {
    let w = world();
    let mut su = w.s.superuser();
    let err = su
        .batch_execute("DELETE FROM vmdesk.ledger")
        .expect_err("append-only");
    assert!(
        err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"),
        "{err:?}"
    );
    let err = su
        .batch_execute("TRUNCATE vmdesk.ledger CASCADE")
        .expect_err("append-only");
    assert!(format!("{err:?}").contains("append-only"), "{err:?}");
}

#[test]
fn a_user_does_what_is_theirs_and_the_balance_follows_the_ledger() {
    let w = world();
    let mut b = w.s.connect(&w.bob.0, &w.bob.1);
    // Their own session: started and settled by their own desk's worker,
    // closed by them.
    for to in ["STARTING", "ACTIVE"] {
        b.execute(
            "SELECT vmdesk.session_advance($1, $2, NULL)",
            &[&w.bob_session, &to],
        )
        .unwrap();
    }
    let status: String = b
        .query_one(
            "SELECT (s).status FROM vmdesk.session_close($1, NULL)",
            &[&w.bob_session],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "TERMINATING");
    b.execute(
        "SELECT vmdesk.session_advance($1, 'COMPLETED', NULL)",
        &[&w.bob_session],
    )
    .unwrap();
    // A VM of their own, at the database's price: 96 MB, 1 GB, 1 CPU = 12.
    let host = "h-lab";
    b.execute(
        "SELECT vmdesk.vm_create('bobs', $1, 'tiny-linux', 96, 1, 1, true, NULL, NULL)",
        &[&host],
    )
    .unwrap();
    let (balance, sum): (i64, i64) = {
        let r = b
            .query_one(
                "SELECT (SELECT balance FROM vmdesk.whoami()), (SELECT sum(amount)::bigint FROM vmdesk.ledger)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(balance, 50 - 12);
    assert_eq!(sum, balance);
    // Too dear: refused, nothing made, nothing charged.
    let err = b
        .execute(
            "SELECT vmdesk.vm_create('big', $1, 'tiny-linux', 65536, 100, 8, true, NULL, NULL)",
            &[&host],
        )
        .expect_err("not enough credits");
    let err = vmdesk_postgres::Error::from(err);
    assert_eq!(err.code(), Some("VDB01"));
    assert!(err.to_string().starts_with("not enough credits"), "{err}");
    let big: i64 = b
        .query_one("SELECT count(*) FROM vmdesk.vms WHERE name = 'big'", &[])
        .unwrap()
        .get(0);
    assert_eq!(big, 0);
}
