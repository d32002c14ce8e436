//! A user's own VMs: creation for credits along one path (waiting and
//! background callers alike, with progress), actions, and metadata.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;

use crate::core::{user, vm_by_id, Core};
use crate::error::{Error, Result};
use crate::events::{self, NewEvent};
use crate::ledger::{self, Entry};
use crate::model::*;
use crate::provider::{OsImage, PowerState};
use crate::sessions::{power_off, vm_status_of, wait_for};
use crate::store::now;
use crate::validate;

/// The built-in operating systems (no image: the VM boots to firmware).
pub const OS_BUILTIN: &[&str] = &["blank"];

/// The image of an OS of the catalog: `None` for a built-in, an error naming
/// the catalog for an unknown one.
pub(crate) fn os_image(conn: &Connection, data_dir: &Path, name: &str) -> Result<Option<OsImage>> {
    if OS_BUILTIN.contains(&name) {
        return Ok(None);
    }
    let row: Option<(String, i64, Option<String>)> = conn
        .prepare_cached("SELECT file, bytes, sha256 FROM os_images WHERE name = ?1")?
        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    match row {
        Some((file, bytes, sha256)) => {
            let path = crate::images::path_of(data_dir, name, &file)?;
            let sha256 = match sha256 {
                Some(s) => s,
                None => crate::images::sha256_of(&path)?,
            };
            Ok(Some(OsImage {
                name: name.to_owned(),
                path,
                bytes: u64::try_from(bytes).unwrap_or(0),
                sha256,
            }))
        }
        None => {
            let catalog: Vec<String> = os_list(conn)?.into_iter().map(|o| o.name).collect();
            Err(Error::invalid(format!(
                "unknown OS {name:?}; the catalog has: {}",
                catalog.join(", ")
            )))
        }
    }
}

fn os_list(conn: &Connection) -> Result<Vec<OsEntry>> {
    let mut out: Vec<OsEntry> = OS_BUILTIN
        .iter()
        .map(|n| OsEntry {
            name: (*n).to_owned(),
            kind: "builtin".into(),
            bytes: 0,
            min_ram_mb: validate::RAM_MB.0,
            min_disk_gb: validate::DISK_GB.0,
            boots: false,
        })
        .collect();
    let mut stmt = conn.prepare_cached(
        "SELECT name, bytes, min_ram_mb, min_disk_gb FROM os_images ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(OsEntry {
            name: r.get(0)?,
            kind: "image".into(),
            bytes: r.get(1)?,
            min_ram_mb: r.get::<_, Option<i64>>(2)?.unwrap_or(validate::RAM_MB.0),
            min_disk_gb: r.get::<_, Option<i64>>(3)?.unwrap_or(validate::DISK_GB.0),
            boots: true,
        })
    })?;
    for row in rows {
        out.push(row?);
    }
    Ok(out)
}

/// Refuses a size below what OS `os` boots with (an unknown OS is refused
/// too). Called before anything is charged or defined.
pub(crate) fn check_os_minimum(
    conn: &Connection,
    os: &str,
    ram_mb: i64,
    disk_gb: i64,
) -> Result<()> {
    let Some(entry) = os_list(conn)?.into_iter().find(|o| o.name == os) else {
        let catalog: Vec<String> = os_list(conn)?.into_iter().map(|o| o.name).collect();
        return Err(Error::invalid(format!(
            "unknown OS {os:?}; the catalog has: {}",
            catalog.join(", ")
        )));
    };
    if ram_mb < entry.min_ram_mb {
        return Err(Error::invalid(format!(
            "{os} needs at least {} MB of memory to boot; {ram_mb} MB is too little",
            entry.min_ram_mb
        )));
    }
    if disk_gb < entry.min_disk_gb {
        return Err(Error::invalid(format!(
            "{os} needs a disk of at least {} GB; {disk_gb} GB is too small",
            entry.min_disk_gb
        )));
    }
    Ok(())
}

/// Receives the progress of a creation.
pub type ProgressFn<'a> = &'a (dyn Fn(&Progress) + Sync);

fn may_act(a: &User, vm: &Vm) -> Result<()> {
    if a.role == Role::Admin || vm.owner.as_deref() == Some(a.name.as_str()) {
        return Ok(());
    }
    Err(Error::Forbidden {
        user: a.name.clone(),
        action: format!("act on VM {}", vm.name),
    })
}

impl Core {
    /// Creates a VM owned by the actor: the quote is checked against the
    /// balance and deducted, and the VM row committed CREATING, in one
    /// transaction; then the VM is provisioned (see [`Core::provision`]) unless
    /// `wait` is false, in which case a worker provisions it.
    pub fn vm_create(
        &self,
        actor: &str,
        spec: &VmCreate,
        wait: bool,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<Vm> {
        validate::vm_name(&spec.name)?;
        os_image(&self.db(), &self.opts.data_dir, &spec.os_type)?;
        let cost = ledger::quote(spec.ram_mb, spec.disk_gb, spec.cpu_cores)?.cost;
        check_os_minimum(&self.db(), &spec.os_type, spec.ram_mb, spec.disk_gb)?;
        let worker = if wait {
            Some(self.worker_id()?.to_owned())
        } else {
            None
        };
        if let Some(t) = self.team_as(actor)? {
            let vm = match t.vm_create(spec, &self.machine_name(&spec.name), worker.as_deref()) {
                Err(e @ Error::InsufficientCredits { .. }) => {
                    let details =
                        json!({"vm": spec.name, "code": e.code(), "reason": e.one_line()});
                    if let Err(w) = t.note_failure("vm.create.refused", None, details) {
                        tracing::warn!(vm = %spec.name, error = %w.one_line(), "recording a refusal");
                    }
                    return Err(e);
                }
                other => other?,
            };
            return if wait {
                self.provision(vm.id, progress)
            } else {
                Ok(vm)
            };
        }
        let vm = self.write(|tx| {
            let u = user(tx, actor)?;
            let host_id: i64 = match &spec.host {
                Some(h) => tx
                    .prepare_cached("SELECT id FROM hosts WHERE name = ?1")?
                    .query_row([h], |r| r.get(0))
                    .optional()?
                    .ok_or_else(|| Error::UnknownHost(h.clone()))?,
                None => {
                    let ids: Vec<i64> = tx
                        .prepare_cached("SELECT id FROM hosts ORDER BY name LIMIT 2")?
                        .query_map([], |r| r.get(0))?
                        .collect::<Result<_, _>>()?;
                    match ids.as_slice() {
                        [only] => *only,
                        [] => return Err(Error::invalid("there is no host yet: add one with 'vmdesk host add'")),
                        _ => return Err(Error::invalid("there are several hosts: name one with --host")),
                    }
                }
            };
            let ts = now();
            tx.execute(
                "INSERT INTO vms (name, os_type, ram_mb, disk_gb, cpu_cores, vm_type, status, owner_user_id,
                                  host_id, provider_id, worker, start_after_create, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'standard', 'CREATING', ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
                params![
                    spec.name, spec.os_type, spec.ram_mb, spec.disk_gb, spec.cpu_cores, u.id, host_id,
                    self.machine_name(&spec.name), worker, spec.start, ts
                ],
            )
            .map_err(crate::core::already_exists("VM", &spec.name))?;
            let vm_id = tx.last_insert_rowid();
            let reason = format!("create VM {}", spec.name);
            ledger::append(
                tx,
                &u.name,
                Entry { user_id: u.id, amount: -cost, kind: LedgerKind::VmCreate, reason: &reason, vm_id: Some(vm_id), session_id: None, actor: &u.name },
            )?;
            tx.execute(
                "UPDATE vms SET metadata = json_set(metadata, '$.cost', ?2) WHERE id = ?1",
                params![vm_id, cost],
            )?;
            events::record(
                tx,
                NewEvent::info(EventType::Billing, "credits.charge", &u.name,
                               json!({"user": u.name, "amount": cost, "kind": LedgerKind::VmCreate, "vm": spec.name}))
                    .vm(vm_id),
            )?;
            events::record(
                tx,
                NewEvent::info(EventType::Vm, "vm.create", &u.name,
                               json!({"vm": spec.name, "ram_mb": spec.ram_mb, "disk_gb": spec.disk_gb,
                                      "cpu_cores": spec.cpu_cores, "os_type": spec.os_type, "cost": cost,
                                      "start": spec.start, "status": VmStatus::Creating}))
                    .vm(vm_id),
            )?;
            vm_by_id(tx, vm_id)
        });
        let vm = match vm {
            Err(e @ Error::InsufficientCredits { .. }) => {
                let who = user(&self.db(), actor);
                if let Ok(u) = who {
                    self.record_failure(&u, &spec.name, "vm.create.refused", &e);
                }
                return Err(e);
            }
            other => other?,
        };
        if wait {
            self.provision(vm.id, progress)
        } else {
            Ok(vm)
        }
    }

    /// The one creation path: defines the VM's machine on its host and starts
    /// it if asked, reporting each step. On failure the VM is FAILED_TO_START,
    /// its credits are not refunded, and an event says why.
    pub(crate) fn provision(&self, vm_id: i64, progress: Option<ProgressFn<'_>>) -> Result<Vm> {
        let (vm, start): (Vm, bool) = if let Some(t) = self.team() {
            (t.vm(&vm_id.to_string())?, t.vm_start_after_create(vm_id)?)
        } else {
            let db = self.db();
            let start = db.query_row(
                "SELECT start_after_create FROM vms WHERE id = ?1",
                [vm_id],
                |r| r.get(0),
            )?;
            (vm_by_id(&db, vm_id)?, start)
        };
        let steps = if start { 4 } else { 3 };
        let report = |step: u32, message: &str| {
            if let Some(f) = progress {
                f(&Progress {
                    vm_id,
                    vm: vm.name.clone(),
                    step,
                    steps,
                    message: message.to_owned(),
                });
            }
        };
        let done = (|| {
            report(0, "connecting to the host");
            let spec = self.full_spec(&vm)?;
            let p = self.provider(&vm.host)?;
            let err = |source| Error::Provider {
                host: vm.host.clone(),
                source,
            };
            report(1, "creating the disk");
            p.ensure_disk(&spec).map_err(err)?;
            report(2, "defining the machine");
            p.ensure_defined(&spec).map_err(err)?;
            if !start {
                return Ok(PowerState::Stopped);
            }
            report(3, "starting the machine");
            p.start(&spec.machine_name).map_err(err)?;
            let state = wait_for(
                p.as_ref(),
                &spec.machine_name,
                self.opts.start_timeout,
                |s| s == PowerState::Running,
            )
            .map_err(err)?;
            if state != PowerState::Running {
                return Err(Error::Provider {
                    host: vm.host.clone(),
                    source: crate::provider::ProviderError::Timeout(format!("the VM is {state:?}")),
                });
            }
            Ok(state)
        })();
        if let Some(t) = self.team() {
            return match done {
                Ok(state) => {
                    report(steps, "done");
                    t.vm_created(vm_id, Ok(vm_status_of(state)))
                }
                Err(e) => {
                    let reason = e.one_line();
                    report(steps, &format!("failed: {reason}"));
                    t.vm_created(vm_id, Err(reason))?;
                    Err(e)
                }
            };
        }
        match done {
            Ok(state) => {
                report(steps, "done");
                self.write(|tx| {
                    let status = vm_status_of(state);
                    tx.execute(
                        "UPDATE vms SET status = ?2, worker = NULL, updated_at = ?3 WHERE id = ?1",
                        params![vm_id, status, now()],
                    )?;
                    events::record(
                        tx,
                        NewEvent::info(
                            EventType::Vm,
                            "vm.created",
                            actor_of(&vm),
                            json!({"was": VmStatus::Creating, "now": status}),
                        )
                        .vm(vm_id),
                    )?;
                    vm_by_id(tx, vm_id)
                })
            }
            Err(e) => {
                let reason = e.one_line();
                report(steps, &format!("failed: {reason}"));
                self.write(|tx| {
                    tx.execute(
                        "UPDATE vms SET status = 'FAILED_TO_START', worker = NULL, updated_at = ?2 WHERE id = ?1",
                        params![vm_id, now()],
                    )?;
                    events::record(
                        tx,
                        NewEvent::info(EventType::Vm, "vm.create_failed", actor_of(&vm),
                                       json!({"was": VmStatus::Creating, "now": VmStatus::FailedToStart,
                                              "reason": reason, "refunded": false}))
                            .severity(Severity::Warning)
                            .vm(vm_id),
                    )?;
                    Ok(())
                })?;
                Err(e)
            }
        }
    }

    /// Provisions a VM created without waiting, if no worker has claimed it
    /// yet: how the app runs a creation in the background with progress.
    pub fn provision_vm(&self, vm_id: i64, progress: Option<ProgressFn<'_>>) -> Result<Vm> {
        let me = self.worker_id()?.to_owned();
        if let Some(t) = self.team() {
            if !t.vm_claim(vm_id, &me)? {
                return t.vm(&vm_id.to_string());
            }
            return self.provision(vm_id, progress);
        }
        let claimed = self.write(|tx| {
            Ok(tx.execute(
                "UPDATE vms SET worker = ?2 WHERE id = ?1 AND status = 'CREATING' AND worker IS NULL",
                params![vm_id, me],
            )? > 0)
        })?;
        if !claimed {
            return vm_by_id(&self.db(), vm_id);
        }
        self.provision(vm_id, progress)
    }

    /// Provisions VMs whose creation waits for a worker (`vm create --no-wait`).
    pub(crate) fn provision_pending(&self) -> Result<usize> {
        let me = self.worker_id()?.to_owned();
        let mut done = 0;
        loop {
            let claimed: Option<i64> = self.write(|tx| {
                let id: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM vms WHERE status = 'CREATING' AND worker IS NULL ORDER BY id LIMIT 1",
                        [],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(id) = id {
                    tx.execute("UPDATE vms SET worker = ?2 WHERE id = ?1", params![id, me])?;
                }
                Ok(id)
            })?;
            let Some(id) = claimed else { return Ok(done) };
            done += 1;
            if let Err(e) = self.provision(id, None) {
                tracing::warn!(vm = id, error = %e.one_line(), "pending creation failed");
            }
        }
    }

    /// Starts, stops, restarts or destroys a VM (its owner or an admin). A VM
    /// held by a live session refuses every action but start. A refused or
    /// failed action is an event too (severity warning), with the reason.
    pub fn vm_action(&self, actor: &str, vm: &str, action: VmAction) -> Result<Vm> {
        if let Some(t) = self.team_as(actor)? {
            return self.vm_action_team(t, vm, action, false);
        }
        let a = user(&self.db(), actor)?;
        self.vm_action_by(&a, vm, action)
    }

    /// [`Core::vm_action`] on a team store; `as_system`: the system itself
    /// acts (billing at zero credits) through this admin's process. A
    /// refused or failed action leaves a warning event, as on one desk.
    pub(crate) fn vm_action_team(
        &self,
        t: &dyn crate::team::Store,
        vm: &str,
        action: VmAction,
        as_system: bool,
    ) -> Result<Vm> {
        let out = (|| {
            let v = t.vm(vm)?;
            let was = t.vm_action_begin(v.id, action, &force_off_at(self.opts.shutdown_timeout))?;
            let mut a = t.whoami()?;
            if as_system {
                a = crate::core::system_actor();
            }
            let acted = self.act_on_machine(&a, &was, action);
            if acted.is_err() {
                // The machine stays: so does its state as it was.
                t.vm_action_undo(v.id, was.status)?;
            }
            acted
        })();
        if let Err(e) = &out {
            // A second click on a VM already stopping is no failure.
            let in_transition = e.to_string().contains("is already stopping");
            if !in_transition && !as_system {
                let vm_id = t.vm(vm).ok().map(|v| v.id);
                let details = json!({"vm": vm, "code": e.code(), "reason": e.one_line()});
                let name = format!("vm.{}.failed", action_name(action));
                if let Err(w) = t.note_failure(&name, vm_id, details) {
                    tracing::warn!(%vm, error = %w.one_line(), "recording a failed action");
                }
            }
        }
        out
    }

    /// [`Core::vm_action`] for an actor already resolved (a user, or the
    /// system itself: see [`crate::core::system_actor`]).
    pub(crate) fn vm_action_by(&self, a: &User, vm: &str, action: VmAction) -> Result<Vm> {
        let mut in_transition = false;
        let out = self.vm_action_in(a, vm, action, &mut in_transition);
        if let Err(e) = &out {
            // A second click on a VM already stopping is no failure: the
            // first one is under way.
            if !in_transition {
                self.record_failure(a, vm, &format!("vm.{}.failed", action_name(action)), e);
            }
        }
        out
    }

    /// Writes the event of a refused or failed action on a VM.
    pub(crate) fn record_failure(&self, a: &User, vm: &str, action: &str, e: &Error) {
        let vm_id = crate::core::vm_by_ref(&self.db(), vm).ok().map(|v| v.id);
        let res = self.write(|tx| {
            let mut ev = NewEvent::info(
                EventType::Vm,
                action,
                &a.name,
                json!({"vm": vm, "code": e.code(), "reason": e.one_line()}),
            )
            .severity(Severity::Warning);
            if let Some(id) = vm_id {
                ev = ev.vm(id);
            }
            events::record(tx, ev)
        });
        if let Err(w) = res {
            tracing::warn!(%vm, error = %w.one_line(), "recording a failed action");
        }
    }

    fn vm_action_in(
        &self,
        a: &User,
        vm: &str,
        action: VmAction,
        in_transition: &mut bool,
    ) -> Result<Vm> {
        let a = a.clone();
        let v = self.vm_show_in(&self.db(), &a, vm)?;
        may_act(&a, &v)?;
        // Checked (and, for destroy, claimed) in the write transaction, so
        // that an allocation cannot take the VM between check and act.
        let v = self.write(|tx| {
            let v = vm_by_id(tx, v.id)?;
            if let Some(sid) = v.session_id.filter(|_| action != VmAction::Start) {
                return Err(Error::invalid(format!(
                    "VM {} is held by session {sid}; close the session first",
                    v.name
                )));
            }
            if matches!(v.status, VmStatus::Creating | VmStatus::Destroyed) {
                return Err(Error::invalid(format!(
                    "VM {} is {} and cannot be acted on",
                    v.name, v.status
                )));
            }
            if v.status == VmStatus::Stopping {
                *in_transition = true;
                let when = v
                    .metadata
                    .get(FORCE_OFF_AT)
                    .and_then(|t| t.as_str())
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| {
                        format!(
                            " and is forced off at {} UTC if the guest does not shut down",
                            t.format("%H:%M:%S")
                        )
                    })
                    .unwrap_or_default();
                return Err(Error::invalid(format!(
                    "VM {} is already stopping{when}; wait until it is stopped",
                    v.name
                )));
            }
            if action == VmAction::Destroy {
                // Out of every pool's free list while its machine goes.
                tx.execute(
                    "UPDATE vms SET status = 'STOPPING', updated_at = ?2 WHERE id = ?1",
                    params![v.id, now()],
                )?;
            }
            if matches!(action, VmAction::Stop | VmAction::Restart)
                && matches!(
                    v.status,
                    VmStatus::Running | VmStatus::Starting | VmStatus::Unknown
                )
            {
                // Committed before the guest is asked to shut down, so that
                // every window and process sees the stop and its deadline.
                tx.execute(
                    "UPDATE vms SET status = 'STOPPING', updated_at = ?2,
                            metadata = json_set(metadata, '$.force_off_at', ?3) WHERE id = ?1",
                    params![v.id, now(), force_off_at(self.opts.shutdown_timeout)],
                )?;
            }
            Ok(v)
        })?;
        let acted = self.act_on_machine(&a, &v, action);
        if acted.is_err() {
            // The machine stays: so does its state as it was.
            self.write(|tx| {
                tx.execute(
                    "UPDATE vms SET status = ?2, metadata = json_remove(metadata, '$.force_off_at')
                     WHERE id = ?1 AND status = 'STOPPING'",
                    params![v.id, v.status],
                )?;
                Ok(())
            })?;
        }
        acted
    }

    fn act_on_machine(&self, a: &User, v: &Vm, action: VmAction) -> Result<Vm> {
        let machine = self.machine_spec(v).machine_name;
        let p = self.provider(&v.host)?;
        let err = |source| Error::Provider {
            host: v.host.clone(),
            source,
        };
        let timeout = self.opts.shutdown_timeout;
        let (status, forced) = match action {
            VmAction::Start => {
                self.ensure_machine(p.as_ref(), v)?;
                p.start(&machine).map_err(err)?;
                (
                    vm_status_of(
                        wait_for(p.as_ref(), &machine, self.opts.start_timeout, |s| {
                            s == PowerState::Running
                        })
                        .map_err(err)?,
                    ),
                    false,
                )
            }
            VmAction::Stop => (
                VmStatus::Stopped,
                power_off(p.as_ref(), &machine, timeout).map_err(err)?,
            ),
            VmAction::Restart => {
                let forced = power_off(p.as_ref(), &machine, timeout).map_err(err)?;
                p.start(&machine).map_err(err)?;
                (
                    vm_status_of(
                        wait_for(p.as_ref(), &machine, self.opts.start_timeout, |s| {
                            s == PowerState::Running
                        })
                        .map_err(err)?,
                    ),
                    forced,
                )
            }
            VmAction::Destroy => {
                p.force_off(&machine)
                    .or_else(|e| match e {
                        crate::provider::ProviderError::NotFound(_) => Ok(()),
                        e => Err(e),
                    })
                    .map_err(err)?;
                p.undefine(&machine).map_err(err)?;
                p.delete_disk(&machine).map_err(err)?;
                (VmStatus::Destroyed, false)
            }
        };
        if let Some(t) = self.team() {
            let as_system = a.name == crate::core::SYSTEM;
            t.vm_action_done(v.id, action, v.status, status, forced, as_system)?;
            return t.vm(&v.id.to_string());
        }
        self.write(|tx| {
            let ts = now();
            tx.execute(
                "UPDATE vms SET status = ?2, updated_at = ?3,
                        last_stopped = CASE WHEN ?2 IN ('STOPPED', 'DESTROYED') THEN ?3 ELSE last_stopped END,
                        metadata = json_remove(metadata, '$.force_off_at')
                 WHERE id = ?1",
                params![v.id, status, ts],
            )?;
            let event_type = if a.role == Role::Admin && v.owner.as_deref() != Some(a.name.as_str()) { EventType::Admin } else { EventType::Vm };
            events::record(
                tx,
                NewEvent::info(event_type, &format!("vm.{}", action_name(action)), &a.name,
                               json!({"vm": v.name, "was": v.status, "now": status, "forced_off": forced}))
                    .vm(v.id),
            )?;
            vm_by_id(tx, v.id)
        })
    }

    /// Quarantines the machines of a host that carry this data directory's
    /// mark but have no VM row (or only a DESTROYED one): what a crash between
    /// the host and the database, or a database restored from a backup, can
    /// leave. Each is powered off and kept, definition and disk, until an
    /// admin purges it (see [`Core::purge_quarantine`]); each is an event.
    /// Returns the machines newly quarantined.
    pub fn sweep_host(&self, host: &str) -> Result<Vec<String>> {
        let p = self.provider(host)?;
        let store = self.reading();
        // Only an admin sees every row: anyone else would take the machines
        // of other users' VMs for leftovers.
        if store.users().whoami()?.role != Role::Admin {
            return Err(Error::AdminOnly("run recovery"));
        }
        let q = store.quarantine();
        let marked = p
            .marked(&self.install_id)
            .map_err(|source| Error::Provider {
                host: host.to_owned(),
                source,
            })?;
        let mut found = Vec::new();
        for machine in &marked {
            let (has_row, quarantined) = q.machine_known(host, machine)?;
            if has_row || quarantined {
                continue;
            }
            let stopped = self.power_off_leftover(&*p, host, machine);
            if q.quarantine_add(host, machine, stopped)? {
                found.push(machine.clone());
            }
        }
        // Quarantined machines that left the host by other means, or have a
        // row again, are forgotten.
        q.quarantine_keep(host, &marked)?;
        Ok(found)
    }

    /// Powers off a machine found without a row; whether it is off.
    fn power_off_leftover(
        &self,
        p: &dyn crate::provider::Provider,
        host: &str,
        machine: &str,
    ) -> bool {
        match p.force_off(machine) {
            Ok(()) | Err(crate::provider::ProviderError::NotFound(_)) => true,
            Err(e) => {
                tracing::warn!(%host, %machine, error = %e, "powering off a quarantined machine");
                false
            }
        }
    }

    /// The quarantined machines (admin only), oldest first.
    pub fn quarantined(&self, actor: &str) -> Result<Vec<Quarantined>> {
        self.acting(actor)?.quarantine().quarantined()
    }

    /// Deletes (definition and disk) the quarantined machines found more than
    /// `grace` ago that still have no VM row (admin only); each is an event.
    /// Returns the machines deleted.
    pub fn purge_quarantine(&self, actor: &str, grace: Duration) -> Result<Vec<Quarantined>> {
        let store = self.acting(actor)?;
        if store.users().whoami()?.role != Role::Admin {
            return Err(Error::AdminOnly("purge quarantined machines"));
        }
        let q = store.quarantine();
        let due: Vec<Quarantined> = q
            .quarantined()?
            .into_iter()
            .filter(|q| q.found_at <= crate::store::ago(grace))
            .collect();
        let mut purged = Vec::new();
        for m in due {
            if q.machine_known(&m.host, &m.machine)?.0 {
                continue;
            }
            let p = self.provider(&m.host)?;
            let err = |source| Error::Provider {
                host: m.host.clone(),
                source,
            };
            let not_found_ok = |r: std::result::Result<(), crate::provider::ProviderError>| match r
            {
                Err(crate::provider::ProviderError::NotFound(_)) => Ok(()),
                r => r,
            };
            not_found_ok(p.force_off(&m.machine)).map_err(err)?;
            not_found_ok(p.undefine(&m.machine)).map_err(err)?;
            not_found_ok(p.delete_disk(&m.machine)).map_err(err)?;
            q.quarantine_purged(&m.host, &m.machine)?;
            purged.push(m);
        }
        Ok(purged)
    }

    /// Settles crashed work (see [`Core::recover`]) and sweeps every host
    /// into quarantine (see [`Core::sweep_host`]); admin only. Returns what
    /// was done, as events.
    pub fn recover_all(&self, actor: &str) -> Result<Vec<Event>> {
        let store = self.acting(actor)?;
        if store.users().whoami()?.role != Role::Admin {
            return Err(Error::AdminOnly("run recovery"));
        }
        let before = store.events().events(1)?.first().map_or(0, |e| e.id);
        self.recover()?;
        self.console_cleanup()?;
        for h in store.places().host_list()? {
            if let Err(e) = self.sweep_host(&h.name) {
                tracing::warn!(host = %h.name, error = %e.one_line(), "sweep");
            }
        }
        let q = crate::EventQuery {
            after: Some(before),
            limit: 10_000,
            ..Default::default()
        };
        let mut done: Vec<Event> = store
            .events()
            .events_query(&q, None)?
            .into_iter()
            .filter(|e| e.action.starts_with("recovery."))
            .collect();
        done.reverse();
        Ok(done)
    }

    /// The events of a VM the actor may see, newest first.
    pub fn vm_events(&self, actor: &str, vm: &str, limit: i64) -> Result<Vec<Event>> {
        if let Some(t) = self.team_as(actor)? {
            let v = t.vm(vm)?;
            let q = crate::EventQuery {
                limit: limit.clamp(1, 10_000),
                ..Default::default()
            };
            return t.events_query(&q, Some(v.id));
        }
        let conn = self.db();
        let a = user(&conn, actor)?;
        let v = self.vm_show_in(&conn, &a, vm)?;
        events::of_vm(&conn, v.id, limit.clamp(1, 10_000))
    }

    /// The OS catalog: the built-ins and the imported images.
    pub fn os_list(&self) -> Result<Vec<OsEntry>> {
        os_list(&self.db())
    }

    /// The price of creating a VM of this OS and size, and its hourly running
    /// cost at this core's billing rate; refuses what `vm_create` would
    /// refuse for the OS or the size (the launch form asks as you type).
    pub fn price(&self, os: &str, ram_mb: i64, disk_gb: i64, cpus: i64) -> Result<Price> {
        let cost = ledger::quote(ram_mb, disk_gb, cpus)?.cost;
        check_os_minimum(&self.db(), os, ram_mb, disk_gb)?;
        Ok(Price {
            cost,
            hourly_milli: ledger::hourly_milli(cost, self.opts.billing.hourly_percent),
        })
    }

    /// Adds a qcow2 disk image to the OS catalog as `name` (admin only). The
    /// file is copied into the data directory; hosts get it on first use.
    pub fn os_import(&self, actor: &str, name: &str, file: &Path) -> Result<OsEntry> {
        self.os_import_with(actor, name, file, None, None)
    }

    /// [`Core::os_import`], recording the least memory (MB) and disk (GB)
    /// the image boots with; `None` leaves the general minimum of a VM.
    pub fn os_import_with(
        &self,
        actor: &str,
        name: &str,
        file: &Path,
        min_ram_mb: Option<i64>,
        min_disk_gb: Option<i64>,
    ) -> Result<OsEntry> {
        validate::name("OS", name)?;
        validate::size(
            min_ram_mb.unwrap_or(validate::RAM_MB.0),
            min_disk_gb.unwrap_or(validate::DISK_GB.0),
            validate::CPUS.0,
        )
        .map_err(|e| Error::invalid(format!("the OS minimum is out of range: {}", e)))?;
        self.catalog_keeper(actor, "import OS images")?;
        if OS_BUILTIN.contains(&name) || os_image(&self.db(), &self.opts.data_dir, name).is_ok() {
            return Err(Error::AlreadyExists {
                kind: "OS",
                name: name.to_owned(),
            });
        }
        let img = crate::images::import(&self.opts.data_dir, name, file)?;
        let dest = self
            .opts
            .data_dir
            .join(crate::images::OS_DIR)
            .join(&img.file);
        let bytes = img.bytes;
        let added = self.write_local(|tx| {
            tx.execute(
                "INSERT INTO os_images (name, file, bytes, sha256, created_at, min_ram_mb, min_disk_gb)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    name,
                    img.file,
                    i64::try_from(bytes).unwrap_or(i64::MAX),
                    img.sha256,
                    now(),
                    min_ram_mb,
                    min_disk_gb
                ],
            )
            .map_err(crate::core::already_exists("OS", name))?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "os.import",
                    actor,
                    json!({"os": name, "bytes": bytes, "sha256": img.sha256,
                           "min_ram_mb": min_ram_mb, "min_disk_gb": min_disk_gb}),
                ),
            )?;
            Ok(OsEntry {
                name: name.to_owned(),
                kind: "image".into(),
                bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
                min_ram_mb: min_ram_mb.unwrap_or(validate::RAM_MB.0),
                min_disk_gb: min_disk_gb.unwrap_or(validate::DISK_GB.0),
                boots: true,
            })
        });
        if added.is_err() {
            let _ = std::fs::remove_file(&dest);
        }
        added
    }

    /// Who may change this desk's OS catalog: an admin on the embedded
    /// store; on a team store the catalog is the desk's own files, so its
    /// user (the login).
    fn catalog_keeper(&self, actor: &str, action: &'static str) -> Result<()> {
        match self.team_as(actor)? {
            Some(_) => Ok(()),
            None => crate::core::admin(&self.db(), actor, action).map(|_| ()),
        }
    }

    /// Sets the least memory (MB) and disk (GB) an imported OS boots with
    /// (admin only); `None` keeps a value. Images imported before minimums
    /// existed get theirs this way. Nothing is written when nothing changes.
    pub fn os_set_minimum(
        &self,
        actor: &str,
        name: &str,
        min_ram_mb: Option<i64>,
        min_disk_gb: Option<i64>,
    ) -> Result<OsEntry> {
        self.catalog_keeper(actor, "change the OS catalog")?;
        let Some(old) = os_list(&self.db())?.into_iter().find(|o| o.name == name) else {
            return Err(Error::invalid(format!(
                "there is no OS {name:?} in the catalog"
            )));
        };
        if old.kind != "image" {
            return Err(Error::invalid(format!(
                "{name} is built in; its minimum cannot be changed"
            )));
        }
        let (ram, disk) = (
            min_ram_mb.unwrap_or(old.min_ram_mb),
            min_disk_gb.unwrap_or(old.min_disk_gb),
        );
        validate::size(ram, disk, validate::CPUS.0)
            .map_err(|e| Error::invalid(format!("the OS minimum is out of range: {e}")))?;
        if (ram, disk) == (old.min_ram_mb, old.min_disk_gb) {
            return Ok(old);
        }
        self.write_local(|tx| {
            tx.execute(
                "UPDATE os_images SET min_ram_mb = ?2, min_disk_gb = ?3 WHERE name = ?1",
                params![name, ram, disk],
            )?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "os.minimum",
                    actor,
                    json!({"os": name, "min_ram_mb": ram, "min_disk_gb": disk,
                           "was": {"min_ram_mb": old.min_ram_mb, "min_disk_gb": old.min_disk_gb}}),
                ),
            )?;
            Ok(())
        })?;
        Ok(OsEntry {
            min_ram_mb: ram,
            min_disk_gb: disk,
            ..old
        })
    }

    /// Merges `pairs` into a VM's metadata (its owner or an admin).
    pub fn vm_meta(&self, actor: &str, vm: &str, pairs: &[(String, String)]) -> Result<Vm> {
        if pairs.is_empty() {
            return Err(Error::invalid("give at least one KEY=VALUE"));
        }
        let mut patch = serde_json::Map::new();
        for (k, v) in pairs {
            validate::name("metadata key", k)?;
            validate::reason(v).map_err(|_| {
                Error::invalid(format!(
                    "the value of {k} must be 1 to 500 printable characters"
                ))
            })?;
            patch.insert(k.clone(), json!(v));
        }
        if let Some(t) = self.team_as(actor)? {
            return t.vm_meta(vm, &serde_json::Value::Object(patch));
        }
        self.write(|tx| {
            let a = user(tx, actor)?;
            let v = self.vm_show_in(tx, &a, vm)?;
            may_act(&a, &v)?;
            if v.status == VmStatus::Destroyed {
                return Err(Error::invalid(format!(
                    "VM {} is destroyed: its metadata can no longer change",
                    v.name
                )));
            }
            tx.execute(
                "UPDATE vms SET metadata = json_patch(metadata, ?2), updated_at = ?3 WHERE id = ?1",
                params![
                    v.id,
                    serde_json::Value::Object(patch.clone()).to_string(),
                    now()
                ],
            )?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Vm,
                    "vm.meta",
                    &a.name,
                    json!({"vm": v.name, "set": patch}),
                )
                .vm(v.id),
            )?;
            vm_by_id(tx, v.id)
        })
    }
}

/// The metadata key of a stopping VM's deadline: when it is forced off if
/// the guest has not shut down by then (RFC 3339, UTC).
pub const FORCE_OFF_AT: &str = "force_off_at";

/// The deadline of a shutdown that starts now.
pub(crate) fn force_off_at(timeout: Duration) -> String {
    let d = chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
    chrono::Utc::now()
        .checked_add_signed(d)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn action_name(a: VmAction) -> &'static str {
    match a {
        VmAction::Start => "start",
        VmAction::Stop => "stop",
        VmAction::Restart => "restart",
        VmAction::Destroy => "destroy",
    }
}

/// Events of a creation are the owner's (or the system's for a pool VM).
fn actor_of(vm: &Vm) -> &str {
    vm.owner.as_deref().unwrap_or(crate::core::SYSTEM)
}
