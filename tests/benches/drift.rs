//! Drift detection latency through libvirt's lifecycle events: a VM of an
//! ACTIVE session is destroyed behind vmdesk's back (`virsh destroy`) while
//! `vmdesk sync --watch` runs; the time until the session is TERMINATED in
//! the database is measured, 10 times.
//! Needs the libvirt daemon (`make libvirt`).
//!
//! Run: `cargo bench -p vmdesk-tests --bench drift` (or `make bench`).
#![allow(missing_docs, clippy::unwrap_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use vmdesk_tests::{virsh, KillOnDrop, Vmdesk};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches`: nothing to smoke-test without a host.
    }
    let v = Vmdesk::new();
    let (machine, _cleanup) = v.qemu_pool_vm("drift");
    let _watcher = KillOnDrop(
        v.command(&["sync", "--watch"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let mut times = Vec::new();
    for _ in 0..10 {
        let s = v.json(&["session", "open", "--project", "lab"]);
        assert_eq!(s["status"], "ACTIVE");
        let sid = s["id"].as_i64().unwrap();
        let t = Instant::now();
        virsh(&["destroy", &machine]);
        let destroyed = t.elapsed();
        while v.count(&format!(
            "SELECT count(*) FROM sessions WHERE id = {sid} AND status = 'TERMINATED'"
        )) == 0
        {
            assert!(t.elapsed() < Duration::from_secs(30), "never seen");
            std::thread::sleep(Duration::from_millis(2));
        }
        times.push((t.elapsed(), destroyed));
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (median, p90, max) = (times[4].0, times[8].0, times[9].0);
    println!("drift detection through events (virsh destroy -> session TERMINATED), 10 runs:");
    println!(
        "  median {:.0} ms, p90 {:.0} ms, max {:.0} ms (of which `virsh destroy` itself ~{:.0} ms)",
        ms(median),
        ms(p90),
        ms(max),
        ms(times[4].1)
    );
    println!("  (this includes the reboot grace: the stop event is confirmed by a second look after [sync] reboot_grace_ms, 800 ms by default)");
}
