//! What the desktop window asks of the core: the filtered event feed and
//! users' roles (moved from crates/core/tests/desk.rs), on both stores: the
//! embedded SQLite file and a team store on PostgreSQL, where each user
//! works through a desk of their own.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use stores::Desks;
use vmdesk_core::{Error, EventQuery, EventType, Role, Severity};

fn q(limit: i64) -> EventQuery {
    EventQuery {
        limit,
        ..Default::default()
    }
}

both!(
    the_feed_filters_by_type_and_severity_and_follows_by_id,
    |d: &Desks| {
        d.pool(1);
        d.user("ann", false, 100);
        let a = d.admin();
        let newest = d.with(&a, |c, a| {
            let all = c.events_query(a, &q(100)).unwrap();
            assert!(all.len() >= 4, "{all:?}");
            assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");

            let admin = c
                .events_query(
                    a,
                    &EventQuery {
                        types: vec![EventType::Admin],
                        ..q(100)
                    },
                )
                .unwrap();
            assert!(!admin.is_empty());
            assert!(admin.iter().all(|e| e.event_type == EventType::Admin));

            let warnings = c
                .events_query(
                    a,
                    &EventQuery {
                        severities: vec![Severity::Warning, Severity::Critical],
                        ..q(100)
                    },
                )
                .unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");

            let newest = all[0].id;
            assert!(c
                .events_query(
                    a,
                    &EventQuery {
                        after: Some(newest),
                        ..q(100)
                    }
                )
                .unwrap()
                .is_empty());
            newest
        });
        d.user("bob", false, 0);
        d.with(&a, |c, a| {
            let newer = c
                .events_query(
                    a,
                    &EventQuery {
                        after: Some(newest),
                        ..q(100)
                    },
                )
                .unwrap();
            assert_eq!(newer.len(), 1, "{newer:?}");
            assert_eq!(newer[0].action, "user.add");
            assert!(newer[0].id > newest, "only events after the one given");
            assert_eq!(c.last_event_id().unwrap(), newer[0].id);
        });
    }
);

both!(
    a_user_sees_events_about_themselves_written_by_others_and_nobody_elses,
    |d: &Desks| {
        d.pool(1);
        let ann = d.user("ann", false, 1000);
        let bob = d.user("bob", false, 1000);
        let s = d.with(&ann, |c, me| {
            c.session_open(me, &stores::req(), true).unwrap()
        });
        // The admin closes ann's session: ann sees it, bob does not.
        let a = d.admin();
        d.with(&a, |c, me| c.session_close(me, s.id, true).unwrap());
        let seen = d.with(&ann, |c, me| c.events_query(me, &q(100)).unwrap());
        assert!(
            seen.iter()
                .any(|e| e.actor == a && e.session_id == Some(s.id)),
            "{seen:?}"
        );
        // Bob sees his own account and credits being made (the admin's
        // user.add and credits.grant about him), and nothing of ann's.
        let seen = d.with(&bob, |c, me| c.events_query(me, &q(100)).unwrap());
        assert!(seen.iter().all(|e| e.session_id != Some(s.id)), "{seen:?}");
        let mut about: Vec<&str> = seen.iter().map(|e| e.action.as_str()).collect();
        about.sort();
        assert_eq!(about, ["credits.grant", "user.add"], "{seen:?}");
        assert!(
            seen.iter().all(|e| e.details["user"] == bob.as_str()),
            "{seen:?}"
        );
    }
);

both!(bad_limits_are_refused, |d: &Desks| {
    d.pool(0);
    let a = d.admin();
    d.with(&a, |c, a| {
        for limit in [0, -1, 10_001] {
            let e = c.events_query(a, &q(limit)).unwrap_err();
            assert_eq!(e.code(), "invalid_input", "{limit}");
        }
    });
});

both!(
    an_admin_changes_roles_but_never_removes_the_last_admin,
    |d: &Desks| {
        d.pool(0);
        let a = d.admin();
        let ann = d.user("ann", false, 0);
        d.with(&ann, |c, me| {
            let e = c.user_role(me, me, Role::Admin).unwrap_err();
            assert!(matches!(e, Error::AdminOnly(_)), "{e:?}");
        });

        d.with(&a, |c, me| {
            let e = c.user_role(me, me, Role::User).unwrap_err();
            assert_eq!(e.code(), "invalid_input");
            assert!(e.one_line().contains("last admin"), "{}", e.one_line());
            assert_eq!(c.user(me).unwrap().role, Role::Admin);

            assert_eq!(
                c.user_role(me, &ann, Role::Admin).unwrap().role,
                Role::Admin
            );
        });
        // Now there are two: the first may step down.
        d.with(&ann, |c, me| {
            assert_eq!(c.user_role(me, &a, Role::User).unwrap().role, Role::User);
        });
        d.with(&ann, |c, me| {
            let roles = c.events(me, 10_000).unwrap();
            assert_eq!(roles.iter().filter(|e| e.action == "user.role").count(), 2);
            let e = c.user_role(me, "nobody", Role::User).unwrap_err();
            assert_eq!(e.code(), "unknown_user");
        });
    }
);
