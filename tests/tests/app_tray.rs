//! The tray end to end, as a person meets it on a desktop whose tray is an
//! XEmbed one: Debian's `trayer` under Xvfb holds the app's icon; a click
//! opens its menu (the balance and the user's VMs with their states, then
//! Show and Quit), a VM's entry opens its submenu, and Quit quits. Driven
//! with xdotool; a screenshot per step in target/artifacts/.
#![allow(missing_docs)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmdesk_tests::e2e::artifacts;
use vmdesk_tests::{bin, xvfb, KillOnDrop, SessionKeyring, Vmdesk};

fn x(display: &str, args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("DISPLAY", display)
        .output()
        .expect("X tool (make setup installs xdotool, x11-utils, imagemagick)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The windows mapped on the screen, one line each (`xwininfo -tree`).
fn mapped(display: &str) -> Vec<String> {
    x(display, &["xwininfo", "-root", "-tree"])
        .lines()
        .filter(|l| l.trim_start().starts_with("0x"))
        .map(str::to_owned)
        .collect()
}

/// Override-redirect popups (GTK menus) that are mapped now.
fn popups(display: &str) -> usize {
    x(
        display,
        &["xdotool", "search", "--onlyvisible", "--class", "vmdesk"],
    )
    .lines()
    .filter(|id| {
        let info = x(display, &["xwininfo", "-id", id, "-wm"]);
        let attrs = x(display, &["xwininfo", "-id", id]);
        attrs.contains("Map State: IsViewable")
            && attrs.contains("Override Redirect State: yes")
            && !info.is_empty()
    })
    .count()
}

fn shot(display: &str, step: &str) {
    let path = artifacts().join(format!("tray-{step}.png"));
    let _ = Command::new("import")
        .args(["-window", "root"])
        .arg(&path)
        .env("DISPLAY", display)
        .status();
}

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_tray_menu_opens_under_an_xembed_tray_and_quit_quits() {
    let v = Vmdesk::new();
    // The tray is about the user's VMs: one running (set as status sync
    // would, which is off here so that nothing changes it).
    v.write_settings("[sync]\nenabled = false\n");
    v.json(&["host", "add", "local", "--uri", "test:///default"]);
    v.json(&["credits", "grant", "admin", "120", "--reason", "tray test"]);
    v.json(&[
        "vm",
        "create",
        "web",
        "--ram-mb",
        "64",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
        "--no-start",
    ]);
    v.db()
        .execute("UPDATE vms SET status = 'RUNNING' WHERE name = 'web'", [])
        .expect("mark running");

    let bus = SessionKeyring::start();
    let display = format!(":{}", 140 + std::process::id() % 20);
    let _x = xvfb(&display);
    let _tray = KillOnDrop(
        Command::new("trayer")
            .args([
                "--edge",
                "top",
                "--align",
                "right",
                "--widthtype",
                "pixel",
                "--width",
                "120",
                "--height",
                "32",
                "--SetDockType",
                "true",
                "--transparent",
                "false",
            ])
            .env("DISPLAY", &display)
            .envs(bus.env())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("trayer (make setup installs it)"),
    );
    std::thread::sleep(Duration::from_millis(700));
    let mut app = KillOnDrop(
        Command::new(bin())
            .arg("--data-dir")
            .arg(v.dir.path())
            .arg("--config")
            .arg(v.settings_path())
            .envs(bus.env())
            .env("DISPLAY", &display)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the app"),
    );

    // The icon is embedded in trayer's panel.
    let mut icon = String::new();
    wait("the tray icon in trayer", Duration::from_secs(30), || {
        icon = x(&display, &["xdotool", "search", "--class", "tray-icon"])
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        !icon.is_empty()
    });
    assert!(
        mapped(&display).iter().any(|l| l.contains("tray-icon")),
        "the icon is mapped"
    );
    // Where the icon is; the panel sits at the top right, so an icon still
    // at the origin has not been embedded yet.
    let icon_at = || -> Option<(i32, i32)> {
        let geometry = x(
            &display,
            &["xdotool", "getwindowgeometry", "--shell", &icon],
        );
        let num = |key: &str| -> Option<i32> {
            geometry
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
        };
        let (ix, iy) = (num("X=")?, num("Y=")?);
        (ix > 0).then_some((ix + 16, iy + 15))
    };
    wait("the icon in the panel", Duration::from_secs(15), || {
        icon_at().is_some()
    });
    shot(&display, "01-icon");

    // A click opens the menu. The icon is mapped a moment before it takes
    // clicks, so a click that opened nothing is made again (at most three).
    let before = popups(&display);
    let mut opened = false;
    for _ in 0..3 {
        let (ix, iy) = icon_at().expect("the icon stays in the panel");
        x(
            &display,
            &["xdotool", "mousemove", &ix.to_string(), &iy.to_string()],
        );
        std::thread::sleep(Duration::from_millis(300));
        x(&display, &["xdotool", "click", "1"]);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) && !opened {
            opened = popups(&display) > before;
            std::thread::sleep(Duration::from_millis(200));
        }
        if opened {
            break;
        }
    }
    assert!(opened, "a click on the tray icon opens its menu");
    std::thread::sleep(Duration::from_millis(400));
    shot(&display, "02-menu");

    // The first item one can choose is the running VM: its submenu opens.
    let with_menu = popups(&display);
    x(&display, &["xdotool", "key", "Down"]);
    std::thread::sleep(Duration::from_millis(300));
    x(&display, &["xdotool", "key", "Right"]);
    wait("the VM's submenu opens", Duration::from_secs(10), || {
        popups(&display) > with_menu
    });
    std::thread::sleep(Duration::from_millis(400));
    shot(&display, "03-vm-submenu");

    // Back out, then Quit (the last item, above the first when wrapping) ends the app.
    x(&display, &["xdotool", "key", "Left"]);
    std::thread::sleep(Duration::from_millis(300));
    x(&display, &["xdotool", "key", "Up"]);
    std::thread::sleep(Duration::from_millis(300));
    shot(&display, "04-quit-selected");
    x(&display, &["xdotool", "key", "Return"]);
    let status = app
        .exits_within(Duration::from_secs(15))
        .expect("Quit in the tray menu ends the app");
    assert!(status.success(), "{status:?}");
}
