//! The JSON contract of the CLI that scripts rely on.
#![allow(missing_docs)]

use vmdesk_tests::Vmdesk;

#[test]
fn quote_prints_the_cost_of_the_seed_example() {
    let v = Vmdesk::new();
    assert_eq!(
        v.json(&[
            "quote",
            "--ram-mb",
            "1024",
            "--disk-gb",
            "20",
            "--cpus",
            "2"
        ]),
        serde_json::json!({"cost": 34})
    );
}

#[test]
fn a_new_data_dir_has_an_administrator() {
    let v = Vmdesk::new();
    let users = v.json(&["user", "list"]);
    assert_eq!(users[0]["name"], "admin");
    assert_eq!(users[0]["role"], "admin");
}

#[test]
fn credits_show_has_user_balance_and_entries() {
    let v = Vmdesk::new();
    v.json(&["user", "add", "ann"]);
    v.json(&["credits", "grant", "ann", "70", "--reason", "start"]);
    let c = v.json(&["credits", "show", "ann"]);
    assert_eq!(c["user"], "ann");
    assert_eq!(c["balance"], 70);
    let e = &c["entries"][0];
    assert_eq!(
        (
            e["amount"].as_i64(),
            e["kind"].as_str(),
            e["reason"].as_str()
        ),
        (Some(70), Some("grant"), Some("start"))
    );
    assert!(e["created_at"].is_string());
}

#[test]
fn vm_session_and_event_listings_have_their_fields() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "local", "--uri", "test:///default"]);
    v.json(&["project", "create", "p"]);
    v.json(&[
        "vm",
        "add",
        "a1",
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
        "--type",
        "small",
    ]);
    let vms = v.json(&["vm", "list"]);
    let vm = &vms[0];
    for field in ["id", "name", "status", "pool", "host", "vm_type"] {
        assert!(vm.get(field).is_some(), "vm list lacks {field}: {vm}");
    }
    assert_eq!(
        (
            vm["status"].as_str(),
            vm["pool"].as_str(),
            vm["vm_type"].as_str()
        ),
        (Some("STOPPED"), Some("p"), Some("small"))
    );
    let s = v.json(&["session", "open", "--project", "p", "--no-wait"]);
    for field in ["id", "vm_id", "user", "status"] {
        assert!(s.get(field).is_some(), "session lacks {field}: {s}");
    }
    assert_eq!(s["status"], "REQUESTED");
    assert_eq!(v.json(&["session", "list"])[0]["id"], s["id"]);
    let events = v.json(&["events", "--limit", "3"]);
    assert_eq!(events.as_array().map(Vec::len), Some(3));
    let e = &events[0];
    for field in [
        "type",
        "action",
        "severity",
        "actor",
        "details",
        "created_at",
    ] {
        assert!(e.get(field).is_some(), "event lacks {field}: {e}");
    }
    assert_eq!(
        (e["type"].as_str(), e["action"].as_str()),
        (Some("session"), Some("session.open"))
    );
}

#[test]
fn a_user_sees_pool_vms_but_only_an_admin_lists_all() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "local", "--uri", "test:///default"]);
    v.json(&["project", "create", "p"]);
    v.json(&["user", "add", "ann"]);
    v.json(&[
        "vm",
        "add",
        "a1",
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
    assert_eq!(
        v.json(&["--as", "ann", "vm", "list"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        v.json(&["vm", "list", "--all"]).as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn an_unreachable_host_is_not_added() {
    let mut v = Vmdesk::new();
    v.env.push(("VMDESK_ALLOW_TCP".into(), "1".into()));
    v.json(&["host", "list"]);
    let before = v.snapshot();
    let err = v.fails(&[
        "host",
        "add",
        "gone",
        "--uri",
        "qemu+tcp://127.0.0.1:1/system",
    ]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: host \"gone\" failed: cannot reach the host"),
        "{err}"
    );
    assert_eq!(v.snapshot(), before);
}

#[test]
fn a_settings_file_that_does_not_parse_is_named_in_one_line() {
    let v = Vmdesk::new();
    let config = v.settings_path();
    v.write_settings("[sync]\nfast_interval_secs = \"often\"\n");
    let err = v.fails(&["vm", "list"]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("error: {}", config.display())),
        "{err}"
    );
    v.write_settings("[sync]\nfast_interval_secs = 5\n[billing]\nhourly_percent = 20\n");
    v.json(&["vm", "list"]);
}
