//! A stop in progress is the store's state: STOPPING with its deadline,
//! committed before the guest shuts down, and a second action is refused
//! (moved from crates/core/tests/stopping.rs), on both stores: the embedded
//! SQLite file and a team store on PostgreSQL.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use std::time::Duration;

use stores::{Desks, Kind};
use vmdesk_core::provider::PowerState;
use vmdesk_core::{SessionStatus, Vm, VmAction, VmStatus};

/// Desks whose guests ignore ACPI and are forced off after 1.5 s, a project
/// `p` on host `h`, and a user `ann` with 500 credits.
fn slow_stop(kind: Kind) -> Desks {
    let d = Desks::with_shutdown_timeout(kind, Duration::from_millis(1500));
    d.pool(0);
    *d.host().ignore_shutdown.lock().unwrap() = true;
    d
}

fn ann(d: &Desks) -> String {
    d.user("ann", false, 500)
}

fn create(d: &Desks, user: &str, name: &str) {
    d.create_vm(user, name);
}

/// What another process of `user`'s desk sees of `name` once `until` holds
/// (or after 5 s).
fn seen_until(d: &Desks, user: &str, name: &str, until: impl Fn(&Vm) -> bool) -> Vm {
    d.with_another_process(user, |c, me| {
        let end = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let vm = c.vm_show(me, name).unwrap();
            if until(&vm) || std::time::Instant::now() > end {
                return vm;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

fn deadline(vm: &Vm) -> Option<&str> {
    vm.metadata.get("force_off_at").and_then(|v| v.as_str())
}

both!(
    a_stopping_vm_and_its_deadline_are_visible_to_another_connection,
    new = slow_stop,
    |d: &Desks| {
        let ann = ann(d);
        create(d, &ann, "w1");
        let before = chrono::Utc::now();
        std::thread::scope(|s| {
            let stopper = s.spawn(|| d.with(&ann, |c, me| c.vm_action(me, "w1", VmAction::Stop)));
            // Another process of the desk sees it, through the API.
            let vm = seen_until(d, &ann, "w1", |v| v.status == VmStatus::Stopping);
            assert_eq!(vm.status, VmStatus::Stopping);
            let deadline =
                chrono::DateTime::parse_from_rfc3339(deadline(&vm).expect("a force_off_at"))
                    .unwrap()
                    .with_timezone(&chrono::Utc);
            let ahead = deadline - before;
            assert!(
                ahead >= chrono::Duration::milliseconds(1400)
                    && ahead <= chrono::Duration::seconds(3),
                "deadline {ahead} after the click"
            );
            let vm = stopper.join().unwrap().unwrap();
            assert_eq!(vm.status, VmStatus::Stopped);
            assert!(
                vm.metadata.get("force_off_at").is_none(),
                "the deadline goes with the stop: {}",
                vm.metadata
            );
        });
        let vm = d.with(&ann, |c, me| c.vm_show(me, "w1").unwrap());
        assert_eq!((vm.status, deadline(&vm)), (VmStatus::Stopped, None));
    }
);

both!(
    a_second_stop_restart_or_destroy_while_stopping_is_refused_without_a_second_event,
    new = slow_stop,
    |d: &Desks| {
        let ann = ann(d);
        create(d, &ann, "w1");
        std::thread::scope(|s| {
            let stopper = s.spawn(|| d.with(&ann, |c, me| c.vm_action(me, "w1", VmAction::Stop)));
            let vm = seen_until(d, &ann, "w1", |v| v.status == VmStatus::Stopping);
            assert_eq!(vm.status, VmStatus::Stopping);
            d.with_another_process(&ann, |other, me| {
                for action in [VmAction::Stop, VmAction::Restart, VmAction::Destroy] {
                    let err = other.vm_action(me, "w1", action).unwrap_err();
                    assert_eq!(err.code(), "invalid_input");
                    assert!(
                        err.to_string()
                            .contains("already stopping and is forced off at ")
                            && err
                                .to_string()
                                .contains(" UTC if the guest does not shut down"),
                        "{action:?}: {err}"
                    );
                }
            });
            assert_eq!(stopper.join().unwrap().unwrap().status, VmStatus::Stopped);
        });
        let actions: Vec<String> = d
            .actions(1000)
            .into_iter()
            .filter(|a| {
                a.starts_with("vm.stop")
                    || a.starts_with("vm.restart")
                    || a.starts_with("vm.destroy")
            })
            .collect();
        assert_eq!(actions, ["vm.stop"], "one vm.stop event, no failure events");
        let machine = d.with(&ann, |c, me| {
            c.vm_show(me, "w1").unwrap().provider_id.unwrap()
        });
        assert_eq!(d.host().state(&machine), Some(PowerState::Stopped));
    }
);

both!(
    a_failed_stop_puts_the_vm_back_as_it_was,
    new = slow_stop,
    |d: &Desks| {
        let ann = ann(d);
        create(d, &ann, "w1");
        *d.host().unreachable.lock().unwrap() = true;
        d.with(&ann, |c, me| {
            assert!(c.vm_action(me, "w1", VmAction::Stop).is_err());
            let vm = c.vm_show(me, "w1").unwrap();
            assert_eq!((vm.status, deadline(&vm)), (VmStatus::Running, None));
        });
    }
);

both!(
    a_closing_session_shows_its_vm_stopping_with_a_deadline,
    new = slow_stop,
    |d: &Desks| {
        let a = d.admin();
        d.with(&a, |c, me| {
            c.vm_add(me, &common::vm("vm0", "standard")).unwrap()
        });
        let s = d.with(&a, |c, me| {
            c.session_open(me, &stores::req(), true).unwrap()
        });
        std::thread::scope(|sc| {
            let closer = sc.spawn(|| d.with(&a, |c, me| c.session_close(me, s.id, true)));
            let vm = seen_until(d, &a, "vm0", |v| deadline(v).is_some());
            assert_eq!(vm.status, VmStatus::Stopping);
            assert!(
                deadline(&vm).is_some(),
                "no deadline while the session closes"
            );
            let live = d.with_another_process(&a, |c, me| c.session_list(me, false).unwrap());
            assert_eq!(live[0].status, SessionStatus::Terminating);
            closer.join().unwrap().unwrap();
        });
        let vm = d.with(&a, |c, me| c.vm_show(me, "vm0").unwrap());
        assert_eq!((vm.status, deadline(&vm)), (VmStatus::Stopped, None));
    }
);
