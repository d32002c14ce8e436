//! What admins do to a host's machines and a VM's metadata, on both stores:
//! host import, the quarantine of marked machines without a row (sweep,
//! list, purge), `recover`, and `vm meta` (moved from crates/core/tests/vms.rs
//! and stopping.rs).
//! Team-only: a plain login may not sweep or recover, and no login can fake
//! another desk's worker being alive.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use std::time::Duration;

use stores::{Desks, Kind};
use vmdesk_core::provider::{Machine, PowerState};
use vmdesk_core::{SessionRequest, SessionStatus, VmStatus};

fn machine(id: &str, name: &str, power: PowerState) -> Machine {
    Machine {
        machine: id.into(),
        name: name.into(),
        size: "Standard_B2s".into(),
        ram_mb: 4096,
        cpu_cores: 2,
        disk_gb: 30,
        os_type: "ubuntu".into(),
        power,
    }
}

both!(
    an_import_adopts_new_machines_once_and_says_what_it_skipped,
    |d| {
        d.pool(1);
        *d.host().inventory.lock().unwrap() = vec![
            machine("m-1", "web", PowerState::Running),
            machine("m-2", "db", PowerState::Stopped),
            // Taken by the pool's own VM: gets the host's prefix.
            machine("m-3", "vm0", PowerState::Stopped),
            // No valid vmdesk name, with or without the prefix.
            machine("m-4", "bad name!", PowerState::Stopped),
        ];
        let a = d.admin();
        let r = d.with(&a, |c, a| c.host_import(a, "h", "p", None).unwrap());
        let mut names: Vec<(String, VmStatus, String)> = r
            .imported
            .iter()
            .map(|v| (v.name.clone(), v.status, v.vm_type.clone()))
            .collect();
        names.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            names,
            vec![
                ("db".into(), VmStatus::Stopped, "Standard_B2s".into()),
                ("h-vm0".into(), VmStatus::Stopped, "Standard_B2s".into()),
                ("web".into(), VmStatus::Running, "Standard_B2s".into()),
            ]
        );
        assert!(r.imported.iter().all(|v| v.pool.as_deref() == Some("p")));
        assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
        assert_eq!(r.skipped[0].machine, "m-4");
        assert!(r.skipped[0].reason.contains("no free, valid vmdesk name"));
        assert_eq!(d.events_named("vm.import").len(), 3);

        // Again: the known machines are passed over; a type can be given.
        let again = d.with(&a, |c, a| c.host_import(a, "h", "p", Some("lab")).unwrap());
        assert!(again.imported.is_empty(), "{:?}", again.imported);
        assert_eq!(d.events_named("vm.import").len(), 3);

        // An imported VM is a pool VM like the others.
        let ann = d.user("ann", false, 100);
        d.with(&ann, |c, me| {
            let req = SessionRequest {
                project: "p".into(),
                vm_type: Some("Standard_B2s".into()),
                ..Default::default()
            };
            let s = c.session_open(me, &req, false).unwrap();
            assert_eq!(s.status, SessionStatus::Requested);
        });

        // Only an admin imports; a bad type is refused before the host is asked.
        let err = d.with(&ann, |c, me| c.host_import(me, "h", "p", None).unwrap_err());
        assert_eq!(err.code(), "admin_only", "{err}");
        let err = d.with(&a, |c, a| {
            c.host_import(a, "h", "p", Some("bad type")).unwrap_err()
        });
        assert_eq!(err.code(), "invalid_input", "{err}");
    }
);

both!(
    a_marked_machine_without_a_row_is_stopped_kept_and_purged_on_request,
    |d| {
        d.pool(1);
        let a = d.admin();
        // The pool VM's machine has a row; a leftover (a crash between host
        // and store, or a store restored from an old backup) has none.
        d.with(&a, |c, a| {
            let ann_vm = c.vm_list(a, true).unwrap();
            assert_eq!(ann_vm.len(), 1);
        });
        d.host()
            .machines
            .lock()
            .unwrap()
            .insert("vmdesk-leftover".into(), PowerState::Running);
        d.host()
            .disks
            .lock()
            .unwrap()
            .insert("vmdesk-leftover".into());

        let done = d.with(&a, |c, a| c.recover_all(a).unwrap());
        assert!(
            done.iter()
                .any(|e| e.action == "recovery.quarantine"
                    && e.details["machine"] == "vmdesk-leftover"),
            "{done:?}"
        );
        assert_eq!(d.host().state("vmdesk-leftover"), Some(PowerState::Stopped));
        let q = d.with(&a, |c, a| c.quarantined(a).unwrap());
        assert_eq!(q.len(), 1, "{q:?}");
        assert_eq!(
            (q[0].host.as_str(), q[0].machine.as_str()),
            ("h", "vmdesk-leftover")
        );

        // A second sweep finds nothing new.
        let again = d.with(&a, |c, a| c.recover_all(a).unwrap());
        assert!(
            !again.iter().any(|e| e.action == "recovery.quarantine"),
            "{again:?}"
        );
        assert_eq!(d.events_named("recovery.quarantine").len(), 1);

        // Within the grace period nothing is purged; after it, the machine
        // and its disk go, once.
        let kept = d.with(&a, |c, a| {
            c.purge_quarantine(a, Duration::from_secs(3600)).unwrap()
        });
        assert!(kept.is_empty());
        assert!(d.host().state("vmdesk-leftover").is_some());
        let purged = d.with(&a, |c, a| c.purge_quarantine(a, Duration::ZERO).unwrap());
        assert_eq!(purged.len(), 1);
        assert_eq!(d.host().state("vmdesk-leftover"), None);
        assert!(!d.host().disks.lock().unwrap().contains("vmdesk-leftover"));
        assert!(d.with(&a, |c, a| c.quarantined(a).unwrap()).is_empty());
        assert_eq!(d.events_named("recovery.purge").len(), 1);
        // The pool VM's machine was never touched.
        assert_eq!(d.with(&a, |c, a| c.vm_list(a, true).unwrap()).len(), 1);

        // Only an admin lists, purges or recovers.
        let ann = d.user("ann", false, 0);
        d.with(&ann, |c, me| {
            assert_eq!(c.quarantined(me).unwrap_err().code(), "admin_only");
            assert_eq!(
                c.purge_quarantine(me, Duration::ZERO).unwrap_err().code(),
                "admin_only"
            );
            assert_eq!(c.recover_all(me).unwrap_err().code(), "admin_only");
        });
    }
);

both!(a_quarantined_machine_that_left_the_host_is_forgotten, |d| {
    d.pool(0);
    let a = d.admin();
    d.host()
        .machines
        .lock()
        .unwrap()
        .insert("vmdesk-gone".into(), PowerState::Stopped);
    d.with(&a, |c, a| c.recover_all(a).unwrap());
    assert_eq!(d.with(&a, |c, a| c.quarantined(a).unwrap()).len(), 1);
    d.host().machines.lock().unwrap().remove("vmdesk-gone");
    d.with(&a, |c, a| c.recover_all(a).unwrap());
    assert!(d.with(&a, |c, a| c.quarantined(a).unwrap()).is_empty());
});

both!(metadata_is_merged_by_its_owner_or_an_admin, |d| {
    d.pool(0);
    let ann = d.user("ann", false, 100);
    let bob = d.user("bob", false, 0);
    d.with(&ann, |c, me| {
        c.vm_create(me, &stores::own_vm("w1"), true, None).unwrap();
        c.vm_meta(me, "w1", &[("team".into(), "red".into())])
            .unwrap();
        let vm = c
            .vm_meta(me, "w1", &[("owner".into(), "ann".into())])
            .unwrap();
        assert_eq!(vm.metadata["team"], "red");
        assert_eq!(vm.metadata["owner"], "ann");
        assert_eq!(vm.metadata["cost"], 34);
        let err = c
            .vm_meta(me, "w1", &[("bad key".into(), "x".into())])
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{err}");
        let err = c
            .vm_meta(me, "w1", &[("k".into(), "line\nbreak".into())])
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{err}");
        assert!(c.vm_meta(me, "w1", &[]).is_err());
    });
    // Another user: not theirs (on the team store they do not even see it).
    let err = d
        .with(&bob, |c, me| {
            c.vm_meta(me, "w1", &[("k".into(), "v".into())])
        })
        .unwrap_err();
    assert!(["forbidden", "unknown_vm"].contains(&err.code()), "{err}");
    let a = d.admin();
    let vm = d.with(&a, |c, a| {
        c.vm_meta(a, "w1", &[("note".into(), "checked".into())])
            .unwrap()
    });
    assert_eq!(vm.metadata["note"], "checked");
    assert_eq!(vm.metadata["team"], "red");
    assert_eq!(d.events_named("vm.meta").len(), 3);
});

both!(metadata_of_a_destroyed_vm_is_refused, |d| {
    d.pool(0);
    let ann = d.user("ann", false, 100);
    d.with(&ann, |c, me| {
        c.vm_create(me, &stores::own_vm("w1"), true, None).unwrap();
        c.vm_action(me, "w1", vmdesk_core::VmAction::Destroy)
            .unwrap();
        let err = c
            .vm_meta(me, "w1", &[("k".into(), "v".into())])
            .unwrap_err();
        assert!(err.to_string().contains("destroyed"), "{err}");
    });
});

/// On a team store a plain login's desk cannot sweep: it does not see other
/// users' VMs and would take their machines for leftovers.
#[test]
fn a_plain_login_cannot_sweep_a_team_store() {
    let d = Desks::new(Kind::Team);
    d.pool(1);
    d.host()
        .machines
        .lock()
        .unwrap()
        .insert("vmdesk-leftover".into(), PowerState::Running);
    let ann = d.user("ann", false, 0);
    let err = d.with(&ann, |c, _| c.sweep_host("h").unwrap_err());
    assert_eq!(err.code(), "admin_only", "{err}");
    assert_eq!(d.host().state("vmdesk-leftover"), Some(PowerState::Running));
    // Nor can psql: the functions check the caller.
    let pw = d.password(&ann);
    let out = d.team_store().psql(
        &ann,
        &pw,
        "SELECT vmdesk.quarantine_add('h', 'vmdesk-leftover', true)",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only an admin"));
}

/// A desk's worker is alive while it holds the lock of a key only the store
/// and that desk know. Before, the lock was keyed by the worker's id, which
/// any login can read in its session rows: holding it made a dead desk's
/// work look alive forever, so it was never recovered.
#[test]
fn no_login_can_keep_another_desks_worker_looking_alive() {
    let d = Desks::new(Kind::Team);
    d.pool(1);
    let ann = d.user("ann", false, 0);
    let mallory = d.user("mallory", false, 0);
    let a = d.admin();
    // Ann's desk registers a worker, then dies (its connection ends).
    let worker = "desk-ann-1234";
    let ann_pw = d.password(&ann);
    {
        let mut c = d.team_store().connect(&ann, &ann_pw);
        let key: i64 = c
            .query_one("SELECT vmdesk.worker_register($1)", &[&worker])
            .unwrap()
            .get(0);
        c.execute("SELECT pg_advisory_lock($1)", &[&key]).unwrap();
        let alive: bool = d
            .team_store()
            .admin()
            .query_one("SELECT vmdesk.worker_alive($1)", &[&worker])
            .unwrap()
            .get(0);
        assert!(alive, "a registered worker holding its lock is alive");
    }
    // Mallory holds what the old scheme looked at, and tries to take over
    // the worker id.
    let mal_pw = d.password(&mallory);
    let mut m = d.team_store().connect(&mallory, &mal_pw);
    m.execute("SELECT pg_advisory_lock(7283462, hashtext($1))", &[&worker])
        .unwrap();
    let err = m
        .query_one("SELECT vmdesk.worker_register($1)", &[&worker])
        .unwrap_err();
    // Refused as a permission, and why: not any error (a missing function
    // would be one too).
    assert_eq!(
        err.code(),
        Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
    let why = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(why.contains("another user's"), "{why}");
    // The keys are not readable: no privilege on the table at all.
    let secret = m
        .query("SELECT lock_key FROM vmdesk.workers", &[])
        .unwrap_err();
    assert_eq!(
        secret.code(),
        Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "the keys are not readable: {secret}"
    );
    // Ann's worker is dead, whatever Mallory holds.
    let alive: bool = d
        .team_store()
        .admin()
        .query_one("SELECT vmdesk.worker_alive($1)", &[&worker])
        .unwrap()
        .get(0);
    assert!(!alive, "a dead desk's worker looks alive");
    let _ = a;

    // Ann's next desk forgets the dead registration; a live one stays.
    let mut live = d.team_store().connect(&ann, &ann_pw);
    let key: i64 = live
        .query_one("SELECT vmdesk.worker_register('desk-ann-live')", &[])
        .unwrap()
        .get(0);
    live.execute("SELECT pg_advisory_lock($1)", &[&key])
        .unwrap();
    let mut next = d.team_store().connect(&ann, &ann_pw);
    next.query_one("SELECT vmdesk.worker_register('desk-ann-next')", &[])
        .unwrap();
    let mut kept: Vec<String> = d
        .team_store()
        .superuser()
        .query(
            "SELECT w.worker FROM vmdesk.workers w JOIN vmdesk.users u ON u.id = w.user_id
             WHERE u.name = $1",
            &[&ann],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    kept.sort();
    assert_eq!(kept, ["desk-ann-live", "desk-ann-next"]);
}
