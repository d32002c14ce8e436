//! End to end in the real app: under Xvfb, WebDriver (tauri-driver +
//! WebKitWebDriver) opens a running QEMU VM's console in the window, waits
//! until noVNC reports connected, and checks that the console canvas shows
//! something. The screenshot is kept in target/artifacts/.
#![allow(missing_docs)]

use std::time::Duration;

use vmdesk_tests::{e2e, Vmdesk};

#[test]
fn a_running_vms_console_opens_in_the_app_and_shows_its_screen() {
    let v = Vmdesk::new();
    let (_machine, _cleanup) = v.qemu_pool_vm("e2e1");
    v.json(&["session", "open", "--project", "lab"]);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = e2e::open(&v, &[], 0, "console").await;
        app.nav("pools").await;
        app.open_console("e2e1").await;
        // Let the first framebuffer update be drawn.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (w, h, lit) = app.console_lit().await;
        app.shot("connected").await;
        assert!(w > 0 && h > 0, "no canvas size: {w}x{h}");
        assert!(lit > 100, "the console canvas is blank ({lit} lit pixels)");
        app.close().await;
    });
}
