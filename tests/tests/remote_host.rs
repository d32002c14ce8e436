//! A libvirt host that is really elsewhere: a session libvirtd in its own
//! network namespace, reached as `qemu+ssh://` (scripts/remote-host.sh).
//! VMs are made, watched and shown there as on the local host; their
//! consoles come through an SSH channel to the display's unix socket, since
//! the host's loopback is not the desk's.
#![allow(missing_docs)]

use std::time::Duration;

use vmdesk_tests::remote::{wait_for, Remote};
use vmdesk_tests::vnc::{connect, Rfb, TEST_ORIGIN};
use vmdesk_tests::Machine;

#[test]
fn a_remote_vm_runs_and_its_console_comes_through_ssh_with_nothing_listening_on_tcp() {
    let Some(remote) = Remote::get() else { return };
    let v = remote.desk();
    let (vm, _gone) = remote.create(&v, "far", "128", Some("remote"));
    assert_eq!(vm["status"], "RUNNING", "{vm}");
    assert_eq!(vm["host"], "remote");
    let machine = vm["provider_id"].as_str().expect("machine").to_owned();
    assert_eq!(remote.virsh(&["domstate", &machine]), "running");

    // Nothing of the VM listens on TCP on the remote host: only its sshd.
    let listening = remote.tcp_listeners();
    for line in listening.lines() {
        assert!(
            line.contains("\"sshd\""),
            "a TCP listener that is not sshd: {line}"
        );
    }

    // The console: the bridge reaches the display over SSH. (Dialling the
    // host's 127.0.0.1 from here would reach the desk's own loopback.)
    let (mut bridge, console) = v.open_console("far");
    let url = console["url"].as_str().expect("url").to_owned();
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let ws = connect(&url, TEST_ORIGIN).await.expect("accepted");
            let mut rfb = Rfb::new(ws);
            let init = rfb.handshake().await;
            assert!(init.width > 0 && init.height > 0, "{init:?}");
            assert!(rfb.framebuffer_update(init.width, init.height).await > 0);
            rfb.into_inner().close(None).await.expect("close");
        });
    bridge
        .exits_within(Duration::from_secs(10))
        .expect("the console ended with its viewer");

    // The host view: reachable, one VM running, its console through ssh.
    let hosts = v.json(&["host", "list"]);
    let row = hosts
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["name"] == "remote")
        .expect("remote in the list")
        .clone();
    assert_eq!(row["reachable"], true, "{row}");
    assert_eq!(row["console"], "ssh", "{row}");
    assert_eq!(row["vms"], 1, "{row}");
    assert_eq!(row["running"], 1, "{row}");
    assert!(
        row["free_memory_mb"].as_i64().expect("free memory") > 0,
        "{row}"
    );
    assert!(
        row["free_disk_mb"].as_i64().expect("free disk") > 0,
        "{row}"
    );
    assert_eq!(row["last_event"]["vm"], "far", "{row}");
    let local = hosts
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["name"] == "local")
        .expect("local");
    assert_eq!(local["console"], "local", "{local}");

    // Destroyed through vmdesk: gone from the remote host too.
    v.json(&["--yes", "vm", "destroy", "far"]);
    assert!(
        !remote
            .virsh(&["list", "--all", "--name"])
            .contains(&machine),
        "the machine is gone from the remote host"
    );
}

#[test]
fn a_pool_session_on_the_remote_host_ends_when_its_vm_is_destroyed_behind_vmdesks_back() {
    let Some(remote) = Remote::get() else { return };
    let v = remote.desk();
    v.json(&["project", "create", "lab"]);
    let vm = v.json(&[
        "vm",
        "add",
        "far-pool",
        "--pool",
        "lab",
        "--host",
        "remote",
        "--ram-mb",
        "64",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    let machine = vm["provider_id"].as_str().expect("machine").to_owned();
    let _gone = remote.machine(&machine);
    let _watcher = v.watcher();
    let s = v.json(&["session", "open", "--project", "lab"]);
    assert_eq!(s["status"], "ACTIVE", "{s}");
    assert_eq!(remote.virsh(&["domstate", &machine]), "running");

    remote.virsh(&["destroy", &machine]);
    wait_for(
        "the session TERMINATED through the remote host's events",
        Duration::from_secs(20),
        || v.json(&["session", "list"])[0]["status"] == "TERMINATED",
    );
    let events = v.json(&["events", "--limit", "50"]);
    let synced = events
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["action"] == "sync.status" && e["details"]["source"] == "event");
    assert!(
        synced.is_some(),
        "seen through an event, not only a poll: {events}"
    );
}

#[test]
fn a_vm_that_fits_no_host_is_refused_before_anything_is_charged() {
    let Some(remote) = Remote::get() else { return };
    let v = remote.desk();
    let before = v.json(&["credits", "show"])["balance"].clone();
    let out = v.fails(&[
        "vm",
        "create",
        "huge",
        "--os",
        "tiny-linux",
        "--ram-mb",
        "1000000",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
    ]);
    assert!(out.contains("no host has room"), "{out}");
    assert!(out.contains("the most free memory is"), "{out}");
    assert!(out.contains("nothing was charged"), "{out}");
    assert_eq!(v.json(&["credits", "show"])["balance"], before);
    assert_eq!(v.count("SELECT COUNT(*) FROM vms"), 0);

    // Named, the remote host refuses it the same way.
    let out = v.fails(&[
        "vm",
        "create",
        "huge",
        "--os",
        "tiny-linux",
        "--ram-mb",
        "1000000",
        "--disk-gb",
        "1",
        "--cpus",
        "1",
        "--host",
        "remote",
    ]);
    assert!(out.contains("on remote"), "{out}");
    assert_eq!(v.json(&["credits", "show"])["balance"], before);

    // Without a host, a VM that fits goes where `host list` shows the most
    // free memory (both hosts share this machine's memory: either may win,
    // but it lands on one of them and is paid for once).
    let (vm, _gone_remote) = remote.create(&v, "placed", "128", None);
    let machine = vm["provider_id"].as_str().expect("machine").to_owned();
    let _gone_local = Machine(machine);
    assert!(vm["host"] == "local" || vm["host"] == "remote", "{vm}");
    assert_eq!(vm["status"], "RUNNING", "{vm}");
}

#[test]
fn a_remote_machine_whose_row_is_lost_is_quarantined_there_and_purged() {
    let Some(remote) = Remote::get() else { return };
    let v = remote.desk();
    let (vm, _gone) = remote.create(&v, "lost", "128", Some("remote"));
    let machine = vm["provider_id"].as_str().expect("machine").to_owned();
    // As if the database had lost the row (restored from an older copy, say).
    v.db()
        .execute("DELETE FROM vms WHERE name = 'lost'", [])
        .expect("delete the row");

    let done = v.json(&["recover"]);
    assert_eq!(
        done["quarantined"][0]["machine"],
        machine.as_str(),
        "{done}"
    );
    assert_eq!(done["quarantined"][0]["host"], "remote", "{done}");
    assert_eq!(remote.virsh(&["domstate", &machine]), "shut off");
    let disk = || remote.virsh(&["vol-info", "--pool", "vmdesk", &format!("{machine}.qcow2")]);
    assert_ne!(disk(), "", "the disk is kept");
    let purged = v.json(&["recover", "--purge", "--grace-secs", "0"]);
    assert_eq!(purged["purged"][0]["machine"], machine.as_str(), "{purged}");
    assert_eq!(
        remote.virsh(&["domstate", &machine]),
        "",
        "the domain is gone"
    );
    assert_eq!(disk(), "", "the disk is gone");
}

#[test]
fn a_remote_vm_on_its_hosts_bridge_gets_an_address_and_ssh_goes_through_the_host() {
    let Some(remote) = Remote::get() else { return };
    let v = remote.desk();
    // The remote host's own network: the bridge its admin made for the
    // session daemon (scripts/remote-host.sh), named in the desk's settings.
    v.write_settings("[network.hosts.remote]\nbridge = \"vmdbr0\"\n");
    let (vm, _guard) = remote.create(&v, "rnet", "128", Some("remote"));
    assert_eq!(vm["status"], "RUNNING", "{vm}");
    let machine = vm["provider_id"].as_str().expect("machine");
    let xml = remote.virsh(&["dumpxml", machine]);
    assert!(xml.contains("<source bridge='vmdbr0'/>"), "{xml}");

    // No lease that libvirt knows (dnsmasq is the host's own): the guest
    // agent tells the address.
    let mut ip = String::new();
    wait_for("an address", Duration::from_secs(90), || {
        v.json(&["sync", "--once"]);
        ip = v.json(&["vm", "show", "rnet"])["ip_address"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        !ip.is_empty()
    });
    assert!(
        ip.starts_with("10.213.48."),
        "{ip}: not on the remote host's network"
    );
    let learned: Vec<serde_json::Value> = v
        .json(&["events", "--limit", "200"])
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["action"] == "vm.address")
        .cloned()
        .collect();
    assert_eq!(learned[0]["details"]["learned"], "agent", "{learned:?}");

    // The desk has no route to that network: ssh jumps through the host.
    let line = v.json(&["ssh", "rnet", "--print"]);
    let cmd = line["command_line"].as_str().expect("line");
    assert!(cmd.contains(" -J vmdesk-remote@10.213.47.2 "), "{cmd}");
    let mut said = String::new();
    wait_for(
        "vmdesk ssh through the remote host",
        Duration::from_secs(60),
        || {
            let o = v
                .command(&["ssh", "rnet", "--", "uname", "-s"])
                .stdin(std::process::Stdio::null())
                .output()
                .expect("vmdesk ssh");
            said = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            o.status.success()
        },
    );
    assert_eq!(said, "Linux");
    v.json(&["--shutdown-timeout", "1", "-y", "vm", "destroy", "rnet"]);
}
