//! End to end in the real app, with a remote host (a libvirt daemon in its
//! own network namespace, reached over SSH): the launch form says where a VM
//! will run, a VM is created on the remote host from the window, its console
//! opens in the window through the SSH channel and shows its screen, and the
//! Hosts table shows both hosts with their console paths. Screenshots are in
//! target/artifacts/.
#![allow(missing_docs)]

use std::time::Duration;

use vmdesk_tests::e2e;
use vmdesk_tests::remote::Remote;

#[test]
fn a_vm_is_launched_on_the_remote_host_and_its_console_opens_through_ssh() {
    let Some(remote) = Remote::get() else { return };
    let v = remote.desk();

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let machine = rt.block_on(async {
        let app = e2e::open(&v, &["--view", "launch"], 0, "remote").await;
        // Automatic placement names a host and its free memory.
        let where_ = app
            .wait_text(r#"[data-testid="launch-where"]"#, "a placement", |s| {
                s.starts_with("Runs on ")
            })
            .await;
        assert!(where_.contains("MB of memory free"), "{where_}");
        app.select(r#"[data-testid="launch-host"]"#, "remote").await;
        app.wait_text(r#"[data-testid="launch-where"]"#, "on remote", |s| {
            s.starts_with("On remote")
        })
        .await;
        app.fill(r#"[data-testid="launch-name"]"#, "far-e2e").await;
        app.shot("launch-on-remote").await;
        app.wait_text(
            r#"[data-testid="launch-why"]"#,
            "Create enabled",
            str::is_empty,
        )
        .await;
        app.click(r#"[data-testid="launch-submit"]"#).await;
        app.wait_text(r#"[data-testid="vm-status-far-e2e"]"#, "RUNNING", |s| {
            s == "RUNNING" || s == "FAILED_TO_START"
        })
        .await;
        let vm = v.json(&["vm", "show", "far-e2e"]);
        assert_eq!(vm["host"], "remote", "{vm}");
        let machine = vm["provider_id"].as_str().expect("machine").to_owned();

        app.open_console("far-e2e").await;
        // Let the first framebuffer update be drawn.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (w, h, lit) = app.console_lit().await;
        app.shot("remote-console").await;
        assert!(w > 0 && h > 0, "no canvas size: {w}x{h}");
        assert!(lit > 100, "the remote console is blank ({lit} lit pixels)");

        app.nav("hosts").await;
        let row = app
            .wait_text(
                r#"[data-testid="host-row-remote"]"#,
                "the remote host",
                |s| s.contains("reachable"),
            )
            .await;
        assert!(row.contains("ssh"), "{row}");
        assert!(row.contains("1 (1 running)"), "{row}");
        let local = app.text(r#"[data-testid="host-row-local"]"#).await;
        assert!(local.contains("local"), "{local}");
        app.find(r#"[data-testid="hosts-table"]"#).await;
        app.shot("hosts").await;
        app.close().await;
        machine
    });
    let _gone = remote.machine(&machine);
}
