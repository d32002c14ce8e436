//! What a change costs the VM list (issue 16) with 10,000 VMs on the
//! embedded store: the JSON the window receives and the time of the query,
//! for the whole list (`vm_list`, what every change refetched before) and
//! for the rows changed since the list's cursor (`vm_changes`) after one VM
//! changed. Medians of 21 runs.
//!
//! Run: `cargo bench -p vmdesk-core --bench vm_changes` (or `make bench`).
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

mod common;
use common::{open, setup};

const VMS: usize = 10_000;
const RUNS: usize = 21;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = setup(VMS);
    let core = open(dir.path());
    let (mut full_t, mut since_t) = (Vec::new(), Vec::new());
    let (mut full_bytes, mut since_bytes, mut since_rows) = (0, 0, 0);
    for i in 0..RUNS {
        let t = Instant::now();
        let all = core.vm_list("admin", true).unwrap();
        full_t.push(t.elapsed());
        full_bytes = serde_json::to_vec(&all).unwrap().len();
        assert_eq!(all.len(), VMS);

        let cursor = core.vm_changes("admin", true, None).unwrap().cursor;
        // One VM changes (its metadata, as any writer would).
        core.vm_meta(
            "admin",
            &format!("vm{:05}", 1 + i * 7),
            &[("note".into(), format!("run {i}"))],
        )
        .unwrap();
        let t = Instant::now();
        let changed = core.vm_changes("admin", true, Some(&cursor)).unwrap();
        since_t.push(t.elapsed());
        since_bytes = serde_json::to_vec(&changed).unwrap().len();
        since_rows = changed.vms.len();
        assert_eq!(changed.total as usize, VMS);
    }
    let (full, since) = (median(full_t), median(since_t));
    println!("VM list with {VMS} VMs, one VM changed (medians of {RUNS}):");
    println!(
        "  whole list (vm_list):       {:>9} bytes of JSON  {:>8.2} ms",
        full_bytes,
        full.as_secs_f64() * 1e3
    );
    println!(
        "  changed since (vm_changes): {:>9} bytes of JSON  {:>8.2} ms  ({since_rows} row)",
        since_bytes,
        since.as_secs_f64() * 1e3
    );
    println!(
        "  ratio: {:.0}x fewer bytes, {:.0}x less time",
        full_bytes as f64 / since_bytes as f64,
        full.as_secs_f64() / since.as_secs_f64()
    );
}
