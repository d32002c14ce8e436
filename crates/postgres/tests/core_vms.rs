//! A user's own VMs: creation for credits, actions (moved from
//! crates/core/tests/vms.rs), on both stores: the embedded SQLite file and a
//! team store on PostgreSQL. Three VM tests stay in crates/core/tests/vms.rs
//! (see there why).
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use std::sync::Mutex;

use stores::Desks;
use vmdesk_core::provider::{PowerState, Provider};
use vmdesk_core::{Progress, VmAction, VmCreate, VmStatus};

fn spec(name: &str) -> VmCreate {
    stores::own_vm(name)
}

use stores::req;

/// A host and project (no pool VM) and a user `ann` with `credits`.
fn with_user(d: &Desks, credits: i64) -> String {
    d.pool(0);
    d.user("ann", false, credits)
}

fn balance(d: &Desks, user: &str) -> i64 {
    d.with(user, |c, me| c.credits_show(me, None).unwrap().balance)
}

fn own(d: &Desks, user: &str) -> Vec<String> {
    d.with(user, |c, me| {
        c.vm_list_own(me)
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect()
    })
}

both!(
    create_charges_the_quote_once_and_runs_the_vm,
    |d: &Desks| {
        let ann = with_user(d, 100);
        let vm = d.with(&ann, |c, me| {
            c.vm_create(me, &spec("w1"), true, None).unwrap()
        });
        assert_eq!(vm.status, VmStatus::Running);
        assert_eq!(vm.owner.as_deref(), Some(ann.as_str()));
        assert!(d
            .host()
            .disks
            .lock()
            .unwrap()
            .contains(vm.provider_id.as_deref().unwrap()));
        assert_eq!(
            d.host().state(vm.provider_id.as_deref().unwrap()),
            Some(PowerState::Running)
        );
        let credits = d.with(&ann, |c, me| c.credits_show(me, None).unwrap());
        assert_eq!(credits.balance, 100 - 34);
        assert_eq!(
            credits.entries.iter().filter(|e| e.amount == -34).count(),
            1
        );
        assert_eq!(vm.metadata["cost"], 34);
        assert!(
            vm.uptime_seconds.is_some_and(|s| (0..5).contains(&s)),
            "{:?}",
            vm.uptime_seconds
        );
    }
);

both!(
    create_without_enough_credits_states_cost_and_balance_and_creates_nothing,
    |d: &Desks| {
        let ann = with_user(d, 20);
        let err = d.with(&ann, |c, me| {
            c.vm_create(me, &spec("w1"), true, None).unwrap_err()
        });
        assert_eq!(
            err.to_string(),
            format!("not enough credits: the cost is 34 but the balance of {ann:?} is 20")
        );
        assert!(own(d, &ann).is_empty());
        assert_eq!(balance(d, &ann), 20);
    }
);

both!(create_with_no_start_leaves_the_vm_stopped, |d: &Desks| {
    let ann = with_user(d, 100);
    let vm = d.with(&ann, |c, me| {
        c.vm_create(
            me,
            &VmCreate {
                start: false,
                ..spec("w1")
            },
            true,
            None,
        )
        .unwrap()
    });
    assert_eq!(vm.status, VmStatus::Stopped);
    assert_eq!(
        d.host().state(vm.provider_id.as_deref().unwrap()),
        Some(PowerState::Stopped)
    );
});

both!(
    a_refused_provisioning_fails_the_vm_without_refund_and_says_why,
    |d: &Desks| {
        let ann = with_user(d, 100);
        *d.host().refuse_start.lock().unwrap() = true;
        let err = d.with(&ann, |c, me| {
            c.vm_create(me, &spec("w1"), true, None).unwrap_err()
        });
        assert!(
            err.one_line().contains("no room for this VM"),
            "{}",
            err.one_line()
        );
        d.with(&ann, |c, me| {
            assert_eq!(c.vm_show(me, "w1").unwrap().status, VmStatus::FailedToStart)
        });
        assert_eq!(balance(d, &ann), 66);
        let e = d.events(1).remove(0);
        assert_eq!(e.action, "vm.create_failed");
        assert_eq!(e.details["refunded"], false);
        assert!(e.details["reason"].as_str().unwrap().contains("no room"));
    }
);

both!(progress_is_reported_step_by_step_to_the_end, |d: &Desks| {
    let ann = with_user(d, 100);
    let seen: Mutex<Vec<Progress>> = Mutex::new(Vec::new());
    let report = |p: &Progress| seen.lock().unwrap().push(p.clone());
    d.with(&ann, |c, me| {
        c.vm_create(me, &spec("w1"), true, Some(&report)).unwrap()
    });
    let seen = seen.into_inner().unwrap();
    let steps: Vec<u32> = seen.iter().map(|p| p.step).collect();
    assert_eq!(steps, vec![0, 1, 2, 3, 4]);
    assert!(seen.iter().all(|p| p.steps == 4 && p.vm == "w1"));
});

both!(
    a_background_creation_is_provisioned_by_a_worker,
    |d: &Desks| {
        let ann = with_user(d, 100);
        let vm = d.with(&ann, |c, me| {
            c.vm_create(me, &spec("w1"), false, None).unwrap()
        });
        assert_eq!(vm.status, VmStatus::Creating);
        assert_eq!(d.with(&d.admin(), |c, _| c.drive_pending().unwrap()), 1);
        d.with(&ann, |c, me| {
            assert_eq!(c.vm_show(me, "w1").unwrap().status, VmStatus::Running)
        });
    }
);

both!(an_unknown_os_is_refused_and_nothing_changes, |d: &Desks| {
    let ann = with_user(d, 100);
    let err = d.with(&ann, |c, me| {
        c.vm_create(
            me,
            &VmCreate {
                os_type: "windows95".into(),
                ..spec("w1")
            },
            true,
            None,
        )
        .unwrap_err()
    });
    assert!(
        err.to_string().starts_with("unknown OS \"windows95\""),
        "{err}"
    );
    assert!(own(d, &ann).is_empty());
    assert_eq!(balance(d, &ann), 100);
});

both!(
    stop_start_restart_and_destroy_follow_the_host,
    |d: &Desks| {
        let ann = with_user(d, 100);
        d.with(&ann, |c, me| {
            let vm = c.vm_create(me, &spec("w1"), true, None).unwrap();
            let machine = vm.provider_id.clone().unwrap();
            assert_eq!(
                c.vm_action(me, "w1", VmAction::Stop).unwrap().status,
                VmStatus::Stopped
            );
            assert_eq!(d.host().state(&machine), Some(PowerState::Stopped));
            assert_eq!(
                c.vm_action(me, "w1", VmAction::Start).unwrap().status,
                VmStatus::Running
            );
            assert_eq!(
                c.vm_action(me, "w1", VmAction::Restart).unwrap().status,
                VmStatus::Running
            );
            assert_eq!(
                c.vm_action(me, "w1", VmAction::Destroy).unwrap().status,
                VmStatus::Destroyed
            );
            assert_eq!(
                d.host().state(&machine),
                None,
                "the machine is still defined"
            );
            let actions: Vec<String> = c
                .events(me, 4)
                .unwrap()
                .into_iter()
                .map(|e| e.action)
                .collect();
            assert_eq!(actions, ["vm.destroy", "vm.restart", "vm.start", "vm.stop"]);
        });
    }
);

both!(another_user_cannot_act_on_a_vm, |d: &Desks| {
    let ann = with_user(d, 100);
    let bob = d.user("bob", false, 0);
    let vm = d.with(&ann, |c, me| {
        c.vm_create(me, &spec("w1"), true, None).unwrap()
    });
    d.with(&bob, |c, me| {
        assert_eq!(
            c.vm_action(me, "w1", VmAction::Stop).unwrap_err().code(),
            "unknown_vm"
        )
    });
    assert_eq!(
        d.host().state(vm.provider_id.as_deref().unwrap()),
        Some(PowerState::Running)
    );
    // An admin may.
    d.with(&d.admin(), |c, me| {
        assert_eq!(
            c.vm_action(me, "w1", VmAction::Stop).unwrap().status,
            VmStatus::Stopped
        )
    });
});

both!(a_pool_vm_in_a_live_session_refuses_destroy, |d: &Desks| {
    d.pool(1);
    d.with(&d.admin(), |c, me| {
        let s = c.session_open(me, &req(), true).unwrap();
        let err = c.vm_action(me, "vm0", VmAction::Destroy).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "is held by session {}; close the session first",
                s.id
            )),
            "{err}"
        );
        let machine = c.vm_show(me, "vm0").unwrap().provider_id.unwrap();
        assert_eq!(d.host().state(&machine), Some(PowerState::Running));
    });
});

both!(own_vms_are_the_actors_only, |d: &Desks| {
    let ann = with_user(d, 100);
    let bob = d.user("bob", false, 100);
    d.with(&d.admin(), |c, me| {
        c.vm_add(me, &common::vm("pooled", "standard")).unwrap()
    });
    d.with(&ann, |c, me| {
        c.vm_create(me, &spec("a1"), true, None).unwrap()
    });
    d.with(&bob, |c, me| {
        c.vm_create(me, &spec("b1"), true, None).unwrap()
    });
    assert_eq!(own(d, &ann), ["a1"]);
});

both!(
    an_allocation_during_a_destroy_does_not_get_the_vm_being_destroyed,
    |d: &Desks| {
        d.pool(1);
        let a = d.admin();
        let machine = d.with(&a, |c, me| {
            c.vm_show(me, "vm0").unwrap().provider_id.unwrap()
        });
        d.host().start(&machine).unwrap();
        *d.host().force_off_delay.lock().unwrap() = std::time::Duration::from_millis(600);
        std::thread::scope(|s| {
            let destroyer =
                s.spawn(|| d.with(&a, |c, me| c.vm_action(me, "vm0", VmAction::Destroy)));
            std::thread::sleep(std::time::Duration::from_millis(200));
            let opened = d.with_another_process(&a, |c, me| c.session_open(me, &req(), false));
            assert!(
                opened.is_err(),
                "allocated a VM being destroyed: {opened:?}"
            );
            destroyer.join().unwrap().unwrap();
        });
        d.with(&a, |c, me| {
            assert!(
                c.session_list(me, true).unwrap().is_empty(),
                "no session was opened on it"
            )
        });
    }
);

both!(concurrent_creations_never_overdraw, |d: &Desks| {
    let ann = with_user(d, 340);
    // Each its own process (50 on the embedded store; 30 on the team store,
    // where each is a desk with a connection of its own): the balance
    // covers 10.
    let n = if d.is_team() { 30 } else { 50 };
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let ann = &ann;
                s.spawn(move || {
                    d.with_another(ann, |c, me| {
                        c.vm_create(
                            me,
                            &VmCreate {
                                start: false,
                                ..spec(&format!("c{i}"))
                            },
                            true,
                            None,
                        )
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10);
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(e.code(), "insufficient_credits", "{}", e.one_line());
    }
    assert_eq!(own(d, &ann).len(), 10);
    let credits = d.with(&ann, |c, me| c.credits_show(me, None).unwrap());
    assert_eq!(credits.balance, 0);
    assert_eq!(credits.entries.iter().map(|e| e.amount).sum::<i64>(), 0);
});

both!(
    a_refused_action_leaves_a_warning_event_with_the_reason,
    |d: &Desks| {
        d.pool(1);
        let a = d.admin();
        let err = d.with(&a, |c, me| {
            c.session_open(me, &req(), true).unwrap();
            c.vm_action(me, "vm0", VmAction::Stop).unwrap_err()
        });
        let events = d.events_named("vm.stop.failed");
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(
            (e.severity.as_str(), e.actor.as_str()),
            ("warning", a.as_str())
        );
        assert_eq!(e.details["code"], err.code());
        assert!(e.details["reason"]
            .as_str()
            .unwrap()
            .contains("held by session"));
    }
);

both!(a_forbidden_destroy_leaves_a_warning_event, |d: &Desks| {
    let ann = with_user(d, 100);
    d.with(&ann, |c, me| {
        c.vm_create(me, &spec("w1"), true, None).unwrap()
    });
    let eve = d.user("eve", false, 0);
    // ann's VM is not eve's to see: refused as unknown, and recorded.
    d.with(&eve, |c, me| {
        assert!(c.vm_action(me, "w1", VmAction::Destroy).is_err())
    });
    let events = d.events_named("vm.destroy.failed");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].actor, eve);
    d.with(&ann, |c, me| {
        assert_eq!(c.vm_show(me, "w1").unwrap().status, VmStatus::Running)
    });
});

both!(
    a_creation_refused_for_credits_leaves_a_warning_event,
    |d: &Desks| {
        let ann = with_user(d, 5);
        let err = d.with(&ann, |c, me| {
            c.vm_create(me, &spec("w1"), true, None).unwrap_err()
        });
        assert_eq!(err.code(), "insufficient_credits");
        let events = d.events_named("vm.create.refused");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].details["code"], "insufficient_credits");
        assert!(own(d, &ann).is_empty());
        let all = d.with(&d.admin(), |c, me| c.vm_list(me, true).unwrap());
        assert!(all.is_empty(), "{all:?}");
    }
);
