//! `host add` refuses URIs that would make libvirt run a program or reach a
//! socket of the caller's choosing, and stores nothing.
#![allow(missing_docs)]

use vmdesk_tests::Vmdesk;

#[test]
fn host_add_refuses_a_uri_that_runs_a_program_and_changes_nothing() {
    let v = Vmdesk::new();
    v.json(&["host", "list"]);
    let before = v.snapshot();
    let marker = v.dir.path().join("ran");
    let script = v.dir.path().join("x.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", marker.display())).expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let uri = format!("qemu+ext:///system?command={}", script.display());
    let err = v.fails(&["host", "add", "evil", "--uri", &uri]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("is not a connection URI vmdesk accepts"),
        "{err}"
    );
    assert_eq!(v.snapshot(), before);
    assert!(!marker.exists(), "the command ran");
}

#[test]
fn host_add_refuses_netcat_and_socket_parameters() {
    let v = Vmdesk::new();
    v.json(&["host", "list"]);
    let before = v.snapshot();
    for uri in [
        "qemu+ssh://user@host/system?netcat=/tmp/nc",
        "qemu+unix:///system?socket=/tmp/evil.sock",
        "qemu+ssh://host/system?command=/tmp/x",
    ] {
        let err = v.fails(&["host", "add", "evil", "--uri", uri]);
        assert!(err.contains("is not allowed"), "{uri}: {err}");
    }
    assert_eq!(v.snapshot(), before);
}
