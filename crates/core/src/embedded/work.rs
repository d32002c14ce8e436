//! Workers on the embedded store: a worker is alive while it holds its lock
//! file in the data directory (crate::worker), so registering needs no row.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;

use super::{session_by_id, Embedded};
use crate::core::SYSTEM;
use crate::error::{Error, Result};
use crate::events::{self, NewEvent};
use crate::model::*;
use crate::store::now;
use crate::team::Work;

impl Embedded<'_> {
    /// Driving and recovering the work of others is the system's (at a
    /// start) and admins'.
    fn work_admin(&self, conn: &Connection, action: &'static str) -> Result<()> {
        if self.me(conn)?.role != Role::Admin {
            return Err(Error::AdminOnly(action));
        }
        Ok(())
    }
}

impl Work for Embedded<'_> {
    /// The worker's lock file is its registration.
    fn register_worker(&self, _worker: &str) -> Result<()> {
        Ok(())
    }

    fn worker_alive(&self, worker: &str) -> Result<bool> {
        Ok(crate::worker::is_alive(self.core.data_dir(), worker))
    }

    fn claim_pending(&self, worker: &str) -> Result<Option<(String, i64, String)>> {
        self.core.write(|tx| {
            self.work_admin(tx, "drive pending work")?;
            let vm: Option<i64> = tx
                .query_row(
                    "SELECT id FROM vms WHERE status = 'CREATING' AND worker IS NULL ORDER BY id LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = vm {
                tx.execute("UPDATE vms SET worker = ?2 WHERE id = ?1", params![id, worker])?;
                return Ok(Some(("vm".to_owned(), id, VmStatus::Creating.to_string())));
            }
            let session: Option<(i64, String)> = tx
                .query_row(
                    "SELECT id, status FROM sessions
                     WHERE status IN ('REQUESTED', 'TERMINATING') AND worker IS NULL
                     ORDER BY id LIMIT 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((id, status)) = session else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE sessions SET worker = ?2 WHERE id = ?1",
                params![id, worker],
            )?;
            Ok(Some(("session".to_owned(), id, status)))
        })
    }

    fn claimed_work(&self) -> Result<Vec<(String, i64, String)>> {
        let conn = self.core.db();
        self.work_admin(&conn, "run recovery")?;
        let rows = conn
            .prepare_cached(
                "SELECT 'vm', id, worker FROM vms WHERE status = 'CREATING' AND worker IS NOT NULL
                 UNION ALL
                 SELECT 'session', id, worker FROM sessions
                  WHERE status IN ('REQUESTED', 'STARTING', 'TERMINATING') AND worker IS NOT NULL",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    fn reclaim(&self, kind: &str, id: i64, dead: &str, me: &str) -> Result<bool> {
        self.core.write(|tx| {
            self.work_admin(tx, "run recovery")?;
            let sql = if kind == "vm" {
                "UPDATE vms SET worker = ?3 WHERE id = ?1 AND status = 'CREATING' AND worker = ?2"
            } else {
                "UPDATE sessions SET worker = ?3 WHERE id = ?1 AND worker = ?2"
            };
            Ok(tx.execute(sql, params![id, dead, me])? > 0)
        })
    }

    fn recovered_vm(&self, id: i64, me: &str, dead: &str, machine: &str) -> Result<()> {
        self.core.write(|tx| {
            self.work_admin(tx, "run recovery")?;
            let n = tx.execute(
                "UPDATE vms SET status = 'FAILED_TO_START', worker = NULL, updated_at = ?3
                 WHERE id = ?1 AND status = 'CREATING' AND worker = ?2",
                params![id, me, now()],
            )?;
            if n > 0 {
                events::record(
                    tx,
                    NewEvent::info(EventType::System, "recovery.vm", SYSTEM,
                                   json!({"was": VmStatus::Creating, "now": VmStatus::FailedToStart,
                                          "reason": "its creator stopped before it finished", "worker": dead,
                                          "machine": machine}))
                        .severity(Severity::Warning)
                        .vm(id),
                )?;
            }
            Ok(())
        })
    }

    fn recovered_session(&self, id: i64, me: &str, dead: &str, vm_status: VmStatus) -> Result<()> {
        self.core.write(|tx| {
            self.work_admin(tx, "run recovery")?;
            let mine: bool = tx.query_row(
                "SELECT count(*) > 0 FROM sessions WHERE id = ?1 AND worker = ?2",
                params![id, me],
                |r| r.get(0),
            )?;
            if !mine {
                return Ok(());
            }
            let s = session_by_id(tx, id)?;
            let mut details =
                json!({"was": s.status, "worker": dead, "reason": "its worker stopped before it finished"});
            // A session being closed only gets its event: its worker goes on
            // with the shutdown (see Core::recover).
            if s.status != SessionStatus::Terminating {
                let ts = now();
                let now_status = if vm_status == VmStatus::Running {
                    SessionStatus::Active
                } else {
                    SessionStatus::Failed
                };
                tx.execute(
                    "UPDATE sessions SET status = ?2, worker = NULL, updated_at = ?3,
                            started_at = CASE WHEN ?2 = 'ACTIVE' THEN ?3 ELSE started_at END,
                            ended_at = CASE WHEN ?2 = 'FAILED' THEN ?3 ELSE ended_at END,
                            error = CASE WHEN ?2 = 'FAILED' THEN ?4 ELSE error END
                     WHERE id = ?1",
                    params![id, now_status, ts, "its worker stopped before the VM was started"],
                )?;
                tx.execute(
                    "UPDATE vms SET status = ?2, updated_at = ?3,
                            last_stopped = CASE WHEN ?2 = 'STOPPED' THEN ?3 ELSE last_stopped END
                     WHERE id = ?1",
                    params![s.vm_id, vm_status, ts],
                )?;
                details["now"] = json!(now_status);
                details["vm_status"] = json!(vm_status);
            }
            events::record(
                tx,
                NewEvent::info(EventType::System, "recovery.session", SYSTEM, details)
                    .severity(Severity::Warning)
                    .vm(s.vm_id)
                    .session(id),
            )?;
            Ok(())
        })
    }

    /// One desk has no `vmdesk serve`.
    fn serve_leader(&self) -> Result<Option<(String, i32, String)>> {
        Ok(None)
    }
}
