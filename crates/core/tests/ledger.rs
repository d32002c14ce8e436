//! The credit ledger on a real SQLite file.
//!
//! Embedded-store only: the_ledger_is_append_only writes the SQLite file
//! directly (its triggers refuse the rewrite). The ledger's other rules run
//! on both stores in crates/postgres/tests/core_ledger.rs; the team store's
//! append-only ledger is tested as the database's permissions in
//! crates/postgres/tests/permissions.rs.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::*;

#[test]
fn the_ledger_is_append_only() {
    let (dir, _hosts, core) = with_pool(0);
    core.user_add("admin", "erin", false, 50).unwrap();
    let conn = db(dir.path());
    assert!(conn.execute("UPDATE ledger SET amount = 1000", []).is_err());
    assert!(conn.execute("DELETE FROM ledger", []).is_err());
    assert_eq!(core.credits_show("erin", None).unwrap().balance, 50);
}
