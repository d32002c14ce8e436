//! A user's own VMs: creation for credits along one path (waiting and
//! background callers alike, with progress), actions, and metadata.

use std::path::Path;

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
    let row: Option<(String, i64)> = conn
        .prepare_cached("SELECT file, bytes FROM os_images WHERE name = ?1")?
        .query_row([name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row {
        Some((file, bytes)) => Ok(Some(OsImage {
            name: name.to_owned(),
            path: data_dir.join(file),
            bytes: u64::try_from(bytes).unwrap_or(0),
        })),
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
        })
        .collect();
    let mut stmt = conn.prepare_cached("SELECT name, bytes FROM os_images ORDER BY name")?;
    let rows = stmt.query_map([], |r| {
        Ok(OsEntry {
            name: r.get(0)?,
            kind: "image".into(),
            bytes: r.get(1)?,
        })
    })?;
    for row in rows {
        out.push(row?);
    }
    Ok(out)
}

/// The first bytes of a qcow2 file.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

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
        validate::name("VM", &spec.name)?;
        os_image(&self.db(), &self.opts.data_dir, &spec.os_type)?;
        let cost = ledger::quote(spec.ram_mb, spec.disk_gb, spec.cpu_cores)?.cost;
        let worker = if wait {
            Some(self.worker_id()?.to_owned())
        } else {
            None
        };
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
        })?;
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
        let (vm, start): (Vm, bool) = {
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
    /// held by a live session refuses every action but start.
    pub fn vm_action(&self, actor: &str, vm: &str, action: VmAction) -> Result<Vm> {
        let (a, v) = {
            let db = self.db();
            let a = user(&db, actor)?;
            let v = self.vm_show_in(&db, &a, vm)?;
            (a, v)
        };
        may_act(&a, &v)?;
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
        let machine = self.machine_spec(&v).machine_name;
        let p = self.provider(&v.host)?;
        let err = |source| Error::Provider {
            host: v.host.clone(),
            source,
        };
        let timeout = self.opts.shutdown_timeout;
        let (status, forced) = match action {
            VmAction::Start => {
                self.ensure_machine(p.as_ref(), &v)?;
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
        self.write(|tx| {
            let ts = now();
            tx.execute(
                "UPDATE vms SET status = ?2, updated_at = ?3,
                        last_stopped = CASE WHEN ?2 IN ('STOPPED', 'DESTROYED') THEN ?3 ELSE last_stopped END
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

    /// Removes from a host the machines (definitions and disks) that carry
    /// this data directory's mark but have no VM row (or only a DESTROYED
    /// one): what a crash between the host and the database can leave. Each
    /// removal is an event. Returns the machines removed.
    pub fn sweep_host(&self, host: &str) -> Result<Vec<String>> {
        let p = self.provider(host)?;
        let err = |source| Error::Provider {
            host: host.to_owned(),
            source,
        };
        let mut removed = Vec::new();
        for machine in p.marked(&self.install_id).map_err(err)? {
            let owned: bool = self.db().query_row(
                "SELECT count(*) > 0 FROM vms WHERE provider_id = ?1 AND status <> 'DESTROYED'",
                [&machine],
                |r| r.get(0),
            )?;
            if owned {
                continue;
            }
            p.force_off(&machine)
                .or_else(|e| match e {
                    crate::provider::ProviderError::NotFound(_) => Ok(()),
                    e => Err(e),
                })
                .map_err(err)?;
            p.undefine(&machine).map_err(err)?;
            p.delete_disk(&machine).map_err(err)?;
            self.write(|tx| {
                events::record(
                    tx,
                    NewEvent::info(
                        EventType::System,
                        "recovery.leftover",
                        crate::core::SYSTEM,
                        json!({"host": host, "machine": machine, "removed": true,
                                          "reason": "on the host without a VM row"}),
                    )
                    .severity(Severity::Warning),
                )
            })?;
            removed.push(machine);
        }
        Ok(removed)
    }

    /// Settles crashed work (see [`Core::recover`]) and sweeps every host (see
    /// [`Core::sweep_host`]); admin only. Returns what was done, as events.
    pub fn recover_all(&self, actor: &str) -> Result<Vec<Event>> {
        crate::core::admin(&self.db(), actor, "run recovery")?;
        let before: i64 =
            self.db()
                .query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?;
        self.recover()?;
        self.console_cleanup()?;
        let hosts: Vec<String> = self
            .db()
            .prepare("SELECT name FROM hosts ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for h in hosts {
            if let Err(e) = self.sweep_host(&h) {
                tracing::warn!(host = %h, error = %e.one_line(), "sweep");
            }
        }
        events::recoveries_since(&self.db(), before)
    }

    /// The events of a VM the actor may see, newest first.
    pub fn vm_events(&self, actor: &str, vm: &str, limit: i64) -> Result<Vec<Event>> {
        let conn = self.db();
        let a = user(&conn, actor)?;
        let v = self.vm_show_in(&conn, &a, vm)?;
        events::of_vm(&conn, v.id, limit.clamp(1, 10_000))
    }

    /// The OS catalog: the built-ins and the imported images.
    pub fn os_list(&self) -> Result<Vec<OsEntry>> {
        os_list(&self.db())
    }

    /// Adds a qcow2 disk image to the OS catalog as `name` (admin only). The
    /// file is copied into the data directory; hosts get it on first use.
    pub fn os_import(&self, actor: &str, name: &str, file: &Path) -> Result<OsEntry> {
        validate::name("OS", name)?;
        crate::core::admin(&self.db(), actor, "import OS images")?;
        if OS_BUILTIN.contains(&name) || os_image(&self.db(), &self.opts.data_dir, name).is_ok() {
            return Err(Error::AlreadyExists {
                kind: "OS",
                name: name.to_owned(),
            });
        }
        let io = |source| Error::DataDir {
            path: file.to_path_buf(),
            source,
        };
        let mut magic = [0u8; 4];
        std::io::Read::read_exact(&mut std::fs::File::open(file).map_err(io)?, &mut magic)
            .map_err(io)?;
        if &magic != QCOW2_MAGIC {
            return Err(Error::invalid(format!(
                "{} is not a qcow2 image",
                file.display()
            )));
        }
        let dir = self.opts.data_dir.join("os");
        std::fs::create_dir_all(&dir).map_err(|source| Error::DataDir {
            path: dir.clone(),
            source,
        })?;
        let rel = format!("os/{name}.qcow2");
        let dest = self.opts.data_dir.join(&rel);
        let tmp = dest.with_extension("qcow2.part");
        let bytes = std::fs::copy(file, &tmp).map_err(io)?;
        std::fs::rename(&tmp, &dest).map_err(io)?;
        let added = self.write(|tx| {
            tx.execute(
                "INSERT INTO os_images (name, file, bytes, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![name, rel, i64::try_from(bytes).unwrap_or(i64::MAX), now()],
            )
            .map_err(crate::core::already_exists("OS", name))?;
            events::record(
                tx,
                NewEvent::info(
                    EventType::Admin,
                    "os.import",
                    actor,
                    json!({"os": name, "bytes": bytes}),
                ),
            )?;
            Ok(OsEntry {
                name: name.to_owned(),
                kind: "image".into(),
                bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            })
        });
        if added.is_err() {
            let _ = std::fs::remove_file(&dest);
        }
        added
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
        self.write(|tx| {
            let a = user(tx, actor)?;
            let v = self.vm_show_in(tx, &a, vm)?;
            may_act(&a, &v)?;
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
