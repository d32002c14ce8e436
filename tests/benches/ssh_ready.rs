//! Time from `vmdesk vm create` to the first successful `vmdesk ssh VM --
//! true` for tiny-linux on the real QEMU host (issue 15): the creation, the
//! guest's boot, its DHCP lease and its SSH server, as a user lives it.
//! Five runs, the median and the spread. Needs the libvirt daemon (`make
//! libvirt`), the image (`make os-image`) and the binary (`make build`).
//!
//! Run: `cargo bench -p vmdesk-tests --bench ssh_ready` (or `make bench`).
#![allow(missing_docs, clippy::unwrap_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use vmdesk_tests::{qemu_uri, Machine, Vmdesk};

const RUNS: usize = 5;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches`: nothing to smoke-test without a host.
    }
    let v = Vmdesk::new();
    v.json(&["host", "add", "qemu", "--uri", &qemu_uri()]);
    v.import_tiny_linux();
    v.json(&["user", "add", "ann", "--credits", "1000000"]);
    let mut created = Vec::new();
    let mut ready = Vec::new();
    for i in 0..RUNS {
        let name = format!("ssh-bench-{i}");
        let t = Instant::now();
        let vm = v.create_tiny(Some("ann"), &name, &[]);
        let _m = Machine(vm["provider_id"].as_str().unwrap().to_owned());
        created.push(t.elapsed());
        // As a person would: `vmdesk ssh` asks the host for the address
        // when the row has none yet; retried until the guest answers.
        loop {
            let ok = v
                .command(&["--as", "ann", "ssh", &name, "--", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            if ok {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(180),
                "{name}: no SSH in 180 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        ready.push(t.elapsed());
        v.json(&[
            "--as",
            "ann",
            "--shutdown-timeout",
            "1",
            "-y",
            "vm",
            "destroy",
            &name,
        ]);
    }
    let median = |xs: &mut Vec<Duration>| {
        xs.sort();
        xs[xs.len() / 2]
    };
    let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let (lo, hi) = (*ready.iter().min().unwrap(), *ready.iter().max().unwrap());
    println!(
        "vm create -> first `vmdesk ssh VM -- true` (tiny-linux, {RUNS} runs): median {} (min {}, max {}); \
         of which vm create to RUNNING: median {}",
        s(median(&mut ready)),
        s(lo),
        s(hi),
        s(median(&mut created))
    );
}
