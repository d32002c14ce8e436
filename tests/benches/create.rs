//! VM creation on the real QEMU host: time from `vm create` to RUNNING for the
//! blank OS and for tiny-linux, and creations per second with several at once.
//! Needs the libvirt daemon (`make libvirt`) and the image (`make os-image`).
//!
//! Run: `cargo bench -p vmdesk-tests --bench create` (or `make bench`).
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmdesk_core::{Core, OpenOptions, VmAction, VmCreate};
use vmdesk_libvirt::LibvirtFactory;
use vmdesk_tests::qemu_uri;

fn open(dir: &Path) -> Core {
    let mut opts = OpenOptions::new(dir, Arc::new(LibvirtFactory::new()));
    opts.shutdown_timeout = Duration::from_secs(1);
    Core::open(opts).unwrap()
}

fn spec(name: &str, os: &str) -> VmCreate {
    VmCreate {
        name: name.into(),
        ram_mb: 128,
        disk_gb: 1,
        cpu_cores: 1,
        os_type: os.into(),
        host: None,
        start: true,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches`: nothing to smoke-test without a host.
    }
    let dir = tempfile::tempdir().unwrap();
    let core = open(dir.path());
    core.host_add("admin", "qemu", &qemu_uri()).unwrap();
    core.credits_grant("admin", "admin", 1_000_000, "bench")
        .unwrap();
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/os/tiny-linux.qcow2");
    let has_image = image.exists() && core.os_import("admin", "tiny-linux", &image).is_ok();
    let mut made = Vec::new();

    println!("vm create -> RUNNING, one at a time (5 runs each; 128 MB, 1 CPU, TCG)");
    for os in ["blank", "tiny-linux"] {
        if os == "tiny-linux" && !has_image {
            println!(
                "  tiny-linux: skipped ({} is missing; `make os-image`)",
                image.display()
            );
            continue;
        }
        let mut times = Vec::new();
        let mut shells = Vec::new();
        for i in 0..5 {
            let name = format!("b-{os}-{i}");
            let t = Instant::now();
            let vm = core
                .vm_create("admin", &spec(&name, os), true, None)
                .unwrap();
            times.push(t.elapsed());
            if os == "tiny-linux" {
                // Until the guest's shell prompt appears on its serial console.
                let log = format!(
                    "/var/log/libvirt/qemu/{}-serial.log",
                    vm.provider_id.unwrap_or_default()
                );
                while t.elapsed() < Duration::from_secs(120)
                    && !std::fs::read_to_string(&log)
                        .unwrap_or_default()
                        .contains("/ #")
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                shells.push(t.elapsed());
            }
            made.push(name);
        }
        if !shells.is_empty() {
            shells.sort();
            println!(
                "  {os:<10} to a shell prompt: median {:>7}  max {:>7}",
                ms(shells[2]),
                ms(shells[4])
            );
        }
        let first = times[0];
        times.sort();
        println!(
            "  {os:<10} first {:>7}  median {:>7}  max {:>7}",
            ms(first),
            ms(times[2]),
            ms(times[4])
        );
    }

    println!(
        "creations at once (blank, each to RUNNING, separate connections as separate processes)"
    );
    for n in [1usize, 4, 8] {
        let t = Instant::now();
        let names: Vec<String> = (0..n).map(|i| format!("p{n}-{i}")).collect();
        std::thread::scope(|s| {
            for name in &names {
                let dir = dir.path();
                s.spawn(move || {
                    open(dir)
                        .vm_create("admin", &spec(name, "blank"), true, None)
                        .unwrap()
                });
            }
        });
        let took = t.elapsed();
        println!(
            "  {n} at once: {:>7} in all, {:.1} creations/s",
            ms(took),
            n as f64 / took.as_secs_f64()
        );
        made.extend(names);
    }

    for name in made {
        core.vm_action("admin", &name, VmAction::Destroy).unwrap();
    }
    let _ = core.recover_all("admin");
    if has_image {
        // The image's volume (named with its checksum) and any upload left over.
        let install: String = core.install_id().chars().take(8).collect();
        let prefix = format!("vmdesk-os-tiny-linux-{install}-");
        for line in vmdesk_tests::virsh(&["vol-list", "--pool", "vmdesk"]).lines() {
            if let Some(vol) = line
                .split_whitespace()
                .next()
                .filter(|v| v.starts_with(&prefix))
            {
                vmdesk_tests::virsh(&["vol-delete", "--pool", "vmdesk", vol]);
            }
        }
    }
}
