//! A full Azure sync of 10,000 VMs against the ARM test server: `vmdesk sync
//! --once` (the fast pass over active sessions, none here, then the full pass
//! and billing) after 1 % of the VMs changed power state, 5 runs. Reports ARM
//! calls, wall time and the CPU time of the vmdesk process. The import of the
//! 10,000 VMs is timed too.
//!
//! Run: `cargo bench -p vmdesk-tests --bench azure_sync` (or `make bench`).
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use vmdesk_tests::arm::{ArmServer, Power};
use vmdesk_tests::Vmdesk;

const SUB: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const N: usize = 10_000;

/// User + system CPU time of the waited-for children so far.
fn children_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap();
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_micros(t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64)
    };
    tv(u.user_time()) + tv(u.system_time())
}

fn timed(v: &Vmdesk, args: &[&str]) -> (Duration, Duration) {
    let (cpu0, t) = (children_cpu(), Instant::now());
    let out = v.run(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (t.elapsed(), children_cpu() - cpu0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let server = ArmServer::start();
    let names = server.add_vms(SUB, "bench-rg", "vm", N, "Standard_B2s", Power::Running);
    let mut v = Vmdesk::new();
    v.write_settings(&format!(
        "[azure]\nallow_insecure_endpoints = true\nendpoint = \"{u}\"\nauthority_host = \"{u}\"\n",
        u = server.url()
    ));
    v.env = server.env();
    v.json(&["host", "add", "az", "--azure-subscription", SUB]);
    v.json(&["project", "create", "lab"]);
    server.reset_calls();
    let (wall, cpu) = timed(&v, &["host", "import", "az", "--project", "lab"]);
    let c = server.calls();
    println!(
        "import of {N} VMs: {:.2} s wall, {:.2} s CPU, {} ARM calls ({} list pages, {} sizes)",
        wall.as_secs_f64(),
        cpu.as_secs_f64(),
        c.arm(),
        c.list,
        c.sizes
    );

    println!("full sync of {N} VMs, 1 % changed each run (vmdesk sync --once), 5 runs:");
    let mut walls = Vec::new();
    for run in 0..5 {
        let power = if run % 2 == 0 {
            Power::Deallocated
        } else {
            Power::Running
        };
        for n in names.iter().skip(run).step_by(100) {
            server.set_power(SUB, "bench-rg", n, power);
        }
        server.reset_calls();
        let (wall, cpu) = timed(&v, &["sync", "--once"]);
        let c = server.calls();
        println!(
            "  run {}: {:.2} s wall, {:.2} s CPU, {} ARM calls ({} list pages, {} instanceView), {} throttled",
            run + 1,
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            c.arm(),
            c.list,
            c.instance_view,
            c.throttled
        );
        walls.push(wall);
    }
    walls.sort();
    println!("  median wall {:.2} s", walls[2].as_secs_f64());
    let off = names
        .iter()
        .filter(|n| server.power(SUB, "bench-rg", n) == Some(Power::Deallocated))
        .count();
    let stopped = v.count("SELECT count(*) FROM vms WHERE status = 'STOPPED'");
    println!("  VMs STOPPED in the database: {stopped}, deallocated in Azure: {off}");
    assert_eq!(stopped as usize, off);
}
