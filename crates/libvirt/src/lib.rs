//! The libvirt provider of vmdesk: a host is a libvirt connection URI; a VM is
//! a domain defined from its spec and marked as vmdesk's in its metadata.

mod xml;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once};

use virt::connect::Connect;
use virt::domain::{Domain, DomainState};
use virt::enumutil::Enum;
use virt::error::ErrorNumber;
use vmdesk_core::model::{Host, HostKind};
use vmdesk_core::provider::{MachineSpec, PowerState, Provider, ProviderError, ProviderFactory};

pub use xml::{domain as domain_xml, VirtType, MARKER_NS};

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
}

impl LibvirtProvider {
    /// Opens a connection to `uri` and learns which hypervisor type it offers.
    pub fn open(uri: &str) -> Result<Self, ProviderError> {
        quiet_libvirt();
        let conn = Connect::open(Some(uri))
            .map_err(|e| ProviderError::Unreachable(e.message().to_owned()))?;
        let virt = if uri.starts_with("test:") {
            VirtType::Test
        } else if conn
            .domain_capabilities(None, Some("x86_64"), None, Some("kvm"), 0)
            .is_ok()
        {
            VirtType::Kvm
        } else {
            VirtType::Qemu
        };
        Ok(Self { conn, virt })
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

    fn domain(&self, machine: &str) -> Result<Domain, ProviderError> {
        self.conn
            .lookup_domain_by_name(machine)
            .map_err(|e| map_err(machine, e))
    }
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
    fn ensure_defined(&self, spec: &MachineSpec) -> Result<(), ProviderError> {
        match self.domain(&spec.machine_name) {
            Ok(_) => Ok(()),
            Err(ProviderError::NotFound(_)) => {
                let xml = xml::domain(spec, self.virt);
                self.conn
                    .define_domain_xml(&xml)
                    .map(|_| ())
                    .map_err(|e| map_err(&spec.machine_name, e))
            }
            Err(e) => Err(e),
        }
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
}

impl LibvirtFactory {
    /// A factory with an empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The provider of a URI.
    pub fn provider(&self, uri: &str) -> Result<Arc<LibvirtProvider>, ProviderError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(uri).filter(|p| p.is_alive()) {
            return Ok(Arc::clone(p));
        }
        let p = Arc::new(LibvirtProvider::open(uri)?);
        cache.insert(uri.to_owned(), Arc::clone(&p));
        Ok(p)
    }
}

impl ProviderFactory for LibvirtFactory {
    fn probe(&self, kind: HostKind, uri: &str) -> Result<(), ProviderError> {
        match kind {
            HostKind::Libvirt => self.provider(uri).map(|_| ()),
            other => Err(ProviderError::Unsupported(other.to_string())),
        }
    }

    fn connect(&self, host: &Host) -> Result<Arc<dyn Provider>, ProviderError> {
        match host.kind {
            HostKind::Libvirt => Ok(self.provider(&host.uri)?),
            other => Err(ProviderError::Unsupported(other.to_string())),
        }
    }
}
