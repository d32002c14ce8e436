//! One app per data directory: a second start on the same directory hands
//! over to the first (which shows its window) and exits; another data
//! directory is another app. On a private session bus, under Xvfb.
#![allow(missing_docs)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmdesk_tests::{bin, xvfb, KillOnDrop, SessionKeyring, Vmdesk};

fn start(v: &Vmdesk, bus: &SessionKeyring, display: &str) -> KillOnDrop {
    KillOnDrop(
        Command::new(bin())
            .arg("--data-dir")
            .arg(v.dir.path())
            .arg("--config")
            .arg(v.settings_path())
            .envs(bus.env())
            .env("DISPLAY", display)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the app"),
    )
}

/// Waits until some process owns a bus name starting with `prefix`.
fn wait_for_name(bus: &SessionKeyring, prefix: &str) {
    let t = Instant::now();
    loop {
        let out = Command::new("dbus-send")
            .args([
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.ListNames",
            ])
            .envs(bus.env())
            .output()
            .expect("dbus-send");
        if String::from_utf8_lossy(&out.stdout).contains(prefix) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no {prefix}* on the bus"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_second_start_on_the_same_data_directory_hands_over_and_exits() {
    let bus = SessionKeyring::start();
    let display = format!(":{}", 120 + std::process::id() % 20);
    let _x = xvfb(&display);
    let (v, other) = (Vmdesk::new(), Vmdesk::new());

    let mut first = start(&v, &bus, &display);
    wait_for_name(&bus, "dev.vmdesk.app.d");
    let mut second = start(&v, &bus, &display);
    let status = second
        .exits_within(Duration::from_secs(20))
        .expect("the second start exits");
    assert!(status.success(), "{status:?}");
    assert!(
        first.0.try_wait().expect("first").is_none(),
        "the first app keeps running"
    );

    // Another data directory is another app.
    let mut third = start(&other, &bus, &display);
    assert!(
        third.exits_within(Duration::from_secs(6)).is_none(),
        "an app on another data directory runs too"
    );
    assert!(first.0.try_wait().expect("first").is_none());
}
