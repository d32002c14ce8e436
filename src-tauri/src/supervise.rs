//! The status-sync child of the window (`vmdesk sync --watch --parent-pipe`):
//! started, watched, restarted with backoff when it exits, and its health
//! (last pass, last error, hosts unreachable, restarts) for the window's
//! status bar and the tray's tooltip.

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::Global;
use crate::watch::PassReport;

/// The first wait before a child that exited is started again; it doubles
/// at each exit up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait before a restart.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A child that ran this long resets the backoff when it exits.
const STABLE: Duration = Duration::from_secs(60);
/// How often the child is looked at.
const TICK: Duration = Duration::from_millis(250);

/// Whether status sync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "snake_case")]
#[ts(export)]
pub enum SyncState {
    /// Turned off in the settings.
    Disabled,
    /// The child runs.
    Running,
    /// The child is gone; it is started again at `retry_at`.
    Down,
    /// On a team store: the team's `vmdesk serve` follows the hosts and
    /// bills, for every desk; this desk runs no child.
    Team,
}

/// The health of status sync, as the status bar and the tray show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ts_rs::TS)]
#[ts(export)]
pub struct SyncHealth {
    /// Whether it runs.
    pub state: SyncState,
    /// The child's process id, while it runs.
    pub pid: Option<u32>,
    /// When the last pass ended.
    pub last_pass_at: Option<String>,
    /// When the last full pass (every VM) ended.
    pub last_full_pass_at: Option<String>,
    /// Why the last pass (or the last start of the child) failed; none once one works.
    pub last_error: Option<String>,
    /// Hosts the last pass could not reach.
    pub unreachable: Vec<String>,
    /// How often the child was started again after it exited.
    pub restarts: u32,
    /// How the child last exited (`killed by signal 9`, `exit status 1`).
    pub last_exit: Option<String>,
    /// When it last exited.
    pub last_exit_at: Option<String>,
    /// While down: when it is started again.
    pub retry_at: Option<String>,
    /// On a team store: the `vmdesk serve` that leads ("host, pid N, since
    /// T"); none while no serve leads.
    pub serve: Option<String>,
}

impl SyncHealth {
    fn new(enabled: bool) -> Self {
        Self {
            state: if enabled {
                SyncState::Down
            } else {
                SyncState::Disabled
            },
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

    /// Takes in a pass the child reported.
    pub fn pass(&mut self, p: &PassReport) {
        self.last_pass_at = Some(p.at.clone());
        if p.full {
            self.last_full_pass_at = Some(p.at.clone());
        }
        self.last_error.clone_from(&p.error);
        self.unreachable.clone_from(&p.unreachable);
    }
}

/// How a process ended, in words.
pub fn exit_words(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (_, Some(sig)) => format!("killed by signal {sig}"),
        (Some(code), _) => format!("exit status {code}"),
        _ => status.to_string(),
    }
}

/// The wait before the next start, after a child that ran `ran` and a
/// previous wait of `last`.
pub fn next_backoff(last: Duration, ran: Duration) -> Duration {
    if ran >= STABLE {
        BACKOFF_MIN
    } else {
        (last * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
    }
}

struct Running {
    child: Child,
    started: Instant,
    generation: u64,
}

struct State {
    enabled: bool,
    child: Option<Running>,
    generation: u64,
    /// The wait before the next start after an exit.
    backoff: Duration,
    /// When the child is to be started (while down).
    due: Option<Instant>,
    health: SyncHealth,
}

/// Keeps the status-sync child running while status sync is enabled.
pub struct Supervisor {
    global: Global,
    state: Mutex<State>,
    notify: Box<dyn Fn(&SyncHealth) + Send + Sync>,
}

impl Supervisor {
    /// Starts the child (if `enabled`) and a thread that restarts it when it
    /// exits; `notify` is called with the health whenever it changes.
    pub fn start(
        global: Global,
        enabled: bool,
        notify: Box<dyn Fn(&SyncHealth) + Send + Sync>,
    ) -> anyhow::Result<Arc<Self>> {
        let team = global.team.is_some();
        let enabled = enabled && !team;
        let mut health = SyncHealth::new(enabled);
        if team {
            health.state = SyncState::Team;
        }
        let s = Arc::new(Self {
            global,
            state: Mutex::new(State {
                enabled,
                child: None,
                generation: 0,
                backoff: BACKOFF_MIN,
                due: enabled.then(Instant::now),
                health,
            }),
            notify,
        });
        s.tick();
        let weak = Arc::downgrade(&s);
        std::thread::Builder::new()
            .name("vmdesk-sync-supervisor".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                match weak.upgrade() {
                    Some(s) => s.tick(),
                    None => return,
                }
            })?;
        Ok(s)
    }

    /// On a team store: which serve leads (host, pid, since), as the store
    /// says; none is a warning, since nobody then follows the hosts or bills.
    pub fn team_serve(&self, leader: Option<(String, i32, String)>) {
        let changed = {
            let mut st = self.lock();
            let before = st.health.clone();
            match leader {
                Some((host, pid, since)) => {
                    st.health.serve = Some(format!("{host}, pid {pid}, leading since {since}"));
                    st.health.last_error = None;
                    st.health.last_pass_at = Some(since);
                }
                None => {
                    st.health.serve = None;
                    st.health.last_error = Some(
                        "no vmdesk serve runs for this team store: VM states and metered billing are not followed; an admin starts one (`vmdesk serve`)"
                            .to_owned(),
                    );
                }
            }
            (st.health != before).then(|| st.health.clone())
        };
        if let Some(h) = changed {
            (self.notify)(&h);
        }
    }

    /// The health now.
    pub fn health(&self) -> SyncHealth {
        self.lock().health.clone()
    }

    /// Stops the child and, if `enabled`, starts a new one at once (the
    /// settings changed); not counted as a restart.
    pub fn restart(self: &Arc<Self>, enabled: bool) {
        if self.global.team.is_some() {
            return;
        }
        let old = {
            let mut st = self.lock();
            st.enabled = enabled;
            st.backoff = BACKOFF_MIN;
            st.due = enabled.then(Instant::now);
            st.health.state = if enabled {
                SyncState::Down
            } else {
                SyncState::Disabled
            };
            st.health.pid = None;
            st.health.retry_at = None;
            st.child.take()
        };
        if let Some(mut old) = old {
            let _ = old.child.kill();
            let _ = old.child.wait();
        }
        self.tick();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks at the child: records an exit, starts it when due.
    fn tick(self: &Arc<Self>) {
        let mut st = self.lock();
        let before = st.health.clone();
        if let Some(run) = st.child.as_mut() {
            if let Ok(Some(status)) = run.child.try_wait() {
                let ran = run.started.elapsed();
                st.child = None;
                st.backoff = next_backoff(st.backoff, ran);
                let wait = if ran >= STABLE {
                    BACKOFF_MIN
                } else {
                    st.backoff
                };
                st.due = Some(Instant::now() + wait);
                let words = exit_words(status);
                tracing::warn!(exit = %words, retry_in = ?wait, "status sync exited; restarting");
                st.health.state = SyncState::Down;
                st.health.pid = None;
                st.health.last_exit = Some(words);
                st.health.last_exit_at = Some(vmdesk_core::ago(Duration::ZERO));
                st.health.retry_at = Some(in_future(wait));
            }
        }
        if st.enabled && st.child.is_none() && st.due.is_some_and(|d| d <= Instant::now()) {
            st.generation += 1;
            let generation = st.generation;
            match spawn(&self.global) {
                Ok(mut child) => {
                    if st.health.last_exit_at.is_some() {
                        st.health.restarts += 1;
                    }
                    st.health.state = SyncState::Running;
                    st.health.pid = Some(child.id());
                    st.health.retry_at = None;
                    st.due = None;
                    if let Some(stdout) = child.stdout.take() {
                        let weak = Arc::downgrade(self);
                        let _ = std::thread::Builder::new()
                            .name("vmdesk-sync-reports".into())
                            .spawn(move || read_reports(&weak, generation, stdout));
                    }
                    st.child = Some(Running {
                        child,
                        started: Instant::now(),
                        generation,
                    });
                }
                Err(e) => {
                    st.backoff = next_backoff(st.backoff, Duration::ZERO);
                    let wait = st.backoff;
                    st.due = Some(Instant::now() + wait);
                    st.health.last_error = Some(format!("status sync could not start: {e:#}"));
                    st.health.retry_at = Some(in_future(wait));
                }
            }
        }
        let after = st.health.clone();
        drop(st);
        if after != before {
            (self.notify)(&after);
        }
    }
}

/// Reads the child's pass reports into the health while it is the current child.
fn read_reports(
    sup: &std::sync::Weak<Supervisor>,
    generation: u64,
    stdout: std::process::ChildStdout,
) {
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { return };
        let Ok(report) = serde_json::from_str::<PassReport>(&line) else {
            continue;
        };
        let Some(s) = sup.upgrade() else { return };
        let health = {
            let mut st = s.lock();
            if st.child.as_ref().map(|c| c.generation) != Some(generation) {
                return;
            }
            st.health.pass(&report);
            st.health.clone()
        };
        (s.notify)(&health);
    }
}

/// The time `d` from now, written as the core writes times.
fn in_future(d: Duration) -> String {
    let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
    (chrono::Utc::now() + d).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Starts `vmdesk sync --watch --parent-pipe` on the data directory of
/// `global`; it exits when this process's end of its stdin closes, however
/// this process ends.
fn spawn(global: &Global) -> anyhow::Result<Child> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--data-dir").arg(crate::cli::data_dir(global)?);
    if let Some(actor) = &global.as_user {
        cmd.arg("--as").arg(actor);
    }
    if let Some(store) = &global.store {
        cmd.arg("--store").arg(store);
    }
    if let Some(config) = &global.config {
        cmd.arg("--config").arg(config);
    }
    cmd.args(["sync", "--watch", "--parent-pipe"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    Ok(cmd.spawn()?)
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut run) = self.lock().child.take() {
            let _ = run.child.kill();
            let _ = run.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_maximum() {
        assert_eq!(next_backoff(BACKOFF_MIN, Duration::ZERO), BACKOFF_MIN * 2);
        assert_eq!(next_backoff(BACKOFF_MAX, Duration::ZERO), BACKOFF_MAX);
    }

    #[test]
    fn a_child_that_ran_long_resets_the_backoff() {
        assert_eq!(next_backoff(BACKOFF_MAX, STABLE), BACKOFF_MIN);
    }

    #[test]
    fn a_pass_with_an_error_and_unreachable_hosts_is_kept() {
        let mut h = SyncHealth::new(true);
        h.pass(&PassReport {
            at: "t1".into(),
            full: true,
            changes: 0,
            error: Some("boom".into()),
            unreachable: vec!["far".into()],
        });
        assert_eq!(
            (
                h.last_full_pass_at.as_deref(),
                h.last_error.as_deref(),
                h.unreachable.len()
            ),
            (Some("t1"), Some("boom"), 1)
        );
    }

    #[test]
    fn a_good_pass_clears_the_last_error() {
        let mut h = SyncHealth::new(true);
        h.last_error = Some("boom".into());
        h.pass(&PassReport {
            at: "t2".into(),
            full: false,
            changes: 0,
            error: None,
            unreachable: Vec::new(),
        });
        assert_eq!(h.last_error, None);
    }
}
