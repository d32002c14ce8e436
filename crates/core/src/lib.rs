//! The vmdesk domain: users, projects and their VM pools, sessions, the credit
//! ledger and the event log, kept in one SQLite file shared by every vmdesk
//! process of a data directory.
//!
//! [`Core`] is the one API that the desktop app and the CLI both call. It knows
//! hypervisors and clouds only through the [`provider::Provider`] trait.

pub mod doctor;
pub mod error;
pub mod model;
pub mod provider;
pub mod settings;
pub mod team;
pub mod validate;

pub mod access;
mod billing;
mod consoles;
mod core;
mod desk;
mod embedded;
// The embedded store's file and its event log, by their short paths.
use crate::embedded::{events, store};
mod images;
mod ledger;
pub mod limits;
mod placement;
mod reach;
mod sessions;
mod sync;
pub mod templates;
mod vms;
mod worker;

pub use crate::billing::{BillingConfig, Pass, RuntimeCharge};
pub use crate::consoles::{ConsoleGrant, ConsoleInfo, PortStats};
pub use crate::core::{Core, OpenOptions};
pub use crate::desk::{cpu_percent, instant, EventQuery, VmStats};
pub use crate::error::{Error, Result};
pub use crate::ledger::quote;
pub use crate::model::*;
pub use crate::placement::{ConsolePath, HostEvent, HostView, Placement, FIRST_WRITES_MB};
pub use crate::reach::{host_key_alias, jump_host, SshTarget};
pub use crate::settings::{
    ArmLimits, AzureSettings, ConsoleSettings, HostNetwork, NetworkSettings, Settings, SyncSettings,
};
pub use crate::store::ago;
pub use crate::sync::{AddressChange, Reconciled, SeenAddress, SyncChange, REBOOT_GRACE};
pub use crate::team::{
    Billed, Billing, Consoles, Events, ImportMachine, OpenConsole, Places, Quarantine, Sessions,
    Store, Users, Vms, Work,
};
pub use crate::vms::{ProgressFn, OS_BUILTIN};
