//! The console port pool (moved from crates/core/tests/consoles.rs), on
//! both stores: the embedded SQLite file and a team store on PostgreSQL,
//! where each desk has a pool of its own. One console test stays in
//! crates/core/tests/consoles.rs (see there why).
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use std::collections::BTreeSet;
use std::time::Duration;

use stores::Desks;
use vmdesk_core::provider::PowerState;
use vmdesk_core::{SessionStatus, VmStatus};

const TTL: Duration = Duration::from_secs(60);

use stores::req;

/// A pool with one VM `vm0`, RUNNING in a session of the admin's.
fn running(d: &Desks) -> vmdesk_core::Session {
    d.pool(1);
    d.with(&d.admin(), |c, me| {
        c.session_open(me, &req(), true).unwrap()
    })
}

/// The admin's console on `vm0`, from a two-port pool.
fn reserve(d: &Desks) -> vmdesk_core::ConsoleGrant {
    d.with(&d.admin(), |c, me| {
        c.console_reserve(me, "vm0", (6100, 6101), &[], TTL)
            .unwrap()
    })
}

fn allocated(d: &Desks, user: &str) -> u32 {
    d.with(user, |c, _| {
        c.console_stats((6100, 6101)).unwrap().allocated
    })
}

/// `vm0` stops behind vmdesk's back, and a status sync sees it.
fn stops(d: &Desks) {
    let machine = d.with(&d.admin(), |c, me| {
        c.vm_show(me, "vm0").unwrap().provider_id.unwrap()
    });
    d.host()
        .machines
        .lock()
        .unwrap()
        .insert(machine, PowerState::Stopped);
    d.with(&d.admin(), |c, _| c.sync_once("poll").unwrap());
    d.with(&d.admin(), |c, me| {
        assert_eq!(c.vm_show(me, "vm0").unwrap().status, VmStatus::Stopped)
    });
}

both!(
    concurrent_reservations_take_distinct_ports_to_the_last,
    |d: &Desks| {
        running(d);
        let a = d.admin();
        // Each its own process of the desk (900 on the embedded store; 50 on
        // the team store, where each is a connection of its own).
        let n: u16 = if d.is_team() { 50 } else { 900 };
        let range = (6100, 6100 + n - 1);
        let ports: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    let a = &a;
                    s.spawn(move || {
                        d.with_another_process(a, |c, me| {
                            c.console_reserve(me, "vm0", range, &[], TTL).unwrap().port
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), usize::from(n));
        assert_eq!(
            (distinct.first(), distinct.last()),
            (Some(&range.0), Some(&range.1))
        );
        d.with(&a, |c, me| {
            let err = c.console_reserve(me, "vm0", range, &[], TTL).unwrap_err();
            assert_eq!(err.code(), "port_pool_exhausted");
            assert_eq!(
                err.to_string(),
                format!(
                    "the console port pool {}-{} is exhausted: all {n} ports are allocated",
                    range.0, range.1
                )
            );
            let stats = c.console_stats(range).unwrap();
            assert_eq!(
                (stats.allocated, stats.free, stats.health.as_str()),
                (u32::from(n), 0, "warning")
            );
        });
    }
);

both!(a_token_opens_its_console_once, |d: &Desks| {
    running(d);
    let g = reserve(d);
    d.with(&d.admin(), |c, _| {
        assert_eq!(
            c.console_redeem(g.port, "wrong").unwrap_err().code(),
            "console_refused"
        );
        assert_eq!(c.console_redeem(g.port, &g.token).unwrap().name, "vm0");
        let again = c.console_redeem(g.port, &g.token).unwrap_err();
        assert_eq!(
            again.to_string(),
            "the console refused the connection: the token was already used"
        );
    });
});

both!(an_expired_token_is_refused, |d: &Desks| {
    running(d);
    d.with(&d.admin(), |c, me| {
        let g = c
            .console_reserve(me, "vm0", (6100, 6101), &[], Duration::from_millis(1))
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let err = c.console_redeem(g.port, &g.token).unwrap_err();
        assert!(err.to_string().ends_with("the token has expired"), "{err}");
    });
});

both!(skipped_ports_are_not_reserved, |d: &Desks| {
    running(d);
    d.with(&d.admin(), |c, me| {
        let g = c
            .console_reserve(me, "vm0", (6100, 6102), &[6100, 6101], TTL)
            .unwrap();
        assert_eq!(g.port, 6102);
    });
});

both!(
    a_stopped_vm_has_no_console_and_nothing_is_reserved,
    |d: &Desks| {
        d.pool(1);
        let a = d.admin();
        d.with(&a, |c, me| {
            let err = c
                .console_reserve(me, "vm0", (6100, 6101), &[], TTL)
                .unwrap_err();
            assert_eq!(err.code(), "console_unavailable", "{err}");
        });
        assert_eq!(allocated(d, &a), 0);
    }
);

both!(
    a_user_without_a_session_may_not_open_a_pool_vms_console,
    |d: &Desks| {
        running(d);
        let bob = d.user("bob", false, 0);
        d.with(&bob, |c, me| {
            let err = c
                .console_reserve(me, "vm0", (6100, 6101), &[], TTL)
                .unwrap_err();
            assert_eq!(err.code(), "forbidden", "{err}");
        });
        assert_eq!(allocated(d, &bob), 0);
        assert_eq!(allocated(d, &d.admin()), 0);
    }
);

both!(
    a_token_redeemed_after_the_vm_stopped_is_refused_and_frees_the_port,
    |d: &Desks| {
        running(d);
        let g = reserve(d);
        stops(d);
        let a = d.admin();
        d.with(&a, |c, _| {
            let err = c.console_redeem(g.port, &g.token).unwrap_err();
            assert_eq!(err.code(), "console_unavailable", "{err}");
            assert!(err.to_string().contains("not RUNNING"), "{err}");
        });
        assert_eq!(allocated(d, &a), 0);
    }
);

both!(
    a_token_redeemed_after_the_session_ended_is_refused_and_frees_the_port,
    |d: &Desks| {
        d.pool(1);
        let bob = d.user("bob", false, 1000);
        let s = d.with(&bob, |c, me| c.session_open(me, &req(), true).unwrap());
        let g = d.with(&bob, |c, me| {
            c.console_reserve(me, "vm0", (6100, 6101), &[], TTL)
                .unwrap()
        });
        // The session ends; the VM runs on until a worker shuts it down.
        let closed = d.with(&bob, |c, me| c.session_close(me, s.id, false).unwrap());
        assert_eq!(closed.status, SessionStatus::Terminating);
        d.with(&bob, |c, _| {
            let err = c.console_redeem(g.port, &g.token).unwrap_err();
            assert_eq!(err.code(), "forbidden", "{err}");
        });
        assert_eq!(allocated(d, &bob), 0);
    }
);

both!(
    a_wrong_token_keeps_the_console_for_the_right_one,
    |d: &Desks| {
        running(d);
        let g = reserve(d);
        stops(d);
        let a = d.admin();
        d.with(&a, |c, _| {
            let err = c.console_redeem(g.port, "wrong").unwrap_err();
            assert_eq!(err.code(), "console_refused", "{err}");
        });
        assert_eq!(allocated(d, &a), 1);
    }
);

both!(
    a_huge_token_lifetime_saturates_and_the_token_opens_its_console,
    |d: &Desks| {
        running(d);
        d.with(&d.admin(), |c, me| {
            let g = c
                .console_reserve(me, "vm0", (6100, 6101), &[], Duration::MAX)
                .unwrap();
            assert_eq!(g.expires_at, "9999-12-31T23:59:59.999Z");
            assert_eq!(c.console_redeem(g.port, &g.token).unwrap().name, "vm0");
        });
    }
);

both!(ports_of_a_dead_process_are_freed_by_cleanup, |d: &Desks| {
    running(d);
    let a = d.admin();
    // Reserved by another process of the desk, gone when this returns.
    let g = d.with_another_process(&a, |c, me| {
        c.console_reserve(me, "vm0", (6100, 6101), &[], TTL)
            .unwrap()
    });
    assert_eq!(allocated(d, &a), 1);
    d.with(&a, |c, _| {
        assert_eq!(c.console_cleanup().unwrap(), [g.port])
    });
    assert_eq!(allocated(d, &a), 0);
    let e = d.events(1).remove(0);
    assert_eq!(e.action, "recovery.console");
});
