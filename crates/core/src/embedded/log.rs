//! The event log on the embedded store.

use rusqlite::params;
use serde_json::Value;

use super::{user, Embedded};
use crate::core::SYSTEM;
use crate::error::Result;
use crate::events::{self, NewEvent};
use crate::model::*;
use crate::team::Events;

impl Events for Embedded<'_> {
    fn events(&self, limit: i64) -> Result<Vec<Event>> {
        self.events_query(
            &crate::EventQuery {
                limit,
                ..Default::default()
            },
            None,
        )
    }

    /// An admin (and the system) sees every event; a user sees those they
    /// did and those about their VMs, sessions, account and credits.
    fn events_query(&self, q: &crate::EventQuery, vm: Option<i64>) -> Result<Vec<Event>> {
        let conn = self.core.db();
        // Whose events: a user sees only theirs; an admin, who sees every
        // event, may ask for one user's (core checked who may ask).
        let mine = if self.system {
            None
        } else {
            let a = self.me(&conn)?;
            (a.role != Role::Admin).then_some(a.id)
        };
        let only = match (&q.user, mine) {
            (Some(name), None) => Some(user(&conn, name)?.id),
            _ => mine,
        };
        let list = |v: Vec<&str>| v.join(",");
        let types = list(q.types.iter().map(|t| t.as_str()).collect());
        let severities = list(q.severities.iter().map(|s| s.as_str()).collect());
        events::query(
            &conn,
            "SELECT e.id, e.type, e.action, e.severity, e.actor, e.vm_id, e.session_id, e.details, e.created_at
             FROM events e
             WHERE (?1 IS NULL
                    OR e.actor = (SELECT name FROM users WHERE id = ?1)
                    OR e.vm_id IN (SELECT id FROM vms WHERE owner_user_id = ?1)
                    OR e.session_id IN (SELECT id FROM sessions WHERE user_id = ?1)
                    -- About them: their account and credits (as the team
                    -- store's events.subject_id).
                    OR (e.type IN ('admin', 'billing')
                        AND json_extract(e.details, '$.user') = (SELECT name FROM users WHERE id = ?1)))
               AND (?2 = '' OR instr(',' || ?2 || ',', ',' || e.type || ',') > 0)
               AND (?3 = '' OR instr(',' || ?3 || ',', ',' || e.severity || ',') > 0)
               AND e.id > ?4
               AND (?6 IS NULL OR e.vm_id = ?6)
               AND (?7 IS NULL OR e.created_at >= ?7)
             ORDER BY e.id DESC LIMIT ?5",
            params![only, types, severities, q.after.unwrap_or(0), q.limit, vm, q.since],
        )
    }

    fn owner_note(&self, action: &str, severity: Severity, vm: i64, details: Value) -> Result<()> {
        self.core.write(|tx| {
            self.admin_me(tx, "write events about VMs")?;
            events::record(
                tx,
                NewEvent::info(EventType::Vm, action, SYSTEM, details)
                    .severity(severity)
                    .vm(vm),
            )
            .map(|_| ())
        })
    }

    fn system_note(&self, action: &str, severity: Severity, details: Value) -> Result<()> {
        self.core.write(|tx| {
            events::record(
                tx,
                NewEvent::info(EventType::System, action, SYSTEM, details).severity(severity),
            )
            .map(|_| ())
        })
    }

    fn note_failure(&self, action: &str, vm: Option<i64>, details: Value) -> Result<()> {
        self.core.write(|tx| {
            let mut ev = NewEvent::info(EventType::Vm, action, self.actor, details)
                .severity(Severity::Warning);
            if let Some(id) = vm {
                ev = ev.vm(id);
            }
            events::record(tx, ev).map(|_| ())
        })
    }
}
