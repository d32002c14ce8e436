//! End to end in the real app (issue 15): a running VM's address shows in
//! its detail and follows a lease that changes (an event, no reload), the
//! detail's *Copy SSH command* puts the command on the desktop's clipboard,
//! and *Open terminal* opens the terminal emulator logged in to the VM.
//! Screenshots are in target/artifacts/.
#![allow(missing_docs)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmdesk_tests::{e2e, qemu_uri, virsh, Machine, Vmdesk};

/// Removes a static DHCP host of vmdesk's network when dropped.
struct DhcpHost(String);

impl Drop for DhcpHost {
    fn drop(&mut self) {
        virsh(&[
            "net-update",
            "vmdesk",
            "delete",
            "ip-dhcp-host",
            &self.0,
            "--live",
            "--config",
        ]);
    }
}

#[test]
fn the_address_shows_follows_the_lease_and_the_ssh_actions_work() {
    let v = Vmdesk::new();
    // Quick sync passes, so that a changed lease shows within seconds.
    v.write_settings("[sync]\nfast_interval_secs = 2\n");
    v.json(&["host", "add", "qemu", "--uri", &qemu_uri()]);
    v.import_tiny_linux();
    v.json(&["credits", "grant", "admin", "100000", "--reason", "tests"]);
    let vm = v.create_tiny(None, "e2e-net", &[]);
    let machine = vm["provider_id"].as_str().expect("machine").to_owned();
    let _m = Machine(machine.clone());

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let new_ip = rt.block_on(async {
        let app = e2e::open(&v, &["--view", "vms"], 0, "ssh").await;
        app.click(r#"button[aria-label="Details of e2e-net"]"#).await;
        // The watcher learns the lease (no reload of the view).
        let t = Instant::now();
        let ip = loop {
            let ip = app.text(r#"[data-testid="detail-ip-e2e-net"]"#).await;
            if ip.starts_with("192.168.") {
                break ip;
            }
            assert!(t.elapsed() < Duration::from_secs(90), "no address shown: {ip:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let line = app
            .wait_text(r#"[data-testid="detail-ssh-e2e-net"]"#, "the SSH command", |s| {
                s.starts_with("ssh ")
            })
            .await;
        assert!(line.contains("HostKeyAlias=vmdesk-vm-"), "{line}");
        assert!(line.ends_with(&format!(" {ip}")), "{line}");
        app.shot("vm-detail-ssh").await;

        // Copy SSH command: the desktop's clipboard holds it.
        app.click(r#"button[aria-label="Copy the SSH command of e2e-net"]"#).await;
        let t = Instant::now();
        loop {
            let held = app.clipboard();
            if held == line {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "clipboard: {held:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Open terminal: a terminal emulator runs that ssh.
        app.click(r#"button[aria-label="Open a terminal logged in to e2e-net"]"#).await;
        let t = Instant::now();
        let pattern = format!("HostKeyAlias=vmdesk-vm-.* {ip}$");
        loop {
            let found = Command::new("pgrep").args(["-f", &pattern]).output().expect("pgrep");
            if found.status.success() {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no terminal runs ssh to {ip}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        app.shot("terminal-opened").await;
        let _ = Command::new("pkill").args(["-f", &pattern]).status();

        // The lease changes: a fixed address for the VM's MAC, and the guest
        // releases and renews its lease. The detail follows.
        let xml = virsh(&["dumpxml", &machine]);
        let mac = xml
            .split("<mac address='")
            .nth(1)
            .and_then(|r| r.split('\'').next())
            .expect("the NIC's MAC")
            .to_owned();
        let prefix = ip.rsplit_once('.').expect("IPv4").0;
        let new_ip = format!("{prefix}.251");
        let host = format!("<host mac='{mac}' ip='{new_ip}'/>");
        virsh(&["net-update", "vmdesk", "add", "ip-dhcp-host", &host, "--live", "--config"]);
        let _fixed = DhcpHost(host);
        let net = virsh(&["net-dumpxml", "vmdesk"]);
        assert!(net.contains(&new_ip), "the fixed address is not in the network: {net}");
        let renew = v
            .command(&[
                "ssh", "e2e-net", "--",
                "(sleep 1; kill -USR2 $(pidof udhcpc); sleep 1; kill -USR1 $(pidof udhcpc)) >/dev/null 2>&1 </dev/null &",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("vmdesk ssh");
        assert!(renew.status.success(), "{}", String::from_utf8_lossy(&renew.stderr));
        let shown = app
            .wait_text(r#"[data-testid="detail-ip-e2e-net"]"#, "the new address", |s| s == new_ip)
            .await;
        assert_eq!(shown, new_ip);
        app.shot("vm-detail-new-address").await;
        app.close().await;
        new_ip
    });
    let moved: Vec<serde_json::Value> = v
        .json(&["events", "--limit", "200"])
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["action"] == "vm.address")
        .cloned()
        .collect();
    assert!(
        moved.iter().any(|e| e["details"]["now"] == new_ip.as_str()),
        "no vm.address event to {new_ip}: {moved:?}"
    );
    v.json(&["--shutdown-timeout", "1", "-y", "vm", "destroy", "e2e-net"]);
}
