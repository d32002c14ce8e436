//! [`Core`]: the API shared by the desktop app and the CLI.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::json;

use crate::error::{Error, Result};
use crate::model::*;
use crate::provider::{MachineSpec, PowerState, Provider, ProviderFactory};
use crate::store::{self};
use crate::validate;
use crate::worker::Worker;

/// How a [`Core`] is opened.
#[derive(Clone)]
pub struct OpenOptions {
    /// The data directory (database, worker locks).
    pub data_dir: PathBuf,
    /// Makes the provider of each host.
    pub providers: Arc<dyn ProviderFactory>,
    /// How long a VM may take to start.
    pub start_timeout: Duration,
    /// How long a guest may take to shut down before it is forced off.
    pub shutdown_timeout: Duration,
    /// Called after every change this process commits (the app pushes it to the window).
    pub on_change: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Metered billing of running time.
    pub billing: crate::billing::BillingConfig,
    /// How long a VM seen off under an active session has to come back.
    pub reboot_grace: Duration,
    /// How long a write waits for another process's write lock.
    pub lock_wait: Duration,
    /// The shared store to work on instead of the data directory's own
    /// (team mode); the data directory then keeps only this desk's things.
    pub team: Option<Arc<dyn crate::team::Store>>,
    /// VM networks and SSH ports, per host (`[network]` of the settings).
    pub network: crate::settings::NetworkSettings,
}

impl OpenOptions {
    /// Options with the default timeouts.
    pub fn new(data_dir: impl Into<PathBuf>, providers: Arc<dyn ProviderFactory>) -> Self {
        Self {
            data_dir: data_dir.into(),
            providers,
            start_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(60),
            on_change: None,
            billing: Default::default(),
            reboot_grace: crate::sync::REBOOT_GRACE,
            lock_wait: store::LOCK_WAIT,
            team: None,
            network: Default::default(),
        }
    }
}

/// The vmdesk API over one data directory.
pub struct Core {
    pub(crate) conn: Mutex<store::Db>,
    pub(crate) opts: OpenOptions,
    pub(crate) install_id: String,
    /// This desk (its data directory's own install id): on a team store it
    /// keys the desk's console ports.
    pub(crate) desk: String,
    worker: OnceLock<Worker>,
    pub(crate) alloc: crate::embedded::sessions::AllocQueue,
    /// The wall and monotonic clocks at this process's last billing pass.
    pub(crate) last_bill: Mutex<Option<crate::billing::Pass>>,
    /// What the cost controls saw of each VM's CPU at the previous pass.
    pub(crate) activity: crate::limits::LiveProbe,
    /// Pool VMs seen running with no session, and since when (this process).
    pub(crate) orphans: Mutex<std::collections::HashMap<i64, chrono::DateTime<chrono::Utc>>>,
    /// What idle shutdown has seen of own VMs whose owners chose it.
    pub(crate) own_idle: Mutex<std::collections::HashMap<i64, crate::limits::IdleCount>>,
}

impl Drop for Core {
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::debug!(error = %e.one_line(), "checkpoint on close");
        }
    }
}

/// The system's own name in events.
pub(crate) const SYSTEM: &str = "vmdesk";

/// The system itself as an actor (billing at zero credits, status sync): it
/// may do what an admin may, whoever the admins are. Never a row of `users`
/// (that name is refused to users), so nobody can act as it.
pub(crate) fn system_actor() -> User {
    User {
        id: 0,
        name: SYSTEM.to_owned(),
        role: Role::Admin,
        balance: 0,
        created_at: String::new(),
    }
}

/// The details of a `vm.add` event.
fn add_details(vm: &Vm, pool: &str) -> serde_json::Value {
    json!({"vm": vm.name, "pool": pool, "host": vm.host, "machine": vm.provider_id,
           "ram_mb": vm.ram_mb, "disk_gb": vm.disk_gb, "cpu_cores": vm.cpu_cores,
           "vm_type": vm.vm_type, "os_type": vm.os_type})
}

impl Core {
    /// Opens a data directory, creating and migrating its database as needed,
    /// then settles work that a crashed process left behind.
    pub fn open(opts: OpenOptions) -> Result<Core> {
        let mut conn = store::open(&opts.data_dir)?;
        conn.set_lock_wait(opts.lock_wait);
        let desk = crate::embedded::own_install_id(&mut conn, &opts.data_dir)?;
        let install_id = match &opts.team {
            // The team's machines carry the store's mark, whichever desk made them.
            Some(t) => t.install_id()?,
            None => desk.clone(),
        };
        let core = Core {
            conn: Mutex::new(conn),
            opts,
            install_id,
            desk,
            worker: OnceLock::new(),
            alloc: Default::default(),
            last_bill: Mutex::new(None),
            activity: crate::limits::LiveProbe::default(),
            orphans: Mutex::new(std::collections::HashMap::new()),
            own_idle: Mutex::new(std::collections::HashMap::new()),
        };
        core.recover()?;
        Ok(core)
    }

    /// This data directory's install id (it marks its machines on hosts).
    pub fn install_id(&self) -> &str {
        &self.install_id
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.opts.data_dir
    }

    /// Moves the write-ahead log into the database file (see the embedded store's `store::checkpoint`).
    pub fn checkpoint(&self) -> Result<()> {
        store::checkpoint(&self.opts.data_dir)
    }

    /// Checkpoints if the write-ahead log has grown past `max_bytes`; a cheap
    /// call for a background thread to make often. Returns whether it did.
    pub fn checkpoint_if_over(&self, max_bytes: u64) -> Result<bool> {
        let wal = self.opts.data_dir.join(format!("{}-wal", store::DB_FILE));
        let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if size <= max_bytes {
            return Ok(false);
        }
        self.checkpoint()?;
        Ok(true)
    }

    /// A number that changes whenever another process commits to the database
    /// (SQLite's `data_version`); a cheap way to notice their changes.
    pub fn data_version(&self) -> Result<i64> {
        crate::embedded::data_version(&self.db())
    }

    /// This process's worker id, registering it on first use.
    pub(crate) fn worker_id(&self) -> Result<&str> {
        if let Some(w) = self.worker.get() {
            return Ok(w.id());
        }
        let w = Worker::register(&self.opts.data_dir)?;
        let id = self.worker.get_or_init(|| w).id();
        // On a team store other desks (and serve) tell it alive by the
        // store, not by files.
        self.reading().work().register_worker(id)?;
        Ok(id)
    }

    pub(crate) fn worker_alive(&self, id: &str) -> bool {
        if self.worker.get().is_some_and(|w| w.id() == id) {
            return true;
        }
        // When the store cannot say, the worker is taken for alive: its
        // work is left alone rather than taken from it.
        self.reading().work().worker_alive(id).unwrap_or(true)
    }

    pub(crate) fn provider(&self, host_name: &str) -> Result<Arc<dyn Provider>> {
        let h = self.reading().places().host(host_name)?;
        // A row written by an older version, or by hand, is held to today's rules.
        validate::uri(&h.uri)?;
        self.opts
            .providers
            .connect(&h)
            .map_err(|source| Error::Provider {
                host: h.name.clone(),
                source,
            })
    }

    pub(crate) fn machine_spec(&self, vm: &Vm) -> MachineSpec {
        MachineSpec {
            machine_name: vm
                .provider_id
                .clone()
                .unwrap_or_else(|| self.machine_name(&vm.name)),
            vm_id: vm.id,
            vm_name: vm.name.clone(),
            install_id: self.install_id.clone(),
            ram_mb: vm.ram_mb,
            cpu_cores: vm.cpu_cores,
            disk_gb: vm.disk_gb,
            os_type: vm.os_type.clone(),
            image: None,
            network: self.network_of(vm),
            seed: None,
        }
    }

    /// The spec of a VM's machine with its OS image, for creating its disk.
    pub(crate) fn full_spec(&self, vm: &Vm) -> Result<MachineSpec> {
        let mut spec = self.machine_spec(vm);
        spec.image = self.os_image(&vm.os_type)?;
        Ok(spec)
    }

    /// Makes sure a VM's machine exists before it starts: its disk and
    /// definition are re-made if missing, where vmdesk makes them.
    pub(crate) fn ensure_machine(
        &self,
        p: &dyn Provider,
        vm: &Vm,
        who: &crate::reach::SeedFor,
    ) -> Result<()> {
        if !p.provisions() {
            return Ok(());
        }
        let spec = self.seeded_spec(p, vm, who)?;
        let err = |source| Error::Provider {
            host: vm.host.clone(),
            source,
        };
        p.ensure_disk(&spec).map_err(err)?;
        p.ensure_defined(&spec).map_err(err)
    }

    /// Defines a new pool VM's machine (disk and definition) on its host;
    /// on failure leaves nothing behind there.
    pub(crate) fn define_new(&self, vm: &Vm) -> Result<()> {
        let provider = self.provider(&vm.host);
        let defined = provider
            .as_ref()
            .map_err(|e| Error::invalid(e.one_line()))
            .and_then(|p| {
                let spec = self.seeded_spec(p.as_ref(), vm, &crate::reach::SeedFor::Nobody)?;
                let err = |source| Error::Provider {
                    host: vm.host.clone(),
                    source,
                };
                p.ensure_disk(&spec).map_err(err)?;
                p.ensure_defined(&spec).map_err(err)
            });
        match (defined, provider) {
            (Err(_), Err(e)) => Err(e),
            (Err(e), Ok(p)) => {
                let machine = self.machine_spec(vm).machine_name;
                let _ = p.undefine(&machine);
                let _ = p.delete_disk(&machine);
                Err(e)
            }
            (Ok(()), _) => Ok(()),
        }
    }

    pub(crate) fn machine_name(&self, vm_name: &str) -> String {
        let tag: String = self.install_id.chars().take(8).collect();
        format!("vmdesk-{vm_name}-{tag}")
    }

    // ----- users and credits -------------------------------------------------

    /// The actor, if an admin; else [`Error::AdminOnly`] naming `action`.
    pub fn require_admin(&self, actor: &str, action: &'static str) -> Result<User> {
        let u = self.acting(actor)?.users().whoami()?;
        match u.role {
            Role::Admin => Ok(u),
            Role::User => Err(Error::AdminOnly(action)),
        }
    }

    /// The actor's SSH key pair for their VMs, made on first use in this
    /// desk's data directory (see [`crate::access::user_key`]); never in a
    /// store.
    pub fn ssh_key(&self, actor: &str) -> Result<crate::access::UserKey> {
        let me = self.acting(actor)?.users().whoami()?;
        crate::access::user_key(self.data_dir(), &me.name)
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> Result<User> {
        self.reading().users().user(name)
    }

    /// Adds a user (admin only), with an optional opening grant.
    pub fn user_add(
        &self,
        actor: &str,
        name: &str,
        admin_role: bool,
        credits: i64,
    ) -> Result<User> {
        self.user_add_login(actor, name, admin_role, credits, None)
    }

    /// [`Core::user_add`], with the password of the user's login on a team
    /// store (None: a login without one, for certificate authentication or
    /// one the cluster has already). The embedded store has no logins and
    /// ignores it.
    pub fn user_add_login(
        &self,
        actor: &str,
        name: &str,
        admin_role: bool,
        credits: i64,
        password: Option<&str>,
    ) -> Result<User> {
        validate::name("user", name)?;
        if name == SYSTEM {
            return Err(Error::invalid(format!(
                "the user name {SYSTEM:?} is the system's own, in events and billing; choose another"
            )));
        }
        if credits != 0 {
            validate::grant_amount(credits)?;
        }
        let store = self.acting(actor)?;
        let users = store.users();
        let u = users.user_add(name, admin_role, password)?;
        if credits > 0 {
            users.credits_grant(name, credits, "opening balance")?;
            return users.user(name);
        }
        Ok(u)
    }

    /// Every user (admin only).
    pub fn user_list(&self, actor: &str) -> Result<Vec<User>> {
        self.acting(actor)?.users().user_list()
    }

    /// Grants credits to a user (admin only).
    pub fn credits_grant(
        &self,
        actor: &str,
        to: &str,
        amount: i64,
        reason: &str,
    ) -> Result<CreditStatement> {
        validate::grant_amount(amount)?;
        validate::reason(reason)?;
        self.acting(actor)?
            .users()
            .credits_grant(to, amount, reason)
    }

    /// Adds `amount` credits to a user's balance, or takes them when
    /// negative, as an `adjustment` entry; never below zero (admin only).
    pub fn credits_adjust(
        &self,
        actor: &str,
        to: &str,
        amount: i64,
        reason: &str,
    ) -> Result<CreditStatement> {
        validate::adjust_amount(amount)?;
        validate::reason(reason)?;
        self.acting(actor)?
            .users()
            .credits_adjust(to, amount, reason)
    }

    /// Gives back the creation charge of a VM whose creation failed
    /// (FAILED_TO_START), to whoever paid it, as a `refund` entry linked to
    /// the VM; a second refund of the same VM is refused (admin only).
    pub fn credits_refund(&self, actor: &str, vm: &str, reason: &str) -> Result<LedgerEntry> {
        validate::reason(reason)?;
        let store = self.acting(actor)?;
        let v = store.vms().vm(vm)?;
        store.users().credits_refund(v.id, reason)
    }

    /// Takes `amount` credits from `user` if the balance covers it, in one
    /// atomic step; otherwise changes nothing and says why.
    pub fn charge(
        &self,
        actor: &str,
        from: &str,
        amount: i64,
        kind: LedgerKind,
        reason: &str,
    ) -> Result<LedgerEntry> {
        if amount <= 0 {
            return Err(Error::invalid(format!(
                "a charge must be positive, not {amount}"
            )));
        }
        validate::reason(reason)?;
        self.acting(actor)?
            .users()
            .charge(from, amount, kind, reason)
    }

    /// A user's balance and ledger; another user's only for an admin.
    pub fn credits_show(&self, actor: &str, of: Option<&str>) -> Result<CreditStatement> {
        self.acting(actor)?
            .users()
            .credits_show(of.unwrap_or(actor))
    }

    // ----- hosts, projects, workspaces ------------------------------------------

    /// Adds a libvirt host after checking that it answers (admin only).
    pub fn host_add(&self, actor: &str, name: &str, uri: &str) -> Result<Host> {
        validate::name("host", name)?;
        validate::uri(uri)?;
        self.require_admin(actor, "add hosts")?;
        let kind = HostKind::of_uri(uri);
        self.opts
            .providers
            .probe(kind, uri)
            .map_err(|source| Error::Provider {
                host: name.to_owned(),
                source,
            })?;
        self.acting(actor)?.places().host_add(name, kind, uri)
    }

    /// Adopts the machines of a host that vmdesk does not know yet as VMs of a
    /// project's pool (admin only): each keeps its host name (prefixed with
    /// the host's name if that is taken), its size, and its power state. A
    /// machine whose name vmdesk cannot use is skipped with the reason.
    pub fn host_import(
        &self,
        actor: &str,
        host_name: &str,
        pool: &str,
        vm_type: Option<&str>,
    ) -> Result<ImportReport> {
        if let Some(t) = vm_type {
            validate::name("VM type", t)?;
        }
        let store = self.acting(actor)?;
        if store.users().whoami()?.role != Role::Admin {
            return Err(Error::AdminOnly("import VMs"));
        }
        let h = store.places().host(host_name)?;
        let machines = self
            .provider(host_name)?
            .inventory()
            .map_err(|source| Error::Provider {
                host: host_name.to_owned(),
                source,
            })?;
        let offer: Vec<crate::ImportMachine> = machines
            .iter()
            .map(|m| {
                let vm_type = vm_type.map(str::to_owned).unwrap_or_else(|| m.size.clone());
                crate::ImportMachine {
                    machine: m.machine.clone(),
                    name: m.name.clone(),
                    names: import_names(&h.name, &m.name),
                    vm_type: validate::name("VM type", &vm_type).ok().map(|()| vm_type),
                    size: m.size.clone(),
                    os_type: m.os_type.clone(),
                    ram_mb: m.ram_mb,
                    disk_gb: m.disk_gb,
                    cpu_cores: m.cpu_cores,
                    status: import_status(m.power),
                }
            })
            .collect();
        store.vms().vm_import(host_name, pool, &offer)
    }

    /// Every host.
    pub fn host_list(&self, actor: &str) -> Result<Vec<Host>> {
        self.acting(actor)?.places().host_list()
    }

    /// Creates a project (admin only).
    pub fn project_create(&self, actor: &str, name: &str) -> Result<Project> {
        validate::name("project", name)?;
        self.acting(actor)?.places().project_create(name)
    }

    /// Creates a workspace in a project (admin only).
    pub fn workspace_create(&self, actor: &str, name: &str, project: &str) -> Result<Workspace> {
        validate::name("workspace", name)?;
        self.acting(actor)?.places().workspace_create(name, project)
    }

    // ----- VMs ---------------------------------------------------------------

    /// Adds a VM to a project's pool and defines its machine on its host
    /// (admin only). If the host refuses, nothing is kept.
    pub fn vm_add(&self, actor: &str, spec: &NewVm) -> Result<Vm> {
        validate::vm_name(&spec.name)?;
        validate::name("VM type", &spec.vm_type)?;
        self.os_image(&spec.os_type)?;
        validate::size(spec.ram_mb, spec.disk_gb, spec.cpu_cores)?;
        self.check_os_minimum(&spec.os_type, spec.ram_mb, spec.disk_gb)?;
        let worker = self.worker_id()?.to_owned();
        let store = self.acting(actor)?;
        let vms = store.vms();
        // The intent is durable before the host is touched.
        let vm = vms.vm_add(spec, &self.machine_name(&spec.name), &worker)?;
        match self.define_new(&vm) {
            Ok(()) => {
                vms.vm_add_done(vm.id, true, add_details(&vm, &spec.pool))?;
                vms.vm(&vm.id.to_string())
            }
            Err(err) => {
                // If the host refuses, nothing is kept.
                vms.vm_add_done(
                    vm.id,
                    false,
                    json!({"vm": vm.name, "host": vm.host, "reason": err.one_line()}),
                )?;
                Err(err)
            }
        }
    }

    /// The VMs the actor can see: pool VMs and their own; with `all`, every
    /// user's (admin only).
    pub fn vm_list(&self, actor: &str, all: bool) -> Result<Vec<Vm>> {
        self.acting(actor)?.vms().vm_list(all)
    }

    /// The rows of [`Core::vm_list`] changed since `since` (the cursor of an
    /// earlier answer; none: all of them), how many rows the list has, and
    /// the cursor to pass next: a list kept up to date by merging these asks
    /// again without a cursor when it then holds another number of rows.
    pub fn vm_changes(&self, actor: &str, all: bool, since: Option<&str>) -> Result<VmChanges> {
        if let Some(c) = since {
            if c.is_empty() || c.len() > 19 || !c.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::invalid(format!(
                    "{c:?} is not a cursor of a VM list"
                )));
            }
        }
        self.acting(actor)?.vms().vm_changes(all, since)
    }

    /// The actor's own VMs (not pool VMs), by name.
    pub fn vm_list_own(&self, actor: &str) -> Result<Vec<Vm>> {
        let mut vms = self.acting(actor)?.vms().vm_list(false)?;
        vms.retain(|v| v.owner.as_deref() == Some(actor));
        Ok(vms)
    }

    /// One VM, by name or id, if the actor may see it.
    pub fn vm_show(&self, actor: &str, vm: &str) -> Result<Vm> {
        self.acting(actor)?.vms().vm(vm)
    }

    // ----- events and overview ---------------------------------------------------

    /// The newest events the actor may see (see [`Core::events_query`]).
    pub fn events(&self, actor: &str, limit: i64) -> Result<Vec<Event>> {
        self.events_query(
            actor,
            &crate::desk::EventQuery {
                limit,
                ..Default::default()
            },
        )
    }

    /// Renames a project (admin only).
    pub fn project_rename(&self, actor: &str, name: &str, new: &str) -> Result<Project> {
        validate::name("project", new)?;
        self.acting(actor)?.places().project_rename(name, new)
    }

    /// Deletes a project with no VMs and no sessions, past ones too, with
    /// its workspaces (admin only).
    pub fn project_delete(&self, actor: &str, name: &str) -> Result<()> {
        self.acting(actor)?.places().project_delete(name)
    }

    /// Renames a workspace of a project (admin only).
    pub fn workspace_rename(
        &self,
        actor: &str,
        project: &str,
        name: &str,
        new: &str,
    ) -> Result<Workspace> {
        validate::name("workspace", new)?;
        self.acting(actor)?
            .places()
            .workspace_rename(project, name, new)
    }

    /// Deletes a workspace no session was ever in (admin only).
    pub fn workspace_delete(&self, actor: &str, project: &str, name: &str) -> Result<()> {
        self.acting(actor)?.places().workspace_delete(project, name)
    }

    /// Every project with its workspaces' names and its cost controls.
    pub fn projects(&self, actor: &str) -> Result<Vec<(Project, Vec<String>)>> {
        self.acting(actor)?.places().projects()
    }

    /// What the desktop window shows to the actor.
    pub fn overview(&self, actor: &str) -> Result<Overview> {
        let store = self.acting(actor)?;
        let user = store.users().whoami()?;
        let vms = store.vms().vm_list(false)?;
        let pools = store
            .places()
            .projects()?
            .into_iter()
            .map(|(project, workspaces)| Pool {
                vms: vms
                    .iter()
                    .filter(|v| v.pool.as_deref() == Some(project.name.as_str()))
                    .cloned()
                    .collect(),
                project,
                workspaces,
            })
            .collect();
        let mut sessions = store.sessions().session_list(user.role == Role::Admin)?;
        sessions.truncate(200);
        Ok(Overview {
            user,
            pools,
            sessions,
        })
    }
}

/// The vmdesk names an imported machine may take, best first: its own, then
/// prefixed with its host's; only valid ones.
fn import_names(host: &str, machine_name: &str) -> Vec<String> {
    [machine_name.to_owned(), format!("{host}-{machine_name}")]
        .into_iter()
        .filter(|n| validate::vm_name(n).is_ok())
        .collect()
}

/// An imported machine's state as a VM's.
fn import_status(power: PowerState) -> VmStatus {
    match power {
        PowerState::Running => VmStatus::Running,
        s if s.is_off() => VmStatus::Stopped,
        _ => VmStatus::Unknown,
    }
}
