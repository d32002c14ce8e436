//! `vmdesk doctor`: one line per check (ok, warning, error), `--json` as an
//! array of {check, status, message}, a non-zero exit on an error.
#![allow(missing_docs)]

use std::os::unix::fs::PermissionsExt as _;

use serde_json::Value;
use vmdesk_tests::Vmdesk;

/// Runs `vmdesk doctor ARGS` without a session bus (the keyring is then a
/// warning, the same on every machine): its exit code, stdout and stderr.
fn doctor(v: &Vmdesk, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    let out = v
        .command(&all)
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .output()
        .expect("run vmdesk doctor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The line of `check` in doctor's output.
fn line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(check))
        .unwrap_or_else(|| panic!("no line for {check} in:\n{out}"))
}

/// A data directory in use, private as vmdesk creates one (0700).
fn used() -> Vmdesk {
    let v = Vmdesk::new();
    std::fs::set_permissions(v.dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    v.json(&["user", "list"]);
    v
}

#[test]
fn a_healthy_data_directory_passes() {
    let v = used();
    let (code, out, err) = doctor(&v, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(line(&out, "data-dir").starts_with("ok "), "{out}");
    assert!(line(&out, "database").starts_with("ok "), "{out}");
    assert!(line(&out, "settings").starts_with("ok "), "{out}");
}

#[test]
fn a_corrupt_database_is_an_error_and_fails() {
    let v = used();
    std::fs::write(v.dir.path().join("vmdesk.db"), vec![0x5a; 16_384]).expect("corrupt it");
    for f in ["vmdesk.db-wal", "vmdesk.db-shm"] {
        let _ = std::fs::remove_file(v.dir.path().join(f));
    }
    let (code, out, err) = doctor(&v, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "database").starts_with("error "), "{out}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_data_directory_open_to_others_is_a_warning() {
    let v = used();
    std::fs::set_permissions(v.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (code, out, _) = doctor(&v, &[]);
    assert!(line(&out, "data-dir").starts_with("warning "), "{out}");
    assert!(line(&out, "data-dir").contains("0755"), "{out}");
    assert_eq!(code, 0, "a warning alone does not fail:\n{out}");
}

#[test]
fn a_host_that_cannot_be_reached_is_an_error() {
    let v = used();
    v.db()
        .execute(
            "INSERT INTO hosts (name, kind, uri, created_at)
             VALUES ('gone', 'libvirt', 'test:///nonexistent/vmdesk-doctor.xml', '2026-01-01T00:00:00.000Z')",
            [],
        )
        .expect("a host");
    let (code, out, _) = doctor(&v, &[]);
    assert!(line(&out, "host:gone").starts_with("error "), "{out}");
    assert_eq!(code, 1);
}

#[test]
fn a_settings_file_that_does_not_parse_is_an_error() {
    let v = used();
    v.write_settings("[sync]\nfast_interval_secs = \"soon\"\n");
    let (code, out, _) = doctor(&v, &[]);
    assert!(line(&out, "settings").starts_with("error "), "{out}");
    assert_eq!(code, 1);
}

#[test]
fn json_is_an_array_of_check_status_message() {
    let v = used();
    let (_, out, _) = doctor(&v, &["--json"]);
    let checks: Value = serde_json::from_str(&out).expect("one JSON document");
    let checks = checks.as_array().expect("an array");
    for c in checks {
        let o = c.as_object().expect("an object");
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["check", "message", "status"]);
        assert!(
            ["ok", "warning", "error"].contains(&o["status"].as_str().expect("status")),
            "{c}"
        );
    }
    let names: Vec<&str> = checks.iter().filter_map(|c| c["check"].as_str()).collect();
    for want in [
        "data-dir",
        "database",
        "settings",
        "hosts",
        "console-ports",
        "keyring",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
}
