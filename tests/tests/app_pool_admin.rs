//! A lab admin sets up a class from the window (issue 16), on the real QEMU
//! host with the real app (Xvfb + tauri-driver + WebKitWebDriver), a
//! screenshot of each step in target/artifacts/: a project and workspaces
//! (one renamed in place),
//! tiny-linux imported into the OS catalog (the file chosen in the desktop's
//! file chooser) with a progress bar, a first pool
//! VM made from it and turned into a template, 5 pool VMs added at once from
//! the template (one progress bar, all or nothing), then a student opens a
//! session on one of them; an image in use cannot be removed. Names are
//! checked as they are typed.
#![allow(missing_docs)]

use vmdesk_tests::{e2e, qemu_uri, tiny_linux, virsh, Machine, Vmdesk};

/// Types `path` into the GTK file chooser that opened on `display` (its
/// location field), and accepts it.
fn choose_in_file_dialog(display: &str, path: &str) {
    let x = |args: &[&str]| {
        std::process::Command::new("xdotool")
            .args(args)
            .env("DISPLAY", display)
            .output()
            .expect("xdotool (make setup installs it)")
    };
    let t = std::time::Instant::now();
    let window = loop {
        let out = x(&["search", "--onlyvisible", "--name", "Choose a disk image"]);
        let found = String::from_utf8_lossy(&out.stdout);
        if let Some(w) = found.split_whitespace().next() {
            break w.to_owned();
        }
        assert!(t.elapsed() < e2e::STEP, "no file chooser opened");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    x(&["windowfocus", "--sync", &window]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Real key events (XTEST) to the focused chooser: GTK ignores the
    // synthetic ones `--window` would send.
    // Ctrl+L opens the location field first: typed into at once, the
    // first keys after "/" would be lost while it opens.
    x(&["key", "ctrl+l"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    x(&["key", "ctrl+a"]);
    x(&["type", "--delay", "20", path]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    x(&["key", "Return"]);
}

#[test]
fn an_admin_sets_up_a_pool_from_the_window_and_a_student_uses_it() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "qemu", "--uri", &qemu_uri()]);
    v.json(&["user", "add", "ann", "--credits", "100000"]);
    let image = tiny_linux();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = e2e::open(&v, &["--shutdown-timeout", "2"], 0, "pool-admin").await;

        // A project and a workspace; a bad name is refused as it is typed.
        app.nav("pools").await;
        app.fill(r#"[data-testid="setup-project-name"]"#, "my class!")
            .await;
        app.wait_text(
            r#"[data-testid="setup-project-error"]"#,
            "the project name's error",
            |s| s.contains("project name"),
        )
        .await;
        app.shot("project-name-refused").await;
        app.fill(r#"[data-testid="setup-project-name"]"#, "class")
            .await;
        app.click(r#"[data-testid="setup-project-submit"]"#).await;
        app.wait_text(r#"[data-testid="setup-note"]"#, "the project made", |s| {
            s.contains("Created the project class")
        })
        .await;
        app.select(r#"[data-testid="setup-ws-project"]"#, "class")
            .await;
        app.fill(r#"[data-testid="setup-ws-name"]"#, "group-a")
            .await;
        app.click(r#"[data-testid="setup-ws-submit"]"#).await;
        app.wait_text(r#"[data-testid="setup-note"]"#, "the workspace made", |s| {
            s.contains("group-a")
        })
        .await;
        // A typo in the workspace's name, renamed in place.
        app.fill(r#"[data-testid="setup-ws-name"]"#, "grop-b").await;
        app.click(r#"[data-testid="setup-ws-submit"]"#).await;
        app.wait_text(r#"[data-testid="setup-note"]"#, "grop-b made", |s| {
            s.contains("grop-b")
        })
        .await;
        app.click(r#"[data-testid="ws-rename-grop-b"]"#).await;
        app.fill(r#"[data-testid="rename-value"]"#, "group-b").await;
        app.click(r#"[data-testid="rename-save"]"#).await;
        app.wait_text(r#"[data-testid="setup-note"]"#, "the rename", |s| {
            s.contains("Renamed the workspace grop-b to group-b")
        })
        .await;
        app.shot("project-and-workspace").await;

        // tiny-linux into the catalog, its copy shown as it goes.
        app.nav("admin").await;
        app.c
            .execute(
                r#"window.__copied = [];
                   new MutationObserver(() => {
                     const p = document.querySelector('[data-testid="os-import-progress"]');
                     if (p) window.__copied.push([Number(p.value), Number(p.max)]);
                   }).observe(document.body, {subtree: true, childList: true, attributes: true});"#,
                vec![],
            )
            .await
            .expect("watch the progress bar");
        app.fill(r#"[data-testid="os-import-name"]"#, "tiny").await;
        // The file comes from the desktop's file chooser (Browse…): typed
        // into it as a user would (a path typed opens its location field).
        app.click(r#"[data-testid="os-import-browse"]"#).await;
        let image = std::fs::canonicalize(&image).expect("the image");
        let path = image.to_str().expect("a path");
        choose_in_file_dialog(&app.display, path);
        app.wait_value(
            r#"[data-testid="os-import-file"]"#,
            "the chosen file",
            |s| s == path,
        )
        .await;
        app.fill(
            r#"[data-testid="os-import-ram"]"#,
            vmdesk_tests::TINY_RAM_MB,
        )
        .await;
        app.click(r#"[data-testid="os-import-submit"]"#).await;
        app.wait_text(
            r#"[data-testid="os-used-tiny"]"#,
            "tiny in the catalog",
            |s| s == "0 VMs",
        )
        .await;
        let copied = app
            .c
            .execute("return window.__copied;", vec![])
            .await
            .expect("the progress seen");
        let copied = copied.as_array().cloned().unwrap_or_default();
        assert!(!copied.is_empty(), "no progress bar while importing");
        app.shot("imported").await;

        // A first VM from the image, made into a template (a flattened copy
        // of its disk) from the admin view.
        app.nav("pools").await;
        app.select(r#"[data-testid="setup-vm-project"]"#, "class")
            .await;
        app.select(r#"[data-testid="setup-vm-os"]"#, "tiny").await;
        app.fill(r#"[data-testid="setup-vm-name"]"#, "golden").await;
        app.fill(r#"[data-testid="setup-vm-count"]"#, "1").await;
        app.fill(r#"[data-testid="setup-vm-ram"]"#, vmdesk_tests::TINY_RAM_MB)
            .await;
        app.click(r#"[data-testid="setup-vm-submit"]"#).await;
        app.wait_text(r#"[data-testid="setup-note"]"#, "golden added", |s| {
            s.contains("golden")
        })
        .await;
        app.nav("admin").await;
        app.wait_text(r#"[data-testid="template-vm"]"#, "golden stopped", |s| {
            s.contains("golden")
        })
        .await;
        app.select(r#"[data-testid="template-vm"]"#, "golden").await;
        app.fill(r#"[data-testid="template-name"]"#, "class-tpl")
            .await;
        app.click(r#"[data-testid="template-submit"]"#).await;
        app.wait_text(r#"[data-testid="admin-note"]"#, "the template made", |s| {
            s.starts_with("Made the template class-tpl from golden")
        })
        .await;
        app.shot("template-made").await;

        // 5 VMs for the pool, at once, from the template.
        app.nav("pools").await;
        app.select(r#"[data-testid="setup-vm-project"]"#, "class")
            .await;
        app.select(r#"[data-testid="setup-vm-os"]"#, "class-tpl")
            .await;
        app.fill(r#"[data-testid="setup-vm-name"]"#, "seat").await;
        app.fill(r#"[data-testid="setup-vm-count"]"#, "5").await;
        app.fill(r#"[data-testid="setup-vm-ram"]"#, vmdesk_tests::TINY_RAM_MB)
            .await;
        // A bad name is refused as it is typed.
        app.fill(r#"[data-testid="setup-vm-name"]"#, "bad name!")
            .await;
        app.wait_text(
            r#"[data-testid="setup-vm-name-error"]"#,
            "the name's error",
            |s| !s.is_empty(),
        )
        .await;
        app.fill(r#"[data-testid="setup-vm-name"]"#, "seat").await;
        app.c
            .execute(
                r#"window.__filled = [];
                   new MutationObserver(() => {
                     const p = document.querySelector('[data-testid="setup-vm-progress"]');
                     if (p) window.__filled.push([Number(p.value), Number(p.max)]);
                   }).observe(document.body, {subtree: true, childList: true, attributes: true});"#,
                vec![],
            )
            .await
            .expect("watch the fill's progress bar");
        app.shot("add-vms").await;
        app.click(r#"[data-testid="setup-vm-submit"]"#).await;
        app.wait_text(r#"[data-testid="setup-note"]"#, "5 VMs added", |s| {
            s.starts_with("Added 5 VMs to class")
        })
        .await;
        app.shot("pool-filled").await;
        let filled = app
            .c
            .execute("return window.__filled;", vec![])
            .await
            .expect("the fill's progress seen");
        let filled = filled.as_array().cloned().unwrap_or_default();
        assert!(
            filled.iter().any(|p| p[1].as_f64() == Some(5.0)),
            "one progress bar for the 5 VMs: {filled:?}"
        );
        app.close().await;
    });
    let vms = v.json(&["vm", "list", "--all"]);
    let seats: Vec<&serde_json::Value> = vms
        .as_array()
        .expect("vms")
        .iter()
        .filter(|vm| vm["pool"] == "class" && vm["name"] != "golden")
        .collect();
    assert_eq!(seats.len(), 5, "{vms}");
    let _machines: Vec<Machine> = seats
        .iter()
        .map(|vm| Machine(vm["provider_id"].as_str().expect("machine").to_owned()))
        .collect();
    assert!(seats.iter().all(|vm| vm["os_type"] == "class-tpl"), "{vms}");

    // A student opens a session on one: it runs; the image is now in use.
    let s = v.json(&[
        "--as",
        "ann",
        "session",
        "open",
        "--project",
        "class",
        "--workspace",
        "group-a",
    ]);
    assert_eq!(s["status"], "ACTIVE", "{s}");
    let machine = v.json(&["vm", "show", &s["vm_id"].to_string()])["provider_id"]
        .as_str()
        .expect("machine")
        .to_owned();
    assert!(virsh(&["domstate", &machine]).contains("running"));
    let err = v.fails(&["os", "remove", "class-tpl"]);
    assert!(err.contains("class-tpl is used by 5 VMs"), "{err}");
    let err = v.fails(&["os", "remove", "tiny"]);
    assert!(err.contains("tiny is used by 1 VM"), "{err}");
    v.json(&[
        "--as",
        "ann",
        "--shutdown-timeout",
        "1",
        "session",
        "close",
        &s["id"].to_string(),
    ]);
}
