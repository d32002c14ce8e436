//! Settings from a TOML file (the seed's sync configuration, billing rates).
//! A missing file means the defaults; a file that does not parse is an error
//! that names the file and the line.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ts_rs::TS;

use crate::billing::BillingConfig;
use crate::error::{Error, Result};

/// Status sync loops (the seed's `azure.status.sync.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(default, deny_unknown_fields)]
#[ts(export)]
pub struct SyncSettings {
    /// Whether the loops run at all.
    pub enabled: bool,
    /// Seconds between passes over the VMs of active sessions.
    pub fast_interval_secs: u64,
    /// Seconds between passes over every VM.
    pub full_interval_secs: u64,
    /// VMs per batch of provider calls.
    pub batch_size: u32,
    /// Attempts of a failing provider call.
    pub retry_attempts: u32,
    /// Seconds before a provider call is abandoned.
    pub timeout_secs: u64,
    /// Milliseconds a VM seen off under an active session has to come back.
    pub reboot_grace_ms: u64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            fast_interval_secs: 30,
            full_interval_secs: 300,
            batch_size: 10,
            retry_attempts: 3,
            timeout_secs: 30,
            reboot_grace_ms: 800,
        }
    }
}

/// Metered billing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(default, deny_unknown_fields)]
#[ts(export)]
pub struct BillingSettings {
    /// Credits per hour as a percentage of the VM's price.
    pub hourly_percent: i64,
    /// Warn when the balance covers less than this many seconds.
    pub warn_seconds: i64,
}

impl Default for BillingSettings {
    fn default() -> Self {
        let b = BillingConfig::default();
        Self {
            hourly_percent: b.hourly_percent,
            warn_seconds: b.warn_seconds,
        }
    }
}

/// Azure: where ARM and the identity service are, the service principal
/// (its secret is kept in the OS keyring, never here), and the ARM limits the
/// client keeps to (the published ones by default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[serde(default, deny_unknown_fields)]
#[ts(export)]
pub struct AzureSettings {
    /// The Resource Manager endpoint.
    pub endpoint: String,
    /// The Microsoft Entra ID authority host.
    pub authority_host: String,
    /// The tenant of the service principal (empty: environment or Azure CLI).
    pub tenant_id: String,
    /// The service principal's application (client) id.
    pub client_id: String,
    /// The longest `Retry-After` waited for before a call is given up.
    pub max_retry_after_secs: u64,
    /// Milliseconds between polls of a long-running operation.
    pub poll_interval_ms: u64,
    /// Whether `http://` endpoints are accepted (test servers only: credentials travel in clear).
    pub allow_insecure_endpoints: bool,
    /// The ARM request limits.
    pub limits: ArmLimits,
}

impl Default for AzureSettings {
    fn default() -> Self {
        Self {
            endpoint: "https://management.azure.com".into(),
            authority_host: "https://login.microsoftonline.com".into(),
            tenant_id: String::new(),
            client_id: String::new(),
            max_retry_after_secs: 60,
            poll_interval_ms: 1000,
            allow_insecure_endpoints: false,
            limits: ArmLimits::default(),
        }
    }
}

/// Token buckets per ARM policy: a rate per minute and a burst.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[serde(default, deny_unknown_fields)]
#[ts(export)]
pub struct ArmLimits {
    /// Reads (instanceView, get) of one VM per minute.
    pub vm_reads_per_min: u32,
    /// Burst of reads of one VM.
    pub vm_reads_burst: u32,
    /// Reads of one subscription per minute.
    pub subscription_reads_per_min: u32,
    /// Burst of reads of one subscription.
    pub subscription_reads_burst: u32,
    /// List calls (pages) of one subscription per minute.
    pub lists_per_min: u32,
    /// Burst of list calls.
    pub lists_burst: u32,
    /// Start/power off/deallocate of one VM per minute.
    pub vm_writes_per_min: u32,
    /// Burst of writes to one VM.
    pub vm_writes_burst: u32,
}

impl Default for ArmLimits {
    fn default() -> Self {
        Self {
            vm_reads_per_min: 12,
            vm_reads_burst: 36,
            subscription_reads_per_min: 8_000,
            subscription_reads_burst: 24_000,
            lists_per_min: 300,
            lists_burst: 900,
            vm_writes_per_min: 4,
            vm_writes_burst: 12,
        }
    }
}

/// In-app consoles: the port pool of the WebSocket bridges and who may connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(default, deny_unknown_fields)]
#[ts(export)]
pub struct ConsoleSettings {
    /// First port of the pool.
    pub port_start: u16,
    /// Last port of the pool.
    pub port_end: u16,
    /// Seconds a console's token may be used in.
    pub token_ttl_secs: u64,
    /// Seconds without traffic after which a console is closed.
    pub idle_timeout_secs: u64,
    /// Origins a console's WebSocket is accepted from (the app's webview).
    pub allowed_origins: Vec<String>,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            port_start: 6100,
            port_end: 6999,
            token_ttl_secs: 60,
            idle_timeout_secs: 1800,
            allowed_origins: vec!["tauri://localhost".into(), "http://tauri.localhost".into()],
        }
    }
}

/// VM networks and SSH: per libvirt host (by its vmdesk name), the network
/// its VMs' NICs go on and the port their SSH server listens on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, TS)]
#[serde(default, deny_unknown_fields)]
#[ts(export)]
pub struct NetworkSettings {
    /// `[network.hosts.NAME]`: a host's choices; a host not named here gets
    /// vmdesk's own NAT network (user-mode networking on a session daemon).
    pub hosts: std::collections::BTreeMap<String, HostNetwork>,
}

/// One host's network choices.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, TS)]
#[serde(default, deny_unknown_fields)]
#[ts(export)]
pub struct HostNetwork {
    /// An existing libvirt network of the host to use instead of vmdesk's.
    pub network: String,
    /// An existing bridge of the host to use instead (e.g. one a session
    /// daemon may use through qemu-bridge-helper).
    pub bridge: String,
    /// `none`: VMs on this host get no NIC.
    pub mode: String,
    /// The port the VMs' SSH servers listen on (none: 22).
    pub ssh_port: Option<u16>,
}

impl NetworkSettings {
    /// The network of VMs on host `host`.
    pub fn choice(&self, host: &str) -> crate::provider::NetworkChoice {
        use crate::provider::NetworkChoice;
        match self.hosts.get(host) {
            Some(h) if h.mode == "none" => NetworkChoice::None,
            Some(h) if !h.network.is_empty() => NetworkChoice::Network(h.network.clone()),
            Some(h) if !h.bridge.is_empty() => NetworkChoice::Bridge(h.bridge.clone()),
            _ => NetworkChoice::Vmdesk,
        }
    }

    /// The SSH port of VMs on host `host`.
    pub fn ssh_port(&self, host: &str) -> u16 {
        self.hosts.get(host).and_then(|h| h.ssh_port).unwrap_or(22)
    }

    fn problems(&self, out: &mut Vec<FieldError>) {
        let is_name = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && !n.starts_with(['-', '.'])
        };
        for (host, h) in &self.hosts {
            let field = |k: &str| format!("network.hosts.{host}.{k}");
            if !is_name(host) {
                out.push(FieldError {
                    field: format!("network.hosts.{host}"),
                    message: format!("{host:?} is not a host name."),
                });
            }
            for (k, v, max) in [("network", &h.network, 64), ("bridge", &h.bridge, 15)] {
                let fits = is_name(v) && v.len() <= max;
                if !v.is_empty() && !fits {
                    out.push(FieldError {
                        field: field(k),
                        message: format!(
                            "The {k} must be a name of letters, digits, '-', '_' and '.' (at most {max}), not {v:?}."
                        ),
                    });
                }
            }
            if !h.network.is_empty() && !h.bridge.is_empty() {
                out.push(FieldError {
                    field: field("bridge"),
                    message: "Name a network or a bridge, not both.".into(),
                });
            }
            if !matches!(h.mode.as_str(), "" | "none") {
                out.push(FieldError {
                    field: field("mode"),
                    message: format!("The mode can only be \"none\" (no NIC), not {:?}.", h.mode),
                });
            }
            if h.ssh_port == Some(0) {
                out.push(FieldError {
                    field: field("ssh_port"),
                    message: "The SSH port must be 1 to 65535.".into(),
                });
            }
        }
    }
}

/// What the person at the desktop chooses for themself: kept in the same
/// file, and the only part a user who is not an admin may change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(default, deny_unknown_fields)]
#[ts(export)]
pub struct DesktopSettings {
    /// `system` (follow the desktop), `light` or `dark`.
    pub theme: String,
    /// Desktop notifications when a VM fails, a session is ended or credits run low.
    pub notifications: bool,
    /// Whether a console's *Paste clipboard* may read the clipboard.
    pub clipboard: bool,
    /// Whether text copied in a VM (through its clipboard agent) reaches
    /// the desktop's clipboard.
    pub guest_clipboard: bool,
}

impl Default for DesktopSettings {
    fn default() -> Self {
        Self {
            theme: "system".into(),
            notifications: true,
            clipboard: true,
            guest_clipboard: true,
        }
    }
}

/// Where the data is: the embedded store (the data directory's own file) or
/// a team store, a PostgreSQL database shared by many desks. Its password is
/// never here: `vmdesk login` keeps it in the OS keyring (or libpq's
/// `PGPASSWORD` / `~/.pgpass` supply it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, TS)]
#[serde(default, deny_unknown_fields)]
#[ts(export)]
pub struct StoreSettings {
    /// `postgres://LOGIN@HOST:PORT/DB[?sslmode=…&sslrootcert=…]`, without a
    /// password; empty: the embedded store.
    pub url: String,
}

impl StoreSettings {
    /// The team store's URL, when there is one.
    pub fn team_url(&self) -> Option<&str> {
        let u = self.url.trim();
        (!u.is_empty()).then_some(u)
    }
}

/// What is wrong with a team store URL for the settings file, in a sentence.
pub fn store_url_problem(url: &str) -> Option<String> {
    let url = url.trim();
    if url.is_empty() {
        return None;
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some(format!(
            "The team store must be a postgres:// URL (postgres://LOGIN@HOST/DB), not {url:?}."
        ));
    };
    if !matches!(scheme, "postgres" | "postgresql") {
        return Some(format!(
            "The team store must be a postgres:// or postgresql:// URL, not {scheme}://."
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if userinfo.contains(':') {
            return Some(
                "The team store's URL must not hold a password: the settings file is no place \
                 for it. `vmdesk login URL` keeps it in the OS keyring (or use PGPASSWORD or ~/.pgpass)."
                    .into(),
            );
        }
    }
    let query = rest.split_once('?').map(|(_, q)| q).unwrap_or_default();
    if query
        .split('&')
        .any(|kv| kv.split('=').next() == Some("password"))
    {
        return Some(
            "The team store's URL must not hold a password (password=…): `vmdesk login URL` keeps \
             it in the OS keyring (or use PGPASSWORD or ~/.pgpass)."
                .into(),
        );
    }
    None
}

/// A value of the settings that cannot be used: which one, and why, in a
/// sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[ts(export)]
pub struct FieldError {
    /// The field, `section.key` as in the file (`console.port_start`).
    pub field: String,
    /// What is wrong and what would do.
    pub message: String,
}

/// Everything the settings file holds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, TS)]
#[serde(default, deny_unknown_fields)]
#[ts(export)]
pub struct Settings {
    /// Status sync.
    pub sync: SyncSettings,
    /// Metered billing.
    pub billing: BillingSettings,
    /// Azure hosts.
    pub azure: AzureSettings,
    /// In-app consoles.
    pub console: ConsoleSettings,
    /// The person's own choices: appearance, notifications, clipboard.
    pub desktop: DesktopSettings,
    /// The store this desk works on (set by `vmdesk login` and `logout`).
    pub store: StoreSettings,
    /// VM networks and SSH, per host.
    pub network: NetworkSettings,
}

impl Settings {
    /// What a save by someone of role `by` makes of the file's settings
    /// `kept` when they ask for `asked`: an admin sets all of it; anybody
    /// else only their own part (`desktop`), the rest stays as it was. The
    /// store is nobody's to change here: `vmdesk login` and `logout` set it.
    pub fn as_changed_by(kept: Settings, asked: Settings, by: crate::model::Role) -> Settings {
        if by == crate::model::Role::Admin {
            return Settings {
                store: kept.store,
                ..asked
            };
        }
        Settings {
            desktop: asked.desktop,
            ..kept
        }
    }

    /// Reads the settings file; the defaults when it does not exist.
    pub fn load(path: &Path) -> Result<Settings> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
            Err(source) => {
                return Err(Error::DataDir {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let s: Settings = toml::from_str(&text)
            .map_err(|e| Error::invalid(format!("{}: {}", path.display(), e.message().trim())))?;
        s.check()
            .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        Ok(s)
    }

    /// Every value that cannot be used, each with the field it is about
    /// (`section.key`, as in the file) and a sentence for a person.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        let mut bad = |field: &'static str, message: String| {
            out.push(FieldError {
                field: field.into(),
                message,
            })
        };
        let s = &self.sync;
        for (field, what, v) in [
            (
                "sync.fast_interval_secs",
                "The fast pass interval",
                s.fast_interval_secs,
            ),
            (
                "sync.full_interval_secs",
                "The full pass interval",
                s.full_interval_secs,
            ),
            ("sync.timeout_secs", "The call timeout", s.timeout_secs),
            (
                "sync.batch_size",
                "The number of calls at once",
                u64::from(s.batch_size),
            ),
        ] {
            if v == 0 {
                bad(field, format!("{what} must be at least 1."));
            }
        }
        let a = &self.azure;
        for (field, what, url) in [
            (
                "azure.endpoint",
                "The Resource Manager endpoint",
                &a.endpoint,
            ),
            (
                "azure.authority_host",
                "The authority host",
                &a.authority_host,
            ),
        ] {
            let http = url.starts_with("http://");
            if !(url.starts_with("https://") || http) {
                bad(
                    field,
                    format!("{what} must be an https URL (https://…), not {url:?}."),
                );
            } else if http && !a.allow_insecure_endpoints {
                bad(
                    field,
                    format!(
                        "{what} must be an https URL, not {url:?}: over http the Azure credentials \
                         would travel in clear (allow_insecure_endpoints = true in [azure] allows it, \
                         for test servers only)."
                    ),
                );
            }
        }
        if a.poll_interval_ms == 0 {
            bad(
                "azure.poll_interval_ms",
                "The poll interval must be at least 1 ms.".into(),
            );
        }
        let l = &a.limits;
        for (field, v) in [
            ("azure.limits.vm_reads_per_min", l.vm_reads_per_min),
            ("azure.limits.vm_reads_burst", l.vm_reads_burst),
            (
                "azure.limits.subscription_reads_per_min",
                l.subscription_reads_per_min,
            ),
            (
                "azure.limits.subscription_reads_burst",
                l.subscription_reads_burst,
            ),
            ("azure.limits.lists_per_min", l.lists_per_min),
            ("azure.limits.lists_burst", l.lists_burst),
            ("azure.limits.vm_writes_per_min", l.vm_writes_per_min),
            ("azure.limits.vm_writes_burst", l.vm_writes_burst),
        ] {
            if v == 0 {
                bad(field, format!("{field} must be at least 1."));
            }
        }
        let c = &self.console;
        if c.port_start == 0 {
            bad(
                "console.port_start",
                "The first console port must be at least 1.".into(),
            );
        } else if c.port_start > c.port_end {
            bad(
                "console.port_start",
                format!(
                    "The first console port ({}) must not be above the last one ({}).",
                    c.port_start, c.port_end
                ),
            );
        }
        if c.token_ttl_secs == 0 {
            bad(
                "console.token_ttl_secs",
                "A console token must stay valid at least 1 second.".into(),
            );
        }
        if c.idle_timeout_secs == 0 {
            bad(
                "console.idle_timeout_secs",
                "The idle timeout must be at least 1 second.".into(),
            );
        }
        if !(0..=10_000).contains(&self.billing.hourly_percent) {
            bad(
                "billing.hourly_percent",
                format!(
                    "The hourly rate must be 0 to 10000 % of the VM's price, not {}.",
                    self.billing.hourly_percent
                ),
            );
        }
        if self.billing.warn_seconds < 0 {
            bad(
                "billing.warn_seconds",
                "The low-credit warning time cannot be negative.".into(),
            );
        }
        if !["system", "light", "dark"].contains(&self.desktop.theme.as_str()) {
            bad(
                "desktop.theme",
                format!(
                    "The appearance must be system, light or dark, not {:?}.",
                    self.desktop.theme
                ),
            );
        }
        if let Some(m) = store_url_problem(&self.store.url) {
            bad("store.url", m);
        }
        self.network.problems(&mut out);
        out
    }

    fn check(&self) -> Result<()> {
        match self.problems().into_iter().next() {
            None => Ok(()),
            Some(p) => Err(Error::invalid(format!("{}: {}", p.field, p.message))),
        }
    }

    /// Writes the settings file (checked first; the directory is made).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.check()?;
        let text = toml::to_string_pretty(self)
            .map_err(|e| Error::invalid(format!("the settings cannot be written: {e}")))?;
        let io = |source| Error::DataDir {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Write aside, then rename: a crash leaves the old file or the new one.
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The billing rates as the core uses them.
    pub fn billing_config(&self) -> BillingConfig {
        BillingConfig {
            hourly_percent: self.billing.hourly_percent,
            warn_seconds: self.billing.warn_seconds,
        }
    }

    /// The reboot grace as a duration.
    pub fn reboot_grace(&self) -> Duration {
        Duration::from_millis(self.sync.reboot_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_changes_only_their_own_part_and_an_admin_all() {
        let kept = Settings::default();
        let mut asked = Settings::default();
        asked.billing.hourly_percent = 0;
        asked.desktop.notifications = !kept.desktop.notifications;
        let by_user =
            Settings::as_changed_by(kept.clone(), asked.clone(), crate::model::Role::User);
        assert_eq!(by_user.billing, kept.billing);
        assert_eq!(by_user.desktop, asked.desktop);
        let by_admin = Settings::as_changed_by(kept, asked.clone(), crate::model::Role::Admin);
        assert_eq!(by_admin, asked);
    }

    #[test]
    fn an_empty_file_means_the_seeds_defaults() {
        let s: Settings = toml::from_str("").expect("parse");
        assert_eq!(
            (s.sync.fast_interval_secs, s.sync.full_interval_secs),
            (30, 300)
        );
        assert_eq!(
            (
                s.sync.batch_size,
                s.sync.retry_attempts,
                s.sync.timeout_secs
            ),
            (10, 3, 30)
        );
        assert!(s.sync.enabled);
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let s: Settings = toml::from_str("[sync]\nfast_interval_secs = 5\n").expect("parse");
        assert_eq!(
            (s.sync.fast_interval_secs, s.sync.full_interval_secs),
            (5, 300)
        );
    }

    #[test]
    fn an_unknown_key_is_refused() {
        assert!(toml::from_str::<Settings>("[sync]\nfast = 5\n").is_err());
    }

    #[test]
    fn the_azure_limits_default_to_the_published_arm_ones() {
        let l = Settings::default().azure.limits;
        assert_eq!((l.vm_reads_per_min, l.vm_reads_burst), (12, 36));
        assert_eq!((l.lists_per_min, l.lists_burst), (300, 900));
        assert_eq!((l.vm_writes_per_min, l.vm_writes_burst), (4, 12));
    }

    #[test]
    fn saved_settings_load_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("conf").join("settings.toml");
        let mut s = Settings::default();
        s.sync.fast_interval_secs = 7;
        s.azure.tenant_id = "t".into();
        s.save(&path).expect("save");
        assert_eq!(Settings::load(&path).expect("load"), s);
    }

    #[test]
    fn a_non_http_endpoint_is_refused() {
        let s: Settings = toml::from_str("[azure]\nendpoint = \"ftp://x\"\n").expect("parse");
        assert!(s.check().is_err());
    }

    #[test]
    fn an_http_endpoint_is_refused_without_the_insecure_flag() {
        let s: Settings =
            toml::from_str("[azure]\nendpoint = \"http://127.0.0.1:1\"\n").expect("parse");
        let e = s.check().expect_err("an http endpoint");
        assert!(e.to_string().contains("allow_insecure_endpoints"), "{e}");
    }

    #[test]
    fn an_http_authority_host_is_refused_without_the_insecure_flag() {
        let s: Settings =
            toml::from_str("[azure]\nauthority_host = \"http://127.0.0.1:1\"\n").expect("parse");
        assert!(s.check().is_err());
    }

    #[test]
    fn http_endpoints_are_accepted_with_the_insecure_flag() {
        let s: Settings = toml::from_str(
            "[azure]\nendpoint = \"http://127.0.0.1:1\"\nauthority_host = \"http://127.0.0.1:1\"\nallow_insecure_endpoints = true\n",
        )
        .expect("parse");
        assert!(s.check().is_ok());
    }

    #[test]
    fn a_port_range_backwards_names_the_first_port_in_words() {
        let mut s = Settings::default();
        s.console.port_start = 7000;
        s.console.port_end = 6999;
        let p = s.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "console.port_start");
        assert_eq!(
            p[0].message,
            "The first console port (7000) must not be above the last one (6999)."
        );
        assert!(!p[0].message.contains("<="));
        s.console.port_start = 6100;
        assert!(s.problems().is_empty());
    }

    #[test]
    fn every_problem_is_listed_with_its_field() {
        let mut s = Settings::default();
        s.sync.fast_interval_secs = 0;
        s.billing.warn_seconds = -1;
        s.desktop.theme = "pink".into();
        let fields: Vec<_> = s.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "sync.fast_interval_secs",
                "billing.warn_seconds",
                "desktop.theme"
            ]
        );
    }

    #[test]
    fn a_file_without_the_desktop_section_keeps_its_defaults() {
        let s: Settings = toml::from_str("[sync]\nenabled = false\n").expect("parse");
        assert_eq!(s.desktop, DesktopSettings::default());
    }

    #[test]
    fn a_store_url_is_postgres_and_holds_no_password() {
        let mut s = Settings::default();
        assert_eq!(s.store.team_url(), None);
        s.store.url = "postgres://ann@db.example:5432/vmdesk?sslmode=verify-full".into();
        assert!(s.problems().is_empty());
        assert_eq!(
            s.store.team_url(),
            Some("postgres://ann@db.example:5432/vmdesk?sslmode=verify-full")
        );
        s.store.url = "postgresql://ann@db.example/vmdesk".into();
        assert!(s.problems().is_empty());
        s.store.url = "postgres://ann:hunter2@db.example/vmdesk".into();
        let p = s.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "store.url");
        assert!(p[0].message.contains("keyring"), "{}", p[0].message);
        assert!(!p[0].message.contains("hunter2"));
        s.store.url = "postgres://ann@db.example/vmdesk?password=hunter2".into();
        assert_eq!(s.problems()[0].field, "store.url");
        s.store.url = "mysql://ann@db.example/vmdesk".into();
        assert!(s.problems()[0].message.contains("postgres://"));
        s.store.url = "db.example".into();
        assert_eq!(s.problems()[0].field, "store.url");
    }

    #[test]
    fn a_settings_save_never_changes_the_store() {
        let mut kept = Settings::default();
        kept.store.url = "postgres://ann@db/vmdesk".into();
        let asked = Settings::default();
        for by in [crate::model::Role::Admin, crate::model::Role::User] {
            let s = Settings::as_changed_by(kept.clone(), asked.clone(), by);
            assert_eq!(s.store, kept.store);
        }
    }

    #[test]
    fn a_zero_interval_is_refused() {
        let s: Settings = toml::from_str("[sync]\nfull_interval_secs = 0\n").expect("parse");
        assert!(s.check().is_err());
    }
}
