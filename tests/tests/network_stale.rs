//! vmdesk's network on the real QEMU host when a daemon died without
//! tearing it down: its bridge, with its address, is still in the kernel and
//! the daemon that comes back has the network defined but cannot start it
//! ("Network is already in use by interface vmdesk0"). A VM must still start
//! and create. Its own binary: it takes the network down, which would break
//! the VMs of tests running beside it.
#![allow(missing_docs)]

use std::process::Command;

use vmdesk_tests::{qemu_uri, virsh, Machine, Vmdesk};

/// Runs `ip ARGS`, asserting it worked.
fn ip(args: &[&str]) {
    let ok = Command::new("ip").args(args).status().expect("ip");
    assert!(ok.success(), "ip {args:?}");
}

/// A bridge made by hand, removed at the end of the test.
struct Bridge(String);
impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// The `name` and `address` attributes of the network's bridge and IP.
fn bridge_and_address() -> (String, String) {
    let xml = virsh(&["net-dumpxml", "vmdesk"]);
    let attr = |tag: &str, name: &str| {
        let at = xml.find(tag).unwrap_or_else(|| panic!("{tag} in {xml}"));
        let rest = &xml[at..];
        let key = format!("{name}='");
        let from = rest.find(&key).unwrap_or_else(|| panic!("{name} in {xml}")) + key.len();
        rest[from..from + rest[from..].find('\'').expect("quote")].to_owned()
    };
    (attr("<bridge", "name"), attr("<ip", "address"))
}

#[test]
fn a_bridge_left_by_a_dead_daemon_does_not_keep_vms_from_starting() {
    let v = Vmdesk::new();
    v.json(&["host", "add", "qemu", "--uri", &qemu_uri()]);
    v.import_tiny_linux();
    v.json(&["user", "add", "ann", "--credits", "100000"]);
    let a = v.create_tiny(Some("ann"), "staleA", &["--no-start"]);
    let _a = Machine(a["provider_id"].as_str().expect("machine").to_owned());
    let (bridge, address) = bridge_and_address();

    // What a daemon killed with its network up leaves once its run state
    // is gone: the network defined but down, its bridge still holding the
    // subnet's address.
    virsh(&["net-destroy", "vmdesk"]);
    ip(&["link", "add", &bridge, "type", "bridge"]);
    let _stale = Bridge(bridge.clone());
    ip(&["addr", "add", &format!("{address}/24"), "dev", &bridge]);
    ip(&["link", "set", &bridge, "up"]);
    let refused = Command::new("virsh")
        .args(["-c", &qemu_uri(), "net-start", "vmdesk"])
        .output()
        .expect("virsh");
    assert!(
        !refused.status.success(),
        "libvirt starts the network over the stale bridge: the test sets up nothing"
    );

    // The machine defined before starts: vmdesk defines the network again
    // on the next free bridge and subnet.
    v.json(&["--as", "ann", "vm", "start", "staleA"]);
    let info = virsh(&["net-info", "vmdesk"]);
    assert!(info.contains("Active:         yes"), "{info}");
    let (now, _) = bridge_and_address();
    assert_ne!(now, bridge, "the network moved off the stale bridge");
    let state = virsh(&["domstate", a["provider_id"].as_str().expect("machine")]);
    assert!(state.contains("running"), "{state}");

    // A new machine is created on it too.
    let b = v.create_tiny(Some("ann"), "staleB", &["--no-start"]);
    let _b = Machine(b["provider_id"].as_str().expect("machine").to_owned());
    v.json(&[
        "--as",
        "ann",
        "--shutdown-timeout",
        "1",
        "vm",
        "stop",
        "staleA",
    ]);
}
