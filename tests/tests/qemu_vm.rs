//! A user's own VM on a real libvirt daemon with QEMU, through the CLI.
#![allow(missing_docs)]

use std::process::Stdio;

use vmdesk_tests::{has_shell, qemu_uri, serial_until_shell, tiny_linux, virsh, Machine, Vmdesk};

#[test]
fn create_stop_start_restart_destroy_on_qemu_charge_once() {
    let v = Vmdesk::new();
    v.qemu_and_ann(50);
    let quote = v.cost("64", "1", "1");

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
    let _cleanup = Machine(machine.clone());
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
    assert_eq!(
        virsh(&["vol-info", "--pool", "vmdesk", &format!("{machine}.qcow2")]),
        "",
        "the disk is left"
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
    v.qemu_and_ann(3000);
    let cost = v.cost("64", "1", "256");
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
    let _cleanup = Machine(vm["provider_id"].as_str().unwrap_or_default().to_owned());
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

/// Deletes a volume of the vmdesk pool when dropped.
struct Volume(String);

impl Drop for Volume {
    fn drop(&mut self) {
        virsh(&["vol-delete", "--pool", "vmdesk", &self.0]);
    }
}

#[test]
fn a_vm_of_the_tiny_linux_image_boots_to_a_shell() {
    let image = tiny_linux();
    assert!(
        image.exists(),
        "{} is missing: `make os-image` builds it",
        image.display()
    );
    let v = Vmdesk::new();
    v.json(&["host", "add", "qemu", "--uri", &qemu_uri()]);
    v.json(&["os", "import", "tiny-linux", image.to_str().expect("path")]);
    v.json(&["user", "add", "ann", "--credits", "100"]);
    let vm = v.json(&[
        "--as",
        "ann",
        "vm",
        "create",
        "linux",
        "--os",
        "tiny-linux",
        "--ram-mb",
        "128",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    let machine = vm["provider_id"].as_str().expect("machine").to_owned();
    let _cleanup = Machine(machine.clone());
    let sha: String = v
        .db()
        .query_row(
            "SELECT sha256 FROM os_images WHERE name = 'tiny-linux'",
            [],
            |r| r.get(0),
        )
        .expect("the image's checksum");
    let _image = Volume(format!(
        "vmdesk-os-tiny-linux-{}-{}.qcow2",
        v.install_tag(),
        &sha[..12]
    ));
    assert_eq!(vm["status"], "RUNNING");
    // Its disk is a copy-on-write layer over the image uploaded to the host.
    let disk = virsh(&[
        "vol-dumpxml",
        "--pool",
        "vmdesk",
        &format!("{machine}.qcow2"),
    ]);
    assert!(disk.contains("vmdesk-os-tiny-linux-"), "{disk}");
    let log = format!("/var/log/libvirt/qemu/{machine}-serial.log");
    let console = serial_until_shell(
        std::path::Path::new(&log),
        std::time::Duration::from_secs(90),
    );
    assert!(
        console.contains("tiny-linux (vmdesk)") && has_shell(&console),
        "no shell on the serial console: {console}"
    );
    v.json(&["--as", "ann", "vm", "destroy", "linux"]);
    assert_eq!(
        virsh(&["vol-info", "--pool", "vmdesk", &format!("{machine}.qcow2")]),
        "",
        "the disk is left"
    );
}

#[test]
fn a_vm_defined_before_the_console_devices_gets_them_at_its_next_start() {
    let v = Vmdesk::new();
    v.qemu_and_ann(50);
    let (_, cleanup) = v.create_blank("ann", "old1");
    let machine = cleanup.0.clone();
    let stopped = v.json(&[
        "--as",
        "ann",
        "--shutdown-timeout",
        "1",
        "vm",
        "stop",
        "old1",
    ]);
    assert_eq!(stopped["status"], "STOPPED");
    // As an earlier vmdesk defined it: no clipboard channel, a VGA display.
    let xml = virsh(&["dumpxml", "--inactive", &machine]);
    let start = xml.find("<channel type='qemu-vdagent'>").expect(&xml);
    let end = start + xml[start..].find("</channel>").expect("end") + "</channel>".len();
    let video = xml.find("<video>").expect("video");
    let video_end = video + xml[video..].find("</video>").expect("end") + "</video>".len();
    let old = format!(
        "{}{}<video><model type='vga'/></video>{}",
        &xml[..start],
        &xml[end..video],
        &xml[video_end..]
    );
    let file = v.dir.path().join("old.xml");
    std::fs::write(&file, old).expect("write");
    virsh(&["define", file.to_str().expect("path")]);
    assert!(!virsh(&["dumpxml", "--inactive", &machine]).contains("qemu-vdagent"));

    let started = v.json(&["--as", "ann", "vm", "start", "old1"]);
    assert_eq!(started["status"], "RUNNING");
    let live = virsh(&["dumpxml", &machine]);
    assert!(live.contains("<channel type='qemu-vdagent'>"), "{live}");
    assert!(live.contains("<model type='virtio'"), "{live}");
    assert!(!live.contains("<model type='vga'"), "{live}");
}
