//! `vmdesk sync --watch` (the long-lived process of a headless install)
//! checkpoints the write-ahead log, so it stays bounded however much is written.
#![allow(missing_docs)]

use std::time::Duration;

use vmdesk_tests::Vmdesk;

#[test]
fn the_write_ahead_log_stays_bounded_under_sync_watch() {
    let v = Vmdesk::new();
    v.json(&["user", "list"]);
    let _watcher = v.watcher();
    // A writer that never checkpoints, as vmdesk's writers never do.
    let db = v.db();
    db.pragma_update(None, "wal_autocheckpoint", 0)
        .expect("no autocheckpoint");
    db.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    let blob = "x".repeat(100_000);
    // About 6 MB written over 3 s.
    for i in 0..60 {
        db.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)",
            rusqlite::params![format!("wal-test-{i}"), blob],
        )
        .expect("write");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let wal = std::fs::metadata(v.dir.path().join("vmdesk.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        wal < 3 << 20,
        "the write-ahead log grew to {wal} bytes: nothing checkpoints it"
    );
}
