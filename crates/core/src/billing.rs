//! Metered billing: the reconciled running time of each VM is charged to who
//! uses it (a user's own VM to its owner, a pool VM to the user of its
//! session) at an hourly rate derived from its size. A balance about to run
//! out is warned of; at zero the session ends and the user's VMs are stopped.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use serde_json::json;
use ts_rs::TS;

use crate::core::{system_actor, Core, Who, SYSTEM};
use crate::error::Result;
use crate::events::{self, NewEvent};
use crate::ledger::{self, Entry};
use crate::model::*;

/// How running time is priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingConfig {
    /// Credits per hour, as a percentage of the VM's price (`quote`): at 10,
    /// a VM that costs 34 to create costs 3.4 credits an hour to run.
    pub hourly_percent: i64,
    /// Warn when the balance covers less than this many seconds of running.
    pub warn_seconds: i64,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            hourly_percent: 10,
            warn_seconds: 3600,
        }
    }
}

/// One charge of running time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[ts(export)]
pub struct RuntimeCharge {
    /// The VM.
    pub vm: String,
    /// Who paid.
    pub user: String,
    /// Seconds of running time charged for.
    pub seconds: i64,
    /// Credits taken.
    pub credits: i64,
    /// Whether the balance ran out (the session ended, the VMs were stopped).
    pub exhausted: bool,
}

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

/// The clocks at a billing pass: the wall clock dates charges; the monotonic
/// clock measures how much time really passed since the previous pass.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    /// The wall clock.
    pub wall: DateTime<Utc>,
    /// The monotonic clock.
    pub mono: Instant,
}

/// A difference between the wall and monotonic clocks over one pass larger
/// than this is a clock jump (an event).
const JUMP: Duration = Duration::from_secs(5);

impl Core {
    /// Charges the running time of every VM up to `now` (the caller's clock,
    /// so that tests can move it): a running VM up to `now`, a VM stopped
    /// since its last charge up to when it stopped. Returns the charges.
    /// Time is measured by the wall clock alone: see [`Core::bill_pass`].
    pub fn bill_runtime(&self, now: DateTime<Utc>) -> Result<Vec<RuntimeCharge>> {
        self.bill_at(now, None)
    }

    /// [`Core::bill_runtime`] at a pass whose monotonic clock is known too:
    /// after a previous pass of this process, no VM is charged for more than
    /// the monotonic time between the two, so a wall clock that jumps forward
    /// bills nothing extra and one that jumps back gives no free time; a
    /// jump is an event.
    pub fn bill_pass(&self, pass: Pass) -> Result<Vec<RuntimeCharge>> {
        let previous = self
            .last_bill
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(pass);
        let observed = previous.map(|prev| {
            let mono = pass.mono.saturating_duration_since(prev.mono);
            let wall = (pass.wall - prev.wall).num_milliseconds();
            let mono_ms = i64::try_from(mono.as_millis()).unwrap_or(i64::MAX);
            let jump_ms = wall.saturating_sub(mono_ms);
            if jump_ms.unsigned_abs() > JUMP.as_millis() as u64 {
                let details = json!({"jump_seconds": jump_ms / 1000, "wall_seconds": wall / 1000,
                                     "observed_seconds": mono_ms / 1000,
                                     "billed": "the observed time only"});
                let res =
                    self.reading()
                        .events()
                        .system_note("clock.jump", Severity::Warning, details);
                if let Err(e) = res {
                    tracing::warn!(error = %e.one_line(), "recording a clock jump");
                }
            }
            i64::try_from(mono.as_secs()).unwrap_or(i64::MAX)
        });
        self.bill_at(pass.wall, observed)
    }

    /// Charges up to `now`; `observed` caps each charge at the seconds the
    /// monotonic clock saw since this process's previous pass.
    fn bill_at(&self, now: DateTime<Utc>, observed: Option<i64>) -> Result<Vec<RuntimeCharge>> {
        if let Some(t) = self.team() {
            let mut charges = Vec::new();
            for id in t.billable_vms()? {
                let Some(b) = t.bill_vm(id, now, observed, self.opts.billing)? else {
                    continue;
                };
                if let Some(sid) = b.end_session {
                    // At zero the session ends gracefully (its VM is shut down by a worker).
                    if let Err(e) = self.session_close(t.login(), sid, false) {
                        tracing::warn!(session = sid, error = %e.one_line(), "ending a session at zero credits");
                    }
                }
                if b.stop_vm {
                    let vm = &b.charge.vm;
                    if let Err(e) = self.vm_action_team(t, vm, VmAction::Stop, true) {
                        tracing::warn!(%vm, error = %e.one_line(), "stopping a VM at zero credits");
                    }
                }
                charges.push(b.charge);
            }
            return Ok(charges);
        }
        let ids: Vec<i64> = self
            .db()
            .prepare_cached(
                "SELECT id FROM vms WHERE started_at IS NOT NULL
                   AND (status = 'RUNNING' OR last_stopped > coalesce(billed_until, started_at))",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut charges = Vec::new();
        let mut to_stop: Vec<(String, String)> = Vec::new();
        for id in ids {
            let Some(charge) = self.bill_vm(id, now, observed, &mut to_stop)? else {
                continue;
            };
            charges.push(charge);
        }
        // The balance ran out: the user's own VMs are shut down, as a user would.
        for (user, vm) in to_stop {
            if let Err(e) = self.vm_action_by(&system_actor(), &vm, VmAction::Stop) {
                tracing::warn!(%user, %vm, error = %e.one_line(), "stopping a VM at zero credits");
            }
        }
        Ok(charges)
    }

    /// A billing pass now (see [`Core::bill_pass`]).
    pub fn bill_runtime_now(&self) -> Result<Vec<RuntimeCharge>> {
        self.bill_pass(Pass {
            wall: Utc::now(),
            mono: Instant::now(),
        })
    }

    fn bill_vm(
        &self,
        vm_id: i64,
        now: DateTime<Utc>,
        observed: Option<i64>,
        to_stop: &mut Vec<(String, String)>,
    ) -> Result<Option<RuntimeCharge>> {
        let cfg = self.opts.billing;
        let mut ended_sessions = Vec::new();
        let charge = self.write(|tx| {
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
                ledger::append(
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
                    ended_sessions.push(sid);
                } else if status == "RUNNING" {
                    to_stop.push((user.clone(), name.clone()));
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
            Ok(Some(RuntimeCharge { vm: name, user, seconds, credits: taken, exhausted }))
        })?;
        // At zero the session ends gracefully (its VM is shut down by a worker).
        for sid in ended_sessions {
            if let Err(e) = self.session_close_by(Who::System, sid, false) {
                tracing::warn!(session = sid, error = %e.one_line(), "ending a session at zero credits");
            }
        }
        Ok(charge)
    }
}
