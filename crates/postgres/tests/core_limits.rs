//! A project's cost controls (issue 16) on both stores: set by admins and
//! checked, a weekly quota the store itself enforces at allocation, and the
//! maximum session length and idle shutdown with a simulated clock and
//! simulated activity (console, SSH, CPU): warned once, then closed, each an
//! event, and activity starting the idle count again.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use chrono::{DateTime, Duration, Utc};
use stores::Desks;
use vmdesk_core::limits::{Activity, ActivityProbe, LimitAction, LimitedSession};
use vmdesk_core::{Core, ProjectLimits, Session, SessionStatus};

/// Activity as the test says.
struct Seen(Activity);
impl ActivityProbe for Seen {
    fn activity(&self, _: &Core, _: &LimitedSession) -> Activity {
        self.0
    }
}

const IDLE: Seen = Seen(Activity {
    console: false,
    ssh: false,
    cpu_percent: Some(1.0),
});
const CONSOLE: Seen = Seen(Activity {
    console: true,
    ssh: false,
    cpu_percent: Some(1.0),
});
const SSH: Seen = Seen(Activity {
    console: false,
    ssh: true,
    cpu_percent: Some(0.0),
});
const BUSY_CPU: Seen = Seen(Activity {
    console: false,
    ssh: false,
    cpu_percent: Some(40.0),
});

fn set(d: &Desks, limits: ProjectLimits) {
    d.with(&d.admin(), |c, a| {
        c.project_limits(a, "p", &limits).unwrap()
    });
}

fn enforce(d: &Desks, now: DateTime<Utc>, probe: &Seen) -> Vec<LimitAction> {
    d.with(&d.admin(), |c, _| c.enforce_limits(now, probe).unwrap())
}

fn session(d: &Desks, user: &str, id: i64) -> Session {
    d.with(user, |c, me| {
        c.session_list(me, false)
            .unwrap()
            .into_iter()
            .find(|s| s.id == id)
            .unwrap()
    })
}

fn started(s: &Session) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s.started_at.as_deref().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

both!(limits_are_set_by_admins_checked_and_shown, |d: &Desks| {
    d.pool(1);
    let bob = d.user("bob", false, 100);
    let limits = ProjectLimits {
        max_session_minutes: Some(120),
        idle_minutes: Some(30),
        idle_cpu_percent: 10,
        weekly_hours: Some(6),
    };
    let p = d.with(&d.admin(), |c, a| {
        c.project_limits(a, "p", &limits).unwrap()
    });
    assert_eq!(p.limits, limits);
    // Shown to everyone, before a session.
    let seen = d.with(&bob, |c, me| c.projects(me).unwrap());
    assert_eq!(seen[0].0.limits, limits);
    let overview = d.with(&bob, |c, me| c.overview(me).unwrap());
    assert_eq!(overview.pools[0].project.limits, limits);

    let err = d.with(&bob, |c, me| {
        c.project_limits(me, "p", &limits).unwrap_err()
    });
    assert_eq!(err.code(), "admin_only");
    for bad in [
        ProjectLimits {
            max_session_minutes: Some(0),
            ..limits
        },
        ProjectLimits {
            idle_minutes: Some(50_000),
            ..limits
        },
        ProjectLimits {
            weekly_hours: Some(169),
            ..limits
        },
        ProjectLimits {
            idle_cpu_percent: 101,
            ..limits
        },
    ] {
        let err = d.with(&d.admin(), |c, a| {
            c.project_limits(a, "p", &bad).unwrap_err()
        });
        assert_eq!(err.code(), "invalid_input", "{bad:?}: {}", err.one_line());
    }
    let err = d.with(&d.admin(), |c, a| {
        c.project_limits(a, "nope", &limits).unwrap_err()
    });
    assert_eq!(err.code(), "unknown_project");
    assert_eq!(
        d.with(&bob, |c, me| c.projects(me).unwrap())[0].0.limits,
        limits
    );
    let ev = d.events_named("project.limits");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].details["now"]["weekly_hours"], 6);
});

both!(
    the_weekly_quota_refuses_a_session_once_used_up,
    |d: &Desks| {
        d.pool(2);
        let bob = d.user("bob", false, 10_000);
        let ann = d.user("ann", false, 10_000);
        set(
            d,
            ProjectLimits {
                weekly_hours: Some(1),
                ..Default::default()
            },
        );
        let s = d.with(&bob, |c, me| {
            c.session_open(me, &stores::req(), true).unwrap()
        });
        d.with(&bob, |c, me| c.session_close(me, s.id, true).unwrap());
        // His session held 61 minutes of the last 7 days.
        let back = |minutes_ago: i64, ended_ago: i64| {
            let t = |m: i64| {
                (Utc::now() - Duration::minutes(m))
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            };
            d.write_store(
                &format!(
                    "UPDATE sessions SET started_at = '{}', ended_at = '{}' WHERE id = {}",
                    t(minutes_ago),
                    t(ended_ago),
                    s.id
                ),
                &format!(
                    "UPDATE vmdesk.sessions SET started_at = '{}', ended_at = '{}' WHERE id = {}",
                    t(minutes_ago),
                    t(ended_ago),
                    s.id
                ),
            )
        };
        back(62, 1);
        let err = d.with(&bob, |c, me| {
            c.session_open(me, &stores::req(), true).unwrap_err()
        });
        assert_eq!(err.code(), "quota_used", "{}", err.one_line());
        assert_eq!(
            err.to_string(),
            "the weekly quota of project \"p\" is used up: 61 min of 1 h held in the last 7 days"
        );
        // Nothing was allocated for him; ann has her own quota.
        assert!(d
            .with(&bob, |c, me| c.session_list(me, false).unwrap())
            .iter()
            .all(|x| x.id == s.id));
        let a = d.with(&ann, |c, me| {
            c.session_open(me, &stores::req(), true).unwrap()
        });
        d.with(&ann, |c, me| c.session_close(me, a.id, true).unwrap());
        // What ran 8 days ago no longer counts.
        back(8 * 24 * 60 + 62, 8 * 24 * 60);
        let again = d.with(&bob, |c, me| {
            c.session_open(me, &stores::req(), true).unwrap()
        });
        assert_eq!(again.status, SessionStatus::Active);
    }
);

both!(
    a_session_past_its_maximum_length_is_warned_then_closed,
    |d: &Desks| {
        d.pool(1);
        let bob = d.user("bob", false, 10_000);
        set(
            d,
            ProjectLimits {
                max_session_minutes: Some(60),
                ..Default::default()
            },
        );
        let s = d.with(&bob, |c, me| {
            c.session_open(me, &stores::req(), true).unwrap()
        });
        let t0 = started(&session(d, &bob, s.id));
        // In use all along: the length cannot be put off.
        assert!(enforce(d, t0 + Duration::minutes(49), &CONSOLE).is_empty());
        let warned = enforce(d, t0 + Duration::minutes(50), &CONSOLE);
        assert_eq!(warned.len(), 1);
        assert_eq!(
            (warned[0].action, warned[0].rule.as_str()),
            ("warned", "max_session_length")
        );
        let ev = d.events_named("session.limit_warning");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].session_id, Some(s.id));
        assert_eq!(ev[0].details["user"], bob.as_str());
        assert_eq!(ev[0].details["closes_at"], warned[0].at.as_str());
        // Warned once.
        assert!(enforce(d, t0 + Duration::minutes(55), &CONSOLE).is_empty());
        assert_eq!(session(d, &bob, s.id).status, SessionStatus::Active);
        let closed = enforce(d, t0 + Duration::minutes(60), &CONSOLE);
        assert_eq!(
            (closed[0].action, closed[0].rule.as_str()),
            ("closed", "max_session_length")
        );
        assert_eq!(d.events_named("session.limit_reached").len(), 1);
        let after = session(d, &bob, s.id);
        assert_ne!(after.status, SessionStatus::Active, "{after:?}");
        // Closed sessions are no longer looked at.
        assert!(enforce(d, t0 + Duration::minutes(120), &CONSOLE).is_empty());
    }
);

both!(
    an_idle_session_is_warned_then_closed_and_activity_starts_the_count_again,
    |d: &Desks| {
        d.pool(1);
        let bob = d.user("bob", false, 10_000);
        set(
            d,
            ProjectLimits {
                idle_minutes: Some(30),
                ..Default::default()
            },
        );
        let s = d.with(&bob, |c, me| {
            c.session_open(me, &stores::req(), true).unwrap()
        });
        let t0 = started(&session(d, &bob, s.id));
        let at = |m: i64| t0 + Duration::minutes(m);
        // CPU over the threshold, SSH or the console: never idle.
        for probe in [&BUSY_CPU, &SSH, &CONSOLE] {
            assert!(enforce(d, at(120), probe).is_empty());
        }
        // Idle from minute 1: warned at 31, still idle 5 minutes later: closed.
        assert!(enforce(d, at(1), &IDLE).is_empty());
        assert!(enforce(d, at(30), &IDLE).is_empty());
        let warned = enforce(d, at(31), &IDLE);
        assert_eq!(
            (warned[0].action, warned[0].rule.as_str()),
            ("warned", "idle")
        );
        // Someone connects by SSH after the warning: the count starts again.
        assert!(enforce(d, at(33), &SSH).is_empty());
        assert!(enforce(d, at(34), &IDLE).is_empty());
        assert!(
            enforce(d, at(63), &IDLE).is_empty(),
            "the old count would have closed it"
        );
        assert_eq!(session(d, &bob, s.id).status, SessionStatus::Active);
        let warned = enforce(d, at(64), &IDLE);
        assert_eq!(warned[0].action, "warned");
        assert_eq!(d.events_named("session.limit_warning").len(), 2);
        let closed = enforce(d, at(69), &IDLE);
        assert_eq!(
            (closed[0].action, closed[0].rule.as_str()),
            ("closed", "idle")
        );
        let ev = d.events_named("session.limit_reached");
        assert_eq!(ev[0].details["rule"], "idle");
        assert_ne!(session(d, &bob, s.id).status, SessionStatus::Active);
    }
);

both!(
    a_pool_vm_running_with_no_session_is_stopped_after_a_grace,
    |d: &Desks| {
        d.pool(2);
        let bob = d.user("bob", false, 10_000);
        let admin = d.admin();
        // vm0 in bob's session; vm1 started behind vmdesk's back.
        let s = d.with(&bob, |c, me| {
            c.session_open(me, &stores::req(), true).unwrap()
        });
        let vms = d.with(&admin, |c, a| c.vm_list(a, true).unwrap());
        let orphan = vms.iter().find(|v| v.id != s.vm_id).unwrap().clone();
        let machine = orphan.provider_id.clone().unwrap();
        d.host()
            .machines
            .lock()
            .unwrap()
            .insert(machine.clone(), vmdesk_core::provider::PowerState::Running);
        d.with(&admin, |c, _| c.sync_once("test").unwrap());
        let t0 = Utc::now();
        let stop = |t: DateTime<Utc>| d.with(&admin, |c, _| c.stop_orphans(t).unwrap());
        assert!(stop(t0).is_empty(), "first seen");
        assert!(
            stop(t0 + Duration::minutes(9)).is_empty(),
            "within the grace"
        );
        assert_eq!(stop(t0 + Duration::minutes(10)), vec![orphan.name.clone()]);
        assert_eq!(
            d.host().state(&machine),
            Some(vmdesk_core::provider::PowerState::Stopped)
        );
        let ev = d.events_named("vm.orphan_stop");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].details["vm"], orphan.name.as_str());
        assert!(ev[0].details["billed_to"].is_null());
        // bob's VM runs on in his session, and nobody was billed for the orphan.
        let vms = d.with(&admin, |c, a| c.vm_list(a, true).unwrap());
        let held = vms.iter().find(|v| v.id == s.vm_id).unwrap();
        assert_eq!(held.status, vmdesk_core::VmStatus::Running);
        assert_eq!(session(d, &bob, s.id).status, SessionStatus::Active);
        let charges = d.with(&admin, |c, _| {
            c.bill_runtime(Utc::now() + Duration::hours(1)).unwrap()
        });
        assert!(charges.iter().all(|c| c.vm != orphan.name), "{charges:?}");
    }
);

both!(
    a_pool_fill_is_all_or_nothing_when_the_host_fails_in_the_middle,
    |d: &Desks| {
        use vmdesk_core::templates::Fill;
        d.pool(0);
        let admin = d.admin();
        let fill = |count: u32| Fill {
            project: "p".into(),
            template: "blank".into(),
            count,
            prefix: Some("seat".into()),
            ..Default::default()
        };
        let seats = |d: &Desks| -> Vec<String> {
            let mut n: Vec<String> = d
                .with(&d.admin(), |c, a| c.vm_list(a, true).unwrap())
                .into_iter()
                .filter(|v| v.pool.as_deref() == Some("p"))
                .map(|v| v.name)
                .collect();
            n.sort();
            n
        };
        // The host refuses the third machine: nothing is kept, row or machine.
        *d.host().refuse_define.lock().unwrap() = Some("seat-3-".into());
        let seen = std::sync::Mutex::new(Vec::new());
        let err = d.with(&admin, |c, a| {
            c.pool_fill(a, &fill(5), &|done, of| {
                seen.lock().unwrap().push((done, of))
            })
            .unwrap_err()
        });
        assert!(
            err.to_string()
                .starts_with("the pool fill stopped at VM 3 of 5, and nothing was kept"),
            "{err}"
        );
        assert_eq!(seen.into_inner().unwrap(), vec![(1, 5), (2, 5)]);
        assert!(seats(d).is_empty(), "{:?}", seats(d));
        assert!(d
            .host()
            .machines
            .lock()
            .unwrap()
            .keys()
            .all(|m| !m.contains("seat")));
        assert!(d
            .host()
            .disks
            .lock()
            .unwrap()
            .iter()
            .all(|m| !m.contains("seat")));
        assert_eq!(d.events_named("vm.add_failed").len(), 3);

        // The host takes them: 5 made; a second fill takes the next free names.
        *d.host().refuse_define.lock().unwrap() = None;
        let made = d.with(&admin, |c, a| c.pool_fill(a, &fill(5), &|_, _| {}).unwrap());
        assert_eq!(made.len(), 5);
        assert!(made
            .iter()
            .all(|v| v.status == vmdesk_core::VmStatus::Stopped));
        d.with(&admin, |c, a| c.pool_fill(a, &fill(2), &|_, _| {}).unwrap());
        assert_eq!(
            seats(d),
            ["seat-1", "seat-2", "seat-3", "seat-4", "seat-5", "seat-6", "seat-7"]
        );

        // Refusals that change nothing.
        let bob = d.user("bob", false, 0);
        let err = d.with(&bob, |c, me| {
            c.pool_fill(me, &fill(1), &|_, _| {}).unwrap_err()
        });
        assert_eq!(err.code(), "admin_only");
        for bad in [
            fill(0),
            Fill {
                template: "nope".into(),
                ..fill(1)
            },
            Fill {
                project: "nope".into(),
                ..fill(1)
            },
        ] {
            let err = d.with(&admin, |c, a| c.pool_fill(a, &bad, &|_, _| {}).unwrap_err());
            assert!(
                matches!(err.code(), "invalid_input" | "unknown_project"),
                "{err}"
            );
        }
        assert_eq!(seats(d).len(), 7);
    }
);

both!(
    an_own_vm_is_stopped_when_idle_only_if_its_owner_chose_it,
    |d: &Desks| {
        d.pool(1);
        let bob = d.user("bob", false, 10_000);
        let carol = d.user("carol", false, 10_000);
        let mine = d.create_vm(&bob, "mine");
        d.create_vm(&bob, "kept");
        assert_eq!(mine.status, vmdesk_core::VmStatus::Running);
        let t0 = Utc::now();
        let at = |m: i64| t0 + Duration::minutes(m);
        // Nobody chose it: never stopped, however long idle.
        assert!(enforce(d, at(0), &IDLE).is_empty());
        assert!(enforce(d, at(500), &IDLE).is_empty());

        // Only the owner (or an admin) chooses it, only for an own VM, and
        // within bounds.
        let err = d.with(&carol, |c, me| {
            c.vm_idle_stop(me, "mine", Some(30)).unwrap_err()
        });
        assert!(
            ["forbidden", "unknown_vm"].contains(&err.code()),
            "{}",
            err.one_line()
        );
        let err = d.with(&bob, |c, me| {
            c.vm_idle_stop(me, "vm0", Some(30)).unwrap_err()
        });
        assert_eq!(err.code(), "invalid_input");
        assert!(err.to_string().contains("pool VM"), "{err}");
        for bad in [0, -1, 43_201] {
            let err = d.with(&bob, |c, me| {
                c.vm_idle_stop(me, "mine", Some(bad)).unwrap_err()
            });
            assert_eq!(err.code(), "invalid_input", "{bad}");
        }
        let v = d.with(&bob, |c, me| c.vm_idle_stop(me, "mine", Some(30)).unwrap());
        assert_eq!(v.metadata["idle_stop_minutes"], "30");

        // Idle from minute 0; busy in between starts the count again.
        let t1 = at(600);
        let at = |m: i64| t1 + Duration::minutes(m);
        assert!(enforce(d, at(0), &IDLE).is_empty());
        assert!(enforce(d, at(20), &CONSOLE).is_empty());
        assert!(enforce(d, at(21), &IDLE).is_empty());
        assert!(
            enforce(d, at(50), &IDLE).is_empty(),
            "the old count would warn"
        );
        let warned = enforce(d, at(51), &IDLE);
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert_eq!(
            (warned[0].action, warned[0].vm.as_str()),
            ("warned", "mine")
        );
        // The owner sees the warning (the tray tells them).
        let seen = d.with(&bob, |c, me| c.events(me, 50).unwrap());
        let w = seen
            .iter()
            .find(|e| e.action == "vm.idle_warning")
            .expect("bob sees the warning");
        assert_eq!(w.details["user"], bob.as_str());
        assert_eq!(w.details["vm"], "mine");
        let stops_at = w.details["stops_at"].as_str().unwrap().to_owned();
        assert!(enforce(d, at(55), &IDLE).is_empty());
        let stopped = enforce(d, at(56), &IDLE);
        assert_eq!(
            (stopped[0].action, stopped[0].vm.as_str()),
            ("stopped", "mine")
        );
        assert!(stops_at.starts_with(&at(56).format("%Y-%m-%dT%H:%M").to_string()));
        let seen = d.with(&bob, |c, me| c.events(me, 50).unwrap());
        assert!(seen.iter().any(|e| e.action == "vm.idle_stop"));
        let v = d.with(&bob, |c, me| c.vm_show(me, "mine").unwrap());
        assert_ne!(v.status, vmdesk_core::VmStatus::Running);
        let kept = d.with(&bob, |c, me| c.vm_show(me, "kept").unwrap());
        assert_eq!(kept.status, vmdesk_core::VmStatus::Running);
        // Carol does not see bob's notices.
        let hers = d.with(&carol, |c, me| c.events(me, 50).unwrap());
        assert!(!hers.iter().any(|e| e.action.starts_with("vm.idle")));

        // Turned off: watched no more.
        d.with(&bob, |c, me| {
            c.vm_action(me, "mine", vmdesk_core::VmAction::Start).ok()
        });
        d.with(&bob, |c, me| c.vm_idle_stop(me, "mine", None).unwrap());
        assert!(enforce(d, at(100), &IDLE).is_empty());
        assert!(enforce(d, at(200), &IDLE).is_empty());
    }
);
