//! How the core reaches the places VMs run: a [`Provider`] per host, made by a
//! [`ProviderFactory`] that the binary supplies (libvirt, Azure, ...).

use std::sync::Arc;

use crate::model::Host;

/// What a provider could not do.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum ProviderError {
    /// cannot reach the host: {0}
    Unreachable(String),
    /// the host has no machine named "{0}"
    NotFound(String),
    /// the host refused: {0}
    Refused(String),
    /// the host did not finish in time: {0}
    Timeout(String),
    /// {0} is not supported by this kind of host
    Unsupported(String),
    /// the host's credentials were refused: {0}
    Credentials(String),
}

/// The power state of a machine as its host reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    /// Running (or paused with its memory held).
    Running,
    /// Off, its resources kept.
    Stopped,
    /// Off and its compute released (Azure).
    Deallocated,
    /// Powering on.
    Starting,
    /// Powering off.
    Stopping,
    /// The host could not tell.
    Unknown,
}

impl PowerState {
    /// Whether the machine is off (stopped or deallocated).
    pub fn is_off(self) -> bool {
        matches!(self, PowerState::Stopped | PowerState::Deallocated)
    }
}

/// A base disk image from the OS catalog, as a local file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsImage {
    /// Its catalog name.
    pub name: String,
    /// The qcow2 file on this machine.
    pub path: std::path::PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256 (lower-case hex), as recorded when it was imported.
    pub sha256: String,
}

/// What a host needs to define a machine for a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// The machine's name on its host; unique per data directory and VM.
    pub machine_name: String,
    /// The VM's database id.
    pub vm_id: i64,
    /// The VM's vmdesk name.
    pub vm_name: String,
    /// The data directory's install id (marks vmdesk's machines).
    pub install_id: String,
    /// Memory in MB.
    pub ram_mb: i64,
    /// Virtual CPUs.
    pub cpu_cores: i64,
    /// Disk in GB.
    pub disk_gb: i64,
    /// Operating system.
    pub os_type: String,
    /// The base image the VM's disk starts from (none: an empty disk).
    pub image: Option<OsImage>,
    /// The network its NIC is on.
    pub network: NetworkChoice,
    /// Its cloud-init NoCloud seed (a vfat image), written to the host
    /// before the machine starts; none: the seed on the host is kept.
    pub seed: Option<Vec<u8>>,
}

/// The network a machine's NIC is on (a host setting, `[network.hosts.NAME]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetworkChoice {
    /// vmdesk's own: on a system daemon its NAT network `vmdesk` (a bridge,
    /// DHCP and DNS by libvirt's dnsmasq, NAT to the host's uplinks),
    /// defined and started on first use; on a session daemon, which cannot
    /// make bridges, user-mode networking (out only, no address to reach).
    #[default]
    Vmdesk,
    /// An existing libvirt network of the host, by name.
    Network(String),
    /// An existing bridge of the host, by name.
    Bridge(String),
    /// No NIC.
    None,
}

/// An address of a running machine, and where it was learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The IPv4 address.
    pub ip: String,
    /// `lease` (the network's DHCP), `agent` (the guest agent), `arp`, or
    /// `azure` (its network interface, read through the network API).
    pub source: &'static str,
    /// Its public IPv4 address, where it has one (Azure).
    pub public_ip: Option<String>,
}

/// One host's machines. Calls block; call them off the UI thread.
pub trait Provider: Send + Sync {
    /// Makes sure the machine's disk exists (a copy-on-write layer over the
    /// spec's image, uploaded to the host first if needed, or an empty disk).
    fn ensure_disk(&self, spec: &MachineSpec) -> Result<(), ProviderError>;
    /// Removes the machine's disk; does nothing if it is gone.
    fn delete_disk(&self, machine: &str) -> Result<(), ProviderError>;
    /// Makes sure the machine exists, defining it from the spec if it does not.
    fn ensure_defined(&self, spec: &MachineSpec) -> Result<(), ProviderError>;
    /// Powers the machine on; does nothing if it runs.
    fn start(&self, machine: &str) -> Result<(), ProviderError>;
    /// Asks the guest to shut down (ACPI).
    fn shutdown(&self, machine: &str) -> Result<(), ProviderError>;
    /// Cuts the power; does nothing if it is off.
    fn force_off(&self, machine: &str) -> Result<(), ProviderError>;
    /// Reads the power state.
    fn power_state(&self, machine: &str) -> Result<PowerState, ProviderError>;
    /// Removes the machine's definition (it must be off); does nothing if it is gone.
    fn undefine(&self, machine: &str) -> Result<(), ProviderError>;
    /// The machines (definitions or disks) on the host that carry this data
    /// directory's mark, by machine name.
    fn marked(&self, install_id: &str) -> Result<Vec<String>, ProviderError>;
    /// Writes a stopped machine's disk to `dest` as one self-contained
    /// qcow2 image (its backing chain read through): what a template is
    /// made of. Returns the bytes written. Hosts that cannot: refused.
    fn export_disk(
        &self,
        machine: &str,
        dest: &mut dyn std::io::Write,
    ) -> Result<u64, ProviderError> {
        let _ = (machine, dest);
        Err(ProviderError::Refused(
            "this host cannot copy a machine's disk out (templates are made on libvirt hosts)"
                .into(),
        ))
    }
    /// Whether vmdesk makes the machines of this host (disk and definition),
    /// and so re-makes a missing one before it starts it. A host whose
    /// machines are made elsewhere and imported (Azure) says no.
    fn provisions(&self) -> bool {
        true
    }
    /// Whether machines of this host boot with a cloud-init seed that
    /// [`Provider::ensure_disk`] writes (libvirt's real hypervisors).
    fn takes_seed(&self) -> bool {
        false
    }
    /// Reads the power states of several machines, in the order asked. `all`
    /// says the caller asks about every machine it knows on the host (a full
    /// pass), so a provider may answer from one listing of the host instead
    /// of one call per machine.
    fn power_states(
        &self,
        machines: &[String],
        all: bool,
    ) -> Vec<Result<PowerState, ProviderError>> {
        let _ = all;
        machines.iter().map(|m| self.power_state(m)).collect()
    }
    /// A new connection to the machine's display (its VNC server), while it
    /// runs: a connected socket, so the display need not listen on any port.
    fn console_stream(
        &self,
        machine: &str,
    ) -> Result<std::os::unix::net::UnixStream, ProviderError> {
        let _ = machine;
        Err(ProviderError::Unsupported("consoles".into()))
    }
    /// What the running machine's display offers (none, by default).
    fn display_features(&self, machine: &str) -> Result<DisplayFeatures, ProviderError> {
        let _ = machine;
        Ok(DisplayFeatures::default())
    }
    /// The machines on the host that vmdesk can adopt (import), with their
    /// sizes and power states.
    fn inventory(&self) -> Result<Vec<Machine>, ProviderError> {
        Err(ProviderError::Unsupported("importing machines".into()))
    }
    /// What the host has: its memory, free memory and the free space of
    /// vmdesk's storage there. Unsupported where the figures mean nothing
    /// (libvirt's test driver) or are the cloud's business (Azure).
    fn capacity(&self) -> Result<Capacity, ProviderError> {
        Err(ProviderError::Unsupported("capacity".into()))
    }
    /// The machine's IPv4 address while it runs: from its network's DHCP
    /// leases first, then the guest agent, then the host's ARP table (the
    /// order virt-manager asks in); none: not known (yet).
    fn address(&self, machine: &str) -> Result<Option<Address>, ProviderError> {
        let _ = machine;
        Err(ProviderError::Unsupported("addresses".into()))
    }
    /// [`Provider::address`] of several machines, in the order asked; a
    /// provider may answer from one listing of the host.
    fn addresses(&self, machines: &[String]) -> Vec<Result<Option<Address>, ProviderError>> {
        machines.iter().map(|m| self.address(m)).collect()
    }
    /// The machine's counters now (CPU time and memory), while it runs.
    fn stats(&self, machine: &str) -> Result<MachineStats, ProviderError> {
        let _ = machine;
        Err(ProviderError::Unsupported("statistics".into()))
    }
}

/// A running machine's counters, as [`Provider::stats`] reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineStats {
    /// CPU time used since it started, in nanoseconds (all vCPUs together).
    pub cpu_time_ns: u64,
    /// Its virtual CPUs.
    pub vcpus: u32,
    /// Memory given to it, in KiB.
    pub memory_kib: u64,
    /// Memory it uses, in KiB: what the guest reports as used when its
    /// balloon driver tells, else the resident size of its process.
    pub used_kib: Option<u64>,
}

/// What a machine's display offers beyond pixels and keys, as
/// [`Provider::display_features`] reads it from the running machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
#[ts(export)]
pub struct DisplayFeatures {
    /// A clipboard agent in the guest holds the clipboard's channel, so
    /// text is copied both ways without typing.
    pub clipboard: bool,
    /// The display can take the viewer's size (virtio-vga), so the guest's
    /// resolution may follow the window; otherwise the viewer scales.
    pub resize: bool,
}

/// What a host has room for, as [`Provider::capacity`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// The host's memory, in MiB.
    pub total_memory_mb: u64,
    /// Its free memory now (`virNodeGetFreeMemory`), in MiB.
    pub free_memory_mb: u64,
    /// Free space in vmdesk's storage pool, in MiB (none: not known).
    pub free_disk_mb: Option<u64>,
}

/// A machine found on a host, as [`Provider::inventory`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Its id on the host (what vmdesk stores as the VM's provider id).
    pub machine: String,
    /// Its name, as people know it.
    pub name: String,
    /// The host's name of its size (e.g. an Azure VM size).
    pub size: String,
    /// Memory in MB.
    pub ram_mb: i64,
    /// Virtual CPUs.
    pub cpu_cores: i64,
    /// OS disk in GB.
    pub disk_gb: i64,
    /// Operating system.
    pub os_type: String,
    /// Its power state when listed.
    pub power: PowerState,
}

/// Makes the provider of a host.
pub trait ProviderFactory: Send + Sync {
    /// Checks that a host can be reached (before it is added).
    fn probe(&self, kind: crate::model::HostKind, uri: &str) -> Result<(), ProviderError>;
    /// The provider of a host; may be cached.
    fn connect(&self, host: &Host) -> Result<Arc<dyn Provider>, ProviderError>;
}

/// The providers of a build, by kind of host.
pub struct ByKind {
    /// Makes libvirt providers.
    pub libvirt: Arc<dyn ProviderFactory>,
    /// Makes Azure providers.
    pub azure: Arc<dyn ProviderFactory>,
}

impl ByKind {
    fn of(&self, kind: crate::model::HostKind) -> &dyn ProviderFactory {
        match kind {
            crate::model::HostKind::Libvirt => self.libvirt.as_ref(),
            crate::model::HostKind::Azure => self.azure.as_ref(),
        }
    }
}

impl ProviderFactory for ByKind {
    fn probe(&self, kind: crate::model::HostKind, uri: &str) -> Result<(), ProviderError> {
        self.of(kind).probe(kind, uri)
    }

    fn connect(&self, host: &Host) -> Result<Arc<dyn Provider>, ProviderError> {
        self.of(host.kind).connect(host)
    }
}

/// How a [`Compliant`] host opens a machine's display.
pub type DisplayFn = dyn Fn() -> std::io::Result<std::os::unix::net::UnixStream> + Send + Sync;

/// A host that does whatever it is asked at once and reports every machine
/// in one power state: for benchmarks and tests of what lies above the
/// hosts, where a real one would only add noise. Its displays, if any, come
/// from `display`.
pub struct Compliant {
    /// The power state every machine reports.
    pub power: PowerState,
    /// Opens a display (none: consoles are unsupported).
    pub display: Option<Box<DisplayFn>>,
}

impl Compliant {
    /// Every machine stopped, no displays.
    pub fn stopped() -> Compliant {
        Compliant {
            power: PowerState::Stopped,
            display: None,
        }
    }

    /// Every machine running, each display opened by `display`.
    pub fn running(
        display: impl Fn() -> std::io::Result<std::os::unix::net::UnixStream> + Send + Sync + 'static,
    ) -> Compliant {
        Compliant {
            power: PowerState::Running,
            display: Some(Box::new(display)),
        }
    }
}

impl Provider for Compliant {
    fn ensure_disk(&self, _: &MachineSpec) -> Result<(), ProviderError> {
        Ok(())
    }
    fn delete_disk(&self, _: &str) -> Result<(), ProviderError> {
        Ok(())
    }
    fn ensure_defined(&self, _: &MachineSpec) -> Result<(), ProviderError> {
        Ok(())
    }
    fn start(&self, _: &str) -> Result<(), ProviderError> {
        Ok(())
    }
    fn shutdown(&self, _: &str) -> Result<(), ProviderError> {
        Ok(())
    }
    fn force_off(&self, _: &str) -> Result<(), ProviderError> {
        Ok(())
    }
    fn power_state(&self, _: &str) -> Result<PowerState, ProviderError> {
        Ok(self.power)
    }
    fn undefine(&self, _: &str) -> Result<(), ProviderError> {
        Ok(())
    }
    fn marked(&self, _: &str) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }
    fn console_stream(&self, _: &str) -> Result<std::os::unix::net::UnixStream, ProviderError> {
        match &self.display {
            Some(open) => open().map_err(|e| ProviderError::Unreachable(e.to_string())),
            None => Err(ProviderError::Unsupported("consoles".into())),
        }
    }
}

/// A factory whose every host, of either kind, is the one provider.
pub struct OneProvider(pub Arc<dyn Provider>);

impl ProviderFactory for OneProvider {
    fn probe(&self, _: crate::model::HostKind, _: &str) -> Result<(), ProviderError> {
        Ok(())
    }
    fn connect(&self, _: &Host) -> Result<Arc<dyn Provider>, ProviderError> {
        Ok(Arc::clone(&self.0))
    }
}
