//! The libvirt provider of vmdesk: a host is a libvirt connection URI; a VM is
//! a domain defined from its spec and marked as vmdesk's in its metadata.

pub mod events;
mod xml;

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, Once};

use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;
use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use vmdesk_core::model::{Host, HostKind};
use vmdesk_core::provider::{
    MachineSpec, MachineStats, OsImage, PowerState, Provider, ProviderError, ProviderFactory,
};

pub use xml::{domain as domain_xml, DiskRef, VirtType, MARKER_NS};

/// The storage pool vmdesk keeps its disks and images in (libvirt's test
/// driver has only its own).
fn pool_name(virt: VirtType) -> &'static str {
    match virt {
        VirtType::Test => "default-pool",
        _ => "vmdesk",
    }
}

/// The volume holding a machine's disk.
pub fn disk_volume(machine: &str) -> String {
    format!("{machine}.qcow2")
}

/// The volume holding a catalog image of a data directory on a host (two
/// data directories may give one name to different images).
pub fn image_volume(image: &str, install_id: &str) -> String {
    let tag: String = install_id.chars().take(8).collect();
    format!("vmdesk-os-{image}-{tag}.qcow2")
}

fn quiet_libvirt() {
    static ONCE: Once = Once::new();
    // libvirt prints every error to stderr by default; vmdesk reports its own.
    ONCE.call_once(virt::error::clear_error_callback);
}

fn map_err(machine: &str, e: virt::error::Error) -> ProviderError {
    match e.code() {
        Enum::Known(ErrorNumber::NoDomain) => ProviderError::NotFound(machine.to_owned()),
        Enum::Known(
            ErrorNumber::NoConnect
            | ErrorNumber::SystemError
            | ErrorNumber::Rpc
            | ErrorNumber::AuthFailed,
        ) => ProviderError::Unreachable(e.message().to_owned()),
        _ => ProviderError::Refused(e.message().to_owned()),
    }
}

/// One libvirt connection.
pub struct LibvirtProvider {
    conn: Connect,
    virt: VirtType,
    /// The lifecycle-event registration, when this process watches events.
    watch: Option<std::ffi::c_int>,
}

impl Drop for LibvirtProvider {
    fn drop(&mut self) {
        if let Some(id) = self.watch {
            events::deregister(&self.conn, id);
        }
    }
}

impl LibvirtProvider {
    /// Opens a connection to `uri` and learns which hypervisor type it offers.
    pub fn open(uri: &str) -> Result<Self, ProviderError> {
        quiet_libvirt();
        let conn = Connect::open(Some(uri))
            .map_err(|e| ProviderError::Unreachable(e.message().to_owned()))?;
        let virt = if uri.starts_with("test:") {
            VirtType::Test
        } else if has_hardware_virtualization(&conn) {
            VirtType::Kvm
        } else {
            VirtType::Qemu
        };
        Ok(Self {
            conn,
            virt,
            watch: None,
        })
    }

    /// Opens a connection whose domains' lifecycle events go to `tx` (the
    /// process must run the event loop: [`events::start_event_loop`]). A
    /// keepalive makes a vanished daemon show as a dead connection.
    pub fn open_watched(
        uri: &str,
        tx: std::sync::mpsc::Sender<events::LifecycleEvent>,
    ) -> Result<Self, ProviderError> {
        let mut p = Self::open(uri)?;
        if events::event_loop_running() && p.virt != VirtType::Test {
            let _ = p.conn.set_keep_alive(2, 3);
            p.watch = Some(events::register(&p.conn, uri, tx)?);
        }
        Ok(p)
    }

    /// Whether the connection still works.
    pub fn is_alive(&self) -> bool {
        self.conn.is_alive().unwrap_or(false)
    }

    /// The hypervisor type domains are defined with.
    pub fn virt_type(&self) -> VirtType {
        self.virt
    }

    /// The raw connection, for what the provider trait does not cover.
    pub fn connection(&self) -> &Connect {
        &self.conn
    }

    /// vmdesk's storage pool, defined, built and started on first use.
    fn pool(&self) -> Result<StoragePool, ProviderError> {
        let name = pool_name(self.virt);
        let err = |e: virt::error::Error| {
            ProviderError::Refused(format!("storage pool {name}: {}", e.message()))
        };
        let pool = match self.conn.lookup_storage_pool_by_name(name) {
            Ok(p) => p,
            Err(_) => {
                let p = self
                    .conn
                    .define_storage_pool_xml(&xml::dir_pool(name, &self.pool_path()), 0)
                    .map_err(err)?;
                p.build(0).map_err(err)?;
                let _ = p.set_autostart(true);
                p
            }
        };
        if !pool.is_active().map_err(err)? {
            pool.create(0).map_err(err)?;
        }
        Ok(pool)
    }

    fn pool_path(&self) -> String {
        let uri = self.conn.uri().unwrap_or_default();
        match std::env::var_os("HOME") {
            Some(home) if uri.contains("session") => {
                format!(
                    "{}/.local/share/libvirt/images/vmdesk",
                    home.to_string_lossy()
                )
            }
            _ => "/var/lib/libvirt/images/vmdesk".to_owned(),
        }
    }

    /// The catalog image on this host, uploaded from the local file if missing.
    fn image(
        &self,
        pool: &StoragePool,
        image: &OsImage,
        install_id: &str,
    ) -> Result<StorageVol, ProviderError> {
        let name = image_volume(&image.name, install_id);
        if let Ok(v) = pool.lookup_storage_vol_by_name(&name) {
            return Ok(v);
        }
        let err = |e: virt::error::Error| {
            ProviderError::Refused(format!("image {}: {}", image.name, e.message()))
        };
        let vol =
            StorageVol::create_xml(pool, &xml::raw_volume(&name, image.bytes), 0).map_err(err)?;
        let upload = || -> Result<(), ProviderError> {
            let mut file = std::fs::File::open(&image.path).map_err(|e| {
                ProviderError::Refused(format!("image {}: {e}", image.path.display()))
            })?;
            let stream = Stream::new(&self.conn, 0).map_err(err)?;
            vol.upload(&stream, 0, image.bytes, 0).map_err(err)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = std::io::Read::read(&mut file, &mut buf).map_err(|e| {
                    ProviderError::Refused(format!("image {}: {e}", image.path.display()))
                })?;
                if n == 0 {
                    break;
                }
                let mut sent = 0;
                while sent < n {
                    let k = stream.send(&buf[sent..n]).map_err(err)?;
                    sent += usize::try_from(k).unwrap_or(0).max(1);
                }
            }
            stream.finish().map_err(err)?;
            Ok(())
        };
        if let Err(e) = upload() {
            let _ = vol.delete(0);
            return Err(e);
        }
        pool.lookup_storage_vol_by_name(&name).map_err(err)
    }

    fn domain(&self, machine: &str) -> Result<Domain, ProviderError> {
        self.conn
            .lookup_domain_by_name(machine)
            .map_err(|e| map_err(machine, e))
    }
}

/// Whether domains can use KVM: libvirt offers it and the host CPU has VT-x or
/// AMD-V. (A /dev/kvm without them, as under some nested set-ups, runs real
/// guests into internal errors; software emulation is the safe choice then.)
fn has_hardware_virtualization(conn: &Connect) -> bool {
    if let Ok(v) = std::env::var("VMDESK_VIRT_TYPE") {
        return v == "kvm";
    }
    let offered = conn
        .domain_capabilities(None, Some("x86_64"), None, Some("kvm"), 0)
        .is_ok();
    let caps = conn.capabilities().unwrap_or_default();
    offered && (caps.contains("<feature name='vmx'/>") || caps.contains("<feature name='svm'/>"))
}

/// Whether a libvirt URI reaches a daemon (or driver) on this machine: no
/// host name and no transport but the local unix socket. Only such a
/// connection can pass a display's descriptor to this process.
pub fn is_local_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return false;
    };
    let transport_local = match scheme.split_once('+') {
        None => true,
        Some((_, transport)) => transport == "unix",
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    transport_local && host.is_empty()
}

/// Takes ownership of a descriptor libvirt handed over (from
/// `virDomainOpenGraphicsFD`), so that it is closed exactly once.
#[allow(unsafe_code)]
fn owned_fd(fd: u32) -> Result<OwnedFd, ProviderError> {
    let raw = RawFd::try_from(fd)
        .map_err(|_| ProviderError::Refused(format!("libvirt returned a bad descriptor {fd}")))?;
    // SAFETY: virDomainOpenGraphicsFD returns a new descriptor (a connected
    // socket) that belongs to the caller, who must close it; nothing else in
    // this process holds it, and the value was checked to be non-negative by
    // the binding (`check_neg!`) before it got here.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn power_state_of(state: DomainState) -> PowerState {
    match state {
        DomainState::Running
        | DomainState::Blocked
        | DomainState::Paused
        | DomainState::PMSuspended => PowerState::Running,
        DomainState::Shutdown => PowerState::Stopping,
        DomainState::Shutoff | DomainState::Crashed => PowerState::Stopped,
        DomainState::NoState => PowerState::Unknown,
    }
}

impl Provider for LibvirtProvider {
    fn ensure_disk(&self, spec: &MachineSpec) -> Result<(), ProviderError> {
        let pool = self.pool()?;
        let name = disk_volume(&spec.machine_name);
        if pool.lookup_storage_vol_by_name(&name).is_ok() {
            return Ok(());
        }
        let backing = match &spec.image {
            Some(image) if self.virt != VirtType::Test => Some(
                self.image(&pool, image, &spec.install_id)?
                    .path()
                    .map_err(|e| map_err(&spec.machine_name, e))?,
            ),
            _ => None,
        };
        StorageVol::create_xml(
            &pool,
            &xml::volume(&name, spec.disk_gb, backing.as_deref()),
            0,
        )
        .map(|_| ())
        .map_err(|e| ProviderError::Refused(format!("disk {name}: {}", e.message())))
    }

    fn delete_disk(&self, machine: &str) -> Result<(), ProviderError> {
        let pool = self.pool()?;
        match pool.lookup_storage_vol_by_name(&disk_volume(machine)) {
            Ok(v) => v.delete(0).map_err(|e| map_err(machine, e)),
            Err(_) => Ok(()),
        }
    }

    fn ensure_defined(&self, spec: &MachineSpec) -> Result<(), ProviderError> {
        let machine = &spec.machine_name;
        // A machine defined when displays listened on a TCP port is defined
        // again (same UUID); a running one switches at its next start.
        let uuid = match self.domain(machine) {
            Ok(dom) => {
                let stored = dom
                    .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE)
                    .map_err(|e| map_err(machine, e))?;
                if !xml::vnc_on_tcp(&stored) {
                    return Ok(());
                }
                Some(dom.uuid_string().map_err(|e| map_err(machine, e))?)
            }
            Err(ProviderError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let volume = disk_volume(machine);
        let has_disk =
            self.virt != VirtType::Test && self.pool()?.lookup_storage_vol_by_name(&volume).is_ok();
        let disk = has_disk.then(|| DiskRef {
            pool: pool_name(self.virt),
            volume: &volume,
        });
        let xml = match &uuid {
            Some(uuid) => xml::redefinition(spec, self.virt, disk.as_ref(), uuid),
            None => xml::domain(spec, self.virt, disk.as_ref()),
        };
        self.conn
            .define_domain_xml(&xml)
            .map(|_| ())
            .map_err(|e| map_err(machine, e))
    }

    fn start(&self, machine: &str) -> Result<(), ProviderError> {
        let dom = self.domain(machine)?;
        if dom.is_active().map_err(|e| map_err(machine, e))? {
            return Ok(());
        }
        dom.create().map_err(|e| map_err(machine, e))
    }

    fn shutdown(&self, machine: &str) -> Result<(), ProviderError> {
        self.domain(machine)?
            .shutdown()
            .map_err(|e| map_err(machine, e))
    }

    fn force_off(&self, machine: &str) -> Result<(), ProviderError> {
        let dom = self.domain(machine)?;
        if !dom.is_active().map_err(|e| map_err(machine, e))? {
            return Ok(());
        }
        match dom.destroy() {
            Ok(()) => Ok(()),
            // It went off by itself in between.
            Err(e) if matches!(e.code(), Enum::Known(ErrorNumber::OperationInvalid)) => Ok(()),
            Err(e) => Err(map_err(machine, e)),
        }
    }

    fn console_stream(&self, machine: &str) -> Result<UnixStream, ProviderError> {
        let uri = self.conn.uri().unwrap_or_default();
        if !is_local_uri(&uri) {
            // The display's socket is on the remote host: an SSH channel to it
            // is still to come.
            return Err(ProviderError::Unsupported(format!(
                "opening the console of a VM on a remote host ({uri})"
            )));
        }
        let dom = self.domain(machine)?;
        let fd = dom.open_graphics_fd(0, 0).map_err(|e| {
            ProviderError::Refused(format!("the display of {machine}: {}", e.message()))
        })?;
        Ok(UnixStream::from(owned_fd(fd)?))
    }

    fn stats(&self, machine: &str) -> Result<MachineStats, ProviderError> {
        let dom = self.domain(machine)?;
        let info = dom.info().map_err(|e| map_err(machine, e))?;
        let running =
            matches!(info.state, Enum::Known(s) if power_state_of(s) == PowerState::Running);
        if !running {
            return Err(ProviderError::Refused(format!("{machine} is not running")));
        }
        // Tags of virDomainMemoryStats (libvirt-domain.h: VIR_DOMAIN_MEMORY_STAT_*).
        const UNUSED: u32 = 4;
        const AVAILABLE: u32 = 5;
        const RSS: u32 = 7;
        let mem = dom.memory_stats(0).unwrap_or_default();
        let tag = |t: u32| mem.iter().find(|s| s.tag == t).map(|s| s.val);
        let used_kib = match (tag(AVAILABLE), tag(UNUSED)) {
            (Some(avail), Some(unused)) if avail >= unused => Some(avail - unused),
            _ => tag(RSS).map(|rss| rss.min(info.memory)),
        };
        Ok(MachineStats {
            cpu_time_ns: info.cpu_time,
            vcpus: info.nr_virt_cpu,
            memory_kib: info.memory,
            used_kib,
        })
    }

    fn marked(&self, install_id: &str) -> Result<Vec<String>, ProviderError> {
        let tag: String = install_id.chars().take(8).collect();
        let err = |e: virt::error::Error| ProviderError::Unreachable(e.message().to_owned());
        let mut names = std::collections::BTreeSet::new();
        for dom in self.conn.list_all_domains(0).map_err(err)? {
            let Ok(name) = dom.name() else { continue };
            // The name says whose it may be; the metadata says whose it is.
            if name.starts_with("vmdesk-") && name.ends_with(&format!("-{tag}")) {
                let xml = dom.xml_desc(0).unwrap_or_default();
                if xml.contains(MARKER_NS) && xml.contains(&format!(">{install_id}<")) {
                    names.insert(name);
                }
            }
        }
        if self.virt != VirtType::Test {
            let pool = self.pool()?;
            for vol in pool.list_volumes().map_err(err)? {
                if let Some(machine) = vol.strip_suffix(".qcow2") {
                    if machine.starts_with("vmdesk-")
                        && !machine.starts_with("vmdesk-os-")
                        && machine.ends_with(&format!("-{tag}"))
                    {
                        names.insert(machine.to_owned());
                    }
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    fn undefine(&self, machine: &str) -> Result<(), ProviderError> {
        match self.domain(machine) {
            Ok(dom) => dom.undefine().map_err(|e| map_err(machine, e)),
            Err(ProviderError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn power_state(&self, machine: &str) -> Result<PowerState, ProviderError> {
        let (state, _) = self
            .domain(machine)?
            .state()
            .map_err(|e| map_err(machine, e))?;
        Ok(match state {
            Enum::Known(s) => power_state_of(s),
            Enum::Unknown(_) => PowerState::Unknown,
        })
    }
}

/// Makes libvirt providers, one cached connection per URI, reopened when it dies.
#[derive(Default)]
pub struct LibvirtFactory {
    cache: Mutex<HashMap<String, Arc<LibvirtProvider>>>,
    events: Option<Mutex<std::sync::mpsc::Sender<events::LifecycleEvent>>>,
}

impl LibvirtFactory {
    /// A factory with an empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// A factory whose connections send their domains' lifecycle events to
    /// `tx` (start the event loop first: [`events::start_event_loop`]).
    pub fn watching(tx: std::sync::mpsc::Sender<events::LifecycleEvent>) -> Self {
        Self {
            cache: Mutex::default(),
            events: Some(Mutex::new(tx)),
        }
    }

    /// Whether a live connection to `uri` is cached (none: the next use reconnects).
    pub fn is_connected(&self, uri: &str) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(uri).is_some_and(|p| p.is_alive())
    }

    /// The provider of a URI.
    pub fn provider(&self, uri: &str) -> Result<Arc<LibvirtProvider>, ProviderError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(uri).filter(|p| p.is_alive()) {
            return Ok(Arc::clone(p));
        }
        let tx = self
            .events
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone());
        let p = Arc::new(match tx {
            Some(tx) => LibvirtProvider::open_watched(uri, tx)?,
            None => LibvirtProvider::open(uri)?,
        });
        cache.insert(uri.to_owned(), Arc::clone(&p));
        Ok(p)
    }
}

impl ProviderFactory for LibvirtFactory {
    fn probe(&self, kind: HostKind, uri: &str) -> Result<(), ProviderError> {
        match kind {
            HostKind::Libvirt => self.provider(uri).map(|_| ()),
            other => Err(ProviderError::Unsupported(format!(
                "hosts of kind \"{other}\""
            ))),
        }
    }

    fn connect(&self, host: &Host) -> Result<Arc<dyn Provider>, ProviderError> {
        match host.kind {
            HostKind::Libvirt => Ok(self.provider(&host.uri)?),
            other => Err(ProviderError::Unsupported(format!(
                "hosts of kind \"{other}\""
            ))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod console_tests {
    use std::io::{Read, Write};
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixStream;

    use super::{is_local_uri, owned_fd};

    #[test]
    fn an_owned_descriptor_carries_the_socket_and_closes_it_when_dropped() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let raw = u32::try_from(ours.into_raw_fd()).unwrap();
        let mut stream = UnixStream::from(owned_fd(raw).unwrap());
        stream.write_all(b"RFB").unwrap();
        let mut got = [0u8; 3];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"RFB");
        drop(stream);
        assert_eq!(peer.read(&mut got).unwrap(), 0, "closed once dropped");
    }

    #[test]
    fn local_uris_are_told_from_remote_ones() {
        for uri in [
            "qemu:///system",
            "qemu:///session",
            "qemu+unix:///system",
            "test:///default",
        ] {
            assert!(is_local_uri(uri), "{uri}");
        }
        for uri in [
            "qemu+ssh://user@host/system",
            "qemu+tls://host/system",
            "qemu://host/system",
            "qemu+tcp://127.0.0.1/system",
            "qemu+ssh://host/system?keyfile=/k",
            "nonsense",
        ] {
            assert!(!is_local_uri(uri), "{uri}");
        }
    }
}
