//! The desktop app starts under a real X server (Xvfb) and stays up.
#![allow(missing_docs)]

use std::process::{Command, Stdio};
use std::time::Duration;

use vmdesk_tests::{bin, xvfb, KillOnDrop, Vmdesk};

#[test]
fn the_window_starts_with_its_status_sync_child_and_stays_up() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "local", "--uri", "test:///default"]);
    let display = format!(":{}", 90 + std::process::id() % 9);
    let _x = xvfb(&display);
    let mut app = KillOnDrop(
        Command::new(bin())
            .arg("--data-dir")
            .arg(v.dir.path())
            .env("DISPLAY", &display)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the app"),
    );
    std::thread::sleep(Duration::from_secs(4));
    if let Some(status) = app.0.try_wait().expect("app") {
        let mut err = String::new();
        if let Some(mut e) = app.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        panic!("the app exited ({status}): {err}");
    }
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", app.0.id()))
        .unwrap_or_default();
    let watchers = children
        .split_whitespace()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .contains("--parent-pipe")
        })
        .count();
    assert_eq!(watchers, 1, "the status-sync child is not running");
}
