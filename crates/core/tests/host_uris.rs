//! Host URIs that could make libvirt run a program or reach a socket of the
//! caller's choosing are refused, when added and when a stored row is used.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;

const RUNS_A_PROGRAM: &str = "qemu+ext:///system?command=/tmp/x";

#[test]
fn a_host_uri_that_runs_a_program_is_refused_as_invalid_input() {
    let (_dir, _hosts, core) = with_pool(0);
    let e = core.host_add("admin", "evil", RUNS_A_PROGRAM).unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
}

#[test]
fn a_refused_host_uri_stores_nothing() {
    let (dir, _hosts, core) = with_pool(0);
    let events = count(dir.path(), "SELECT count(*) FROM events");
    for uri in [
        RUNS_A_PROGRAM,
        "qemu+ssh://host/system?netcat=/tmp/nc",
        "qemu+unix:///system?socket=/tmp/evil.sock",
    ] {
        assert!(core.host_add("admin", "evil", uri).is_err(), "{uri}");
    }
    assert_eq!(
        count(dir.path(), "SELECT count(*) FROM hosts WHERE name = 'evil'"),
        0
    );
    assert_eq!(count(dir.path(), "SELECT count(*) FROM events"), events);
}

#[test]
fn a_stored_host_row_with_a_bad_uri_gets_no_provider() {
    let (dir, _hosts, core) = with_pool(0);
    // A row an older version, or a hand, put in the database.
    db(dir.path())
        .execute(
            "INSERT INTO hosts (name, kind, uri, created_at) VALUES ('old', 'libvirt', ?1, 'x')",
            [RUNS_A_PROGRAM],
        )
        .unwrap();
    let e = core.sweep_host("old").unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
}

#[test]
fn a_tcp_host_is_refused_without_the_opt_in() {
    let (_dir, _hosts, core) = with_pool(0);
    // The tests of this file never set VMDESK_ALLOW_TCP.
    let e = core
        .host_add("admin", "plain", "qemu+tcp://127.0.0.1:16509/system")
        .unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
}
