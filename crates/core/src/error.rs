//! Errors of the core API. Each has a stable [`Error::code`] so that the
//! frontend and scripts act on the code, never on the wording.

use std::path::PathBuf;

use crate::provider::ProviderError;

/// Result of a core operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a core operation did nothing.
#[derive(Debug, displaydoc::Display, thiserror::Error)]
pub enum Error {
    /// {0}
    Invalid(String),
    /// no user named "{0}"
    UnknownUser(String),
    /// no project named "{0}"
    UnknownProject(String),
    /// project "{project}" has no workspace named "{workspace}"
    UnknownWorkspace {
        /// The project searched.
        project: String,
        /// The workspace asked for.
        workspace: String,
    },
    /// no host named "{0}"
    UnknownHost(String),
    /// no VM named "{0}"
    UnknownVm(String),
    /// no session with id {0}
    UnknownSession(i64),
    /// a {kind} named "{name}" already exists
    AlreadyExists {
        /// What kind of thing.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// only an administrator may {0}
    AdminOnly(&'static str),
    /// user "{user}" may not {action}
    Forbidden {
        /// Who tried.
        user: String,
        /// What they tried.
        action: String,
    },
    /// project "{0}" has no VMs in its pool
    PoolEmpty(String),
    /// {0}
    NoRoom(String),
    /// all {total} VMs of project "{project}" are in use
    AllInUse {
        /// The project.
        project: String,
        /// How many VMs its pool has (of the type asked for).
        total: u64,
    },
    /// project "{project}" has no VM of type "{vm_type}"
    NoVmOfType {
        /// The project.
        project: String,
        /// The type asked for.
        vm_type: String,
    },
    /// no VM of project "{project}" is ready: {busy} in use, {not_ready} neither stopped nor running
    NoneReady {
        /// The project.
        project: String,
        /// VMs in a live session.
        busy: u64,
        /// VMs in another state (creating, failed, unknown, ...).
        not_ready: u64,
    },
    /// not enough credits: the cost is {cost} but the balance of "{user}" is {balance}
    InsufficientCredits {
        /// Whose balance.
        user: String,
        /// What it would cost.
        cost: i64,
        /// What the user has.
        balance: i64,
    },
    /// an adjustment of {amount} would take the balance of "{user}" below zero: it is {balance}
    BelowZero {
        /// Whose balance.
        user: String,
        /// The adjustment asked for.
        amount: i64,
        /// What the user has.
        balance: i64,
    },
    /// the creation charge of VM "{vm}" cannot be refunded: {why}
    NotRefundable {
        /// The VM.
        vm: String,
        /// Why not.
        why: String,
    },
    /// the weekly quota of project "{project}" is used up: {used_minutes} min of {hours} h held in the last 7 days
    QuotaUsed {
        /// The project.
        project: String,
        /// Its weekly hours.
        hours: i64,
        /// What the user held in the last 7 days, in minutes.
        used_minutes: i64,
    },
    /// session {id} is {status} and cannot be {action}
    SessionState {
        /// The session.
        id: i64,
        /// Its status.
        status: String,
        /// What was asked.
        action: &'static str,
    },
    /// the console port pool {start}-{end} is exhausted: all {total} ports are allocated
    PortPoolExhausted {
        /// First port of the pool.
        start: u16,
        /// Last port of the pool.
        end: u16,
        /// How many ports it has.
        total: u32,
    },
    /// the console cannot be opened: {0}
    ConsoleUnavailable(String),
    /// the console refused the connection: {0}
    ConsoleRefused(String),
    /// host "{host}" failed
    Provider {
        /// The host that failed.
        host: String,
        /// What it said.
        #[source]
        source: ProviderError,
    },
    /// the database failed
    Db(#[from] rusqlite::Error),
    /// the database failed: {0}
    Batch(String),
    /// the database schema could not be brought up to date
    Migration(#[from] rusqlite_migration::Error),
    /// the database was written by a newer vmdesk (schema version {found}; this build knows up to {supported}); open it with that version or a newer one
    DatabaseTooNew {
        /// The schema version of the file.
        found: i64,
        /// The newest schema version this build knows.
        supported: usize,
    },
    /// the data directory is busy: {holder} has held its write lock for more than {secs} s
    Busy {
        /// Who holds the lock ("process 1234").
        holder: String,
        /// How long this writer waited.
        secs: f64,
    },
    /// {0} is not available on a team store yet
    NotOnTeamStore(&'static str),
    /// the team store failed: {0}
    Store(String),
    /// cannot use the data directory {path}
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid_input",
            Error::UnknownUser(_) => "unknown_user",
            Error::UnknownProject(_) => "unknown_project",
            Error::UnknownWorkspace { .. } => "unknown_workspace",
            Error::UnknownHost(_) => "unknown_host",
            Error::UnknownVm(_) => "unknown_vm",
            Error::UnknownSession(_) => "unknown_session",
            Error::AlreadyExists { .. } => "already_exists",
            Error::AdminOnly(_) => "admin_only",
            Error::Forbidden { .. } => "forbidden",
            Error::PoolEmpty(_) => "pool_empty",
            Error::NoRoom(_) => "no_room",
            Error::AllInUse { .. } => "all_in_use",
            Error::NoVmOfType { .. } => "no_vm_of_type",
            Error::NoneReady { .. } => "none_ready",
            Error::InsufficientCredits { .. } => "insufficient_credits",
            Error::BelowZero { .. } => "below_zero",
            Error::QuotaUsed { .. } => "quota_used",
            Error::NotRefundable { .. } => "not_refundable",
            Error::SessionState { .. } => "session_state",
            Error::PortPoolExhausted { .. } => "port_pool_exhausted",
            Error::ConsoleUnavailable(_) => "console_unavailable",
            Error::ConsoleRefused(_) => "console_refused",
            Error::Provider { .. } => "provider",
            Error::Db(_) | Error::Batch(_) => "database",
            Error::Migration(_) => "database",
            Error::DataDir { .. } => "data_dir",
            Error::DatabaseTooNew { .. } => "database_too_new",
            Error::Busy { .. } => "busy",
            Error::NotOnTeamStore(_) => "not_on_team_store",
            Error::Store(_) => "database",
        }
    }

    /// The message and every cause, joined into one line.
    pub fn one_line(&self) -> String {
        let mut line = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            line.push_str(": ");
            line.push_str(&c.to_string());
            cause = c.source();
        }
        line
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}
