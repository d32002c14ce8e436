//! Status sync: the host's power state is the truth. A pass reads each VM's
//! state and writes it to the database; a VM found off under an ACTIVE session
//! ends the session (TERMINATED); rows in a transition are left alone; a host
//! that cannot be reached degrades the VM to UNKNOWN and never ends a session.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use serde_json::json;
use ts_rs::TS;

use crate::core::{vm_by_id, Core, SYSTEM};
use crate::error::Result;
use crate::events::{self, NewEvent};
use crate::model::*;
use crate::provider::{PowerState, ProviderError};
use crate::store::now;

/// A change a sync made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[ts(export)]
pub struct SyncChange {
    /// The VM.
    pub vm: String,
    /// Its status before.
    pub was: VmStatus,
    /// Its status now.
    pub now: VmStatus,
    /// The session it ended, if any.
    pub terminated_session: Option<i64>,
    /// What saw it (`poll`, `event`).
    pub source: String,
}

/// What reconciling one machine did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// The database changed.
    Changed(SyncChange),
    /// Nothing to change (or not vmdesk's machine).
    Unchanged,
    /// Seen off under a session: look again after the reboot grace.
    LookAgain,
}

/// What the host said of a machine.
type Observed = std::result::Result<PowerState, ProviderError>;

/// How long a machine seen off under an active session is given to come back
/// (a reboot seen between its stop and its start) before the session ends.
pub const REBOOT_GRACE: Duration = Duration::from_millis(800);

impl Core {
    /// One full pass over every VM of every host. Returns what changed.
    pub fn sync_once(&self, source: &str) -> Result<Vec<SyncChange>> {
        self.sync_where("status NOT IN ('CREATING', 'DESTROYED')", true, source)
    }

    /// A sync pass, then the running time it reconciled is billed: the full
    /// pass over every VM, or (`full` false) the fast one over the VMs of
    /// active sessions. Returns what the pass changed.
    pub fn sync_and_bill(&self, full: bool, source: &str) -> Result<Vec<SyncChange>> {
        let changes = if full {
            self.sync_once(source)?
        } else {
            self.sync_active(source)?
        };
        self.bill_runtime_now()?;
        Ok(changes)
    }

    /// One pass over the VMs of ACTIVE sessions only (the fast loop).
    pub fn sync_active(&self, source: &str) -> Result<Vec<SyncChange>> {
        self.sync_where(
            "live_session_id IN (SELECT id FROM sessions WHERE status = 'ACTIVE')",
            false,
            source,
        )
    }

    fn sync_where(&self, filter: &str, all: bool, source: &str) -> Result<Vec<SyncChange>> {
        let vms: Vec<Vm> = if let Some(t) = self.team() {
            let mut vms = t.vm_list(true)?;
            if all {
                vms.retain(|v| !matches!(v.status, VmStatus::Creating | VmStatus::Destroyed));
            } else {
                let active: std::collections::HashSet<i64> = t
                    .session_list(true)?
                    .into_iter()
                    .filter(|s| s.status == SessionStatus::Active)
                    .map(|s| s.id)
                    .collect();
                vms.retain(|v| v.session_id.is_some_and(|s| active.contains(&s)));
            }
            vms.sort_by(|a, b| a.host.cmp(&b.host).then(a.id.cmp(&b.id)));
            vms
        } else {
            let db = self.db();
            let ids: Vec<i64> = db
                .prepare_cached(&format!(
                    "SELECT id FROM vms WHERE {filter} ORDER BY host_id, id"
                ))?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            ids.into_iter()
                .map(|id| vm_by_id(&db, id))
                .collect::<Result<_>>()?
        };
        let mut changes = Vec::new();
        let mut second_look = Vec::new();
        // One batch of reads per host (a provider may answer a full pass
        // with one listing).
        for batch in vms.chunk_by(|a, b| a.host == b.host) {
            let mut now = Vec::with_capacity(batch.len());
            for (vm, observed) in batch.iter().zip(self.observe_all(batch, all)) {
                if matches!(observed, Ok(s) if s.is_off()) && vm.session_id.is_some() {
                    second_look.push(vm.clone());
                } else {
                    now.push((vm.id, observed));
                }
            }
            changes.extend(self.reconcile_all(now, source)?);
        }
        if !second_look.is_empty() {
            std::thread::sleep(self.opts.reboot_grace);
            for batch in second_look.chunk_by(|a, b| a.host == b.host) {
                let ids = batch.iter().map(|vm| vm.id);
                let seen = ids.zip(self.observe_all(batch, false)).collect();
                changes.extend(self.reconcile_all(seen, source)?);
            }
        }
        Ok(changes)
    }

    /// Reconciles the VM whose machine an event on host `uri` is about
    /// (`source`: what saw it). Machines that are not vmdesk's are ignored.
    /// A machine seen off under a session is not written on the first look
    /// (`grace_over` false): the caller looks again after the reboot grace
    /// ([`Core::reboot_grace`]), so a reboot seen between its stop and its
    /// start does not end the session.
    pub fn reconcile_machine(
        &self,
        uri: &str,
        machine: &str,
        source: &str,
        grace_over: bool,
    ) -> Result<Reconciled> {
        let vm: Option<Vm> = if let Some(t) = self.team() {
            let host: Option<String> = t
                .host_list()?
                .into_iter()
                .find(|h| h.uri == uri)
                .map(|h| h.name);
            t.vm_list(true)?.into_iter().find(|v| {
                v.provider_id.as_deref() == Some(machine)
                    && Some(&v.host) == host.as_ref()
                    && v.status != VmStatus::Destroyed
            })
        } else {
            let db = self.db();
            let id: Option<i64> = db
                .prepare_cached(
                    "SELECT v.id FROM vms v JOIN hosts h ON h.id = v.host_id
                     WHERE v.provider_id = ?1 AND h.uri = ?2 AND v.status <> 'DESTROYED'",
                )?
                .query_row(params![machine, uri], |r| r.get(0))
                .optional()?;
            id.map(|id| vm_by_id(&db, id)).transpose()?
        };
        let Some(vm) = vm else {
            return Ok(Reconciled::Unchanged);
        };
        let observed = self.observe(&vm);
        if !grace_over && matches!(observed, Ok(s) if s.is_off()) && vm.session_id.is_some() {
            return Ok(Reconciled::LookAgain);
        }
        Ok(match self.reconcile(vm.id, observed, source)? {
            Some(c) => Reconciled::Changed(c),
            None => Reconciled::Unchanged,
        })
    }

    /// How long a VM seen off under a session has to come back.
    pub fn reboot_grace(&self) -> Duration {
        self.opts.reboot_grace
    }

    /// The URIs of the libvirt hosts.
    pub fn libvirt_uris(&self) -> Result<Vec<String>> {
        if let Some(t) = self.team() {
            return Ok(t
                .host_list()?
                .into_iter()
                .filter(|h| h.kind == HostKind::Libvirt)
                .map(|h| h.uri)
                .collect());
        }
        let db = self.db();
        let mut stmt =
            db.prepare_cached("SELECT uri FROM hosts WHERE kind = 'libvirt' ORDER BY name")?;
        let uris = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(uris)
    }

    /// The power states of VMs of one host, in order (`all`: a full pass).
    fn observe_all(&self, vms: &[Vm], all: bool) -> Vec<Observed> {
        let Some(first) = vms.first() else {
            return Vec::new();
        };
        match self.provider(&first.host) {
            Ok(p) => {
                let machines: Vec<String> = vms
                    .iter()
                    .map(|vm| self.machine_spec(vm).machine_name)
                    .collect();
                p.power_states(&machines, all)
            }
            Err(e) => vms
                .iter()
                .map(|_| Err(ProviderError::Unreachable(e.one_line())))
                .collect(),
        }
    }

    fn observe(&self, vm: &Vm) -> Observed {
        let machine = self.machine_spec(vm).machine_name;
        match self.provider(&vm.host) {
            Ok(p) => p.power_state(&machine),
            Err(e) => Err(ProviderError::Unreachable(e.one_line())),
        }
    }

    /// Writes what the host said of one VM, re-checking the row in the same
    /// transaction (a transition that began since is left alone).
    pub fn reconcile(
        &self,
        vm_id: i64,
        observed: Observed,
        source: &str,
    ) -> Result<Option<SyncChange>> {
        if let Some(t) = self.team() {
            return team_reconcile(t, vm_id, &observed, source);
        }
        self.write(|tx| reconcile_in(tx, vm_id, observed, source))
    }

    /// [`Core::reconcile`] of many VMs, in one transaction per thousand (a
    /// full pass of a large subscription writes in a few commits, not one
    /// per VM).
    fn reconcile_all(&self, seen: Vec<(i64, Observed)>, source: &str) -> Result<Vec<SyncChange>> {
        if let Some(t) = self.team() {
            let mut changes = Vec::new();
            for (vm_id, observed) in seen {
                changes.extend(team_reconcile(t, vm_id, &observed, source)?);
            }
            return Ok(changes);
        }
        let mut changes = Vec::new();
        let mut seen = seen.into_iter().peekable();
        while seen.peek().is_some() {
            let chunk: Vec<_> = seen.by_ref().take(1000).collect();
            changes.extend(self.write(|tx| {
                let mut out = Vec::new();
                for (vm_id, observed) in chunk {
                    out.extend(reconcile_in(tx, vm_id, observed, source)?);
                }
                Ok(out)
            })?);
        }
        Ok(changes)
    }
}

/// [`reconcile_in`] on a team store: one locked function call per VM.
fn team_reconcile(
    t: &dyn crate::team::Store,
    vm_id: i64,
    observed: &Observed,
    source: &str,
) -> Result<Option<SyncChange>> {
    let (state, error) = match observed {
        Ok(PowerState::Running) => ("running", None),
        Ok(s) if s.is_off() => ("off", None),
        Ok(_) => ("between", None),
        Err(ProviderError::NotFound(_)) => ("not_found", None),
        Err(e) => ("error", Some(e.to_string())),
    };
    t.vm_synced(vm_id, state, error.as_deref(), source)
}

/// Writes what the host said of one VM inside a transaction.
fn reconcile_in(
    tx: &rusqlite::Transaction<'_>,
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
