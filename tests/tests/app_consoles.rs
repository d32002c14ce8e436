//! Consoles have a view of their own, end to end in the real app (WebDriver,
//! Xvfb, real QEMU): an open console does not cover or push down another
//! view, stays connected while another view is shown, marks its tab, scales
//! to fit, says how to leave full screen, and offers Start when its VM is
//! off. A screenshot per step in target/artifacts/.
#![allow(missing_docs)]

use vmdesk_tests::{e2e, Vmdesk};

/// The top of `css` in the window, in CSS pixels, and its height.
async fn rect(app: &e2e::App, css: &str) -> (f64, f64) {
    app.find(css).await;
    let v = app
        .c
        .execute(
            "const r = document.querySelector(arguments[0]).getBoundingClientRect(); return [r.top, r.height];",
            vec![css.into()],
        )
        .await
        .expect("rect");
    (
        v[0].as_f64().unwrap_or(f64::NAN),
        v[1].as_f64().unwrap_or(f64::NAN),
    )
}

#[test]
fn consoles_do_not_cover_other_views() {
    let v = Vmdesk::new();
    v.qemu_and_ann(100);
    let (_, _machine) = v.create_blank("ann", "con1");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = e2e::open(&v, &["--as", "ann", "--view", "launch"], 0, "consoles").await;
        app.open_console("con1").await;
        // The console opened in the Consoles view, its tab marked, scaled to fit.
        app.find(r#"[data-testid="nav-consoles"][aria-current="page"]"#)
            .await;
        app.find(r#".tab.active [data-testid="console-tab-con1"][aria-selected="true"]"#)
            .await;
        assert_eq!(
            app.text(r#"[data-testid="console-scale"]"#).await,
            "Scaled to fit"
        );
        // No OS, so no clipboard agent: the clipboard is typed, and it says so.
        assert_eq!(
            app.text(r#"[data-testid="console-clipboard-mode"]"#).await,
            "Clipboard typed"
        );
        app.shot("console-in-its-view").await;

        // Another view is at the top of the page, the console out of the way
        // (the navigation says one is open).
        app.nav("dashboard").await;
        assert_eq!(
            app.text(r#"[data-testid="consoles-count"]"#).await.trim(),
            "(1 open)"
        );
        let (top, _) = rect(&app, "#dash-h").await;
        assert!(
            top < 120.0,
            "the dashboard's heading is pushed down to {top}px"
        );
        let (_, h) = rect(&app, r#"[data-testid="consoles-view"]"#).await;
        assert_eq!(h, 0.0, "the consoles still take {h}px on the dashboard");
        app.shot("dashboard-at-the-top").await;
        app.nav("vms").await;
        let (top, _) = rect(&app, "main h2").await;
        assert!(
            top < 120.0,
            "the VM list's heading is pushed down to {top}px"
        );
        app.shot("vms-at-the-top").await;

        // Back to the console: still connected (it was never closed).
        app.nav("consoles").await;
        assert_eq!(
            app.text(r#"[data-testid="console-state"]"#).await,
            "connected"
        );
        app.shot("console-still-connected").await;

        // Full screen says how to leave it.
        app.click(r#"[data-testid="console-fullscreen"]"#).await;
        let hint = app
            .wait_text(r#"[data-testid="fullscreen-hint"]"#, "the hint", |s| {
                !s.is_empty()
            })
            .await;
        assert!(
            hint.contains("Press Esc or F11 to leave full screen"),
            "{hint}"
        );
        app.shot("fullscreen-hint").await;
        app.click(r#"[data-testid="fullscreen-hint"] button"#).await;
        app.wait_text(r#"[data-testid="fullscreen-hint"]"#, "no hint", |s| {
            s.is_empty()
        })
        .await;

        // The VM is stopped elsewhere: the tab says so and offers Start.
        v.json(&[
            "--as",
            "ann",
            "--shutdown-timeout",
            "1",
            "vm",
            "stop",
            "con1",
        ]);
        app.wait_text(r#"[data-testid="console-state"]"#, "VM is off", |s| {
            s == "VM is off"
        })
        .await;
        app.shot("vm-off-offers-start").await;
        app.click(r#"[data-testid="console-start"]"#).await;
        app.wait_text(r#"[data-testid="console-state"]"#, "connected again", |s| {
            s == "connected"
        })
        .await;
        assert_eq!(
            v.json(&["--as", "ann", "vm", "show", "con1"])["status"],
            "RUNNING"
        );
        app.shot("started-from-the-tab").await;
        app.close().await;
    });
}
