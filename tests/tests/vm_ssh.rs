//! VMs on a network, with an address and SSH access (issue 15), on the real
//! QEMU host with tiny-linux: vmdesk's NAT network, the address from its
//! DHCP lease, the user's key through the cloud-init seed, `vmdesk ssh`.
#![allow(missing_docs)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vmdesk_tests::{qemu_uri, virsh, Machine, Vmdesk};

/// How long tiny-linux may take from its start to a lease.
const ADDRESS_WITHIN: Duration = Duration::from_secs(90);

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// tiny-linux in the catalog, the QEMU host, users ann and bob.
fn desk() -> Vmdesk {
    let v = Vmdesk::new();
    v.json(&["host", "add", "qemu", "--uri", &qemu_uri()]);
    v.import_tiny_linux();
    for u in ["ann", "bob"] {
        v.json(&["user", "add", u, "--credits", "100000"]);
    }
    v
}

/// Polls `vmdesk sync` until the VM's row has an address; returns it.
fn address(v: &Vmdesk, vm: &str) -> String {
    let t = Instant::now();
    loop {
        v.json(&["sync", "--once"]);
        if let Some(ip) = v.json(&["vm", "show", vm])["ip_address"].as_str() {
            return ip.to_owned();
        }
        assert!(
            t.elapsed() < ADDRESS_WITHIN,
            "VM {vm} got no address in {ADDRESS_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn ssh(v: &Vmdesk, user: &str, vm: &str, args: &[&str], limit: Duration) -> Output {
    v.ssh_until(user, vm, args, limit)
}

/// The system ssh with `user`'s key straight at `ip`, as someone who kept
/// the command line would run it.
fn raw_ssh(v: &Vmdesk, user: &str, ip: &str) -> Output {
    let key = v.dir.path().join("ssh").join(user).join("id_ed25519");
    Command::new("ssh")
        .args(["-i", key.to_str().expect("path")])
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "ConnectTimeout=10", "-l", "root", ip, "true"])
        .stdin(Stdio::null())
        .output()
        .expect("ssh")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("file").mode() & 0o777
}

fn events(v: &Vmdesk, action: &str) -> Vec<Value> {
    v.json(&["events", "--limit", "500"])
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

#[test]
fn a_new_vm_gets_an_address_and_its_owner_logs_in_with_vmdesk_ssh() {
    let v = desk();
    let created = v.create_tiny(Some("ann"), "net1", &[]);
    let _m = Machine(created["provider_id"].as_str().expect("machine").to_owned());
    assert_eq!(created["status"], "RUNNING", "{created}");

    let ip = address(&v, "net1");
    assert!(ip.starts_with("192.168."), "{ip}");
    let vm = v.json(&["vm", "show", "net1"]);
    assert_eq!(vm["ssh_port"], 22, "{vm}");
    let learned = events(&v, "vm.address");
    assert_eq!(learned.len(), 1, "{learned:?}");
    assert_eq!(learned[0]["details"]["now"], ip.as_str());
    assert_eq!(learned[0]["details"]["learned"], "lease", "{learned:?}");

    let out = ssh(&v, "ann", "net1", &["uname", "-s"], Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Linux");
    // The host key was fixed by the seed: checked strictly, never asked.
    let line = v.json(&["--as", "ann", "ssh", "net1", "--print"]);
    assert_eq!(line["target"]["host_key_known"], true, "{line}");
    assert!(
        line["command_line"]
            .as_str()
            .expect("line")
            .contains("StrictHostKeyChecking=yes"),
        "{line}"
    );
    // The guest took its name and only ann's key from the seed.
    let out = ssh(
        &v,
        "ann",
        "net1",
        &["hostname; cat /root/.ssh/authorized_keys"],
        Duration::from_secs(5),
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.starts_with("net1\n"), "{said}");
    let ann_key = v.json(&["--as", "ann", "ssh-key"])["public"]
        .as_str()
        .expect("key")
        .to_owned();
    assert_eq!(
        said.lines().skip(1).collect::<Vec<_>>(),
        vec![ann_key.as_str()],
        "{said}"
    );

    // Bob may not log in to ann's VM through vmdesk, nor with his key.
    let refused = v.fails(&["--as", "bob", "ssh", "net1", "--print"]);
    assert!(refused.contains("no VM named \"net1\""), "{refused}");
    v.json(&["--as", "bob", "ssh-key"]);
    assert!(
        !raw_ssh(&v, "bob", &ip).status.success(),
        "bob's key got in"
    );

    // Modes: the key files and the seed volume are private; no private key
    // (nor any of the seed) is in the database.
    let dir = v.dir.path().join("ssh").join("ann");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("id_ed25519")), 0o600);
    assert_eq!(mode(&dir.join("known_hosts")), 0o600);
    let machine = created["provider_id"].as_str().expect("machine");
    let seed = virsh(&[
        "vol-path",
        "--pool",
        "vmdesk",
        &format!("{machine}-seed.img"),
    ]);
    assert_eq!(mode(Path::new(&seed)), 0o600, "{seed}");
    let private = std::fs::read_to_string(dir.join("id_ed25519")).expect("key");
    let body: String = private.lines().nth(1).expect("key body").to_owned();
    for f in std::fs::read_dir(v.dir.path()).expect("data dir") {
        let p = f.expect("entry").path();
        if p.is_file() {
            let bytes = std::fs::read(&p).expect("read");
            let s = String::from_utf8_lossy(&bytes);
            assert!(
                !s.contains("PRIVATE KEY") && !s.contains(&body),
                "{} holds a private key",
                p.display()
            );
        }
    }

    // Stopped, it has no address; the event says so.
    v.json(&[
        "--as",
        "ann",
        "--shutdown-timeout",
        "1",
        "vm",
        "stop",
        "net1",
    ]);
    v.json(&["sync", "--once"]);
    assert_eq!(v.json(&["vm", "show", "net1"])["ip_address"], Value::Null);
    let changes = events(&v, "vm.address");
    assert_eq!(changes.len(), 2, "{changes:?}");
    v.json(&["--as", "ann", "-y", "vm", "destroy", "net1"]);
}

#[test]
fn a_pool_vm_lets_in_only_the_user_of_its_session() {
    let v = desk();
    v.json(&["credits", "grant", "admin", "1000000", "--reason", "tests"]);
    v.json(&["project", "create", "lab"]);
    let vm = v.json(&[
        "vm",
        "add",
        "pool1",
        "--pool",
        "lab",
        "--host",
        "qemu",
        "--os",
        "tiny-linux",
        "--ram-mb",
        "128",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    let _m = Machine(vm["provider_id"].as_str().expect("machine").to_owned());

    // ann's session: ann gets in.
    let s = v.json(&["--as", "ann", "session", "open", "--project", "lab"]);
    assert_eq!(s["status"], "ACTIVE", "{s}");
    let ip_ann = address(&v, "pool1");
    let out = ssh(&v, "ann", "pool1", &["true"], Duration::from_secs(60));
    assert!(out.status.success(), "ann: {}", text(&out));
    v.json(&[
        "--as",
        "ann",
        "-y",
        "session",
        "close",
        &s["id"].to_string(),
    ]);
    let refused = v.fails(&["--as", "ann", "ssh", "pool1", "--print"]);
    assert!(refused.contains("not yours"), "{refused}");

    // bob's session on the same VM: bob gets in, ann's key no longer does.
    let s = v.json(&["--as", "bob", "session", "open", "--project", "lab"]);
    assert_eq!(s["vm_name"], "pool1", "{s}");
    let ip_bob = address(&v, "pool1");
    let out = ssh(&v, "bob", "pool1", &["true"], Duration::from_secs(60));
    assert!(out.status.success(), "bob: {}", text(&out));
    let ann = raw_ssh(&v, "ann", &ip_bob);
    assert!(
        !ann.status.success(),
        "ann's key still gets in: {}",
        text(&ann)
    );
    assert!(text(&ann).contains("Permission denied"), "{}", text(&ann));
    // The same machine, a new instance: a new host key, known to bob only.
    let _ = ip_ann;
    v.json(&[
        "--as",
        "bob",
        "-y",
        "session",
        "close",
        &s["id"].to_string(),
    ]);
}

#[test]
fn the_network_is_defined_once_and_survives_a_daemon_restart() {
    let v = desk();
    let a = v.create_tiny(Some("ann"), "netA", &["--no-start"]);
    let _a = Machine(a["provider_id"].as_str().expect("machine").to_owned());
    let b = v.create_tiny(Some("ann"), "netB", &["--no-start"]);
    let _b = Machine(b["provider_id"].as_str().expect("machine").to_owned());
    let nets = virsh(&["net-list", "--all", "--name"]);
    assert_eq!(
        nets.lines().filter(|n| n.trim() == "vmdesk").count(),
        1,
        "{nets}"
    );
    let info = virsh(&["net-info", "vmdesk"]);
    assert!(info.contains("Autostart:      yes"), "{info}");
    let xml = virsh(&["dumpxml", a["provider_id"].as_str().expect("machine")]);
    assert!(xml.contains("<source network='vmdesk'"), "{xml}");
    assert!(xml.contains("<model type='virtio'/>"), "{xml}");

    // The daemon restarts: the network is still there and active, and a
    // VM started after it gets an address on it.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/libvirtd.sh");
    let restart = |what: &str| {
        let ok = Command::new("bash")
            .arg(&script)
            .arg(what)
            .stdout(Stdio::null())
            .status()
            .expect("libvirtd.sh");
        assert!(ok.success(), "libvirtd {what}");
    };
    Command::new("pkill")
        .args(["-u", "0", "-x", "libvirtd"])
        .status()
        .expect("pkill");
    std::thread::sleep(Duration::from_millis(500));
    restart("start");
    let info = virsh(&["net-info", "vmdesk"]);
    assert!(info.contains("Active:         yes"), "{info}");
    v.json(&["--as", "ann", "vm", "start", "netA"]);
    let ip = address(&v, "netA");
    assert!(ip.starts_with("192.168."), "{ip}");
    let nets = virsh(&["net-list", "--all", "--name"]);
    assert_eq!(
        nets.lines().filter(|n| n.trim() == "vmdesk").count(),
        1,
        "{nets}"
    );
    v.json(&[
        "--as",
        "ann",
        "--shutdown-timeout",
        "1",
        "vm",
        "stop",
        "netA",
    ]);
}
