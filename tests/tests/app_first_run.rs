//! A new user's first run, end to end in the real app (WebDriver, Xvfb, real
//! QEMU): the launch form defaults to a bootable OS at a size that boots,
//! refuses less than the OS needs as you type, shows the price, the hourly
//! running cost and the balance after, keeps its choices across views, and
//! the VM it creates boots to a shell that its console shows. A screenshot
//! per step in target/artifacts/.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use vmdesk_tests::{e2e, has_shell, tiny_linux, Machine, PoolVolumes, Vmdesk};

/// What make run records for tiny-linux (scripts/run.sh, TINY_MIN_RAM_MB).
const TINY_MIN_RAM_MB: &str = "128";

#[test]
fn a_new_users_first_run_launches_a_vm_that_boots_to_a_shell() {
    let image = tiny_linux();
    assert!(
        image.exists(),
        "{} is missing: make os-image builds it",
        image.display()
    );
    let v = Vmdesk::new();
    v.qemu_and_ann(50);
    v.json(&[
        "os",
        "import",
        "tiny-linux",
        image.to_str().expect("utf-8"),
        "--min-ram-mb",
        TINY_MIN_RAM_MB,
        "--min-disk-gb",
        "1",
    ]);
    let _volumes = PoolVolumes(format!("vmdesk-os-tiny-linux-{}", v.install_tag()));

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let machine = rt.block_on(async {
        let app = e2e::open(&v, &["--as", "ann", "--view", "launch"], 0, "first-run").await;
        // The form starts on a bootable OS at the least size it boots with.
        app.find(r#"[data-testid="launch-os"] option[value="tiny-linux"]"#)
            .await;
        app.wait_text(r#"[data-testid="launch-os-hint"]"#, "the OS hint", |s| {
            s.contains("Boots to a shell")
        })
        .await;
        let prop = |css: &'static str, p: &'static str| {
            let app = &app;
            async move {
                app.find(css)
                    .await
                    .prop(p)
                    .await
                    .expect("property")
                    .unwrap_or_default()
            }
        };
        assert_eq!(
            prop(r#"[data-testid="launch-os"]"#, "value").await,
            "tiny-linux"
        );
        assert_eq!(
            prop(r#"[data-testid="launch-ram"]"#, "value").await,
            TINY_MIN_RAM_MB
        );
        let hourly = app
            .wait_text(r#"[data-testid="launch-hourly"]"#, "the hourly cost", |s| {
                s.contains("an hour while it runs")
            })
            .await;
        let after = app.text(r#"[data-testid="launch-after"]"#).await;
        assert!(after.starts_with("Balance after: "), "{after}");
        assert_eq!(
            app.text(r#"[data-testid="launch-why"]"#).await,
            "Give the VM a name."
        );
        app.shot("form-defaults").await;

        // blank says what it boots.
        app.select(r#"[data-testid="launch-os"]"#, "blank").await;
        app.wait_text(r#"[data-testid="launch-os-hint"]"#, "firmware only", |s| {
            s.contains("firmware only")
        })
        .await;
        app.shot("blank-boots-nothing").await;
        app.select(r#"[data-testid="launch-os"]"#, "tiny-linux")
            .await;

        // Below the OS's minimum: refused as you type, Create disabled.
        app.fill(r#"[data-testid="launch-name"]"#, "first").await;
        app.fill(r#"[data-testid="launch-ram"]"#, "64").await;
        let refusal = app
            .wait_text(r#"[data-testid="launch-error"]"#, "the refusal", |s| {
                s.contains("needs at least")
            })
            .await;
        assert!(
            refusal.contains(&format!("{TINY_MIN_RAM_MB} MB")),
            "{refusal}"
        );
        let submit = app.find(r#"[data-testid="launch-submit"]"#).await;
        assert!(
            submit.attr("disabled").await.expect("attr").is_some(),
            "Create is enabled below the minimum"
        );
        assert_eq!(
            app.text(r#"[data-testid="launch-why"]"#).await,
            "Fix the size first."
        );
        app.shot("below-minimum-refused").await;
        app.fill(r#"[data-testid="launch-ram"]"#, TINY_MIN_RAM_MB)
            .await;
        app.wait_text(r#"[data-testid="launch-hourly"]"#, "the price again", |s| {
            s == hourly
        })
        .await;

        // Leaving and coming back keeps the choices.
        app.nav("dashboard").await;
        app.find("#dash-h").await;
        app.nav("launch").await;
        assert_eq!(
            prop(r#"[data-testid="launch-name"]"#, "value").await,
            "first"
        );
        assert_eq!(
            prop(r#"[data-testid="launch-os"]"#, "value").await,
            "tiny-linux"
        );
        app.shot("choices-kept").await;

        // Create it, wait until it runs.
        app.wait_text(r#"[data-testid="launch-why"]"#, "nothing in the way", |s| {
            s.is_empty()
        })
        .await;
        app.click(r#"[data-testid="launch-submit"]"#).await;
        let t = Instant::now();
        loop {
            let s = app.text(r#"[data-testid="vm-status-first"]"#).await;
            if s == "RUNNING" {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(90) && s != "FAILED_TO_START",
                "the VM did not run: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        app.shot("created-running").await;
        let vm = v.json(&["--as", "ann", "vm", "show", "first"]);
        let machine = vm["provider_id"].as_str().expect("machine").to_owned();
        let guard = Machine(machine.clone());

        // It boots to a shell (its serial console, as qemu_image_upload reads it).
        let log = format!("/var/log/libvirt/qemu/{machine}-serial.log");
        let t = Instant::now();
        let mut serial = String::new();
        while t.elapsed() < Duration::from_secs(120) {
            serial = std::fs::read_to_string(&log).unwrap_or_default();
            if has_shell(&serial) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(has_shell(&serial), "no shell prompt on {log}: {serial}");

        // Its console (in the Consoles view) shows the screen, not a blank canvas.
        app.open_console("first").await;
        app.find(r#"[data-testid="nav-consoles"][aria-current="page"]"#)
            .await;
        let t = Instant::now();
        let mut lit = 0;
        while t.elapsed() < Duration::from_secs(20) {
            lit = app.console_lit().await.2;
            if lit > 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        app.shot("console-shows-the-guest").await;
        assert!(lit > 100, "the console canvas is blank ({lit} lit pixels)");
        app.close().await;
        (machine, guard)
    });
    let credits = v.json(&["--as", "ann", "credits", "show"]);
    let cost = v.cost(TINY_MIN_RAM_MB, "1", "1");
    assert!(
        credits["balance"].as_i64() <= Some(50 - cost),
        "charged once for the VM: {credits}"
    );
    drop(machine);
}
