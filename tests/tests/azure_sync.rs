//! Azure hosts end to end: the real `vmdesk` binary, through the real
//! `azure_mgmt_compute` client, against the ARM test server (tests/src/arm.rs).
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use serde_json::Value;
use vmdesk_tests::arm::{ArmConfig, ArmServer, Fault, Power};
use vmdesk_tests::{KillOnDrop, Vmdesk};

const SUB: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const RG: &str = "Lab-RG";

/// A data directory whose settings point at the server, with its service
/// principal in the environment.
fn vmdesk_for(server: &ArmServer, extra: &str) -> Vmdesk {
    let mut v = Vmdesk::new();
    v.write_settings(&format!(
        "[sync]\nreboot_grace_ms = 400\n{extra}\n[azure]\nallow_insecure_endpoints = true\nendpoint = \"{url}\"\nauthority_host = \"{url}\"\npoll_interval_ms = 50\nmax_retry_after_secs = 5\n",
        url = server.url()
    ));
    v.env = server.env();
    v
}

/// Adds the subscription as host `az`, a project `lab`, and imports its VMs.
fn imported(server: &ArmServer, extra: &str) -> Vmdesk {
    let v = vmdesk_for(server, extra);
    v.json(&["host", "add", "az", "--azure-subscription", SUB]);
    v.json(&["project", "create", "lab"]);
    v.json(&["host", "import", "az", "--project", "lab"]);
    v
}

fn status(v: &Vmdesk, vm: &str) -> String {
    v.json(&["vm", "show", vm])["status"]
        .as_str()
        .expect("status")
        .to_owned()
}

fn session_status(v: &Vmdesk, id: &Value) -> String {
    v.json(&["session", "list", "--all"])
        .as_array()
        .expect("sessions")
        .iter()
        .find(|s| s["id"] == *id)
        .map(|s| s["status"].as_str().expect("status").to_owned())
        .expect("the session")
}

/// One VM of the pool in an ACTIVE session; returns the session.
fn active_session(v: &Vmdesk) -> Value {
    let s = v.json(&["session", "open", "--project", "lab"]);
    assert_eq!(s["status"], "ACTIVE", "{s}");
    s
}

#[test]
fn import_adopts_the_vms_of_the_resource_group_with_size_and_state() {
    let server = ArmServer::start();
    server.add_vm(SUB, RG, "web01", "Standard_B2s", Power::Running);
    server.add_vm(SUB, RG, "db01", "Standard_D4s_v5", Power::Deallocated);
    server.add_vm(SUB, "other-rg", "x1", "Standard_B1s", Power::Running);
    let v = vmdesk_for(&server, "");
    v.json(&[
        "host",
        "add",
        "az",
        "--azure-subscription",
        SUB,
        "--resource-group",
        RG,
    ]);
    v.json(&["project", "create", "lab"]);

    let r = v.json(&["host", "import", "az", "--project", "lab"]);

    let mut got: Vec<(String, String, i64, i64, String)> = r["imported"]
        .as_array()
        .expect("imported")
        .iter()
        .map(|vm| {
            (
                vm["name"].as_str().unwrap_or_default().to_owned(),
                vm["status"].as_str().unwrap_or_default().to_owned(),
                vm["ram_mb"].as_i64().unwrap_or_default(),
                vm["cpu_cores"].as_i64().unwrap_or_default(),
                vm["vm_type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (
                "db01".into(),
                "STOPPED".into(),
                16384,
                4,
                "Standard_D4s_v5".into()
            ),
            (
                "web01".into(),
                "RUNNING".into(),
                4096,
                2,
                "Standard_B2s".into()
            ),
        ]
    );
    // A second import finds nothing new.
    let again = v.json(&["host", "import", "az", "--project", "lab"]);
    assert_eq!(again["imported"].as_array().map(Vec::len), Some(0));
}

#[test]
fn a_full_sync_of_1000_vms_costs_at_most_two_calls() {
    let server = ArmServer::start();
    let names = server.add_vms(SUB, RG, "vm", 1000, "Standard_B1s", Power::Running);
    let v = imported(&server, "");
    for n in &names[..10] {
        server.set_power(SUB, RG, n, Power::Deallocated);
    }
    server.reset_calls();

    let changes = v.json(&["sync", "--once"]);

    let calls = server.calls();
    assert!(calls.arm() <= 2, "{calls:?}");
    // The running VMs' addresses: two listings (interfaces, public IPs).
    assert!(calls.network <= 2, "{calls:?}");
    assert_eq!(changes.as_array().map(Vec::len), Some(10), "{changes}");
    assert_eq!(
        v.count("SELECT count(*) FROM vms WHERE status = 'STOPPED'"),
        10
    );
    assert_eq!(
        v.count("SELECT count(*) FROM vms WHERE synced_by = 'poll'"),
        1000
    );
}

#[test]
fn azure_vms_show_their_private_and_public_addresses_through_the_network_api() {
    let server = ArmServer::start();
    server.add_vm(SUB, RG, "web01", "Standard_B1s", Power::Running);
    server.add_vm(SUB, RG, "db01", "Standard_B1s", Power::Running);
    server.set_public_ip(SUB, RG, "web01", Some("20.50.1.7"));
    let v = imported(&server, "");
    // A 429 on the way is waited out and retried by the transport.
    server.fail_next(
        1,
        Fault::Throttle {
            retry_after_secs: 1,
        },
    );
    v.json(&["sync", "--once"]);

    let web = v.json(&["vm", "show", "web01"]);
    let private = server.private_ip(SUB, RG, "web01").expect("web01");
    assert_eq!(web["ip_address"], private.as_str(), "{web}");
    assert_eq!(web["metadata"]["public_ip"], "20.50.1.7", "{web}");
    let db = v.json(&["vm", "show", "db01"]);
    assert_eq!(
        db["ip_address"],
        server.private_ip(SUB, RG, "db01").expect("db01").as_str()
    );
    assert_eq!(db["metadata"]["public_ip"], Value::Null, "{db}");
    assert!(server.calls().network >= 2, "{:?}", server.calls());
    let learned: Vec<Value> = v
        .json(&["events", "--limit", "100"])
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["action"] == "vm.address")
        .cloned()
        .collect();
    assert_eq!(learned.len(), 2, "{learned:?}");
    assert!(
        learned.iter().all(|e| e["details"]["learned"] == "azure"),
        "{learned:?}"
    );

    // The public address goes away and comes back: each change is seen.
    server.set_public_ip(SUB, RG, "web01", None);
    v.json(&["sync", "--once"]);
    assert_eq!(
        v.json(&["vm", "show", "web01"])["metadata"]["public_ip"],
        Value::Null
    );
    // `vmdesk ssh` goes to the public address when there is one.
    server.set_public_ip(SUB, RG, "web01", Some("20.50.1.8"));
    v.json(&["sync", "--once"]);
    v.json(&["session", "open", "--project", "lab"]);
    let line = v.json(&["ssh", "web01", "--print"]);
    assert_eq!(line["target"]["ip"], "20.50.1.8", "{line}");
    // Deallocated, it has no address.
    server.set_power(SUB, RG, "web01", Power::Deallocated);
    v.json(&["sync", "--once"]);
    let web = v.json(&["vm", "show", "web01"]);
    assert_eq!(web["ip_address"], Value::Null, "{web}");
    assert_eq!(web["metadata"]["public_ip"], Value::Null, "{web}");
}

#[test]
fn a_vm_found_running_while_the_database_says_stopped_becomes_running() {
    let server = ArmServer::start();
    server.add_vm(SUB, RG, "web01", "Standard_B1s", Power::Deallocated);
    let v = imported(&server, "");
    assert_eq!(status(&v, "web01"), "STOPPED");

    server.set_power(SUB, RG, "web01", Power::Running);
    let changes = v.json(&["sync", "--once"]);

    assert_eq!(
        (changes[0]["was"].as_str(), changes[0]["now"].as_str()),
        (Some("STOPPED"), Some("RUNNING"))
    );
    assert_eq!(status(&v, "web01"), "RUNNING");
}

#[test]
fn a_session_opened_on_an_azure_vm_starts_it_through_the_operation() {
    let server = ArmServer::start();
    server.add_vm(SUB, RG, "web01", "Standard_B1s", Power::Deallocated);
    let v = imported(&server, "");

    let s = active_session(&v);

    assert_eq!(server.power(SUB, RG, "web01"), Some(Power::Running));
    assert_eq!(status(&v, "web01"), "RUNNING");
    let calls = server.calls();
    assert!(calls.action == 1 && calls.operation >= 1, "{calls:?}");

    // Closing deallocates it.
    v.json(&["session", "close", &s["id"].to_string()]);
    assert_eq!(server.power(SUB, RG, "web01"), Some(Power::Deallocated));
    assert_eq!(status(&v, "web01"), "STOPPED");
}

fn ended_by(power: Power) {
    let server = ArmServer::start();
    server.add_vm(SUB, RG, "web01", "Standard_B1s", Power::Running);
    let v = imported(&server, "");
    let s = active_session(&v);

    server.set_power(SUB, RG, "web01", power);
    let changes = v.json(&["sync", "--once"]);

    assert_eq!(changes[0]["terminated_session"], s["id"], "{changes}");
    assert_eq!(session_status(&v, &s["id"]), "TERMINATED");
    assert_eq!(status(&v, "web01"), "STOPPED");
}

#[test]
fn a_vm_stopped_under_an_active_session_terminates_it() {
    ended_by(Power::Stopped);
}

#[test]
fn a_vm_deallocated_under_an_active_session_terminates_it() {
    ended_by(Power::Deallocated);
}

#[test]
fn a_vm_back_within_the_reboot_grace_keeps_its_session() {
    let server = ArmServer::start();
    server.add_vm(SUB, RG, "web01", "Standard_B1s", Power::Running);
    let v = imported(&server, "");
    let s = active_session(&v);

    server.set_power(SUB, RG, "web01", Power::Stopped);
    let sync = v
        .command(&["--json", "sync", "--once"])
        .spawn()
        .expect("sync");
    std::thread::sleep(Duration::from_millis(200));
    server.set_power(SUB, RG, "web01", Power::Running);
    let out = sync.wait_with_output().expect("sync ends");

    assert!(out.status.success());
    assert_eq!(session_status(&v, &s["id"]), "ACTIVE");
    assert_eq!(status(&v, "web01"), "RUNNING");
}

#[test]
fn a_vm_gone_from_the_subscription_is_marked_unknown_and_kept() {
    let server = ArmServer::start();
    server.add_vm(SUB, RG, "web01", "Standard_B1s", Power::Running);
    server.add_vm(SUB, RG, "web02", "Standard_B1s", Power::Running);
    let v = imported(&server, "");

    server.remove_vm(SUB, RG, "web02");
    v.json(&["sync", "--once"]);

    assert_eq!(status(&v, "web02"), "UNKNOWN");
    assert_eq!(status(&v, "web01"), "RUNNING");
    // The newest status event (web01's address, learned in the same pass,
    // is a vm.address event).
    let events = v.json(&["events", "--limit", "10"]);
    let e = events
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["action"] != "vm.address")
        .expect("a status event");
    assert_eq!(
        (e["action"].as_str(), e["severity"].as_str()),
        (Some("sync.status"), Some("warning"))
    );
}

#[test]
fn a_429_is_waited_out_and_the_call_retried() {
    let server = ArmServer::start();
    server.add_vm(SUB, RG, "web01", "Standard_B1s", Power::Deallocated);
    let v = imported(&server, "");
    server.set_power(SUB, RG, "web01", Power::Running);
    server.reset_calls();
    server.fail_next(
        1,
        Fault::Throttle {
            retry_after_secs: 1,
        },
    );

    let t = Instant::now();
    let changes = v.json(&["sync", "--once"]);

    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "Retry-After not honoured"
    );
    assert_eq!(changes[0]["now"], "RUNNING");
    let calls = server.calls();
    assert_eq!((calls.injected, calls.list), (1, 2), "{calls:?}");
}

#[test]
fn an_azure_outage_never_terminates_a_session() {
    let server = ArmServer::start();
    server.add_vm(SUB, RG, "web01", "Standard_B1s", Power::Running);
    let v = imported(&server, "");
    let s = active_session(&v);

    // ARM down: every call answers 503.
    server.set_outage(Some(503));
    v.json(&["sync", "--once"]);
    assert_eq!(status(&v, "web01"), "UNKNOWN");
    assert_eq!(session_status(&v, &s["id"]), "ACTIVE");

    // ARM throttling for longer than vmdesk waits (cap 5 s): no early retry,
    // the pass gives up at once.
    server.set_outage(None);
    server.reset_calls();
    server.fail_next(
        5,
        Fault::Throttle {
            retry_after_secs: 120,
        },
    );
    let t = Instant::now();
    v.json(&["sync", "--once"]);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        t.elapsed()
    );
    assert_eq!(session_status(&v, &s["id"]), "ACTIVE");

    // Back: the VM is running again, the session never ended.
    while server.calls().injected < 5 {
        // Spend the queued faults (a later process is not held back).
        v.run(&["sync", "--once"]);
    }
    v.json(&["sync", "--once"]);
    assert_eq!(status(&v, "web01"), "RUNNING", "{:#?}", server.log());
    assert_eq!(session_status(&v, &s["id"]), "ACTIVE");
    assert_eq!(
        v.count("SELECT count(*) FROM events WHERE action = 'session.terminated'"),
        0
    );
}

#[test]
fn the_fast_loop_stays_inside_the_per_vm_read_budget() {
    // Limits shrunk alike on both sides: 3 reads a minute per VM, a burst of 9
    // on the server; the client keeps to 2 a minute and a burst of 6.
    let server = ArmServer::with_config(ArmConfig {
        limits_scale: 0.25,
        ..ArmConfig::default()
    });
    server.add_vms(SUB, RG, "vm", 3, "Standard_B1s", Power::Running);
    let v = imported(
        &server,
        "fast_interval_secs = 1\nfull_interval_secs = 3600\n",
    );
    v.write_settings(
        &std::fs::read_to_string(v.settings_path())
            .expect("settings")
            .replace(
                "[azure]\n",
                "[azure]\nlimits = { vm_reads_per_min = 2, vm_reads_burst = 6 }\n",
            ),
    );
    for _ in 0..3 {
        active_session(&v);
    }
    server.reset_limits();
    server.reset_calls();

    let watcher = KillOnDrop(
        v.command(&["sync", "--watch"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("watcher"),
    );
    std::thread::sleep(Duration::from_secs(10));
    drop(watcher);

    let calls = server.calls();
    assert_eq!(calls.throttled, 0, "ARM had to throttle: {calls:?}");
    for i in 0..3 {
        let reads = server.reads_of(SUB, RG, &format!("vm{i}"));
        // Ten 1-second passes wanted 10 reads; the budget allows 6 (+1 refill).
        assert!((6..=7).contains(&reads), "vm{i}: {reads} reads");
    }
    assert_eq!(
        v.count("SELECT count(*) FROM sessions WHERE status = 'ACTIVE'"),
        3
    );
}
