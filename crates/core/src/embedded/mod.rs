//! The embedded store: the data directory's SQLite file as a store of the
//! shared data ([`crate::Store`]), acting as the user the caller names
//! (`--as`) or as the system. Every SQLite statement of vmdesk lives in this
//! module, one file per domain, with the file itself ([`store`]), its event
//! log ([`events`]) and its ledger rows; the rest of core reaches it through
//! the store traits and a few functions for the desk's own file.
//!
//! The embedded store holds its rules itself, as the team store's database
//! does: who may do what is checked in the same transaction as the change.

use std::path::Path;
use std::sync::MutexGuard;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row};
use serde_json::json;

use self::events::NewEvent;
use self::ledger::Entry;
use crate::core::{system_actor, SYSTEM};
use crate::error::{Error, Result};
use crate::model::*;
use crate::Core;

pub(crate) mod events;
mod ledger;
pub(crate) mod store;

mod billing;
mod catalog;
mod consoles;
mod log;
mod people;
mod places;
mod quarantine;
pub(crate) mod sessions;
mod vms;
mod work;

/// The data directory's store, acting as `actor`.
pub(crate) struct Embedded<'a> {
    pub(crate) core: &'a Core,
    pub(crate) actor: &'a str,
    /// Acting as the system itself (reads that check no actor): not a user
    /// anyone can name with `--as`.
    pub(crate) system: bool,
}

impl Embedded<'_> {
    /// The acting user: the system (which may do what an admin may), or the
    /// user the caller named.
    pub(crate) fn me(&self, conn: &Connection) -> Result<User> {
        if self.system {
            return Ok(system_actor());
        }
        user(conn, self.actor)
    }

    /// The acting user if an admin (the system is one); else
    /// [`Error::AdminOnly`] naming `action`.
    pub(crate) fn admin_me(&self, conn: &Connection, action: &'static str) -> Result<User> {
        let a = self.me(conn)?;
        if a.role != Role::Admin {
            return Err(Error::AdminOnly(action));
        }
        Ok(a)
    }
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

/// The columns of a [`Vm`], for `vm_row`.
macro_rules! vm_select {
    () => {
        "SELECT v.id, v.name, v.os_type, v.ram_mb, v.disk_gb, v.cpu_cores, v.vm_type,
        v.status, v.ip_address, v.ssh_port,
        CASE WHEN v.status = 'RUNNING' AND v.started_at IS NOT NULL
             THEN CAST((julianday('now') - julianday(v.started_at)) * 86400 AS INTEGER)
             ELSE v.uptime_seconds END,
        v.metadata, u.name, p.name, h.name,
        v.provider_id, v.live_session_id, v.last_stopped, v.created_at, v.updated_at,
        v.synced_at, v.synced_by
    FROM vms v
    LEFT JOIN users u ON u.id = v.owner_user_id
    LEFT JOIN projects p ON p.id = v.project_id
    JOIN hosts h ON h.id = v.host_id "
    };
}

/// The columns of a [`Session`], for `session_row`.
macro_rules! session_select {
    () => {
        "SELECT s.id, s.vm_id, v.name, u.name, p.name, w.name,
        s.status, s.error, s.created_at, s.updated_at, s.started_at, s.ended_at
    FROM sessions s
    JOIN vms v ON v.id = s.vm_id
    JOIN users u ON u.id = s.user_id
    JOIN projects p ON p.id = s.project_id
    LEFT JOIN workspaces w ON w.id = s.workspace_id "
    };
}
pub(crate) use session_select;
pub(crate) use vm_select;

pub(crate) fn vm_row(r: &Row<'_>) -> rusqlite::Result<Vm> {
    let metadata: String = r.get(11)?;
    Ok(Vm {
        id: r.get(0)?,
        name: r.get(1)?,
        os_type: r.get(2)?,
        ram_mb: r.get(3)?,
        disk_gb: r.get(4)?,
        cpu_cores: r.get(5)?,
        vm_type: r.get(6)?,
        status: r.get(7)?,
        ip_address: r.get(8)?,
        ssh_port: r.get(9)?,
        uptime_seconds: r.get(10)?,
        metadata: serde_json::from_str(&metadata).unwrap_or_else(|_| json!({})),
        owner: r.get(12)?,
        pool: r.get(13)?,
        host: r.get(14)?,
        provider_id: r.get(15)?,
        session_id: r.get(16)?,
        last_stopped: r.get(17)?,
        created_at: r.get(18)?,
        updated_at: r.get(19)?,
        synced_at: r.get(20)?,
        synced_by: r.get(21)?,
    })
}

pub(crate) fn session_row(r: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: r.get(0)?,
        vm_id: r.get(1)?,
        vm_name: r.get(2)?,
        user: r.get(3)?,
        project: r.get(4)?,
        workspace: r.get(5)?,
        status: r.get(6)?,
        error: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
        started_at: r.get(10)?,
        ended_at: r.get(11)?,
    })
}

pub(crate) fn vm_by_id(conn: &Connection, id: i64) -> Result<Vm> {
    conn.prepare_cached(concat!(vm_select!(), "WHERE v.id = ?1"))?
        .query_row([id], vm_row)
        .optional()?
        .ok_or_else(|| Error::UnknownVm(id.to_string()))
}

/// A VM by id (a reference of digits) or by name. A number is an id first:
/// VM names cannot be all digits (see [`validate::vm_name`]); one made before
/// that rule is still found by its name when no VM has that id.
pub(crate) fn vm_by_ref(conn: &Connection, reference: &str) -> Result<Vm> {
    let by_name = |conn: &Connection| {
        conn.prepare_cached(concat!(vm_select!(), "WHERE v.name = ?1"))?
            .query_row([reference], vm_row)
            .optional()
    };
    let found = match reference.parse::<i64>() {
        Ok(id) => match conn
            .prepare_cached(concat!(vm_select!(), "WHERE v.id = ?1"))?
            .query_row([id], vm_row)
            .optional()?
        {
            Some(vm) => Some(vm),
            None => by_name(conn)?,
        },
        Err(_) => by_name(conn)?,
    };
    found.ok_or_else(|| Error::UnknownVm(reference.to_owned()))
}

pub(crate) fn session_by_id(conn: &Connection, id: i64) -> Result<Session> {
    conn.prepare_cached(concat!(session_select!(), "WHERE s.id = ?1"))?
        .query_row([id], session_row)
        .optional()?
        .ok_or(Error::UnknownSession(id))
}

/// The install id of this data directory. A copy of a data directory (or a
/// database moved into another one) gets a new id, with an event: the
/// machines the original marked on shared hosts stay the original's, and the
/// copy's recovery leaves them alone.
pub(crate) fn own_install_id(db: &mut store::Db, dir: &Path) -> Result<String> {
    let here = store::dir_identity(dir).map_err(|source| Error::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let read = |conn: &Connection| -> Result<(String, Option<String>)> {
        let seen: Option<String> = conn
            .query_row(
                "SELECT value FROM settings WHERE key = 'install_dir'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok((store::install_id(conn)?, seen))
    };
    let (id, seen) = read(db)?;
    if seen.as_deref() == Some(here.as_str()) {
        return Ok(id);
    }
    store::write(db, |tx| {
        let (id, seen) = read(tx)?;
        match seen {
            Some(s) if s == here => Ok(id),
            None => {
                tx.execute(
                    "INSERT INTO settings (key, value) VALUES ('install_dir', ?1)",
                    [&here],
                )?;
                Ok(id)
            }
            Some(_) => {
                let new_id = uuid::Uuid::new_v4().simple().to_string();
                tx.execute(
                    "UPDATE settings SET value = ?1 WHERE key = 'install_id'",
                    [&new_id],
                )?;
                tx.execute(
                    "UPDATE settings SET value = ?1 WHERE key = 'install_dir'",
                    [&here],
                )?;
                events::record(
                    tx,
                    NewEvent::info(
                        EventType::System,
                        "install.copied",
                        SYSTEM,
                        json!({"was": id, "now": new_id, "data_dir": dir.display().to_string(),
                               "reason": "this data directory is a copy (or was moved): it takes a new install id, \
                                          and machines marked by the original are not its own"}),
                    )
                    .severity(Severity::Warning),
                )?;
                Ok(new_id)
            }
        }
    })
}

/// A number that changes whenever another process commits to the file.
pub(crate) fn data_version(conn: &Connection) -> Result<i64> {
    Ok(conn.pragma_query_value(None, "data_version", |r| r.get(0))?)
}

/// A look at a data directory's file without opening it for writing: its
/// integrity check ("ok" when intact) and schema version.
pub(crate) fn inspect(path: &Path) -> rusqlite::Result<(String, i64)> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok((problems.join("; "), version))
}

/// The hosts (name, URI) of a data directory's file, read-only.
pub(crate) fn host_rows(path: &Path) -> rusqlite::Result<Vec<(String, String)>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare("SELECT name, uri FROM hosts ORDER BY name")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// The database connection, held; when released, requesters waiting to
/// allocate are woken so that one of them can lead the next batch.
pub(crate) struct DbGuard<'a> {
    guard: Option<MutexGuard<'a, store::Db>>,
    alloc: &'a sessions::AllocQueue,
}

impl<'a> DbGuard<'a> {
    pub(crate) fn new(guard: MutexGuard<'a, store::Db>, alloc: &'a sessions::AllocQueue) -> Self {
        Self {
            guard: Some(guard),
            alloc,
        }
    }
}

impl std::ops::Deref for DbGuard<'_> {
    type Target = store::Db;
    fn deref(&self) -> &store::Db {
        self.guard
            .as_deref()
            .unwrap_or_else(|| unreachable!("held until drop"))
    }
}

impl std::ops::DerefMut for DbGuard<'_> {
    fn deref_mut(&mut self) -> &mut store::Db {
        self.guard
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("held until drop"))
    }
}

impl Drop for DbGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.alloc.wake();
    }
}

/// The data directory's file, as the embedded store and the desk's own
/// data use it.
impl Core {
    pub(crate) fn db(&self) -> DbGuard<'_> {
        DbGuard::new(
            self.conn
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            &self.alloc,
        )
    }

    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        // Every change of the shared data goes to the team store in team
        // mode; one that is not offered there yet must not land in the
        // desk's own file.
        self.embedded_only("this change")?;
        self.write_local(f)
    }

    /// A write to the data directory's own file in either mode: what belongs
    /// to this desk alone (its OS catalog).
    pub(crate) fn write_local<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let out = store::write(&mut self.db(), f)?;
        if let Some(notify) = &self.opts.on_change {
            notify();
        }
        Ok(out)
    }
}
