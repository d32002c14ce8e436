//! Cold start to an interactive window, and memory with 1,000 VMs listed:
//! vmdesk side by side with virt-manager (the Debian package) on the same
//! machine, each start on a fresh X server (Xvfb) of its own: what an X
//! server holds from an earlier client changes the next one's figures.
//!
//! vmdesk: 1,000 VMs imported from the ARM test server into a pool; the app
//! opens on its VM list; "interactive" is when the window has drawn the list
//! and tells the backend (`ready`), timed from the spawn by this process;
//! memory is the RSS and PSS of the app and every process under it (the
//! WebKit web and network processes) 3 s later.
//! virt-manager: `scripts/bench-virt-manager.py` on a libvirt test-driver
//! file with 1,000 domains (window mapped, list populated, same memory sums).
//!
//! Run: `cargo bench -p vmdesk-tests --bench desktop` (or `make bench`); it
//! uses target/release/vmdesk when built (`make bench` builds it), else the
//! debug build.
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmdesk_tests::arm::{ArmServer, Power};
use vmdesk_tests::{xvfb, KillOnDrop, Vmdesk};

const SUB: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const N: usize = 1_000;
const RUNS: usize = 5;

fn app_bin() -> PathBuf {
    let release = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/vmdesk");
    if std::env::var_os("VMDESK_BIN").is_none() && release.exists() {
        release
    } else {
        vmdesk_tests::bin()
    }
}

/// `pid` and every process under it.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // The parent pid is the second field after the parenthesised name.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(parent) && !all.contains(&child) {
                all.push(child);
            }
        }
        i += 1;
    }
    all
}

/// RSS and PSS in KiB, summed over `pids`.
fn memory(pids: &[u32]) -> (u64, u64) {
    let (mut rss, mut pss) = (0, 0);
    for pid in pids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        for line in text.lines() {
            let kib = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("Rss:") {
                rss += kib(line);
            } else if line.starts_with("Pss:") {
                pss += kib(line);
            }
        }
    }
    (rss, pss)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Run {
    ready_ms: f64,
    own_ms: f64,
    rss: u64,
    pss: u64,
    processes: usize,
}

/// A fresh X server for one start (a display of its own, never used before
/// in this run), so that no app finds what another left in the server.
fn fresh_x() -> (String, KillOnDrop) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = 150 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = std::fs::remove_file(format!("/tmp/.X{n}-lock"));
    let _ = std::fs::remove_file(format!("/tmp/.X11-unix/X{n}"));
    let display = format!(":{n}");
    let x = xvfb(&display);
    (display, x)
}

/// How vmdesk is started: a label and its environment.
struct Mode {
    label: &'static str,
    env: &'static [(&'static str, &'static str)],
}

const MODES: [Mode; 2] = [
    Mode {
        label: "default",
        env: &[],
    },
    Mode {
        label: "VMDESK_GPU=1",
        env: &[("VMDESK_GPU", "1")],
    },
];

fn vmdesk_run(v: &Vmdesk, mode: &Mode) -> Run {
    let (display, _x) = fresh_x();
    let ready = v.dir.path().join("ready");
    let _ = std::fs::remove_file(&ready);
    let t = Instant::now();
    let mut app = KillOnDrop(
        Command::new(app_bin())
            .arg("--data-dir")
            .arg(v.dir.path())
            .arg("--config")
            .arg(v.settings_path())
            .args(["--view", "vms"])
            .envs(v.env.iter().map(|(k, val)| (k.as_str(), val.as_str())))
            .env("DISPLAY", &display)
            .env("VMDESK_READY_FILE", &ready)
            .env_remove("VMDESK_GPU")
            .envs(mode.env.iter().copied())
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    while !ready.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the window never got ready"
        );
        assert!(app.0.try_wait().unwrap().is_none(), "the app exited");
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready_ms = t.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_millis(50));
    let own_ms = std::fs::read_to_string(&ready)
        .unwrap()
        .trim()
        .parse()
        .unwrap_or(f64::NAN);
    std::thread::sleep(Duration::from_secs(3));
    let pids = tree(app.0.id());
    let (rss, pss) = memory(&pids);
    drop(app);
    std::thread::sleep(Duration::from_millis(500));
    Run {
        ready_ms,
        own_ms,
        rss,
        pss,
        processes: pids.len(),
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let server = ArmServer::start();
    server.add_vms(SUB, "bench-rg", "vm", N, "Standard_B2s", Power::Running);
    let mut v = Vmdesk::new();
    v.write_settings(&format!(
        "[sync]\nenabled = false\n\n[azure]\nallow_insecure_endpoints = true\nendpoint = \"{u}\"\nauthority_host = \"{u}\"\n",
        u = server.url()
    ));
    v.env = server.env();
    v.json(&["host", "add", "az", "--azure-subscription", SUB]);
    v.json(&["project", "create", "lab"]);
    v.json(&["host", "import", "az", "--project", "lab"]);

    println!(
        "desktop start and memory, {N} VMs listed, {RUNS} runs ({}):",
        app_bin().display()
    );
    // One start first, untimed, so that both apps find their files in the page cache.
    vmdesk_run(&v, &MODES[0]);
    let mut vmdesk = (0.0, 0.0, 0.0);
    for (m, mode) in MODES.iter().enumerate() {
        let runs: Vec<Run> = (0..RUNS).map(|_| vmdesk_run(&v, mode)).collect();
        let mode = mode.label;
        for (i, r) in runs.iter().enumerate() {
            println!(
                "  vmdesk ({mode}) run {}: interactive {:.0} ms (app's own clock {:.0} ms), RSS {} MiB, PSS {} MiB over {} processes",
                i + 1,
                r.ready_ms,
                r.own_ms,
                r.rss / 1024,
                r.pss / 1024,
                r.processes
            );
        }
        let ready = median(runs.iter().map(|r| r.ready_ms).collect());
        let rss = median(runs.iter().map(|r| r.rss as f64).collect()) / 1024.0;
        let pss = median(runs.iter().map(|r| r.pss as f64).collect()) / 1024.0;
        println!(
            "vmdesk ({mode}) median: interactive {ready:.0} ms, RSS {rss:.0} MiB, PSS {pss:.0} MiB"
        );
        if m == 0 {
            vmdesk = (ready, rss, pss);
        }
    }
    let (ready, rss, pss) = vmdesk;

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench-virt-manager.py");
    let which = Command::new("sh")
        .args(["-c", "command -v virt-manager"])
        .output();
    if !which.map(|o| o.status.success()).unwrap_or(false) {
        println!("virt-manager is not installed: no comparison (make bench installs it)");
        return;
    }
    // Each start on a fresh X server too, as vmdesk's.
    let mut vm_runs = Vec::new();
    for _ in 0..RUNS {
        let (display, _x) = fresh_x();
        let out = Command::new("python3")
            .arg(&script)
            .args(["--vms", &N.to_string(), "--display", &display])
            .args(["--runs", "1", "--json"])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let Ok(run) = serde_json::from_str::<serde_json::Value>(text.trim()) else {
            println!("virt-manager measurement failed: {text}");
            return;
        };
        println!(
            "  virt-manager run {}: window {} ms, listed {} ms, RSS {} KiB, PSS {} KiB",
            vm_runs.len() + 1,
            run["window_ms"],
            run["listed_ms"],
            run["rss_kib"],
            run["pss_kib"]
        );
        vm_runs.push(run);
    }
    let vm: serde_json::Map<String, serde_json::Value> =
        ["window_ms", "listed_ms", "rss_kib", "pss_kib"]
            .into_iter()
            .map(|k| {
                let m = median(
                    vm_runs
                        .iter()
                        .map(|r| r[k].as_f64().unwrap_or(f64::NAN))
                        .collect(),
                );
                (k.to_owned(), m.into())
            })
            .collect();
    let f = |k: &str| vm[k].as_f64().unwrap_or(f64::NAN);
    let (vm_listed, vm_rss, vm_pss) =
        (f("listed_ms"), f("rss_kib") / 1024.0, f("pss_kib") / 1024.0);
    println!(
        "virt-manager median: window {:.0} ms, {N} VMs listed {vm_listed:.0} ms, RSS {vm_rss:.0} MiB, PSS {vm_pss:.0} MiB",
        f("window_ms")
    );
    println!(
        "vmdesk (default) / virt-manager: start {:.2}, RSS {:.2}, PSS {:.2} (goals: start < 1 s and <= 0.5; PSS <= 1)",
        ready / vm_listed,
        rss / vm_rss,
        pss / vm_pss
    );
}
