//! Metered billing: the reconciled running time of each VM is charged to who
//! uses it (a user's own VM to its owner, a pool VM to the user of its
//! session) at an hourly rate derived from its size. A balance about to run
//! out is warned of; at zero the session ends and the user's VMs are stopped.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use ts_rs::TS;

use crate::core::Core;
use crate::error::Result;
use crate::model::*;

/// How running time is priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingConfig {
    /// Credits per hour, as a percentage of the VM's price (`quote`): at 10,
    /// a VM that costs 34 to create costs 3.4 credits an hour to run.
    pub hourly_percent: i64,
    /// Warn when the balance covers less than this many seconds of running.
    pub warn_seconds: i64,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            hourly_percent: 10,
            warn_seconds: 3600,
        }
    }
}

/// One charge of running time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[ts(export)]
pub struct RuntimeCharge {
    /// The VM.
    pub vm: String,
    /// Who paid.
    pub user: String,
    /// Seconds of running time charged for.
    pub seconds: i64,
    /// Credits taken.
    pub credits: i64,
    /// Whether the balance ran out (the session ended, the VMs were stopped).
    pub exhausted: bool,
}

/// The clocks at a billing pass: the wall clock dates charges; the monotonic
/// clock measures how much time really passed since the previous pass.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    /// The wall clock.
    pub wall: DateTime<Utc>,
    /// The monotonic clock.
    pub mono: Instant,
}

/// A difference between the wall and monotonic clocks over one pass larger
/// than this is a clock jump (an event).
const JUMP: Duration = Duration::from_secs(5);

impl Core {
    /// Charges the running time of every VM up to `now` (the caller's clock,
    /// so that tests can move it): a running VM up to `now`, a VM stopped
    /// since its last charge up to when it stopped. Returns the charges.
    /// Time is measured by the wall clock alone: see [`Core::bill_pass`].
    pub fn bill_runtime(&self, now: DateTime<Utc>) -> Result<Vec<RuntimeCharge>> {
        self.bill_at(now, None)
    }

    /// [`Core::bill_runtime`] at a pass whose monotonic clock is known too:
    /// after a previous pass of this process, no VM is charged for more than
    /// the monotonic time between the two, so a wall clock that jumps forward
    /// bills nothing extra and one that jumps back gives no free time; a
    /// jump is an event.
    pub fn bill_pass(&self, pass: Pass) -> Result<Vec<RuntimeCharge>> {
        let previous = self
            .last_bill
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(pass);
        let observed = previous.map(|prev| {
            let mono = pass.mono.saturating_duration_since(prev.mono);
            let wall = (pass.wall - prev.wall).num_milliseconds();
            let mono_ms = i64::try_from(mono.as_millis()).unwrap_or(i64::MAX);
            let jump_ms = wall.saturating_sub(mono_ms);
            if jump_ms.unsigned_abs() > JUMP.as_millis() as u64 {
                let details = json!({"jump_seconds": jump_ms / 1000, "wall_seconds": wall / 1000,
                                     "observed_seconds": mono_ms / 1000,
                                     "billed": "the observed time only"});
                let res =
                    self.reading()
                        .events()
                        .system_note("clock.jump", Severity::Warning, details);
                if let Err(e) = res {
                    tracing::warn!(error = %e.one_line(), "recording a clock jump");
                }
            }
            i64::try_from(mono.as_secs()).unwrap_or(i64::MAX)
        });
        self.bill_at(pass.wall, observed)
    }

    /// Charges up to `now`; `observed` caps each charge at the seconds the
    /// monotonic clock saw since this process's previous pass.
    fn bill_at(&self, now: DateTime<Utc>, observed: Option<i64>) -> Result<Vec<RuntimeCharge>> {
        let store = self.reading();
        let billing = store.billing();
        let mut charges = Vec::new();
        for id in billing.billable_vms()? {
            let Some(b) = billing.bill_vm(id, now, observed, self.opts.billing)? else {
                continue;
            };
            if let Some(sid) = b.end_session {
                // At zero the session ends gracefully (its VM is shut down by a worker).
                if let Err(e) = self.session_end_as_system(sid) {
                    tracing::warn!(session = sid, error = %e.one_line(), "ending a session at zero credits");
                }
            }
            if b.stop_vm {
                // The balance ran out: the user's own VM is shut down, as a user would.
                let vm = &b.charge.vm;
                if let Err(e) = self.vm_stop_as_system(vm) {
                    tracing::warn!(%vm, error = %e.one_line(), "stopping a VM at zero credits");
                }
            }
            charges.push(b.charge);
        }
        Ok(charges)
    }

    /// Ends a session whose user's credits ran out (on a team store, as
    /// its login: an admin's process).
    pub(crate) fn session_end_as_system(&self, id: i64) -> Result<Session> {
        Ok(self.reading().sessions().session_close_by(id, None)?.0)
    }

    /// Stops a user's own VM whose owner's credits ran out.
    fn vm_stop_as_system(&self, vm: &str) -> Result<Vm> {
        self.vm_action_on(&self.reading(), vm, VmAction::Stop, true)
    }

    /// A billing pass now (see [`Core::bill_pass`]).
    pub fn bill_runtime_now(&self) -> Result<Vec<RuntimeCharge>> {
        self.bill_pass(Pass {
            wall: Utc::now(),
            mono: Instant::now(),
        })
    }
}
