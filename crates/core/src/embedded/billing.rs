//! Charging running time on the embedded store: the same rules as the team
//! store's `vmdesk.bill_vm`, in one transaction per VM.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};
use serde_json::json;

use super::ledger::{self as rows, Entry};
use super::Embedded;
use crate::core::SYSTEM;
use crate::error::Result;
use crate::events::{self, NewEvent};
use crate::ledger;
use crate::model::*;
use crate::team::{Billed, Billing};
use crate::{BillingConfig, RuntimeCharge};

/// What billing reads of a VM.
struct Metered {
    name: String,
    status: String,
    ram: i64,
    disk: i64,
    cpus: i64,
    started: Option<String>,
    billed: Option<String>,
    stopped: Option<String>,
    carry: i64,
    owner: Option<i64>,
    live: Option<i64>,
}

fn parse(ts: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn fmt(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Embedded<'_> {
    /// Billing is the system's (and admins'): it charges everyone.
    fn billing_admin(&self, conn: &rusqlite::Connection) -> Result<()> {
        if !self.system {
            self.admin_me(conn, "run billing")?;
        }
        Ok(())
    }
}

impl Billing for Embedded<'_> {
    fn billable_vms(&self) -> Result<Vec<i64>> {
        let conn = self.core.db();
        self.billing_admin(&conn)?;
        let ids = conn
            .prepare_cached(
                "SELECT id FROM vms WHERE started_at IS NOT NULL
                   AND (status = 'RUNNING' OR last_stopped > coalesce(billed_until, started_at))",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    fn bill_vm(
        &self,
        vm_id: i64,
        now: DateTime<Utc>,
        observed: Option<i64>,
        cfg: BillingConfig,
    ) -> Result<Option<Billed>> {
        self.core.write(|tx| {
            self.billing_admin(tx)?;
            let (mut end_session, mut stop_vm) = (None, false);
            let row = tx
                .query_row(
                    "SELECT name, status, ram_mb, disk_gb, cpu_cores, started_at, billed_until, last_stopped,
                            billing_milli, owner_user_id, live_session_id
                     FROM vms WHERE id = ?1",
                    [vm_id],
                    |r| {
                        Ok(Metered {
                            name: r.get(0)?,
                            status: r.get(1)?,
                            ram: r.get(2)?,
                            disk: r.get(3)?,
                            cpus: r.get(4)?,
                            started: r.get(5)?,
                            billed: r.get(6)?,
                            stopped: r.get(7)?,
                            carry: r.get(8)?,
                            owner: r.get(9)?,
                            live: r.get(10)?,
                        })
                    },
                )
                .optional()?;
            let Some(Metered { name, status, ram, disk, cpus, started, billed, stopped, carry, owner, live }) = row else {
                return Ok(None);
            };
            let Some(started) = started.as_deref().and_then(parse) else { return Ok(None) };
            let from = billed.as_deref().and_then(parse).map_or(started, |b| b.max(started));
            let until = if status == "RUNNING" { now } else { stopped.as_deref().and_then(parse).unwrap_or(from) };
            let wall_seconds = (until - from).num_seconds();
            let seconds = match observed {
                // The wall clock went back past the last charge: the VM still ran.
                Some(seen) if wall_seconds < 0 && status == "RUNNING" => seen,
                Some(seen) => wall_seconds.min(seen),
                None => wall_seconds,
            };
            if seconds <= 0 {
                return Ok(None);
            }
            // Who pays: the owner, or the user of the pool VM's session.
            let payer: Option<(i64, String, Option<i64>)> = match owner {
                Some(uid) => tx.query_row("SELECT id, name FROM users WHERE id = ?1", [uid], |r| Ok((r.get(0)?, r.get(1)?, None))).optional()?,
                None => {
                    let sid = match live {
                        Some(s) => Some(s),
                        None => tx
                            .query_row(
                                "SELECT id FROM sessions WHERE vm_id = ?1 AND started_at IS NOT NULL ORDER BY id DESC LIMIT 1",
                                [vm_id],
                                |r| r.get(0),
                            )
                            .optional()?,
                    };
                    match sid {
                        Some(sid) => tx
                            .query_row(
                                "SELECT u.id, u.name, s.id FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?1",
                                [sid],
                                |r| Ok((r.get(0)?, r.get(1)?, Some(r.get(2)?))),
                            )
                            .optional()?,
                        None => None,
                    }
                }
            };
            let mark_billed = |carry: i64| -> Result<()> {
                tx.execute(
                    "UPDATE vms SET billed_until = ?2, billing_milli = ?3 WHERE id = ?1",
                    params![vm_id, fmt(until), carry],
                )?;
                Ok(())
            };
            let Some((uid, user, session)) = payer else {
                // A pool VM running with nobody's session is nobody's bill.
                mark_billed(0)?;
                return Ok(None);
            };
            let hourly_milli = ledger::hourly_milli(ledger::quote(ram, disk, cpus)?.cost, cfg.hourly_percent);
            let milli = carry + seconds * hourly_milli / 3600;
            let due = milli / 1000;
            let balance: i64 = tx.query_row("SELECT balance FROM users WHERE id = ?1", [uid], |r| r.get(0))?;
            let taken = due.min(balance);
            if taken > 0 {
                let reason = format!("{seconds} s of running VM {name}");
                rows::append(
                    tx,
                    &user,
                    Entry { user_id: uid, amount: -taken, kind: LedgerKind::Runtime, reason: &reason, vm_id: Some(vm_id), session_id: session, actor: SYSTEM },
                )?;
                events::record(
                    tx,
                    NewEvent::info(EventType::Billing, "credits.runtime", SYSTEM,
                                   json!({"user": user, "vm": name, "seconds": seconds, "amount": taken}))
                        .vm(vm_id),
                )?;
            }
            mark_billed(milli - due * 1000)?;
            let left = balance - taken;
            let exhausted = due > balance || (left == 0 && status == "RUNNING");
            if exhausted {
                events::record(
                    tx,
                    NewEvent::info(EventType::Billing, "credits.exhausted", SYSTEM,
                                   json!({"user": user, "vm": name, "due": due, "taken": taken}))
                        .severity(Severity::Critical)
                        .vm(vm_id),
                )?;
                if let Some(sid) = session.filter(|_| live.is_some()) {
                    end_session = Some(sid);
                } else if status == "RUNNING" {
                    stop_vm = true;
                }
            } else if status == "RUNNING" && hourly_milli > 0 && left * 3_600_000 / hourly_milli < cfg.warn_seconds {
                let warned: bool = tx.query_row(
                    "SELECT count(*) > 0 FROM events WHERE action = 'credits.low' AND json_extract(details, '$.user') = ?1
                       AND json_extract(details, '$.at') > ?2",
                    params![user, fmt(now - chrono::Duration::seconds(cfg.warn_seconds))],
                    |r| r.get(0),
                )?;
                if !warned {
                    events::record(
                        tx,
                        NewEvent::info(EventType::Billing, "credits.low", SYSTEM,
                                       json!({"user": user, "balance": left, "at": fmt(now),
                                              "seconds_left": left * 3_600_000 / hourly_milli, "vm": name}))
                            .severity(Severity::Warning)
                            .vm(vm_id),
                    )?;
                }
            }
            Ok(Some(Billed {
                charge: RuntimeCharge { vm: name, user, seconds, credits: taken, exhausted },
                end_session,
                stop_vm,
            }))
        })
    }
}
