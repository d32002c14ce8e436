//! Sessions: exclusive allocation of a pool VM, driving a session through its
//! states on the VM's host, and settling what a crashed worker left.

use std::time::{Duration, Instant};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::model::*;
use crate::provider::{PowerState, Provider};
use crate::team::Acting;
use crate::validate;

/// How often a transition re-reads the power state while it waits.
const POLL: Duration = Duration::from_millis(100);
/// How often a shutdown asks the guest again while it waits.
const ASK_AGAIN: Duration = Duration::from_secs(5);

/// Waits until `done` holds for the machine's power state, or the timeout.
pub(crate) fn wait_for(
    provider: &dyn Provider,
    machine: &str,
    timeout: Duration,
    done: impl Fn(PowerState) -> bool,
) -> Result<PowerState, crate::provider::ProviderError> {
    // A timeout too long to add never comes (no overflow panic).
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let state = provider.power_state(machine)?;
        if done(state) || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(state);
        }
        std::thread::sleep(POLL);
    }
}

/// Shuts a machine down: ACPI first, cut off after `timeout`. Returns whether
/// it had to be forced off.
pub(crate) fn power_off(
    p: &dyn Provider,
    machine: &str,
    timeout: Duration,
) -> Result<bool, crate::provider::ProviderError> {
    if p.power_state(machine)?.is_off() {
        return Ok(false);
    }
    // A guest without ACPI support refuses: then only the timeout is left.
    // The request is repeated every few seconds: a guest that is still
    // booting (or missed the first press) takes a later one.
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let _ = p.shutdown(machine);
        let left = deadline.map_or(ASK_AGAIN, |d| d.saturating_duration_since(Instant::now()));
        if wait_for(p, machine, left.min(ASK_AGAIN), PowerState::is_off)?.is_off() {
            return Ok(false);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    p.force_off(machine)?;
    wait_for(p, machine, Duration::from_secs(30), PowerState::is_off)?;
    Ok(true)
}

pub(crate) fn vm_status_of(state: PowerState) -> VmStatus {
    match state {
        PowerState::Running => VmStatus::Running,
        PowerState::Stopped | PowerState::Deallocated => VmStatus::Stopped,
        PowerState::Starting => VmStatus::Starting,
        PowerState::Stopping => VmStatus::Stopping,
        PowerState::Unknown => VmStatus::Unknown,
    }
}

impl Core {
    /// Opens a session on a free VM of a project's pool. With `wait`, drives it
    /// to ACTIVE (or FAILED) before returning; without, returns it REQUESTED and
    /// leaves it to a worker.
    pub fn session_open(&self, actor: &str, req: &SessionRequest, wait: bool) -> Result<Session> {
        validate::name("project", &req.project)?;
        if let Some(w) = &req.workspace {
            validate::name("workspace", w)?;
        }
        if let Some(t) = &req.vm_type {
            validate::name("VM type", t)?;
        }
        let worker = if wait {
            Some(self.worker_id()?.to_owned())
        } else {
            None
        };
        // Whoever starts the VM writes this user's key into its seed.
        self.publish_key(actor);
        let opened = self
            .acting(actor)?
            .sessions()
            .session_open(req, worker.as_deref())?;
        if wait {
            self.drive_start(opened.id)
        } else {
            Ok(opened)
        }
    }

    /// Closes a session: its VM is shut down (forced off after the shutdown
    /// timeout) and the session COMPLETED. Without `wait`, returns it
    /// TERMINATING and leaves the shutdown to a worker.
    pub fn session_close(&self, actor: &str, id: i64, wait: bool) -> Result<Session> {
        let worker = if wait {
            Some(self.worker_id()?.to_owned())
        } else {
            None
        };
        let store = self.acting(actor)?;
        let (s, drive) = store.sessions().session_close_by(id, worker.as_deref())?;
        if drive {
            self.drive_close(&store, id, SessionStatus::Completed)
        } else {
            Ok(s)
        }
    }

    /// The actor's sessions, newest first; with `all`, every user's (admin only).
    pub fn session_list(&self, actor: &str, all: bool) -> Result<Vec<Session>> {
        self.acting(actor)?.sessions().session_list(all)
    }

    /// Drives a REQUESTED session that this worker holds to ACTIVE, or FAILED.
    fn drive_start(&self, id: i64) -> Result<Session> {
        let me = self.worker_id()?.to_owned();
        let store = self.reading();
        let sessions = store.sessions();
        let session = sessions.session_starting(id, &me)?;
        let vm = store.vms().vm(&session.vm_id.to_string())?;
        let machine = self.machine_spec(&vm).machine_name;
        let started = self.provider(&vm.host).and_then(|p| {
            let provider_err = |source| Error::Provider {
                host: vm.host.clone(),
                source,
            };
            // The seed lets this session's user in, and nobody before.
            let who = crate::reach::SeedFor::Session {
                user: session.user.clone(),
                session: session.id,
            };
            self.ensure_machine(p.as_ref(), &vm, &who)?;
            p.start(&machine).map_err(provider_err)?;
            let state = wait_for(p.as_ref(), &machine, self.opts.start_timeout, |s| {
                s == PowerState::Running
            })
            .map_err(provider_err)?;
            Ok((p, state))
        });
        match started {
            Ok((_, PowerState::Running)) => sessions.session_started(id, &machine),
            Ok((p, state)) => {
                let reason = format!(
                    "the VM did not start within {:?} (it is {state:?})",
                    self.opts.start_timeout
                );
                let _ = p.force_off(&machine);
                sessions.session_start_failed(id, &reason, VmStatus::Stopped)?;
                Err(Error::Provider {
                    host: vm.host.clone(),
                    source: crate::provider::ProviderError::Timeout(reason),
                })
            }
            Err(err) => {
                let observed = self
                    .provider(&vm.host)
                    .ok()
                    .and_then(|p| p.power_state(&machine).ok());
                let status = observed.map_or(VmStatus::Unknown, vm_status_of);
                sessions.session_start_failed(id, &err.one_line(), status)?;
                Err(err)
            }
        }
    }

    /// Drives a TERMINATING session that this worker holds: shut the guest
    /// down, force it off after the timeout, then end the session as `end`.
    fn drive_close(&self, store: &Acting<'_>, id: i64, end: SessionStatus) -> Result<Session> {
        let sessions = store.sessions();
        let s = sessions.session(id)?;
        let vm = store.vms().vm(&s.vm_id.to_string())?;
        let machine = self.machine_spec(&vm).machine_name;
        let timeout = self.opts.shutdown_timeout;
        // The deadline is committed before the guest is asked to shut down,
        // so that every window sees when it will be forced off.
        sessions.session_stopping(id, &crate::vms::force_off_at(timeout))?;
        let stopped = self.provider(&vm.host).and_then(|p| {
            power_off(p.as_ref(), &machine, timeout).map_err(|source| Error::Provider {
                host: vm.host.clone(),
                source,
            })
        });
        match stopped {
            Ok(forced) => sessions.session_ended(id, end, forced),
            Err(err) => {
                // Left TERMINATING and unclaimed: a later worker tries again.
                sessions.session_close_failed(id, &err.one_line())?;
                Err(err)
            }
        }
    }

    /// Drives every VM creation and session that waits for a worker (made
    /// with `--no-wait`) on. Returns how many were driven.
    pub fn drive_pending(&self) -> Result<usize> {
        let store = self.reading();
        // On a team store, what desks left to a worker is an admin's to drive
        // (`vmdesk serve`); a plain login's desk drives nothing it did not
        // start itself. On one desk the system drives it.
        if store.users().whoami()?.role != Role::Admin {
            return Ok(0);
        }
        let me = self.worker_id()?.to_owned();
        let mut driven = 0;
        while let Some((kind, id, status)) = store.work().claim_pending(&me)? {
            driven += 1;
            // A failure is recorded on the VM or the session and in the log;
            // go on with the rest.
            let outcome = match (kind.as_str(), status.as_str()) {
                ("vm", _) => self.provision(id, None).map(|_| ()),
                (_, "REQUESTED") => self.drive_start(id).map(|_| ()),
                _ => self
                    .drive_close(&store, id, SessionStatus::Completed)
                    .map(|_| ()),
            };
            if let Err(e) = outcome {
                tracing::warn!(%kind, id, error = %e.one_line(), "pending work not driven");
                if status == "TERMINATING" {
                    // It stays pending; do not spin on a host that is down.
                    return Ok(driven);
                }
            }
        }
        Ok(driven)
    }

    /// Settles work whose worker died: VMs left CREATING become FAILED_TO_START;
    /// sessions left REQUESTED or STARTING become ACTIVE if their VM runs and
    /// FAILED otherwise; sessions left TERMINATING are finished. Each repair is
    /// an event. Returns how many rows were repaired.
    pub fn recover(&self) -> Result<usize> {
        let store = self.reading();
        // On a team store an admin's process (`vmdesk serve`) settles the
        // work of workers that died on any desk.
        if store.users().whoami()?.role != Role::Admin {
            return Ok(0);
        }
        let work = store.work();
        let me = self.worker_id()?.to_owned();
        let mut repaired = 0;
        for (kind, id, dead) in work.claimed_work()? {
            // Claimed first, so that one process settles it.
            if self.worker_alive(&dead) || !work.reclaim(&kind, id, &dead, &me)? {
                continue;
            }
            repaired += 1;
            if kind == "vm" {
                // A machine the crash left half started is powered off: a
                // failed VM must not run (nor be billed). Its disk and
                // definition stay with its row, for `vm start` to retry or
                // `vm destroy` to remove.
                let vm = store.vms().vm(&id.to_string())?;
                let on_host = self.power_off_after_crash(&vm);
                work.recovered_vm(id, &me, &dead, on_host)?;
                continue;
            }
            let s = store.sessions().session(id)?;
            if s.status == SessionStatus::Terminating {
                work.recovered_session(id, &me, &dead, VmStatus::Stopping)?;
                if let Err(e) = self.drive_close(&store, id, SessionStatus::Completed) {
                    tracing::warn!(session = id, error = %e.one_line(), "recovered termination not finished");
                }
                continue;
            }
            let vm = store.vms().vm(&s.vm_id.to_string())?;
            let machine = self.machine_spec(&vm).machine_name;
            let observed = self
                .provider(&vm.host)
                .ok()
                .and_then(|p| p.power_state(&machine).ok());
            let vm_status = observed.map_or(VmStatus::Unknown, vm_status_of);
            work.recovered_session(id, &me, &dead, vm_status)?;
        }
        Ok(repaired)
    }
}

impl Core {
    /// Powers off the machine of a creation a crash interrupted (a failed
    /// VM must not run, nor be billed; its disk and definition stay); what
    /// was found on the host, in words, for the recovery event.
    fn power_off_after_crash(&self, vm: &Vm) -> &'static str {
        let machine = self.machine_spec(vm).machine_name;
        match self.provider(&vm.host) {
            Ok(p) => match p.power_state(&machine) {
                Ok(state) if !state.is_off() => match p.force_off(&machine) {
                    Ok(()) => "forced off",
                    Err(_) => "running; could not be forced off",
                },
                Ok(_) => "defined, off",
                Err(crate::provider::ProviderError::NotFound(_)) => "not defined",
                Err(_) => "unknown (host unreachable)",
            },
            Err(_) => "unknown (host unreachable)",
        }
    }
}
