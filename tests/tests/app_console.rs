//! End to end in the real app: under Xvfb, WebDriver (tauri-driver +
//! WebKitWebDriver) opens a running QEMU VM's console in the window, waits
//! until noVNC reports connected, and checks that the console canvas shows
//! something. The screenshot is kept in target/artifacts/.
#![allow(missing_docs)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use vmdesk_tests::{bin, xvfb, KillOnDrop, Vmdesk};

fn artifacts() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

#[test]
fn a_running_vms_console_opens_in_the_app_and_shows_its_screen() {
    let v = Vmdesk::new();
    let (_machine, _cleanup) = v.qemu_pool_vm("e2e1");
    v.json(&["session", "open", "--project", "lab"]);

    let n = std::process::id() % 50;
    let display = format!(":{}", 150 + n);
    let (port, native) = (14444 + 2 * n, 14445 + 2 * n);
    let _x = xvfb(&display);
    let _driver = KillOnDrop(
        Command::new("tauri-driver")
            .args([
                "--port",
                &port.to_string(),
                "--native-port",
                &native.to_string(),
            ])
            .env("DISPLAY", &display)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tauri-driver (make setup installs it)"),
    );
    std::thread::sleep(Duration::from_millis(1000));

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "wry".into());
        caps.insert(
            "tauri:options".into(),
            serde_json::json!({
                "application": bin(),
                "args": ["--data-dir", v.dir.path(), "--config", v.settings_path()],
            }),
        );
        let c = ClientBuilder::native()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session on the app");

        let open = c
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(
                r#"button[aria-label="Open the console of e2e1"]"#,
            ))
            .await
            .expect("the session's Console button");
        open.click().await.expect("click Console");

        let t = Instant::now();
        loop {
            let state = c
                .find(Locator::Css(r#"[data-testid="console-state"]"#))
                .await
                .expect("the console's state")
                .text()
                .await
                .expect("text");
            if state == "connected" {
                break;
            }
            assert!(
                state != "failed" && t.elapsed() < Duration::from_secs(20),
                "console {state}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the first framebuffer update be drawn.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let lit = c
            .execute(
                r#"const c = document.querySelector('[data-testid="console-screen"] canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0;
                   for (let i = 0; i < d.length; i += 4) if (d[i] | d[i + 1] | d[i + 2]) n++;
                   return [c.width, c.height, n];"#,
                vec![],
            )
            .await
            .expect("read the canvas");
        let png = c.screenshot().await.expect("screenshot");
        std::fs::write(artifacts().join("console-e2e.png"), &png).expect("keep the screenshot");
        let (w, h, lit) = (
            lit[0].as_u64(),
            lit[1].as_u64(),
            lit[2].as_u64().unwrap_or(0),
        );
        assert!(w > Some(0) && h > Some(0), "no canvas size: {w:?}x{h:?}");
        assert!(lit > 100, "the console canvas is blank ({lit} lit pixels)");
        c.close().await.expect("end the session");
    });
}
