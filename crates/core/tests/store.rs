//! The data directory as a store: a newer database refused, a held write
//! lock turned into a clear error, a copied directory taking its own id.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use vmdesk_core::{Core, OpenOptions};

#[test]
fn a_database_of_a_newer_vmdesk_is_refused_and_left_as_it_is() {
    let (dir, hosts, core) = with_pool(0);
    drop(core);
    db(dir.path())
        .pragma_update(None, "user_version", 999)
        .unwrap();
    let before = count(dir.path(), "SELECT count(*) FROM users");
    let err = Core::open(OpenOptions::new(dir.path(), Arc::new(hosts.clone())))
        .err()
        .unwrap();
    assert_eq!(err.code(), "database_too_new");
    assert!(err.to_string().contains("999"), "{err}");
    let version: i64 = db(dir.path())
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 999);
    assert_eq!(count(dir.path(), "SELECT count(*) FROM users"), before);
}

/// Holds the data directory's write lock from another process (`flock`).
struct Holder(Child);

impl Holder {
    fn start(dir: &std::path::Path) -> Self {
        // Its own process group: `flock` and the `sleep` it forks both hold the lock.
        let child = Command::new("flock")
            .arg("-x")
            .arg(dir.join("vmdesk.lock"))
            .args(["sleep", "60"])
            .process_group(0)
            .spawn()
            .unwrap();
        let holder = Self(child);
        // Wait until the lock is really taken.
        let f = std::fs::File::open(dir.join("vmdesk.lock")).unwrap();
        for _ in 0..200 {
            if f.try_lock().is_err() {
                return holder;
            }
            f.unlock().ok();
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("flock did not take the lock");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

#[test]
fn a_held_write_lock_fails_a_write_within_the_bound_naming_the_holder() {
    let (dir, hosts, core) = with_pool(0);
    drop(core);
    let mut opts = OpenOptions::new(dir.path(), Arc::new(hosts.clone()));
    opts.lock_wait = Duration::from_millis(500);
    let core = Core::open(opts).unwrap();
    let holder = Holder::start(dir.path());
    let t = Instant::now();
    let err = core
        .credits_grant("admin", "admin", 5, "while locked")
        .err()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(err.code(), "busy");
    // `flock` execs `sleep` only after it holds the lock: its pid is the holder.
    assert!(
        err.to_string()
            .contains(&format!("process {}", holder.0.id())),
        "{err}"
    );
    drop(holder);
    core.credits_grant("admin", "admin", 5, "after").unwrap();
    assert_eq!(core.user("admin").unwrap().balance, 5);
}

#[test]
fn a_copied_data_directory_takes_a_new_install_id_and_the_original_keeps_its_own() {
    let (dir, hosts, core) = with_pool(0);
    let original = core.install_id().to_owned();
    drop(core);
    let copy = tempfile::tempdir().unwrap();
    for f in ["vmdesk.db", "vmdesk.db-wal", "vmdesk.db-shm"] {
        if dir.path().join(f).exists() {
            std::fs::copy(dir.path().join(f), copy.path().join(f)).unwrap();
        }
    }
    let copied = open(copy.path(), &hosts);
    assert_ne!(copied.install_id(), original);
    assert_eq!(
        count(
            copy.path(),
            "SELECT count(*) FROM events WHERE action = 'install.copied'"
        ),
        1
    );
    // Reopened, each keeps the id it has.
    let id = copied.install_id().to_owned();
    drop(copied);
    assert_eq!(open(copy.path(), &hosts).install_id(), id);
    assert_eq!(open(dir.path(), &hosts).install_id(), original);
}
