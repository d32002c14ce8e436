//! Cost controls (issue 16): a project's maximum session length and idle
//! shutdown, enforced by status sync's passes (the app, `sync --watch`,
//! `serve`), with a warning before each; and orphaned pool VMs (running with
//! no session) stopped after a grace. The weekly quota is checked by the
//! stores when a session is opened.
//!
//! Idleness: a session is idle while nobody has its console open, no SSH
//! connection to its VM's address is seen from this machine, and its guest
//! used less CPU than the project's threshold since the previous pass. A
//! session idle for the project's `idle_minutes` is warned; still idle 5
//! minutes later, it is closed. Any activity in between starts the count
//! again. What cannot be measured (no CPU counter, e.g. Azure) never counts
//! as idle.
//!
//! An own VM's owner may choose the same idle shutdown for it
//! ([`IDLE_STOP`] in its metadata, `vmdesk vm idle-stop`): measured the same
//! way, warned the same way (`vm.idle_warning`, to the owner), then stopped
//! (`vm.idle_stop`). Its count is this process's (a restart starts it again).

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::model::*;

/// How long before a session's maximum length it is warned.
pub const LENGTH_WARNING: Duration = Duration::minutes(10);
/// How long after the idle warning a still idle session is closed.
pub const IDLE_GRACE: Duration = Duration::minutes(5);

/// An ACTIVE session of a project with a length or idle limit, as the
/// stores give it to [`Core::enforce_limits`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitedSession {
    /// The session.
    pub id: i64,
    /// Whose.
    pub user: String,
    /// Its project.
    pub project: String,
    /// The project's limits.
    pub limits: ProjectLimits,
    /// When it became ACTIVE.
    pub started_at: String,
    /// Since when it has been idle (none: it is not).
    pub idle_since: Option<String>,
    /// When the idle warning was given (none: not since it was last active).
    pub idle_warned_at: Option<String>,
    /// When the length warning was given.
    pub length_warned_at: Option<String>,
    /// Its VM.
    pub vm: Vm,
    /// Whether a console of the VM is open (on any desk).
    pub console_open: bool,
}

/// What enforcing the limits writes of a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitMark {
    /// Since when it has been idle; `None`: it is active (clears the idle
    /// warning too).
    pub idle_since: Option<String>,
    /// A warning to give now: the rule (`max_session_length`,
    /// `idle`) and when the session will be closed.
    pub warn: Option<(String, String)>,
    /// The rule whose limit it reached (it is being closed).
    pub reached: Option<String>,
    /// When this was seen (the pass's clock): a warning given now is
    /// recorded at this time.
    pub at: String,
}

/// What was seen of a session's activity.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Activity {
    /// A console of its VM is open.
    pub console: bool,
    /// An SSH connection to its VM is seen.
    pub ssh: bool,
    /// Its guest's CPU use since the previous look, in percent (none: not
    /// known, which never counts as idle).
    pub cpu_percent: Option<f64>,
}

impl Activity {
    /// Whether this is idleness under `limits`.
    pub fn idle(&self, limits: &ProjectLimits) -> bool {
        !self.console
            && !self.ssh
            && self
                .cpu_percent
                .is_some_and(|p| p < limits.idle_cpu_percent as f64)
    }
}

/// How a session's activity is measured.
pub trait ActivityProbe {
    /// What is seen of `s` now.
    fn activity(&self, core: &Core, s: &LimitedSession) -> Activity;
}

/// What one pass of [`Core::enforce_limits`] did to a session (or to an
/// own VM whose owner chose idle shutdown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitAction {
    /// The session (an own VM: its VM's id).
    pub session: i64,
    /// The VM's name.
    pub vm: String,
    /// `warned` or `closed`.
    pub action: &'static str,
    /// `max_session_length` or `idle`.
    pub rule: String,
    /// When it is (or was) closed.
    pub at: String,
}

fn parse(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What the limits say of one session at `now`, given its activity: the
/// mark to write and what it amounts to (pure: the rules in one place).
pub fn judge(
    s: &LimitedSession,
    activity: Activity,
    now: DateTime<Utc>,
) -> (Option<LimitMark>, Option<LimitAction>) {
    let l = &s.limits;
    let started = parse(&s.started_at).unwrap_or(now);
    let act = |action: &'static str, rule: &str, at: DateTime<Utc>| LimitAction {
        session: s.id,
        vm: s.vm.name.clone(),
        action,
        rule: rule.to_owned(),
        at: stamp(at),
    };
    // The idle count: kept, started or cleared.
    let idle_since = match (l.idle_minutes, activity.idle(l)) {
        (Some(_), true) => Some(s.idle_since.as_deref().and_then(parse).unwrap_or(now)),
        _ => None,
    };
    let idle_changed = idle_since.map(stamp) != s.idle_since;
    let mut mark = LimitMark {
        idle_since: idle_since.map(stamp),
        at: stamp(now),
        ..Default::default()
    };
    // The maximum length first: it cannot be put off.
    if let Some(max) = l.max_session_minutes {
        let end = started + Duration::minutes(max);
        if now >= end {
            mark.reached = Some("max_session_length".into());
            return (Some(mark), Some(act("closed", "max_session_length", end)));
        }
        if now >= end - LENGTH_WARNING && s.length_warned_at.is_none() {
            mark.warn = Some(("max_session_length".into(), stamp(end)));
            return (Some(mark), Some(act("warned", "max_session_length", end)));
        }
    }
    if let (Some(minutes), Some(since)) = (l.idle_minutes, idle_since) {
        // A warning of an earlier count (it began anew since) does not hold.
        let warned = s
            .idle_warned_at
            .as_deref()
            .and_then(parse)
            .filter(|_| !idle_changed);
        match warned {
            // Closed a grace after the warning itself, however late that came.
            Some(w) if now >= w + IDLE_GRACE => {
                mark.reached = Some("idle".into());
                return (Some(mark), Some(act("closed", "idle", w + IDLE_GRACE)));
            }
            Some(_) => {}
            None if now >= since + Duration::minutes(minutes) => {
                mark.warn = Some(("idle".into(), stamp(now + IDLE_GRACE)));
                return (Some(mark), Some(act("warned", "idle", now + IDLE_GRACE)));
            }
            None => {}
        }
    }
    let cleared_warning = idle_since.is_none() && s.idle_warned_at.is_some();
    ((idle_changed || cleared_warning).then_some(mark), None)
}

impl Core {
    /// Sets a project's cost controls (admin only). Each limit is checked:
    /// lengths and idle times from 1 minute to 30 days, the CPU threshold
    /// 0-100 %, weekly hours 1-168.
    pub fn project_limits(
        &self,
        actor: &str,
        project: &str,
        limits: &ProjectLimits,
    ) -> Result<Project> {
        let month = 30 * 24 * 60;
        let check = |what: &str, v: Option<i64>, hi: i64, unit: &str| match v {
            Some(n) if !(1..=hi).contains(&n) => Err(Error::invalid(format!(
                "{what} must be between 1 and {hi} {unit}, not {n}"
            ))),
            _ => Ok(()),
        };
        check(
            "the maximum session length",
            limits.max_session_minutes,
            month,
            "minutes",
        )?;
        check("the idle time", limits.idle_minutes, month, "minutes")?;
        check("the weekly quota", limits.weekly_hours, 168, "hours")?;
        if !(0..=100).contains(&limits.idle_cpu_percent) {
            return Err(Error::invalid(format!(
                "the idle CPU threshold must be between 0 and 100 %, not {}",
                limits.idle_cpu_percent
            )));
        }
        self.acting(actor)?
            .places()
            .project_limits_set(project, limits)
    }

    /// One pass of the cost controls at `now`: warns sessions that near a
    /// limit (an event each, once) and closes those past one (an event,
    /// then the session is closed as at zero credits: the guest shut down).
    /// `probe` measures activity. Needs the system (or an admin's login).
    pub fn enforce_limits(
        &self,
        now: DateTime<Utc>,
        probe: &dyn ActivityProbe,
    ) -> Result<Vec<LimitAction>> {
        let store = self.reading();
        let sessions = store.sessions();
        let mut done = Vec::new();
        for s in sessions.sessions_limited()? {
            let activity = probe.activity(self, &s);
            let (mark, action) = judge(&s, activity, now);
            if let Some(mark) = mark {
                sessions.session_limit_mark(s.id, &mark)?;
                if mark.reached.is_some() {
                    if let Err(e) = self.session_end_as_system(s.id) {
                        tracing::warn!(session = s.id, error = %e.one_line(), "closing a session at its limit");
                    }
                }
            }
            done.extend(action);
        }
        done.extend(self.enforce_own_idle(&store, now, probe)?);
        Ok(done)
    }

    /// Idle shutdown of own VMs whose owners chose it: warned, then stopped.
    fn enforce_own_idle(
        &self,
        store: &crate::team::Acting<'_>,
        now: DateTime<Utc>,
        probe: &dyn ActivityProbe,
    ) -> Result<Vec<LimitAction>> {
        let watched = store.vms().vms_idle_watched()?;
        let counts = || self.own_idle.lock().unwrap_or_else(|p| p.into_inner());
        // VMs no longer watched (stopped, opted out) start afresh next time.
        counts().retain(|id, _| watched.iter().any(|(v, _)| v.id == *id));
        let mut done = Vec::new();
        for (vm, console_open) in watched {
            let (Some(minutes), Some(owner)) = (idle_stop_minutes(&vm), vm.owner.clone()) else {
                continue;
            };
            let count = counts().get(&vm.id).cloned().unwrap_or_default();
            let s = LimitedSession {
                id: vm.id,
                user: owner.clone(),
                project: String::new(),
                limits: ProjectLimits {
                    idle_minutes: Some(minutes),
                    ..Default::default()
                },
                started_at: stamp(now),
                idle_since: count.idle_since.clone(),
                idle_warned_at: count.warned_at.clone(),
                length_warned_at: None,
                vm,
                console_open,
            };
            let (mark, action) = judge(&s, probe.activity(self, &s), now);
            let Some(mark) = mark else {
                continue;
            };
            let details = |extra: serde_json::Value| {
                let mut d = serde_json::json!({
                    "user": owner, "vm": s.vm.name, "idle_minutes": minutes,
                    "idle_since": mark.idle_since,
                });
                if let (Some(d), Some(e)) = (d.as_object_mut(), extra.as_object()) {
                    d.extend(e.clone());
                }
                d
            };
            let next = IdleCount {
                idle_since: mark.idle_since.clone(),
                warned_at: match (&mark.warn, &mark.idle_since) {
                    (Some(_), _) => Some(mark.at.clone()),
                    (None, None) => None,
                    (None, Some(_)) => count.warned_at.filter(|_| s.idle_since == mark.idle_since),
                },
            };
            if let Some((_, stops_at)) = &mark.warn {
                store.events().owner_note(
                    "vm.idle_warning",
                    Severity::Warning,
                    s.vm.id,
                    details(serde_json::json!({ "stops_at": stops_at })),
                )?;
            }
            if mark.reached.is_some() {
                store.events().owner_note(
                    "vm.idle_stop",
                    Severity::Warning,
                    s.vm.id,
                    details(serde_json::json!({})),
                )?;
                if let Err(e) = self.vm_action_on(store, &s.vm.name, VmAction::Stop, true) {
                    tracing::warn!(vm = %s.vm.name, error = %e.one_line(), "stopping an idle VM");
                }
                counts().remove(&s.vm.id);
            } else {
                counts().insert(s.vm.id, next);
            }
            done.extend(action.map(|a| LimitAction {
                action: if a.action == "closed" {
                    "stopped"
                } else {
                    a.action
                },
                ..a
            }));
        }
        Ok(done)
    }

    /// Sets (`minutes`) or ends (`None`) the idle shutdown of an own VM, by
    /// its owner's choice (or an admin's): idle for that long (as a session
    /// is: no console, no SSH, guest CPU under 5 %), it is warned, then
    /// stopped 5 minutes later if still idle. 1 minute to 30 days.
    pub fn vm_idle_stop(&self, actor: &str, vm: &str, minutes: Option<i64>) -> Result<Vm> {
        let v = self.acting(actor)?.vms().vm(vm)?;
        if v.pool.is_some() {
            return Err(Error::invalid(format!(
                "{} is a pool VM: its project's idle limit applies (an admin sets it with 'vmdesk project limits')",
                v.name
            )));
        }
        let value = match minutes {
            Some(n) if !(1..=30 * 24 * 60).contains(&n) => {
                return Err(Error::invalid(format!(
                    "the idle time must be between 1 and 43200 minutes, not {n}"
                )))
            }
            Some(n) => n.to_string(),
            None => "off".to_owned(),
        };
        self.acting(actor)?
            .vms()
            .vm_meta(&v.name, &serde_json::json!({ IDLE_STOP: value }))
    }

    /// [`Core::enforce_limits`] now, with activity measured for real
    /// ([`LiveProbe`], kept by the core between passes).
    pub fn enforce_limits_now(&self) -> Result<Vec<LimitAction>> {
        self.enforce_limits(Utc::now(), &self.activity)
    }
}

/// The metadata key of an own VM's idle shutdown, chosen by its owner: the
/// minutes it may stay idle (`off`, or none: it may stay idle).
pub const IDLE_STOP: &str = "idle_stop_minutes";

/// The minutes of idle shutdown an own VM's owner chose, if any.
pub fn idle_stop_minutes(vm: &Vm) -> Option<i64> {
    let v = &vm.metadata[IDLE_STOP];
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .filter(|n| *n > 0)
}

/// What idle shutdown saw of an own VM: since when it has been idle, and
/// when it was warned.
#[derive(Debug, Clone, Default)]
pub struct IdleCount {
    idle_since: Option<String>,
    warned_at: Option<String>,
}

/// How long a pool VM may run with no live session before it is stopped.
pub const ORPHAN_GRACE: Duration = Duration::minutes(10);

impl Core {
    /// Stops pool VMs found running with no live session for
    /// [`ORPHAN_GRACE`] (since this process first saw them so at a pass):
    /// a `vm.orphan_stop` event each, then a stop as the system. Nobody is
    /// billed for them (billing charges a session's user or an owner).
    /// Returns the VMs stopped. Needs the system (or an admin's login).
    pub fn stop_orphans(&self, now: DateTime<Utc>) -> Result<Vec<String>> {
        let store = self.reading();
        let vms = store.vms().vm_list(true)?;
        let orphan =
            |v: &Vm| v.pool.is_some() && v.session_id.is_none() && v.status == VmStatus::Running;
        let due: Vec<(Vm, DateTime<Utc>)> = {
            let mut seen = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
            seen.retain(|id, _| vms.iter().any(|v| v.id == *id && orphan(v)));
            vms.iter()
                .filter(|v| orphan(v))
                .filter_map(|v| {
                    let since = *seen.entry(v.id).or_insert(now);
                    (now - since >= ORPHAN_GRACE).then(|| (v.clone(), since))
                })
                .collect()
        };
        let mut stopped = Vec::new();
        for (v, since) in due {
            let details = serde_json::json!({
                "vm": v.name, "pool": v.pool, "host": v.host, "running_since": stamp(since),
                "grace_seconds": ORPHAN_GRACE.num_seconds(), "billed_to": serde_json::Value::Null,
            });
            store
                .events()
                .system_note("vm.orphan_stop", Severity::Warning, details)?;
            match self.vm_action_on(&store, &v.name, VmAction::Stop, true) {
                Ok(_) => {
                    self.orphans
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&v.id);
                    stopped.push(v.name);
                }
                Err(e) => {
                    tracing::warn!(vm = %v.name, error = %e.one_line(), "stopping an orphaned pool VM")
                }
            }
        }
        Ok(stopped)
    }
}

/// Activity measured for real: the console from the store, SSH from this
/// machine's TCP connections to the VM's address and port, CPU from the
/// host's counters since the previous look (none on the first).
#[derive(Default)]
pub struct LiveProbe {
    /// The previous CPU sample of each VM: when (ms) and its CPU time (ns).
    samples: Mutex<HashMap<i64, (u64, u64)>>,
}

impl ActivityProbe for LiveProbe {
    fn activity(&self, core: &Core, s: &LimitedSession) -> Activity {
        let ssh =
            s.vm.ip_address
                .as_deref()
                .is_some_and(|ip| ssh_connected(ip, s.vm.ssh_port.unwrap_or(22) as u16));
        let cpu = s.vm.provider_id.as_deref().and_then(|machine| {
            let stats = core.provider(&s.vm.host).ok()?.stats(machine).ok()?;
            let at_ms = u64::try_from(Utc::now().timestamp_millis()).ok()?;
            let prev = self
                .samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(s.vm.id, (at_ms, stats.cpu_time_ns))?;
            let wall_ns = at_ms.checked_sub(prev.0)?.checked_mul(1_000_000)?;
            let used = stats.cpu_time_ns.checked_sub(prev.1)?;
            (wall_ns > 0 && stats.vcpus > 0).then(|| {
                (used as f64 * 100.0 / (wall_ns as f64 * f64::from(stats.vcpus))).clamp(0.0, 100.0)
            })
        });
        Activity {
            console: s.console_open,
            ssh,
            cpu_percent: cpu,
        }
    }
}

/// Whether an established TCP connection from this machine to `ip:port` is
/// in the kernel's table (`/proc/net/tcp`: addresses in hex, little endian).
pub fn ssh_connected(ip: &str, port: u16) -> bool {
    let Ok(addr) = ip.parse::<std::net::Ipv4Addr>() else {
        return false;
    };
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(addr.octets()), port);
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // rem_address, and state 01 (ESTABLISHED).
            f.get(2) == Some(&want.as_str()) && f.get(3) == Some(&"01")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(limits: ProjectLimits, started: &str) -> LimitedSession {
        LimitedSession {
            id: 1,
            user: "ann".into(),
            project: "lab".into(),
            limits,
            started_at: started.into(),
            idle_since: None,
            idle_warned_at: None,
            length_warned_at: None,
            vm: serde_json::from_value(serde_json::json!({
                "id": 1, "name": "vm0", "os_type": "blank", "ram_mb": 64, "disk_gb": 1,
                "cpu_cores": 1, "vm_type": "small", "status": "RUNNING", "ip_address": null,
                "ssh_port": null, "uptime_seconds": 0, "metadata": {}, "owner": null,
                "pool": "lab", "host": "local", "provider_id": "m", "session_id": 1,
                "last_stopped": null, "created_at": "", "updated_at": "", "synced_at": null,
                "synced_by": null
            }))
            .expect("a VM"),
            console_open: false,
        }
    }

    fn at(t: &str) -> DateTime<Utc> {
        parse(t).expect("a time")
    }

    #[test]
    fn the_length_limit_warns_ten_minutes_before_then_closes() {
        let l = ProjectLimits {
            max_session_minutes: Some(60),
            ..Default::default()
        };
        let s = session(l, "2026-01-01T10:00:00.000Z");
        let busy = Activity {
            console: true,
            ..Default::default()
        };
        assert_eq!(judge(&s, busy, at("2026-01-01T10:49:59Z")), (None, None));
        let (mark, act) = judge(&s, busy, at("2026-01-01T10:50:00Z"));
        assert_eq!(
            mark.expect("a mark").warn,
            Some((
                "max_session_length".into(),
                "2026-01-01T11:00:00.000Z".into()
            ))
        );
        assert_eq!(act.expect("an action").action, "warned");
        let warned = LimitedSession {
            length_warned_at: Some("2026-01-01T10:50:00.000Z".into()),
            ..s
        };
        assert_eq!(
            judge(&warned, busy, at("2026-01-01T10:55:00Z")),
            (None, None)
        );
        let (mark, act) = judge(&warned, busy, at("2026-01-01T11:00:00Z"));
        assert_eq!(
            mark.expect("a mark").reached.as_deref(),
            Some("max_session_length")
        );
        assert_eq!(act.expect("an action").action, "closed");
    }

    #[test]
    fn idleness_counts_only_without_console_ssh_and_cpu() {
        let l = ProjectLimits::default();
        let idle = Activity {
            cpu_percent: Some(1.0),
            ..Default::default()
        };
        assert!(idle.idle(&l));
        assert!(!Activity {
            console: true,
            ..idle
        }
        .idle(&l));
        assert!(!Activity { ssh: true, ..idle }.idle(&l));
        assert!(!Activity {
            cpu_percent: Some(5.0),
            ..idle
        }
        .idle(&l));
        assert!(!Activity {
            cpu_percent: None,
            ..idle
        }
        .idle(&l));
    }

    #[test]
    fn an_idle_session_is_warned_then_closed_and_activity_starts_the_count_again() {
        let l = ProjectLimits {
            idle_minutes: Some(30),
            ..Default::default()
        };
        let idle = Activity {
            cpu_percent: Some(0.5),
            ..Default::default()
        };
        let s = session(l, "2026-01-01T10:00:00.000Z");
        // The count starts.
        let (mark, act) = judge(&s, idle, at("2026-01-01T10:00:00Z"));
        assert_eq!(
            mark.expect("a mark").idle_since.as_deref(),
            Some("2026-01-01T10:00:00.000Z")
        );
        assert!(act.is_none());
        let counting = LimitedSession {
            idle_since: Some("2026-01-01T10:00:00.000Z".into()),
            ..s.clone()
        };
        assert_eq!(
            judge(&counting, idle, at("2026-01-01T10:29:00Z")),
            (None, None)
        );
        let (mark, act) = judge(&counting, idle, at("2026-01-01T10:30:00Z"));
        assert_eq!(mark.expect("a mark").warn.expect("a warning").0, "idle");
        assert_eq!(act.expect("an action").at, "2026-01-01T10:35:00.000Z");
        let warned = LimitedSession {
            idle_warned_at: Some("2026-01-01T10:30:00.000Z".into()),
            ..counting.clone()
        };
        assert_eq!(
            judge(&warned, idle, at("2026-01-01T10:34:00Z")),
            (None, None)
        );
        let (mark, _) = judge(&warned, idle, at("2026-01-01T10:35:00Z"));
        assert_eq!(mark.expect("a mark").reached.as_deref(), Some("idle"));
        // Someone opens the console after the warning: the count and the
        // warning are cleared.
        let busy = Activity {
            console: true,
            ..idle
        };
        let (mark, act) = judge(&warned, busy, at("2026-01-01T10:34:00Z"));
        let mark = mark.expect("a mark");
        assert_eq!(
            (mark.idle_since, mark.warn, mark.reached),
            (None, None, None)
        );
        assert!(act.is_none());
    }
}
