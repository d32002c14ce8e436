//! A test double of a host (machines in memory) and helpers to open a core
//! over a real SQLite file in a temporary directory.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmdesk_core::model::{Host, HostKind};
use vmdesk_core::provider::{
    Capacity, Machine, MachineSpec, PowerState, Provider, ProviderError, ProviderFactory,
};
use vmdesk_core::{Core, NewVm, OpenOptions};

/// Machines in memory; `refuse_start` makes every start fail.
#[derive(Default)]
pub struct MemoryHost {
    pub machines: Mutex<HashMap<String, PowerState>>,
    pub disks: Mutex<std::collections::HashSet<String>>,
    pub refuse_start: Mutex<bool>,
    pub unreachable: Mutex<bool>,
    /// Guests that ignore an ACPI shutdown (like a VM without an OS).
    pub ignore_shutdown: Mutex<bool>,
    /// How long a forced power-off takes.
    pub force_off_delay: Mutex<Duration>,
    /// What an import finds on the host.
    pub inventory: Mutex<Vec<Machine>>,
    /// What each host (by URI) has room for; a host not in it does not tell.
    pub capacity: Mutex<HashMap<String, Capacity>>,
    /// Each running machine's address, as its network would tell.
    pub addresses: Mutex<HashMap<String, vmdesk_core::provider::Address>>,
    /// Whether machines take cloud-init seeds (as a real hypervisor's do).
    pub take_seeds: Mutex<bool>,
    /// The seed each machine was given last.
    pub seeds: Mutex<HashMap<String, Vec<u8>>>,
    /// Machines whose name contains this are refused at definition (a host
    /// that fails in the middle of a pool fill).
    pub refuse_define: Mutex<Option<String>>,
}

impl MemoryHost {
    pub fn state(&self, machine: &str) -> Option<PowerState> {
        self.machines.lock().unwrap().get(machine).copied()
    }
    pub fn check(&self) -> Result<(), ProviderError> {
        if *self.unreachable.lock().unwrap() {
            return Err(ProviderError::Unreachable("the host is down".into()));
        }
        Ok(())
    }
    fn set(&self, machine: &str, s: PowerState) -> Result<(), ProviderError> {
        self.check()?;
        let mut m = self.machines.lock().unwrap();
        let slot = m
            .get_mut(machine)
            .ok_or_else(|| ProviderError::NotFound(machine.into()))?;
        *slot = s;
        Ok(())
    }
}

impl Provider for MemoryHost {
    fn takes_seed(&self) -> bool {
        *self.take_seeds.lock().unwrap()
    }
    fn ensure_disk(&self, spec: &MachineSpec) -> Result<(), ProviderError> {
        self.check()?;
        if let Some(seed) = &spec.seed {
            self.seeds
                .lock()
                .unwrap()
                .insert(spec.machine_name.clone(), seed.clone());
        }
        self.disks.lock().unwrap().insert(spec.machine_name.clone());
        Ok(())
    }
    fn delete_disk(&self, machine: &str) -> Result<(), ProviderError> {
        self.check()?;
        self.disks.lock().unwrap().remove(machine);
        Ok(())
    }
    fn ensure_defined(&self, spec: &MachineSpec) -> Result<(), ProviderError> {
        self.check()?;
        if let Some(bad) = self.refuse_define.lock().unwrap().as_deref() {
            if spec.machine_name.contains(bad) {
                return Err(ProviderError::Refused(format!(
                    "{} cannot be defined here",
                    spec.machine_name
                )));
            }
        }
        self.machines
            .lock()
            .unwrap()
            .entry(spec.machine_name.clone())
            .or_insert(PowerState::Stopped);
        Ok(())
    }
    fn start(&self, machine: &str) -> Result<(), ProviderError> {
        if *self.refuse_start.lock().unwrap() {
            return Err(ProviderError::Refused("no room for this VM".into()));
        }
        self.set(machine, PowerState::Running)
    }
    fn shutdown(&self, machine: &str) -> Result<(), ProviderError> {
        if *self.ignore_shutdown.lock().unwrap() {
            return self.check();
        }
        self.set(machine, PowerState::Stopped)
    }
    fn force_off(&self, machine: &str) -> Result<(), ProviderError> {
        let delay = *self.force_off_delay.lock().unwrap();
        std::thread::sleep(delay);
        self.set(machine, PowerState::Stopped)
    }
    fn marked(&self, _install_id: &str) -> Result<Vec<String>, ProviderError> {
        self.check()?;
        let mut names: Vec<String> = self.machines.lock().unwrap().keys().cloned().collect();
        names.extend(self.disks.lock().unwrap().iter().cloned());
        names.sort();
        names.dedup();
        Ok(names)
    }
    fn undefine(&self, machine: &str) -> Result<(), ProviderError> {
        self.check()?;
        self.machines.lock().unwrap().remove(machine);
        Ok(())
    }
    fn power_state(&self, machine: &str) -> Result<PowerState, ProviderError> {
        self.check()?;
        self.state(machine)
            .ok_or_else(|| ProviderError::NotFound(machine.into()))
    }
    fn inventory(&self) -> Result<Vec<Machine>, ProviderError> {
        self.check()?;
        Ok(self.inventory.lock().unwrap().clone())
    }
    fn address(
        &self,
        machine: &str,
    ) -> Result<Option<vmdesk_core::provider::Address>, ProviderError> {
        self.check()?;
        Ok(self.addresses.lock().unwrap().get(machine).cloned())
    }
}

/// Every host is the same in-memory host.
#[derive(Default, Clone)]
pub struct MemoryFactory(pub Arc<MemoryHost>);

impl ProviderFactory for MemoryFactory {
    fn probe(&self, _kind: HostKind, uri: &str) -> Result<(), ProviderError> {
        if uri.starts_with("down:") {
            return Err(ProviderError::Unreachable("connection refused".into()));
        }
        Ok(())
    }
    fn connect(&self, host: &Host) -> Result<Arc<dyn Provider>, ProviderError> {
        if self.0.capacity.lock().unwrap().contains_key(&host.uri) {
            return Ok(Arc::new(OneHost {
                machines: self.0.clone(),
                uri: host.uri.clone(),
            }));
        }
        Ok(self.0.clone())
    }
}

/// The in-memory host seen as one of several hosts: its machines are the
/// shared ones, its capacity its own (placement tests).
pub struct OneHost {
    machines: Arc<MemoryHost>,
    uri: String,
}

impl Provider for OneHost {
    fn ensure_disk(&self, spec: &MachineSpec) -> Result<(), ProviderError> {
        self.machines.ensure_disk(spec)
    }
    fn delete_disk(&self, machine: &str) -> Result<(), ProviderError> {
        self.machines.delete_disk(machine)
    }
    fn ensure_defined(&self, spec: &MachineSpec) -> Result<(), ProviderError> {
        self.machines.ensure_defined(spec)
    }
    fn start(&self, machine: &str) -> Result<(), ProviderError> {
        self.machines.start(machine)
    }
    fn shutdown(&self, machine: &str) -> Result<(), ProviderError> {
        self.machines.shutdown(machine)
    }
    fn force_off(&self, machine: &str) -> Result<(), ProviderError> {
        self.machines.force_off(machine)
    }
    fn marked(&self, install_id: &str) -> Result<Vec<String>, ProviderError> {
        self.machines.marked(install_id)
    }
    fn undefine(&self, machine: &str) -> Result<(), ProviderError> {
        self.machines.undefine(machine)
    }
    fn power_state(&self, machine: &str) -> Result<PowerState, ProviderError> {
        self.machines.power_state(machine)
    }
    fn capacity(&self) -> Result<Capacity, ProviderError> {
        self.machines.check()?;
        self.machines
            .capacity
            .lock()
            .unwrap()
            .get(&self.uri)
            .copied()
            .ok_or_else(|| ProviderError::Unsupported("capacity".into()))
    }
}

pub fn open(dir: &Path, hosts: &MemoryFactory) -> Core {
    let mut opts = OpenOptions::new(dir, Arc::new(hosts.clone()));
    opts.start_timeout = Duration::from_secs(2);
    opts.shutdown_timeout = Duration::from_millis(300);
    Core::open(opts).unwrap()
}

/// A core with a host `h`, a project `p` and `n` VMs `vm0..` of type `standard`.
pub fn with_pool(n: usize) -> (tempfile::TempDir, MemoryFactory, Core) {
    let dir = tempfile::tempdir().unwrap();
    let hosts = MemoryFactory::default();
    let core = open(dir.path(), &hosts);
    core.host_add("admin", "h", "test:///default").unwrap();
    core.project_create("admin", "p").unwrap();
    for i in 0..n {
        core.vm_add("admin", &vm(&format!("vm{i}"), "standard"))
            .unwrap();
    }
    (dir, hosts, core)
}

pub fn vm(name: &str, vm_type: &str) -> NewVm {
    NewVm {
        name: name.into(),
        pool: "p".into(),
        host: "h".into(),
        ram_mb: 1024,
        disk_gb: 20,
        cpu_cores: 2,
        vm_type: vm_type.into(),
        os_type: "blank".into(),
    }
}

/// Opens the SQLite file directly, to check what the core wrote.
pub fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("vmdesk.db")).unwrap()
}

pub fn count(dir: &Path, sql: &str) -> i64 {
    db(dir).query_row(sql, [], |r| r.get(0)).unwrap()
}
