//! Status sync: the host's power state is the truth. A pass reads each VM's
//! state and writes it to the database; a VM found off under an ACTIVE session
//! ends the session (TERMINATED); rows in a transition are left alone; a host
//! that cannot be reached degrades the VM to UNKNOWN and never ends a session.

use std::time::Duration;

use serde::Serialize;
use ts_rs::TS;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::model::*;
use crate::provider::ProviderError;

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

/// A VM's address as a host gave it, for [`crate::team::Vms::vm_addresses`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenAddress {
    /// The VM.
    pub vm_id: i64,
    /// Its IPv4 address (none: it has none now).
    pub ip: Option<String>,
    /// The port its SSH server listens on (none with no address).
    pub ssh_port: Option<i64>,
    /// What told it: `lease`, `agent`, `arp` or `azure` (none with no address).
    pub learned: Option<String>,
    /// Its public IPv4 address, where it has one (kept in its metadata as
    /// `public_ip`).
    pub public_ip: Option<String>,
}

/// A VM whose address changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[ts(export)]
pub struct AddressChange {
    /// The VM.
    pub vm: String,
    /// Its address before.
    pub was: Option<String>,
    /// Its address now.
    pub now: Option<String>,
    /// What told it (`lease`, `agent`, `arp`).
    pub learned: Option<String>,
    /// Which pass saw it (`poll`, `event`, `ssh`).
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
use crate::team::Observed;

/// How long a machine seen off under an active session is given to come back
/// (a reboot seen between its stop and its start) before the session ends.
pub const REBOOT_GRACE: Duration = Duration::from_millis(800);

impl Core {
    /// One full pass over every VM of every host. Returns what changed.
    pub fn sync_once(&self, source: &str) -> Result<Vec<SyncChange>> {
        let mut vms = self.reading().vms().vm_list(true)?;
        vms.retain(|v| !matches!(v.status, VmStatus::Creating | VmStatus::Destroyed));
        vms.sort_by(|a, b| a.host.cmp(&b.host).then(a.id.cmp(&b.id)));
        self.sync_these(vms, true, source)
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
        // The cost controls: a desk whose login is not an admin leaves them
        // to one that is (a team store's `serve`).
        match self.enforce_limits_now() {
            Ok(_) => {}
            Err(Error::AdminOnly(_)) => {}
            Err(e) => tracing::warn!(error = %e.one_line(), "enforcing the cost controls"),
        }
        if full {
            match self.stop_orphans(chrono::Utc::now()) {
                Ok(_) | Err(Error::AdminOnly(_)) => {}
                Err(e) => tracing::warn!(error = %e.one_line(), "stopping orphaned pool VMs"),
            }
        }
        Ok(changes)
    }

    /// One pass over the VMs of ACTIVE sessions only (the fast loop).
    pub fn sync_active(&self, source: &str) -> Result<Vec<SyncChange>> {
        let vms = self.reading().vms().vm_list_active()?;
        self.sync_these(vms, false, source)
    }

    /// Observes and reconciles `vms` (ordered by host); `all`: a full pass.
    fn sync_these(&self, vms: Vec<Vm>, all: bool, source: &str) -> Result<Vec<SyncChange>> {
        let mut changes = Vec::new();
        let mut second_look = Vec::new();
        // One batch of reads per host (a provider may answer a full pass
        // with one listing), the hosts read in parallel: a host that hangs
        // delays the pass by its own timeout, not by the sum of all.
        let batches: Vec<&[Vm]> = vms.chunk_by(|a, b| a.host == b.host).collect();
        let observed: Vec<Vec<Observed>> = if batches.len() > 1 {
            std::thread::scope(|s| {
                let reads: Vec<_> = batches
                    .iter()
                    .map(|b| s.spawn(move || self.observe_all(b, all)))
                    .collect();
                reads
                    .into_iter()
                    .zip(&batches)
                    .map(|(r, b)| {
                        r.join().unwrap_or_else(|_| {
                            b.iter()
                                .map(|_| Err(ProviderError::Unreachable("the read failed".into())))
                                .collect()
                        })
                    })
                    .collect()
            })
        } else {
            batches.iter().map(|b| self.observe_all(b, all)).collect()
        };
        for (batch, seen) in batches.into_iter().zip(observed) {
            let mut now = Vec::with_capacity(batch.len());
            for (vm, observed) in batch.iter().zip(seen) {
                // A creation that failed before the host made its machine
                // stays FAILED_TO_START: the host never knew it, so it is
                // not UNKNOWN (and stays listed for a refund).
                if vm.status == VmStatus::FailedToStart
                    && matches!(observed, Err(ProviderError::NotFound(_)))
                {
                    continue;
                }
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
        let vm = self.reading().vms().vm_by_machine(uri, machine)?;
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
        Ok(self
            .reading()
            .places()
            .host_list()?
            .into_iter()
            .filter(|h| h.kind == HostKind::Libvirt)
            .map(|h| h.uri)
            .collect())
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
        Ok(self.reconcile_all(vec![(vm_id, observed)], source)?.pop())
    }

    /// [`Core::reconcile`] of many VMs, in one transaction per thousand (a
    /// full pass of a large subscription writes in a few commits, not one
    /// per VM).
    fn reconcile_all(&self, seen: Vec<(i64, Observed)>, source: &str) -> Result<Vec<SyncChange>> {
        self.reading().vms().vms_synced(seen, source)
    }
}
