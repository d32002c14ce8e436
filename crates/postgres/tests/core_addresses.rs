//! VM addresses on both stores (issue 15): status sync records what a host
//! says of a running VM's address (a `vm.address` event the owner sees, the
//! public address in the metadata), clears it when the VM stops, is an
//! admin's; `vmdesk ssh`'s target is the owner's only; a session driven by
//! an admin's worker lets in the session user's key (published by their
//! desk, the private half never leaving it).
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use vmdesk_core::provider::Address;
use vmdesk_core::{Error, EventQuery, VmAction};

both!(
    an_address_is_recorded_with_an_event_and_cleared_when_the_vm_stops,
    |d| {
        d.pool(0);
        let ann = d.user("ann", false, 10_000);
        let bob = d.user("bob", false, 10_000);
        let vm = d.create_vm(&ann, "a1");
        let machine = vm.provider_id.clone().unwrap();
        let admin = d.admin();
        let sync = |all: bool| {
            d.with(&admin, |c, me| {
                let _ = me;
                c.sync_addresses(all, true, "poll")
            })
        };
        // Not known yet: nothing changes.
        assert!(sync(false).unwrap().is_empty());

        d.host().addresses.lock().unwrap().insert(
            machine.clone(),
            Address {
                ip: "192.168.213.40".into(),
                source: "lease",
                public_ip: None,
            },
        );
        let changed = sync(false).unwrap();
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(changed[0].now.as_deref(), Some("192.168.213.40"));
        let shown = d.with(&ann, |c, me| c.vm_show(me, "a1")).unwrap();
        assert_eq!(shown.ip_address.as_deref(), Some("192.168.213.40"));
        assert_eq!(shown.ssh_port, Some(22));
        // The owner sees the event.
        let events = d
            .with(&ann, |c, me| {
                c.events_query(
                    me,
                    &EventQuery {
                        limit: 50,
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        let e = events
            .iter()
            .find(|e| e.action == "vm.address")
            .expect("a vm.address event");
        assert_eq!(e.details["learned"], "lease");
        // The same again is no change; a public address is.
        assert!(sync(true).unwrap().is_empty());
        d.host().addresses.lock().unwrap().insert(
            machine.clone(),
            Address {
                ip: "192.168.213.40".into(),
                source: "azure",
                public_ip: Some("20.1.2.3".into()),
            },
        );
        assert_eq!(sync(true).unwrap().len(), 1);
        let shown = d.with(&ann, |c, me| c.vm_show(me, "a1")).unwrap();
        assert_eq!(shown.metadata["public_ip"], "20.1.2.3");

        // A user's own sync records nothing (it is an admin's).
        assert!(d
            .with(&bob, |c, me| {
                let _ = me;
                c.sync_addresses(true, true, "poll")
            })
            .unwrap()
            .is_empty());
        // Bob may not log in to ann's VM; ann may, at the public address.
        let refused = d.with(&bob, |c, me| c.ssh_target(me, "a1"));
        assert!(
            matches!(refused, Err(Error::UnknownVm(_) | Error::Forbidden { .. })),
            "{refused:?}"
        );
        let t = d.with(&ann, |c, me| c.ssh_target(me, "a1")).unwrap();
        assert_eq!(
            (t.ip.as_str(), t.port, t.user.as_str()),
            ("20.1.2.3", 22, "root")
        );
        assert!(
            t.identity.ends_with(format!("ssh/{ann}/id_ed25519")),
            "{}",
            t.identity.display()
        );

        // Stopped, it has no address.
        d.with(&ann, |c, me| c.vm_action(me, "a1", VmAction::Stop))
            .unwrap();
        let changed = sync(false).unwrap();
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert_eq!(changed[0].now, None);
        let shown = d.with(&ann, |c, me| c.vm_show(me, "a1")).unwrap();
        assert_eq!(shown.ip_address, None);
        assert_eq!(shown.metadata.get("public_ip"), None);
    }
);

/// The `user-data` of a seed disk (read with mtools, as cloud-init would
/// read the vfat `cidata` disk).
fn user_data(seed: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("seed.img");
    std::fs::write(&img, seed).unwrap();
    let out = std::process::Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&img)
        .arg("::user-data")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

both!(
    a_session_driven_by_a_worker_lets_in_the_session_users_key,
    |d| {
        d.pool(1);
        *d.host().take_seeds.lock().unwrap() = true;
        let ann = d.user("ann", false, 10_000);
        let key = d.with(&ann, |c, me| c.ssh_key(me)).unwrap().public;
        // Opened without waiting: an admin's worker starts it.
        let s = d
            .with(&ann, |c, me| c.session_open(me, &stores::req(), false))
            .unwrap();
        let admin = d.admin();
        let driven = d.with(&admin, |c, me| {
            let _ = me;
            c.drive_pending()
        });
        assert_eq!(driven.unwrap(), 1);
        let s = d
            .with(&ann, |c, me| c.session_list(me, false))
            .unwrap()
            .into_iter()
            .find(|x| x.id == s.id)
            .unwrap();
        assert_eq!(s.status, vmdesk_core::SessionStatus::Active, "{s:?}");
        let seeds = d.host().seeds.lock().unwrap().clone();
        assert_eq!(seeds.len(), 1, "one seed, for the session's VM");
        let text = user_data(seeds.values().next().unwrap());
        let keys: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "ssh_authorized_keys:")
            .skip(1)
            .take_while(|l| l.starts_with("  - "))
            .collect();
        assert_eq!(keys, vec![format!("  - \"{key}\"").as_str()], "{text}");
        assert!(text.contains("vmdesk-revoke-keys"), "{text}");
        // Nobody reads another user's key but an admin.
        let bob = d.user("bob", false, 10);
        let refused = d.with(&bob, |c, me| c.ssh_target(me, "vm0"));
        assert!(refused.is_err());
    }
);

both!(an_address_that_is_not_ipv4_never_reaches_ssh, |d| {
    d.pool(0);
    let ann = d.user("ann", false, 10_000);
    let vm = d.create_vm(&ann, "a1");
    let machine = vm.provider_id.clone().unwrap();
    let admin = d.admin();
    // A guest agent is the guest's to say: a hostile one may report an
    // "address" that ssh would take for an option.
    d.host().addresses.lock().unwrap().insert(
        machine,
        Address {
            ip: "-oProxyCommand=touch /tmp/vmdesk-pwned".into(),
            source: "agent",
            public_ip: None,
        },
    );
    let changed = d
        .with(&admin, |c, _| c.sync_addresses(true, true, "poll"))
        .unwrap();
    assert!(changed.is_empty(), "{changed:?}");
    let shown = d.with(&ann, |c, me| c.vm_show(me, "a1")).unwrap();
    assert_eq!(shown.ip_address, None);
    // Nor through the metadata, which the owner may set.
    d.with(&ann, |c, me| {
        c.vm_meta(
            me,
            "a1",
            &[(
                "public_ip".into(),
                "-oProxyCommand=touch /tmp/vmdesk-pwned".into(),
            )],
        )
    })
    .unwrap();
    let refused = d.with(&ann, |c, me| c.ssh_target(me, "a1"));
    let e = refused.expect_err("an option-like address reached ssh");
    assert_eq!(e.code(), "invalid_input", "{e}");
    assert!(e.to_string().contains("not an IPv4 address"), "{e}");
});
