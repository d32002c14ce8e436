//! Host URIs that could make libvirt run a program or reach a socket of the
//! caller's choosing are refused when added (moved from
//! crates/core/tests/host_uris.rs), on both stores: the embedded SQLite file
//! and a team store on PostgreSQL. The stored-row test stays in
//! crates/core/tests/host_uris.rs (see there why).
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../../core/tests/common/mod.rs"]
mod common;
#[macro_use]
#[path = "support/stores.rs"]
mod stores;

use stores::Desks;

const RUNS_A_PROGRAM: &str = "qemu+ext:///system?command=/tmp/x";

both!(
    a_host_uri_that_runs_a_program_is_refused_as_invalid_input,
    |d: &Desks| {
        d.pool(0);
        let e = d
            .with(&d.admin(), |c, a| c.host_add(a, "evil", RUNS_A_PROGRAM))
            .unwrap_err();
        assert_eq!(e.code(), "invalid_input", "{e}");
    }
);

both!(a_refused_host_uri_stores_nothing, |d: &Desks| {
    d.pool(0);
    let events = d.events(10_000).len();
    for uri in [
        RUNS_A_PROGRAM,
        "qemu+ssh://host/system?netcat=/tmp/nc",
        "qemu+unix:///system?socket=/tmp/evil.sock",
    ] {
        assert!(
            d.with(&d.admin(), |c, a| c.host_add(a, "evil", uri))
                .is_err(),
            "{uri}"
        );
    }
    let hosts = d.with(&d.admin(), |c, a| c.host_list(a).unwrap());
    assert!(hosts.iter().all(|h| h.name != "evil"), "{hosts:?}");
    assert_eq!(d.events(10_000).len(), events);
});

both!(a_tcp_host_is_refused_without_the_opt_in, |d: &Desks| {
    d.pool(0);
    // The tests of this file never set VMDESK_ALLOW_TCP.
    let e = d
        .with(&d.admin(), |c, a| {
            c.host_add(a, "plain", "qemu+tcp://127.0.0.1:16509/system")
        })
        .unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
});
