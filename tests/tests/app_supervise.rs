//! The window's status-sync child is supervised: killed, it is started again
//! within seconds, and the window's status bar shows the gap; the window's
//! health check lists `vmdesk doctor`'s checks. Real app under Xvfb through
//! WebDriver, screenshots in target/artifacts/.
#![allow(missing_docs)]

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use vmdesk_tests::{e2e, Vmdesk};

const STATUS: &str = r#"[data-testid="sync-status"]"#;

/// The processes running `sync --watch --parent-pipe` on `dir`.
fn watchers(dir: &std::path::Path) -> Vec<u32> {
    let dir = dir.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let has = |a: &str| args.iter().any(|x| x == a);
        if has("--watch") && has("--parent-pipe") && has(&dir) {
            // A zombie (killed, not yet reaped) is not running.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if !stat.contains(") Z ") {
                pids.push(pid);
            }
        }
    }
    pids
}

#[test]
fn a_killed_status_sync_child_is_back_within_seconds_and_the_window_shows_the_gap() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "local", "--uri", "test:///default"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = e2e::open(&v, &[], 0, "supervise").await;
        app.wait_text(STATUS, "a first pass", |s| s.contains("last pass"))
            .await;
        app.shot("sync-ok").await;
        let before = watchers(v.dir.path());
        assert_eq!(before.len(), 1, "one status-sync child: {before:?}");

        let killed = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-9", &before[0].to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let back = loop {
            let now = watchers(v.dir.path());
            if let Some(pid) = now.iter().find(|p| !before.contains(p)) {
                break *pid;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(10),
                "no new status-sync child within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the child came back after {:?}",
            killed.elapsed()
        );
        let text = app
            .wait_text(STATUS, "the restart", |s| s.contains("restarted 1×"))
            .await;
        assert!(text.contains("killed by signal 9"), "{text}");
        app.shot("sync-restarted").await;
        assert_eq!(watchers(v.dir.path()), vec![back]);
        app.close().await;
    });
}

#[test]
fn the_health_check_in_the_window_lists_the_checks() {
    let v = Vmdesk::new();
    // Private, as vmdesk creates a data directory.
    std::fs::set_permissions(v.dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    v.json(&["host", "add", "local", "--uri", "test:///default"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let app = e2e::open(&v, &[], 1, "doctor").await;
        app.nav("settings").await;
        app.click(r#"[data-testid="doctor-run"]"#).await;
        app.find(r#"[data-testid="doctor-summary"]"#).await;
        for check in [
            "data-dir",
            "database",
            "settings",
            "host:local",
            "console-ports",
        ] {
            let row = app
                .text(&format!(r#"[data-testid="doctor-{check}"]"#))
                .await;
            assert!(row.starts_with("ok"), "{check}: {row:?}");
        }
        app.shot("health-check").await;
        app.close().await;
    });
}
