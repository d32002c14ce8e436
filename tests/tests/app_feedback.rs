//! Feedback and confirmations in the real app (Xvfb + tauri-driver +
//! WebKitWebDriver) on a real QEMU host, a screenshot per step in
//! target/artifacts/:
//! - a stop shows STOPPING with the countdown to the forced power-off, in
//!   the list and the detail, across a view change, and a second click is
//!   not offered (the guest, `blank`, ignores ACPI: it is forced off);
//! - the VM list at 860 px keeps *Stop* and *Restart* whole;
//! - destroy and close ask first; Escape or Cancel changes nothing (checked
//!   through the CLI); a destroyed VM leaves the list, its metadata is
//!   locked, and the user's own destroy is no warning.
#![allow(missing_docs)]

use vmdesk_tests::{e2e, Machine, Vmdesk};

fn status(vm: &str) -> String {
    format!(r#"[data-testid="vm-status-{vm}"]"#)
}

/// Seconds in "… in 42 s …".
fn seconds(text: &str) -> Option<u64> {
    let after = text.split(" in ").nth(1)?;
    after.split(' ').next()?.parse().ok()
}

fn count(v: &Vmdesk, sql: &str) -> i64 {
    v.count(sql)
}

#[test]
fn a_stop_shows_stopping_with_its_countdown_everywhere_and_blocks_a_second_click() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "qemu", "--uri", &vmdesk_tests::qemu_uri()]);
    v.json(&["credits", "grant", "admin", "1000", "--reason", "tests"]);
    let vm = v.json(&[
        "vm",
        "create",
        "fb-stop",
        "--os",
        "blank",
        "--ram-mb",
        "128",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    let _machine = Machine(vm["provider_id"].as_str().expect("machine").to_owned());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = e2e::open(&v, &["--shutdown-timeout", "15"], 0, "feedback-stop").await;
        app.c.set_window_size(860, 720).await.expect("resize");
        app.nav("vms").await;
        app.wait_text(&status("fb-stop"), "RUNNING", |s| s == "RUNNING")
            .await;
        // At 860 px the actions are whole and in view.
        let fits = app
            .c
            .execute(
                r#"const out = [];
                   for (const l of ["Stop fb-stop", "Restart fb-stop"]) {
                     const b = document.querySelector(`button[aria-label="${l}"]`);
                     const r = b.getBoundingClientRect();
                     out.push([l, r.right <= window.innerWidth, b.scrollWidth <= b.clientWidth + 1,
                               r.right <= b.closest('[role=row]').getBoundingClientRect().right + 1]);
                   }
                   return out;"#,
                vec![],
            )
            .await
            .expect("measure");
        app.shot("running-860px").await;
        for row in fits.as_array().expect("rows") {
            assert_eq!(row[1], true, "{row}: past the window's edge");
            assert_eq!(row[2], true, "{row}: its label is cut");
            assert_eq!(row[3], true, "{row}: outside its row");
        }

        app.click(r#"button[aria-label="Stop fb-stop"]"#).await;
        app.wait_text(&status("fb-stop"), "STOPPING", |s| s == "STOPPING")
            .await;
        let next = app
            .wait_text(r#"[data-testid="vm-next-fb-stop"]"#, "a countdown", |s| {
                s.contains("forcing off in")
            })
            .await;
        let first = seconds(&next).expect("seconds");
        assert!((5..=15).contains(&first), "{next}");
        assert_eq!(
            app.text(r#"button[aria-label="Stop fb-stop"]"#).await,
            "",
            "no second Stop while stopping"
        );
        app.shot("list-stopping").await;
        // The backend says so too, to every process.
        let shown = v.json(&["vm", "show", "fb-stop"]);
        assert_eq!(shown["status"], "STOPPING");
        assert!(shown["metadata"]["force_off_at"].is_string(), "{shown}");
        let err = v.fails(&["vm", "stop", "fb-stop"]);
        assert!(err.contains("already stopping"), "{err}");

        // The detail: the same state, the countdown, every action disabled.
        app.click(r#"button[aria-label="Details of fb-stop"]"#).await;
        app.wait_text(
            r#"[data-testid="detail-status-fb-stop"]"#,
            "STOPPING",
            |s| s == "STOPPING",
        )
        .await;
        let detail = app
            .wait_text(r#"[data-testid="detail-next-fb-stop"]"#, "a countdown", |s| {
                s.contains("forcing off in")
            })
            .await;
        for b in ["Stop", "Restart", "Destroy", "Start"] {
            let e = app.find(&format!(r#"button[aria-label="{b} fb-stop"]"#)).await;
            assert!(
                !e.is_enabled().await.expect("enabled?"),
                "{b} is enabled while stopping"
            );
        }
        app.shot("detail-stopping").await;

        // Another view and back: still STOPPING (the backend's state), counting down.
        app.nav("dashboard").await;
        app.shot("away").await;
        app.nav("vms").await;
        app.wait_text(&status("fb-stop"), "STOPPING", |s| s == "STOPPING")
            .await;
        let later = app
            .wait_text(r#"[data-testid="vm-next-fb-stop"]"#, "a lower count", |s| {
                seconds(s).is_some_and(|n| n < first)
            })
            .await;
        assert_eq!(
            app.text(r#"button[aria-label="Stop fb-stop"]"#).await,
            "",
            "Stop is back after a view change"
        );
        app.shot("back-still-stopping").await;
        eprintln!("detail said {detail:?}, then {later:?}");

        app.wait_text(&status("fb-stop"), "STOPPED", |s| s == "STOPPED")
            .await;
        app.shot("stopped").await;
        app.close().await;
    });
    assert_eq!(v.json(&["vm", "show", "fb-stop"])["status"], "STOPPED");
    assert_eq!(
        count(&v, "SELECT count(*) FROM events WHERE action = 'vm.stop'"),
        1,
        "one vm.stop event"
    );
    assert_eq!(
        count(
            &v,
            "SELECT count(*) FROM events WHERE action = 'vm.stop.failed'"
        ),
        0,
        "the refused second stop is no failure"
    );
}

#[test]
fn destroy_and_close_ask_and_cancelling_changes_nothing() {
    let v = Vmdesk::new();
    let (_, _pool_machine) = v.qemu_pool_vm("fb-pool");
    let vm = v.json(&[
        "vm",
        "create",
        "fb-del",
        "--os",
        "blank",
        "--ram-mb",
        "128",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
        "--no-start",
    ]);
    let _machine = Machine(vm["provider_id"].as_str().expect("machine").to_owned());
    v.json(&["user", "add", "ann"]);
    let s = v.json(&["session", "open", "--project", "lab"]);
    let id = s["id"].as_i64().expect("a session");
    assert_eq!(s["status"], "ACTIVE", "{s}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = e2e::open(&v, &["--shutdown-timeout", "8"], 1, "feedback-ask").await;
        app.nav("vms").await;
        app.wait_text(&status("fb-del"), "STOPPED", |s| s == "STOPPED")
            .await;
        // The pool VM points to Pools & sessions.
        let hint = app.find(r#"[data-testid="vm-row-fb-pool"] .hint"#).await;
        assert!(
            hint.text()
                .await
                .expect("text")
                .contains("Pools & sessions"),
            "no hint toward Pools & sessions"
        );
        app.shot("list").await;

        // Destroy asks: a labelled modal, focus on Cancel; Escape says no.
        app.click(r#"button[aria-label="Details of fb-del"]"#).await;
        let before = v.snapshot();
        app.click(r#"button[aria-label="Destroy fb-del"]"#).await;
        let dialog = app.find(r#"[data-testid="confirm"]"#).await;
        assert_eq!(
            dialog.attr("aria-modal").await.ok().flatten().as_deref(),
            Some("true")
        );
        let text = dialog.text().await.expect("text");
        assert!(text.contains("Destroy fb-del?"), "{text}");
        assert!(text.contains("disk is deleted"), "{text}");
        assert!(text.contains("not refunded"), "{text}");
        let focused = app
            .c
            .execute(
                r#"const d = document.querySelector('[data-testid="confirm"]');
                   const t = document.getElementById(d.getAttribute('aria-labelledby'));
                   return [document.activeElement.dataset.testid, t && t.textContent];"#,
                vec![],
            )
            .await
            .expect("focus");
        assert_eq!(focused[0], "confirm-no", "focus starts on Cancel");
        assert_eq!(focused[1], "Destroy fb-del?", "labelled by its title");
        app.shot("destroy-asks").await;
        // Tab stays inside the dialog.
        for _ in 0..3 {
            app.c
                .active_element()
                .await
                .expect("focus")
                .send_keys("\u{E004}")
                .await
                .expect("tab");
        }
        let inside = app
            .c
            .execute(
                r#"return !!document.activeElement.closest('[data-testid="confirm"]');"#,
                vec![],
            )
            .await
            .expect("focus");
        assert_eq!(inside, true, "Tab left the dialog");
        app.c
            .active_element()
            .await
            .expect("focus")
            .send_keys("\u{E00C}")
            .await
            .expect("escape");
        app.wait_text(r#"[data-testid="confirm"]"#, "the dialog to go", |s| {
            s.is_empty()
        })
        .await;
        // Escape closed the question only, not the detail.
        app.find(r#"[data-testid="detail-status-fb-del"]"#).await;
        app.shot("destroy-escaped").await;
        assert_eq!(v.snapshot(), before, "Escape changed something");
        // Cancel says no too.
        app.click(r#"button[aria-label="Destroy fb-del"]"#).await;
        app.click(r#"[data-testid="confirm-no"]"#).await;
        app.wait_text(r#"[data-testid="confirm"]"#, "the dialog to go", |s| {
            s.is_empty()
        })
        .await;
        assert_eq!(v.snapshot(), before, "Cancel changed something");
        assert_eq!(v.json(&["vm", "show", "fb-del"])["status"], "STOPPED");

        // Yes destroys: no host error line, the metadata editor is locked.
        let warnings_before = count(
            &v,
            "SELECT count(*) FROM events WHERE severity IN ('warning', 'critical')",
        );
        app.click(r#"button[aria-label="Destroy fb-del"]"#).await;
        app.click(r#"[data-testid="confirm-yes"]"#).await;
        app.wait_text(
            r#"[data-testid="detail-status-fb-del"]"#,
            "DESTROYED",
            |s| s == "DESTROYED",
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let detail = app.text(r#"article.detail"#).await;
        assert!(
            !detail.to_lowercase().contains("error") && !detail.contains("not found"),
            "a host error line after the destroy: {detail}"
        );
        let set = app.find(r#"form[aria-label="Set metadata"] button"#).await;
        assert!(
            !set.is_enabled().await.expect("enabled?"),
            "metadata editable on a destroyed VM"
        );
        app.shot("destroyed-detail").await;
        assert_eq!(
            count(
                &v,
                "SELECT count(*) FROM events WHERE severity IN ('warning', 'critical')"
            ),
            warnings_before,
            "the user's own destroy raised a warning"
        );
        // Out of the list unless asked for.
        app.nav("vms").await;
        app.find(r#"[data-testid="vm-row-fb-pool"]"#).await;
        assert_eq!(
            app.text(&status("fb-del")).await,
            "",
            "a destroyed VM listed"
        );
        app.click(r#"label.check input[type="checkbox"]"#).await;
        app.wait_text(&status("fb-del"), "DESTROYED", |s| s == "DESTROYED")
            .await;
        app.shot("show-destroyed").await;

        // Closing a session asks; Cancel leaves it ACTIVE.
        app.nav("pools").await;
        let cell = format!(r#"[data-testid="session-status-{id}"]"#);
        app.wait_text(&cell, "ACTIVE", |s| s == "ACTIVE").await;
        let before = v.snapshot();
        app.click(&format!(r#"button[aria-label="Close session {id}"]"#))
            .await;
        let text = app
            .wait_text(r#"[data-testid="confirm"]"#, "the question", |s| {
                !s.is_empty()
            })
            .await;
        assert!(text.contains(&format!("Close session {id}?")), "{text}");
        assert!(text.contains("shut down"), "{text}");
        app.shot("close-asks").await;
        app.click(r#"[data-testid="confirm-no"]"#).await;
        app.wait_text(r#"[data-testid="confirm"]"#, "the dialog to go", |s| {
            s.is_empty()
        })
        .await;
        assert_eq!(v.snapshot(), before, "a cancelled close changed something");
        assert_eq!(v.json(&["session", "list"])[0]["status"], "ACTIVE");
        app.shot("close-cancelled").await;
        // What the session costs while it runs, priced by the core.
        let rate = app
            .wait_text(
                &format!(r#"[data-testid="session-rate-{id}"]"#),
                "a price per hour",
                |s| s.ends_with("credits/h"),
            )
            .await;
        assert!(rate.starts_with(|c: char| c.is_ascii_digit()), "{rate}");

        // Yes: TERMINATING, with when the guest is forced off, then COMPLETED.
        app.click(&format!(r#"button[aria-label="Close session {id}"]"#))
            .await;
        app.click(r#"[data-testid="confirm-yes"]"#).await;
        app.wait_text(&cell, "TERMINATING", |s| s == "TERMINATING")
            .await;
        app.wait_text(
            &format!(r#"[data-testid="session-next-{id}"]"#),
            "a countdown",
            |s| s.contains("forcing the guest off in"),
        )
        .await;
        app.shot("closing").await;
        app.wait_text(
            &format!(r#"[data-testid="past-status-{id}"]"#),
            "COMPLETED",
            |s| s == "COMPLETED",
        )
        .await;
        app.shot("closed").await;

        // A role change asks; Cancel puts the choice back and changes nothing.
        app.nav("admin").await;
        let role = r#"select[aria-label="Role of ann"]"#;
        app.select(role, "admin").await;
        let text = app
            .wait_text(r#"[data-testid="confirm"]"#, "the question", |s| {
                !s.is_empty()
            })
            .await;
        assert!(text.contains("Make ann an admin?"), "{text}");
        app.shot("role-asks").await;
        app.click(r#"[data-testid="confirm-no"]"#).await;
        app.wait_text(r#"[data-testid="confirm"]"#, "the dialog to go", |s| {
            s.is_empty()
        })
        .await;
        let shown = app.find(role).await.prop("value").await.ok().flatten();
        assert_eq!(
            shown.as_deref(),
            Some("user"),
            "the select kept the cancelled role"
        );
        let users = v.json(&["user", "list"]);
        let ann = users
            .as_array()
            .and_then(|u| u.iter().find(|u| u["name"] == "ann"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(ann["role"], "user", "{users}");
        app.shot("role-cancelled").await;
        app.close().await;
    });
}
