//! A user's own VM on a real libvirt daemon with QEMU, through the CLI.
#![allow(missing_docs)]

use std::process::{Command, Stdio};

use vmdesk_tests::{qemu_uri, Vmdesk};

fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .arg("-q")
        .arg("-c")
        .arg(qemu_uri())
        .args(args)
        .output()
        .expect("run virsh");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes a domain whatever happens to the test.
struct Domain(String);

impl Drop for Domain {
    fn drop(&mut self) {
        virsh(&["destroy", &self.0]);
        virsh(&["undefine", &self.0]);
    }
}

#[test]
fn create_stop_start_restart_destroy_on_qemu_charge_once() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "qemu", "--uri", &qemu_uri()]);
    v.json(&["user", "add", "ann", "--credits", "50"]);
    let quote = v.json(&["quote", "--ram-mb", "64", "--disk-gb", "1", "--cpus", "1"])["cost"]
        .as_i64()
        .expect("cost");

    let vm = v.json(&[
        "--as",
        "ann",
        "vm",
        "create",
        "box",
        "--ram-mb",
        "64",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    let machine = vm["provider_id"].as_str().expect("machine").to_owned();
    let _cleanup = Domain(machine.clone());
    assert_eq!(vm["status"], "RUNNING");
    assert_eq!(virsh(&["domstate", &machine]), "running");
    assert_eq!(
        v.json(&["--as", "ann", "credits", "show"])["balance"].as_i64(),
        Some(50 - quote)
    );

    let stopped = v.json(&[
        "--as",
        "ann",
        "--shutdown-timeout",
        "1",
        "vm",
        "stop",
        "box",
    ]);
    assert_eq!(stopped["status"], "STOPPED");
    assert_eq!(virsh(&["domstate", &machine]), "shut off");
    assert_eq!(
        v.json(&["--as", "ann", "vm", "start", "box"])["status"],
        "RUNNING"
    );
    assert_eq!(virsh(&["domstate", &machine]), "running");
    assert_eq!(
        v.json(&[
            "--as",
            "ann",
            "--shutdown-timeout",
            "1",
            "vm",
            "restart",
            "box"
        ])["status"],
        "RUNNING"
    );
    assert_eq!(virsh(&["domstate", &machine]), "running");
    assert_eq!(
        v.json(&["--as", "ann", "vm", "destroy", "box"])["status"],
        "DESTROYED"
    );
    assert_eq!(
        virsh(&["domstate", &machine]),
        "",
        "the domain is still defined"
    );

    let credits = v.json(&["--as", "ann", "credits", "show"]);
    assert_eq!(
        credits["balance"].as_i64(),
        Some(50 - quote),
        "charged more than once"
    );
    assert_eq!(credits["entries"].as_array().map(Vec::len), Some(2));
}

#[test]
fn fifty_concurrent_creations_against_a_balance_for_ten_make_ten() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "local", "--uri", "test:///default"]);
    let cost = v.json(&[
        "quote",
        "--ram-mb",
        "1024",
        "--disk-gb",
        "20",
        "--cpus",
        "2",
    ])["cost"]
        .as_i64()
        .expect("cost");
    v.json(&["user", "add", "ann", "--credits", &(cost * 10).to_string()]);
    let children: Vec<_> = (0..50)
        .map(|i| {
            let name = format!("c{i:02}");
            v.command(&[
                "--as",
                "ann",
                "--json",
                "vm",
                "create",
                &name,
                "--ram-mb",
                "1024",
                "--disk-gb",
                "20",
                "--cpus",
                "2",
                "--no-start",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait"))
        .collect();
    assert_eq!(outputs.iter().filter(|o| o.status.success()).count(), 10);
    for o in outputs.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            err.trim_end(),
            format!(
                "error: not enough credits: the cost is {cost} but the balance of \"ann\" is 0"
            )
        );
    }
    assert_eq!(v.count("SELECT count(*) FROM vms"), 10);
    assert_eq!(v.count("SELECT balance FROM users WHERE name = 'ann'"), 0);
    assert_eq!(v.count("SELECT sum(amount) FROM ledger WHERE user_id = (SELECT id FROM users WHERE name = 'ann')"), 0);
}

#[test]
fn a_host_that_refuses_leaves_the_vm_failed_to_start_without_refund() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "qemu", "--uri", &qemu_uri()]);
    v.json(&["user", "add", "ann", "--credits", "3000"]);
    let cost = v.json(&["quote", "--ram-mb", "64", "--disk-gb", "1", "--cpus", "256"])["cost"]
        .as_i64()
        .expect("cost");
    // 256 vCPUs are more than QEMU's 'pc' machine takes (255): the host refuses.
    let out = v.run(&[
        "--as",
        "ann",
        "vm",
        "create",
        "wide",
        "--ram-mb",
        "64",
        "--disk-gb",
        "1",
        "--cpus",
        "256",
    ]);
    let vm = v.json(&["--as", "ann", "vm", "show", "wide"]);
    let _cleanup = Domain(vm["provider_id"].as_str().unwrap_or_default().to_owned());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: host \"qemu\" failed: the host refused"),
        "{err}"
    );
    assert_eq!(vm["status"], "FAILED_TO_START");
    assert_eq!(
        v.json(&["--as", "ann", "credits", "show"])["balance"].as_i64(),
        Some(3000 - cost),
        "refunded"
    );
    let failed = &v.json(&["events", "--limit", "1"])[0];
    assert_eq!(failed["action"], "vm.create_failed");
    assert_eq!(failed["details"]["refunded"], false);
    assert!(
        failed["details"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Maximum CPUs")),
        "{failed}"
    );
}
