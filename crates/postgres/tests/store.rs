//! The team store's set-up and connection: init is idempotent, prices are
//! core's, TLS is verified, and a wrong password is one clear line.
mod common;

use common::{token, Store};
use vmdesk_postgres::{init, schema_version, Target, STEPS};

#[test]
fn init_twice_changes_nothing_the_second_time() {
    let s = Store::new();
    let again = init(&s.superuser_target(), &s.admin, None).expect("second init");
    assert!(!again.created_database);
    assert!(again.applied.is_empty(), "{again:?}");
    assert!(!again.added_admin);
    let mut a = s.admin();
    assert_eq!(schema_version(&mut a).unwrap(), STEPS.len() as i32);
    let admins: i64 = a
        .query_one(
            "SELECT count(*) FROM vmdesk.users WHERE role = 'admin'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(admins, 1);
    // The first admin is a member of the admin group: that is its right.
    let me: String = a
        .query_one("SELECT role FROM vmdesk.whoami()", &[])
        .unwrap()
        .get(0);
    assert_eq!(me, "admin");
    let is_admin: bool = a.query_one("SELECT vmdesk.is_admin()", &[]).unwrap().get(0);
    assert!(is_admin);
}

#[test]
fn the_database_prices_a_vm_as_core_does() {
    let s = Store::new();
    let mut a = s.admin();
    for ram in [64i64, 96, 512, 1000, 1024, 4096, 65536, 1_048_576] {
        for disk in [1i64, 9, 10, 20, 100, 65536] {
            for cpus in [1i64, 2, 3, 64, 256] {
                let db: i64 = a
                    .query_one("SELECT vmdesk.price($1, $2, $3)", &[&ram, &disk, &cpus])
                    .unwrap()
                    .get(0);
                let core = vmdesk_core::quote(ram, disk, cpus).unwrap().cost;
                assert_eq!(db, core, "price of {ram} MB, {disk} GB, {cpus} CPUs");
            }
        }
    }
    let err = a
        .query_one("SELECT vmdesk.price(32, 1, 1)", &[])
        .expect_err("too little memory");
    assert!(vmdesk_postgres::Error::from(err)
        .to_string()
        .contains("memory must be between 64"),);
}

#[test]
fn a_user_password_is_stored_as_scram_and_works() {
    let s = Store::new();
    let (ann, pw) = s.user("ann", false);
    let mut su = s.superuser();
    let stored: String = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&ann],
        )
        .unwrap()
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");
    assert!(!stored.contains(&pw));
    let mut c = s.connect(&ann, &pw);
    let name: String = c
        .query_one("SELECT name FROM vmdesk.whoami()", &[])
        .unwrap()
        .get(0);
    assert_eq!(name, ann);
}

#[test]
fn a_wrong_password_is_one_clear_line() {
    let s = Store::new();
    let (ann, _) = s.user("ann", false);
    let err = s
        .target(&ann, "not-the-password")
        .connect()
        .err()
        .expect("a wrong password is refused");
    let text = err.to_string();
    assert!(text.contains("password authentication failed"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn a_login_of_another_store_cannot_connect_to_this_one() {
    let a = Store::new();
    let b = Store::new();
    let (ann, pw) = a.user("ann", false);
    let err = b
        .target(&ann, &pw)
        .connect()
        .err()
        .expect("not a user of b");
    assert!(err.to_string().contains("permission denied"), "{err}");
}

#[test]
fn tls_with_verify_full_reaches_the_server_and_a_foreign_ca_does_not() {
    let s = Store::new();
    let (ann, pw) = s.user("ann", false);
    let ca = s.cluster.var("VMDESK_PG_CA").to_owned();
    let port = s.cluster.var("VMDESK_PG_PORT").to_owned();
    for host in ["localhost", "127.0.0.1"] {
        let url = format!(
            "postgres://{ann}:{pw}@{host}:{port}/{}?sslmode=verify-full&sslrootcert={ca}",
            s.db
        );
        let mut c = Target::parse(&url)
            .unwrap()
            .connect()
            .expect("TLS connects");
        let ssl: bool = c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(ssl, "the connection is encrypted ({host})");
    }
    // The system's roots do not know the test cluster's CA: refused, not trusted.
    let url = format!(
        "postgres://{ann}:{pw}@localhost:{port}/{}?sslmode=require",
        s.db
    );
    let err = Target::parse(&url)
        .unwrap()
        .connect()
        .err()
        .expect("unknown CA");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[test]
fn init_as_a_plain_user_is_refused_and_makes_nothing() {
    let s = Store::new();
    let (ann, pw) = s.user("ann", false);
    let other = format!("vdt_{}", token(8));
    let t = s.target(&ann, &pw).with_dbname(&other);
    let err = init(&t, &ann, None).expect_err("a plain login cannot create stores");
    assert!(err.to_string().contains("permission denied"), "{err}");
    let mut su = s.superuser();
    let made = su
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&other])
        .unwrap();
    assert!(made.is_none());
}

#[test]
fn a_desk_whose_connection_was_cut_reconnects_and_its_worker_stays_alive() {
    use vmdesk_core::team::prelude::*;
    let s = Store::new();
    let (ann, pw) = s.user("ann", false);
    let desk = vmdesk_postgres::PgStore::connect(s.target(&ann, &pw)).unwrap();
    desk.register_worker("ann-desk-1").unwrap();
    let admin = vmdesk_postgres::PgStore::connect(s.target(&s.admin, &s.admin_pw)).unwrap();
    assert!(admin.worker_alive("ann-desk-1").unwrap());
    // The server ends the desk's session (a restart, a dropped network).
    let cut: i64 = s
        .superuser()
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
            &[&ann],
        )
        .unwrap()
        .get(0);
    assert_eq!(cut, 1);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !admin.worker_alive("ann-desk-1").unwrap(),
        "its lock went with its session"
    );
    // At most the call that meets the cut fails; the next reconnects, and
    // the worker's lock is taken again with the new session.
    let first = desk.whoami();
    let me = match first {
        Ok(u) => u,
        Err(e) => {
            assert_eq!(e.code(), "database", "{e}");
            desk.whoami().expect("reconnected")
        }
    };
    assert_eq!(me.name, ann);
    assert!(admin.worker_alive("ann-desk-1").unwrap());
}
