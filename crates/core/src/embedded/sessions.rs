//! Pool sessions on the embedded store: allocation (batched: one commit
//! for every requester of this process waiting at that moment) and each
//! step of a session's life.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;

use super::DbGuard;
use super::{session_by_id, session_row, session_select, user, Embedded};
use crate::error::{Error, Result};
use crate::events::{self, NewEvent};
use crate::model::*;
use crate::store::{self, now};
use crate::team::Sessions;

/// Inserts a REQUESTED session on the least recently stopped free VM of the
/// pool, in one statement: selection and insertion cannot be split by another
/// writer, and the unique index on live sessions backs it. Returns the session id.
fn allocate(
    tx: &Connection,
    user_id: i64,
    project_id: i64,
    workspace_id: Option<i64>,
    vm_type: Option<&str>,
    worker: Option<&str>,
) -> Result<Option<(i64, i64)>> {
    // Two statements so that each matches its partial index exactly.
    let sql = if vm_type.is_some() {
        "INSERT INTO sessions (vm_id, user_id, project_id, workspace_id, status, worker, created_at, updated_at)
         SELECT v.id, ?1, ?2, ?3, 'REQUESTED', ?4, ?5, ?5 FROM vms v INDEXED BY vms_free_by_type
         WHERE v.project_id = ?2 AND v.vm_type = ?6
           AND v.live_session_id IS NULL AND v.status IN ('STOPPED', 'RUNNING')
         ORDER BY v.last_stopped, v.id LIMIT 1
         RETURNING id, vm_id"
    } else {
        "INSERT INTO sessions (vm_id, user_id, project_id, workspace_id, status, worker, created_at, updated_at)
         SELECT v.id, ?1, ?2, ?3, 'REQUESTED', ?4, ?5, ?5 FROM vms v INDEXED BY vms_free
         WHERE v.project_id = ?2 AND (?6 IS NULL)
           AND v.live_session_id IS NULL AND v.status IN ('STOPPED', 'RUNNING')
         ORDER BY v.last_stopped, v.id LIMIT 1
         RETURNING id, vm_id"
    };
    Ok(tx
        .prepare_cached(sql)?
        .query_row(
            params![user_id, project_id, workspace_id, worker, now(), vm_type],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// Allocates one session inside an open transaction (see [`Core::allocate_batched`]).
fn open_in_tx(
    tx: &Connection,
    actor: &str,
    req: &SessionRequest,
    worker: Option<&str>,
) -> Result<Session> {
    let u = user(tx, actor)?;
    let (pid, weekly): (i64, Option<i64>) = tx
        .prepare_cached("SELECT id, weekly_hours FROM projects WHERE name = ?1")?
        .query_row([&req.project], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .ok_or_else(|| Error::UnknownProject(req.project.clone()))?;
    if let Some(hours) = weekly {
        quota_check(tx, u.id, pid, &req.project, hours)?;
    }
    let wid = match &req.workspace {
        None => None,
        Some(w) => Some(
            tx.prepare_cached("SELECT id FROM workspaces WHERE project_id = ?1 AND name = ?2")?
                .query_row(params![pid, w], |r| r.get::<_, i64>(0))
                .optional()?
                .ok_or_else(|| Error::UnknownWorkspace {
                    project: req.project.clone(),
                    workspace: w.clone(),
                })?,
        ),
    };
    let vm_type = req.vm_type.as_deref();
    let Some((sid, vm_id)) = allocate(tx, u.id, pid, wid, vm_type, worker)? else {
        return Err(why_none(tx, &req.project, pid, vm_type)?);
    };
    events::record(
        tx,
        NewEvent::info(
            EventType::Session,
            "session.open",
            &u.name,
            json!({"project": req.project, "workspace": req.workspace, "vm_type": req.vm_type,
                   "status": SessionStatus::Requested}),
        )
        .vm(vm_id)
        .session(sid),
    )?;
    session_by_id(tx, sid)
}

/// Refuses a session when the user held `hours` or more of sessions in the
/// project over the last 7 days (what ran inside those 7 days counts).
fn quota_check(tx: &Connection, user_id: i64, pid: i64, project: &str, hours: i64) -> Result<()> {
    let at = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&chrono::Utc))
            .ok()
    };
    let now = chrono::Utc::now();
    let week_ago = now - chrono::Duration::days(7);
    let since = week_ago.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut used = 0i64;
    let mut stmt = tx.prepare_cached(
        "SELECT started_at, ended_at FROM sessions INDEXED BY sessions_user_project
         WHERE user_id = ?1 AND project_id = ?2 AND started_at IS NOT NULL
           AND (ended_at IS NULL OR ended_at > ?3)",
    )?;
    let rows = stmt.query_map(params![user_id, pid, since], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
    })?;
    for row in rows {
        let (started, ended) = row?;
        let from = at(&started).unwrap_or(now).max(week_ago);
        let to = ended.as_deref().and_then(at).unwrap_or(now).min(now);
        used += (to - from).num_seconds().max(0);
    }
    if used >= hours * 3600 {
        return Err(Error::QuotaUsed {
            project: project.to_owned(),
            hours,
            used_minutes: used / 60,
        });
    }
    Ok(())
}

/// An allocation waiting for the next batch.
struct AllocJob {
    actor: String,
    req: SessionRequest,
    worker: Option<String>,
    slot: Arc<Mutex<Option<Result<Session>>>>,
}

/// Allocations waiting to be committed together (group commit).
#[derive(Default)]
pub(crate) struct AllocQueue {
    jobs: Mutex<Vec<AllocJob>>,
    /// Signalled when a batch is done or the database is released.
    turn: Condvar,
}

impl AllocQueue {
    /// Wakes the waiting requesters so that one of them leads the next batch.
    pub(crate) fn wake(&self) {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if !jobs.is_empty() {
            self.turn.notify_all();
        }
    }
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Why nothing could be allocated.
fn why_none(
    tx: &Connection,
    project: &str,
    project_id: i64,
    vm_type: Option<&str>,
) -> Result<Error> {
    let (total, of_type, busy, ready): (u64, u64, u64, u64) = tx.query_row(
        "SELECT count(*),
                count(*) FILTER (WHERE ?2 IS NULL OR vm_type = ?2),
                count(*) FILTER (WHERE (?2 IS NULL OR vm_type = ?2) AND live_session_id IS NOT NULL),
                count(*) FILTER (WHERE (?2 IS NULL OR vm_type = ?2) AND live_session_id IS NULL
                                  AND status IN ('STOPPED', 'RUNNING'))
         FROM vms WHERE project_id = ?1",
        params![project_id, vm_type],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let project = project.to_owned();
    Ok(match vm_type {
        _ if total == 0 => Error::PoolEmpty(project),
        Some(t) if of_type == 0 => Error::NoVmOfType {
            project,
            vm_type: t.to_owned(),
        },
        _ if busy == of_type => Error::AllInUse {
            project,
            total: of_type,
        },
        _ => Error::NoneReady {
            project,
            busy,
            not_ready: of_type - busy - ready,
        },
    })
}

pub(crate) fn list(conn: &Connection, actor: &User, all: bool, limit: i64) -> Result<Vec<Session>> {
    let mut stmt = conn.prepare_cached(concat!(
        session_select!(),
        "WHERE ?1 OR s.user_id = ?2 ORDER BY s.id DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![all, actor.id, limit], session_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Embedded<'_> {
    /// Allocates a session. Concurrent requesters of this process are served
    /// in batches: whoever finds the database free commits every waiting
    /// allocation in one transaction, each inside its own savepoint so that a
    /// refused one changes nothing. Fewer commits, and no requester waits more
    /// than about two batches.
    pub(crate) fn allocate_batched(
        &self,
        actor: &str,
        req: &SessionRequest,
        worker: Option<String>,
    ) -> Result<Session> {
        let slot = Arc::new(Mutex::new(None));
        let queue = &self.core.alloc;
        queue
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(AllocJob {
                actor: actor.to_owned(),
                req: req.clone(),
                worker,
                slot: Arc::clone(&slot),
            });
        loop {
            if let Some(done) = take(&slot) {
                return done;
            }
            match self.core.conn.try_lock() {
                Ok(held) => {
                    // Released (and the others woken) when `db` drops.
                    let mut db = DbGuard::new(held, queue);
                    let jobs =
                        std::mem::take(&mut *queue.jobs.lock().unwrap_or_else(|p| p.into_inner()));
                    if !jobs.is_empty() {
                        self.run_batch(&mut db, jobs);
                    }
                }
                Err(_) => {
                    let jobs = queue.jobs.lock().unwrap_or_else(|p| p.into_inner());
                    // Checked under the queue lock: whoever releases the database
                    // signals under it too, so no wake-up is missed; the timeout
                    // is only a safety net.
                    if slot.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
                        let _ = queue.turn.wait_timeout(jobs, Duration::from_millis(50));
                    }
                }
            }
        }
    }

    fn run_batch(&self, db: &mut store::Db, jobs: Vec<AllocJob>) {
        let committed = store::write(db, |tx| {
            let mut results = Vec::with_capacity(jobs.len());
            for job in &jobs {
                tx.execute_batch("SAVEPOINT alloc")?;
                let result = open_in_tx(tx, &job.actor, &job.req, job.worker.as_deref());
                tx.execute_batch(if result.is_ok() {
                    "RELEASE alloc"
                } else {
                    "ROLLBACK TO alloc; RELEASE alloc"
                })?;
                results.push(result);
            }
            Ok(results)
        });
        match committed {
            Ok(results) => {
                for (job, result) in jobs.iter().zip(results) {
                    *job.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                }
                if let Some(notify) = &self.core.opts.on_change {
                    notify();
                }
            }
            Err(e) => {
                let why = e.one_line();
                for job in &jobs {
                    *job.slot.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Err(Error::Batch(why.clone())));
                }
            }
        }
    }
}

impl Embedded<'_> {
    fn limited(&self, conn: &Connection) -> Result<Vec<crate::limits::LimitedSession>> {
        let rows: Vec<(crate::limits::LimitedSession, i64)> = conn
            .prepare_cached(
                "SELECT s.id, u.name, p.name, p.max_session_minutes, p.idle_minutes,
                        p.idle_cpu_percent, p.weekly_hours, s.started_at, s.idle_since,
                        s.idle_warned_at, s.length_warned_at, s.vm_id,
                        EXISTS (SELECT 1 FROM consoles c WHERE c.vm_id = s.vm_id)
                 FROM sessions s JOIN users u ON u.id = s.user_id
                 JOIN projects p ON p.id = s.project_id
                 WHERE s.status = 'ACTIVE' AND s.started_at IS NOT NULL
                   AND (p.max_session_minutes IS NOT NULL OR p.idle_minutes IS NOT NULL)
                 ORDER BY s.id",
            )?
            .query_map([], |r| {
                Ok((
                    crate::limits::LimitedSession {
                        id: r.get(0)?,
                        user: r.get(1)?,
                        project: r.get(2)?,
                        limits: ProjectLimits {
                            max_session_minutes: r.get(3)?,
                            idle_minutes: r.get(4)?,
                            idle_cpu_percent: r.get(5)?,
                            weekly_hours: r.get(6)?,
                        },
                        started_at: r.get(7)?,
                        idle_since: r.get(8)?,
                        idle_warned_at: r.get(9)?,
                        length_warned_at: r.get(10)?,
                        vm: Vm::default(),
                        console_open: r.get(12)?,
                    },
                    r.get(11)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(mut s, vm_id)| {
                s.vm = super::vm_by_id(conn, vm_id)?;
                Ok(s)
            })
            .collect()
    }
}

impl Sessions for Embedded<'_> {
    fn sessions_limited(&self) -> Result<Vec<crate::limits::LimitedSession>> {
        let conn = self.core.db();
        self.admin_me(&conn, "enforce project limits")?;
        self.limited(&conn)
    }

    fn session_limit_mark(&self, id: i64, mark: &crate::limits::LimitMark) -> Result<()> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "enforce project limits")?;
            let s = session_by_id(tx, id)?;
            let (rule, at) = match &mark.warn {
                Some((rule, at)) => (Some(rule.as_str()), Some(at.as_str())),
                None => (None, None),
            };
            tx.execute(
                "UPDATE sessions SET idle_since = ?2,
                        idle_warned_at = CASE WHEN ?2 IS NULL THEN NULL
                                              WHEN ?3 = 'idle' THEN ?5 ELSE idle_warned_at END,
                        length_warned_at = CASE WHEN ?3 = 'max_session_length' THEN ?5
                                                ELSE length_warned_at END
                 WHERE id = ?1",
                params![id, mark.idle_since, rule, at, mark.at],
            )?;
            let details = |extra: serde_json::Value| {
                let mut d = json!({"user": s.user, "vm": s.vm_name, "project": s.project});
                if let (Some(d), Some(e)) = (d.as_object_mut(), extra.as_object()) {
                    d.extend(e.clone());
                }
                d
            };
            if let (Some(rule), Some(at)) = (rule, at) {
                events::record(
                    tx,
                    NewEvent::info(
                        EventType::Session,
                        "session.limit_warning",
                        &a.name,
                        details(json!({"rule": rule, "closes_at": at})),
                    )
                    .severity(Severity::Warning)
                    .vm(s.vm_id)
                    .session(id),
                )?;
            }
            if let Some(rule) = &mark.reached {
                events::record(
                    tx,
                    NewEvent::info(
                        EventType::Session,
                        "session.limit_reached",
                        &a.name,
                        details(json!({"rule": rule})),
                    )
                    .severity(Severity::Warning)
                    .vm(s.vm_id)
                    .session(id),
                )?;
            }
            Ok(())
        })
    }

    fn session_open(&self, req: &SessionRequest, worker: Option<&str>) -> Result<Session> {
        self.allocate_batched(self.actor, req, worker.map(str::to_owned))
    }

    fn session_list(&self, all: bool) -> Result<Vec<Session>> {
        let conn = self.core.db();
        let a = self.me(&conn)?;
        if all && a.role != Role::Admin {
            return Err(Error::AdminOnly("list every user's sessions"));
        }
        list(&conn, &a, all, 10_000)
    }

    fn session(&self, id: i64) -> Result<Session> {
        let conn = self.core.db();
        let a = self.me(&conn)?;
        let s = session_by_id(&conn, id)?;
        if s.user != a.name && a.role != Role::Admin {
            return Err(Error::UnknownSession(id));
        }
        Ok(s)
    }

    fn session_close_by(&self, id: i64, worker: Option<&str>) -> Result<(Session, bool)> {
        let drive = self.core.write(|tx| {
            let a = self.me(tx)?;
            let s = session_by_id(tx, id)?;
            if s.user != a.name && a.role != Role::Admin {
                return Err(Error::Forbidden { user: a.name, action: format!("close session {id} of {}", s.user) });
            }
            let claimed_by: Option<String> =
                tx.query_row("SELECT worker FROM sessions WHERE id = ?1", [id], |r| r.get(0))?;
            let idle = claimed_by.as_deref().is_none_or(|w| !self.core.worker_alive(w));
            match s.status {
                SessionStatus::Requested if idle => {
                    // Nothing was started for it: cancel.
                    tx.execute(
                        "UPDATE sessions SET status = 'COMPLETED', worker = NULL, updated_at = ?2, ended_at = ?2
                         WHERE id = ?1",
                        params![id, now()],
                    )?;
                    events::record(
                        tx,
                        NewEvent::info(EventType::Session, "session.cancel", &a.name,
                                       json!({"was": s.status, "now": SessionStatus::Completed}))
                            .vm(s.vm_id)
                            .session(id),
                    )?;
                    Ok(false)
                }
                SessionStatus::Active => {
                    tx.execute(
                        "UPDATE sessions SET status = 'TERMINATING', worker = ?2, updated_at = ?3 WHERE id = ?1",
                        params![id, worker, now()],
                    )?;
                    tx.execute(
                        "UPDATE vms SET status = 'STOPPING', updated_at = ?2 WHERE id = ?1 AND status = 'RUNNING'",
                        params![s.vm_id, now()],
                    )?;
                    events::record(
                        tx,
                        NewEvent::info(EventType::Session, "session.close", &a.name,
                                       json!({"was": s.status, "now": SessionStatus::Terminating}))
                            .vm(s.vm_id)
                            .session(id),
                    )?;
                    Ok(worker.is_some())
                }
                SessionStatus::Terminating if worker.is_some() && idle => {
                    tx.execute("UPDATE sessions SET worker = ?2 WHERE id = ?1", params![id, worker])?;
                    Ok(true)
                }
                SessionStatus::Terminating => Ok(false),
                status => Err(Error::SessionState { id, status: status.to_string(), action: "closed" }),
            }
        })?;
        Ok((session_by_id(&self.core.db(), id)?, drive))
    }

    fn session_starting(&self, id: i64, worker: &str) -> Result<Session> {
        self.core.write(|tx| {
            let n = tx.execute(
                "UPDATE sessions SET status = 'STARTING', updated_at = ?3
                 WHERE id = ?1 AND status = 'REQUESTED' AND worker = ?2",
                params![id, worker, now()],
            )?;
            let s = session_by_id(tx, id)?;
            if n == 0 {
                return Err(Error::SessionState { id, status: s.status.to_string(), action: "started by this process" });
            }
            tx.execute(
                "UPDATE vms SET status = 'STARTING', updated_at = ?2 WHERE id = ?1 AND status <> 'RUNNING'",
                params![s.vm_id, now()],
            )?;
            events::record(
                tx,
                NewEvent::info(EventType::Session, "session.starting", &s.user,
                               json!({"was": SessionStatus::Requested, "now": SessionStatus::Starting}))
                    .vm(s.vm_id)
                    .session(id),
            )?;
            session_by_id(tx, id)
        })
    }

    fn session_started(&self, id: i64, machine: &str) -> Result<Session> {
        self.core.write(|tx| {
            let s = session_by_id(tx, id)?;
            let ts = now();
            tx.execute(
                "UPDATE sessions SET status = 'ACTIVE', worker = NULL, started_at = ?2, updated_at = ?2
                 WHERE id = ?1",
                params![id, ts],
            )?;
            tx.execute(
                "UPDATE vms SET status = 'RUNNING', updated_at = ?2 WHERE id = ?1",
                params![s.vm_id, ts],
            )?;
            events::record(
                tx,
                NewEvent::info(EventType::Session, "session.active", &s.user,
                               json!({"was": SessionStatus::Starting, "now": SessionStatus::Active,
                                      "machine": machine}))
                    .vm(s.vm_id)
                    .session(id),
            )?;
            session_by_id(tx, id)
        })
    }

    fn session_start_failed(&self, id: i64, reason: &str, status: VmStatus) -> Result<()> {
        self.core.write(|tx| {
            let s = session_by_id(tx, id)?;
            let ts = now();
            tx.execute(
                "UPDATE sessions SET status = 'FAILED', worker = NULL, error = ?2, updated_at = ?3, ended_at = ?3
                 WHERE id = ?1",
                params![id, reason, ts],
            )?;
            // Sent to the back of the queue: least recently stopped goes first.
            tx.execute(
                "UPDATE vms SET status = ?2, last_stopped = ?3, updated_at = ?3 WHERE id = ?1",
                params![s.vm_id, status, ts],
            )?;
            events::record(
                tx,
                NewEvent::info(EventType::Session, "session.failed", &s.user,
                               json!({"was": SessionStatus::Starting, "now": SessionStatus::Failed,
                                      "reason": reason, "vm_status": status}))
                    .severity(Severity::Warning)
                    .vm(s.vm_id)
                    .session(id),
            )?;
            Ok(())
        })
    }

    fn session_stopping(&self, id: i64, force_off_at: &str) -> Result<()> {
        // The deadline is committed before the guest is asked to shut down,
        // so that every window sees when it will be forced off.
        self.core.write(|tx| {
            let s = session_by_id(tx, id)?;
            tx.execute(
                "UPDATE vms SET status = 'STOPPING', updated_at = ?2,
                        metadata = json_set(metadata, '$.force_off_at', ?3)
                 WHERE id = ?1 AND status IN ('RUNNING', 'STOPPING', 'STARTING', 'UNKNOWN')",
                params![s.vm_id, now(), force_off_at],
            )?;
            Ok(())
        })
    }

    fn session_ended(&self, id: i64, end: SessionStatus, forced_off: bool) -> Result<Session> {
        self.core.write(|tx| {
            let a = self.me(tx)?;
            let s = session_by_id(tx, id)?;
            let ts = now();
            tx.execute(
                "UPDATE sessions SET status = ?2, worker = NULL, updated_at = ?3, ended_at = ?3 WHERE id = ?1",
                params![id, end, ts],
            )?;
            tx.execute(
                "UPDATE vms SET status = 'STOPPED', last_stopped = ?2, updated_at = ?2,
                        metadata = json_remove(metadata, '$.force_off_at') WHERE id = ?1",
                params![s.vm_id, ts],
            )?;
            events::record(
                tx,
                NewEvent::info(EventType::Session, "session.ended", &a.name,
                               json!({"was": SessionStatus::Terminating, "now": end, "user": s.user,
                                      "forced_off": forced_off}))
                    .vm(s.vm_id)
                    .session(id),
            )?;
            session_by_id(tx, id)
        })
    }

    fn session_close_failed(&self, id: i64, reason: &str) -> Result<()> {
        // Left TERMINATING and unclaimed: a later worker tries again.
        self.core.write(|tx| {
            let a = self.me(tx)?;
            let s = session_by_id(tx, id)?;
            tx.execute(
                "UPDATE sessions SET worker = NULL, error = ?2 WHERE id = ?1",
                params![id, reason],
            )?;
            tx.execute(
                "UPDATE vms SET metadata = json_remove(metadata, '$.force_off_at') WHERE id = ?1",
                [s.vm_id],
            )?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Session,
                    "session.close_failed",
                    &a.name,
                    json!({"reason": reason}),
                )
                .severity(Severity::Warning)
                .vm(s.vm_id)
                .session(id),
            )?;
            Ok(())
        })
    }
}
