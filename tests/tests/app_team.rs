//! Team mode in the window: two desks (two app instances, two data
//! directories, two logins: the store's admin and ann) on one team store of
//! the test's own (the cluster of scripts/postgres.sh), under Xvfb through
//! WebDriver, with a screenshot of each step in target/artifacts/:
//! - each header shows the store and the login, marked as a team store;
//! - every view of both windows answers without an error (the team store's
//!   blocking client is never called from an async command's thread);
//! - ann opens a session in her window: it shows in the admin's window
//!   within a second, pushed by the database (the page is not reloaded);
//! - the admin grants ann credits in the admin's window: ann's header
//!   balance follows by itself within a second;
//! - the admin adds a user: the login's password is shown once and works;
//! - the settings page shows the store's URL without its password;
//! - the admin sets a pool VM's metadata from its detail.
//!
//! A console on a team store: app_team_console, on the real QEMU host.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use fantoccini::Locator;
use vmdesk_postgres::testing::Store;
use vmdesk_tests::e2e::{self, App};
use vmdesk_tests::Vmdesk;

/// How long a change made on one desk may take to show on the other.
const PUSHED_WITHIN: Duration = Duration::from_secs(1);

/// Whether `css` is on the page now.
async fn present(app: &App, css: &str) -> bool {
    app.c.find(Locator::Css(css)).await.is_ok()
}

/// Polls until `css` is on the page (at most `limit`); how long it took.
async fn appears(app: &App, css: &str, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    loop {
        if present(app, css).await {
            return Some(t.elapsed());
        }
        if t.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The header's balance, as the window holds it.
async fn balance(app: &App) -> Option<i64> {
    let e = app
        .c
        .find(Locator::Css(r#"[data-testid="balance"]"#))
        .await
        .ok()?;
    e.attr("data-value").await.ok()??.parse().ok()
}

/// Marks the page so that a reload (which would lose the mark) is seen.
async fn mark(app: &App) {
    app.c
        .execute("window.__notReloaded = true;", vec![])
        .await
        .expect("mark the page");
}

async fn not_reloaded(app: &App) -> bool {
    app.c
        .execute("return window.__notReloaded === true;", vec![])
        .await
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// Shows each view and fails on any page-level error it brings.
async fn every_view_answers(app: &App, views: &[&str]) {
    for view in views {
        app.nav(view).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let err = app.text(r#"[data-testid="page-error"]"#).await;
        assert!(err.is_empty(), "{view}: {err}");
    }
}

/// The header says which store and who: "LOGIN @ HOST:PORT/DB", marked as a team store.
async fn header_shows(app: &App, login: &str, place: &str) {
    let want = format!("{login} @ {place}");
    app.wait_text(r#"[data-testid="store"]"#, "the store and login", |s| {
        s == want
    })
    .await;
    let kind = app.text(r#"[data-testid="store-kind"]"#).await;
    assert!(kind.eq_ignore_ascii_case("team store"), "{kind:?}");
}

#[test]
fn two_desks_on_one_team_store_see_each_others_changes_pushed() {
    let store = Store::new();
    let (ann, ann_pw) = store.user("ann", false);
    store
        .admin()
        .execute("SELECT vmdesk.credits_grant($1, 50, 'welcome')", &[&ann])
        .unwrap();
    // Blank VMs on a test:///default host: the desk that opens a session
    // defines and starts its VM's machine in its own process (each process
    // has a test:///default of its own).
    store.pool_of("lab", 2, "blank", 128);
    let place = store.place();
    let admin_url = store.url(&store.admin, Some(&store.admin_pw));
    let ann_url = store.url(&ann, Some(&ann_pw));
    let (admin_desk, ann_desk) = (Vmdesk::new(), Vmdesk::new());

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let a = e2e::open(&admin_desk, &["--store", &admin_url], 0, "team-admin").await;
        let b = e2e::open(&ann_desk, &["--store", &ann_url], 1, "team-ann").await;

        // 1. Each header: the team store and the login; ann's balance.
        header_shows(&a, &store.admin, &place).await;
        header_shows(&b, &ann, &place).await;
        b.wait_text(r#"[data-testid="balance"]"#, "50 credits", |s| {
            s == "50 credits"
        })
        .await;
        a.shot("header").await;
        b.shot("header").await;

        // 2. Every view answers in team mode (no blocking call on an async thread).
        every_view_answers(
            &a,
            &["dashboard", "vms", "pools", "events", "credits", "admin", "settings"],
        )
        .await;
        every_view_answers(
            &b,
            &["dashboard", "vms", "pools", "events", "credits", "settings"],
        )
        .await;
        // The settings page: the store's URL without its password, and how to change it.
        let shown = b.text(r#"[data-testid="settings-store-url"]"#).await;
        assert!(shown.contains(&format!("{ann}@")) && shown.contains(&store.db), "{shown}");
        assert!(!shown.contains(&ann_pw), "the window shows the password: {shown}");
        let help = b.text(r#"[data-testid="settings-store-help"]"#).await;
        assert!(help.contains("vmdesk logout") && help.contains("vmdesk login"), "{help}");
        b.shot("settings").await;

        // 3. ann opens a session in her window; the admin's window shows it
        // within a second, pushed (its page is not reloaded).
        a.nav("pools").await;
        b.nav("pools").await;
        a.find(r#"article[aria-label="Pool lab"]"#).await;
        b.find(r#"button[aria-label="Open a session in lab"]"#).await;
        mark(&a).await;
        assert!(
            !present(&a, r#"[data-testid^="session-row-"], [data-testid^="past-status-"]"#).await,
            "a session before ann opened one"
        );
        a.shot("pools-before").await;
        let t0 = Instant::now();
        b.click(r#"button[aria-label="Open a session in lab"]"#).await;
        let clicked = t0.elapsed();
        // Live, or already ended by ann's desk (test:///default has no
        // machine of the pool in ann's process): either way it is there.
        let seen = appears(
            &a,
            r#"[data-testid^="session-row-"], [data-testid^="past-status-"]"#,
            Duration::from_secs(10),
        )
        .await;
        let took = t0.elapsed();
        a.shot("pools-session").await;
        b.shot("pools-session").await;
        let seen = seen.expect("ann's session never showed in the admin's window");
        println!(
            "session opened on ann's desk -> shown in the admin's window: {:?} after the click (the click's own round trip {clicked:?})",
            seen
        );
        assert!(not_reloaded(&a).await, "the admin's page was reloaded");
        let row = a.text(r#"[data-testid^="session-row-"]"#).await
            + &a.text("table.past tbody tr").await;
        assert!(row.contains(&ann) && row.contains("lab-vm"), "{row}");
        assert!(
            took <= PUSHED_WITHIN,
            "the session took {took:?} to reach the admin's window"
        );

        // 4. The admin grants ann credits in the admin's window: ann's
        // header follows by itself within a second.
        a.nav("admin").await;
        a.find(&format!(r#"[data-testid="user-row-{ann}"]"#)).await;
        a.select(r#"select[aria-label="Grant to"]"#, &ann).await;
        a.fill(r#"input[aria-label="Amount"]"#, "25").await;
        a.fill(r#"input[aria-label="Reason"]"#, "lab work").await;
        b.nav("dashboard").await;
        mark(&b).await;
        let before = balance(&b).await.expect("ann's balance");
        let t0 = Instant::now();
        a.click(r#"[data-testid="grant-submit"]"#).await;
        let mut after = before;
        while t0.elapsed() < Duration::from_secs(10) {
            after = balance(&b).await.unwrap_or(before);
            if after != before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = t0.elapsed();
        a.shot("granted").await;
        b.shot("granted").await;
        println!("grant in the admin's window -> ann's header balance {before} -> {after} in {took:?}");
        assert_eq!(after, before + 25, "ann's header did not follow the grant");
        assert!(not_reloaded(&b).await, "ann's page was reloaded");
        assert!(took <= PUSHED_WITHIN, "the grant took {took:?} to reach ann's header");

        // 5. The admin adds a user: the login's password, shown once, works.
        let bob = format!("bob_{}", vmdesk_postgres::testing::token(6));
        store.forget_login(&bob);
        a.fill(r#"input[aria-label="New user's name"]"#, &bob).await;
        a.click(r#"form[aria-label="Add a user"] button[type="submit"]"#).await;
        let pw = a
            .wait_text(r#"[data-testid="new-password-value"]"#, "bob's password", |s| {
                s.len() >= 12
            })
            .await;
        let note = a.text(r#"[data-testid="new-password"]"#).await;
        assert!(note.contains(&format!("vmdesk login postgres://{bob}@")), "{note}");
        a.shot("user-added").await;
        // The blocking client runs a runtime of its own: off this one.
        let who: String = std::thread::scope(|s| {
            s.spawn(|| {
                store
                    .connect(&bob, &pw)
                    .query_one("SELECT name FROM vmdesk.whoami()", &[])
                    .unwrap()
                    .get(0)
            })
            .join()
            .unwrap()
        });
        assert_eq!(who, bob);
        a.click(r#"[data-testid="new-password"] button"#).await;
        assert!(!present(&a, r#"[data-testid="new-password"]"#).await);

        // 6. ann's session is ACTIVE (her desk started its machine).
        b.nav("pools").await;
        b.wait_text(r#"[data-testid^="session-status-"]"#, "ACTIVE", |s| s == "ACTIVE")
            .await;

        // 7. The admin notes something on a pool VM from its detail (VM
        // metadata, kept by the team store): it shows in the table.
        a.nav("vms").await;
        a.click(r#"button[aria-label="Details of lab-vm1"]"#).await;
        a.fill(r#"form[aria-label="Set metadata"] label:nth-of-type(1) input"#, "course")
            .await;
        a.fill(r#"form[aria-label="Set metadata"] label:nth-of-type(2) input"#, "os101")
            .await;
        a.click(r#"form[aria-label="Set metadata"] button[type="submit"]"#)
            .await;
        let table = a
            .wait_text(r#"table[aria-label="Metadata"]"#, "the new metadata", |s| {
                s.contains("course") && s.contains("os101")
            })
            .await;
        assert!(!table.contains("error"), "{table}");
        a.shot("vm-metadata").await;

        a.close().await;
        b.close().await;
    });
}
