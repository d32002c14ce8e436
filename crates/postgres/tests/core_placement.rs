//! Placement by capacity, before anything is charged, on both stores: a VM
//! without a host goes to the host with the most free memory that fits; the
//! memory every user's VMs hold on a host counts (the team store gives the
//! sums to any user, not the VMs); nothing that fits no host is charged.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use vmdesk_core::provider::Capacity;
use vmdesk_core::{Error, VmCreate};

fn spec(name: &str, ram_mb: i64, host: Option<&str>) -> VmCreate {
    VmCreate {
        ram_mb,
        disk_gb: 1,
        cpu_cores: 1,
        host: host.map(str::to_owned),
        ..stores::own_vm(name)
    }
}

/// Hosts `h` (4096 MB free of 8192) and `g` (6000 MB free of 8192), each
/// with 10 GB of free disk.
fn two_hosts(d: &stores::Desks) {
    let cap = |free| Capacity {
        total_memory_mb: 8192,
        free_memory_mb: free,
        free_disk_mb: Some(10_000),
    };
    {
        let mut c = d.host().capacity.lock().unwrap();
        c.insert("qemu+ssh://lab@h/system".into(), cap(4096));
        c.insert("qemu+ssh://lab@g/system".into(), cap(6000));
    }
    let a = d.admin();
    d.with(&a, |c, a| {
        c.host_add(a, "h", "qemu+ssh://lab@h/system").unwrap();
        c.host_add(a, "g", "qemu+ssh://lab@g/system").unwrap();
    });
}

both!(the_host_with_the_most_free_memory_that_fits_wins, |d| {
    two_hosts(d);
    let ann = d.user("ann", false, 10_000);
    let bob = d.user("bob", false, 10_000);
    let create = |user: &str, name: &str, ram: i64, host: Option<&str>| {
        d.with(user, |c, me| {
            c.vm_create(me, &spec(name, ram, host), true, None)
        })
    };
    // g has the most free memory.
    assert_eq!(create(&ann, "a1", 1024, None).unwrap().host, "g");
    // Bob's VMs on g hold memory that counts for Ann too: g's free memory
    // is the smaller of what it reports and its memory less what vmdesk's
    // VMs hold (8192 - 1024 - 3000 - 200 = 3968 < h's 4096).
    assert_eq!(create(&bob, "b1", 3000, Some("g")).unwrap().host, "g");
    assert_eq!(create(&bob, "b2", 200, Some("g")).unwrap().host, "g");
    assert_eq!(create(&ann, "a2", 100, None).unwrap().host, "h");
    let placed = d
        .with(&ann, |c, me| c.placement(me, 100, "blank", None))
        .unwrap();
    assert_eq!(placed.host, "h");
    assert_eq!(placed.free_memory_mb, Some(4096));
    // A stopped VM gives its memory back.
    d.with(&bob, |c, me| {
        c.vm_action(me, "b1", vmdesk_core::VmAction::Stop)
    })
    .unwrap();
    assert_eq!(
        d.with(&ann, |c, me| c.placement(me, 100, "blank", None))
            .unwrap()
            .host,
        "g"
    );
});

both!(
    a_vm_that_fits_no_host_is_refused_and_nothing_is_charged,
    |d| {
        two_hosts(d);
        let ann = d.user("ann", false, 10_000);
        let before = d
            .with(&ann, |c, me| c.credits_show(me, None))
            .unwrap()
            .balance;
        let err = d
            .with(&ann, |c, me| {
                c.vm_create(me, &spec("big", 7000, None), true, None)
            })
            .unwrap_err();
        assert!(matches!(err, Error::NoRoom(_)), "{err}");
        assert_eq!(err.code(), "no_room");
        let s = err.to_string();
        assert!(s.contains("the most free memory is 6000 MB, on g"), "{s}");
        // Named, a host that is too small refuses too.
        let err = d
            .with(&ann, |c, me| {
                c.vm_create(me, &spec("big", 5000, Some("h")), true, None)
            })
            .unwrap_err();
        assert!(matches!(err, Error::NoRoom(_)), "{err}");
        // A size that is no size is refused as such, not placed.
        let err = d
            .with(&ann, |c, me| c.placement(me, -1, "blank", None))
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{err}");
        let after = d.with(&ann, |c, me| c.credits_show(me, None)).unwrap();
        assert_eq!(after.balance, before, "nothing charged");
        let mine = d.with(&ann, |c, me| c.vm_list(me, false)).unwrap();
        assert!(mine.is_empty(), "no VM row: {mine:?}");
    }
);

both!(
    a_host_without_the_disk_for_the_first_writes_is_passed_over,
    |d| {
        two_hosts(d);
        d.host()
            .capacity
            .lock()
            .unwrap()
            .get_mut("qemu+ssh://lab@g/system")
            .unwrap()
            .free_disk_mb = Some(vmdesk_core::FIRST_WRITES_MB - 1);
        let ann = d.user("ann", false, 10_000);
        let vm = d
            .with(&ann, |c, me| {
                c.vm_create(me, &spec("a", 512, None), true, None)
            })
            .unwrap();
        assert_eq!(vm.host, "h", "g has more memory but no room on disk");
    }
);
