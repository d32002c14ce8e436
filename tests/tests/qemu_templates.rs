//! Templates and bulk pools on the real QEMU host (issue 16): a stopped
//! tiny-linux VM's disk made into a catalog image (a flattened copy, with
//! no backing file), a pool filled with 5 VMs from it in one command, their
//! disks copy-on-write over the template's image volume, and a session on
//! one boots it to tiny-linux's shell.
#![allow(missing_docs)]

use std::path::Path;
use std::time::Duration;

use vmdesk_tests::{has_shell, qemu_uri, serial_until_shell, virsh, Machine, Vmdesk};

#[test]
fn a_template_from_a_stopped_vm_fills_a_pool_whose_vms_boot() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "qemu", "--uri", &qemu_uri()]);
    v.import_tiny_linux();
    v.json(&["credits", "grant", "admin", "1000000", "--reason", "tests"]);
    let base = v.create_tiny(None, "base", &["--no-start"]);
    let _base = Machine(base["provider_id"].as_str().expect("machine").to_owned());

    // Running or unknown: refused; stopped: made.
    let err = v.fails(&["vm", "template", "nosuch", "tpl"]);
    assert!(err.contains("no VM named \"nosuch\""), "{err}");
    let os = v.json(&["vm", "template", "base", "class-tpl"]);
    assert_eq!(os["name"], "class-tpl");
    assert_eq!(os["min_disk_gb"], base["disk_gb"]);
    let file = std::fs::read_dir(v.dir.path().join("os"))
        .expect("os dir")
        .map(|e| e.expect("entry").path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("class-tpl-"))
        })
        .expect("the template's file");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&file)
        .output()
        .expect("qemu-img");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    assert!(info.get("backing-filename").is_none(), "flattened: {info}");
    assert_eq!(info["format"], "qcow2");
    let err = v.fails(&["vm", "template", "base", "class-tpl"]);
    assert!(err.contains("already exists"), "{err}");

    // 5 VMs at once, names free from PREFIX-1.
    v.json(&["project", "create", "class"]);
    let vms = v.json(&[
        "pool",
        "fill",
        "class",
        "--from",
        "class-tpl",
        "--count",
        "5",
        "--prefix",
        "seat",
    ]);
    let vms = vms.as_array().expect("vms").clone();
    let _machines: Vec<Machine> = vms
        .iter()
        .map(|vm| Machine(vm["provider_id"].as_str().expect("machine").to_owned()))
        .collect();
    let names: Vec<&str> = vms.iter().filter_map(|vm| vm["name"].as_str()).collect();
    assert_eq!(names, ["seat-1", "seat-2", "seat-3", "seat-4", "seat-5"]);
    assert!(vms
        .iter()
        .all(|vm| vm["status"] == "STOPPED" && vm["os_type"] == "class-tpl"));
    // Copy-on-write over the template's image volume.
    let machine = vms[0]["provider_id"].as_str().expect("machine");
    let disk = virsh(&[
        "vol-dumpxml",
        "--pool",
        "vmdesk",
        &format!("{machine}.qcow2"),
    ]);
    assert!(
        disk.contains("<backingStore>") && disk.contains("class-tpl"),
        "{disk}"
    );

    // A student's session boots one of them to the shell.
    v.json(&["user", "add", "ann", "--credits", "100000"]);
    let s = v.json(&["--as", "ann", "session", "open", "--project", "class"]);
    assert_eq!(s["status"], "ACTIVE", "{s}");
    let vm = v.json(&["vm", "show", &s["vm_id"].to_string()]);
    let log = format!(
        "/var/log/libvirt/qemu/{}-serial.log",
        vm["provider_id"].as_str().expect("machine")
    );
    let console = serial_until_shell(Path::new(&log), Duration::from_secs(120));
    assert!(has_shell(&console), "no shell on the console:\n{console}");
    v.json(&[
        "--as",
        "ann",
        "--shutdown-timeout",
        "1",
        "session",
        "close",
        &s["id"].to_string(),
    ]);
}
