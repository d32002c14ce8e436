//! The libvirt provider of vmdesk: a host is a libvirt connection URI; a VM is
//! a domain defined from its spec and marked as vmdesk's in its metadata.

pub mod events;
pub mod ssh;
mod xml;

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::Duration;

use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;
use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;
use vmdesk_core::model::{Host, HostKind};
use vmdesk_core::provider::{
    Address, Capacity, DisplayFeatures, MachineSpec, MachineStats, NetworkChoice, OsImage,
    PowerState, Provider, ProviderError, ProviderFactory,
};
use vmdesk_core::validate;
use vmdesk_core::ConsolePath;

pub use xml::{domain as domain_xml, Devices, DiskRef, Nic, VirtType, MARKER_NS};

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
/// data directories may give one name to different images), named with its
/// checksum: it exists only once its content was uploaded and checked.
pub fn image_volume(image: &str, install_id: &str, sha256: &str) -> String {
    let tag: String = install_id.chars().take(8).collect();
    let sum: String = sha256.chars().take(12).collect();
    format!("vmdesk-os-{image}-{tag}-{sum}.qcow2")
}

/// The volume of a machine's cloud-init seed (raw vfat, labelled `cidata`).
pub fn seed_volume(machine: &str) -> String {
    format!("{machine}-seed.img")
}

/// vmdesk's NAT network on a system daemon.
pub const NETWORK: &str = "vmdesk";
/// The bridges and the third octets of the 192.168.X.0/24 subnets vmdesk's
/// network may take, in order: the first pair that the host's interfaces
/// leave free. The bridge changes with the subnet, so that a bridge left
/// behind by a daemon that died without tearing its network down (its
/// address still on it) does not keep the network from starting.
const NETWORK_CHOICES: [(&str, u8); 6] = [
    ("vmdesk0", 213),
    ("vmdesk1", 214),
    ("vmdesk2", 215),
    ("vmdesk3", 216),
    ("vmdesk4", 217),
    ("vmdesk5", 218),
];

/// The prefix of the temporary volumes an image is uploaded to before it is
/// checked and copied to its [`image_volume`] (a process killed mid-upload
/// leaves one of these, never a partial image volume).
pub fn image_upload_prefix(image: &str, install_id: &str, sha256: &str) -> String {
    let name = image_volume(image, install_id, sha256);
    format!("{}.upload-", name.trim_end_matches(".qcow2"))
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
    /// Where this connection's daemon keeps vmdesk's disks and its logs.
    paths: HostPaths,
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
        let paths = HostPaths::of(uri, &LocalUser::current());
        Ok(Self {
            conn,
            virt,
            paths,
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
                    .define_storage_pool_xml(&xml::dir_pool(name, &self.pool_path()?), 0)
                    .map_err(err)?;
                p.build(0).map_err(err)?;
                let _ = p.set_autostart(true);
                p
            }
        };
        if !pool.is_active().map_err(err)? {
            // A defined pool whose directory was removed (by hand, or by a
            // clean-up while the daemon was down) cannot start; building a
            // directory pool only makes its directory, so it is safe to
            // repeat before every start.
            let _ = pool.build(0);
            pool.create(0).map_err(err)?;
        }
        Ok(pool)
    }

    fn pool_path(&self) -> Result<String, ProviderError> {
        self.paths.pool_dir.clone().ok_or_else(|| {
            ProviderError::Refused(format!(
                "the host has no storage pool {name}, and vmdesk cannot tell where its \
                 daemon keeps files; define it there (virsh pool-define-as {name} dir \
                 --target DIR; virsh pool-build {name})",
                name = pool_name(self.virt)
            ))
        })
    }

    /// Where this connection's daemon keeps vmdesk's disks and its logs.
    pub fn paths(&self) -> &HostPaths {
        &self.paths
    }

    /// The catalog image on this host. If missing, the local file is
    /// uploaded to a temporary volume, its size and SHA-256 are checked
    /// (against the file as sent, the checksum of the import, and the volume
    /// as read back), and only then is it copied to the image's volume: an
    /// interrupted upload never leaves a volume that later VMs would use.
    fn image(
        &self,
        pool: &StoragePool,
        image: &OsImage,
        install_id: &str,
    ) -> Result<StorageVol, ProviderError> {
        let name = image_volume(&image.name, install_id, &image.sha256);
        if let Ok(v) = pool.lookup_storage_vol_by_name(&name) {
            return Ok(v);
        }
        let err = |e: virt::error::Error| {
            ProviderError::Refused(format!("image {}: {}", image.name, e.message()))
        };
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tmp_name = format!(
            "{}{:x}-{nonce:x}",
            image_upload_prefix(&image.name, install_id, &image.sha256),
            std::process::id()
        );
        let tmp = StorageVol::create_xml(pool, &xml::raw_volume(&tmp_name, image.bytes), 0)
            .map_err(err)?;
        let adopted = self.upload_checked(&tmp, image).and_then(|()| {
            // The copy keeps the format the host probed in the upload (a
            // raw copy of a qcow2 would be converted to a raw disk).
            let format = tmp
                .xml_desc(0)
                .ok()
                .and_then(|x| xml::volume_format(&x))
                .unwrap_or_else(|| "raw".to_owned());
            let copy = xml::copy_volume(&name, image.bytes, &format);
            match StorageVol::create_xml_from(pool, &copy, &tmp, 0) {
                Ok(v) => Ok(v),
                // Another process adopted its own upload first.
                Err(e) => pool.lookup_storage_vol_by_name(&name).map_err(|_| err(e)),
            }
        });
        let _ = tmp.delete(0);
        adopted
    }

    /// Uploads the image's local file to `vol` and checks it there.
    fn upload_checked(&self, vol: &StorageVol, image: &OsImage) -> Result<(), ProviderError> {
        use sha2::{Digest, Sha256};
        let err = |e: virt::error::Error| {
            ProviderError::Refused(format!("image {}: {}", image.name, e.message()))
        };
        let file_err = |e: std::io::Error| {
            ProviderError::Refused(format!("image {}: {e}", image.path.display()))
        };
        let mut file = std::fs::File::open(&image.path).map_err(file_err)?;
        let stream = Stream::new(&self.conn, 0).map_err(err)?;
        vol.upload(&stream, 0, image.bytes, 0).map_err(err)?;
        let mut sent_hash = Sha256::new();
        let mut sent_bytes = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut file, &mut buf).map_err(file_err)?;
            if n == 0 {
                break;
            }
            sent_hash.update(&buf[..n]);
            sent_bytes += n as u64;
            let mut sent = 0;
            while sent < n {
                let k = stream.send(&buf[sent..n]).map_err(err)?;
                sent += usize::try_from(k).unwrap_or(0).max(1);
            }
        }
        stream.finish().map_err(err)?;
        let sent = hex(&sent_hash.finalize());
        if sent_bytes != image.bytes || sent != image.sha256 {
            return Err(ProviderError::Refused(format!(
                "image {}: the file {} changed since it was imported ({sent_bytes} bytes, \
                 SHA-256 {sent}; the catalog says {} bytes, {})",
                image.name,
                image.path.display(),
                image.bytes,
                image.sha256
            )));
        }
        // Read back what the host stored.
        let stream = Stream::new(&self.conn, 0).map_err(err)?;
        vol.download(&stream, 0, image.bytes, 0).map_err(err)?;
        let mut got_hash = Sha256::new();
        let mut got_bytes = 0u64;
        loop {
            let k = stream.recv(&mut buf).map_err(err)?;
            let Ok(k) = usize::try_from(k) else { break };
            if k == 0 {
                break;
            }
            got_hash.update(&buf[..k]);
            got_bytes += k as u64;
        }
        stream.finish().map_err(err)?;
        let got = hex(&got_hash.finalize());
        if got_bytes != image.bytes || got != image.sha256 {
            return Err(ProviderError::Refused(format!(
                "image {}: the host stored {got_bytes} bytes with SHA-256 {got}, not the {} \
                 bytes sent",
                image.name, image.bytes
            )));
        }
        Ok(())
    }

    fn domain(&self, machine: &str) -> Result<Domain, ProviderError> {
        self.conn
            .lookup_domain_by_name(machine)
            .map_err(|e| map_err(machine, e))
    }

    /// Whether the connection reaches a system daemon (which can make
    /// bridges and networks), not a user's session daemon.
    pub fn is_system(&self) -> bool {
        let uri = self.conn.uri().unwrap_or_default();
        let path = uri
            .split_once("://")
            .map(|(_, rest)| rest)
            .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("");
        path.split(['?', '#']).next() == Some("/system")
    }

    /// vmdesk's NAT network ([`NETWORK`]), defined, started and set to
    /// start with the daemon on first use; another process defining it at
    /// the same time is no error. Its bridge and subnet are the first of
    /// [`NETWORK_CHOICES`] that the host's interfaces leave free. A network
    /// that is defined but will not start (its bridge or subnet taken since,
    /// e.g. by a bridge a killed daemon left behind) is defined again on the
    /// next free choice: machines name the network, not its bridge.
    pub fn ensure_network(&self) -> Result<(), ProviderError> {
        self.ensure_network_from(0)
    }

    fn ensure_network_from(&self, depth: u8) -> Result<(), ProviderError> {
        let err = |e: virt::error::Error| {
            ProviderError::Refused(format!("network {NETWORK}: {}", e.message()))
        };
        if let Ok(net) = self.conn.lookup_network_by_name(NETWORK) {
            if !net.is_active().map_err(err)? {
                if let Err(e) = net.create() {
                    // Started by another process in between.
                    if net.is_active().unwrap_or(false) {
                        return Ok(());
                    }
                    // Defined and unable to start: define it again on a
                    // free choice (once; a second failure is the answer).
                    if depth > 0 {
                        return Err(err(e));
                    }
                    let _ = net.undefine();
                    return self.ensure_network_from(depth + 1);
                }
            }
            if !net.autostart().unwrap_or(true) {
                let _ = net.set_autostart(true);
            }
            return Ok(());
        }
        let mut last = None;
        for (bridge, third) in NETWORK_CHOICES {
            let xml = xml::nat_network(NETWORK, bridge, third);
            let net = match self.conn.define_network_xml(&xml) {
                Ok(n) => n,
                // Defined by another process in between: use that one.
                Err(_) if depth < 2 && self.conn.lookup_network_by_name(NETWORK).is_ok() => {
                    return self.ensure_network_from(depth + 1)
                }
                Err(e) => return Err(err(e)),
            };
            match net.create() {
                Ok(()) => {
                    let _ = net.set_autostart(true);
                    return Ok(());
                }
                // Started by another process in between.
                Err(_) if net.is_active().unwrap_or(false) => return Ok(()),
                Err(e) => {
                    // Most likely its subnet or bridge is in use on the
                    // host: try the next.
                    let _ = net.undefine();
                    last = Some(e);
                }
            }
        }
        Err(last.map_or_else(
            || ProviderError::Refused(format!("network {NETWORK}: no free subnet")),
            err,
        ))
    }

    /// The NIC of a machine on this host.
    fn nic<'a>(&self, choice: &'a NetworkChoice) -> Result<Option<Nic<'a>>, ProviderError> {
        Ok(match choice {
            NetworkChoice::None => None,
            NetworkChoice::Network(n) => Some(Nic::Network(n)),
            NetworkChoice::Bridge(b) => Some(Nic::Bridge(b)),
            NetworkChoice::Vmdesk if self.is_system() => {
                self.ensure_network()?;
                Some(Nic::Network(NETWORK))
            }
            NetworkChoice::Vmdesk => Some(Nic::User),
        })
    }

    /// Writes a machine's seed volume (made if missing) with `bytes`.
    fn write_seed(
        &self,
        pool: &StoragePool,
        machine: &str,
        bytes: &[u8],
    ) -> Result<(), ProviderError> {
        let name = seed_volume(machine);
        let err =
            |e: virt::error::Error| ProviderError::Refused(format!("seed {name}: {}", e.message()));
        let len = bytes.len() as u64;
        let vol = match pool.lookup_storage_vol_by_name(&name) {
            Ok(v) if v.info().map(|i| i.capacity == len).unwrap_or(false) => v,
            found => {
                if let Ok(v) = found {
                    v.delete(0).map_err(err)?;
                }
                StorageVol::create_xml(pool, &xml::raw_volume(&name, len), 0).map_err(err)?
            }
        };
        let stream = Stream::new(&self.conn, 0).map_err(err)?;
        vol.upload(&stream, 0, len, 0).map_err(err)?;
        let mut sent = 0;
        while sent < bytes.len() {
            let k = stream.send(&bytes[sent..]).map_err(err)?;
            sent += usize::try_from(k).unwrap_or(0).max(1);
        }
        stream.finish().map_err(err)
    }
}

/// The user this process runs as, for the paths of a per-user daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalUser {
    /// Whether it is root (whose session URIs reach the system daemon).
    pub root: bool,
    /// `$HOME`.
    pub home: Option<String>,
    /// `$XDG_DATA_HOME`.
    pub data_home: Option<String>,
    /// `$XDG_CACHE_HOME`.
    pub cache_home: Option<String>,
}

impl LocalUser {
    /// The user of this process, from its environment.
    pub fn current() -> Self {
        use std::os::unix::fs::MetadataExt;
        let var = |k: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| v.starts_with('/') && !v.chars().any(char::is_control))
        };
        Self {
            root: std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0),
            home: var("HOME"),
            data_home: var("XDG_DATA_HOME"),
            cache_home: var("XDG_CACHE_HOME"),
        }
    }
}

/// Where a host's daemon keeps vmdesk's storage pool and its domains' logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPaths {
    /// The directory of the `vmdesk` storage pool (none: unknown, the pool
    /// must exist already).
    pub pool_dir: Option<String>,
    /// The directory of the domains' logs (none: serial consoles are not logged).
    pub log_dir: Option<String>,
    /// Whether the daemon runs on this machine (as this user, for a session).
    pub local: bool,
}

impl HostPaths {
    /// The paths of the daemon a URI reaches: a system daemon's fixed ones; a
    /// session daemon of this user (a local `/session` URI, not as root) keeps
    /// them under the user's XDG dirs, as libvirt does; a session daemon on
    /// another machine keeps them where this process cannot tell.
    pub fn of(uri: &str, user: &LocalUser) -> Self {
        let (rest, remote) = match uri.split_once("://") {
            Some((_, rest)) => (rest, !rest.starts_with('/')),
            None => ("", false),
        };
        let system = Self {
            pool_dir: Some("/var/lib/libvirt/images/vmdesk".to_owned()),
            log_dir: Some(xml::SYSTEM_LOG_DIR.to_owned()),
            local: !remote,
        };
        let path = rest
            .find('/')
            .map(|i| &rest[i..])
            .unwrap_or("")
            .split(['?', '#'])
            .next()
            .unwrap_or("");
        if path != "/session" {
            return system;
        }
        if remote {
            return Self::default();
        }
        if user.root {
            return system;
        }
        let home = user.home.as_deref();
        let data = user
            .data_home
            .clone()
            .or_else(|| home.map(|h| format!("{h}/.local/share")));
        let cache = user
            .cache_home
            .clone()
            .or_else(|| home.map(|h| format!("{h}/.cache")));
        Self {
            pool_dir: data.map(|d| format!("{d}/libvirt/images/vmdesk")),
            log_dir: cache.map(|c| format!("{c}/libvirt/qemu/log")),
            local: true,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    ConsolePath::of(uri) == ConsolePath::Local
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
        if let (Some(seed), false) = (&spec.seed, self.virt == VirtType::Test) {
            self.write_seed(&pool, &spec.machine_name, seed)?;
        }
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

    fn export_disk(
        &self,
        machine: &str,
        dest: &mut dyn std::io::Write,
    ) -> Result<u64, ProviderError> {
        let pool = self.pool()?;
        let name = disk_volume(machine);
        let err =
            |e: virt::error::Error| ProviderError::Refused(format!("disk {name}: {}", e.message()));
        let vol = pool
            .lookup_storage_vol_by_name(&name)
            .map_err(|_| ProviderError::NotFound(machine.to_owned()))?;
        let capacity = vol.info().map_err(err)?.capacity;
        // A clone with no backing store: the host converts the disk with
        // qemu-img, reading through its chain, into one self-contained file.
        let flat_name = format!(
            "{}.template-{}.qcow2",
            name.trim_end_matches(".qcow2"),
            std::process::id()
        );
        if let Ok(old) = pool.lookup_storage_vol_by_name(&flat_name) {
            let _ = old.delete(0);
        }
        let flat =
            StorageVol::create_xml_from(&pool, &xml::flat_volume(&flat_name, capacity), &vol, 0)
                .map_err(err)?;
        let copied = (|| {
            let stream = Stream::new(&self.conn, 0).map_err(err)?;
            flat.download(&stream, 0, 0, 0).map_err(err)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = stream.recv(&mut buf).map_err(err)?;
                let Ok(n) = usize::try_from(n) else { break };
                if n == 0 {
                    break;
                }
                dest.write_all(&buf[..n])
                    .map_err(|e| ProviderError::Refused(format!("disk {name}: {e}")))?;
                total += n as u64;
            }
            stream.finish().map_err(err)?;
            Ok(total)
        })();
        let _ = flat.delete(0);
        copied
    }

    fn delete_disk(&self, machine: &str) -> Result<(), ProviderError> {
        let pool = self.pool()?;
        if let Ok(v) = pool.lookup_storage_vol_by_name(&seed_volume(machine)) {
            v.delete(0).map_err(|e| map_err(machine, e))?;
        }
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
                    .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                    .map_err(|e| map_err(machine, e))?;
                // Defined before VMs had a seed and a NIC: defined again
                // while it is off, so that it gets them at its next start.
                let lacks_seed = spec.seed.is_some()
                    && self.virt != VirtType::Test
                    && !stored.contains(&seed_volume(machine))
                    && !dom.is_active().unwrap_or(true);
                // Defined before the console's clipboard channel and
                // resizable display: the same, at its next start.
                let lacks_console = spec.seed.is_some()
                    && self.virt != VirtType::Test
                    && !stored.contains("type='qemu-vdagent'")
                    && !dom.is_active().unwrap_or(true);
                if !xml::vnc_on_tcp(&stored) && !lacks_seed && !lacks_console {
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
        let seed_name = seed_volume(machine);
        let has_seed = self.virt != VirtType::Test
            && self.pool()?.lookup_storage_vol_by_name(&seed_name).is_ok();
        let devices = Devices {
            disk: has_disk.then(|| DiskRef {
                pool: pool_name(self.virt),
                volume: &volume,
            }),
            seed: has_seed.then(|| DiskRef {
                pool: pool_name(self.virt),
                volume: &seed_name,
            }),
            nic: if self.virt == VirtType::Test {
                None
            } else {
                self.nic(&spec.network)?
            },
        };
        if let (true, Some(dir)) = (self.paths.local, &self.paths.log_dir) {
            // A fresh machine (or user) may lack it; virtlogd does not create it.
            let _ = std::fs::create_dir_all(dir);
        }
        let xml = xml::domain_on(
            spec,
            self.virt,
            &devices,
            uuid.as_deref(),
            self.paths.log_dir.as_deref(),
        );
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
        // vmdesk's network may be down since the machine was defined (the
        // daemon restarted and could not start it again): start it first.
        if self.is_system() {
            let stored = dom
                .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                .map_err(|e| map_err(machine, e))?;
            if xml::uses_network(&stored, NETWORK) {
                self.ensure_network()?;
            }
        }
        match dom.create() {
            // A session daemon under a long home directory cannot bind the
            // guest agent's socket (unix paths end at 108 bytes): the
            // machine runs without the agent rather than not at all.
            Err(e) if e.message().contains("too long") => {
                let stored = dom
                    .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                    .map_err(|e| map_err(machine, e))?;
                let Some(without) = xml::without_agent(&stored) else {
                    return Err(map_err(machine, e));
                };
                tracing::warn!(
                    machine,
                    "the guest agent's socket path is too long here: started without the agent"
                );
                self.conn
                    .define_domain_xml(&without)
                    .map_err(|e| map_err(machine, e))?;
                self.domain(machine)?
                    .create()
                    .map_err(|e| map_err(machine, e))
            }
            other => other.map_err(|e| map_err(machine, e)),
        }
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

    fn display_features(&self, machine: &str) -> Result<DisplayFeatures, ProviderError> {
        let live = self
            .domain(machine)?
            .xml_desc(0)
            .map_err(|e| map_err(machine, e))?;
        Ok(DisplayFeatures {
            clipboard: xml::clipboard_agent_connected(&live),
            resize: xml::display_resizes(&live),
        })
    }

    fn console_stream(&self, machine: &str) -> Result<UnixStream, ProviderError> {
        let uri = self.conn.uri().unwrap_or_default();
        let dom = self.domain(machine)?;
        match ConsolePath::of(&uri) {
            ConsolePath::Local => {
                let fd = dom.open_graphics_fd(0, 0).map_err(|e| {
                    ProviderError::Refused(format!("the display of {machine}: {}", e.message()))
                })?;
                Ok(UnixStream::from(owned_fd(fd)?))
            }
            ConsolePath::Ssh => {
                let target = ssh::SshTarget::of(&uri)
                    .ok_or_else(|| ProviderError::Refused(format!("{uri} names no ssh host")))?;
                let live = dom.xml_desc(0).map_err(|e| map_err(machine, e))?;
                let path = xml::vnc_socket(&live).ok_or_else(|| {
                    ProviderError::Refused(format!(
                        "the display of {machine} does not listen on a unix socket on its host"
                    ))
                })?;
                target.open(&path)
            }
            ConsolePath::Unavailable | ConsolePath::None => {
                Err(ProviderError::Unsupported(format!(
                "a console of a VM on {uri}: its display listens on a unix socket of that host, \
                 which vmdesk reaches only through ssh; add the host with a qemu+ssh:// URI"
            )))
            }
        }
    }

    fn capacity(&self) -> Result<Capacity, ProviderError> {
        if self.virt == VirtType::Test {
            return Err(ProviderError::Unsupported(
                "capacity (the test driver's figures are made up)".into(),
            ));
        }
        let err = |e: virt::error::Error| ProviderError::Unreachable(e.message().to_owned());
        let total_kib = self.conn.node_info().map_err(err)?.memory;
        let free = self.conn.free_memory().map_err(err)?;
        let free_disk_mb = self
            .pool()
            .ok()
            .and_then(|p| p.info().ok())
            .map(|i| i.available >> 20);
        Ok(Capacity {
            total_memory_mb: total_kib >> 10,
            free_memory_mb: free >> 20,
            free_disk_mb,
        })
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

    fn takes_seed(&self) -> bool {
        self.virt != VirtType::Test
    }

    fn address(&self, machine: &str) -> Result<Option<Address>, ProviderError> {
        if self.virt == VirtType::Test {
            return Err(ProviderError::Unsupported("addresses".into()));
        }
        let dom = self.domain(machine)?;
        if !dom.is_active().map_err(|e| map_err(machine, e))? {
            return Ok(None);
        }
        for (source, name) in [
            (sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, "lease"),
            (sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, "agent"),
            (sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP, "arp"),
        ] {
            // A source that cannot answer (no agent, no lease file) is
            // passed over for the next.
            let Ok(ifaces) = dom.interface_addresses(source, 0) else {
                continue;
            };
            let ip = ifaces
                .iter()
                .filter(|i| i.name != "lo")
                .flat_map(|i| &i.addrs)
                .filter(|a| a.typed == i64::from(sys::VIR_IP_ADDR_TYPE_IPV4))
                // The agent's answer is the guest's: an IPv4 address or nothing.
                .find(|a| {
                    a.addr
                        .parse::<std::net::Ipv4Addr>()
                        .is_ok_and(|ip| !ip.is_loopback())
                })
                .map(|a| a.addr.clone());
            if let Some(ip) = ip {
                return Ok(Some(Address {
                    ip,
                    source: name,
                    public_ip: None,
                }));
            }
        }
        Ok(None)
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

/// How long a caller waits for a connection to a host (an ssh host that
/// accepts TCP but never answers would otherwise hold it for ever).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connect under way, on a thread of its own: callers wait for it until
/// [`CONNECT_TIMEOUT`] after it began, and a later caller joins it instead of
/// starting another (so once a hung connect is past its time, callers of its
/// URI fail at once until it ends).
struct Attempt {
    began: std::time::Instant,
    done: Mutex<Option<Result<Arc<LibvirtProvider>, String>>>,
    cv: Condvar,
}

impl Default for Attempt {
    fn default() -> Self {
        Self {
            began: std::time::Instant::now(),
            done: Mutex::default(),
            cv: Condvar::new(),
        }
    }
}

/// A URI's cached connection, and the connect under way if any.
#[derive(Default)]
struct SlotState {
    provider: Option<Arc<LibvirtProvider>>,
    attempt: Option<Arc<Attempt>>,
}

type Slot = Arc<Mutex<SlotState>>;

/// Makes libvirt providers, one cached connection per URI, reopened when it
/// dies. Connecting happens on a thread of its own, outside every lock a
/// caller holds: a connect that hangs (an ssh host that never answers) makes
/// the callers of its own URI wait [`CONNECT_TIMEOUT`] and no one else.
pub struct LibvirtFactory {
    cache: Mutex<HashMap<String, Slot>>,
    events: Option<Mutex<std::sync::mpsc::Sender<events::LifecycleEvent>>>,
    policy: validate::UriPolicy,
}

impl Default for LibvirtFactory {
    fn default() -> Self {
        Self {
            cache: Mutex::default(),
            events: None,
            policy: validate::UriPolicy::from_env(),
        }
    }
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
            events: Some(Mutex::new(tx)),
            ..Self::default()
        }
    }

    /// The same factory under another URI policy (e.g. allowing `tcp`).
    pub fn with_policy(mut self, policy: validate::UriPolicy) -> Self {
        self.policy = policy;
        self
    }

    fn slot(&self, uri: &str) -> Slot {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(cache.entry(uri.to_owned()).or_default())
    }

    /// Whether a live connection to `uri` is cached (none: the next use
    /// reconnects). A connect under way counts as not connected.
    pub fn is_connected(&self, uri: &str) -> bool {
        let slot = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(uri) {
                Some(s) => Arc::clone(s),
                None => return false,
            }
        };
        let st = slot.lock().unwrap_or_else(|p| p.into_inner());
        st.provider.as_ref().is_some_and(|p| p.is_alive())
    }

    /// The provider of a URI, connecting if no live connection is cached
    /// (waiting at most [`CONNECT_TIMEOUT`]). The URI must pass
    /// [`validate::uri_with`] under this factory's policy.
    pub fn provider(&self, uri: &str) -> Result<Arc<LibvirtProvider>, ProviderError> {
        self.provider_within(uri, CONNECT_TIMEOUT)
    }

    /// [`LibvirtFactory::provider`], waiting at most `wait` for a connect
    /// (which goes on in the background if it takes longer).
    pub fn provider_within(
        &self,
        uri: &str,
        wait: Duration,
    ) -> Result<Arc<LibvirtProvider>, ProviderError> {
        validate::uri_with(uri, self.policy).map_err(|e| ProviderError::Refused(e.to_string()))?;
        let slot = self.slot(uri);
        let attempt = {
            let mut st = slot.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = st.provider.as_ref().filter(|p| p.is_alive()) {
                return Ok(Arc::clone(p));
            }
            st.provider = None;
            match &st.attempt {
                Some(a) => Arc::clone(a),
                None => {
                    let a = Arc::new(Attempt::default());
                    st.attempt = Some(Arc::clone(&a));
                    self.spawn_connect(uri, &slot, &a);
                    a
                }
            }
        };
        let wait = wait.min(
            (attempt.began + CONNECT_TIMEOUT).saturating_duration_since(std::time::Instant::now()),
        );
        let done = attempt.done.lock().unwrap_or_else(|p| p.into_inner());
        let (done, _) = attempt
            .cv
            .wait_timeout_while(done, wait, |d| d.is_none())
            .unwrap_or_else(|p| p.into_inner());
        match done.as_ref() {
            Some(Ok(p)) => Ok(Arc::clone(p)),
            Some(Err(e)) => Err(ProviderError::Unreachable(e.clone())),
            None => Err(ProviderError::Unreachable(format!(
                "{uri} has not answered for {} s",
                attempt.began.elapsed().as_secs()
            ))),
        }
    }

    fn spawn_connect(&self, uri: &str, slot: &Slot, attempt: &Arc<Attempt>) {
        let tx = self
            .events
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone());
        let (uri, slot, attempt) = (uri.to_owned(), Arc::clone(slot), Arc::clone(attempt));
        std::thread::spawn(move || {
            let opened = match tx {
                Some(tx) => LibvirtProvider::open_watched(&uri, tx),
                None => LibvirtProvider::open(&uri),
            }
            .map(Arc::new)
            .map_err(|e| e.to_string());
            {
                let mut st = slot.lock().unwrap_or_else(|p| p.into_inner());
                st.attempt = None;
                if let Ok(p) = &opened {
                    st.provider = Some(Arc::clone(p));
                }
            }
            *attempt.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(opened);
            attempt.cv.notify_all();
        });
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
