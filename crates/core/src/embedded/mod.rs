//! The embedded store: the data directory's SQLite file as a store of the
//! shared data ([`crate::Store`]), acting as the user the caller names
//! (`--as`). Its SQL lives here, one file per domain; a domain's SQL moves
//! here from core's domain files as the domain moves behind the store's
//! traits (see docs/design.md). What is not here yet is still in those files.
//!
//! The embedded store holds its rules itself, as the team store's database
//! does: who may do what is checked in the same transaction as the change.

use rusqlite::{Connection, ErrorCode, OptionalExtension, Row};
use serde_json::json;

use crate::error::{Error, Result};
use crate::events::{self, NewEvent};
use crate::ledger::{self, Entry};
use crate::model::*;
use crate::Core;

mod log;
mod people;
mod places;
mod quarantine;

/// The data directory's store, acting as `actor`.
pub(crate) struct Embedded<'a> {
    pub(crate) core: &'a Core,
    pub(crate) actor: &'a str,
    /// Acting as the system itself (reads that check no actor): not a user
    /// anyone can name with `--as`.
    pub(crate) system: bool,
}

pub(crate) fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        balance: r.get(3)?,
        created_at: r.get(4)?,
    })
}

pub(crate) fn user(conn: &Connection, name: &str) -> Result<User> {
    conn.prepare_cached("SELECT id, name, role, balance, created_at FROM users WHERE name = ?1")?
        .query_row([name], user_row)
        .optional()?
        .ok_or_else(|| Error::UnknownUser(name.to_owned()))
}

pub(crate) fn admin(conn: &Connection, actor: &str, action: &'static str) -> Result<User> {
    let u = user(conn, actor)?;
    if u.role != Role::Admin {
        return Err(Error::AdminOnly(action));
    }
    Ok(u)
}

pub(crate) fn project_id(conn: &Connection, name: &str) -> Result<i64> {
    conn.prepare_cached("SELECT id FROM projects WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::UnknownProject(name.to_owned()))
}

pub(crate) fn host(conn: &Connection, name: &str) -> Result<Host> {
    conn.prepare_cached("SELECT id, name, kind, uri, created_at FROM hosts WHERE name = ?1")?
        .query_row([name], |r| {
            Ok(Host {
                id: r.get(0)?,
                name: r.get(1)?,
                kind: r.get(2)?,
                uri: r.get(3)?,
                created_at: r.get(4)?,
            })
        })
        .optional()?
        .ok_or_else(|| Error::UnknownHost(name.to_owned()))
}

/// Maps a UNIQUE violation of an insert to "a {kind} named {name} already exists".
pub(crate) fn already_exists<'a>(
    kind: &'static str,
    name: &'a str,
) -> impl FnOnce(rusqlite::Error) -> Error + 'a {
    move |e| match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == ErrorCode::ConstraintViolation
                && f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            Error::AlreadyExists {
                kind,
                name: name.to_owned(),
            }
        }
        _ => e.into(),
    }
}

pub(crate) fn grant(
    tx: &Connection,
    actor: &str,
    user_id: i64,
    user_name: &str,
    amount: i64,
    reason: &str,
) -> Result<LedgerEntry> {
    let entry = ledger::append(
        tx,
        user_name,
        Entry {
            user_id,
            amount,
            kind: LedgerKind::Grant,
            reason,
            vm_id: None,
            session_id: None,
            actor,
        },
    )?;
    events::record(
        tx,
        NewEvent::info(
            EventType::Admin,
            "credits.grant",
            actor,
            json!({"user": user_name, "amount": amount, "reason": reason}),
        ),
    )?;
    Ok(entry)
}

pub(crate) fn statement(conn: &Connection, u: &User) -> Result<CreditStatement> {
    let balance: i64 = conn.query_row("SELECT balance FROM users WHERE id = ?1", [u.id], |r| {
        r.get(0)
    })?;
    Ok(CreditStatement {
        user: u.name.clone(),
        balance,
        entries: ledger::entries(conn, u.id)?,
    })
}
