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
            reboot_grace_ms: 1500,
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

/// Everything the settings file holds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, TS)]
#[serde(default, deny_unknown_fields)]
#[ts(export)]
pub struct Settings {
    /// Status sync.
    pub sync: SyncSettings,
    /// Metered billing.
    pub billing: BillingSettings,
}

impl Settings {
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
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<()> {
        let s = &self.sync;
        if s.fast_interval_secs == 0
            || s.full_interval_secs == 0
            || s.timeout_secs == 0
            || s.batch_size == 0
        {
            return Err(Error::invalid(
                "sync intervals, timeout and batch size must be above 0",
            ));
        }
        if !(0..=10_000).contains(&self.billing.hourly_percent) || self.billing.warn_seconds < 0 {
            return Err(Error::invalid(
                "billing.hourly_percent must be 0 to 10000 and warn_seconds not negative",
            ));
        }
        Ok(())
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
    fn a_zero_interval_is_refused() {
        let s: Settings = toml::from_str("[sync]\nfull_interval_secs = 0\n").expect("parse");
        assert!(s.check().is_err());
    }
}
