//! What the desktop window asks of the core: the filtered event feed and
//! users' roles, on a real SQLite file.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;
use vmdesk_core::{Error, EventQuery, EventType, Role, SessionRequest, Severity};

fn q(limit: i64) -> EventQuery {
    EventQuery {
        limit,
        ..Default::default()
    }
}

#[test]
fn the_feed_filters_by_type_and_severity_and_follows_by_id() {
    let (dir, _hosts, core) = with_pool(1);
    core.user_add("admin", "ann", false, 100).unwrap();
    let all = core.events_query("admin", &q(100)).unwrap();
    assert!(all.len() >= 4, "{all:?}");
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");

    let admin = core
        .events_query(
            "admin",
            &EventQuery {
                types: vec![EventType::Admin],
                ..q(100)
            },
        )
        .unwrap();
    assert!(!admin.is_empty());
    assert!(admin.iter().all(|e| e.event_type == EventType::Admin));

    let warnings = core
        .events_query(
            "admin",
            &EventQuery {
                severities: vec![Severity::Warning, Severity::Critical],
                ..q(100)
            },
        )
        .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");

    let newest = all[0].id;
    assert!(core
        .events_query(
            "admin",
            &EventQuery {
                after: Some(newest),
                ..q(100)
            }
        )
        .unwrap()
        .is_empty());
    core.user_add("admin", "bob", false, 0).unwrap();
    let newer = core
        .events_query(
            "admin",
            &EventQuery {
                after: Some(newest),
                ..q(100)
            },
        )
        .unwrap();
    assert_eq!(newer.len(), 1);
    assert_eq!(newer[0].action, "user.add");
    assert!(newer[0].id > newest, "only events after the one given");
    assert_eq!(core.last_event_id().unwrap(), newer[0].id);
    drop(dir);
}

#[test]
fn a_user_sees_events_about_their_sessions_written_by_others() {
    let (_dir, _hosts, core) = with_pool(1);
    core.user_add("admin", "ann", false, 1000).unwrap();
    core.user_add("admin", "bob", false, 1000).unwrap();
    let s = core
        .session_open(
            "ann",
            &SessionRequest {
                project: "p".into(),
                ..Default::default()
            },
            true,
        )
        .unwrap();
    // The admin closes ann's session: ann sees it, bob does not.
    core.session_close("admin", s.id, true).unwrap();
    let ann = core.events_query("ann", &q(100)).unwrap();
    assert!(
        ann.iter()
            .any(|e| e.actor == "admin" && e.session_id == Some(s.id)),
        "{ann:?}"
    );
    let bob = core.events_query("bob", &q(100)).unwrap();
    assert!(bob.iter().all(|e| e.session_id != Some(s.id)), "{bob:?}");
    assert!(bob.iter().all(|e| e.actor == "bob"));
}

#[test]
fn bad_limits_are_refused() {
    let (_dir, _hosts, core) = with_pool(0);
    for limit in [0, -1, 10_001] {
        let e = core.events_query("admin", &q(limit)).unwrap_err();
        assert_eq!(e.code(), "invalid_input", "{limit}");
    }
}

#[test]
fn an_admin_changes_roles_but_never_removes_the_last_admin() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "ann", false, 0).unwrap();
    let e = core.user_role("ann", "ann", Role::Admin).unwrap_err();
    assert!(matches!(e, Error::AdminOnly(_)), "{e:?}");

    let e = core.user_role("admin", "admin", Role::User).unwrap_err();
    assert_eq!(e.code(), "invalid_input");
    assert!(e.one_line().contains("last admin"), "{}", e.one_line());
    assert_eq!(core.user("admin").unwrap().role, Role::Admin);

    assert_eq!(
        core.user_role("admin", "ann", Role::Admin).unwrap().role,
        Role::Admin
    );
    // Now there are two: the first may step down.
    assert_eq!(
        core.user_role("ann", "admin", Role::User).unwrap().role,
        Role::User
    );
    assert_eq!(
        count(
            dir.path(),
            "SELECT count(*) FROM events WHERE action = 'user.role'"
        ),
        2
    );
    let e = core.user_role("ann", "nobody", Role::User).unwrap_err();
    assert_eq!(e.code(), "unknown_user");
}
