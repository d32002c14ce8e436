//! The desktop journeys, end to end in the real app (Xvfb + tauri-driver +
//! WebKitWebDriver) on a real QEMU host, with a screenshot of each step in
//! target/artifacts/:
//! - launch a VM from the form: progress, RUNNING, its console connects,
//!   its detail draws live CPU and memory graphs, its owner chooses idle
//!   shutdown there, stop, STOPPED (the list follows by its changes);
//! - open and close a pool session;
//! - an admin grants credits and the balances update live (also when the
//!   grant comes from another process);
//! - bad form input shows the core's error and creates nothing.
#![allow(missing_docs)]

use vmdesk_tests::{e2e, Machine, Vmdesk};

fn status(vm: &str) -> String {
    format!(r#"[data-testid="vm-status-{vm}"]"#)
}

#[test]
fn a_vm_launched_from_the_form_runs_shows_its_console_and_stops() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "qemu", "--uri", &vmdesk_tests::qemu_uri()]);
    v.json(&["credits", "grant", "admin", "1000", "--reason", "tests"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let machine = rt.block_on(async {
        let app = e2e::open(&v, &["--shutdown-timeout", "2"], 0, "launch").await;
        app.nav("launch").await;
        app.fill(r#"[data-testid="launch-name"]"#, "e2e-box").await;
        app.fill(r#"[data-testid="launch-ram"]"#, "128").await;
        app.fill(r#"[data-testid="launch-disk"]"#, "1").await;
        app.fill(r#"[data-testid="launch-cpus"]"#, "1").await;
        // Record every progress bar the window shows, however briefly.
        app.c
            .execute(
                r#"window.__progress = [];
                   new MutationObserver(() => {
                     for (const p of document.querySelectorAll('progress[data-testid^="progress-"]'))
                       window.__progress.push([p.dataset.testid, Number(p.value), Number(p.max)]);
                   }).observe(document.body, {subtree: true, childList: true, attributes: true});"#,
                vec![],
            )
            .await
            .expect("watch progress");
        app.shot("form").await;
        app.click(r#"[data-testid="launch-submit"]"#).await;
        app.wait_text(&status("e2e-box"), "RUNNING", |s| s == "RUNNING")
            .await;
        app.shot("running").await;
        let seen = app
            .c
            .execute("return window.__progress;", vec![])
            .await
            .expect("progress seen");
        let seen = seen.as_array().cloned().unwrap_or_default();
        assert!(
            seen.iter()
                .any(|p| p[0] == "progress-e2e-box" && p[1].as_f64() < p[2].as_f64()),
            "no progress shown while creating: {seen:?}"
        );
        let vm = v.json(&["vm", "show", "e2e-box"]);
        let machine = Machine(vm["provider_id"].as_str().expect("machine").to_owned());
        assert_eq!(vm["status"], "RUNNING");

        app.nav("vms").await;
        app.open_console("e2e-box").await;
        app.shot("console").await;

        // Its detail draws live CPU and memory graphs from libvirt's counters.
        app.nav("vms").await;
        app.click(r#"button[aria-label="Details of e2e-box"]"#).await;
        for graph in ["cpu-graph", "mem-graph"] {
            let t = std::time::Instant::now();
            loop {
                let d = app
                    .find(&format!(r#"[data-testid="{graph}"] path"#))
                    .await
                    .attr("d")
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                if d.contains('L') {
                    break;
                }
                assert!(t.elapsed() < e2e::STEP, "{graph} has no line: {d:?}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        app.shot("detail-graphs").await;

        // The owner chooses idle shutdown for it, in its detail.
        app.click(r#"[data-testid="idle-on-e2e-box"]"#).await;
        app.fill(r#"[data-testid="idle-minutes-e2e-box"]"#, "45").await;
        app.click(r#"form[aria-label="Idle shutdown of e2e-box"] button[type="submit"]"#)
            .await;
        app.wait_text(
            r#"form[aria-label="Idle shutdown of e2e-box"] [role="status"]"#,
            "idle shutdown saved",
            |s| s == "Saved: stops after 45 idle minutes",
        )
        .await;
        app.shot("idle-shutdown").await;
        assert_eq!(
            v.json(&["vm", "show", "e2e-box"])["metadata"]["idle_stop_minutes"],
            "45"
        );

        app.nav("vms").await;
        app.click(r#"button[aria-label="Stop e2e-box"]"#).await;
        app.wait_text(&status("e2e-box"), "STOPPED", |s| s == "STOPPED")
            .await;
        app.shot("stopped").await;
        assert_eq!(v.json(&["vm", "show", "e2e-box"])["status"], "STOPPED");
        app.close().await;
        machine
    });
    drop(machine);
}

#[test]
fn pool_session_grants_and_bad_input_in_the_window() {
    let v = Vmdesk::new();
    let (_machine, _cleanup) = v.qemu_pool_vm("e2e-pool");
    v.json(&["user", "add", "ann"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = e2e::open(&v, &["--shutdown-timeout", "2"], 1, "desk").await;

        // A pool session: open, ACTIVE, close.
        app.nav("pools").await;
        app.click(r#"button[aria-label="Open a session in lab"]"#)
            .await;
        let sessions = v.json(&["session", "list"]);
        let id = sessions[0]["id"].as_i64().expect("a session");
        let cell = format!(r#"[data-testid="session-status-{id}"]"#);
        app.wait_text(&cell, "ACTIVE", |s| s == "ACTIVE").await;
        app.shot("session-active").await;
        app.click(&format!(r#"button[aria-label="Close session {id}"]"#))
            .await;
        // Closing asks first (the guest is shut down).
        app.click(r#"[data-testid="confirm-yes"]"#).await;
        app.wait_text(
            &format!(r#"[data-testid="past-status-{id}"]"#),
            "COMPLETED",
            |s| s == "COMPLETED",
        )
        .await;
        assert_eq!(app.text(&cell).await, "", "no longer a live session");
        app.shot("session-closed").await;
        let s = v.json(&["session", "list"]);
        assert_eq!(s[0]["status"], "COMPLETED", "{s}");

        // The admin grants ann credits: her balance updates in the table.
        app.nav("admin").await;
        app.wait_text(r#"[data-testid="user-balance-ann"]"#, "0", |s| s == "0")
            .await;
        app.select(r#"select[aria-label="Grant to"]"#, "ann").await;
        app.fill(r#"input[aria-label="Amount"]"#, "250").await;
        app.fill(r#"input[aria-label="Reason"]"#, "e2e").await;
        app.click(r#"[data-testid="grant-submit"]"#).await;
        app.wait_text(r#"[data-testid="user-balance-ann"]"#, "250", |s| {
            s.replace(',', "") == "250"
        })
        .await;
        app.shot("granted").await;
        assert_eq!(v.json(&["credits", "show", "ann"])["balance"], 250);

        // A grant from another process (the CLI) shows in the header by itself.
        let before = v.json(&["credits", "show"])["balance"]
            .as_i64()
            .expect("balance");
        v.json(&["credits", "grant", "admin", "7", "--reason", "live"]);
        let want = (before + 7).to_string();
        let balance = app.find(r#"[data-testid="balance"]"#).await;
        let t = std::time::Instant::now();
        loop {
            let value = balance.attr("data-value").await.ok().flatten();
            if value.as_deref() == Some(want.as_str()) {
                break;
            }
            assert!(
                t.elapsed() < e2e::STEP,
                "header balance {value:?}, not {want}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        app.shot("balance-live").await;

        // Bad input: the core's sentence is shown and nothing is created.
        let vms_before = v.json(&["vm", "list"]).as_array().map(Vec::len);
        let balance_before = v.json(&["credits", "show"])["balance"].clone();
        app.nav("launch").await;
        app.fill(r#"[data-testid="launch-name"]"#, "bad name!")
            .await;
        app.fill(r#"[data-testid="launch-ram"]"#, "128").await;
        app.fill(r#"[data-testid="launch-disk"]"#, "1").await;
        app.fill(r#"[data-testid="launch-cpus"]"#, "1").await;
        // The core's sentence beside the name as it is typed; Create stays disabled.
        let text = app
            .wait_text(
                r#"[data-testid="launch-name-error"]"#,
                "the name's error",
                |s| !s.is_empty(),
            )
            .await;
        assert!(text.contains("bad name!"), "the core's sentence: {text}");
        let submit = app.find(r#"[data-testid="launch-submit"]"#).await;
        assert!(
            !submit.is_enabled().await.expect("enabled?"),
            "submit stays disabled on a bad name"
        );
        app.shot("bad-name").await;
        app.fill(r#"[data-testid="launch-name"]"#, "good-name")
            .await;
        app.wait_text(
            r#"[data-testid="launch-name-error"]"#,
            "the error cleared",
            |s| s.is_empty(),
        )
        .await;
        // A size the core refuses: its sentence under the form, no submit.
        app.fill(r#"[data-testid="launch-ram"]"#, "1").await;
        app.wait_text(r#"[data-testid="launch-error"]"#, "a size error", |s| {
            !s.is_empty()
        })
        .await;
        let submit = app.find(r#"[data-testid="launch-submit"]"#).await;
        assert!(
            !submit.is_enabled().await.expect("enabled?"),
            "submit stays disabled on a bad size"
        );
        app.shot("bad-size").await;
        assert_eq!(v.json(&["vm", "list"]).as_array().map(Vec::len), vms_before);
        assert_eq!(v.json(&["credits", "show"])["balance"], balance_before);
        app.close().await;
    });
}
