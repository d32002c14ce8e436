//! A host row with a URI that could make libvirt run a program, stored by an
//! older version or a hand, gets no provider. The other host URI tests run on
//! both stores: crates/postgres/tests/core_host_uris.rs.
//!
//! Embedded-store only:
//! - a_stored_host_row_with_a_bad_uri_gets_no_provider: writes the row into the SQLite file, and sweep_host answers not_on_team_store.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;

const RUNS_A_PROGRAM: &str = "qemu+ext:///system?command=/tmp/x";

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
