//! The credit ledger: prices, grants and charges. A balance is the sum of its
//! user's entries and never negative; the database holds both rules.

use rusqlite::{params, Connection, ErrorCode};

use crate::error::{Error, Result};
use crate::model::{LedgerEntry, LedgerKind, Quote};
use crate::store::now;
use crate::validate;

/// Price floor of any VM.
pub const MIN_COST: i64 = 10;

/// The price of a VM: RAM/512*5 + disk/10*2 + CPUs*10 credits, rounded up to a
/// whole credit, at least 10 (1024 MB, 20 GB and 2 CPUs cost 34).
pub fn quote(ram_mb: i64, disk_gb: i64, cpus: i64) -> Result<Quote> {
    validate::size(ram_mb, disk_gb, cpus)?;
    // Exact arithmetic over the common denominator 5120 (= 512 * 10).
    let numerator = ram_mb * 5 * 10 + disk_gb * 2 * 512 + cpus * 10 * 5120;
    let cost = (numerator + 5119) / 5120;
    Ok(Quote {
        cost: cost.max(MIN_COST),
    })
}

/// Thousandths of a credit per hour of running a VM whose price is `cost`,
/// at `hourly_percent` percent of the price per hour (billing's one formula).
pub fn hourly_milli(cost: i64, hourly_percent: i64) -> i64 {
    cost.saturating_mul(hourly_percent).saturating_mul(10)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_of_the_seed_example_is_34() {
        assert_eq!(quote(1024, 20, 2).map(|q| q.cost).ok(), Some(34));
    }

    #[test]
    fn quote_of_the_smallest_vm_is_11() {
        // 64/512*5 = 0.625, 1/10*2 = 0.2, 1*10 = 10 -> 10.825 -> 11
        assert_eq!(quote(64, 1, 1).map(|q| q.cost).ok(), Some(11));
    }

    #[test]
    fn quote_rounds_a_fraction_up() {
        // 1000/512*5 = 9.77, 1/10*2 = 0.2, 1*10 = 10 -> 19.97 -> 20
        assert_eq!(quote(1000, 1, 1).map(|q| q.cost).ok(), Some(20));
    }

    #[test]
    fn quote_rejects_a_bad_size() {
        assert!(quote(0, 20, 2).is_err());
    }

    #[test]
    fn quote_of_the_largest_size_does_not_overflow() {
        assert!(quote(1_048_576, 65_536, 256).is_ok());
    }
}
