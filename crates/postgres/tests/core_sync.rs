//! Status sync rules on the in-memory host (moved from
//! crates/core/tests/sync.rs), on both stores: the embedded SQLite file and a
//! team store on PostgreSQL, where the admin's desk runs the pass. A state no
//! API call leaves behind (a session in STARTING, a VM up for an hour) is
//! written to the store directly ([`Desks::write_store`]).
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use stores::Desks;
use vmdesk_core::provider::Provider;
use vmdesk_core::{LedgerKind, SessionStatus, VmStatus};

use stores::req;

/// The host's machine of `vm`.
fn machine(d: &Desks, vm: &str) -> String {
    d.with(&d.admin(), |c, a| {
        c.vm_show(a, vm).unwrap().provider_id.unwrap()
    })
}

/// One full sync pass from the admin's core.
fn sync(d: &Desks) -> Vec<vmdesk_core::SyncChange> {
    d.with(&d.admin(), |c, _| c.sync_once("poll").unwrap())
}

fn status(d: &Desks, vm: &str) -> VmStatus {
    d.with(&d.admin(), |c, a| c.vm_show(a, vm).unwrap().status)
}

/// The status of the admin's first session.
fn session(d: &Desks) -> SessionStatus {
    d.with(&d.admin(), |c, a| {
        c.session_list(a, false).unwrap()[0].status
    })
}

fn open(d: &Desks, wait: bool) -> vmdesk_core::Session {
    d.with(&d.admin(), |c, a| c.session_open(a, &req(), wait).unwrap())
}

both!(
    a_vm_stopped_under_an_active_session_terminates_it,
    |d: &Desks| {
        d.pool(1);
        let s = open(d, true);
        d.host().force_off(&machine(d, "vm0")).unwrap();
        let changes = sync(d);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].terminated_session, Some(s.id));
        assert_eq!(session(d), SessionStatus::Terminated);
        let vm = d.with(&d.admin(), |c, a| c.vm_show(a, "vm0").unwrap());
        assert_eq!((vm.status, vm.session_id), (VmStatus::Stopped, None));
        let e = d.events(1).remove(0);
        assert_eq!(
            (e.action.as_str(), e.details["source"].as_str()),
            ("session.terminated", Some("poll"))
        );
    }
);

both!(
    a_vm_found_running_while_the_database_says_stopped_becomes_running,
    |d: &Desks| {
        d.pool(1);
        d.host().start(&machine(d, "vm0")).unwrap();
        let changes = sync(d);
        assert_eq!(
            (changes[0].was, changes[0].now),
            (VmStatus::Stopped, VmStatus::Running)
        );
        assert_eq!(status(d, "vm0"), VmStatus::Running);
        // And nothing more the second time, but the time of the sync is kept.
        assert!(sync(d).is_empty());
        let vm = d.with(&d.admin(), |c, a| c.vm_show(a, "vm0").unwrap());
        assert!(vm.synced_at.is_some());
        assert_eq!(vm.synced_by.as_deref(), Some("poll"));
    }
);

both!(
    a_reboot_seen_between_stop_and_start_does_not_end_the_session,
    |d: &Desks| {
        d.pool(1);
        open(d, true);
        let m = machine(d, "vm0");
        d.host().force_off(&m).unwrap();
        std::thread::scope(|s| {
            let rebooter = s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(300));
                d.host().start(&m).unwrap();
            });
            assert!(sync(d).is_empty());
            rebooter.join().unwrap();
        });
        assert_eq!(session(d), SessionStatus::Active);
    }
);

both!(
    an_unreachable_host_makes_vms_unknown_and_ends_no_session,
    |d: &Desks| {
        d.pool(2);
        open(d, true);
        *d.host().unreachable.lock().unwrap() = true;
        let changes = sync(d);
        assert!(changes
            .iter()
            .all(|c| c.now == VmStatus::Unknown && c.terminated_session.is_none()));
        assert_eq!(session(d), SessionStatus::Active);
        *d.host().unreachable.lock().unwrap() = false;
        sync(d);
        assert_eq!(status(d, "vm0"), VmStatus::Running);
        assert_eq!(status(d, "vm1"), VmStatus::Stopped);
    }
);

both!(
    a_vm_the_host_no_longer_knows_is_marked_unknown_and_reported,
    |d: &Desks| {
        d.pool(1);
        d.host().undefine(&machine(d, "vm0")).unwrap();
        sync(d);
        assert_eq!(status(d, "vm0"), VmStatus::Unknown, "kept, not deleted");
        let e = d.events(1).remove(0);
        assert_eq!(e.details["reason"], "the host no longer knows this VM");
    }
);

both!(rows_in_a_transition_are_left_alone, |d: &Desks| {
    d.pool(1);
    let s = open(d, false);
    let changed = d.write_store(
        &format!(
            "UPDATE sessions SET status = 'STARTING' WHERE id = {}",
            s.id
        ),
        &format!(
            "UPDATE vmdesk.sessions SET status = 'STARTING' WHERE id = {}",
            s.id
        ),
    );
    assert_eq!(changed, 1);
    d.host().start(&machine(d, "vm0")).unwrap();
    assert!(sync(d).is_empty());
    assert_eq!(status(d, "vm0"), VmStatus::Stopped);
});

both!(a_pass_bills_the_running_time_it_reconciled, |d: &Desks| {
    d.pool(1);
    let bob = d.user("bob", false, 50);
    d.with(&bob, |c, me| c.session_open(me, &req(), true).unwrap());
    let changed = d.write_store(
        &format!(
            "UPDATE vms SET started_at = '{}'",
            (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339()
        ),
        "UPDATE vmdesk.vms SET started_at = now() - interval '1 hour'",
    );
    assert_eq!(changed, 1);
    d.with(&d.admin(), |c, _| c.sync_and_bill(false, "poll").unwrap());
    let runtime = d.with(&d.admin(), |c, a| {
        c.credits_show(a, Some(&bob))
            .unwrap()
            .entries
            .into_iter()
            .filter(|e| e.kind == LedgerKind::Runtime)
            .count()
    });
    assert_eq!(runtime, 1);
});

both!(
    the_watcher_finds_the_libvirt_hosts_and_a_machine_by_its_host,
    |d: &Desks| {
        d.pool(1);
        // The watcher asks without naming a user: the embedded store answers
        // as the system, the team store as its login (here an admin's).
        let uris = d.with(&d.admin(), |c, _| c.libvirt_uris().unwrap());
        assert_eq!(uris, vec!["test:///default".to_owned()]);
        let m = machine(d, "vm0");
        let found = d.with(&d.admin(), |c, _| {
            c.reconcile_machine("test:///default", &m, "event", true)
                .unwrap()
        });
        assert!(
            matches!(found, vmdesk_core::Reconciled::Unchanged),
            "{found:?}"
        );
        d.host().start(&m).unwrap();
        let found = d.with(&d.admin(), |c, _| {
            c.reconcile_machine("test:///default", &m, "event", true)
                .unwrap()
        });
        assert!(
            matches!(found, vmdesk_core::Reconciled::Changed(ref c) if c.now == VmStatus::Running),
            "{found:?}"
        );
    }
);
