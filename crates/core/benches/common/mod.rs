//! What the benchmarks share: a host that accepts everything and a pool of
//! VMs made in one statement.
#![allow(dead_code)]

use std::sync::Arc;

use vmdesk_core::provider::{Compliant, OneProvider};
use vmdesk_core::{Core, NewVm, OpenOptions};

/// A core on `dir` whose hosts accept everything.
pub fn open(dir: &std::path::Path) -> Core {
    // Allocation with --no-wait never calls the host except to define the
    // pool's machines during set-up.
    let host = Arc::new(Compliant::stopped());
    Core::open(OpenOptions::new(dir, Arc::new(OneProvider(host)))).unwrap()
}

/// A data directory with host `h`, project `p` and a pool of `pool` VMs.
pub fn setup(pool: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let core = open(dir.path());
    core.host_add("admin", "h", "test:///default").unwrap();
    core.project_create("admin", "p").unwrap();
    // One VM through the API; the rest copied from it in one statement, so
    // that set-up takes milliseconds and profiles show allocation only.
    core.vm_add(
        "admin",
        &NewVm {
            name: "vm00000".into(),
            pool: "p".into(),
            host: "h".into(),
            ram_mb: 1024,
            disk_gb: 20,
            cpu_cores: 2,
            vm_type: "standard".into(),
            os_type: "blank".into(),
        },
    )
    .unwrap();
    drop(core);
    let conn = rusqlite::Connection::open(dir.path().join("vmdesk.db")).unwrap();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO vms (name, os_type, ram_mb, disk_gb, cpu_cores, vm_type, status, project_id, host_id,
                          provider_id, created_at, updated_at)
         SELECT printf('vm%05d', i), os_type, ram_mb, disk_gb, cpu_cores, vm_type, status, project_id, host_id,
                printf('machine-%05d', i), created_at, updated_at
         FROM vms, n WHERE vms.name = 'vm00000'",
        [pool as i64 - 1],
    )
    .unwrap();
    dir
}
