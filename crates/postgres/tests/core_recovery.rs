//! Settling work a crashed worker left (moved from
//! crates/core/tests/recovery.rs), on both stores: the embedded SQLite file
//! and a team store on PostgreSQL. The crashed process is a worker of
//! ann's that died ([`Desks::dead_worker`]: on the team store a desk whose
//! connection ended); the work it left mid-way, a state no API call leaves
//! behind, is written to the store directly ([`Desks::write_store`]). The
//! next process to start settles it: any process on the embedded store, an
//! admin's on the team store (recovery is an admin's there).
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use stores::Desks;
use vmdesk_core::provider::{PowerState, Provider};
use vmdesk_core::{SessionStatus, VmStatus};

use stores::req;

/// Marks session `id` as left in `status` by `worker`.
fn left_session(d: &Desks, id: i64, status: &str, worker: &str) {
    let set = format!("SET status = '{status}', worker = '{worker}' WHERE id = {id}");
    let n = d.write_store(
        &format!("UPDATE sessions {set}"),
        &format!("UPDATE vmdesk.sessions {set}"),
    );
    assert_eq!(n, 1);
}

both!(
    a_starting_session_of_a_dead_worker_with_its_vm_off_becomes_failed,
    |d: &Desks| {
        d.pool(1);
        let ann = d.user("ann", false, 100);
        let s = d.with(&ann, |c, me| c.session_open(me, &req(), false).unwrap());
        left_session(d, s.id, "STARTING", &d.dead_worker(&ann));
        let a = d.admin();
        d.with_another(&a, |c, me| {
            let s = c.session_list(me, true).unwrap().remove(0);
            assert_eq!(s.status, SessionStatus::Failed);
            assert_eq!(c.vm_show(me, "vm0").unwrap().session_id, None);
        });
        let e = d.events(1).remove(0);
        assert_eq!(e.action, "recovery.session");
        assert_eq!(e.details["was"], "STARTING");
        assert_eq!(e.details["now"], "FAILED");
    }
);

both!(
    a_starting_session_of_a_dead_worker_with_its_vm_running_becomes_active,
    |d: &Desks| {
        d.pool(1);
        let ann = d.user("ann", false, 100);
        let s = d.with(&ann, |c, me| c.session_open(me, &req(), false).unwrap());
        let a = d.admin();
        let machine = d.with(&a, |c, me| {
            c.vm_show(me, "vm0").unwrap().provider_id.unwrap()
        });
        d.host().start(&machine).unwrap();
        left_session(d, s.id, "STARTING", &d.dead_worker(&ann));
        d.with_another(&a, |c, me| {
            assert_eq!(
                c.session_list(me, true).unwrap()[0].status,
                SessionStatus::Active
            );
            assert_eq!(c.vm_show(me, "vm0").unwrap().status, VmStatus::Running);
        });
    }
);

both!(
    a_terminating_session_of_a_dead_worker_is_finished,
    |d: &Desks| {
        d.pool(1);
        let ann = d.user("ann", false, 100);
        let s = d.with(&ann, |c, me| c.session_open(me, &req(), true).unwrap());
        left_session(d, s.id, "TERMINATING", &d.dead_worker(&ann));
        let a = d.admin();
        let machine = d.with_another(&a, |c, me| {
            assert_eq!(
                c.session_list(me, true).unwrap()[0].status,
                SessionStatus::Completed
            );
            c.vm_show(me, "vm0").unwrap().provider_id.unwrap()
        });
        assert_eq!(d.host().state(&machine), Some(PowerState::Stopped));
    }
);

both!(
    a_vm_left_creating_by_a_dead_worker_becomes_failed_to_start,
    |d: &Desks| {
        d.pool(1);
        let ann = d.user("ann", false, 100);
        let dead = d.dead_worker(&ann);
        let set = format!("SET status = 'CREATING', worker = '{dead}'");
        let n = d.write_store(
            &format!("UPDATE vms {set}"),
            &format!("UPDATE vmdesk.vms {set}"),
        );
        assert_eq!(n, 1);
        let a = d.admin();
        d.with_another(&a, |c, me| {
            assert_eq!(
                c.vm_show(me, "vm0").unwrap().status,
                VmStatus::FailedToStart
            );
        });
        assert_eq!(d.actions(1), ["recovery.vm"]);
    }
);

both!(pending_work_of_a_live_worker_is_left_alone, |d: &Desks| {
    d.pool(1);
    let a = d.admin();
    // The admin's process registers as a worker when it drives; it stays
    // alive below.
    let s = d.with(&a, |c, me| c.session_open(me, &req(), false).unwrap());
    assert_eq!(d.with(&a, |c, _| c.drive_pending().unwrap()), 1);
    let live = d.live_workers(&a);
    assert_eq!(live.len(), 1, "{live:?}");
    left_session(d, s.id, "STARTING", &live[0]);
    d.with_another(&a, |other, me| {
        assert_eq!(
            other.session_list(me, true).unwrap()[0].status,
            SessionStatus::Starting
        );
    });
});

both!(
    a_pending_request_without_a_worker_is_not_mistaken_for_a_crash,
    |d: &Desks| {
        d.pool(1);
        let ann = d.user("ann", false, 100);
        d.with(&ann, |c, me| c.session_open(me, &req(), false).unwrap());
        let a = d.admin();
        d.with_another(&a, |c, me| {
            assert_eq!(
                c.session_list(me, true).unwrap()[0].status,
                SessionStatus::Requested
            );
        });
    }
);
