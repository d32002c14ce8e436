//! Marked machines without a VM row, on the embedded store.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;

use super::{host, Embedded};
use crate::core::SYSTEM;
use crate::error::{Error, Result};
use crate::events::{self, NewEvent};
use crate::model::*;
use crate::store::now;
use crate::team::Quarantine;

/// Whether a live VM row names `machine` on host `host_id`.
fn has_row(conn: &Connection, host_id: i64, machine: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT count(*) > 0 FROM vms WHERE host_id = ?1 AND provider_id = ?2 AND status <> 'DESTROYED'",
        params![host_id, machine],
        |r| r.get(0),
    )?)
}

impl Embedded<'_> {
    /// The quarantine is the admins' (and the system's, at start).
    fn quarantine_admin(&self, conn: &Connection, action: &'static str) -> Result<String> {
        if self.system {
            return Ok(SYSTEM.to_owned());
        }
        Ok(self.admin_me(conn, action)?.name)
    }
}

impl Quarantine for Embedded<'_> {
    fn machine_known(&self, host_name: &str, machine: &str) -> Result<(bool, bool)> {
        let conn = self.core.db();
        self.quarantine_admin(&conn, "run recovery")?;
        let h = host(&conn, host_name)?;
        let quarantined: bool = conn.query_row(
            "SELECT count(*) > 0 FROM quarantine WHERE host_id = ?1 AND machine = ?2",
            params![h.id, machine],
            |r| r.get(0),
        )?;
        Ok((has_row(&conn, h.id, machine)?, quarantined))
    }

    fn quarantine_add(&self, host_name: &str, machine: &str, powered_off: bool) -> Result<bool> {
        self.core.write(|tx| {
            self.quarantine_admin(tx, "run recovery")?;
            let h = host(tx, host_name)?;
            // A row that appeared meanwhile (a creation starting now) wins.
            if has_row(tx, h.id, machine)? {
                return Ok(false);
            }
            let added = tx.execute(
                "INSERT OR IGNORE INTO quarantine (host_id, machine, found_at) VALUES (?1, ?2, ?3)",
                params![h.id, machine, now()],
            )?;
            if added == 0 {
                return Ok(false);
            }
            events::record(
                tx,
                NewEvent::info(
                    EventType::System,
                    "recovery.quarantine",
                    SYSTEM,
                    json!({"host": host_name, "machine": machine, "powered_off": powered_off,
                           "reason": "on the host with this data directory's mark but without a VM row; \
                                      kept with its disk until 'vmdesk recover --purge'"}),
                )
                .severity(Severity::Warning),
            )?;
            Ok(true)
        })
    }

    fn quarantine_keep(&self, host_name: &str, marked: &[String]) -> Result<()> {
        self.core.write(|tx| {
            self.quarantine_admin(tx, "run recovery")?;
            let h = host(tx, host_name)?;
            let held: Vec<String> = tx
                .prepare("SELECT machine FROM quarantine WHERE host_id = ?1")?
                .query_map([h.id], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for m in held {
                if !marked.contains(&m) || has_row(tx, h.id, &m)? {
                    tx.execute(
                        "DELETE FROM quarantine WHERE host_id = ?1 AND machine = ?2",
                        params![h.id, m],
                    )?;
                }
            }
            Ok(())
        })
    }

    fn quarantined(&self) -> Result<Vec<Quarantined>> {
        let conn = self.core.db();
        self.quarantine_admin(&conn, "list quarantined machines")?;
        let rows = conn
            .prepare(
                "SELECT h.name, q.machine, q.found_at FROM quarantine q JOIN hosts h ON h.id = q.host_id
                 ORDER BY q.found_at, q.machine",
            )?
            .query_map([], |r| {
                Ok(Quarantined {
                    host: r.get(0)?,
                    machine: r.get(1)?,
                    found_at: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn quarantine_purged(&self, host_name: &str, machine: &str) -> Result<()> {
        self.core.write(|tx| {
            let a = self.quarantine_admin(tx, "purge quarantined machines")?;
            let h = host(tx, host_name)?;
            let found_at: String = tx
                .query_row(
                    "DELETE FROM quarantine WHERE host_id = ?1 AND machine = ?2 RETURNING found_at",
                    params![h.id, machine],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "machine {machine} on host {host_name} is not quarantined"
                    ))
                })?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "recovery.purge",
                    &a,
                    json!({"host": host_name, "machine": machine, "found_at": found_at, "removed": true}),
                )
                .severity(Severity::Warning),
            )?;
            Ok(())
        })
    }
}
