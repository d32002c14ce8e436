//! VMs on the embedded store: pools' and users' own, their creation,
//! actions, observed state and metadata.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;

use super::ledger::{self as rows, Entry};
use super::{already_exists, host, project_id, vm_by_id, vm_by_ref, vm_row, vm_select, Embedded};
use crate::core::{system_actor, SYSTEM};
use crate::error::{Error, Result};
use crate::events::{self, NewEvent};
use crate::ledger;
use crate::model::*;
use crate::provider::{PowerState, ProviderError};
use crate::store::now;
use crate::team::{ImportMachine, Observed, Vms};
use crate::SyncChange;

/// The owner of a VM or an admin may act on it.
pub(crate) fn may_act(a: &User, vm: &Vm) -> Result<()> {
    if a.role == Role::Admin || vm.owner.as_deref() == Some(a.name.as_str()) {
        return Ok(());
    }
    Err(Error::Forbidden {
        user: a.name.clone(),
        action: format!("act on VM {}", vm.name),
    })
}

/// Events of a creation are the owner's (or the system's for a pool VM).
fn actor_of(vm: &Vm) -> &str {
    vm.owner.as_deref().unwrap_or(SYSTEM)
}

impl Embedded<'_> {
    /// A VM `a` may see: a pool VM, their own, or any for an admin.
    pub(crate) fn visible(&self, conn: &Connection, a: &User, reference: &str) -> Result<Vm> {
        let v = vm_by_ref(conn, reference)?;
        let visible = v.pool.is_some()
            || v.owner.as_deref() == Some(a.name.as_str())
            || a.role == Role::Admin;
        if !visible {
            return Err(Error::UnknownVm(reference.to_owned()));
        }
        Ok(v)
    }
}

impl Vms for Embedded<'_> {
    fn vm_list(&self, all: bool) -> Result<Vec<Vm>> {
        let conn = self.core.db();
        let a = self.me(&conn)?;
        if all && a.role != Role::Admin {
            return Err(Error::AdminOnly("list every user's VMs"));
        }
        let mut stmt = conn.prepare_cached(concat!(
            vm_select!(),
            "WHERE ?1 OR v.project_id IS NOT NULL OR v.owner_user_id = ?2 ORDER BY v.name"
        ))?;
        let rows = stmt.query_map(params![all, a.id], vm_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn vm_changes(&self, all: bool, since: Option<&str>) -> Result<VmChanges> {
        let since: i64 = match since {
            None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| Error::invalid(format!("{c:?} is not a cursor of a VM list")))?,
        };
        let conn = self.core.db();
        let a = self.me(&conn)?;
        if all && a.role != Role::Admin {
            return Err(Error::AdminOnly("list every user's VMs"));
        }
        // One read transaction: the rows, their number and the cursor are
        // of one point in time.
        let tx = conn.unchecked_transaction()?;
        let cursor: i64 = tx
            .prepare_cached("SELECT n FROM vm_rev")?
            .query_row([], |r| r.get(0))?;
        const SEES: &str = "(?1 OR v.project_id IS NOT NULL OR v.owner_user_id = ?2)";
        let total: i64 = tx
            .prepare_cached(&format!("SELECT count(*) FROM vms v WHERE {SEES}"))?
            .query_row(params![all, a.id], |r| r.get(0))?;
        let vms = tx
            .prepare_cached(&format!(
                "{} WHERE {SEES} AND v.rev > ?3 ORDER BY v.name",
                vm_select!()
            ))?
            .query_map(params![all, a.id, since], vm_row)?
            .collect::<Result<_, _>>()?;
        tx.finish()?;
        Ok(VmChanges {
            vms,
            total,
            cursor: cursor.to_string(),
        })
    }

    fn vms_idle_watched(&self) -> Result<Vec<(Vm, bool)>> {
        let conn = self.core.db();
        self.admin_me(&conn, "watch VMs for idleness")?;
        let tx = conn.unchecked_transaction()?;
        let open: std::collections::HashSet<i64> = tx
            .prepare_cached("SELECT DISTINCT vm_id FROM consoles")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let vms: Vec<Vm> = tx
            .prepare_cached(concat!(
                vm_select!(),
                "WHERE v.project_id IS NULL AND v.status = 'RUNNING'
                   AND json_extract(v.metadata, '$.idle_stop_minutes') IS NOT NULL
                 ORDER BY v.id"
            ))?
            .query_map([], vm_row)?
            .collect::<Result<_, _>>()?;
        tx.finish()?;
        Ok(vms
            .into_iter()
            .map(|v| {
                let console = open.contains(&v.id);
                (v, console)
            })
            .collect())
    }

    fn vm_list_active(&self) -> Result<Vec<Vm>> {
        let conn = self.core.db();
        if self.me(&conn)?.role != Role::Admin {
            return Err(Error::AdminOnly("list every user's VMs"));
        }
        let mut stmt = conn.prepare_cached(concat!(
            vm_select!(),
            "WHERE v.live_session_id IN (SELECT id FROM sessions WHERE status = 'ACTIVE')
             ORDER BY h.name, v.id"
        ))?;
        let rows = stmt.query_map([], vm_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn vm_by_machine(&self, uri: &str, machine: &str) -> Result<Option<Vm>> {
        let conn = self.core.db();
        if self.me(&conn)?.role != Role::Admin {
            return Err(Error::AdminOnly("list every user's VMs"));
        }
        let id: Option<i64> = conn
            .prepare_cached(
                "SELECT v.id FROM vms v JOIN hosts h ON h.id = v.host_id
                 WHERE v.provider_id = ?1 AND h.uri = ?2 AND v.status <> 'DESTROYED'",
            )?
            .query_row(params![machine, uri], |r| r.get(0))
            .optional()?;
        id.map(|id| vm_by_id(&conn, id)).transpose()
    }

    fn vm(&self, reference: &str) -> Result<Vm> {
        let conn = self.core.db();
        let a = self.me(&conn)?;
        self.visible(&conn, &a, reference)
    }

    fn vm_add(&self, spec: &NewVm, machine: &str, worker: &str) -> Result<Vm> {
        // The intent is durable before the host is touched.
        self.core.write(|tx| {
            self.admin_me(tx, "add VMs to a pool")?;
            let pid = project_id(tx, &spec.pool)?;
            let h = host(tx, &spec.host)?;
            let ts = now();
            tx.execute(
                "INSERT INTO vms (name, os_type, ram_mb, disk_gb, cpu_cores, vm_type, status, project_id,
                                  host_id, provider_id, worker, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'CREATING', ?7, ?8, ?9, ?10, ?11, ?11)",
                params![
                    spec.name, spec.os_type, spec.ram_mb, spec.disk_gb, spec.cpu_cores, spec.vm_type,
                    pid, h.id, machine, worker, ts
                ],
            )
            .map_err(already_exists("VM", &spec.name))?;
            vm_by_id(tx, tx.last_insert_rowid())
        })
    }

    fn vm_add_done(&self, id: i64, ok: bool, details: serde_json::Value) -> Result<()> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "add VMs to a pool")?;
            if ok {
                tx.execute(
                    "UPDATE vms SET status = 'STOPPED', worker = NULL, updated_at = ?2 WHERE id = ?1",
                    params![id, now()],
                )?;
                events::record(
                    tx,
                    NewEvent::info(EventType::Vm, "vm.add", &a.name, details).vm(id),
                )?;
            } else {
                tx.execute("DELETE FROM vms WHERE id = ?1", [id])?;
                events::record(
                    tx,
                    NewEvent::info(EventType::Vm, "vm.add_failed", &a.name, details)
                        .severity(Severity::Warning),
                )?;
            }
            Ok(())
        })
    }

    fn vm_create(&self, spec: &VmCreate, machine: &str, worker: Option<&str>) -> Result<Vm> {
        let cost = ledger::quote(spec.ram_mb, spec.disk_gb, spec.cpu_cores)?.cost;
        self.core.write(|tx| {
            let u = self.me(tx)?;
            let host_id: i64 = match &spec.host {
                Some(h) => host(tx, h)?.id,
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
                    machine, worker, spec.start, ts
                ],
            )
            .map_err(already_exists("VM", &spec.name))?;
            let vm_id = tx.last_insert_rowid();
            let reason = format!("create VM {}", spec.name);
            rows::append(
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
        })
    }

    fn vm_claim(&self, id: i64, worker: &str) -> Result<bool> {
        self.core.write(|tx| {
            Ok(tx.execute(
                "UPDATE vms SET worker = ?2 WHERE id = ?1 AND status = 'CREATING' AND worker IS NULL",
                params![id, worker],
            )? > 0)
        })
    }

    fn vm_start_after_create(&self, id: i64) -> Result<bool> {
        Ok(self.core.db().query_row(
            "SELECT start_after_create FROM vms WHERE id = ?1",
            [id],
            |r| r.get(0),
        )?)
    }

    fn vm_created(&self, id: i64, outcome: std::result::Result<VmStatus, String>) -> Result<Vm> {
        self.core.write(|tx| {
            let vm = vm_by_id(tx, id)?;
            match outcome {
                Ok(status) => {
                    tx.execute(
                        "UPDATE vms SET status = ?2, worker = NULL, updated_at = ?3 WHERE id = ?1",
                        params![id, status, now()],
                    )?;
                    events::record(
                        tx,
                        NewEvent::info(
                            EventType::Vm,
                            "vm.created",
                            actor_of(&vm),
                            json!({"was": VmStatus::Creating, "now": status}),
                        )
                        .vm(id),
                    )?;
                }
                Err(reason) => {
                    tx.execute(
                        "UPDATE vms SET status = 'FAILED_TO_START', worker = NULL, updated_at = ?2 WHERE id = ?1",
                        params![id, now()],
                    )?;
                    events::record(
                        tx,
                        NewEvent::info(EventType::Vm, "vm.create_failed", actor_of(&vm),
                                       json!({"was": VmStatus::Creating, "now": VmStatus::FailedToStart,
                                              "reason": reason, "refunded": false}))
                            .severity(Severity::Warning)
                            .vm(id),
                    )?;
                }
            }
            vm_by_id(tx, id)
        })
    }

    fn vm_action_begin(&self, id: i64, action: VmAction, force_off_at: &str) -> Result<Vm> {
        // Checked (and, for destroy, claimed) in the write transaction, so
        // that an allocation cannot take the VM between check and act.
        self.core.write(|tx| {
            let a = self.me(tx)?;
            let v = self.visible(tx, &a, &id.to_string())?;
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
            if v.status == VmStatus::Stopping {
                let when = v
                    .metadata
                    .get(crate::vms::FORCE_OFF_AT)
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
                    params![v.id, now(), force_off_at],
                )?;
            }
            Ok(v)
        })
    }

    fn vm_action_done(
        &self,
        id: i64,
        action: VmAction,
        was: VmStatus,
        status: VmStatus,
        forced_off: bool,
        as_system: bool,
    ) -> Result<()> {
        self.core.write(|tx| {
            let a = if as_system {
                system_actor()
            } else {
                self.me(tx)?
            };
            let v = vm_by_id(tx, id)?;
            let ts = now();
            tx.execute(
                "UPDATE vms SET status = ?2, updated_at = ?3,
                        last_stopped = CASE WHEN ?2 IN ('STOPPED', 'DESTROYED') THEN ?3 ELSE last_stopped END,
                        metadata = json_remove(metadata, '$.force_off_at')
                 WHERE id = ?1",
                params![id, status, ts],
            )?;
            let event_type = if a.role == Role::Admin && v.owner.as_deref() != Some(a.name.as_str()) {
                EventType::Admin
            } else {
                EventType::Vm
            };
            events::record(
                tx,
                NewEvent::info(event_type, &format!("vm.{}", crate::vms::action_name(action)), &a.name,
                               json!({"vm": v.name, "was": was, "now": status, "forced_off": forced_off}))
                    .vm(id),
            )?;
            Ok(())
        })
    }

    fn vm_action_undo(&self, id: i64, was: VmStatus) -> Result<()> {
        self.core.write(|tx| {
            tx.execute(
                "UPDATE vms SET status = ?2, metadata = json_remove(metadata, '$.force_off_at')
                 WHERE id = ?1 AND status = 'STOPPING'",
                params![id, was],
            )?;
            Ok(())
        })
    }

    /// One transaction per thousand VMs: a full pass over a large host
    /// writes in a few commits, not one per VM.
    fn vms_synced(&self, seen: Vec<(i64, Observed)>, source: &str) -> Result<Vec<SyncChange>> {
        {
            let conn = self.core.db();
            if self.me(&conn)?.role != Role::Admin {
                return Err(Error::AdminOnly("sync VMs"));
            }
        }
        let mut changes = Vec::new();
        let mut seen = seen.into_iter().peekable();
        while seen.peek().is_some() {
            let chunk: Vec<_> = seen.by_ref().take(1000).collect();
            changes.extend(self.core.write(|tx| {
                let mut out = Vec::new();
                for (vm_id, observed) in chunk {
                    out.extend(reconcile_in(tx, vm_id, observed, source)?);
                }
                Ok(out)
            })?);
        }
        Ok(changes)
    }

    fn vm_addresses(
        &self,
        seen: Vec<crate::SeenAddress>,
        source: &str,
    ) -> Result<Vec<crate::AddressChange>> {
        {
            let conn = self.core.db();
            if self.me(&conn)?.role != Role::Admin {
                return Err(Error::AdminOnly("sync VMs"));
            }
        }
        for a in &seen {
            for ip in a.ip.iter().chain(&a.public_ip) {
                if crate::reach::ipv4(ip).is_none() {
                    return Err(Error::invalid(format!("{ip:?} is not an IPv4 address")));
                }
            }
        }
        self.core.write(|tx| {
            let mut out = Vec::new();
            for a in &seen {
                let row: Option<AddressRow> = tx
                    .prepare_cached(
                        "SELECT name, ip_address, ssh_port, status, json_extract(metadata, '$.public_ip')
                         FROM vms WHERE id = ?1",
                    )?
                    .query_row([a.vm_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                    .optional()?;
                let Some((name, ip, port, status, public)) = row else { continue };
                let same = (ip.as_deref(), port, public.as_deref())
                    == (a.ip.as_deref(), a.ssh_port, a.public_ip.as_deref());
                if same || status == VmStatus::Destroyed {
                    continue;
                }
                tx.prepare_cached(
                    "UPDATE vms SET ip_address = ?2, ssh_port = ?3, updated_at = ?4,
                            metadata = CASE WHEN ?5 IS NULL THEN json_remove(metadata, '$.public_ip')
                                            ELSE json_set(metadata, '$.public_ip', ?5) END
                     WHERE id = ?1",
                )?
                .execute(params![a.vm_id, a.ip, a.ssh_port, now(), a.public_ip])?;
                if ip != a.ip || public != a.public_ip {
                    events::record(
                        tx,
                        NewEvent::info(EventType::Vm, "vm.address", SYSTEM,
                                       json!({"vm": name, "was": ip, "now": a.ip, "public_ip": a.public_ip,
                                              "learned": a.learned, "source": source}))
                            .vm(a.vm_id),
                    )?;
                    out.push(crate::AddressChange {
                        vm: name,
                        was: ip,
                        now: a.ip.clone(),
                        learned: a.learned.clone(),
                        source: source.to_owned(),
                    });
                }
            }
            Ok(out)
        })
    }
    fn vm_import(
        &self,
        host_name: &str,
        pool: &str,
        machines: &[ImportMachine],
    ) -> Result<ImportReport> {
        self.core.write(|tx| {
            let a = self.admin_me(tx, "import VMs")?;
            let pid = project_id(tx, pool)?;
            let h = host(tx, host_name)?;
            let mut report = ImportReport::default();
            for m in machines {
                let known: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM vms WHERE host_id = ?1 AND provider_id = ?2 AND status <> 'DESTROYED')",
                    params![h.id, m.machine],
                    |r| r.get(0),
                )?;
                if known {
                    continue;
                }
                let taken = |name: &str| -> Result<bool> {
                    Ok(tx.query_row("SELECT EXISTS (SELECT 1 FROM vms WHERE name = ?1)", [name], |r| r.get(0))?)
                };
                let name = m.names.iter().find(|n| !taken(n).unwrap_or(true));
                let (Some(name), Some(vm_type)) = (name, &m.vm_type) else {
                    report.skipped.push(Skipped {
                        machine: m.machine.clone(),
                        reason: format!("no free, valid vmdesk name or type for {:?} ({})", m.name, m.size),
                    });
                    continue;
                };
                let ts = now();
                tx.execute(
                    "INSERT INTO vms (name, os_type, ram_mb, disk_gb, cpu_cores, vm_type, status, project_id,
                                      host_id, provider_id, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
                    params![name, m.os_type, m.ram_mb, m.disk_gb, m.cpu_cores, vm_type, m.status, pid, h.id, m.machine, ts],
                )?;
                let id = tx.last_insert_rowid();
                events::record(
                    tx,
                    NewEvent::info(
                        EventType::Admin,
                        "vm.import",
                        &a.name,
                        json!({"vm": name, "host": h.name, "machine": m.machine, "size": m.size,
                               "pool": pool, "status": m.status}),
                    )
                    .vm(id),
                )?;
                report.imported.push(vm_by_id(tx, id)?);
            }
            Ok(report)
        })
    }

    fn vm_meta(&self, vm: &str, patch: &serde_json::Value) -> Result<Vm> {
        self.core.write(|tx| {
            let a = self.me(tx)?;
            let v = self.visible(tx, &a, vm)?;
            may_act(&a, &v)?;
            if v.status == VmStatus::Destroyed {
                return Err(Error::invalid(format!(
                    "VM {} is destroyed: its metadata can no longer change",
                    v.name
                )));
            }
            tx.execute(
                "UPDATE vms SET metadata = json_patch(metadata, ?2), updated_at = ?3 WHERE id = ?1",
                params![v.id, patch.to_string(), now()],
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

/// Writes what the host said of one VM inside a transaction, re-checking
/// the row (a transition that began since is left alone).
/// A VM's name, address, SSH port, status and public address.
type AddressRow = (
    String,
    Option<String>,
    Option<i64>,
    VmStatus,
    Option<String>,
);

fn reconcile_in(
    tx: &Connection,
    vm_id: i64,
    observed: Observed,
    source: &str,
) -> Result<Option<SyncChange>> {
    let vm = vm_by_id(tx, vm_id)?;
    let busy: bool = tx
        .prepare_cached("SELECT worker IS NOT NULL FROM vms WHERE id = ?1")?
        .query_row([vm_id], |r| r.get(0))?;
    let session: Option<(i64, SessionStatus, String)> = match vm.session_id {
        Some(sid) => tx
            .prepare_cached(
                "SELECT s.id, s.status, u.name FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?1",
            )?
            .query_row([sid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?,
        None => None,
    };
    // The host answered: remember when, and what asked.
    if matches!(observed, Ok(_) | Err(ProviderError::NotFound(_))) {
        tx.prepare_cached("UPDATE vms SET synced_at = ?2, synced_by = ?3 WHERE id = ?1")?
            .execute(params![vm_id, now(), source])?;
    }
    let in_transition =
        busy || matches!(
            vm.status,
            VmStatus::Creating | VmStatus::Starting | VmStatus::Stopping | VmStatus::Destroyed
        ) || session
            .as_ref()
            .is_some_and(|(_, s, _)| *s != SessionStatus::Active);
    if in_transition {
        return Ok(None);
    }
    let (now_status, reason) = match &observed {
        Ok(PowerState::Running) => (VmStatus::Running, None),
        Ok(s) if s.is_off() => (VmStatus::Stopped, None),
        Ok(_) => return Ok(None), // starting or stopping: look again next pass
        Err(ProviderError::NotFound(_)) => {
            (VmStatus::Unknown, Some("the host no longer knows this VM"))
        }
        Err(_) => (VmStatus::Unknown, Some("the host cannot be reached")),
    };
    let ends_session = now_status == VmStatus::Stopped && session.is_some();
    if now_status == vm.status && !ends_session {
        return Ok(None);
    }
    let ts = now();
    tx.execute(
        "UPDATE vms SET status = ?2, updated_at = ?3,
                last_stopped = CASE WHEN ?2 = 'STOPPED' THEN ?3 ELSE last_stopped END
         WHERE id = ?1",
        params![vm_id, now_status, ts],
    )?;
    let severity = if now_status == VmStatus::Unknown {
        Severity::Warning
    } else {
        Severity::Info
    };
    events::record(
        tx,
        NewEvent::info(EventType::Vm, "sync.status", SYSTEM,
                       json!({"vm": vm.name, "was": vm.status, "now": now_status, "source": source,
                              "reason": reason, "error": observed.as_ref().err().map(ToString::to_string)}))
            .severity(severity)
            .vm(vm_id),
    )?;
    let mut terminated = None;
    if let (true, Some((sid, _, user))) = (ends_session, &session) {
        tx.execute(
            "UPDATE sessions SET status = 'TERMINATED', worker = NULL, updated_at = ?2, ended_at = ?2,
                    error = 'the VM stopped under the session'
             WHERE id = ?1 AND status = 'ACTIVE'",
            params![sid, ts],
        )?;
        events::record(
            tx,
            NewEvent::info(EventType::Session, "session.terminated", SYSTEM,
                           json!({"was": SessionStatus::Active, "now": SessionStatus::Terminated,
                                  "user": user, "reason": "the VM stopped under the session", "source": source}))
                .severity(Severity::Warning)
                .vm(vm_id)
                .session(*sid),
        )?;
        terminated = Some(*sid);
    }
    Ok(Some(SyncChange {
        vm: vm.name,
        was: vm.status,
        now: now_status,
        terminated_session: terminated,
        source: source.to_owned(),
    }))
}
