//! `vmdesk doctor` (and the window's health check): what a user would
//! otherwise debug by hand, one line per check.

use std::path::Path;
use std::sync::Arc;

use vmdesk_azure::AzureFactory;
use vmdesk_core::doctor::{self, Check, CheckStatus, HostRow};
use vmdesk_core::model::HostKind;
use vmdesk_core::provider::ProviderFactory;
use vmdesk_core::Settings;
use vmdesk_libvirt::LibvirtFactory;

use crate::cli::{data_dir, out, settings_path, Global};

/// Where QEMU domains on a local system daemon write their logs (and vmdesk's
/// VMs their serial consoles).
const QEMU_LOG_DIR: &str = "/var/log/libvirt/qemu";
/// vmdesk's storage pool on a libvirt host.
const POOL: &str = "vmdesk";

/// `vmdesk doctor` found an error (the checks are printed already).
#[derive(Debug)]
pub struct Failed {
    /// Checks that came out as errors.
    pub errors: usize,
    /// Checks run.
    pub total: usize,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} checks failed (see above)",
            self.errors, self.total
        )
    }
}

impl std::error::Error for Failed {}

/// Runs every check and prints them; fails with [`Failed`] on an error.
pub fn run(g: &Global) -> anyhow::Result<()> {
    let checks = checks(g);
    if g.json {
        out(&serde_json::to_string_pretty(&checks)?)?;
    } else {
        for c in &checks {
            out(&line(c))?;
        }
    }
    let errors = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Error)
        .count();
    if errors > 0 {
        return Err(Failed {
            errors,
            total: checks.len(),
        }
        .into());
    }
    Ok(())
}

/// One check as a line of text: status, what, message.
pub fn line(c: &Check) -> String {
    format!("{:<8}{:<16}{}", c.status.to_string(), c.check, c.message)
}

/// Every check, in order: data directory, database, settings, hosts (and
/// their libvirt storage pool and log directory), console ports, keyring.
pub fn checks(g: &Global) -> Vec<Check> {
    let mut checks = Vec::new();
    let dir = match data_dir(g) {
        Ok(d) => d,
        Err(e) => {
            checks.push(Check::new("data-dir", CheckStatus::Error, e.to_string()));
            return checks;
        }
    };
    checks.push(doctor::data_dir(&dir));
    checks.push(doctor::database(&dir));
    let (settings, check) = settings_check(g);
    checks.push(check);
    checks.extend(host_checks(&dir, &settings));
    checks.push(ports(
        settings.console.port_start,
        settings.console.port_end,
    ));
    checks.push(keyring(&settings));
    checks
}

/// The settings file parses (the defaults are used for what follows when it
/// does not).
fn settings_check(g: &Global) -> (Settings, Check) {
    let name = "settings";
    let path = match settings_path(g) {
        Ok(p) => p,
        Err(e) => {
            return (
                Settings::default(),
                Check::new(name, CheckStatus::Error, e.to_string()),
            )
        }
    };
    match Settings::load(&path) {
        Ok(s) if path.exists() => (
            s,
            Check::new(name, CheckStatus::Ok, format!("{} parses", path.display())),
        ),
        Ok(s) => (
            s,
            Check::new(
                name,
                CheckStatus::Ok,
                format!("{} does not exist: the defaults apply", path.display()),
            ),
        ),
        Err(e) => (
            Settings::default(),
            Check::new(name, CheckStatus::Error, e.one_line()),
        ),
    }
}

/// Each host answers its provider's probe; a libvirt host (not the test
/// driver) has vmdesk's storage pool, and a local system daemon its QEMU log
/// directory.
fn host_checks(dir: &Path, settings: &Settings) -> Vec<Check> {
    let hosts = doctor::hosts(dir);
    if hosts.is_empty() {
        return vec![Check::new(
            "hosts",
            CheckStatus::Warning,
            "no hosts: VMs cannot be created or started until one is added (vmdesk host add NAME --uri qemu:///system)",
        )];
    }
    let libvirt = Arc::new(LibvirtFactory::new());
    let azure = Arc::new(AzureFactory::new(
        settings.azure.clone(),
        settings.sync.clone(),
    ));
    let mut checks = Vec::new();
    for h in &hosts {
        let name = format!("host:{}", h.name);
        let probed = match h.kind {
            HostKind::Libvirt => libvirt.probe(h.kind, &h.uri),
            HostKind::Azure => azure.probe(h.kind, &h.uri),
        };
        match probed {
            Ok(()) => checks.push(Check::new(
                name,
                CheckStatus::Ok,
                format!("{} answers", h.uri),
            )),
            Err(e) => {
                checks.push(Check::new(
                    name,
                    CheckStatus::Error,
                    format!("{} cannot be reached: {e}", h.uri),
                ));
                continue;
            }
        }
        if h.kind == HostKind::Libvirt && !h.uri.starts_with("test:") {
            checks.push(pool_check(&libvirt, h));
            if is_local_system(&h.uri) {
                checks.push(log_dir_check(h));
            }
        }
    }
    checks
}

/// Whether `uri` is the system daemon of this machine (`qemu:///system`).
fn is_local_system(uri: &str) -> bool {
    uri.starts_with("qemu:///system") || uri.starts_with("qemu+unix:///system")
}

fn pool_check(factory: &LibvirtFactory, h: &HostRow) -> Check {
    let name = format!("pool:{}", h.name);
    let provider = match factory.provider(&h.uri) {
        Ok(p) => p,
        Err(e) => return Check::new(name, CheckStatus::Error, e.to_string()),
    };
    match provider.connection().lookup_storage_pool_by_name(POOL) {
        Err(_) => Check::new(
            name,
            CheckStatus::Ok,
            format!("storage pool {POOL} not defined yet: vmdesk defines it at the first VM"),
        ),
        Ok(pool) => match pool.is_active() {
            Ok(true) => Check::new(
                name,
                CheckStatus::Ok,
                format!("storage pool {POOL} is active"),
            ),
            Ok(false) => Check::new(
                name,
                CheckStatus::Warning,
                format!("storage pool {POOL} is inactive: vmdesk starts it at the next VM (virsh pool-start {POOL})"),
            ),
            Err(e) => Check::new(
                name,
                CheckStatus::Error,
                format!("storage pool {POOL}: {}", e.message()),
            ),
        },
    }
}

fn log_dir_check(h: &HostRow) -> Check {
    let name = format!("logs:{}", h.name);
    if Path::new(QEMU_LOG_DIR).is_dir() {
        Check::new(name, CheckStatus::Ok, format!("{QEMU_LOG_DIR} exists"))
    } else {
        Check::new(
            name,
            CheckStatus::Error,
            format!("{QEMU_LOG_DIR} is missing: VMs fail to start writing their serial log there (mkdir -p {QEMU_LOG_DIR})"),
        )
    }
}

/// How many ports of the console range can be bound on 127.0.0.1 now (ports
/// of open consoles and of other programs cannot).
pub fn ports(start: u16, end: u16) -> Check {
    let name = "console-ports";
    if start > end {
        return Check::new(
            name,
            CheckStatus::Error,
            format!("the range {start}-{end} is empty ([console] port_start > port_end)"),
        );
    }
    let total = usize::from(end - start) + 1;
    let free = (start..=end)
        .filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .count();
    let status = if free == 0 {
        CheckStatus::Error
    } else if free * 10 < total {
        CheckStatus::Warning
    } else {
        CheckStatus::Ok
    };
    Check::new(
        name,
        status,
        format!(
            "{free} of {total} ports of 127.0.0.1:{start}-{end} can be bound ({} in use by consoles or other programs)",
            total - free
        ),
    )
}

/// The OS keyring (Secret Service) answers; only an error when an Azure
/// service principal's secret is meant to be in it.
fn keyring(settings: &Settings) -> Check {
    let name = "keyring";
    let configured = !settings.azure.tenant_id.is_empty() && !settings.azure.client_id.is_empty();
    let probe = if configured {
        vmdesk_azure::credentials::secret(&settings.azure.tenant_id, &settings.azure.client_id)
    } else {
        vmdesk_azure::credentials::secret("vmdesk-doctor", "vmdesk-doctor")
    };
    // The keyring's own words, without the provider error's preamble.
    let probe = probe.map_err(|e| match e {
        vmdesk_core::provider::ProviderError::Credentials(m) => m,
        other => other.to_string(),
    });
    match (probe, configured) {
        (Ok(Some(_)), true) => Check::new(
            name,
            CheckStatus::Ok,
            "the Secret Service holds the Azure service principal's secret",
        ),
        (Ok(None), true) => Check::new(
            name,
            CheckStatus::Error,
            format!(
                "no secret for Azure client {} in the keyring: run vmdesk azure login again",
                settings.azure.client_id
            ),
        ),
        (Ok(_), false) => Check::new(name, CheckStatus::Ok, "the Secret Service answers"),
        (Err(e), true) => Check::new(
            name,
            CheckStatus::Error,
            format!("the Azure service principal's secret cannot be read: {e}"),
        ),
        (Err(e), false) => Check::new(
            name,
            CheckStatus::Warning,
            format!("{e} (needed only by vmdesk azure login)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_use_is_not_counted_free() {
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let c = ports(port, port);
        assert_eq!(c.status, CheckStatus::Error, "{}", c.message);
    }

    #[test]
    fn an_empty_range_is_an_error() {
        assert_eq!(ports(7000, 6000).status, CheckStatus::Error);
    }

    #[test]
    fn a_line_starts_with_the_status() {
        let c = Check::new("database", CheckStatus::Warning, "x");
        assert!(line(&c).starts_with("warning database"));
    }
}
