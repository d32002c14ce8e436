//! Errors where the person looks: a Settings value that cannot be used shows
//! its error under its field, in words, without moving the Save button or the
//! fields; fixed, the error goes before anything is saved; saved, the result
//! shows beside Save. A user who is not an admin sees only their own
//! settings. Real app under Xvfb through WebDriver, screenshots in
//! target/artifacts/.
#![allow(missing_docs)]

use vmdesk_tests::{e2e, Vmdesk};

const START: &str = r#"[data-testid="field-console.port_start"]"#;
const START_ERROR: &str = r#"[data-testid="error-console.port_start"]"#;
const SAVE: &str = r#"[data-testid="settings-save"]"#;
const RESULT: &str = r#"[data-testid="settings-result"]"#;

/// Where `css` is in the window (viewport coordinates): x, y, width, height.
async fn place(app: &e2e::App, css: &str) -> [f64; 4] {
    app.find(css).await;
    let v = app
        .c
        .execute(
            "const r = document.querySelector(arguments[0]).getBoundingClientRect();
             return [r.x, r.y, r.width, r.height];",
            vec![css.into()],
        )
        .await
        .expect("getBoundingClientRect");
    let n: Vec<f64> = serde_json::from_value(v).expect("four numbers");
    [n[0], n[1], n[2], n[3]]
}

fn same_place(a: [f64; 4], b: [f64; 4], what: &str) {
    assert!(
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1.0),
        "{what} moved: {a:?} -> {b:?}"
    );
}

#[test]
fn an_error_sits_at_its_field_and_clears_when_fixed() {
    let v = Vmdesk::new();
    v.write_settings("[sync]\nenabled = false\n");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = e2e::open(&v, &[], 0, "errors").await;
        app.nav("settings").await;
        app.find(START).await;
        // Bring the console ports into view, as a person scrolling to them.
        app.c
            .execute(
                "document.querySelector(arguments[0]).scrollIntoView({block: 'center'});",
                vec![START.into()],
            )
            .await
            .expect("scroll");
        app.shot("settings").await;
        let save = place(&app, SAVE).await;
        let start = place(&app, START).await;
        let end = place(&app, r#"[data-testid="field-console.port_end"]"#).await;
        let ttl = place(&app, r#"[data-testid="field-console.token_ttl_secs"]"#).await;

        // The first port above the last (6999): refused, at the field.
        app.fill(START, "7000").await;
        app.click(SAVE).await;
        let error = app
            .wait_text(START_ERROR, "the field's error", |t| !t.is_empty())
            .await;
        assert_eq!(
            error,
            "The first console port (7000) must not be above the last one (6999)."
        );
        let invalid = app
            .find(START)
            .await
            .attr("aria-invalid")
            .await
            .expect("aria-invalid");
        assert_eq!(invalid.as_deref(), Some("true"));
        let result = app.text(RESULT).await;
        assert!(result.starts_with("Not saved"), "{result:?}");
        assert!(!result.contains("<="), "{result:?}");
        assert_eq!(
            app.text(r#"[data-testid="page-error"]"#).await,
            "",
            "no page-wide error for a field's value"
        );
        // The error is right under its field, in the field's column.
        let at = place(&app, START_ERROR).await;
        let start_now = place(&app, START).await;
        assert!(
            (at[0] - start_now[0]).abs() < 2.0
                && at[1] > start_now[1]
                && at[1] < start_now[1] + 80.0,
            "the error {at:?} is under its field {start_now:?}"
        );
        // Nothing moved: Save, the field and its neighbours.
        same_place(save, place(&app, SAVE).await, "Save");
        same_place(start, start_now, "the first port");
        same_place(
            end,
            place(&app, r#"[data-testid="field-console.port_end"]"#).await,
            "the last port",
        );
        same_place(
            ttl,
            place(&app, r#"[data-testid="field-console.token_ttl_secs"]"#).await,
            "the token field",
        );
        app.shot("error-at-field").await;
        let untouched = std::fs::read_to_string(v.settings_path()).expect("settings");
        assert!(!untouched.contains("7000"), "nothing saved: {untouched}");

        // Fixed: the error goes as the value is typed, before any save.
        app.fill(START, "6200").await;
        app.wait_text(START_ERROR, "the error gone", str::is_empty)
            .await;
        let invalid = app
            .find(START)
            .await
            .attr("aria-invalid")
            .await
            .expect("aria-invalid");
        assert_eq!(invalid, None);
        same_place(save, place(&app, SAVE).await, "Save");
        app.shot("fixed").await;

        // Saved: the result beside Save, and in the file.
        app.click(SAVE).await;
        app.wait_text(RESULT, "saved", |t| t.starts_with("Settings saved"))
            .await;
        let saved = std::fs::read_to_string(v.settings_path()).expect("settings");
        assert!(saved.contains("port_start = 6200"), "{saved}");
        app.shot("saved").await;

        // An error that is no field's: in the fixed place, moving nothing, and
        // gone with the view.
        const ADD_HOST: &str = r#"[data-testid="settings-hosts"] form.row button[type="submit"]"#;
        app.c
            .execute(
                "document.querySelector(arguments[0]).scrollIntoView({block: 'center'});",
                vec![ADD_HOST.into()],
            )
            .await
            .expect("scroll");
        let save = place(&app, SAVE).await;
        let start = place(&app, START).await;
        app.fill("#host-name", "far").await;
        // An allowed URI that the host then refuses (no TLS certificates here).
        app.fill("#host-uri", "qemu+tls://example.invalid/system")
            .await;
        app.click(ADD_HOST).await;
        let toast = app
            .wait_text(r#"[data-testid="page-error"]"#, "a page error", |t| {
                !t.is_empty()
            })
            .await;
        assert!(toast.contains("far"), "{toast}");
        let at = place(&app, r#"[data-testid="page-error"]"#).await;
        let position: String = serde_json::from_value(
            app.c
                .execute(
                    "return getComputedStyle(document.querySelector('.toasts')).position;",
                    vec![],
                )
                .await
                .expect("style"),
        )
        .expect("a string");
        assert_eq!(position, "fixed", "the error's place is fixed ({at:?})");
        same_place(save, place(&app, SAVE).await, "Save");
        same_place(start, place(&app, START).await, "the first port");
        app.shot("page-error").await;
        app.nav("dashboard").await;
        app.wait_text(
            r#"[data-testid="page-error"]"#,
            "no page error",
            str::is_empty,
        )
        .await;
        app.shot("page-error-gone").await;
        app.close().await;
    });
}

#[test]
fn a_regular_user_sees_only_their_own_settings() {
    let v = Vmdesk::new();
    v.write_settings("[sync]\nenabled = false\n[billing]\nhourly_percent = 25\n");
    v.json(&["user", "add", "ann", "--credits", "50"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = e2e::open(&v, &["--as", "ann"], 1, "errors-user").await;
        app.nav("settings").await;
        app.find(r#"[data-testid="settings-user"]"#).await;
        for admin_only in [
            r#"[data-testid="settings-admin"]"#,
            r#"[data-testid="settings-hosts"]"#,
            r#"[data-testid="field-billing.hourly_percent"]"#,
            r#"[data-testid="field-console.port_start"]"#,
        ] {
            assert!(
                app.c
                    .find(fantoccini::Locator::Css(admin_only))
                    .await
                    .is_err(),
                "{admin_only} is not for a regular user"
            );
        }
        let page = app.text(".settings").await;
        assert!(!page.contains("Per hour"), "no billing rate: {page}");
        app.shot("user-settings").await;

        // Their own part saves, and the admin's part of the file stays.
        app.select("#f-desktop\\.theme", "dark").await;
        app.click(SAVE).await;
        app.wait_text(RESULT, "saved", |t| t.starts_with("Settings saved"))
            .await;
        let saved = std::fs::read_to_string(v.settings_path()).expect("settings");
        assert!(saved.contains("theme = \"dark\""), "{saved}");
        assert!(saved.contains("hourly_percent = 25"), "{saved}");
        app.shot("user-saved-dark").await;
        app.close().await;
    });
}

#[test]
fn events_read_as_sentences_and_the_frame_stays_while_a_view_scrolls() {
    let v = Vmdesk::new();
    v.write_settings("[sync]\nenabled = false\n");
    v.json(&["user", "add", "ann", "--credits", "50"]);
    for i in 0..40 {
        v.json(&[
            "credits",
            "grant",
            "ann",
            "1",
            "--reason",
            &format!("grant {i}"),
        ]);
    }
    v.json(&["host", "add", "local", "--uri", "test:///default"]);
    v.json(&["project", "create", "demo"]);
    v.json(&[
        "vm",
        "add",
        "lab-3",
        "--pool",
        "demo",
        "--host",
        "local",
        "--ram-mb",
        "64",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    // ann may not destroy a pool VM: a warning naming lab-3 (stdin is no
    // terminal: nothing is asked).
    let _ = v
        .command(&["--as", "ann", "vm", "destroy", "lab-3"])
        .output();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = e2e::open(&v, &[], 2, "frame").await;
        app.find(r#"[data-testid="dash-launch"]"#).await;
        app.find(r#"[data-testid="dash-session"]"#).await;
        let warning = app
            .wait_text(r#"[data-testid="dash-warning"]"#, "a warning", |t| {
                t.contains("lab-3")
            })
            .await;
        assert!(warning.contains("ann could not destroy lab-3"), "{warning}");
        app.shot("dashboard").await;
        // The warning's VM is a link to it.
        app.click(r#"[data-testid="dash-warning"] button[aria-label="Details of lab-3"]"#)
            .await;
        app.wait_text("main", "lab-3 detail", |t| t.contains("pool demo"))
            .await;
        app.shot("warning-vm-detail").await;

        app.nav("events").await;
        let first = app
            .wait_text(r#"[data-testid="event-sentence"]"#, "a sentence", |t| {
                !t.is_empty()
            })
            .await;
        assert_eq!(
            first,
            "ann could not destroy lab-3: user \"ann\" may not act on VM lab-3"
        );
        app.find(r#"table.events button[aria-label="Details of lab-3"]"#)
            .await;
        let all = app.text("table.events").await;
        assert!(
            all.contains("admin granted 1 credit to ann: grant 39"),
            "{all}"
        );
        app.shot("events").await;

        // Scrolled to the end, the header and the sidebar are where they were.
        let header = place(&app, "header").await;
        let settings = place(&app, r#"[data-testid="nav-settings"]"#).await;
        app.c
            .execute("window.scrollTo(0, document.body.scrollHeight);", vec![])
            .await
            .expect("scroll");
        let scrolled: f64 = serde_json::from_value(
            app.c
                .execute("return window.scrollY;", vec![])
                .await
                .expect("scrollY"),
        )
        .expect("a number");
        assert!(scrolled > 100.0, "the events scroll: {scrolled}");
        same_place(header, place(&app, "header").await, "the header");
        same_place(
            settings,
            place(&app, r#"[data-testid="nav-settings"]"#).await,
            "the sidebar",
        );
        // No tooltip over the next item: the shortcut is in the item itself.
        let title = app
            .find(r#"[data-testid="nav-credits"]"#)
            .await
            .attr("title")
            .await
            .expect("title");
        assert!(title.unwrap_or_default().is_empty(), "no tooltip");
        app.shot("events-scrolled").await;
        // The sidebar still answers at the bottom of a long page.
        app.nav("credits").await;
        app.find(r#"[data-testid="spending-chart"]"#).await;
        app.shot("credits").await;
        app.close().await;
    });
}
