//! A user's own VMs: creation for credits along one path (waiting and
//! background callers alike, with progress), actions, and metadata.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::ledger::{self};
use crate::model::*;
use crate::provider::{OsImage, PowerState};
use crate::sessions::{power_off, vm_status_of, wait_for};
use crate::team::{Acting, Catalog};
use crate::validate;

/// The built-in operating systems (no image: the VM boots to firmware).
pub const OS_BUILTIN: &[&str] = &["blank"];

/// The catalog's names, for an error that names an unknown OS.
fn unknown_os(name: &str, catalog: &[OsEntry]) -> Error {
    let names: Vec<&str> = catalog.iter().map(|o| o.name.as_str()).collect();
    Error::invalid(format!(
        "unknown OS {name:?}; the catalog has: {}",
        names.join(", ")
    ))
}

impl Core {
    /// The image of an OS of the catalog: `None` for a built-in, an error
    /// naming the catalog for an unknown one.
    pub(crate) fn os_image(&self, name: &str) -> Result<Option<OsImage>> {
        if OS_BUILTIN.contains(&name) {
            return Ok(None);
        }
        let images = self.catalog().os_images()?;
        let Some(row) = images.into_iter().find(|i| i.name == name) else {
            return Err(unknown_os(name, &self.os_list()?));
        };
        let path = crate::images::path_of(&self.opts.data_dir, name, &row.file)?;
        let sha256 = match row.sha256 {
            Some(s) => s,
            None => crate::images::sha256_of(&path)?,
        };
        Ok(Some(OsImage {
            name: name.to_owned(),
            path,
            bytes: u64::try_from(row.bytes).unwrap_or(0),
            sha256,
        }))
    }

    /// Refuses a size below what OS `os` boots with (an unknown OS is
    /// refused too). Called before anything is charged or defined.
    pub(crate) fn check_os_minimum(&self, os: &str, ram_mb: i64, disk_gb: i64) -> Result<()> {
        let catalog = self.os_list()?;
        let Some(entry) = catalog.iter().find(|o| o.name == os) else {
            return Err(unknown_os(os, &catalog));
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
}

/// Receives the progress of a creation.
pub type ProgressFn<'a> = &'a (dyn Fn(&Progress) + Sync);

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
        self.os_image(&spec.os_type)?;
        ledger::quote(spec.ram_mb, spec.disk_gb, spec.cpu_cores)?;
        self.check_os_minimum(&spec.os_type, spec.ram_mb, spec.disk_gb)?;
        let worker = if wait {
            Some(self.worker_id()?.to_owned())
        } else {
            None
        };
        // Where it runs, and that it fits there, before anything is charged.
        let placed = self.placement(actor, spec.ram_mb, &spec.os_type, spec.host.as_deref())?;
        // Whoever provisions the VM writes this user's key into its seed.
        self.publish_key(actor);
        let spec = &VmCreate {
            host: Some(placed.host),
            ..spec.clone()
        };
        let store = self.acting(actor)?;
        let vm = match store.vms().vm_create(
            spec,
            &self.machine_name(&spec.name),
            worker.as_deref(),
        ) {
            Err(e @ Error::InsufficientCredits { .. }) => {
                let details = json!({"vm": spec.name, "code": e.code(), "reason": e.one_line()});
                if let Err(w) = store
                    .events()
                    .note_failure("vm.create.refused", None, details)
                {
                    tracing::warn!(vm = %spec.name, error = %w.one_line(), "recording a refusal");
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
        let store = self.reading();
        let vms = store.vms();
        let (vm, start) = (
            vms.vm(&vm_id.to_string())?,
            vms.vm_start_after_create(vm_id)?,
        );
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
            let p = self.provider(&vm.host)?;
            let spec = self.seeded_spec(p.as_ref(), &vm, &self.seed_for(&vm))?;
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
                vms.vm_created(vm_id, Ok(vm_status_of(state)))
            }
            Err(e) => {
                let reason = e.one_line();
                report(steps, &format!("failed: {reason}"));
                vms.vm_created(vm_id, Err(reason))?;
                Err(e)
            }
        }
    }

    /// Provisions a VM created without waiting, if no worker has claimed it
    /// yet: how the app runs a creation in the background with progress.
    pub fn provision_vm(&self, vm_id: i64, progress: Option<ProgressFn<'_>>) -> Result<Vm> {
        let me = self.worker_id()?.to_owned();
        let store = self.reading();
        if !store.vms().vm_claim(vm_id, &me)? {
            return store.vms().vm(&vm_id.to_string());
        }
        self.provision(vm_id, progress)
    }

    /// Starts, stops, restarts or destroys a VM (its owner or an admin). A VM
    /// held by a live session refuses every action but start. A refused or
    /// failed action is an event too (severity warning), with the reason.
    pub fn vm_action(&self, actor: &str, vm: &str, action: VmAction) -> Result<Vm> {
        self.vm_action_on(&self.acting(actor)?, vm, action, false)
    }

    /// [`Core::vm_action`] on a team store; `as_system`: the system itself
    /// acts (billing at zero credits) through this admin's process. A
    /// refused or failed action leaves a warning event, as on one desk.
    pub(crate) fn vm_action_on(
        &self,
        store: &Acting<'_>,
        vm: &str,
        action: VmAction,
        as_system: bool,
    ) -> Result<Vm> {
        let vms = store.vms();
        let out = (|| {
            let v = vms.vm(vm)?;
            let was =
                vms.vm_action_begin(v.id, action, &force_off_at(self.opts.shutdown_timeout))?;
            let acted = self.act_on_machine(&was, action);
            match acted {
                Ok((status, forced)) => {
                    vms.vm_action_done(v.id, action, was.status, status, forced, as_system)?;
                    vms.vm(&v.id.to_string())
                }
                Err(e) => {
                    // The machine stays: so does its state as it was.
                    vms.vm_action_undo(v.id, was.status)?;
                    Err(e)
                }
            }
        })();
        if let Err(e) = &out {
            // A second click on a VM already stopping is no failure: the
            // first one is under way.
            let in_transition = e.to_string().contains("is already stopping");
            if !in_transition && !as_system {
                let vm_id = vms.vm(vm).ok().map(|v| v.id);
                let details = json!({"vm": vm, "code": e.code(), "reason": e.one_line()});
                let name = format!("vm.{}.failed", action_name(action));
                if let Err(w) = store.events().note_failure(&name, vm_id, details) {
                    tracing::warn!(%vm, error = %w.one_line(), "recording a failed action");
                }
            }
        }
        out
    }

    /// Does an action to a VM's machine; the state it leaves the VM in, and
    /// whether the guest had to be forced off.
    fn act_on_machine(&self, v: &Vm, action: VmAction) -> Result<(VmStatus, bool)> {
        let machine = self.machine_spec(v).machine_name;
        let p = self.provider(&v.host)?;
        let err = |source| Error::Provider {
            host: v.host.clone(),
            source,
        };
        let timeout = self.opts.shutdown_timeout;
        Ok(match action {
            VmAction::Start => {
                self.ensure_machine(p.as_ref(), v, &self.seed_for(v))?;
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
        let store = self.acting(actor)?;
        let v = store.vms().vm(vm)?;
        let q = crate::EventQuery {
            limit: limit.clamp(1, 10_000),
            ..Default::default()
        };
        store.events().events_query(&q, Some(v.id))
    }

    /// The OS catalog: the built-ins and the imported images.
    pub fn os_list(&self) -> Result<Vec<OsEntry>> {
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
        out.extend(self.catalog().os_images()?.into_iter().map(|i| OsEntry {
            name: i.name,
            kind: "image".into(),
            bytes: i.bytes,
            min_ram_mb: i.min_ram_mb.unwrap_or(validate::RAM_MB.0),
            min_disk_gb: i.min_disk_gb.unwrap_or(validate::DISK_GB.0),
            boots: true,
        }));
        Ok(out)
    }

    /// The price of creating a VM of this OS and size, and its hourly running
    /// cost at this core's billing rate; refuses what `vm_create` would
    /// refuse for the OS or the size (the launch form asks as you type).
    pub fn price(&self, os: &str, ram_mb: i64, disk_gb: i64, cpus: i64) -> Result<Price> {
        let cost = ledger::quote(ram_mb, disk_gb, cpus)?.cost;
        self.check_os_minimum(os, ram_mb, disk_gb)?;
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
        self.os_import_progress(actor, name, file, (min_ram_mb, min_disk_gb), &|_, _| {})
    }

    /// [`Core::os_import_with`], telling `progress` the bytes copied and
    /// the bytes in all as the copy goes (the window's progress bar).
    pub fn os_import_progress(
        &self,
        actor: &str,
        name: &str,
        file: &Path,
        (min_ram_mb, min_disk_gb): (Option<i64>, Option<i64>),
        progress: &dyn Fn(u64, u64),
    ) -> Result<OsEntry> {
        validate::name("OS", name)?;
        validate::size(
            min_ram_mb.unwrap_or(validate::RAM_MB.0),
            min_disk_gb.unwrap_or(validate::DISK_GB.0),
            validate::CPUS.0,
        )
        .map_err(|e| Error::invalid(format!("the OS minimum is out of range: {}", e)))?;
        self.catalog_keeper(actor, "import OS images")?;
        if OS_BUILTIN.contains(&name) || self.os_image(name).is_ok() {
            return Err(Error::AlreadyExists {
                kind: "OS",
                name: name.to_owned(),
            });
        }
        let img = crate::images::import(&self.opts.data_dir, name, file, progress)?;
        let dest = self
            .opts
            .data_dir
            .join(crate::images::OS_DIR)
            .join(&img.file);
        let _bytes = img.bytes;
        let bytes = i64::try_from(img.bytes).unwrap_or(i64::MAX);
        let added = self
            .catalog()
            .os_add(
                actor,
                &crate::team::CatalogImage {
                    name: name.to_owned(),
                    file: img.file.clone(),
                    bytes,
                    sha256: Some(img.sha256.clone()),
                    min_ram_mb,
                    min_disk_gb,
                },
            )
            .map(|()| OsEntry {
                name: name.to_owned(),
                kind: "image".into(),
                bytes,
                min_ram_mb: min_ram_mb.unwrap_or(validate::RAM_MB.0),
                min_disk_gb: min_disk_gb.unwrap_or(validate::DISK_GB.0),
                boots: true,
            });
        if added.is_err() {
            let _ = std::fs::remove_file(&dest);
        }
        added
    }

    /// How many VMs the actor can see use each OS (by name).
    pub fn os_uses(&self, actor: &str) -> Result<std::collections::HashMap<String, u64>> {
        let store = self.acting(actor)?;
        let admin = store.users().whoami()?.role == Role::Admin;
        let mut uses = std::collections::HashMap::new();
        for vm in store.vms().vm_list(admin)? {
            *uses.entry(vm.os_type).or_insert(0) += 1;
        }
        Ok(uses)
    }

    /// Removes an imported OS image from the catalog, and its file, when no
    /// VM uses it (admin only; a built-in cannot be removed). VMs made from
    /// it keep their own disks.
    pub fn os_remove(&self, actor: &str, name: &str) -> Result<()> {
        self.catalog_keeper(actor, "change the OS catalog")?;
        if OS_BUILTIN.contains(&name) {
            return Err(Error::invalid(format!(
                "{name} is built in; it cannot be removed"
            )));
        }
        let Some(image) = self
            .catalog()
            .os_images()?
            .into_iter()
            .find(|i| i.name == name)
        else {
            return Err(Error::invalid(format!(
                "there is no OS {name:?} in the catalog"
            )));
        };
        let used = self.os_uses(actor)?.get(name).copied().unwrap_or(0);
        if used > 0 {
            return Err(Error::invalid(format!(
                "{name} is used by {used} VM{}: remove {} first",
                if used == 1 { "" } else { "s" },
                if used == 1 { "it" } else { "them" }
            )));
        }
        self.catalog().os_remove(actor, name)?;
        let path = self
            .opts
            .data_dir
            .join(crate::images::OS_DIR)
            .join(&image.file);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::DataDir { path, source }),
        }
    }

    /// Who may change this desk's OS catalog: an admin on the embedded
    /// store; on a team store the catalog is the desk's own files, so its
    /// user (the login).
    fn catalog_keeper(&self, actor: &str, action: &'static str) -> Result<()> {
        match self.team_as(actor)? {
            Some(_) => Ok(()),
            None => {
                if self.acting(actor)?.users().whoami()?.role != Role::Admin {
                    return Err(Error::AdminOnly(action));
                }
                Ok(())
            }
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
        let Some(old) = self.os_list()?.into_iter().find(|o| o.name == name) else {
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
        self.catalog()
            .os_minimum(actor, name, (ram, disk), (old.min_ram_mb, old.min_disk_gb))?;
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
        self.acting(actor)?
            .vms()
            .vm_meta(vm, &serde_json::Value::Object(patch))
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

/// An action's name in events (`vm.stop`).
pub(crate) fn action_name(a: VmAction) -> &'static str {
    match a {
        VmAction::Start => "start",
        VmAction::Stop => "stop",
        VmAction::Restart => "restart",
        VmAction::Destroy => "destroy",
    }
}
