//! What the desktop window asks beyond the CLI's operations: the event feed
//! with filters, users' roles, and a running VM's live counters.

use serde::{Deserialize, Serialize};
use ts_rs::TS;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::model::*;
use crate::provider::MachineStats;

/// Which events to list: all filters are optional and combine with "and".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct EventQuery {
    /// Only these types (none: every type).
    #[serde(default)]
    pub types: Vec<EventType>,
    /// Only these severities (none: every severity).
    #[serde(default)]
    pub severities: Vec<Severity>,
    /// Only events newer than this id (to follow the feed).
    #[serde(default)]
    pub after: Option<i64>,
    /// At most this many, newest first (1 to 10,000).
    pub limit: i64,
    /// Only events about this user: what they did, and what happened to
    /// their VMs, sessions, account and credits (another user's: admins
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub user: Option<String>,
    /// Only events at or after this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[ts(optional)]
    pub since: Option<String>,
}

/// An instant as the stores write and compare them (RFC 3339, UTC,
/// milliseconds), from RFC 3339 in any offset; a clear error otherwise.
pub fn instant(text: &str) -> Result<String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .map_err(|e| {
            Error::invalid(format!(
                "{text:?} is not a time: give it as RFC 3339, e.g. 2026-11-30T09:00:00Z ({e})"
            ))
        })
}

/// A running VM's counters at one moment, with its CPU use since the
/// previous sample the caller kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct VmStats {
    /// The VM's name.
    pub vm: String,
    /// When, in milliseconds since the Unix epoch.
    #[ts(type = "number")]
    pub at_ms: u64,
    /// CPU time used since it started, in nanoseconds (all vCPUs).
    #[ts(type = "number")]
    pub cpu_time_ns: u64,
    /// Its virtual CPUs.
    pub vcpus: u32,
    /// Memory given to it, in KiB.
    #[ts(type = "number")]
    pub memory_kib: u64,
    /// Memory in use, in KiB, where the host can tell.
    #[ts(type = "number | null")]
    pub used_kib: Option<u64>,
    /// CPU use since the previous sample, in percent of all its vCPUs (0-100);
    /// none for a first sample.
    pub cpu_percent: Option<f64>,
}

impl VmStats {
    /// A sample of `machine`'s counters read at `at_ms`, its CPU use
    /// computed against `prev` (a sample of the same run of the VM).
    pub fn of(vm: &str, at_ms: u64, s: MachineStats, prev: Option<&VmStats>) -> Self {
        let cpu_percent = prev.and_then(|p| cpu_percent(p, at_ms, s.cpu_time_ns, s.vcpus));
        Self {
            vm: vm.to_owned(),
            at_ms,
            cpu_time_ns: s.cpu_time_ns,
            vcpus: s.vcpus,
            memory_kib: s.memory_kib,
            used_kib: s.used_kib,
            cpu_percent,
        }
    }
}

/// The CPU use between two samples, in percent of `vcpus` CPUs; none when
/// the samples cannot be compared (no time passed, or the counter went back
/// because the VM restarted).
pub fn cpu_percent(prev: &VmStats, at_ms: u64, cpu_time_ns: u64, vcpus: u32) -> Option<f64> {
    let wall_ns = at_ms.checked_sub(prev.at_ms)?.checked_mul(1_000_000)?;
    let used = cpu_time_ns.checked_sub(prev.cpu_time_ns)?;
    if wall_ns == 0 || vcpus == 0 {
        return None;
    }
    let pct = used as f64 * 100.0 / (wall_ns as f64 * f64::from(vcpus));
    Some(pct.clamp(0.0, 100.0))
}

impl Core {
    /// The event feed as `actor` may see it, filtered: an admin sees every
    /// event; a user sees those they did and those about their VMs and
    /// sessions (a sync ending their session, a billing pass charging them).
    pub fn events_query(&self, actor: &str, q: &EventQuery) -> Result<Vec<Event>> {
        if !(1..=10_000).contains(&q.limit) {
            return Err(Error::invalid(format!(
                "the limit must be between 1 and 10000, not {}",
                q.limit
            )));
        }
        let mut q = q.clone();
        if let Some(since) = &q.since {
            q.since = Some(instant(since)?);
        }
        let store = self.acting(actor)?;
        if let Some(user) = &q.user {
            let me = store.users().whoami()?;
            if *user != me.name && me.role != Role::Admin {
                return Err(Error::AdminOnly("see another user's events"));
            }
            // An unknown name is an error, not an empty feed.
            store.users().user(user)?;
        }
        store.events().events_query(&q, None)
    }

    /// Makes a user an admin or a plain user (admin only). The last admin
    /// cannot be made a plain user: nobody could grant credits any more.
    pub fn user_role(&self, actor: &str, name: &str, role: Role) -> Result<User> {
        self.acting(actor)?.users().user_role(name, role)
    }

    /// A running VM's counters now, with its CPU use since `prev` (a sample
    /// the caller kept; none for the first). Who may: whoever may see the VM.
    pub fn vm_stats(&self, actor: &str, vm: &str, prev: Option<&VmStats>) -> Result<VmStats> {
        let v = self.acting(actor)?.vms().vm(vm)?;
        let machine = v
            .provider_id
            .clone()
            .ok_or_else(|| Error::invalid(format!("{} is not on a host yet", v.name)))?;
        let s = self
            .provider(&v.host)?
            .stats(&machine)
            .map_err(|source| Error::Provider {
                host: v.host.clone(),
                source,
            })?;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let prev = prev.filter(|p| p.vm == v.name);
        Ok(VmStats::of(&v.name, at_ms, s, prev))
    }

    /// The id of the newest event (0 for none): where a feed starts following.
    pub fn last_event_id(&self) -> Result<i64> {
        // On a team store, the newest its login may see.
        Ok(self
            .reading()
            .events()
            .events(1)?
            .first()
            .map_or(0, |e| e.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, cpu_time_ns: u64) -> VmStats {
        VmStats::of(
            "vm",
            at_ms,
            MachineStats {
                cpu_time_ns,
                vcpus: 2,
                memory_kib: 1024,
                used_kib: None,
            },
            None,
        )
    }

    #[test]
    fn cpu_use_is_the_share_of_all_vcpus_between_samples() {
        let first = sample(1_000, 0);
        assert_eq!(first.cpu_percent, None);
        // One of two vCPUs busy for the whole second: 50 %.
        assert_eq!(cpu_percent(&first, 2_000, 1_000_000_000, 2), Some(50.0));
        assert_eq!(cpu_percent(&first, 2_000, 0, 2), Some(0.0));
    }

    #[test]
    fn cpu_use_is_unknown_across_a_restart_or_without_time() {
        let prev = sample(1_000, 5_000_000_000);
        assert_eq!(
            cpu_percent(&prev, 2_000, 1_000, 2),
            None,
            "counter went back"
        );
        assert_eq!(
            cpu_percent(&prev, 1_000, 6_000_000_000, 2),
            None,
            "no time passed"
        );
        assert_eq!(
            cpu_percent(&prev, 500, 6_000_000_000, 2),
            None,
            "clock went back"
        );
        assert_eq!(
            cpu_percent(&prev, 2_000, 9_000_000_000, 2),
            Some(100.0),
            "capped"
        );
    }
}
