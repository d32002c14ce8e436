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
use vmdesk_core::{LedgerKind, Role, SessionRequest, SessionStatus};

fn req() -> SessionRequest {
    SessionRequest {
        project: "p".into(),
        ..Default::default()
    }
}

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

#[test]
fn on_a_team_store_one_is_ones_login_and_what_is_not_offered_yet_says_so() {
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
    // An operation the team store does not offer yet does not fall back on
    // the desk's own file.
    let err = core
        .vm_create(
            &ann,
            &vmdesk_core::VmCreate {
                name: "mine".into(),
                ram_mb: 96,
                disk_gb: 1,
                cpu_cores: 1,
                os_type: "blank".into(),
                host: None,
                start: false,
            },
            true,
            None,
        )
        .unwrap_err();
    assert_eq!(err.code(), "not_on_team_store", "{err}");
    assert_eq!(core.team().unwrap().login(), ann);
}
