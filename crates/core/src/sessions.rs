//! Sessions: exclusive allocation of a pool VM, driving a session through its
//! states on the VM's host, and settling what a crashed worker left.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;

use crate::core::{
    session_by_id, session_row, session_select, user, vm_by_id, Core, DbGuard, SYSTEM,
};
use crate::error::{Error, Result};
use crate::events::{self, NewEvent};
use crate::model::*;
use crate::provider::{PowerState, Provider};
use crate::store::{self, now};
use crate::validate;

/// A row id and the worker that holds it.
type Claimed = (i64, String);

/// How often a transition re-reads the power state while it waits.
const POLL: Duration = Duration::from_millis(100);

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
    let pid: i64 = tx
        .prepare_cached("SELECT id FROM projects WHERE name = ?1")?
        .query_row([&req.project], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::UnknownProject(req.project.clone()))?;
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

/// Waits until `done` holds for the machine's power state, or the timeout.
pub(crate) fn wait_for(
    provider: &dyn Provider,
    machine: &str,
    timeout: Duration,
    done: impl Fn(PowerState) -> bool,
) -> Result<PowerState, crate::provider::ProviderError> {
    // A timeout too long to add never comes (no overflow panic).
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let state = provider.power_state(machine)?;
        if done(state) || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(state);
        }
        std::thread::sleep(POLL);
    }
}

/// Shuts a machine down: ACPI first, cut off after `timeout`. Returns whether
/// it had to be forced off.
pub(crate) fn power_off(
    p: &dyn Provider,
    machine: &str,
    timeout: Duration,
) -> Result<bool, crate::provider::ProviderError> {
    if p.power_state(machine)?.is_off() {
        return Ok(false);
    }
    // A guest without ACPI support refuses: then only the timeout is left.
    let _ = p.shutdown(machine);
    if wait_for(p, machine, timeout, PowerState::is_off)?.is_off() {
        return Ok(false);
    }
    p.force_off(machine)?;
    wait_for(p, machine, Duration::from_secs(30), PowerState::is_off)?;
    Ok(true)
}

pub(crate) fn vm_status_of(state: PowerState) -> VmStatus {
    match state {
        PowerState::Running => VmStatus::Running,
        PowerState::Stopped | PowerState::Deallocated => VmStatus::Stopped,
        PowerState::Starting => VmStatus::Starting,
        PowerState::Stopping => VmStatus::Stopping,
        PowerState::Unknown => VmStatus::Unknown,
    }
}

impl Core {
    /// Opens a session on a free VM of a project's pool. With `wait`, drives it
    /// to ACTIVE (or FAILED) before returning; without, returns it REQUESTED and
    /// leaves it to a worker.
    pub fn session_open(&self, actor: &str, req: &SessionRequest, wait: bool) -> Result<Session> {
        validate::name("project", &req.project)?;
        if let Some(w) = &req.workspace {
            validate::name("workspace", w)?;
        }
        if let Some(t) = &req.vm_type {
            validate::name("VM type", t)?;
        }
        let worker = if wait {
            Some(self.worker_id()?.to_owned())
        } else {
            None
        };
        if let Some(t) = self.team_as(actor)? {
            let opened = t.session_open(req, worker.as_deref())?;
            return if wait {
                self.drive_start(opened.id)
            } else {
                Ok(opened)
            };
        }
        let opened = self.allocate_batched(actor, req, worker)?;
        if wait {
            self.drive_start(opened.id)
        } else {
            Ok(opened)
        }
    }

    /// Allocates a session. Concurrent requesters of this process are served
    /// in batches: whoever finds the database free commits every waiting
    /// allocation in one transaction, each inside its own savepoint so that a
    /// refused one changes nothing. Fewer commits, and no requester waits more
    /// than about two batches.
    fn allocate_batched(
        &self,
        actor: &str,
        req: &SessionRequest,
        worker: Option<String>,
    ) -> Result<Session> {
        let slot = Arc::new(Mutex::new(None));
        let queue = &self.alloc;
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
            match self.conn.try_lock() {
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
                if let Some(notify) = &self.opts.on_change {
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

    /// Closes a session: its VM is shut down (forced off after the shutdown
    /// timeout) and the session COMPLETED. Without `wait`, returns it
    /// TERMINATING and leaves the shutdown to a worker.
    pub fn session_close(&self, actor: &str, id: i64, wait: bool) -> Result<Session> {
        if let Some(t) = self.team_as(actor)? {
            let worker = if wait {
                Some(self.worker_id()?.to_owned())
            } else {
                None
            };
            let (s, drive) = t.session_close_by(id, worker.as_deref())?;
            return if drive {
                self.drive_close(id, SessionStatus::Completed, actor)
            } else {
                Ok(s)
            };
        }
        self.session_close_by(crate::core::Who::User(actor), id, wait)
    }

    /// [`Core::session_close`] by a user or the system.
    pub(crate) fn session_close_by(
        &self,
        who: crate::core::Who<'_>,
        id: i64,
        wait: bool,
    ) -> Result<Session> {
        let mut actor = String::new();
        let worker = if wait {
            Some(self.worker_id()?.to_owned())
        } else {
            None
        };
        enum Next {
            Done,
            Drive,
        }
        let next = self.write(|tx| {
            let a = who.resolve(tx)?;
            actor.clone_from(&a.name);
            let s = session_by_id(tx, id)?;
            if s.user != a.name && a.role != Role::Admin {
                return Err(Error::Forbidden { user: a.name, action: format!("close session {id} of {}", s.user) });
            }
            let claimed_by: Option<String> =
                tx.query_row("SELECT worker FROM sessions WHERE id = ?1", [id], |r| r.get(0))?;
            let idle = claimed_by.as_deref().is_none_or(|w| !self.worker_alive(w));
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
                    Ok(Next::Done)
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
                    Ok(if wait { Next::Drive } else { Next::Done })
                }
                SessionStatus::Terminating if wait && idle => {
                    tx.execute("UPDATE sessions SET worker = ?2 WHERE id = ?1", params![id, worker])?;
                    Ok(Next::Drive)
                }
                SessionStatus::Terminating => Ok(Next::Done),
                status => Err(Error::SessionState { id, status: status.to_string(), action: "closed" }),
            }
        })?;
        match next {
            Next::Drive => self.drive_close(id, SessionStatus::Completed, &actor),
            Next::Done => session_by_id(&self.db(), id),
        }
    }

    /// The actor's sessions, newest first; with `all`, every user's (admin only).
    pub fn session_list(&self, actor: &str, all: bool) -> Result<Vec<Session>> {
        if let Some(t) = self.team_as(actor)? {
            return t.session_list(all);
        }
        let conn = self.db();
        let a = user(&conn, actor)?;
        if all && a.role != Role::Admin {
            return Err(Error::AdminOnly("list every user's sessions"));
        }
        list(&conn, &a, all, 10_000)
    }

    /// Drives a REQUESTED session that this worker holds to ACTIVE, or FAILED.
    fn drive_start(&self, id: i64) -> Result<Session> {
        let me = self.worker_id()?.to_owned();
        let (session, vm) = if let Some(t) = self.team() {
            let s = t.session_starting(id, &me)?;
            let vm = t.vm(&s.vm_id.to_string())?;
            (s, vm)
        } else {
            self.write(|tx| {
            let n = tx.execute(
                "UPDATE sessions SET status = 'STARTING', updated_at = ?3
                 WHERE id = ?1 AND status = 'REQUESTED' AND worker = ?2",
                params![id, me, now()],
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
            Ok((s.clone(), vm_by_id(tx, s.vm_id)?))
        })?
        };
        let machine = self.machine_spec(&vm).machine_name;
        let started = self.provider(&vm.host).and_then(|p| {
            let provider_err = |source| Error::Provider {
                host: vm.host.clone(),
                source,
            };
            self.ensure_machine(p.as_ref(), &vm)?;
            p.start(&machine).map_err(provider_err)?;
            let state = wait_for(p.as_ref(), &machine, self.opts.start_timeout, |s| {
                s == PowerState::Running
            })
            .map_err(provider_err)?;
            Ok((p, state))
        });
        let team = self.team();
        match started {
            Ok((_, PowerState::Running)) if team.is_some() => {
                team.map_or_else(|| unreachable!(), |t| t.session_started(id, &machine))
            }
            Ok((_, PowerState::Running)) => self.write(|tx| {
                let ts = now();
                tx.execute(
                    "UPDATE sessions SET status = 'ACTIVE', worker = NULL, started_at = ?2, updated_at = ?2
                     WHERE id = ?1",
                    params![id, ts],
                )?;
                tx.execute(
                    "UPDATE vms SET status = 'RUNNING', updated_at = ?2 WHERE id = ?1",
                    params![vm.id, ts],
                )?;
                events::record(
                    tx,
                    NewEvent::info(EventType::Session, "session.active", &session.user,
                                   json!({"was": SessionStatus::Starting, "now": SessionStatus::Active,
                                          "machine": machine}))
                        .vm(vm.id)
                        .session(id),
                )?;
                session_by_id(tx, id)
            }),
            Ok((p, state)) => {
                let reason = format!("the VM did not start within {:?} (it is {state:?})", self.opts.start_timeout);
                let _ = p.force_off(&machine);
                self.fail_start(&session, &vm, &reason, Some(PowerState::Stopped))?;
                Err(Error::Provider {
                    host: vm.host.clone(),
                    source: crate::provider::ProviderError::Timeout(reason),
                })
            }
            Err(err) => {
                let observed = self
                    .provider(&vm.host)
                    .ok()
                    .and_then(|p| p.power_state(&machine).ok());
                self.fail_start(&session, &vm, &err.one_line(), observed)?;
                Err(err)
            }
        }
    }

    fn fail_start(
        &self,
        s: &Session,
        vm: &Vm,
        reason: &str,
        observed: Option<PowerState>,
    ) -> Result<()> {
        let status = observed.map_or(VmStatus::Unknown, vm_status_of);
        if let Some(t) = self.team() {
            return t.session_start_failed(s.id, reason, status);
        }
        self.write(|tx| {
            let ts = now();
            tx.execute(
                "UPDATE sessions SET status = 'FAILED', worker = NULL, error = ?2, updated_at = ?3, ended_at = ?3
                 WHERE id = ?1",
                params![s.id, reason, ts],
            )?;
            // Sent to the back of the queue: least recently stopped goes first.
            tx.execute(
                "UPDATE vms SET status = ?2, last_stopped = ?3, updated_at = ?3 WHERE id = ?1",
                params![vm.id, status, ts],
            )?;
            events::record(
                tx,
                NewEvent::info(EventType::Session, "session.failed", &s.user,
                               json!({"was": SessionStatus::Starting, "now": SessionStatus::Failed,
                                      "reason": reason, "vm_status": status}))
                    .severity(Severity::Warning)
                    .vm(vm.id)
                    .session(s.id),
            )?;
            Ok(())
        })
    }

    /// Drives a TERMINATING session that this worker holds: shut the guest
    /// down, force it off after the timeout, then end the session as `end`.
    fn drive_close(&self, id: i64, end: SessionStatus, actor: &str) -> Result<Session> {
        let (s, vm) = if let Some(t) = self.team() {
            let s = t.session(id)?;
            let vm = t.vm(&s.vm_id.to_string())?;
            (s, vm)
        } else {
            let conn = self.db();
            let s = session_by_id(&conn, id)?;
            let vm = vm_by_id(&conn, s.vm_id)?;
            (s, vm)
        };
        let machine = self.machine_spec(&vm).machine_name;
        let timeout = self.opts.shutdown_timeout;
        if let Some(t) = self.team() {
            t.session_stopping(id, &crate::vms::force_off_at(timeout))?;
            let stopped = self.provider(&vm.host).and_then(|p| {
                power_off(p.as_ref(), &machine, timeout).map_err(|source| Error::Provider {
                    host: vm.host.clone(),
                    source,
                })
            });
            return match stopped {
                Ok(forced) => t.session_ended(id, end, forced),
                Err(err) => {
                    t.session_close_failed(id, &err.one_line())?;
                    Err(err)
                }
            };
        }
        // The deadline is committed before the guest is asked to shut down,
        // so that every window sees when it will be forced off.
        self.write(|tx| {
            tx.execute(
                "UPDATE vms SET status = 'STOPPING', updated_at = ?2,
                        metadata = json_set(metadata, '$.force_off_at', ?3)
                 WHERE id = ?1 AND status IN ('RUNNING', 'STOPPING', 'STARTING', 'UNKNOWN')",
                params![vm.id, now(), crate::vms::force_off_at(timeout)],
            )?;
            Ok(())
        })?;
        let stopped = self.provider(&vm.host).and_then(|p| {
            power_off(p.as_ref(), &machine, timeout).map_err(|source| Error::Provider {
                host: vm.host.clone(),
                source,
            })
        });
        match stopped {
            Ok(forced) => self.write(|tx| {
                let ts = now();
                tx.execute(
                    "UPDATE sessions SET status = ?2, worker = NULL, updated_at = ?3, ended_at = ?3 WHERE id = ?1",
                    params![id, end, ts],
                )?;
                tx.execute(
                    "UPDATE vms SET status = 'STOPPED', last_stopped = ?2, updated_at = ?2,
                            metadata = json_remove(metadata, '$.force_off_at') WHERE id = ?1",
                    params![vm.id, ts],
                )?;
                events::record(
                    tx,
                    NewEvent::info(EventType::Session, "session.ended", actor,
                                   json!({"was": SessionStatus::Terminating, "now": end, "user": s.user,
                                          "forced_off": forced}))
                        .vm(vm.id)
                        .session(id),
                )?;
                session_by_id(tx, id)
            }),
            Err(err) => {
                // Left TERMINATING and unclaimed: a later worker tries again.
                self.write(|tx| {
                    tx.execute("UPDATE sessions SET worker = NULL, error = ?2 WHERE id = ?1", params![id, err.one_line()])?;
                    tx.execute(
                        "UPDATE vms SET metadata = json_remove(metadata, '$.force_off_at') WHERE id = ?1",
                        [vm.id],
                    )?;
                    events::record(
                        tx,
                        NewEvent::info(EventType::Session, "session.close_failed", actor,
                                       json!({"reason": err.one_line()}))
                            .severity(Severity::Warning)
                            .vm(vm.id)
                            .session(id),
                    )?;
                    Ok(())
                })?;
                Err(err)
            }
        }
    }

    /// Drives every VM creation and session that waits for a worker (made
    /// with `--no-wait`) on. Returns how many were driven.
    pub fn drive_pending(&self) -> Result<usize> {
        if let Some(t) = self.team() {
            return self.drive_pending_team(t);
        }
        let me = self.worker_id()?.to_owned();
        let mut driven = self.provision_pending()?;
        loop {
            let claimed: Option<(i64, SessionStatus)> = self.write(|tx| {
                let next: Option<(i64, SessionStatus)> = tx
                    .query_row(
                        "SELECT id, status FROM sessions
                         WHERE status IN ('REQUESTED', 'TERMINATING') AND worker IS NULL
                         ORDER BY id LIMIT 1",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((id, _)) = next {
                    tx.execute(
                        "UPDATE sessions SET worker = ?2 WHERE id = ?1",
                        params![id, me],
                    )?;
                }
                Ok(next)
            })?;
            let Some((id, status)) = claimed else {
                return Ok(driven);
            };
            driven += 1;
            // A failure is recorded on the session and in the log; go on with the rest.
            let outcome = match status {
                SessionStatus::Requested => self.drive_start(id),
                _ => self.drive_close(id, SessionStatus::Completed, SYSTEM),
            };
            if let Err(e) = outcome {
                tracing::warn!(session = id, error = %e.one_line(), "pending session not driven");
                if status == SessionStatus::Terminating {
                    // It stays pending; do not spin on a host that is down.
                    return Ok(driven);
                }
            }
        }
    }

    /// Settles work whose worker died: VMs left CREATING become FAILED_TO_START;
    /// sessions left REQUESTED or STARTING become ACTIVE if their VM runs and
    /// FAILED otherwise; sessions left TERMINATING are finished. Each repair is
    /// an event. Returns how many rows were repaired.
    pub fn recover(&self) -> Result<usize> {
        if let Some(t) = self.team() {
            return self.recover_team(t);
        }
        let (vms, sessions): (Vec<Claimed>, Vec<Claimed>) = {
            let conn = self.db();
            let vms = conn
                .prepare_cached(
                    "SELECT id, worker FROM vms WHERE status = 'CREATING' AND worker IS NOT NULL",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let sessions = conn
                .prepare_cached(
                    "SELECT id, worker FROM sessions
                     WHERE status IN ('REQUESTED', 'STARTING', 'TERMINATING') AND worker IS NOT NULL",
                )?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            (vms, sessions)
        };
        let mut repaired = 0;
        for (vm_id, dead) in vms.into_iter().filter(|(_, w)| !self.worker_alive(w)) {
            // Claimed first, so that one process settles it.
            let me = self.worker_id()?.to_owned();
            let claimed = self.write(|tx| {
                Ok(tx.execute(
                    "UPDATE vms SET worker = ?3 WHERE id = ?1 AND status = 'CREATING' AND worker = ?2",
                    params![vm_id, dead, me],
                )? > 0)
            })?;
            if !claimed {
                continue;
            }
            // A machine the crash left half started is powered off: a failed
            // VM must not run (nor be billed). Its disk and definition stay
            // with its row, for `vm start` to retry or `vm destroy` to remove.
            let vm = vm_by_id(&self.db(), vm_id)?;
            let on_host = self.power_off_after_crash(&vm);
            repaired += self.write(|tx| {
                let n = tx.execute(
                    "UPDATE vms SET status = 'FAILED_TO_START', worker = NULL, updated_at = ?3
                     WHERE id = ?1 AND status = 'CREATING' AND worker = ?2",
                    params![vm_id, me, now()],
                )?;
                if n > 0 {
                    events::record(
                        tx,
                        NewEvent::info(EventType::System, "recovery.vm", SYSTEM,
                                       json!({"was": VmStatus::Creating, "now": VmStatus::FailedToStart,
                                              "reason": "its creator stopped before it finished", "worker": dead,
                                              "machine": on_host}))
                            .severity(Severity::Warning)
                            .vm(vm_id),
                    )?;
                }
                Ok(n)
            })?;
        }
        for (sid, dead) in sessions.into_iter().filter(|(_, w)| !self.worker_alive(w)) {
            let me = self.worker_id()?.to_owned();
            let claimed = self.write(|tx| {
                Ok(tx.execute(
                    "UPDATE sessions SET worker = ?3 WHERE id = ?1 AND worker = ?2",
                    params![sid, dead, me],
                )? > 0)
            })?;
            if !claimed {
                continue;
            }
            repaired += 1;
            let s = session_by_id(&self.db(), sid)?;
            let details = json!({"was": s.status, "worker": dead, "reason": "its worker stopped before it finished"});
            if s.status == SessionStatus::Terminating {
                self.write(|tx| {
                    events::record(
                        tx,
                        NewEvent::info(EventType::System, "recovery.session", SYSTEM, details)
                            .severity(Severity::Warning)
                            .vm(s.vm_id)
                            .session(sid),
                    )
                })?;
                if let Err(e) = self.drive_close(sid, SessionStatus::Completed, SYSTEM) {
                    tracing::warn!(session = sid, error = %e.one_line(), "recovered termination not finished");
                }
                continue;
            }
            let vm = vm_by_id(&self.db(), s.vm_id)?;
            let machine = self.machine_spec(&vm).machine_name;
            let observed = self
                .provider(&vm.host)
                .ok()
                .and_then(|p| p.power_state(&machine).ok());
            self.write(|tx| {
                let ts = now();
                let (now_status, vm_status) = if observed == Some(PowerState::Running) {
                    (SessionStatus::Active, VmStatus::Running)
                } else {
                    (
                        SessionStatus::Failed,
                        observed.map_or(VmStatus::Unknown, vm_status_of),
                    )
                };
                tx.execute(
                    "UPDATE sessions SET status = ?2, worker = NULL, updated_at = ?3,
                            started_at = CASE WHEN ?2 = 'ACTIVE' THEN ?3 ELSE started_at END,
                            ended_at = CASE WHEN ?2 = 'FAILED' THEN ?3 ELSE ended_at END,
                            error = CASE WHEN ?2 = 'FAILED' THEN ?4 ELSE error END
                     WHERE id = ?1",
                    params![
                        sid,
                        now_status,
                        ts,
                        "its worker stopped before the VM was started"
                    ],
                )?;
                tx.execute(
                    "UPDATE vms SET status = ?2, updated_at = ?3,
                            last_stopped = CASE WHEN ?2 = 'STOPPED' THEN ?3 ELSE last_stopped END
                     WHERE id = ?1",
                    params![vm.id, vm_status, ts],
                )?;
                let mut details = details.clone();
                details["now"] = json!(now_status);
                details["vm_status"] = json!(vm_status);
                events::record(
                    tx,
                    NewEvent::info(EventType::System, "recovery.session", SYSTEM, details)
                        .severity(Severity::Warning)
                        .vm(vm.id)
                        .session(sid),
                )
            })?;
        }
        Ok(repaired)
    }
}

impl Core {
    /// Powers off the machine of a creation a crash interrupted (a failed
    /// VM must not run, nor be billed; its disk and definition stay); what
    /// was found on the host, in words, for the recovery event.
    fn power_off_after_crash(&self, vm: &Vm) -> &'static str {
        let machine = self.machine_spec(vm).machine_name;
        match self.provider(&vm.host) {
            Ok(p) => match p.power_state(&machine) {
                Ok(state) if !state.is_off() => match p.force_off(&machine) {
                    Ok(()) => "forced off",
                    Err(_) => "running; could not be forced off",
                },
                Ok(_) => "defined, off",
                Err(crate::provider::ProviderError::NotFound(_)) => "not defined",
                Err(_) => "unknown (host unreachable)",
            },
            Err(_) => "unknown (host unreachable)",
        }
    }

    /// [`Core::drive_pending`] on a team store: what desks left to a
    /// worker is an admin's to drive (`vmdesk serve`); a plain login's desk
    /// drives nothing it did not start itself.
    fn drive_pending_team(&self, t: &dyn crate::team::Store) -> Result<usize> {
        if t.whoami()?.role != Role::Admin {
            return Ok(0);
        }
        let me = self.worker_id()?.to_owned();
        let mut driven = 0;
        while let Some((kind, id, status)) = t.claim_pending(&me)? {
            driven += 1;
            let outcome = match (kind.as_str(), status.as_str()) {
                ("vm", _) => self.provision(id, None).map(|_| ()),
                (_, "REQUESTED") => self.drive_start(id).map(|_| ()),
                _ => self
                    .drive_close(id, SessionStatus::Completed, t.login())
                    .map(|_| ()),
            };
            if let Err(e) = outcome {
                tracing::warn!(%kind, id, error = %e.one_line(), "pending work not driven");
                if status == "TERMINATING" {
                    // It stays pending; do not spin on a host that is down.
                    return Ok(driven);
                }
            }
        }
        Ok(driven)
    }

    /// [`Core::recover`] on a team store (an admin: `vmdesk serve`): the
    /// work of workers that died, on any desk, is settled as on one desk.
    fn recover_team(&self, t: &dyn crate::team::Store) -> Result<usize> {
        if t.whoami()?.role != Role::Admin {
            return Ok(0);
        }
        let me = self.worker_id()?.to_owned();
        let mut repaired = 0;
        for (kind, id, dead) in t.claimed_work()? {
            if self.worker_alive(&dead) || !t.reclaim(&kind, id, &dead, &me)? {
                continue;
            }
            repaired += 1;
            if kind == "vm" {
                let vm = t.vm(&id.to_string())?;
                let on_host = self.power_off_after_crash(&vm);
                t.recovered_vm(id, &me, &dead, on_host)?;
                continue;
            }
            let s = t.session(id)?;
            if s.status == SessionStatus::Terminating {
                t.recovered_session(id, &me, &dead, VmStatus::Stopping)?;
                if let Err(e) = self.drive_close(id, SessionStatus::Completed, t.login()) {
                    tracing::warn!(session = id, error = %e.one_line(), "recovered termination not finished");
                }
                continue;
            }
            let vm = t.vm(&s.vm_id.to_string())?;
            let machine = self.machine_spec(&vm).machine_name;
            let observed = self
                .provider(&vm.host)
                .ok()
                .and_then(|p| p.power_state(&machine).ok());
            let vm_status = observed.map_or(VmStatus::Unknown, vm_status_of);
            t.recovered_session(id, &me, &dead, vm_status)?;
        }
        Ok(repaired)
    }
}
