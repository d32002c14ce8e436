//! The VM list's "changed since" query (issue 16) on both stores: a change
//! of any kind (a state written by an action, a rename of the project a row
//! shows) brings back the rows it touched; a list merged from the answers is
//! the full list; each user's count is of what they may see; a cursor that
//! is not one is refused.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use std::collections::BTreeMap;

use stores::Desks;
use vmdesk_core::{Vm, VmAction, VmChanges};

fn changes(d: &Desks, user: &str, all: bool, since: Option<&str>) -> VmChanges {
    d.with(user, |c, me| c.vm_changes(me, all, since).unwrap())
}

fn names(vms: &[Vm]) -> Vec<&str> {
    vms.iter().map(|v| v.name.as_str()).collect()
}

/// What a list keeps: rows by id, merged from the answers.
fn merge(list: &mut BTreeMap<i64, Vm>, c: &VmChanges) {
    for v in &c.vms {
        list.insert(v.id, v.clone());
    }
    assert_eq!(list.len() as i64, c.total, "nothing went away here");
}

both!(a_change_brings_back_the_rows_it_touched, |d: &Desks| {
    d.pool(3);
    let a = d.admin();
    let bob = d.user("bob", false, 10_000);
    d.create_vm(&bob, "bobs");

    let first = changes(d, &a, true, None);
    assert_eq!(names(&first.vms), ["bobs", "vm0", "vm1", "vm2"]);
    assert_eq!(first.total, 4);
    let mut list: BTreeMap<i64, Vm> = BTreeMap::new();
    merge(&mut list, &first);

    // An action writes vm1's state: vm1 comes back, with it.
    d.with(&a, |c, a| c.vm_action(a, "vm1", VmAction::Start).unwrap());
    let next = changes(d, &a, true, Some(&first.cursor));
    assert!(names(&next.vms).contains(&"vm1"), "{:?}", names(&next.vms));
    if !d.is_team() {
        // Writes are serialized here: exactly the changed row. (On the team
        // store rows written by transactions that were running when the
        // cursor was taken come again, which is harmless.)
        assert_eq!(names(&next.vms), ["vm1"]);
    }
    merge(&mut list, &next);
    let full = d.with(&a, |c, a| c.vm_list(a, true).unwrap());
    assert_eq!(list.values().cloned().collect::<Vec<_>>().len(), full.len());
    for v in &full {
        assert_eq!(list[&v.id].status, v.status, "{}", v.name);
    }

    // Renaming the project changes what its VMs show: all three come back.
    d.with(&a, |c, a| c.project_rename(a, "p", "lab").unwrap());
    let renamed = changes(d, &a, true, Some(&next.cursor));
    let pool: Vec<_> = renamed
        .vms
        .iter()
        .filter(|v| v.pool.is_some())
        .map(|v| (v.name.as_str(), v.pool.as_deref()))
        .collect();
    assert_eq!(
        pool,
        [
            ("vm0", Some("lab")),
            ("vm1", Some("lab")),
            ("vm2", Some("lab"))
        ]
    );
    merge(&mut list, &renamed);

    // A user counts what they see: the pool and their own VM, not others'.
    let carol = d.user("carol", false, 10_000);
    d.create_vm(&carol, "carols");
    let bobs = changes(d, &bob, false, None);
    assert_eq!(names(&bobs.vms), ["bobs", "vm0", "vm1", "vm2"]);
    assert_eq!(bobs.total, 4);
    let since = changes(d, &bob, false, Some(&bobs.cursor));
    assert!(
        !names(&since.vms).contains(&"carols"),
        "another user's own VM is never shown"
    );
    assert_eq!(since.total, 4);
    // Everyone's list is an admin's.
    let err = d.with(&bob, |c, me| c.vm_changes(me, true, None).unwrap_err());
    assert_eq!(err.code(), "admin_only");
});

both!(a_cursor_that_is_not_one_is_refused, |d: &Desks| {
    d.pool(1);
    let a = d.admin();
    for bad in ["", "x", "1; DROP TABLE vms", "123456789012345678901234"] {
        let err = d.with(&a, |c, a| c.vm_changes(a, true, Some(bad)).unwrap_err());
        assert_eq!(err.code(), "invalid_input", "{bad:?}: {}", err.one_line());
    }
});
