//! Session allocation on a file database: allocations per second, p50 and p99
//! latency, and doubles (a VM in two live sessions; must be 0), with 1, 8 and
//! 64 concurrent requesters. Two modes: requesters sharing one `Core` (threads
//! of the app) and requesters each with its own `Core` (like separate CLI
//! processes, contending through SQLite's file lock).
//!
//! Run: `cargo bench -p vmdesk-core --bench allocation` (or `make bench`).
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmdesk_core::SessionRequest;

mod common;
use common::{open, setup};

const POOL: usize = 6_000;

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    /// The longest wait.
    max: Duration,
    doubles: i64,
    allocated: usize,
}

fn run(requesters: usize, shared: bool) -> Figures {
    let dir = setup(POOL);
    let req = SessionRequest {
        project: "p".into(),
        ..Default::default()
    };
    let shared_core = Arc::new(open(dir.path()));
    // As the app's checkpointer does: move the log into the database off the write path.
    let running = std::sync::atomic::AtomicBool::new(true);
    let mut elapsed = Duration::ZERO;
    let start = Instant::now();
    let per_thread: Vec<(Vec<Duration>, Vec<i64>)> = std::thread::scope(|scope| {
        scope.spawn(|| {
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
                shared_core.checkpoint_if_over(1 << 20).unwrap();
            }
        });
        let handles: Vec<_> = (0..requesters)
            .map(|_| {
                let core = if shared {
                    Arc::clone(&shared_core)
                } else {
                    Arc::new(open(dir.path()))
                };
                let req = req.clone();
                scope.spawn(move || {
                    let (mut lat, mut vms) = (Vec::new(), Vec::new());
                    loop {
                        let t = Instant::now();
                        match core.session_open("admin", &req, false) {
                            Ok(s) => {
                                lat.push(t.elapsed());
                                vms.push(s.vm_id);
                            }
                            Err(e) if e.code() == "all_in_use" => return (lat, vms),
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            })
            .collect();
        let out = handles.into_iter().map(|h| h.join().unwrap()).collect();
        elapsed = start.elapsed();
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        out
    });
    let mut lat: Vec<Duration> = per_thread
        .iter()
        .flat_map(|(l, _)| l.iter().copied())
        .collect();
    let mut vms: Vec<i64> = per_thread
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .collect();
    lat.sort_unstable();
    let allocated = vms.len();
    vms.sort_unstable();
    vms.dedup();
    let conn = rusqlite::Connection::open(dir.path().join("vmdesk.db")).unwrap();
    let live_doubles: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT vm_id FROM sessions WHERE status IN ('REQUESTED','STARTING','ACTIVE','TERMINATING')
             GROUP BY vm_id HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Figures {
        per_second: allocated as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: lat[lat.len() - 1],
        doubles: live_doubles + (allocated - vms.len()) as i64,
        allocated,
    }
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: do a tiny smoke pass only.
    let quick = !std::env::args().any(|a| a == "--bench");
    println!(
        "session allocation, file database, pool of {POOL} VMs, each run allocates the whole pool"
    );
    println!(
        "{:<10} {:>10} {:>12} {:>10} {:>10} {:>10} {:>9} {:>8}",
        "mode", "requesters", "allocs/s", "p50", "p99", "max", "max/p50", "doubles"
    );
    for shared in [true, false] {
        for requesters in [1, 8, 64] {
            if quick && requesters > 1 {
                continue;
            }
            let mode = if shared { "shared" } else { "per-conn" };
            // ALLOC_BENCH_ONLY=shared:64 runs one case (for profiling).
            if std::env::var("ALLOC_BENCH_ONLY")
                .is_ok_and(|only| only != format!("{mode}:{requesters}"))
            {
                continue;
            }
            let f = run(requesters, shared);
            assert_eq!(f.allocated, POOL);
            println!(
                "{:<10} {:>10} {:>12.0} {:>8.3}ms {:>8.3}ms {:>8.3}ms {:>8.1}x {:>8}",
                mode,
                requesters,
                f.per_second,
                f.p50.as_secs_f64() * 1e3,
                f.p99.as_secs_f64() * 1e3,
                f.max.as_secs_f64() * 1e3,
                f.max.as_secs_f64() / f.p50.as_secs_f64(),
                f.doubles
            );
        }
    }
}
