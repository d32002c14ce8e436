//! Destroy and session close ask on a terminal (a pty from `script`), a "no"
//! changes nothing, `--yes` skips the question, and a script (stdin not a
//! terminal) is never asked.
#![allow(missing_docs)]

use std::io::Write as _;
use std::process::{Command, Stdio};

use vmdesk_tests::{bin, Vmdesk};

fn setup() -> Vmdesk {
    let v = Vmdesk::new();
    v.json(&["host", "add", "local", "--uri", "test:///default"]);
    v.json(&["project", "create", "p"]);
    v.json(&[
        "vm",
        "add",
        "vm1",
        "--pool",
        "p",
        "--host",
        "local",
        "--ram-mb",
        "64",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    v.json(&["session", "open", "--project", "p", "--no-wait"]);
    v
}

/// Runs `vmdesk ARGS` on a terminal (a pty made by `script`), typing `typed`;
/// returns (success, everything the terminal showed).
fn on_terminal(v: &Vmdesk, args: &[&str], typed: &str) -> (bool, String) {
    let mut line = format!(
        "'{}' --data-dir '{}' --config '{}'",
        bin().display(),
        v.dir.path().display(),
        v.settings_path().display()
    );
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env_remove("VMDESK_YES")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(typed.as_bytes())
        .expect("type");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn a_terminal_is_asked_and_no_changes_nothing() {
    let v = setup();
    let before = v.snapshot();
    let (ok, shown) = on_terminal(&v, &["vm", "destroy", "vm1"], "n\n");
    assert!(!ok, "{shown}");
    assert!(shown.contains("Destroy VM vm1?"), "{shown}");
    assert!(shown.contains("not refunded"), "{shown}");
    assert!(shown.contains("cancelled: nothing was changed"), "{shown}");
    let (ok, shown) = on_terminal(&v, &["session", "close", "1"], "\n");
    assert!(!ok, "{shown}");
    assert!(shown.contains("Close session 1?"), "{shown}");
    assert_eq!(
        v.snapshot(),
        before,
        "a cancelled question changed the database"
    );
}

#[test]
fn yes_on_a_terminal_goes_ahead_and_yes_flag_skips_the_question() {
    let v = setup();
    let (ok, shown) = on_terminal(&v, &["session", "close", "1"], "y\n");
    assert!(ok, "{shown}");
    assert!(shown.contains("COMPLETED"), "{shown}");

    v.json(&["session", "open", "--project", "p", "--no-wait"]);
    let (ok, shown) = on_terminal(&v, &["--yes", "session", "close", "2"], "");
    assert!(ok, "{shown}");
    assert!(
        !shown.contains("Close session"),
        "asked despite --yes: {shown}"
    );
}

#[test]
fn a_script_is_never_asked() {
    let v = setup();
    let out = v
        .command(&["session", "close", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("COMPLETED"));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
