//! Logging in to a team store, and out, from the window's Settings page
//! (the same code as `vmdesk login`/`logout`), under Xvfb through
//! WebDriver, on an embedded desk with a private OS keyring (a GNOME
//! keyring on a bus of the test's own) and a team store of the test's own
//! (the cluster of scripts/postgres.sh), with a screenshot of each step in
//! target/artifacts/team-login-*.png:
//! - a server that does not answer, and a URL holding a password: the
//!   error under the URL field;
//! - a wrong password: the server's refusal under the password field; the
//!   settings file unchanged and nothing in the keyring;
//! - the right one: "Logged in to … Restart vmdesk …"; the settings file
//!   holds the URL without the password, the keyring the password, and no
//!   file of the data directory holds the password;
//! - the app started again on the same data directory, settings and
//!   keyring (no --store): the header shows the team store and the login;
//! - Log out (confirmed): the settings without `[store] url`, the keyring
//!   entry gone; "Restart now" starts the app again by itself; started
//!   again: "this desk".
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use vmdesk_postgres::testing::Store;
use vmdesk_tests::e2e::{self, App};
use vmdesk_tests::{SessionKeyring, Vmdesk};

const URL_FIELD: &str = r#"[data-testid="store-url"]"#;
const PASSWORD_FIELD: &str = r#"[data-testid="store-password"]"#;
const URL_ERROR: &str = r#"[data-testid="error-store.url"]"#;
const PASSWORD_ERROR: &str = r#"[data-testid="error-store.password"]"#;
const RESULT: &str = r#"[data-testid="store-result-text"]"#;

fn settings_text(v: &Vmdesk) -> String {
    std::fs::read_to_string(v.settings_path()).unwrap()
}

/// Whether some file under `dir` holds `needle`.
fn any_file_holds(dir: &Path, needle: &str) -> Option<String> {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = any_file_holds(&path, needle) {
                return Some(found);
            }
        } else if std::fs::read(&path)
            .map(|b| String::from_utf8_lossy(&b).contains(needle))
            .unwrap_or(false)
        {
            return Some(path.display().to_string());
        }
    }
    None
}

/// Whether a vmdesk process (the app or its status-sync child) still runs
/// on `dir`: a new start waits for it, else the single-instance check
/// would hand the start over to the leaving one.
fn running_on(dir: &Path) -> bool {
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
        std::fs::read(p.path().join("cmdline"))
            .map(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("vmdesk") && c.contains(&dir)
            })
            .unwrap_or(false)
    })
}

/// The app processes (not their status-sync children) on `dir`.
fn apps_on(dir: &Path) -> Vec<u32> {
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let c = std::fs::read(p.path().join("cmdline")).ok()?;
            let args: Vec<String> = c
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (args[0].ends_with("vmdesk")
                && args.contains(&dir)
                && !args.iter().any(|a| a == "sync"))
            .then_some(pid)
        })
        .collect()
}

async fn close_and_wait(app: App, v: &Vmdesk) {
    app.close().await;
    let t = Instant::now();
    while running_on(v.dir.path()) {
        assert!(t.elapsed() < Duration::from_secs(20), "the app did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The header's store mark ("team store", "this desk") and what follows it.
async fn header(app: &App, kind: &str) -> String {
    app.wait_text(r#"[data-testid="store-kind"]"#, kind, |s| {
        s.eq_ignore_ascii_case(kind)
    })
    .await;
    app.text(r#"[data-testid="store"]"#).await
}

/// Fills the login form and sends it.
async fn log_in(app: &App, url: &str, password: &str) {
    app.fill(URL_FIELD, url).await;
    app.fill(PASSWORD_FIELD, password).await;
    app.click(r#"[data-testid="store-login-submit"]"#).await;
}

#[test]
fn a_desk_logs_in_to_a_team_store_and_out_from_the_settings_page() {
    let keyring = SessionKeyring::start();
    let store = Store::new();
    let (ann, ann_pw) = store.user("ann", false);
    let place = store.place();
    let url = format!(
        "postgres://{ann}@{}:{}/{}?sslmode=disable",
        store.cluster.var("VMDESK_PG_HOST"),
        store.cluster.var("VMDESK_PG_PORT"),
        store.db
    );
    let mut v = Vmdesk::new();
    v.env = keyring.env();
    v.write_settings("[sync]\nenabled = false\n");
    let before = settings_text(&v);
    // The keyring holds nothing for the store: no password is found.
    let nothing_kept = |v: &Vmdesk| {
        let err = v.fails(&["--store", &url, "credits", "show"]);
        assert!(err.contains("none was found"), "{err}");
    };

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let a = e2e::open(&v, &[], 0, "team-login-1").await;
        assert_eq!(header(&a, "this desk").await, "admin");
        a.nav("settings").await;
        a.find(r#"[data-testid="store-login"]"#).await;
        a.shot("form").await;

        // A server that does not answer: under the URL.
        log_in(
            &a,
            "postgres://ann@127.0.0.1:1/vmdesk?sslmode=disable",
            "pw",
        )
        .await;
        let e = a
            .wait_text(URL_ERROR, "an unreachable server", |s| !s.is_empty())
            .await;
        assert!(e.starts_with("cannot log in to 127.0.0.1:1/vmdesk"), "{e}");
        assert_eq!(a.text(PASSWORD_ERROR).await, "");
        a.shot("unreachable").await;

        // A URL holding a password: refused under the URL, as the settings do.
        log_in(
            &a,
            &url.replace(&format!("{ann}@"), &format!("{ann}:{ann_pw}@")),
            "x",
        )
        .await;
        let e = a
            .wait_text(URL_ERROR, "a URL with a password", |s| {
                s.contains("password")
            })
            .await;
        assert!(e.contains("must not hold a password"), "{e}");
        a.shot("url-with-password").await;
        assert_eq!(settings_text(&v), before);

        // A wrong password: the server's refusal under the password field.
        log_in(&a, &url, "not-the-password").await;
        let e = a
            .wait_text(PASSWORD_ERROR, "the refusal", |s| !s.is_empty())
            .await;
        assert_eq!(
            e,
            format!("password authentication failed for user \"{ann}\"")
        );
        assert_eq!(a.text(URL_ERROR).await, "");
        // The password field is emptied after each try.
        let typed = a.find(PASSWORD_FIELD).await.prop("value").await.unwrap();
        assert_eq!(typed.as_deref(), Some(""));
        a.shot("wrong-password").await;
        assert_eq!(settings_text(&v), before, "the settings changed");
        nothing_kept(&v);

        // The right one.
        let t = Instant::now();
        log_in(&a, &url, &ann_pw).await;
        let done = a.wait_text(RESULT, "logged in", |s| !s.is_empty()).await;
        println!("login from the window: {:?}", t.elapsed());
        assert_eq!(
            done,
            format!("Logged in to {place} as {ann}. Restart vmdesk to work on the team store.")
        );
        a.find(r#"[data-testid="store-restart"]"#).await;
        a.shot("logged-in").await;
        let settings = settings_text(&v);
        assert!(settings.contains(&format!("url = \"{url}\"")), "{settings}");
        assert!(settings.contains("[sync]"), "{settings}");
        assert!(
            !settings.contains(&ann_pw),
            "the settings hold the password"
        );
        // The keyring's password works (no PGPASSWORD, no ~/.pgpass here).
        let status = v.json(&["store", "status"]);
        assert_eq!(status["login"], ann.as_str(), "{status}");
        assert_eq!(
            any_file_holds(v.dir.path(), &ann_pw),
            None,
            "a file of the data directory holds the password"
        );
        // This run keeps its store until it starts again.
        assert_eq!(header(&a, "this desk").await, "admin");
        close_and_wait(a, &v).await;

        // Started again (no --store): the team store, as ann.
        let b = e2e::open(&v, &[], 1, "team-login-2").await;
        assert_eq!(header(&b, "team store").await, format!("{ann} @ {place}"));
        b.shot("team-header").await;
        b.nav("settings").await;
        let shown = b
            .wait_text(r#"[data-testid="settings-store-url"]"#, "the URL", |s| {
                !s.is_empty()
            })
            .await;
        assert_eq!(shown, url);
        b.find(r#"[data-testid="store-logout"]"#).await;
        b.shot("team-settings").await;
        b.click(r#"[data-testid="store-logout"]"#).await;
        b.find(r#"[data-testid="confirm"]"#).await;
        b.shot("logout-confirm").await;
        b.click(r#"[data-testid="confirm-yes"]"#).await;
        let done = b.wait_text(RESULT, "logged out", |s| !s.is_empty()).await;
        assert_eq!(
            done,
            format!("Logged out of {place}. Restart vmdesk to work on this desk's own store.")
        );
        b.shot("logged-out").await;
        let settings = settings_text(&v);
        assert!(!settings.contains("postgres"), "{settings}");
        assert!(settings.contains("[sync]"), "{settings}");
        nothing_kept(&v);

        // Restart now: the app starts again by itself (a new process on the
        // same data directory, outside the WebDriver session), on this
        // desk's own store; seen on the display, then ended.
        let before = apps_on(v.dir.path());
        assert_eq!(before.len(), 1, "{before:?}");
        // The app goes during the click: WebDriver may answer with an error.
        let _ = b
            .find(r#"[data-testid="store-restart"]"#)
            .await
            .click()
            .await;
        let t = Instant::now();
        let (again, took) = loop {
            let now: Vec<u32> = apps_on(v.dir.path())
                .into_iter()
                .filter(|p| !before.contains(p))
                .collect();
            if let [pid] = now[..] {
                break (pid, t.elapsed());
            }
            assert!(t.elapsed() < Duration::from_secs(20), "no new app: {now:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Its window shows (e2e::open's display of slot 1).
        let display = format!(":{}", 200 + (std::process::id() % 40) * 4 + 1);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            apps_on(v.dir.path()).contains(&again),
            "the restarted app ended"
        );
        let shot = e2e::artifacts().join("team-login-2-05-restarted.png");
        let _ = std::process::Command::new("import")
            .args(["-window", "root"])
            .arg(&shot)
            .env("DISPLAY", &display)
            .status();
        println!(
            "restarted: pid {} -> {again}, {took:?} after the click returned",
            before[0]
        );
        let _ = std::process::Command::new("kill")
            .arg(again.to_string())
            .status();
        close_and_wait(b, &v).await;

        // Started again: this desk's own store.
        let c = e2e::open(&v, &[], 2, "team-login-3").await;
        assert_eq!(header(&c, "this desk").await, "admin");
        c.nav("settings").await;
        c.find(r#"[data-testid="store-login"]"#).await;
        c.shot("this-desk").await;
        close_and_wait(c, &v).await;
    });
}
