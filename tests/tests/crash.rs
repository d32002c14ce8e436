//! kill -9 of a `vmdesk vm create` at each step of the creation, on the real
//! QEMU host: the next start settles every interrupted creation, and nothing
//! is left on the host without its row.
#![allow(missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use vmdesk_tests::{virsh, Machine, Vmdesk};

/// The steps a creation reports (VMDESK_PROGRESS=jsonl), and how long after
/// each the process is killed: at once (between steps) or a little later
/// (in the middle of the step).
const KILL_AT: [(&str, u64); 4] = [
    ("connecting to the host", 0), // after the commit
    ("creating the disk", 5),      // during the volume
    ("starting the machine", 0),   // after the domain is defined
    ("starting the machine", 150), // during start
];

#[test]
fn twenty_creations_killed_at_each_step_are_all_settled_at_the_next_start() {
    let v = Vmdesk::new();
    v.qemu_and_ann(1000);
    let cost = v.cost("64", "1", "1");
    let tag = format!("-{}", v.install_tag());

    let mut machines = Vec::new();
    for run in 0..20 {
        let (step, delay) = KILL_AT[run % KILL_AT.len()];
        let name = format!("crash{run:02}");
        let mut child = v
            .command(&[
                "--as",
                "ann",
                "vm",
                "create",
                &name,
                "--ram-mb",
                "64",
                "--disk-gb",
                "1",
                "--cpus",
                "1",
            ])
            .env("VMDESK_PROGRESS", "jsonl")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        for line in BufReader::new(stderr).lines() {
            let line = line.expect("read progress");
            let p: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if p["message"] == step {
                std::thread::sleep(Duration::from_millis(delay));
                break;
            }
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        machines.push(Machine(format!("vmdesk-{name}{tag}")));
    }

    // The next start (any command) settles what the killed processes left.
    v.json(&["vm", "list", "--all"]);
    assert_eq!(
        v.count("SELECT count(*) FROM vms WHERE status IN ('CREATING', 'STARTING')"),
        0
    );
    assert_eq!(v.count("SELECT count(*) FROM vms"), 20);
    assert_eq!(
        v.count("SELECT count(*) FROM events WHERE action = 'recovery.vm'"),
        20,
        "one event per repair"
    );
    // Every creation was paid once, and nothing else moved.
    assert_eq!(
        v.count("SELECT balance FROM users WHERE name = 'ann'"),
        1000 - 20 * cost
    );
    assert_eq!(
        v.count("SELECT sum(amount) FROM ledger WHERE user_id = (SELECT id FROM users WHERE name = 'ann')"),
        1000 - 20 * cost
    );
    let states: Vec<String> = {
        let db = v.db();
        let mut stmt = db
            .prepare("SELECT json_extract(details, '$.machine') FROM events WHERE action = 'recovery.vm'")
            .expect("prepare");
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    };
    eprintln!("machines found by recovery: {states:?}");
    // A creation killed while its machine started left it off.
    let running = virsh(&["list", "--name"]);
    assert!(
        !running.lines().any(|d| d.ends_with(&tag)),
        "a failed VM runs: {running}"
    );
    // Whatever reached the host belongs to a row.
    let rows: Vec<String> = {
        let db = v.db();
        let mut stmt = db.prepare("SELECT provider_id FROM vms").expect("prepare");
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    };
    let domains = virsh(&["list", "--all", "--name"]);
    for d in domains.lines().filter(|d| d.ends_with(&tag)) {
        assert!(rows.iter().any(|r| r == d), "domain {d} has no row");
    }
    let volumes = virsh(&["vol-list", "vmdesk"]);
    for vol in volumes
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.ends_with(&format!("{tag}.qcow2")))
    {
        assert!(
            rows.iter().any(|r| format!("{r}.qcow2") == vol),
            "volume {vol} has no row"
        );
    }

    // The settled VMs can be destroyed, and then nothing of them is left.
    for run in 0..20 {
        v.json(&["--as", "ann", "vm", "destroy", &format!("crash{run:02}")]);
    }
    assert!(
        !virsh(&["list", "--all", "--name"]).contains(&tag),
        "a domain is left"
    );
    assert!(
        !virsh(&["vol-list", "vmdesk"]).contains(&tag),
        "a volume is left"
    );
    drop(machines);
}

fn create_own(v: &Vmdesk, name: &str) -> String {
    let vm = v.json(&[
        "--as",
        "ann",
        "vm",
        "create",
        name,
        "--ram-mb",
        "64",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    vm["provider_id"].as_str().expect("machine").to_owned()
}

fn disk_of(machine: &str) -> String {
    virsh(&["vol-info", "--pool", "vmdesk", &format!("{machine}.qcow2")])
}

#[test]
fn recover_quarantines_a_machine_whose_row_is_lost_and_purge_deletes_it() {
    let v = Vmdesk::new();
    v.qemu_and_ann(100);
    let machine = create_own(&v, "orphan");
    let _cleanup = Machine(machine.clone());
    // As if the database had lost the row (restored from an older copy, say).
    v.db()
        .execute("DELETE FROM vms WHERE name = 'orphan'", [])
        .expect("delete the row");
    assert_eq!(virsh(&["domstate", &machine]), "running");

    let done = v.json(&["recover"]);
    let actions: Vec<&str> = done["repairs"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["recovery.quarantine"]);
    assert_eq!(done["repairs"][0]["details"]["machine"], machine.as_str());
    assert_eq!(done["quarantined"][0]["machine"], machine.as_str());
    assert_eq!(
        virsh(&["domstate", &machine]),
        "shut off",
        "stopped, still defined"
    );
    assert_ne!(disk_of(&machine), "", "the disk is kept");
    // A second run finds nothing new and still lists it.
    let again = v.json(&["recover"]);
    assert_eq!(again["repairs"].as_array().map(Vec::len), Some(0));
    assert_eq!(again["quarantined"].as_array().map(Vec::len), Some(1));
    // Within the grace period a purge deletes nothing.
    let kept = v.json(&["recover", "--purge"]);
    assert_eq!(kept["purged"].as_array().map(Vec::len), Some(0));
    assert_ne!(disk_of(&machine), "");

    let purged = v.json(&["recover", "--purge", "--grace-secs", "0"]);
    assert_eq!(purged["purged"][0]["machine"], machine.as_str());
    assert_eq!(virsh(&["domstate", &machine]), "", "the domain is gone");
    assert_eq!(disk_of(&machine), "", "the disk is gone");
    assert_eq!(purged["quarantined"].as_array().map(Vec::len), Some(0));
}

#[test]
fn recovery_in_a_copied_data_directory_leaves_the_originals_machines_alone() {
    let v = Vmdesk::new();
    v.qemu_and_ann(200);
    let before = create_own(&v, "early");
    let _c1 = Machine(before.clone());
    // Copy the data directory (as a backup or a second desk would).
    let copy = Vmdesk::new();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", v.dir.path().display()))
        .arg(copy.dir.path())
        .status()
        .expect("cp");
    assert!(status.success());
    // The original goes on and makes a VM the copy has no row of.
    let after = create_own(&v, "later");
    let _c2 = Machine(after.clone());

    let done = copy.json(&["recover"]);
    assert_eq!(done["repairs"].as_array().map(Vec::len), Some(0), "{done}");
    assert_eq!(
        done["quarantined"].as_array().map(Vec::len),
        Some(0),
        "{done}"
    );
    assert_eq!(virsh(&["domstate", &after]), "running");
    assert_ne!(disk_of(&after), "");
    assert_eq!(virsh(&["domstate", &before]), "running");
    assert_ne!(
        copy.install_tag(),
        v.install_tag(),
        "the copy has an install id of its own"
    );
    assert_eq!(
        copy.count("SELECT count(*) FROM events WHERE action = 'install.copied'"),
        1
    );
}
