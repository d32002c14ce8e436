//! The audit log: every lifecycle, billing and admin action, written in the
//! same transaction as the change it records.

use rusqlite::{params, Connection};
use serde_json::Value;

use crate::error::Result;
use crate::model::{Event, EventType, Severity};
use crate::store::now;

/// An event about to be written.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub event_type: EventType,
    pub action: &'a str,
    pub severity: Severity,
    pub actor: &'a str,
    pub vm_id: Option<i64>,
    pub session_id: Option<i64>,
    pub details: Value,
}

impl<'a> NewEvent<'a> {
    /// An info event with no VM or session.
    pub fn info(event_type: EventType, action: &'a str, actor: &'a str, details: Value) -> Self {
        Self {
            event_type,
            action,
            severity: Severity::Info,
            actor,
            vm_id: None,
            session_id: None,
            details,
        }
    }

    pub fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    pub fn vm(mut self, vm_id: i64) -> Self {
        self.vm_id = Some(vm_id);
        self
    }

    pub fn session(mut self, session_id: i64) -> Self {
        self.session_id = Some(session_id);
        self
    }
}

/// Writes an event.
pub fn record(conn: &Connection, e: NewEvent<'_>) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO events (type, action, severity, actor, vm_id, session_id, details, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        e.event_type,
        e.action,
        e.severity,
        e.actor,
        e.vm_id,
        e.session_id,
        e.details.to_string(),
        now()
    ])?;
    Ok(conn.last_insert_rowid())
}

pub(crate) fn query(
    conn: &Connection,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |r| {
        let details: String = r.get(7)?;
        Ok(Event {
            id: r.get(0)?,
            event_type: r.get(1)?,
            action: r.get(2)?,
            severity: r.get(3)?,
            actor: r.get(4)?,
            vm_id: r.get(5)?,
            session_id: r.get(6)?,
            details: serde_json::from_str(&details).unwrap_or(Value::Null),
            created_at: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
