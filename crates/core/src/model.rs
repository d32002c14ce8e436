//! The domain's records, as the API returns them (and as `--json` prints them).

use serde::{Deserialize, Serialize};
use ts_rs::TS;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, TS)]
        #[ts(export)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the database and printed in JSON.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} {:?}", stringify!($name), other)),
                }
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                v.as_str()?.parse().map_err(|e: String| rusqlite::types::FromSqlError::Other(e.into()))
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }
    };
}

string_enum! {
    /// What a user may do.
    Role { /// Everything, including other users' things.
        Admin = "admin", /// Their own things.
        User = "user" }
}

string_enum! {
    /// The state of a VM, as last known.
    VmStatus {
        /// Being created; the row exists before any provider call.
        Creating = "CREATING",
        /// Powered off.
        Stopped = "STOPPED",
        /// Being started.
        Starting = "STARTING",
        /// Powered on.
        Running = "RUNNING",
        /// Being shut down.
        Stopping = "STOPPING",
        /// Creation or start failed.
        FailedToStart = "FAILED_TO_START",
        /// Removed from its host.
        Destroyed = "DESTROYED",
        /// The host could not tell.
        Unknown = "UNKNOWN",
    }
}

string_enum! {
    /// The state of a session.
    SessionStatus {
        /// Allocated; the VM is not started yet.
        Requested = "REQUESTED",
        /// The VM is being started.
        Starting = "STARTING",
        /// The VM runs for the session's user.
        Active = "ACTIVE",
        /// The VM is being shut down.
        Terminating = "TERMINATING",
        /// Closed normally.
        Completed = "COMPLETED",
        /// Ended by force (for example the VM stopped under it).
        Terminated = "TERMINATED",
        /// Could not start.
        Failed = "FAILED",
    }
}

impl SessionStatus {
    /// The states in which a session holds its VM.
    pub const LIVE: [SessionStatus; 4] = [
        SessionStatus::Requested,
        SessionStatus::Starting,
        SessionStatus::Active,
        SessionStatus::Terminating,
    ];

    /// Whether a session in this state holds its VM.
    pub fn is_live(self) -> bool {
        Self::LIVE.contains(&self)
    }
}

string_enum! {
    /// Why a ledger entry was written.
    LedgerKind {
        /// Credits given by an administrator.
        Grant = "grant",
        /// The price of creating a VM.
        VmCreate = "vm_create",
        /// Metered running time.
        Runtime = "runtime",
        /// Credits returned.
        Refund = "refund",
        /// A correction by an administrator.
        Adjustment = "adjustment",
    }
}

string_enum! {
    /// What an event is about.
    EventType {
        /// A VM's lifecycle.
        Vm = "vm",
        /// A session's lifecycle.
        Session = "session",
        /// Credits.
        Billing = "billing",
        /// vmdesk itself (recovery, sync).
        System = "system",
        /// An administrator's action.
        Admin = "admin",
    }
}

string_enum! {
    /// How much an event matters.
    Severity {
        /// Normal operation.
        Info = "info",
        /// Something went wrong but nothing is lost.
        Warning = "warning",
        /// Needs attention.
        Critical = "critical",
    }
}

string_enum! {
    /// What kind of place VMs run in.
    HostKind {
        /// A libvirt connection URI.
        Libvirt = "libvirt",
        /// An Azure subscription.
        Azure = "azure",
    }
}

impl Default for VmStatus {
    /// What nothing is known of.
    fn default() -> Self {
        VmStatus::Unknown
    }
}

impl HostKind {
    /// The kind of host a URI names: `azure://SUBSCRIPTION[/RG,...]` is an
    /// Azure subscription, anything else a libvirt connection.
    pub fn of_uri(uri: &str) -> Self {
        if uri.starts_with("azure://") {
            HostKind::Azure
        } else {
            HostKind::Libvirt
        }
    }
}

/// What an import of a host's machines did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, TS)]
#[ts(export)]
pub struct ImportReport {
    /// The VMs made.
    pub imported: Vec<Vm>,
    /// The machines left out, and why.
    pub skipped: Vec<Skipped>,
}

/// A machine an import left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, TS)]
#[ts(export)]
pub struct Skipped {
    /// Its id on the host.
    pub machine: String,
    /// Why.
    pub reason: String,
}

/// A person who uses vmdesk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct User {
    /// Database id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// Credits left; the sum of the user's ledger entries.
    pub balance: i64,
    /// When the user was added.
    pub created_at: String,
}

/// A project, which owns a pool of VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct Project {
    /// Database id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// When it was created.
    pub created_at: String,
    /// Its cost controls, shown to users before they open a session.
    #[serde(default)]
    pub limits: ProjectLimits,
}

/// A project's cost controls, set by admins (none set: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct ProjectLimits {
    /// A session is closed this many minutes after it started (a warning
    /// 10 minutes before).
    pub max_session_minutes: Option<i64>,
    /// A session idle this long (no console open, no SSH connection, guest
    /// CPU under `idle_cpu_percent`) is warned, and closed if still idle 5
    /// minutes later.
    pub idle_minutes: Option<i64>,
    /// The guest CPU use (percent of its vCPUs) under which a session counts
    /// as idle.
    pub idle_cpu_percent: i64,
    /// Hours of sessions each user may hold in this project in any 7 days.
    pub weekly_hours: Option<i64>,
}

impl Default for ProjectLimits {
    fn default() -> Self {
        ProjectLimits {
            max_session_minutes: None,
            idle_minutes: None,
            idle_cpu_percent: DEFAULT_IDLE_CPU_PERCENT,
            weekly_hours: None,
        }
    }
}

impl ProjectLimits {
    /// These limits with some changed, as `project limits` takes them: a
    /// limit not given (`None`) is kept, 0 turns one off.
    pub fn changed(
        &self,
        max_session_minutes: Option<i64>,
        idle_minutes: Option<i64>,
        idle_cpu_percent: Option<i64>,
        weekly_hours: Option<i64>,
    ) -> ProjectLimits {
        let set = |new: Option<i64>, old: Option<i64>| match new {
            Some(0) => None,
            Some(n) => Some(n),
            None => old,
        };
        ProjectLimits {
            max_session_minutes: set(max_session_minutes, self.max_session_minutes),
            idle_minutes: set(idle_minutes, self.idle_minutes),
            idle_cpu_percent: idle_cpu_percent.unwrap_or(self.idle_cpu_percent),
            weekly_hours: set(weekly_hours, self.weekly_hours),
        }
    }
}

#[cfg(test)]
mod limits_tests {
    use super::*;

    #[test]
    fn limits_not_given_are_kept_and_zero_turns_one_off() {
        let was = ProjectLimits {
            max_session_minutes: Some(90),
            idle_minutes: Some(20),
            idle_cpu_percent: 7,
            weekly_hours: Some(3),
        };
        let now = was.changed(Some(0), None, Some(10), Some(5));
        assert_eq!(
            now,
            ProjectLimits {
                max_session_minutes: None,
                idle_minutes: Some(20),
                idle_cpu_percent: 10,
                weekly_hours: Some(5),
            }
        );
        assert_eq!(was.changed(None, None, None, None), was);
    }
}

/// The guest CPU use under which a session counts as idle, unless a project
/// says otherwise.
pub const DEFAULT_IDLE_CPU_PERCENT: i64 = 5;

/// A team's place inside a project; workspaces share the project's pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct Workspace {
    /// Database id.
    pub id: i64,
    /// Name, unique within the project.
    pub name: String,
    /// The project it belongs to.
    pub project: String,
    /// When it was created.
    pub created_at: String,
}

/// Where VMs run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct Host {
    /// Database id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// What kind of host.
    pub kind: HostKind,
    /// The libvirt URI (or the Azure subscription).
    pub uri: String,
    /// When it was added.
    pub created_at: String,
}

/// The VMs a list shows that changed since a cursor (issue 16): a change
/// refetches only these rows, not the whole list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct VmChanges {
    /// The rows changed (or new) since the cursor; every row without one.
    pub vms: Vec<Vm>,
    /// How many VMs the list holds now. A list that holds another number
    /// after merging `vms` lost some (a destroyed row removed, a VM no longer
    /// visible) and asks again without a cursor.
    #[ts(type = "number")]
    pub total: i64,
    /// What to pass next time (opaque).
    pub cursor: String,
}

/// A virtual machine known to vmdesk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct Vm {
    /// Database id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Operating system.
    pub os_type: String,
    /// Memory in MB.
    pub ram_mb: i64,
    /// Disk size in GB.
    pub disk_gb: i64,
    /// Virtual CPUs.
    pub cpu_cores: i64,
    /// The type a session can ask for.
    pub vm_type: String,
    /// Last known state.
    pub status: VmStatus,
    /// IP address, where known.
    pub ip_address: Option<String>,
    /// SSH port, where known.
    pub ssh_port: Option<i64>,
    /// Seconds the VM has run since its last start, where known.
    pub uptime_seconds: Option<i64>,
    /// Free-form metadata (merged on update).
    pub metadata: serde_json::Value,
    /// The owning user, for a user's own VM.
    pub owner: Option<String>,
    /// The owning project, for a pool VM.
    pub pool: Option<String>,
    /// The host it runs on.
    pub host: String,
    /// The id of the VM on its host (the libvirt domain name).
    pub provider_id: Option<String>,
    /// The live session holding it, if any.
    pub session_id: Option<i64>,
    /// When it was last stopped.
    pub last_stopped: Option<String>,
    /// When it was created.
    pub created_at: String,
    /// When its row last changed.
    pub updated_at: String,
    /// When its host last told its state (status sync).
    pub synced_at: Option<String>,
    /// What told it: `poll` or `event`.
    pub synced_by: Option<String>,
}

/// A user's exclusive use of one pool VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct Session {
    /// Database id.
    pub id: i64,
    /// The VM it holds.
    pub vm_id: i64,
    /// That VM's name.
    pub vm_name: String,
    /// Whose session.
    pub user: String,
    /// The project whose pool the VM is from.
    pub project: String,
    /// The workspace it was opened from, if any.
    pub workspace: Option<String>,
    /// Its state.
    pub status: SessionStatus,
    /// Why it failed or was terminated.
    pub error: Option<String>,
    /// When it was requested.
    pub created_at: String,
    /// When its row last changed.
    pub updated_at: String,
    /// When it became active.
    pub started_at: Option<String>,
    /// When it ended.
    pub ended_at: Option<String>,
}

/// One append-only line of the credit ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct LedgerEntry {
    /// Database id.
    pub id: i64,
    /// Signed amount: positive adds credits.
    pub amount: i64,
    /// Why.
    pub kind: LedgerKind,
    /// Why, in words.
    pub reason: String,
    /// The VM concerned, if any.
    pub vm_id: Option<i64>,
    /// The session concerned, if any.
    pub session_id: Option<i64>,
    /// Who wrote it.
    pub actor: String,
    /// When.
    pub created_at: String,
}

/// A user's balance and ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct CreditStatement {
    /// Whose.
    pub user: String,
    /// Credits left.
    pub balance: i64,
    /// The ledger, oldest first.
    pub entries: Vec<LedgerEntry>,
}

/// The price of a VM of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct Quote {
    /// Credits.
    pub cost: i64,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct Event {
    /// Database id.
    pub id: i64,
    /// What it is about.
    #[serde(rename = "type")]
    #[ts(rename = "type")]
    pub event_type: EventType,
    /// What happened, as a short verb phrase (`session.open`).
    pub action: String,
    /// How much it matters.
    pub severity: Severity,
    /// Who did it (a user name, or `vmdesk` for the system).
    pub actor: String,
    /// The VM concerned, if any.
    pub vm_id: Option<i64>,
    /// The session concerned, if any.
    pub session_id: Option<i64>,
    /// Structured details.
    pub details: serde_json::Value,
    /// When.
    pub created_at: String,
}

/// A project with its pool of VMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct Pool {
    /// The project.
    pub project: Project,
    /// Its workspaces.
    pub workspaces: Vec<String>,
    /// Its VMs.
    pub vms: Vec<Vm>,
}

/// What the desktop window shows: the acting user's view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct Overview {
    /// The acting user.
    pub user: User,
    /// Every project pool.
    pub pools: Vec<Pool>,
    /// The user's sessions (every user's for an admin), newest first.
    pub sessions: Vec<Session>,
}

/// What to open a session on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS, Default)]
#[ts(export)]
pub struct SessionRequest {
    /// The project whose pool to use.
    pub project: String,
    /// The workspace, if any.
    pub workspace: Option<String>,
    /// The VM type, if any.
    pub vm_type: Option<String>,
}

/// The spec of a new pool VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct NewVm {
    /// Unique name.
    pub name: String,
    /// Project whose pool it joins.
    pub pool: String,
    /// Host it runs on.
    pub host: String,
    /// Memory in MB.
    pub ram_mb: i64,
    /// Disk in GB.
    pub disk_gb: i64,
    /// Virtual CPUs.
    pub cpu_cores: i64,
    /// Type sessions can ask for.
    pub vm_type: String,
    /// Operating system.
    pub os_type: String,
}

/// The spec of a user's own VM, created for credits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct VmCreate {
    /// Unique name.
    pub name: String,
    /// Memory in MB.
    pub ram_mb: i64,
    /// Disk in GB.
    pub disk_gb: i64,
    /// Virtual CPUs.
    pub cpu_cores: i64,
    /// Operating system, from the catalog.
    pub os_type: String,
    /// The host; the only host when there is one.
    pub host: Option<String>,
    /// Start it once it exists.
    pub start: bool,
}

/// How far a VM creation has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct Progress {
    /// The VM's id.
    pub vm_id: i64,
    /// The VM's name.
    pub vm: String,
    /// Steps done so far, 0 to `steps`.
    pub step: u32,
    /// Steps in all.
    pub steps: u32,
    /// What is being done.
    pub message: String,
}

/// What can be done to a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[serde(rename_all = "lowercase")]
#[ts(export)]
pub enum VmAction {
    /// Power on.
    Start,
    /// Shut down (forced off after the shutdown timeout).
    Stop,
    /// Stop, then start.
    Restart,
    /// Power off and remove from the host.
    Destroy,
}

/// An operating system of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct OsEntry {
    /// Its name (what `--os` takes).
    pub name: String,
    /// `builtin` (no image: the VM boots to firmware) or `image` (a qcow2 disk).
    pub kind: String,
    /// The image's size in bytes (0 for a built-in).
    pub bytes: i64,
    /// The least memory it boots with, in MB; a creation below it is refused.
    pub min_ram_mb: i64,
    /// The least disk it needs, in GB; a creation below it is refused.
    pub min_disk_gb: i64,
    /// Whether it boots an operating system (`blank` boots to firmware only).
    pub boots: bool,
}

/// What a creation costs now, and what the VM costs to run: the core's
/// answer to the launch form, so the window never repeats a formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct Price {
    /// Credits charged at creation.
    pub cost: i64,
    /// Thousandths of a credit charged per hour of running
    /// (`billing.hourly_percent` of `cost`).
    pub hourly_milli: i64,
}

/// A machine kept stopped because it carries this data directory's mark but
/// has no VM row; `vmdesk recover --purge` deletes it after a grace period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TS)]
#[ts(export)]
pub struct Quarantined {
    /// The host it is on.
    pub host: String,
    /// Its name there.
    pub machine: String,
    /// When recovery found it.
    pub found_at: String,
}
