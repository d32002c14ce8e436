//! Many `vmdesk` processes at once on one data directory.
#![allow(missing_docs)]

use std::process::Stdio;

use vmdesk_tests::Vmdesk;

#[test]
fn two_hundred_processes_opening_sessions_on_a_fifty_vm_pool_get_fifty() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "local", "--uri", "test:///default"]);
    v.json(&["project", "create", "race"]);
    for i in 0..50 {
        let name = format!("vm{i:02}");
        v.json(&[
            "vm",
            "add",
            &name,
            "--pool",
            "race",
            "--host",
            "local",
            "--ram-mb",
            "64",
            "--disk-gb",
            "1",
            "--cpus",
            "1",
        ]);
    }
    let users = ["u0", "u1", "u2", "u3"];
    for u in users {
        v.json(&["user", "add", u]);
    }

    let children: Vec<_> = (0..200)
        .map(|i| {
            v.command(&[
                "--as",
                users[i % users.len()],
                "--json",
                "session",
                "open",
                "--project",
                "race",
                "--no-wait",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmdesk")
        })
        .collect();
    let outputs = vmdesk_tests::race_outcome(
        children,
        50,
        "error: all 50 VMs of project \"race\" are in use",
    );

    for o in &outputs {
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        assert_eq!(s["status"], "REQUESTED");
    }
    assert_eq!(v.count("SELECT count(*) FROM sessions WHERE status IN ('REQUESTED','STARTING','ACTIVE','TERMINATING')"), 50);
    assert_eq!(
        v.count("SELECT count(DISTINCT vm_id) FROM sessions"),
        50,
        "a VM is in two sessions"
    );
    assert_eq!(
        v.count("SELECT count(*) FROM sessions"),
        50,
        "a failed request left a row"
    );
    assert_eq!(
        v.count("SELECT count(*) FROM vms WHERE live_session_id IS NULL"),
        0
    );
}
