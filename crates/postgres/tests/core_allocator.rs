//! Allocation of pool VMs to sessions (moved from
//! crates/core/tests/allocator.rs), on both stores: the embedded SQLite
//! file and a team store on PostgreSQL.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use stores::Desks;
use vmdesk_core::provider::PowerState;
use vmdesk_core::{Error, SessionRequest, SessionStatus, VmStatus};

use stores::req_in as req;

both!(
    open_with_wait_starts_the_vm_and_makes_the_session_active,
    |d: &Desks| {
        d.pool(1);
        d.with(&d.admin(), |c, me| {
            let s = c.session_open(me, &req("p"), true).unwrap();
            assert_eq!(s.status, SessionStatus::Active);
            let vm = c.vm_show(me, "vm0").unwrap();
            assert_eq!(vm.status, VmStatus::Running);
            assert_eq!(vm.session_id, Some(s.id));
            assert_eq!(
                d.host().state(vm.provider_id.as_deref().unwrap()),
                Some(PowerState::Running)
            );
        });
    }
);

both!(
    open_without_wait_returns_requested_and_touches_no_host,
    |d: &Desks| {
        d.pool(1);
        d.with(&d.admin(), |c, me| {
            let s = c.session_open(me, &req("p"), false).unwrap();
            assert_eq!(s.status, SessionStatus::Requested);
            let vm = c.vm_show(me, "vm0").unwrap();
            assert_eq!(
                d.host().state(vm.provider_id.as_deref().unwrap()),
                Some(PowerState::Stopped)
            );
        });
    }
);

both!(
    a_pending_session_is_driven_to_active_by_a_worker,
    |d: &Desks| {
        d.pool(1);
        d.with(&d.admin(), |c, me| {
            let s = c.session_open(me, &req("p"), false).unwrap();
            assert_eq!(c.drive_pending().unwrap(), 1);
            let s = c
                .session_list(me, false)
                .unwrap()
                .into_iter()
                .find(|x| x.id == s.id)
                .unwrap();
            assert_eq!(s.status, SessionStatus::Active);
        });
    }
);

both!(
    a_vm_in_a_live_session_is_not_allocated_again,
    |d: &Desks| {
        d.pool(2);
        d.with(&d.admin(), |c, me| {
            let a = c.session_open(me, &req("p"), false).unwrap();
            let b = c.session_open(me, &req("p"), false).unwrap();
            assert_ne!(a.vm_id, b.vm_id);
            let err = c.session_open(me, &req("p"), false).unwrap_err();
            assert!(matches!(err, Error::AllInUse { total: 2, .. }), "{err}");
            assert_eq!(err.to_string(), "all 2 VMs of project \"p\" are in use");
        });
    }
);

both!(the_least_recently_stopped_vm_goes_first, |d: &Desks| {
    d.pool(3);
    d.with(&d.admin(), |c, me| {
        // vm0 and vm1 are used and closed in that order; vm2 has never been stopped.
        for _ in 0..2 {
            let s = c.session_open(me, &req("p"), true).unwrap();
            c.session_close(me, s.id, true).unwrap();
        }
        let first = c.session_open(me, &req("p"), false).unwrap();
        assert_eq!(first.vm_name, "vm2", "never stopped goes first");
        let second = c.session_open(me, &req("p"), false).unwrap();
        assert_eq!(second.vm_name, "vm0", "then the one stopped longest ago");
    });
});

both!(
    a_type_is_honoured_and_a_missing_type_is_named,
    |d: &Desks| {
        d.pool(1);
        d.with(&d.admin(), |c, me| {
            c.vm_add(me, &common::vm("gpu0", "gpu")).unwrap();
            let s = c
                .session_open(
                    me,
                    &SessionRequest {
                        project: "p".into(),
                        vm_type: Some("gpu".into()),
                        ..Default::default()
                    },
                    false,
                )
                .unwrap();
            assert_eq!(s.vm_name, "gpu0");
            let err = c
                .session_open(
                    me,
                    &SessionRequest {
                        project: "p".into(),
                        vm_type: Some("tpu".into()),
                        ..Default::default()
                    },
                    false,
                )
                .unwrap_err();
            assert_eq!(err.code(), "no_vm_of_type");
            assert_eq!(err.to_string(), "project \"p\" has no VM of type \"tpu\"");
        });
    }
);

both!(
    an_empty_pool_and_an_unknown_project_are_named,
    |d: &Desks| {
        d.pool(0);
        d.with(&d.admin(), |c, me| {
            assert_eq!(
                c.session_open(me, &req("p"), false).unwrap_err().code(),
                "pool_empty"
            );
            assert_eq!(
                c.session_open(me, &req("nope"), false).unwrap_err().code(),
                "unknown_project"
            );
        });
    }
);

both!(
    workspaces_of_one_project_share_its_pool_exclusively,
    |d: &Desks| {
        d.pool(1);
        d.with(&d.admin(), |c, me| {
            c.workspace_create(me, "team-a", "p").unwrap();
            c.workspace_create(me, "team-b", "p").unwrap();
            let a = SessionRequest {
                project: "p".into(),
                workspace: Some("team-a".into()),
                vm_type: None,
            };
            let b = SessionRequest {
                project: "p".into(),
                workspace: Some("team-b".into()),
                vm_type: None,
            };
            let s = c.session_open(me, &a, false).unwrap();
            assert_eq!(s.workspace.as_deref(), Some("team-a"));
            assert_eq!(
                c.session_open(me, &b, false).unwrap_err().code(),
                "all_in_use"
            );
        });
    }
);

both!(closing_shuts_the_vm_down_and_frees_it, |d: &Desks| {
    d.pool(1);
    d.with(&d.admin(), |c, me| {
        let s = c.session_open(me, &req("p"), true).unwrap();
        let closed = c.session_close(me, s.id, true).unwrap();
        assert_eq!(closed.status, SessionStatus::Completed);
        let vm = c.vm_show(me, "vm0").unwrap();
        assert_eq!(vm.status, VmStatus::Stopped);
        assert_eq!(vm.session_id, None);
        assert!(vm.last_stopped.is_some());
        assert_eq!(
            d.host().state(vm.provider_id.as_deref().unwrap()),
            Some(PowerState::Stopped)
        );
        // Free again.
        assert_eq!(c.session_open(me, &req("p"), false).unwrap().vm_id, s.vm_id);
    });
});

both!(
    a_guest_that_ignores_shutdown_is_forced_off_after_the_timeout,
    |d: &Desks| {
        d.pool(1);
        *d.host().ignore_shutdown.lock().unwrap() = true;
        d.with(&d.admin(), |c, me| {
            let s = c.session_open(me, &req("p"), true).unwrap();
            let closed = c.session_close(me, s.id, true).unwrap();
            assert_eq!(closed.status, SessionStatus::Completed);
            let vm = c.vm_show(me, "vm0").unwrap();
            assert_eq!(
                d.host().state(vm.provider_id.as_deref().unwrap()),
                Some(PowerState::Stopped)
            );
            let ended = c.events(me, 1).unwrap().remove(0);
            assert_eq!(ended.action, "session.ended");
            assert_eq!(ended.details["forced_off"], true);
        });
    }
);

both!(
    a_start_the_host_refuses_fails_the_session_and_frees_the_vm,
    |d: &Desks| {
        d.pool(1);
        *d.host().refuse_start.lock().unwrap() = true;
        d.with(&d.admin(), |c, me| {
            let err = c.session_open(me, &req("p"), true).unwrap_err();
            assert_eq!(err.code(), "provider");
            assert!(
                err.one_line().contains("no room for this VM"),
                "{}",
                err.one_line()
            );
            let s = c.session_list(me, false).unwrap().remove(0);
            assert_eq!(s.status, SessionStatus::Failed);
            assert!(s.error.unwrap().contains("no room"));
            *d.host().refuse_start.lock().unwrap() = false;
            assert_eq!(
                c.session_open(me, &req("p"), true).unwrap().status,
                SessionStatus::Active
            );
        });
    }
);

both!(a_user_cannot_close_another_users_session, |d: &Desks| {
    d.pool(1);
    let alice = d.user("alice", false, 0);
    let bob = d.user("bob", false, 0);
    let s = d.with(&alice, |c, me| {
        c.session_open(me, &req("p"), false).unwrap()
    });
    let err = d.with(&bob, |c, me| c.session_close(me, s.id, false).unwrap_err());
    assert_eq!(err.code(), "forbidden");
    let hers = d.with(&alice, |c, me| c.session_list(me, false).unwrap());
    assert_eq!(hers.len(), 1);
    assert_eq!(hers[0].status, SessionStatus::Requested);
});

both!(
    a_requested_session_closed_before_it_starts_is_cancelled,
    |d: &Desks| {
        d.pool(1);
        d.with(&d.admin(), |c, me| {
            let s = c.session_open(me, &req("p"), false).unwrap();
            assert_eq!(
                c.session_close(me, s.id, true).unwrap().status,
                SessionStatus::Completed
            );
            assert_eq!(c.vm_show(me, "vm0").unwrap().session_id, None);
        });
    }
);

both!(
    concurrent_requesters_in_separate_connections_never_share_a_vm,
    |d: &Desks| {
        // Fewer on the team store, where each requester is a desk of its own.
        let (vms, requesters) = if d.is_team() { (10, 30) } else { (20, 60) };
        d.pool(vms);
        let a = d.admin();
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..requesters)
                .map(|_| {
                    let a = &a;
                    scope.spawn(move || {
                        d.with_another(a, |c, me| c.session_open(me, &req("p"), false))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(ok.len(), vms);
        let mut ids: Vec<i64> = ok.iter().map(|s| s.vm_id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), vms, "a VM was allocated twice");
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(e.code(), "all_in_use", "{e}");
        }
    }
);

both!(
    concurrent_requesters_sharing_one_core_never_share_a_vm,
    |d: &Desks| {
        d.pool(20);
        let a = d.admin();
        // 60 threads of one process (on the embedded store, refused requests
        // share batches with granted ones).
        let results: Vec<_> = d.with(&a, |c, me| {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..60)
                    .map(|_| scope.spawn(|| c.session_open(me, &req("p"), false)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            })
        });
        let mut vms: Vec<i64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|s| s.vm_id)
            .collect();
        assert_eq!(vms.len(), 20);
        vms.sort_unstable();
        vms.dedup();
        assert_eq!(vms.len(), 20, "a VM was allocated twice");
        assert!(results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| e.code() == "all_in_use"));
        // A refused request left nothing behind: 20 sessions, 20 open events.
        d.with(&a, |c, me| {
            assert_eq!(c.session_list(me, true).unwrap().len(), 20)
        });
        assert_eq!(d.events_named("session.open").len(), 20);
    }
);
