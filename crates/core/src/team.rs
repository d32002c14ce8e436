//! What core asks of a store of the shared data: one trait per domain, and
//! [`Store`], all of them together. A store acts as one user (its
//! [`Users::login`]) and holds the invariants itself; core keeps the
//! orchestration (hosts, workers, waits) and calls the store at each step.
//!
//! Both stores implement them all: the team store (crates/postgres), where
//! who acts is its login and the database enforces what they may do, and
//! the embedded store (`crate::embedded`), the data directory's SQLite
//! file. Core's domain files reach a store only through these traits (see
//! `Core::acting` and `Core::reading`). An operation the team store does
//! not offer answers [`Error::NotOnTeamStore`] in team mode instead of
//! touching the desk's own file, so a team desk never mixes the two.

use crate::error::{Error, Result};
use crate::model::*;
use crate::Core;

/// What a host said of a machine: its power state, or why it could not say.
pub type Observed =
    std::result::Result<crate::provider::PowerState, crate::provider::ProviderError>;

/// A store of the shared data: every domain's operations, acting as one
/// user ([`Users::login`]). Refusals are the same [`Error`]s on every store.
pub trait Store:
    Users + Places + Sessions + Vms + Events + Work + Consoles + Billing + Quarantine
{
}

impl<T> Store for T where
    T: Users + Places + Sessions + Vms + Events + Work + Consoles + Billing + Quarantine + ?Sized
{
}

/// An image of the desk's own OS catalog, as its store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogImage {
    /// Its name in the catalog.
    pub name: String,
    /// Its file in the data directory's image folder.
    pub file: String,
    /// Its size.
    pub bytes: i64,
    /// Its SHA-256 (none for an image imported before it was recorded).
    pub sha256: Option<String>,
    /// The least memory it boots with (none: the general minimum).
    pub min_ram_mb: Option<i64>,
    /// The least disk it boots with (none: the general minimum).
    pub min_disk_gb: Option<i64>,
}

/// The desk's own OS catalog: images are files of the desk's data
/// directory, so the catalog is the desk's in both modes (the embedded
/// store keeps it, on a team desk too).
pub trait Catalog: Send + Sync {
    /// The imported images, by name.
    fn os_images(&self) -> Result<Vec<CatalogImage>>;

    /// Records an imported image, with its event by `actor`.
    fn os_add(&self, actor: &str, image: &CatalogImage) -> Result<()>;

    /// Forgets an imported image, with its event by `actor`.
    fn os_remove(&self, actor: &str, name: &str) -> Result<()>;

    /// Sets an image's least memory and disk (`was`: before), with its event.
    fn os_minimum(&self, actor: &str, name: &str, now: (i64, i64), was: (i64, i64)) -> Result<()>;
}

/// Every store trait in scope, unnamed: `use vmdesk_core::team::prelude::*`
/// to call a store's methods.
pub mod prelude {
    pub use super::{
        Billing as _, Consoles as _, Events as _, Places as _, Quarantine as _, Sessions as _,
        Store as _, Users as _, Vms as _, Work as _,
    };
}

/// Who acts, the users, and their credits.
pub trait Users: Send + Sync {
    /// The login this store acts as.
    fn login(&self) -> &str;

    /// A description for headers and logs ("ann @ db.example:5432/vmdesk").
    fn describe(&self) -> String;

    /// The login's user.
    fn whoami(&self) -> Result<User>;

    /// A user by name (oneself, or anyone for an admin).
    fn user(&self, name: &str) -> Result<User>;

    /// Adds a user and its login; `password` None makes a login without one
    /// (certificate authentication, or an existing login of the cluster).
    fn user_add(&self, name: &str, admin: bool, password: Option<&str>) -> Result<User>;

    /// Every user (admin).
    fn user_list(&self) -> Result<Vec<User>>;

    /// Makes a user admin or plain user (admin); never the last admin away.
    fn user_role(&self, name: &str, role: Role) -> Result<User>;

    /// Grants credits (admin); returns the user's statement after it.
    fn credits_grant(&self, to: &str, amount: i64, reason: &str) -> Result<CreditStatement>;

    /// Takes credits if the balance covers them, in one step (oneself, or anyone for an admin).
    fn charge(
        &self,
        from: &str,
        amount: i64,
        kind: LedgerKind,
        reason: &str,
    ) -> Result<LedgerEntry>;

    /// A user's balance and ledger (oneself, or anyone for an admin).
    fn credits_show(&self, of: &str) -> Result<CreditStatement>;

    /// Adds `amount` (negative: takes) to a user's balance as an
    /// `adjustment` entry, never below zero (admin only).
    fn credits_adjust(&self, to: &str, amount: i64, reason: &str) -> Result<CreditStatement>;

    /// Gives back the creation charge of a VM whose creation failed, as a
    /// `refund` entry linked to the VM; once only (admin only).
    fn credits_refund(&self, vm: i64, reason: &str) -> Result<LedgerEntry>;

    /// Publishes the login's SSH public key, so that whichever desk starts
    /// its VMs writes it into their seeds. The embedded store's users are
    /// all on this desk, whose data directory holds their keys: nothing to
    /// publish there.
    fn ssh_key_publish(&self, public: &str) -> Result<()> {
        let _ = public;
        Ok(())
    }

    /// The SSH public key `user` published (their own, or any for an admin).
    fn ssh_key_of(&self, user: &str) -> Result<Option<String>> {
        let _ = user;
        Ok(None)
    }
}

/// Hosts, projects and workspaces, and the store's install id.
pub trait Places: Send + Sync {
    /// Adds a host (admin); the caller has checked that it answers.
    fn host_add(&self, name: &str, kind: HostKind, uri: &str) -> Result<Host>;

    /// A host by name.
    fn host(&self, name: &str) -> Result<Host>;

    /// Every host.
    fn host_list(&self) -> Result<Vec<Host>>;

    /// The memory (MB) held on each host by the VMs that run there or are
    /// on their way (CREATING, STARTING, RUNNING, STOPPING), whoever owns
    /// them: what placement subtracts from a host's memory. Any user may
    /// read these sums, not the VMs behind them.
    fn host_memory(&self) -> Result<Vec<(String, i64)>>;

    /// Creates a project (admin).
    fn project_create(&self, name: &str) -> Result<Project>;

    /// Creates a workspace in a project (admin).
    fn workspace_create(&self, name: &str, project: &str) -> Result<Workspace>;

    /// The store's install id: it marks the store's machines on hosts,
    /// whichever desk made them.
    fn install_id(&self) -> Result<String>;

    /// Projects with their workspaces' names, by name.
    fn projects(&self) -> Result<Vec<(Project, Vec<String>)>>;

    /// Sets a project's cost controls (admin).
    fn project_limits_set(&self, project: &str, limits: &ProjectLimits) -> Result<Project>;

    /// Renames a project (admin).
    fn project_rename(&self, name: &str, new: &str) -> Result<Project>;

    /// Deletes a project with no VMs and no sessions, and its workspaces
    /// (admin).
    fn project_delete(&self, name: &str) -> Result<()>;

    /// Renames a workspace of a project (admin).
    fn workspace_rename(&self, project: &str, name: &str, new: &str) -> Result<Workspace>;

    /// Deletes a workspace no session was ever in (admin).
    fn workspace_delete(&self, project: &str, name: &str) -> Result<()>;
}

/// Pool sessions: allocation and each step of their life.
pub trait Sessions: Send + Sync {
    /// Allocates a session (REQUESTED) on a free VM of the pool.
    fn session_open(&self, req: &SessionRequest, worker: Option<&str>) -> Result<Session>;

    /// Asks a session to end (TERMINATING; a REQUESTED one is cancelled).
    fn session_close(&self, id: i64) -> Result<Session> {
        Ok(self.session_close_by(id, None)?.0)
    }

    /// The login's sessions; `all`: everyone's (admin).
    fn session_list(&self, all: bool) -> Result<Vec<Session>>;

    /// A session the login may see.
    fn session(&self, id: i64) -> Result<Session>;

    /// Closes a session (see `vmdesk.session_close`); with `worker`, the
    /// caller drives the shutdown and the flag says whether it must.
    fn session_close_by(&self, id: i64, worker: Option<&str>) -> Result<(Session, bool)>;

    /// REQUESTED → STARTING, claimed by `worker` when it opened it.
    fn session_starting(&self, id: i64, worker: &str) -> Result<Session>;

    /// STARTING → ACTIVE: the VM runs.
    fn session_started(&self, id: i64, machine: &str) -> Result<Session>;

    /// The start failed: FAILED, the VM as observed.
    fn session_start_failed(&self, id: i64, reason: &str, vm_status: VmStatus) -> Result<()>;

    /// The shutdown is under way; the guest is forced off at `force_off_at`.
    fn session_stopping(&self, id: i64, force_off_at: &str) -> Result<()>;

    /// TERMINATING → `end`: the VM is off.
    fn session_ended(&self, id: i64, end: SessionStatus, forced_off: bool) -> Result<Session>;

    /// The shutdown failed: left TERMINATING for a later try.
    fn session_close_failed(&self, id: i64, reason: &str) -> Result<()>;

    /// ACTIVE sessions of projects with a session length or idle limit,
    /// with what the limits need (admin; the system).
    fn sessions_limited(&self) -> Result<Vec<crate::limits::LimitedSession>>;

    /// Writes what enforcing the limits found of a session: since when it
    /// has been idle, a warning given (an event), a limit reached (an
    /// event) (admin; the system).
    fn session_limit_mark(&self, id: i64, mark: &crate::limits::LimitMark) -> Result<()>;
}

/// VMs, pools' and users' own: creation, actions, state and metadata.
pub trait Vms: Send + Sync {
    /// VMs the login may see: pools' and its own; `all`: everyone's (admin).
    fn vm_list(&self, all: bool) -> Result<Vec<Vm>>;

    /// A VM the login may see, by id or name.
    fn vm(&self, reference: &str) -> Result<Vm>;

    /// A pool VM (admin), CREATING while `worker` defines `machine` on its host.
    fn vm_add(&self, spec: &NewVm, machine: &str, worker: &str) -> Result<Vm>;

    /// Settles [`Vms::vm_add`]: ready (STOPPED) or gone, with the event's details.
    fn vm_add_done(&self, id: i64, ok: bool, details: serde_json::Value) -> Result<()>;

    /// A VM of the login's own, charged at the database's price in the
    /// same transaction; CREATING until provisioned.
    fn vm_create(&self, spec: &VmCreate, machine: &str, worker: Option<&str>) -> Result<Vm>;

    /// Claims a CREATING VM nobody provisions for `worker`; whether it did.
    fn vm_claim(&self, id: i64, worker: &str) -> Result<bool>;

    /// Whether a VM being created is to be started.
    fn vm_start_after_create(&self, id: i64) -> Result<bool>;

    /// A creation's end: the state the machine is in, or why it failed.
    fn vm_created(&self, id: i64, outcome: std::result::Result<VmStatus, String>) -> Result<Vm>;

    /// Checks a VM action (owner or admin) and marks a stop or destroy
    /// STOPPING; returns the VM as it was.
    fn vm_action_begin(&self, id: i64, action: VmAction, force_off_at: &str) -> Result<Vm>;

    /// The action is done: the VM is `now`. `as_system`: the system itself
    /// acted (billing at zero credits), through an admin's process.
    fn vm_action_done(
        &self,
        id: i64,
        action: VmAction,
        was: VmStatus,
        now: VmStatus,
        forced_off: bool,
        as_system: bool,
    ) -> Result<()>;

    /// The action failed: the VM is back as it `was`.
    fn vm_action_undo(&self, id: i64, was: VmStatus) -> Result<()>;

    /// The rows of `vm_list(all)` changed since `since` (a cursor of an
    /// earlier answer; none: every row), the number of rows and the next
    /// cursor, read at one point in time. Every writer bumps a row's change
    /// number (the stores' triggers), renames of what a row shows by name too.
    fn vm_changes(&self, all: bool, since: Option<&str>) -> Result<VmChanges>;

    /// Own VMs whose owner chose idle shutdown (metadata
    /// [`crate::limits::IDLE_STOP`]) that are RUNNING, each with whether a console of
    /// it is open on any desk (admin).
    fn vms_idle_watched(&self) -> Result<Vec<(Vm, bool)>>;

    /// The VMs held by ACTIVE sessions, by host (admin): the fast sync's.
    fn vm_list_active(&self) -> Result<Vec<Vm>>;

    /// The live VM of a machine on the host at `uri`, if vmdesk has one (admin).
    fn vm_by_machine(&self, uri: &str, machine: &str) -> Result<Option<Vm>>;

    /// Writes what hosts said of VMs' machines (admin), each re-checked
    /// against its row (a transition that began since is left alone);
    /// returns what changed.
    fn vms_synced(
        &self,
        seen: Vec<(i64, Observed)>,
        source: &str,
    ) -> Result<Vec<crate::SyncChange>>;

    /// Writes the addresses hosts gave of VMs' machines (admin): each seen
    /// `(vm id, IPv4 address or none, SSH port)` that differs from its row
    /// is written, with a `vm.address` event saying what told it
    /// (`learned`: lease, agent, arp; none when it went away) and which
    /// pass (`source`). Returns what changed.
    fn vm_addresses(
        &self,
        seen: Vec<crate::SeenAddress>,
        source: &str,
    ) -> Result<Vec<crate::AddressChange>>;

    /// Adopts machines of a host as VMs of a pool (admin); known machines
    /// are passed over.
    fn vm_import(&self, host: &str, pool: &str, machines: &[ImportMachine])
        -> Result<ImportReport>;

    /// Merges `patch` (an object of strings) into a VM's metadata (its owner
    /// or an admin).
    fn vm_meta(&self, vm: &str, patch: &serde_json::Value) -> Result<Vm>;
}

/// The event log.
pub trait Events: Send + Sync {
    /// The newest events the login may see, newest first.
    fn events(&self, limit: i64) -> Result<Vec<Event>>;

    /// Events the login may see, filtered (`q`) and, with `vm`, of one VM;
    /// newest first.
    fn events_query(&self, q: &crate::EventQuery, vm: Option<i64>) -> Result<Vec<Event>>;

    /// A system event about an own VM that its owner sees
    /// (`vm.idle_warning`, `vm.idle_stop`): through an admin's process.
    fn owner_note(
        &self,
        action: &str,
        severity: Severity,
        vm: i64,
        details: serde_json::Value,
    ) -> Result<()>;

    /// A system event through an admin's process (serve.lead, clock.jump).
    fn system_note(
        &self,
        action: &str,
        severity: Severity,
        details: serde_json::Value,
    ) -> Result<()>;

    /// A refused or failed action of the login's own, as a warning event.
    fn note_failure(&self, action: &str, vm: Option<i64>, details: serde_json::Value)
        -> Result<()>;
}

/// Workers: who lives, pending and claimed work, and recovery of a dead worker's.
pub trait Work: Send + Sync {
    /// Marks this process's `worker` alive for every desk while its
    /// connection lives (and again after a reconnection).
    fn register_worker(&self, worker: &str) -> Result<()>;

    /// Whether another process's worker lives (on any desk).
    fn worker_alive(&self, worker: &str) -> Result<bool>;

    /// Claims the oldest creation or session waiting for a worker (admin):
    /// its kind ("vm" or "session"), id and status.
    fn claim_pending(&self, worker: &str) -> Result<Option<(String, i64, String)>>;

    /// Work claimed and not finished (admin): kind, id, worker.
    fn claimed_work(&self) -> Result<Vec<(String, i64, String)>>;

    /// Takes over a dead worker's work for `me` (admin); whether it did.
    fn reclaim(&self, kind: &str, id: i64, dead: &str, me: &str) -> Result<bool>;

    /// A creation whose creator died is FAILED_TO_START (admin).
    fn recovered_vm(&self, id: i64, me: &str, dead: &str, machine: &str) -> Result<()>;

    /// A session whose worker died is settled by its VM's state (admin).
    fn recovered_session(&self, id: i64, me: &str, dead: &str, vm_status: VmStatus) -> Result<()>;

    /// The `vmdesk serve` that leads now, if one does: its host, pid and
    /// since when.
    fn serve_leader(&self) -> Result<Option<(String, i32, String)>>;
}

/// Console ports and their tokens.
pub trait Consoles: Send + Sync {
    /// Reserves a port of `desk`'s console pool for a VM the login may see
    /// running, with its token's hash; the port and the VM.
    #[allow(clippy::too_many_arguments)]
    fn console_reserve(
        &self,
        desk: &str,
        vm: &str,
        range: (u16, u16),
        skip: &[u16],
        worker: &str,
        token_hash: &str,
        expires_at: &str,
    ) -> Result<(u16, Vm)>;

    /// Spends a console's token (its hash; empty: none was given). Then
    /// the VM, or why the console was closed instead: its opener may no
    /// longer see it, or it no longer runs.
    fn console_redeem(
        &self,
        desk: &str,
        port: u16,
        token_hash: &str,
    ) -> Result<std::result::Result<Vm, Error>>;

    /// Returns a port to `desk`'s pool; whether it was taken. `recovery`:
    /// freed because the process serving it is gone.
    fn console_release(&self, desk: &str, port: u16, reason: &str, recovery: bool) -> Result<bool>;

    /// `desk`'s open consoles the login may see.
    fn consoles(&self, desk: &str) -> Result<Vec<OpenConsole>>;
}

/// Charging running time.
pub trait Billing: Send + Sync {
    /// The VMs with running time to charge (admin).
    fn billable_vms(&self) -> Result<Vec<i64>>;

    /// Charges a VM's running time up to `now` (admin), in one transaction
    /// that also moves its billed-until mark; `observed` caps the seconds.
    fn bill_vm(
        &self,
        id: i64,
        now: chrono::DateTime<chrono::Utc>,
        observed: Option<i64>,
        cfg: crate::BillingConfig,
    ) -> Result<Option<Billed>>;
}

/// Marked machines without a VM row.
pub trait Quarantine: Send + Sync {
    /// Whether a machine on a host has a live VM row, and whether it is
    /// quarantined (admin).
    fn machine_known(&self, host: &str, machine: &str) -> Result<(bool, bool)>;

    /// Quarantines a marked machine without a row (admin); false if it has
    /// one or was quarantined already.
    fn quarantine_add(&self, host: &str, machine: &str, powered_off: bool) -> Result<bool>;

    /// Forgets a host's quarantined machines that are no longer among its
    /// `marked` ones, or that have a row again (admin).
    fn quarantine_keep(&self, host: &str, marked: &[String]) -> Result<()>;

    /// The quarantined machines, oldest first (admin).
    fn quarantined(&self) -> Result<Vec<Quarantined>>;

    /// A quarantined machine was deleted from its host (admin).
    fn quarantine_purged(&self, host: &str, machine: &str) -> Result<()>;
}

/// A host's machine as an import offers it to the team store: the names it
/// may take (valid ones, best first), its type (none: no valid one), size
/// and state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImportMachine {
    /// Its id on the host.
    pub machine: String,
    /// Its name on the host.
    pub name: String,
    /// The vmdesk names it may take, best first.
    pub names: Vec<String>,
    /// Its vmdesk type, if valid.
    pub vm_type: Option<String>,
    /// The host's name of its size.
    pub size: String,
    /// Operating system.
    pub os_type: String,
    /// Memory in MB.
    pub ram_mb: i64,
    /// OS disk in GB.
    pub disk_gb: i64,
    /// Virtual CPUs.
    pub cpu_cores: i64,
    /// Its state now.
    pub status: VmStatus,
}

/// An open console of a desk on a team store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenConsole {
    /// Its port on the desk.
    pub port: u16,
    /// The VM it shows.
    pub vm: String,
    /// Who opened it.
    pub user: String,
    /// Since when.
    pub since: String,
    /// The desk process serving it.
    pub worker: String,
}

/// One VM's charge on a team store, and what is to follow at zero credits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Billed {
    /// The charge.
    pub charge: crate::RuntimeCharge,
    /// The session to end (the user's credits ran out).
    pub end_session: Option<i64>,
    /// Whether the VM (the user's own) is to be stopped.
    pub stop_vm: bool,
}

/// The store a call acts on, as the user it acts as: the team store (as its
/// login) or the embedded one (as the actor the caller named, or the system).
/// Each accessor gives one domain's trait of it.
pub(crate) enum Acting<'a> {
    Team(&'a dyn Store),
    Embedded(crate::embedded::Embedded<'a>),
}

impl<'a> Acting<'a> {
    /// The store, as every domain's trait at once.
    pub(crate) fn all(&self) -> &(dyn Store + 'a) {
        match self {
            Acting::Team(t) => *t,
            Acting::Embedded(e) => e,
        }
    }

    pub(crate) fn users(&self) -> &dyn Users {
        self.all()
    }

    pub(crate) fn places(&self) -> &dyn Places {
        self.all()
    }

    pub(crate) fn events(&self) -> &dyn Events {
        self.all()
    }

    pub(crate) fn billing(&self) -> &dyn Billing {
        self.all()
    }

    pub(crate) fn consoles(&self) -> &dyn Consoles {
        self.all()
    }

    pub(crate) fn sessions(&self) -> &dyn Sessions {
        self.all()
    }

    pub(crate) fn work(&self) -> &dyn Work {
        self.all()
    }

    pub(crate) fn vms(&self) -> &dyn Vms {
        self.all()
    }

    pub(crate) fn quarantine(&self) -> &dyn Quarantine {
        self.all()
    }
}

impl Core {
    /// The team store, when this core works on one.
    pub fn team(&self) -> Option<&dyn Store> {
        self.opts.team.as_deref()
    }

    /// In team mode, the acting user is the store's login: `actor` must name it.
    pub(crate) fn team_as(&self, actor: &str) -> Result<Option<&dyn Store>> {
        match self.team() {
            None => Ok(None),
            Some(t) if t.login() == actor => Ok(Some(t)),
            Some(t) => Err(Error::Forbidden {
                user: actor.to_owned(),
                action: format!(
                    "act on the team store, whose login is {:?} (on a team store you are your login)",
                    t.login()
                ),
            }),
        }
    }

    /// The store, acting as `actor` (in team mode `actor` must be the
    /// store's login: see [`Core::team_as`]).
    pub(crate) fn acting<'a>(&'a self, actor: &'a str) -> Result<Acting<'a>> {
        Ok(match self.team_as(actor)? {
            Some(t) => Acting::Team(t),
            None => Acting::Embedded(crate::embedded::Embedded {
                core: self,
                actor,
                system: false,
            }),
        })
    }

    /// The store for reads that check no actor (a host or a user by name):
    /// the team store as its login, the embedded one as the system.
    pub(crate) fn reading(&self) -> Acting<'_> {
        match self.team() {
            Some(t) => Acting::Team(t),
            None => Acting::Embedded(crate::embedded::Embedded {
                core: self,
                actor: crate::core::SYSTEM,
                system: true,
            }),
        }
    }

    /// The desk's own OS catalog (in its data directory, in both modes).
    pub(crate) fn catalog(&self) -> crate::embedded::Embedded<'_> {
        crate::embedded::Embedded {
            core: self,
            actor: crate::core::SYSTEM,
            system: true,
        }
    }

    /// Refuses, in team mode, an operation the team store does not offer yet.
    pub(crate) fn embedded_only(&self, what: &'static str) -> Result<()> {
        match self.team() {
            None => Ok(()),
            Some(_) => Err(Error::NotOnTeamStore(what)),
        }
    }
}
