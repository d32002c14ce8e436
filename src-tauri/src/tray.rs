//! The tray icon's model (what it shows and offers, from the core's data) and
//! the desktop notifications drawn from new events. Pure: the app turns
//! these into Tauri menus, icons and notifications.

use vmdesk_core::{Event, Session, SessionStatus, User, Vm, VmStatus};

/// At most this many VMs are listed in the menu; the rest are counted.
pub const MENU_VMS: usize = 12;

/// How the icon looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Nothing of the user's runs.
    Idle,
    /// Something runs.
    Running,
    /// Something needs attention (a recent warning, a VM in trouble, credits low).
    Warning,
}

/// A VM in the menu (running, or on its way up or down), with its state and
/// what "stop" means for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrayVm {
    /// The VM's name.
    pub name: String,
    /// The user's live session on it: stopping closes the session.
    pub session: Option<i64>,
    /// Its state in words ("running", "stopping", "closing", "starting").
    pub state: &'static str,
    /// Its IPv4 address, where known.
    pub ip: Option<String>,
}

impl TrayVm {
    /// The menu label: name and state, and the session it belongs to.
    pub fn label(&self) -> String {
        let ip = self
            .ip
            .as_deref()
            .map(|ip| format!(", {ip}"))
            .unwrap_or_default();
        match self.session {
            Some(id) => format!("{} (session {id}, {}{ip})", self.name, self.state),
            None => format!("{} ({}{ip})", self.name, self.state),
        }
    }

    /// Whether it can be stopped (or its session closed) now: not while it
    /// is already on its way.
    pub fn stoppable(&self) -> bool {
        self.state == "running"
    }
}

/// What the tray shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrayModel {
    /// The icon's look.
    pub look: Look,
    /// The tooltip: counts and balance.
    pub tooltip: String,
    /// The menu's first line, the balance and counts: an XEmbed tray (and
    /// some StatusNotifier hosts) shows no tooltip, so the menu says it too.
    pub summary: String,
    /// The running VMs listed, at most [`MENU_VMS`].
    pub vms: Vec<TrayVm>,
    /// Running VMs left out of the menu.
    pub more: usize,
}

/// What a menu item does; its id is its string form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrayAction {
    /// Show and focus the window.
    Show,
    /// Quit the app.
    Quit,
    /// Open a VM's console in the window.
    Console(String),
    /// Put a VM's SSH command on the clipboard.
    CopySsh(String),
    /// Open a terminal logged in to a VM.
    Terminal(String),
    /// Stop a user's own VM.
    Stop(String),
    /// Close a session (its VM is stopped and returned to the pool).
    CloseSession(i64),
}

impl TrayAction {
    /// The menu item's id.
    pub fn id(&self) -> String {
        match self {
            Self::Show => "show".into(),
            Self::Quit => "quit".into(),
            Self::Console(vm) => format!("console:{vm}"),
            Self::CopySsh(vm) => format!("copy-ssh:{vm}"),
            Self::Terminal(vm) => format!("terminal:{vm}"),
            Self::Stop(vm) => format!("stop:{vm}"),
            Self::CloseSession(id) => format!("close:{id}"),
        }
    }

    /// The action of a menu item's id.
    pub fn parse(id: &str) -> Option<Self> {
        match id.split_once(':') {
            None if id == "show" => Some(Self::Show),
            None if id == "quit" => Some(Self::Quit),
            Some(("console", vm)) if !vm.is_empty() => Some(Self::Console(vm.into())),
            Some(("copy-ssh", vm)) if !vm.is_empty() => Some(Self::CopySsh(vm.into())),
            Some(("terminal", vm)) if !vm.is_empty() => Some(Self::Terminal(vm.into())),
            Some(("stop", vm)) if !vm.is_empty() => Some(Self::Stop(vm.into())),
            Some(("close", id)) => id.parse().ok().map(Self::CloseSession),
            _ => None,
        }
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The tray of `user`: their own running VMs and the VMs of their ACTIVE
/// sessions; `own` are the user's own VMs, `sessions` any sessions (others'
/// are ignored); `warnings` counts recent warnings concerning the user.
pub fn model(user: &User, own: &[Vm], sessions: &[Session], warnings: usize) -> TrayModel {
    let mine = |s: &&Session| s.user == user.name;
    let active: Vec<&Session> = sessions
        .iter()
        .filter(mine)
        .filter(|s| s.status == SessionStatus::Active)
        .collect();
    let session_state = |s: &Session| match s.status {
        SessionStatus::Active => Some("running"),
        SessionStatus::Terminating => Some("closing"),
        SessionStatus::Requested | SessionStatus::Starting => Some("starting"),
        _ => None,
    };
    let mut vms: Vec<TrayVm> = sessions
        .iter()
        .filter(mine)
        .filter_map(|s| {
            Some(TrayVm {
                name: s.vm_name.clone(),
                session: Some(s.id),
                state: session_state(s)?,
                ip: None,
            })
        })
        .chain(own.iter().filter_map(|v| {
            let state = match v.status {
                VmStatus::Running => "running",
                VmStatus::Starting => "starting",
                VmStatus::Stopping => "stopping",
                _ => return None,
            };
            Some(TrayVm {
                name: v.name.clone(),
                session: None,
                state,
                ip: v.ip_address.clone(),
            })
        }))
        .collect();
    // A session's entry first, so that it wins over a same-named own VM.
    vms.sort_by(|a, b| a.name.cmp(&b.name));
    vms.dedup_by(|a, b| a.name == b.name);
    let running = vms.iter().filter(|v| v.state == "running").count();
    let troubled = own
        .iter()
        .filter(|v| matches!(v.status, VmStatus::Unknown | VmStatus::FailedToStart))
        .count();
    let look = if warnings > 0 || troubled > 0 {
        Look::Warning
    } else if running > 0 {
        Look::Running
    } else {
        Look::Idle
    };
    let mut tooltip = format!(
        "vmdesk: {} running, {}, {}",
        running,
        plural(active.len(), "active session", "active sessions"),
        plural(
            usize::try_from(user.balance).unwrap_or(0),
            "credit",
            "credits"
        )
    );
    if warnings + troubled > 0 {
        tooltip.push_str(&format!(
            ", {}",
            plural(warnings + troubled, "warning", "warnings")
        ));
    }
    let summary = format!(
        "{} · {} running · {}",
        plural(
            usize::try_from(user.balance).unwrap_or(0),
            "credit",
            "credits"
        ),
        running,
        plural(active.len(), "active session", "active sessions"),
    );
    let more = vms.len().saturating_sub(MENU_VMS);
    vms.truncate(MENU_VMS);
    TrayModel {
        look,
        tooltip,
        summary,
        vms,
        more,
    }
}

/// Adds status sync's health to the tray: a line in the tooltip and the
/// warning look when it is down, failing, or cannot reach a host.
pub fn with_sync(m: &mut TrayModel, h: &crate::supervise::SyncHealth) {
    use crate::supervise::SyncState;
    let mut trouble = Vec::new();
    if h.state == SyncState::Down {
        trouble.push(match &h.last_exit {
            Some(exit) => format!("status sync stopped ({exit}), restarting"),
            None => "status sync is starting".to_owned(),
        });
    }
    if let Some(e) = &h.last_error {
        trouble.push(format!("status sync failed: {e}"));
    }
    if !h.unreachable.is_empty() {
        trouble.push(format!("unreachable: {}", h.unreachable.join(", ")));
    }
    if h.state == SyncState::Disabled {
        m.tooltip.push_str("\nstatus sync off");
    }
    if trouble.is_empty() {
        return;
    }
    // A start (no exit yet) is not trouble worth the warning look.
    if h.last_exit.is_some() || h.last_error.is_some() || !h.unreachable.is_empty() {
        m.look = Look::Warning;
    }
    for t in trouble {
        m.tooltip.push('\n');
        m.tooltip.push_str(&t);
    }
}

/// A desktop notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Its title.
    pub title: String,
    /// Its text.
    pub body: String,
}

/// At most this many notifications at once; more are summed up in one.
pub const NOTICES: usize = 3;

/// The notifications `user` gets for new events: a VM that failed, a
/// session terminated by status sync, credits running low or out.
/// `vm_name` names a VM by id.
pub fn notices(
    user: &str,
    events: &[Event],
    vm_name: impl Fn(i64) -> Option<String>,
) -> Vec<Notice> {
    let name = |e: &Event| {
        e.details
            .get("vm")
            .and_then(|v| v.as_str().map(str::to_owned))
            .or_else(|| e.vm_id.and_then(&vm_name))
            .unwrap_or_else(|| "a VM".into())
    };
    let text = |e: &Event, key: &str| {
        e.details
            .get(key)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_default()
    };
    let mine = |e: &Event| e.details.get("user").and_then(|u| u.as_str()) == Some(user);
    let mut all: Vec<Notice> = events
        .iter()
        .filter_map(|e| match e.action.as_str() {
            "vm.create_failed" => Some(Notice {
                title: format!("{} failed", name(e)),
                body: text(e, "reason"),
            }),
            "session.terminated" => Some(Notice {
                title: format!("Session {} was ended", e.session_id.unwrap_or_default()),
                body: format!("{}: {}", name(e), text(e, "reason")),
            }),
            "session.ended" if mine(e) => Some(Notice {
                title: format!("Session {} is closed", e.session_id.unwrap_or_default()),
                body: if e.details.get("forced_off") == Some(&serde_json::Value::Bool(true)) {
                    format!(
                        "{} was forced off: the guest did not shut down in time",
                        name(e)
                    )
                } else {
                    format!("{} is off", name(e))
                },
            }),
            "credits.low" if mine(e) => Some(Notice {
                title: "Credits are running low".into(),
                body: format!(
                    "{} credits left, about {} min of running time",
                    text(e, "balance"),
                    e.details
                        .get("seconds_left")
                        .and_then(serde_json::Value::as_i64)
                        .unwrap_or(0)
                        / 60
                ),
            }),
            "session.limit_warning" if mine(e) => Some(Notice {
                title: format!(
                    "Session {} closes at {}",
                    e.session_id.unwrap_or_default(),
                    text(e, "closes_at").get(11..16).unwrap_or("soon")
                ),
                body: if text(e, "rule") == "idle" {
                    format!("{} has been idle: use it to keep it", name(e))
                } else {
                    format!("{} reaches the project's maximum session length", name(e))
                },
            }),
            "session.limit_reached" if mine(e) => Some(Notice {
                title: format!(
                    "Session {} is being closed",
                    e.session_id.unwrap_or_default()
                ),
                body: if text(e, "rule") == "idle" {
                    format!("{} was idle too long", name(e))
                } else {
                    format!("{} reached the project's maximum session length", name(e))
                },
            }),
            "vm.idle_warning" if mine(e) => Some(Notice {
                title: format!(
                    "{} stops at {}",
                    name(e),
                    text(e, "stops_at").get(11..16).unwrap_or("soon")
                ),
                body: format!(
                    "It has been idle for {} min: use it to keep it running",
                    text(e, "idle_minutes")
                ),
            }),
            "vm.idle_stop" if mine(e) => Some(Notice {
                title: format!("{} is being stopped", name(e)),
                body: format!(
                    "It was idle for {} min, as you chose",
                    text(e, "idle_minutes")
                ),
            }),
            "credits.exhausted" if mine(e) => Some(Notice {
                title: "Credits are used up".into(),
                body: format!("{} is being stopped", name(e)),
            }),
            _ => None,
        })
        .collect();
    if all.len() > NOTICES {
        let rest = all.len() - (NOTICES - 1);
        all.truncate(NOTICES - 1);
        all.push(Notice {
            title: format!("{rest} more"),
            body: "See the event feed in vmdesk".into(),
        });
    }
    all
}

/// The tray icon for a look: the app icon (RGBA, `width` pixels wide), grey
/// when idle, with a green dot when something runs and an amber one on a
/// warning.
pub fn icon_rgba(rgba: &[u8], width: u32, look: Look) -> Vec<u8> {
    let mut out = rgba.to_vec();
    let w = width.max(1) as usize;
    let h = out.len() / 4 / w;
    if look == Look::Idle {
        for px in out.chunks_exact_mut(4) {
            let grey = ((u32::from(px[0]) * 30 + u32::from(px[1]) * 59 + u32::from(px[2]) * 11)
                / 100) as u8;
            px[..3].fill(grey);
        }
        return out;
    }
    let color: [u8; 3] = match look {
        Look::Running => [0x2e, 0xa0, 0x4f],
        _ => [0xf0, 0xa0, 0x00],
    };
    // A dot in the lower right corner, a third of the icon across.
    let r = (w.min(h) / 6) as i64;
    let (cx, cy) = ((w as i64) - r - 1, (h as i64) - r - 1);
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (x as i64 - cx, y as i64 - cy);
            if dx * dx + dy * dy <= r * r {
                let i = (y * w + x) * 4;
                out[i..i + 3].copy_from_slice(&color);
                out[i + 3] = 0xff;
            }
        }
    }
    out
}

/// The notification of a shutdown asked for from the tray, once the backend
/// says the VM is STOPPING: what happens next and when, from its deadline
/// (`force_off_at`). `session` is the session being closed, if any. `None`
/// while the VM is not stopping.
pub fn stopping_notice(
    vm: &Vm,
    session: Option<i64>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Notice> {
    if vm.status != VmStatus::Stopping {
        return None;
    }
    let left = vm
        .metadata
        .get("force_off_at")
        .and_then(serde_json::Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|d| {
            (d.with_timezone(&chrono::Utc) - now)
                .num_milliseconds()
                .max(0)
        });
    let next = match left {
        Some(ms) if ms > 0 => format!(
            "the guest was asked to shut down; it is forced off in {} s if it does not stop",
            (ms + 999) / 1000
        ),
        Some(_) => "the guest is being forced off".to_owned(),
        None => "the guest was asked to shut down".to_owned(),
    };
    Some(match session {
        Some(id) => Notice {
            title: format!("Closing session {id}"),
            body: format!("{}: {next}", vm.name),
        },
        None => Notice {
            title: format!("Stopping {}", vm.name),
            body: capitalised(&next),
        },
    })
}

/// The notification when a stop asked for from the tray is done.
pub fn stopped_notice(vm: &Vm) -> Notice {
    Notice {
        title: format!("{} is {}", vm.name, vm.status.as_str().to_lowercase()),
        body: "Stopped from the tray".into(),
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use vmdesk_core::{EventType, Role, Severity};

    fn user(balance: i64) -> User {
        User {
            id: 1,
            name: "ann".into(),
            role: Role::User,
            balance,
            created_at: String::new(),
        }
    }

    fn vm(name: &str, status: VmStatus) -> Vm {
        serde_json::from_value(json!({
            "id": 1, "name": name, "os_type": "blank", "ram_mb": 512, "disk_gb": 1,
            "cpu_cores": 1, "vm_type": "standard", "status": status, "ip_address": null,
            "ssh_port": null, "uptime_seconds": null, "metadata": {}, "owner": "ann",
            "pool": null, "host": "h", "provider_id": null, "session_id": null,
            "last_stopped": null, "created_at": "", "updated_at": "", "synced_at": null,
            "synced_by": null
        }))
        .expect("a VM")
    }

    fn session(id: i64, who: &str, vm: &str, status: SessionStatus) -> Session {
        Session {
            id,
            vm_id: id,
            vm_name: vm.into(),
            user: who.into(),
            project: "lab".into(),
            workspace: None,
            status,
            error: None,
            created_at: String::new(),
            updated_at: String::new(),
            started_at: None,
            ended_at: None,
        }
    }

    fn health(state: crate::supervise::SyncState) -> crate::supervise::SyncHealth {
        crate::supervise::SyncHealth {
            state,
            pid: None,
            last_pass_at: None,
            last_full_pass_at: None,
            last_error: None,
            unreachable: Vec::new(),
            restarts: 0,
            last_exit: None,
            last_exit_at: None,
            retry_at: None,
            serve: None,
        }
    }

    #[test]
    fn a_stopped_status_sync_shows_in_the_tooltip_and_the_look() {
        let mut m = model(&user(100), &[], &[], 0);
        let mut h = health(crate::supervise::SyncState::Down);
        h.last_exit = Some("killed by signal 9".into());
        with_sync(&mut m, &h);
        assert_eq!(m.look, Look::Warning);
        assert!(
            m.tooltip
                .ends_with("\nstatus sync stopped (killed by signal 9), restarting"),
            "{}",
            m.tooltip
        );
    }

    #[test]
    fn unreachable_hosts_show_in_the_tooltip() {
        let mut m = model(&user(100), &[], &[], 0);
        let mut h = health(crate::supervise::SyncState::Running);
        h.unreachable = vec!["far".into()];
        with_sync(&mut m, &h);
        assert!(m.tooltip.ends_with("\nunreachable: far"), "{}", m.tooltip);
    }

    #[test]
    fn a_healthy_status_sync_leaves_the_tray_alone() {
        let mut m = model(&user(100), &[], &[], 0);
        let before = m.clone();
        with_sync(&mut m, &health(crate::supervise::SyncState::Running));
        assert_eq!(m, before);
    }

    #[test]
    fn the_menu_lists_own_running_vms_and_active_sessions_only() {
        let own = [
            vm("web", VmStatus::Running),
            vm("db", VmStatus::Stopped),
            vm("api", VmStatus::Running),
        ];
        let sessions = [
            session(7, "ann", "lab-1", SessionStatus::Active),
            session(8, "ann", "lab-2", SessionStatus::Starting),
            session(9, "bob", "lab-3", SessionStatus::Active),
        ];
        let m = model(&user(120), &own, &sessions, 0);
        assert_eq!(
            m.vms,
            vec![
                TrayVm {
                    name: "api".into(),
                    session: None,
                    state: "running",
                    ip: None,
                },
                TrayVm {
                    name: "lab-1".into(),
                    session: Some(7),
                    state: "running",
                    ip: None,
                },
                TrayVm {
                    name: "lab-2".into(),
                    session: Some(8),
                    state: "starting",
                    ip: None,
                },
                TrayVm {
                    name: "web".into(),
                    session: None,
                    state: "running",
                    ip: None,
                },
            ]
        );
        assert_eq!(m.summary, "120 credits · 3 running · 1 active session");
        assert_eq!(m.vms[1].label(), "lab-1 (session 7, running)");
        assert_eq!(m.vms[0].label(), "api (running)");
        let reachable = TrayVm {
            ip: Some("192.168.213.20".into()),
            ..m.vms[1].clone()
        };
        assert_eq!(
            reachable.label(),
            "lab-1 (session 7, running, 192.168.213.20)"
        );
        assert_eq!(m.look, Look::Running);
        assert_eq!(
            m.tooltip,
            "vmdesk: 3 running, 1 active session, 120 credits"
        );
        assert_eq!(m.more, 0);
    }

    #[test]
    fn a_vm_on_its_way_down_shows_its_state_and_cannot_be_stopped_again() {
        let own = [vm("web", VmStatus::Stopping), vm("db", VmStatus::Running)];
        let sessions = [session(4, "ann", "lab-3", SessionStatus::Terminating)];
        let m = model(&user(7), &own, &sessions, 0);
        let labels: Vec<String> = m.vms.iter().map(TrayVm::label).collect();
        assert_eq!(
            labels,
            [
                "db (running)",
                "lab-3 (session 4, closing)",
                "web (stopping)"
            ]
        );
        let stoppable: Vec<bool> = m.vms.iter().map(TrayVm::stoppable).collect();
        assert_eq!(stoppable, [true, false, false]);
        assert_eq!(m.summary, "7 credits · 1 running · 0 active sessions");
    }

    #[test]
    fn nothing_running_is_idle_and_trouble_is_a_warning() {
        let m = model(&user(1), &[vm("db", VmStatus::Stopped)], &[], 0);
        assert_eq!((m.look, m.vms.len()), (Look::Idle, 0));
        assert_eq!(m.tooltip, "vmdesk: 0 running, 0 active sessions, 1 credit");

        let m = model(&user(5), &[vm("db", VmStatus::Unknown)], &[], 0);
        assert_eq!(m.look, Look::Warning);
        assert!(m.tooltip.ends_with(", 1 warning"), "{}", m.tooltip);

        let m = model(&user(5), &[vm("web", VmStatus::Running)], &[], 2);
        assert_eq!(m.look, Look::Warning);
        assert!(m.tooltip.ends_with(", 2 warnings"), "{}", m.tooltip);
    }

    #[test]
    fn a_long_list_is_cut_and_counted() {
        let own: Vec<Vm> = (0..20)
            .map(|i| vm(&format!("vm{i:02}"), VmStatus::Running))
            .collect();
        let m = model(&user(0), &own, &[], 0);
        assert_eq!(m.vms.len(), MENU_VMS);
        assert_eq!(m.more, 20 - MENU_VMS);
        assert_eq!(m.vms[0].name, "vm00");
    }

    #[test]
    fn menu_ids_round_trip_and_junk_is_ignored() {
        for a in [
            TrayAction::Show,
            TrayAction::Quit,
            TrayAction::Console("web-1".into()),
            TrayAction::CopySsh("web-1".into()),
            TrayAction::Terminal("web-1".into()),
            TrayAction::Stop("a:b".into()),
            TrayAction::CloseSession(42),
        ] {
            assert_eq!(TrayAction::parse(&a.id()), Some(a));
        }
        for junk in ["", "console:", "close:x", "stop", "reboot:web"] {
            assert_eq!(TrayAction::parse(junk), None, "{junk}");
        }
    }

    fn event(action: &str, details: serde_json::Value) -> Event {
        Event {
            id: 1,
            event_type: EventType::Vm,
            action: action.into(),
            severity: Severity::Warning,
            actor: "vmdesk".into(),
            vm_id: Some(3),
            session_id: Some(9),
            details,
            created_at: String::new(),
        }
    }

    #[test]
    fn failures_terminations_and_low_credits_notify() {
        let events = [
            event("vm.create_failed", json!({"reason": "the disk is full"})),
            event(
                "session.terminated",
                json!({"user": "ann", "reason": "the VM stopped under the session"}),
            ),
            event(
                "credits.low",
                json!({"user": "ann", "balance": 12, "seconds_left": 1800, "vm": "web"}),
            ),
            event(
                "credits.low",
                json!({"user": "bob", "balance": 1, "seconds_left": 60}),
            ),
            event("sync.status", json!({"vm": "web"})),
        ];
        let n = notices("ann", &events, |id| (id == 3).then(|| "web".to_owned()));
        assert_eq!(
            n,
            vec![
                Notice {
                    title: "web failed".into(),
                    body: "the disk is full".into()
                },
                Notice {
                    title: "Session 9 was ended".into(),
                    body: "web: the VM stopped under the session".into()
                },
                Notice {
                    title: "Credits are running low".into(),
                    body: "12 credits left, about 30 min of running time".into()
                },
            ]
        );
    }

    #[test]
    fn a_tray_stop_says_when_the_vm_is_forced_off() {
        let now = chrono::Utc::now();
        let mut v = vm("w1", VmStatus::Running);
        assert_eq!(stopping_notice(&v, None, now), None);
        v.status = VmStatus::Stopping;
        v.metadata = json!({"force_off_at": (now + chrono::Duration::seconds(45)).to_rfc3339()});
        let n = stopping_notice(&v, None, now).expect("a notice");
        assert_eq!(n.title, "Stopping w1");
        assert!(n.body.contains("forced off in 45 s"), "{}", n.body);
        assert!(n.body.starts_with("The guest"), "{}", n.body);
        let n = stopping_notice(&v, Some(3), now).expect("a notice");
        assert_eq!(n.title, "Closing session 3");
        assert!(n.body.starts_with("w1: the guest"), "{}", n.body);
        v.metadata = json!({});
        assert!(stopping_notice(&v, None, now)
            .expect("a notice")
            .body
            .contains("asked to shut down"));
        v.status = VmStatus::Stopped;
        assert_eq!(stopped_notice(&v).title, "w1 is stopped");
    }

    #[test]
    fn a_closed_session_of_the_user_notifies() {
        let events = [
            event("session.ended", json!({"user": "ann", "forced_off": true})),
            event("session.ended", json!({"user": "bob", "forced_off": false})),
        ];
        let n = notices("ann", &events, |_| Some("lab-3".to_owned()));
        assert_eq!(n.len(), 1, "{n:?}");
        assert_eq!(n[0].title, "Session 9 is closed");
        assert!(
            n[0].body.starts_with("lab-3 was forced off"),
            "{}",
            n[0].body
        );
    }

    #[test]
    fn idle_shutdown_of_an_own_vm_tells_its_owner_in_advance() {
        let events = [
            event(
                "vm.idle_warning",
                json!({"user": "ann", "vm": "mine", "idle_minutes": 30,
                       "stops_at": "2026-01-01T10:35:00.000Z"}),
            ),
            event(
                "vm.idle_warning",
                json!({"user": "bob", "vm": "his", "idle_minutes": 30}),
            ),
            event(
                "vm.idle_stop",
                json!({"user": "ann", "vm": "mine", "idle_minutes": 30}),
            ),
        ];
        let n = notices("ann", &events, |_| None);
        assert_eq!(n.len(), 2, "{n:?}");
        assert_eq!(n[0].title, "mine stops at 10:35");
        assert!(n[0].body.contains("idle for 30 min"), "{}", n[0].body);
        assert_eq!(n[1].title, "mine is being stopped");
    }

    #[test]
    fn a_burst_of_notices_is_summed_up() {
        let events: Vec<Event> = (0..10)
            .map(|_| event("vm.create_failed", json!({"reason": "x"})))
            .collect();
        let n = notices("ann", &events, |_| None);
        assert_eq!(n.len(), NOTICES);
        assert_eq!(n[NOTICES - 1].title, "8 more");
    }

    #[test]
    fn the_icon_shows_the_look() {
        let (w, h) = (12u32, 12u32);
        let base: Vec<u8> = (0..w * h).flat_map(|_| [200u8, 20, 20, 255]).collect();
        let corner = |px: &[u8]| {
            let i = ((h as usize - 2) * w as usize + (w as usize - 2)) * 4;
            [px[i], px[i + 1], px[i + 2]]
        };
        let idle = icon_rgba(&base, w, Look::Idle);
        let c = corner(&idle);
        assert!(c[0] == c[1] && c[1] == c[2], "grey: {c:?}");
        assert_eq!(
            corner(&icon_rgba(&base, w, Look::Running)),
            [0x2e, 0xa0, 0x4f]
        );
        assert_eq!(
            corner(&icon_rgba(&base, w, Look::Warning)),
            [0xf0, 0xa0, 0x00]
        );
        // The top left is untouched by the dot.
        assert_eq!(&icon_rgba(&base, w, Look::Running)[..4], &base[..4]);
    }
}
