//! Templates and bulk pools (issue 16): a stopped VM's disk made into an OS
//! image of the catalog (a flattened copy), and a pool filled with N VMs at
//! once whose disks are copy-on-write over it (the host's image volume is
//! their backing file, as for any OS image).

use crate::core::Core;
use crate::error::{Error, Result};
use crate::model::*;
use crate::validate;

/// The most VMs one `pool fill` adds.
pub const FILL_MAX: u32 = 500;

/// What `pool fill` is asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fill {
    /// The project whose pool is filled.
    pub project: String,
    /// The OS (a template or any image of the catalog) of the new VMs.
    pub template: String,
    /// How many VMs.
    pub count: u32,
    /// Their type (default `standard`).
    pub vm_type: Option<String>,
    /// Their names' prefix: PREFIX-1, PREFIX-2… skipping names taken
    /// (default: the project's name).
    pub prefix: Option<String>,
    /// Their host (default: the only libvirt host).
    pub host: Option<String>,
    /// Memory, MB (default: the template's minimum).
    pub ram_mb: Option<i64>,
    /// Disk, GB (default: the template's minimum).
    pub disk_gb: Option<i64>,
    /// vCPUs (default 1).
    pub cpus: Option<i64>,
}

impl Core {
    /// Makes a catalog image `name` from the disk of the stopped VM `vm` (a
    /// flattened copy: no backing file), so that pools can be filled with
    /// copies of a VM set up once. Its minimum is the VM's OS's memory
    /// minimum and the VM's disk size. `progress` follows the copy into the
    /// catalog. Admin only.
    pub fn vm_template(
        &self,
        actor: &str,
        vm: &str,
        name: &str,
        progress: &dyn Fn(u64, u64),
    ) -> Result<OsEntry> {
        self.require_admin(actor, "make templates")?;
        validate::name("OS", name)?;
        if crate::vms::OS_BUILTIN.contains(&name) || self.os_image(name).is_ok() {
            return Err(Error::AlreadyExists {
                kind: "OS",
                name: name.to_owned(),
            });
        }
        let v = self.acting(actor)?.vms().vm(vm)?;
        if v.session_id.is_some() || v.status != VmStatus::Stopped {
            return Err(Error::invalid(format!(
                "{} is {}{}: a template is made from a stopped VM, so stop it first",
                v.name,
                v.status,
                if v.session_id.is_some() {
                    " in a session"
                } else {
                    ""
                }
            )));
        }
        let provider = self.provider(&v.host)?;
        let machine = self.machine_spec(&v).machine_name;
        let host_err = |source| Error::Provider {
            host: v.host.clone(),
            source,
        };
        match provider.power_state(&machine) {
            Ok(s) if s.is_off() => {}
            Ok(s) => {
                return Err(Error::invalid(format!(
                    "{} is {s:?} on its host: stop it first",
                    v.name
                )))
            }
            Err(e) => return Err(host_err(e)),
        }
        let min_ram = self
            .os_list()?
            .into_iter()
            .find(|o| o.name == v.os_type)
            .map_or(validate::RAM_MB.0, |o| o.min_ram_mb);
        let dir = self.opts.data_dir.join(crate::images::OS_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| Error::DataDir {
            path: dir.clone(),
            source,
        })?;
        let tmp = tempfile::Builder::new()
            .prefix(".template-")
            .suffix(".part")
            .tempfile_in(&dir)
            .map_err(|source| Error::DataDir {
                path: dir.clone(),
                source,
            })?;
        {
            let mut out = std::io::BufWriter::new(tmp.as_file());
            provider.export_disk(&machine, &mut out).map_err(host_err)?;
            std::io::Write::flush(&mut out).map_err(|source| Error::DataDir {
                path: tmp.path().to_owned(),
                source,
            })?;
        }
        // Imported as any image: a qcow2 that stands alone is checked for.
        self.os_import_progress(
            actor,
            name,
            tmp.path(),
            (Some(min_ram), Some(v.disk_gb)),
            progress,
        )
    }

    /// Adds `fill.count` VMs to a project's pool from a template (or any OS
    /// image), named PREFIX-1… (names taken are skipped), their disks
    /// copy-on-write over the image. All or nothing: if the host refuses
    /// one, every machine made for this fill is deleted and every row it
    /// wrote removed, so the pool is as it was (a crash in the middle leaves
    /// rows that recovery settles the same way). `progress` is told each VM
    /// made (done, of). Admin only.
    pub fn pool_fill(
        &self,
        actor: &str,
        fill: &Fill,
        progress: &dyn Fn(u32, u32),
    ) -> Result<Vec<Vm>> {
        self.require_admin(actor, "fill pools")?;
        if !(1..=FILL_MAX).contains(&fill.count) {
            return Err(Error::invalid(format!(
                "a fill adds between 1 and {FILL_MAX} VMs, not {}",
                fill.count
            )));
        }
        let os = self
            .os_list()?
            .into_iter()
            .find(|o| o.name == fill.template)
            .ok_or_else(|| {
                Error::invalid(format!("there is no OS {:?} in the catalog", fill.template))
            })?;
        let store = self.acting(actor)?;
        if !store
            .places()
            .projects()?
            .iter()
            .any(|(p, _)| p.name == fill.project)
        {
            return Err(Error::UnknownProject(fill.project.clone()));
        }
        let host = match &fill.host {
            Some(h) => h.clone(),
            None => {
                let libvirt: Vec<Host> = store
                    .places()
                    .host_list()?
                    .into_iter()
                    .filter(|h| h.kind == HostKind::Libvirt)
                    .collect();
                match libvirt.as_slice() {
                    [one] => one.name.clone(),
                    [] => return Err(Error::invalid("there is no libvirt host to fill a pool on")),
                    _ => {
                        return Err(Error::invalid(
                            "there are several libvirt hosts: name one with --host",
                        ))
                    }
                }
            }
        };
        let prefix = fill.prefix.clone().unwrap_or_else(|| fill.project.clone());
        let vm_type = fill.vm_type.clone().unwrap_or_else(|| "standard".into());
        validate::name("VM type", &vm_type)?;
        let ram_mb = fill.ram_mb.unwrap_or(os.min_ram_mb);
        let disk_gb = fill.disk_gb.unwrap_or(os.min_disk_gb);
        let cpus = fill.cpus.unwrap_or(1);
        validate::size(ram_mb, disk_gb, cpus)?;
        self.check_os_minimum(&os.name, ram_mb, disk_gb)?;
        // The first free names.
        let taken: std::collections::HashSet<String> = store
            .vms()
            .vm_list(true)?
            .into_iter()
            .map(|v| v.name)
            .collect();
        let names: Vec<String> = (1..)
            .map(|i| format!("{prefix}-{i}"))
            .filter(|n| !taken.contains(n))
            .take(fill.count as usize)
            .collect();
        for n in &names {
            validate::vm_name(n)?;
        }
        let worker = self.worker_id()?.to_owned();
        let vms = store.vms();
        let mut made: Vec<Vm> = Vec::with_capacity(names.len());
        let mut failure = None;
        for (i, name) in names.iter().enumerate() {
            let spec = NewVm {
                name: name.clone(),
                pool: fill.project.clone(),
                host: host.clone(),
                ram_mb,
                disk_gb,
                cpu_cores: cpus,
                vm_type: vm_type.clone(),
                os_type: os.name.clone(),
            };
            let vm = match vms.vm_add(&spec, &self.machine_name(name), &worker) {
                Ok(vm) => vm,
                Err(e) => {
                    failure = Some((i, e));
                    break;
                }
            };
            // Kept in `made` before its machine: a refusal undoes its row too.
            made.push(vm);
            if let Err(e) = self.define_new(made.last().unwrap_or_else(|| unreachable!())) {
                failure = Some((i, e));
                break;
            }
            progress(i as u32 + 1, fill.count);
        }
        if let Some((i, e)) = failure {
            let reason = e.one_line();
            if let Ok(p) = self.provider(&host) {
                for vm in &made {
                    let machine = self.machine_spec(vm).machine_name;
                    let _ = p.undefine(&machine);
                    let _ = p.delete_disk(&machine);
                }
            }
            for vm in &made {
                let details = serde_json::json!({"vm": vm.name, "host": vm.host, "pool": fill.project,
                    "reason": format!("the pool fill stopped: {reason}")});
                if let Err(e) = vms.vm_add_done(vm.id, false, details) {
                    tracing::warn!(vm = %vm.name, error = %e.one_line(), "undoing a pool fill");
                }
            }
            return Err(Error::invalid(format!(
                "the pool fill stopped at VM {} of {}, and nothing was kept: {reason}",
                i + 1,
                fill.count
            )));
        }
        let mut out = Vec::with_capacity(made.len());
        for vm in &made {
            let details = serde_json::json!({"vm": vm.name, "host": vm.host, "pool": fill.project,
                "os": os.name, "fill": fill.count});
            vms.vm_add_done(vm.id, true, details)?;
            out.push(vms.vm(&vm.id.to_string())?);
        }
        Ok(out)
    }
}
