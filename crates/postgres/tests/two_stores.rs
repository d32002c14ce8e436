//! The core's rules, run against both stores: the embedded SQLite file and
//! a team store on PostgreSQL (where the database enforces them). Each test
//! is written once (`both!`) and gives the same answers, error codes
//! included, on both.
#![allow(missing_docs, clippy::unwrap_used)]

// The core's own test host (machines in memory) and helpers.
#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use std::collections::HashSet;

use stores::{Desks, Kind};
use vmdesk_core::provider::PowerState;
use vmdesk_core::{LedgerKind, Role, SessionRequest, SessionStatus, VmAction, VmCreate, VmStatus};

use stores::req;

both!(
    grants_charges_and_balances_follow_the_ledger,
    |d: &Desks| {
        let ann = d.user("ann", false, 0);
        let a = d.admin();
        let st = d.with(&a, |c, a| c.credits_grant(a, &ann, 50, "course").unwrap());
        assert_eq!(st.balance, 50);
        d.with(&ann, |c, me| {
            let e = c
                .charge(me, me, 20, LedgerKind::Adjustment, "lab fee")
                .unwrap();
            assert_eq!(e.amount, -20);
            let err = c
                .charge(me, me, 40, LedgerKind::Adjustment, "too much")
                .unwrap_err();
            assert_eq!(err.code(), "insufficient_credits", "{err}");
            let st = c.credits_show(me, None).unwrap();
            assert_eq!(st.balance, 30, "a refused charge changes nothing");
            assert_eq!(st.entries.iter().map(|e| e.amount).sum::<i64>(), st.balance);
            assert_eq!(st.entries.len(), 2);
        });
    }
);

both!(only_an_admin_grants_adds_and_changes_roles, |d: &Desks| {
    let ann = d.user("ann", false, 10);
    let bob = d.user("bob", false, 10);
    d.with(&ann, |c, me| {
        for (what, err) in [
            ("grant", c.credits_grant(me, me, 100, "free").unwrap_err()),
            ("user add", c.user_add(me, "mallory", true, 0).unwrap_err()),
            ("role", c.user_role(me, me, Role::Admin).unwrap_err()),
            ("project", c.project_create(me, "mine").unwrap_err()),
            ("users", c.user_list(me).unwrap_err()),
            ("bob's credits", c.credits_show(me, Some(&bob)).unwrap_err()),
        ] {
            assert_eq!(err.code(), "admin_only", "{what}: {err}");
        }
        let err = c
            .charge(me, &bob, 5, LedgerKind::Adjustment, "spite")
            .unwrap_err();
        assert_eq!(err.code(), "forbidden", "{err}");
        assert_eq!(c.credits_show(me, None).unwrap().balance, 10);
    });
    d.with(&bob, |c, me| {
        assert_eq!(c.credits_show(me, None).unwrap().balance, 10)
    });
});

both!(roles_change_but_never_the_last_admin_away, |d: &Desks| {
    let a = d.admin();
    let ann = d.user("ann", false, 0);
    d.with(&a, |c, me| {
        let err = c.user_role(me, me, Role::User).unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{err}");
        assert_eq!(
            c.user_role(me, &ann, Role::Admin).unwrap().role,
            Role::Admin
        );
    });
    // Now an admin, ann may grant.
    d.with(&ann, |c, me| {
        c.credits_grant(me, me, 5, "as admin").unwrap();
    });
    d.with(&a, |c, me| {
        assert_eq!(c.user_role(me, me, Role::User).unwrap().role, Role::User);
        let err = c.credits_grant(me, me, 5, "no longer").unwrap_err();
        assert_eq!(err.code(), "admin_only", "{err}");
    });
});

both!(names_are_unique_and_unknown_ones_are_said, |d: &Desks| {
    let a = d.admin();
    d.pool(1);
    d.with(&a, |c, me| {
        assert_eq!(
            c.project_create(me, "p").unwrap_err().code(),
            "already_exists"
        );
        let err = c.workspace_create(me, "w", "nope").unwrap_err();
        assert_eq!(err.code(), "unknown_project", "{err}");
        c.workspace_create(me, "w", "p").unwrap();
        let err = c.credits_grant(me, "nobody", 5, "x").unwrap_err();
        assert_eq!(err.code(), "unknown_user", "{err}");
        let err = c.project_create(me, "bad name").unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{err}");
    });
});

both!(
    each_session_gets_its_own_vm_and_a_full_pool_says_so,
    |d: &Desks| {
        d.pool(3);
        let users: Vec<String> = (0..4).map(|i| d.user(&format!("u{i}"), false, 0)).collect();
        let mut vms = HashSet::new();
        for u in &users[..3] {
            let s = d.with(u, |c, me| c.session_open(me, &req(), false).unwrap());
            assert_eq!(s.status, SessionStatus::Requested);
            assert_eq!(&s.user, u);
            assert!(vms.insert(s.vm_id), "VM {} given twice", s.vm_name);
        }
        d.with(&users[3], |c, me| {
            let err = c.session_open(me, &req(), false).unwrap_err();
            assert_eq!(err.code(), "all_in_use", "{err}");
            assert_eq!(err.to_string(), "all 3 VMs of project \"p\" are in use");
            let other = SessionRequest {
                project: "nope".into(),
                ..Default::default()
            };
            assert_eq!(
                c.session_open(me, &other, false).unwrap_err().code(),
                "unknown_project"
            );
            let typed = SessionRequest {
                vm_type: Some("gpu".into()),
                ..req()
            };
            assert_eq!(
                c.session_open(me, &typed, false).unwrap_err().code(),
                "no_vm_of_type"
            );
        });
    }
);

both!(a_session_is_its_users_to_close_and_see, |d: &Desks| {
    d.pool(2);
    let ann = d.user("ann", false, 0);
    let bob = d.user("bob", false, 0);
    let s = d.with(&ann, |c, me| c.session_open(me, &req(), false).unwrap());
    d.with(&bob, |c, me| {
        let err = c.session_close(me, s.id, false).unwrap_err();
        assert_eq!(err.code(), "forbidden", "{err}");
        assert!(c.session_list(me, false).unwrap().is_empty());
        assert_eq!(c.session_list(me, true).unwrap_err().code(), "admin_only");
    });
    d.with(&ann, |c, me| {
        // Nothing was started for it: cancelled at once.
        let closed = c.session_close(me, s.id, false).unwrap();
        assert_eq!(closed.status, SessionStatus::Completed);
        let err = c.session_close(me, s.id, false).unwrap_err();
        assert_eq!(err.code(), "session_state", "{err}");
        let mine = c.session_list(me, false).unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].id, s.id);
    });
    let a = d.admin();
    d.with(&a, |c, me| {
        assert_eq!(c.session_list(me, true).unwrap().len(), 1)
    });
});

both!(
    events_record_each_change_and_show_a_user_their_own,
    |d: &Desks| {
        d.pool(2);
        let ann = d.user("ann", false, 0);
        let bob = d.user("bob", false, 0);
        d.with(&ann, |c, me| c.session_open(me, &req(), false).unwrap());
        d.with(&bob, |c, me| c.session_open(me, &req(), false).unwrap());
        d.with(&ann, |c, me| {
            let seen = c.events(me, 100).unwrap();
            assert!(seen
                .iter()
                .any(|e| e.action == "session.open" && e.actor == ann));
            assert!(
                seen.iter().all(|e| e.actor != bob),
                "ann sees bob's events: {seen:?}"
            );
        });
        let a = d.admin();
        d.with(&a, |c, me| {
            let all = c.events(me, 100).unwrap();
            let opens = all.iter().filter(|e| e.action == "session.open").count();
            assert_eq!(opens, 2);
        });
    }
);

both!(concurrent_opens_never_share_a_vm, |d: &Desks| {
    d.pool(5);
    let users: Vec<String> = (0..10)
        .map(|i| d.user(&format!("c{i}"), false, 0))
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = users
            .iter()
            .map(|u| s.spawn(move || d.with(u, |c, me| c.session_open(me, &req(), false))))
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let vms: HashSet<i64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|s| s.vm_id)
            .collect();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 5);
        assert_eq!(vms.len(), 5, "no VM twice");
        for e in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(e.code(), "all_in_use", "{e}");
        }
    });
});

both!(
    a_session_waited_for_runs_its_vm_and_closing_stops_it,
    |d: &Desks| {
        d.pool(1);
        let ann = d.user("ann", false, 0);
        let s = d.with(&ann, |c, me| c.session_open(me, &req(), true).unwrap());
        assert_eq!(s.status, SessionStatus::Active);
        let vm = d.with(&ann, |c, me| c.vm_show(me, &s.vm_name).unwrap());
        assert_eq!(vm.status, VmStatus::Running);
        let machine = vm.provider_id.clone().unwrap();
        assert_eq!(d.host().state(&machine), Some(PowerState::Running));
        let closed = d.with(&ann, |c, me| c.session_close(me, s.id, true).unwrap());
        assert_eq!(closed.status, SessionStatus::Completed);
        assert_eq!(d.host().state(&machine), Some(PowerState::Stopped));
        let vm = d.with(&ann, |c, me| c.vm_show(me, &s.vm_name).unwrap());
        assert_eq!(vm.status, VmStatus::Stopped);
        assert_eq!(vm.session_id, None, "the VM is free again");
        let actions: Vec<String> = d.with(&ann, |c, me| {
            c.events(me, 50)
                .unwrap()
                .into_iter()
                .map(|e| e.action)
                .collect()
        });
        for a in [
            "session.open",
            "session.starting",
            "session.active",
            "session.close",
            "session.ended",
        ] {
            assert!(
                actions.iter().any(|x| x == a),
                "{a} missing from {actions:?}"
            );
        }
    }
);

both!(
    a_failed_start_fails_the_session_and_frees_the_vm,
    |d: &Desks| {
        d.pool(1);
        let ann = d.user("ann", false, 0);
        *d.host().refuse_start.lock().unwrap() = true;
        let err = d.with(&ann, |c, me| c.session_open(me, &req(), true).unwrap_err());
        assert_eq!(err.code(), "provider", "{err}");
        let mine = d.with(&ann, |c, me| c.session_list(me, false).unwrap());
        assert_eq!(mine[0].status, SessionStatus::Failed);
        assert!(
            mine[0].error.as_deref().unwrap_or("").contains("no room"),
            "{mine:?}"
        );
        *d.host().refuse_start.lock().unwrap() = false;
        let again = d.with(&ann, |c, me| c.session_open(me, &req(), true).unwrap());
        assert_eq!(again.status, SessionStatus::Active);
    }
);

both!(
    an_own_vm_is_paid_for_and_made_or_refused_without_charge,
    |d: &Desks| {
        d.pool(0);
        let ann = d.user("ann", false, 100);
        let spec = |name: &str, ram_mb: i64| VmCreate {
            name: name.into(),
            ram_mb,
            disk_gb: 10,
            cpu_cores: 1,
            os_type: "blank".into(),
            host: None,
            start: true,
        };
        let cost = vmdesk_core::quote(512, 10, 1).unwrap().cost;
        let vm = d.with(&ann, |c, me| {
            c.vm_create(me, &spec("mine", 512), true, None).unwrap()
        });
        assert_eq!(vm.status, VmStatus::Running);
        assert_eq!(vm.owner.as_deref(), Some(ann.as_str()));
        d.with(&ann, |c, me| {
            assert_eq!(c.credits_show(me, None).unwrap().balance, 100 - cost);
            let err = c
                .vm_create(me, &spec("dear", 65536), true, None)
                .unwrap_err();
            assert_eq!(err.code(), "insufficient_credits", "{err}");
            assert_eq!(c.credits_show(me, None).unwrap().balance, 100 - cost);
            let own: Vec<String> = c
                .vm_list_own(me)
                .unwrap()
                .into_iter()
                .map(|v| v.name)
                .collect();
            assert_eq!(own, ["mine"]);
            let err = c.vm_create(me, &spec("mine", 512), true, None).unwrap_err();
            assert_eq!(err.code(), "already_exists", "{err}");
        });
        // Another user does not see it.
        let bob = d.user("bob", false, 0);
        d.with(&bob, |c, me| {
            assert_eq!(c.vm_show(me, "mine").unwrap_err().code(), "unknown_vm");
            assert!(c.vm_list_own(me).unwrap().is_empty());
        });
    }
);

both!(
    the_overview_shows_pools_to_all_and_sessions_to_their_users,
    |d: &Desks| {
        d.pool(2);
        let ann = d.user("ann", false, 0);
        let bob = d.user("bob", false, 0);
        d.with(&ann, |c, me| c.session_open(me, &req(), false).unwrap());
        d.with(&bob, |c, me| {
            let o = c.overview(me).unwrap();
            assert_eq!(o.user.name, bob);
            assert_eq!(o.pools.len(), 1);
            assert_eq!(o.pools[0].vms.len(), 2);
            assert_eq!(
                o.pools[0]
                    .vms
                    .iter()
                    .filter(|v| v.session_id.is_some())
                    .count(),
                1
            );
            assert!(o.sessions.is_empty(), "bob sees no session of ann's");
        });
        let a = d.admin();
        d.with(&a, |c, me| {
            assert_eq!(c.overview(me).unwrap().sessions.len(), 1)
        });
    }
);

both!(
    own_vms_stop_start_and_go_and_pool_vms_are_the_admins,
    |d: &Desks| {
        d.pool(1);
        let ann = d.user("ann", false, 100);
        let spec = VmCreate {
            name: "mine".into(),
            ram_mb: 512,
            disk_gb: 10,
            cpu_cores: 1,
            os_type: "blank".into(),
            host: None,
            start: true,
        };
        d.with(&ann, |c, me| {
            let vm = c.vm_create(me, &spec, true, None).unwrap();
            let machine = vm.provider_id.clone().unwrap();
            let v = c.vm_action(me, "mine", VmAction::Stop).unwrap();
            assert_eq!(v.status, VmStatus::Stopped);
            assert_eq!(d.host().state(&machine), Some(PowerState::Stopped));
            let v = c.vm_action(me, "mine", VmAction::Start).unwrap();
            assert_eq!(v.status, VmStatus::Running);
            // A pool VM is not ann's to act on.
            let err = c.vm_action(me, "vm0", VmAction::Stop).unwrap_err();
            assert_eq!(err.code(), "forbidden", "{err}");
            let v = c.vm_action(me, "mine", VmAction::Destroy).unwrap();
            assert_eq!(v.status, VmStatus::Destroyed);
            assert_eq!(d.host().state(&machine), None, "the machine is gone");
            let err = c.vm_action(me, "mine", VmAction::Start).unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{err}");
        });
        // A pool VM held by a session refuses a stop, even by an admin.
        let s = d.with(&ann, |c, me| c.session_open(me, &req(), true).unwrap());
        let a = d.admin();
        d.with(&a, |c, me| {
            let err = c.vm_action(me, &s.vm_name, VmAction::Stop).unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{err}");
            assert!(err.to_string().contains("held by session"), "{err}");
        });
    }
);

both!(
    running_time_is_billed_once_per_interval_to_who_uses_the_vm,
    |d: &Desks| {
        d.pool(1);
        let ann = d.user("ann", false, 1000);
        let bob = d.user("bob", false, 1000);
        d.create_vm(&ann, "mine");
        let s = d.with(&bob, |c, me| c.session_open(me, &req(), true).unwrap());
        let later = chrono::Utc::now() + chrono::Duration::hours(2);
        let a = d.admin();
        let charges = d.with(&a, |c, _| c.bill_runtime(later).unwrap());
        // 1024 MB, 20 GB, 2 CPUs cost 34: 3.4 credits an hour at 10 %.
        let mine = charges
            .iter()
            .find(|c| c.vm == "mine")
            .expect("ann's VM billed");
        assert_eq!(mine.user, ann);
        assert!((7190..=7200).contains(&mine.seconds), "{mine:?}");
        assert_eq!(mine.credits, 6);
        let pool = charges
            .iter()
            .find(|c| c.vm == s.vm_name)
            .expect("bob's session billed");
        assert_eq!(pool.user, bob);
        // The same interval again: nothing more.
        let again = d.with(&a, |c, _| c.bill_runtime(later).unwrap());
        assert!(
            again.iter().all(|c| c.credits == 0 && c.seconds <= 0) || again.is_empty(),
            "{again:?}"
        );
        d.with(&ann, |c, me| {
            let st = c.credits_show(me, None).unwrap();
            let runtime: i64 = st
                .entries
                .iter()
                .filter(|e| e.kind == LedgerKind::Runtime)
                .map(|e| -e.amount)
                .sum();
            assert_eq!(runtime, 6);
            assert_eq!(st.entries.iter().map(|e| e.amount).sum::<i64>(), st.balance);
        });
    }
);

both!(
    status_sync_follows_the_host_and_ends_a_session_whose_vm_stopped,
    |d: &Desks| {
        d.pool(2);
        let ann = d.user("ann", false, 0);
        let s = d.with(&ann, |c, me| c.session_open(me, &req(), true).unwrap());
        let held = d.with(&ann, |c, me| c.vm_show(me, &s.vm_name).unwrap());
        let free = d.with(&ann, |c, me| {
            c.vm_list(me, false)
                .unwrap()
                .into_iter()
                .find(|v| v.id != held.id)
                .unwrap()
        });
        // Behind vmdesk's back: the session's VM goes off, the free one runs.
        let host = d.host();
        host.machines
            .lock()
            .unwrap()
            .insert(held.provider_id.clone().unwrap(), PowerState::Stopped);
        host.machines
            .lock()
            .unwrap()
            .insert(free.provider_id.clone().unwrap(), PowerState::Running);
        let a = d.admin();
        let changes = d.with(&a, |c, _| c.sync_once("poll").unwrap());
        let by_vm = |name: &str| changes.iter().find(|c| c.vm == name).cloned();
        let ended = by_vm(&held.name).expect("the held VM changed");
        assert_eq!(
            (ended.was, ended.now),
            (VmStatus::Running, VmStatus::Stopped)
        );
        assert_eq!(ended.terminated_session, Some(s.id));
        let ran = by_vm(&free.name).expect("the free VM changed");
        assert_eq!(ran.now, VmStatus::Running);
        d.with(&ann, |c, me| {
            let mine = c.session_list(me, false).unwrap();
            assert_eq!(mine[0].status, SessionStatus::Terminated);
        });
        // Nothing changed since: the next pass writes nothing.
        assert!(d.with(&a, |c, _| c.sync_once("poll").unwrap()).is_empty());
    }
);

both!(
    work_left_to_a_worker_is_driven_by_an_admins_process,
    |d: &Desks| {
        d.pool(1);
        let ann = d.user("ann", false, 0);
        let s = d.with(&ann, |c, me| c.session_open(me, &req(), false).unwrap());
        assert_eq!(s.status, SessionStatus::Requested);
        let a = d.admin();
        let driven = d.with(&a, |c, _| c.drive_pending().unwrap());
        assert_eq!(driven, 1);
        let now = d.with(&ann, |c, me| c.session_list(me, false).unwrap());
        assert_eq!(now[0].status, SessionStatus::Active);
        // Nothing is left.
        assert_eq!(d.with(&a, |c, _| c.drive_pending().unwrap()), 0);
    }
);

#[test]
fn a_session_whose_desk_died_mid_start_is_settled_by_an_admins_recovery() {
    use vmdesk_core::team::prelude::*;
    let d = Desks::new(Kind::Team);
    d.pool(2);
    let ann = d.user("ann", false, 0);
    let pw = d.password(&ann);
    let store = d.team_store();
    // Ann's desk opens a session and starts it, then dies: its worker's
    // liveness lock goes with its connection.
    let dead = vmdesk_postgres::PgStore::connect(store.target(&ann, &pw)).unwrap();
    dead.register_worker("ann-desk-1234").unwrap();
    let s = dead.session_open(&req(), Some("ann-desk-1234")).unwrap();
    dead.session_starting(s.id, "ann-desk-1234").unwrap();
    let alive = d.with(&d.admin(), |c, _| {
        c.team().unwrap().worker_alive("ann-desk-1234").unwrap()
    });
    assert!(alive, "the worker lives while its connection does");
    drop(dead);
    let a = d.admin();
    // The server lets the lock go when the dead connection's backend has
    // ended, a moment after the client closed it.
    let t = std::time::Instant::now();
    while d.with(&a, |c, _| {
        c.team().unwrap().worker_alive("ann-desk-1234").unwrap()
    }) {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "the dead worker's lock stays"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Its machine never started: the session fails and its VM is freed.
    let repaired = d.with(&a, |c, _| c.recover().unwrap());
    assert_eq!(repaired, 1);
    let mine = d.with(&ann, |c, me| c.session_list(me, false).unwrap());
    assert_eq!(mine[0].status, SessionStatus::Failed);
    let vm = d.with(&ann, |c, me| c.vm_show(me, &s.vm_name).unwrap());
    assert_eq!(vm.session_id, None);
    assert_ne!(vm.status, VmStatus::Starting);
    // A live desk's work is left alone.
    let live = vmdesk_postgres::PgStore::connect(store.target(&ann, &pw)).unwrap();
    live.register_worker("ann-desk-5678").unwrap();
    let s2 = live.session_open(&req(), Some("ann-desk-5678")).unwrap();
    live.session_starting(s2.id, "ann-desk-5678").unwrap();
    assert_eq!(d.with(&a, |c, _| c.recover().unwrap()), 0);
    assert_eq!(live.session(s2.id).unwrap().status, SessionStatus::Starting);
}

both!(
    a_console_is_for_who_may_see_the_running_vm_and_its_token_works_once,
    |d: &Desks| {
        d.pool(2);
        let ann = d.user("ann", false, 0);
        let bob = d.user("bob", false, 0);
        let s = d.with(&ann, |c, me| c.session_open(me, &req(), true).unwrap());
        let ttl = std::time::Duration::from_secs(60);
        d.with(&bob, |c, me| {
            let err = c
                .console_reserve(me, &s.vm_name, (6100, 6101), &[], ttl)
                .unwrap_err();
            assert_eq!(err.code(), "forbidden", "{err}");
        });
        d.with(&ann, |c, me| {
            let g = c
                .console_reserve(me, &s.vm_name, (6100, 6101), &[], ttl)
                .unwrap();
            assert_eq!(g.port, 6100);
            assert_eq!(g.vm, s.vm_name);
            let g2 = c
                .console_reserve(me, &s.vm_name, (6100, 6101), &[], ttl)
                .unwrap();
            assert_eq!(g2.port, 6101);
            let err = c
                .console_reserve(me, &s.vm_name, (6100, 6101), &[], ttl)
                .unwrap_err();
            assert_eq!(err.code(), "port_pool_exhausted", "{err}");
            assert_eq!(c.console_stats((6100, 6101)).unwrap().allocated, 2);
            let err = c.console_redeem(g.port, "not-the-token").unwrap_err();
            assert_eq!(err.code(), "console_refused", "{err}");
            assert_eq!(c.console_redeem(g.port, &g.token).unwrap().name, s.vm_name);
            let err = c.console_redeem(g.port, &g.token).unwrap_err();
            assert_eq!(err.code(), "console_refused", "{err}");
            assert!(err.to_string().contains("already used"), "{err}");
            assert!(c.console_release(g.port, "closed").unwrap());
            assert!(!c.console_release(g.port, "closed").unwrap());
            assert!(c.console_release(g2.port, "closed").unwrap());
            // A stopped VM shows no console.
            c.session_close(me, s.id, true).unwrap();
            let err = c
                .console_reserve(me, &s.vm_name, (6100, 6101), &[], ttl)
                .unwrap_err();
            assert_eq!(err.code(), "forbidden", "{err}");
        });
    }
);

#[test]
fn console_ports_are_each_desks_own() {
    let d = Desks::new(Kind::Team);
    d.pool(2);
    let ann = d.user("ann", false, 0);
    let bob = d.user("bob", false, 0);
    let ttl = std::time::Duration::from_secs(60);
    let mut ports = Vec::new();
    for u in [&ann, &bob] {
        let s = d.with(u, |c, me| c.session_open(me, &req(), true).unwrap());
        let g = d.with(u, |c, me| {
            c.console_reserve(me, &s.vm_name, (6100, 6100), &[], ttl)
                .unwrap()
        });
        ports.push(g.port);
    }
    assert_eq!(ports, [6100, 6100], "two desks both use 6100");
}

both!(
    events_are_filtered_by_type_severity_vm_and_id,
    |d: &Desks| {
        d.pool(2);
        let ann = d.user("ann", false, 10);
        let s = d.with(&ann, |c, me| c.session_open(me, &req(), true).unwrap());
        d.with(&ann, |c, me| {
            let q =
                |types: Vec<vmdesk_core::EventType>, after: Option<i64>| vmdesk_core::EventQuery {
                    types,
                    severities: vec![],
                    after,
                    limit: 100,
                    ..Default::default()
                };
            let sessions = c
                .events_query(me, &q(vec![vmdesk_core::EventType::Session], None))
                .unwrap();
            assert!(!sessions.is_empty());
            assert!(sessions
                .iter()
                .all(|e| e.event_type == vmdesk_core::EventType::Session));
            let newest = sessions[0].id;
            assert!(c
                .events_query(me, &q(vec![], Some(newest)))
                .unwrap()
                .iter()
                .all(|e| e.id > newest));
            let of_vm = c.vm_events(me, &s.vm_name, 100).unwrap();
            assert!(!of_vm.is_empty());
            assert!(of_vm.iter().all(|e| e.vm_id == Some(s.vm_id)), "{of_vm:?}");
            assert!(of_vm.iter().any(|e| e.action == "session.active"));
            let err = c
                .events_query(
                    me,
                    &vmdesk_core::EventQuery {
                        limit: 0,
                        ..q(vec![], None)
                    },
                )
                .unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{err}");
        });
    }
);

#[test]
fn on_a_team_store_one_is_ones_login() {
    let d = Desks::new(Kind::Team);
    let ann = d.user("ann", false, 0);
    let a = d.admin();
    let desk = d.core(&ann);
    let core = &desk.1;
    // Acting as another user (what --as does on the embedded store) is refused.
    let err = core
        .credits_grant(&a, &ann, 1000, "as the admin")
        .unwrap_err();
    assert_eq!(err.code(), "forbidden", "{err}");
    assert!(err.to_string().contains("you are your login"), "{err}");
    // What the store refuses a plain login is refused, not read from the
    // desk's own file.
    let err = core.quarantined(&ann).unwrap_err();
    assert_eq!(err.code(), "admin_only", "{err}");
    assert_eq!(core.team().unwrap().login(), ann);
}
