//! The data directory is private: 0700, its files 0600, whatever the umask.
//!
//! Embedded-store only: this file's one test is about the embedded store's
//! data dir, its SQLite files (db, WAL, shm), lock and worker files; a team
//! store keeps none of them (who may do what on it is the database's:
//! crates/postgres/tests/permissions.rs, and the rules in core_*.rs there).
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn under_umask_022_the_data_dir_is_0700_and_its_files_0600() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let hosts = MemoryFactory::default();
    let core = open(&dir, &hosts);
    core.host_add("admin", "h", "test:///default").unwrap();
    core.project_create("admin", "p").unwrap();
    core.vm_add("admin", &vm("vm0", "standard")).unwrap();
    // A session registers this process as a worker (its lock file).
    core.session_open(
        "admin",
        &vmdesk_core::SessionRequest {
            project: "p".into(),
            ..Default::default()
        },
        true,
    )
    .unwrap();
    assert_eq!(mode(&dir), 0o700, "data dir");
    assert_eq!(mode(&dir.join("workers")), 0o700, "workers dir");
    let mut files = vec![
        dir.join("vmdesk.db"),
        dir.join("vmdesk.db-wal"),
        dir.join("vmdesk.db-shm"),
        dir.join("vmdesk.lock"),
        dir.join("vmdesk.tickets"),
        dir.join("vmdesk.queue"),
    ];
    for e in std::fs::read_dir(dir.join("workers")).unwrap() {
        files.push(e.unwrap().path());
    }
    assert!(files.len() > 6, "a worker lock file exists");
    for f in files {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}
