//! The ledger's rows on the embedded store: an append-only table whose
//! entries move the balance in the same transaction, never below zero.

use rusqlite::{params, Connection, ErrorCode};

use crate::error::{Error, Result};
use crate::model::{LedgerEntry, LedgerKind};
use crate::store::now;

/// A ledger line about to be written.
pub struct Entry<'a> {
    pub user_id: i64,
    pub amount: i64,
    pub kind: LedgerKind,
    pub reason: &'a str,
    pub vm_id: Option<i64>,
    pub session_id: Option<i64>,
    pub actor: &'a str,
}

/// Appends an entry; its amount moves the balance in the same statement. A
/// debit larger than the balance is refused by the database and changes nothing.
pub fn append(conn: &Connection, user_name: &str, e: Entry<'_>) -> Result<LedgerEntry> {
    let created_at = now();
    let inserted = conn.execute(
        "INSERT INTO ledger (user_id, amount, kind, reason, vm_id, session_id, actor, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            e.user_id,
            e.amount,
            e.kind,
            e.reason,
            e.vm_id,
            e.session_id,
            e.actor,
            created_at
        ],
    );
    match inserted {
        Ok(_) => Ok(LedgerEntry {
            id: conn.last_insert_rowid(),
            amount: e.amount,
            kind: e.kind,
            reason: e.reason.to_owned(),
            vm_id: e.vm_id,
            session_id: e.session_id,
            actor: e.actor.to_owned(),
            created_at,
        }),
        Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == ErrorCode::ConstraintViolation => {
            let balance: i64 = conn.query_row(
                "SELECT balance FROM users WHERE id = ?1",
                [e.user_id],
                |r| r.get(0),
            )?;
            Err(Error::InsufficientCredits {
                user: user_name.to_owned(),
                cost: -e.amount,
                balance,
            })
        }
        Err(other) => Err(other.into()),
    }
}

/// A user's entries, oldest first.
pub fn entries(conn: &Connection, user_id: i64) -> Result<Vec<LedgerEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, amount, kind, reason, vm_id, session_id, actor, created_at
         FROM ledger WHERE user_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([user_id], |r| {
        Ok(LedgerEntry {
            id: r.get(0)?,
            amount: r.get(1)?,
            kind: r.get(2)?,
            reason: r.get(3)?,
            vm_id: r.get(4)?,
            session_id: r.get(5)?,
            actor: r.get(6)?,
            created_at: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
