//! Team mode from the command line, on a store of each test's own on the
//! test cluster (`scripts/postgres.sh`): `vmdesk login` (a wrong password is
//! one line and keeps nothing; the right one goes to a real GNOME keyring on
//! a private bus and the URL without it to the settings), commands acting as
//! the login, `--as` refused, `logout`, `store init` twice, `user add`'s
//! printed password, TLS with verify-full, libpq's ~/.pgpass, a store that
//! does not answer.
#![allow(missing_docs, clippy::unwrap_used)]

use std::io::Write as _;
use std::process::{Output, Stdio};

use vmdesk_postgres::testing::Store;
use vmdesk_tests::{SessionKeyring, Vmdesk};

/// A desk with a keyring of its own (its HOME too: no ~/.pgpass).
fn desk(keyring: &SessionKeyring) -> Vmdesk {
    let mut v = Vmdesk::new();
    v.env = keyring.env();
    v
}

/// `vmdesk ARGS` with `input` on standard input (a pipe, not a terminal).
fn piped(v: &Vmdesk, args: &[&str], input: &str) -> Output {
    let mut child = v
        .command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vmdesk");
    writeln!(child.stdin.take().expect("stdin"), "{input}").expect("write the password");
    child.wait_with_output().expect("vmdesk ends")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn settings_text(v: &Vmdesk) -> String {
    std::fs::read_to_string(v.settings_path()).unwrap_or_default()
}

/// Everything the store's database holds, as pg_dump writes it.
fn dump(store: &Store) -> String {
    let out = std::process::Command::new("pg_dump")
        .arg("-h")
        .arg(store.cluster.var("VMDESK_PG_HOST"))
        .arg("-p")
        .arg(store.cluster.var("VMDESK_PG_PORT"))
        .arg("-U")
        .arg(store.cluster.var("VMDESK_PG_SUPERUSER"))
        .arg("-d")
        .arg(&store.db)
        .env("PGPASSWORD", store.cluster.var("VMDESK_PG_PASSWORD"))
        .output()
        .expect("pg_dump (postgresql-client)");
    assert!(out.status.success(), "pg_dump: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn a_wrong_password_is_one_line_and_nothing_is_kept() {
    let keyring = SessionKeyring::start();
    let store = Store::new();
    let (ann, _) = store.user("ann", false);
    let v = desk(&keyring);
    let u = store.url(&ann, None);

    let out = piped(&v, &["login", &u], "not-the-password");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!("error: password authentication failed for user \"{ann}\"\n")
    );
    assert!(
        !settings_text(&v).contains("postgres"),
        "{}",
        settings_text(&v)
    );
    // Nothing in the keyring either: the store finds no password.
    let err = v.fails(&["--store", &u, "credits", "show"]);
    assert!(
        err.contains("none was found") && err.contains(&format!("vmdesk login {u}")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_login_keeps_the_password_in_the_keyring_and_acts_as_the_login_until_logout() {
    let keyring = SessionKeyring::start();
    let store = Store::new();
    let (ann, ann_pw) = store.user("ann", false);
    let v = desk(&keyring);
    let u = store.url(&ann, None);

    let out = piped(&v, &["login", &u], &ann_pw);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("logged in to {} as {ann}", store.place())
    );
    let settings = settings_text(&v);
    assert!(
        settings.contains("[store]") && settings.contains(&u),
        "{settings}"
    );
    assert!(
        !settings.contains(&ann_pw),
        "the settings file holds the password"
    );
    assert!(
        !dump(&store).contains(&ann_pw),
        "the database holds the password"
    );

    // Every command acts as the login, with the keyring's password.
    let me = v.json(&["credits", "show"]);
    assert_eq!(me["user"], ann.as_str());
    let admin_url = format!(
        "postgres://{}:{}@{}",
        store.admin,
        store.admin_pw,
        u.split_once('@').unwrap().1
    );
    let admin = desk(&keyring);
    let s = admin.json(&[
        "--store", &admin_url, "credits", "grant", &ann, "70", "--reason", "lab",
    ]);
    assert_eq!(s["balance"], 70);
    assert_eq!(v.json(&["credits", "show"])["balance"], 70);
    let err = v.fails(&["credits", "grant", &ann, "5", "--reason", "self"]);
    assert!(err.contains("admin"), "{err}");
    let status = v.json(&["store", "status"]);
    assert_eq!(status["login"], ann.as_str());
    assert_eq!(status["role"], "user");
    assert_eq!(status["schema_step"], vmdesk_postgres::STEPS.len());

    // --as and VMDESK_USER are refused: you are your login.
    let err = v.fails(&["--as", "admin", "credits", "show"]);
    assert_eq!(
        err.lines().next().unwrap(),
        format!(
            "error: --as: on a team store you act as your login {ann}; log in as another user instead (`vmdesk login postgres://USER@{}`)",
            store.place()
        )
    );
    let out = v
        .command(&["credits", "show"])
        .env("VMDESK_USER", "admin")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--as: on a team store"));

    // Logout: the embedded store again, and the password is gone.
    let out = v.run(&["logout"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("back to the embedded store"));
    assert!(!settings_text(&v).contains("postgres"));
    assert_eq!(v.json(&["credits", "show"])["user"], "admin");
    assert_eq!(v.json(&["store", "status"])["store"], "embedded");
    let err = v.fails(&["--store", &u, "credits", "show"]);
    assert!(err.contains("none was found"), "{err}");
}

#[test]
fn store_init_twice_and_the_printed_password_logs_in() {
    let keyring = SessionKeyring::start();
    let store = Store::new();
    let boss = format!("boss_{}", vmdesk_postgres::testing::token(8));
    store.forget_login(&boss);
    let su = format!(
        "postgres://{}:{}@{}",
        store.cluster.var("VMDESK_PG_SUPERUSER"),
        store.cluster.var("VMDESK_PG_PASSWORD"),
        store.url("x", None).split_once('@').unwrap().1
    );
    let v = desk(&keyring);

    let out = v.run(&["store", "init", &su, "--admin", &boss]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("up to date"), "{said}");
    let password = said
        .split("password: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no password in {said:?}"))
        .to_owned();
    assert!(
        said.contains(&format!("vmdesk login {}", store.url(&boss, None))),
        "{said}"
    );

    let again = v.run(&["store", "init", &su, "--admin", &boss]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let said = text(&again.stdout);
    assert!(
        said.contains(&format!(
            "is up to date, schema step {}",
            vmdesk_postgres::STEPS.len()
        )) && said.contains("already there")
            && !said.contains("password"),
        "{said}"
    );

    let out = piped(&v, &["login", &store.url(&boss, None)], &password);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = v.json(&["store", "status"]);
    assert_eq!(status["login"], boss.as_str());
    assert_eq!(status["role"], "admin");
}

#[test]
fn user_add_prints_a_password_that_logs_in() {
    let keyring = SessionKeyring::start();
    let store = Store::new();
    let admin = desk(&keyring);
    let out = piped(
        &admin,
        &["login", &store.url(&store.admin, None)],
        &store.admin_pw,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let carl = format!("carl_{}", vmdesk_postgres::testing::token(8));
    store.forget_login(&carl);
    let added = admin.json(&["user", "add", &carl, "--credits", "5"]);
    assert_eq!(added["name"], carl.as_str());
    let password = added["password"].as_str().expect("a password").to_owned();
    assert!(password.len() >= 16, "{password}");

    let v = desk(&keyring);
    let out = piped(&v, &["login", &store.url(&carl, None)], &password);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let me = v.json(&["credits", "show"]);
    assert_eq!(
        (me["user"].as_str(), me["balance"].as_i64()),
        (Some(&*carl), Some(5))
    );

    // --no-password: a login without one.
    let dora = format!("dora_{}", vmdesk_postgres::testing::token(8));
    store.forget_login(&dora);
    let added = admin.json(&["user", "add", &dora, "--no-password"]);
    assert!(added["password"].is_null(), "{added}");
}

#[test]
fn a_login_over_tls_verifies_the_server() {
    let keyring = SessionKeyring::start();
    let store = Store::new();
    let (ann, ann_pw) = store.user("ann", false);
    let v = desk(&keyring);
    let u = format!(
        "postgres://{ann}@localhost:{}/{}?sslmode=verify-full&sslrootcert={}",
        store.cluster.var("VMDESK_PG_PORT"),
        store.db,
        store.cluster.var("VMDESK_PG_CA")
    );
    let out = piped(&v, &["login", &u], &ann_pw);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(v.json(&["credits", "show"])["user"], ann.as_str());
}

#[test]
fn the_password_file_is_used_when_private_and_ignored_with_a_warning_otherwise() {
    use std::os::unix::fs::PermissionsExt as _;
    let store = Store::new();
    let (ann, ann_pw) = store.user("ann", false);
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join(".pgpass");
    std::fs::write(
        &file,
        format!(
            "{}:{}:{}:{ann}:{ann_pw}\n",
            store.cluster.var("VMDESK_PG_HOST"),
            store.cluster.var("VMDESK_PG_PORT"),
            store.db
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut v = Vmdesk::new();
    v.env = vec![
        ("HOME".into(), home.path().display().to_string()),
        // No keyring to fall back to.
        (
            "DBUS_SESSION_BUS_ADDRESS".into(),
            "unix:path=/nonexistent".into(),
        ),
    ];
    let u = store.url(&ann, None);
    assert_eq!(
        v.json(&["--store", &u, "credits", "show"])["user"],
        ann.as_str()
    );

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = v.run(&["--store", &u, "credits", "show"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("warning: password file") && err.contains("0600"),
        "{err}"
    );
    assert!(err.contains("none was found"), "{err}");
}

#[test]
fn a_store_that_does_not_answer_is_one_line_naming_it() {
    let v = Vmdesk::new();
    let err = v.fails(&[
        "--store",
        "postgres://ann:pw@127.0.0.1:1/vmdesk?sslmode=disable",
        "credits",
        "show",
    ]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: cannot reach the team store 127.0.0.1:1/vmdesk"),
        "{err}"
    );
    // A URL with a password is refused in the settings, with why.
    v.write_settings("[store]\nurl = \"postgres://ann:pw@127.0.0.1/vmdesk\"\n");
    let err = v.fails(&["credits", "show"]);
    assert!(
        err.contains("store.url") && err.contains("keyring"),
        "{err}"
    );
}
