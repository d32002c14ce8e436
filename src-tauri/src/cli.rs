//! The command line: parsing, dispatch to the core API, and output (a human
//! table, or one JSON document with `--json`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use vmdesk_azure::{AzureFactory, Target};
use vmdesk_core::provider::ByKind;
use vmdesk_core::{Core, NewVm, OpenOptions, SessionRequest, VmAction, VmCreate};
use vmdesk_libvirt::LibvirtFactory;

/// Manage VM pools, sessions and credits. With no command, opens the desktop window.
#[derive(Parser, Debug)]
#[command(name = "vmdesk", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options of every command.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Data directory (default: the XDG data dir)
    #[arg(long, global = true, env = "VMDESK_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Acting user, on the embedded store (default: admin); on a team store
    /// you act as your login and this is refused
    #[arg(long = "as", global = true, env = "VMDESK_USER", value_name = "USER")]
    pub as_user: Option<String>,
    /// The acting user, settled by [`resolve`]: `--as`, `admin` by default,
    /// or the team store's login.
    #[arg(skip)]
    pub actor: String,
    /// A team store (PostgreSQL) for this call, instead of the settings'
    /// `[store] url`: postgres://LOGIN@HOST[:PORT]/DB[?sslmode=verify-full&sslrootcert=CA].
    /// Its password: the URL's own (discouraged), PGPASSWORD, ~/.pgpass,
    /// then the OS keyring (`vmdesk login`); client certificates are not
    /// supported yet. An empty URL means the embedded store
    #[arg(long, global = true, env = "VMDESK_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// The team store's URL once [`resolve`]d (None: the embedded store).
    #[arg(skip)]
    pub team: Option<String>,
    /// Print one JSON document
    #[arg(long, global = true)]
    pub json: bool,
    /// Settings file (default: settings.toml in the XDG config dir)
    #[arg(long, global = true, env = "VMDESK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Seconds a guest may take to shut down before it is forced off
    #[arg(
        long,
        global = true,
        env = "VMDESK_SHUTDOWN_TIMEOUT",
        default_value_t = 60,
        value_name = "SECS"
    )]
    pub shutdown_timeout: u64,
    /// The view the window opens on (dashboard, vms, launch, pools, events,
    /// credits, admin, settings)
    #[arg(
        long,
        global = true,
        env = "VMDESK_VIEW",
        value_name = "VIEW",
        value_parser = ["dashboard", "vms", "launch", "pools", "events", "credits", "admin", "settings", "consoles", "hosts"]
    )]
    pub view: Option<String>,
    /// Do not ask before destroying a VM or closing a session (only a
    /// terminal is ever asked; scripts never are)
    #[arg(long, short = 'y', global = true, env = "VMDESK_YES")]
    pub yes: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Users
    #[command(subcommand)]
    User(UserCmd),
    /// Credits
    #[command(subcommand)]
    Credits(CreditsCmd),
    /// The price of a VM of a given size
    #[command(allow_negative_numbers = true)]
    Quote {
        #[arg(long)]
        ram_mb: i64,
        #[arg(long)]
        disk_gb: i64,
        #[arg(long)]
        cpus: i64,
    },
    /// Your SSH public key for VMs (the key pair is made on first use, in the
    /// data directory, private key 0600; it never goes into a store)
    SshKey,
    /// Logs in to a running VM of yours (or lent to you) by SSH: the system
    /// `ssh` with your key, the VM's address and its host key (fixed by the
    /// VM's seed); through its host for a remote libvirt host
    Ssh {
        /// The VM (name or id)
        vm: String,
        /// Print the ssh command line instead of running it (with --json:
        /// the target as JSON)
        #[arg(long)]
        print: bool,
        /// Log in as this user (default: root, whom every vmdesk seed lets
        /// in; an Azure VM's admin user is whoever created it)
        #[arg(long, short = 'l', value_name = "USER")]
        login: Option<String>,
        /// The command to run there (none: a login shell)
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Hosts (libvirt URIs, Azure subscriptions)
    #[command(subcommand)]
    Host(HostCmd),
    /// Azure credentials
    #[command(subcommand)]
    Azure(AzureCmd),
    /// Projects (VM pools)
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Workspaces of a project
    #[command(subcommand)]
    Workspace(WorkspaceCmd),
    /// Project pools in bulk
    #[command(subcommand)]
    Pool(PoolCmd),
    /// VMs
    #[command(subcommand)]
    Vm(VmCmd),
    /// Sessions on pool VMs
    #[command(subcommand)]
    Session(SessionCmd),
    /// The OS catalog
    #[command(subcommand)]
    Os(OsCmd),
    /// Settle crashed work, quarantine vmdesk's leftovers on every host and list them (admin only)
    Recover {
        /// Delete the quarantined machines (definition and disk) found longer ago than --grace-secs
        #[arg(long)]
        purge: bool,
        /// With --purge: how long a machine stays quarantined before it may be deleted
        #[arg(long, default_value_t = 7 * 24 * 3600, requires = "purge")]
        grace_secs: u64,
    },
    /// Reconcile the database with the hosts' power states
    #[command(group(clap::ArgGroup::new("mode").required(true).args(["once", "watch"])))]
    Sync {
        /// One pass, then exit
        #[arg(long)]
        once: bool,
        /// Follow the hosts' lifecycle events until interrupted
        #[arg(long)]
        watch: bool,
        /// With --watch: exit when standard input closes (the app's child)
        #[arg(long, hide = true, requires = "watch")]
        parent_pipe: bool,
    },
    /// The event log, newest first; the filters combine
    Events {
        #[arg(long, default_value_t = 50, allow_negative_numbers = true)]
        limit: i64,
        /// Only these types (vm, session, billing, system, admin); repeat
        /// it or separate them with commas
        #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
        types: Vec<String>,
        /// Only these severities (info, warning, critical)
        #[arg(long = "severity", value_name = "SEVERITY", value_delimiter = ',')]
        severities: Vec<String>,
        /// Only events about this user: what they did and what happened to
        /// their VMs, sessions and credits (another user's: admins only)
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Only events since then: RFC 3339 (2026-11-30T09:00:00Z) or a
        /// while ago (90s, 30m, 2h, 7d)
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Print the matching events oldest first, then each new one as it
        /// comes (with --json: one JSON object a line), until interrupted
        #[arg(long)]
        follow: bool,
    },
    /// VNC consoles of running VMs
    #[command(subcommand)]
    Console(ConsoleCmd),
    /// Check the installation: data directory, database, settings, hosts,
    /// libvirt, console ports, keyring (one line per check; exit 1 on an error)
    Doctor,
    /// The console port pool: statistics and open consoles; `cleanup` frees the ports of dead processes
    Ports {
        #[command(subcommand)]
        command: Option<PortsCmd>,
    },
    /// Work on a team store (PostgreSQL) from now on: asks for the password
    /// (no echo; one line of standard input when it is not a terminal),
    /// checks it, keeps it in the OS keyring and the URL (without password)
    /// in the settings. A password in the URL, PGPASSWORD or ~/.pgpass is
    /// used instead of asking (only the URL's is kept). Client certificates
    /// are not supported yet.
    Login {
        /// postgres://LOGIN@HOST[:PORT]/DB[?sslmode=verify-full&sslrootcert=CA]
        url: String,
    },
    /// Forget the team store and its password: back to the embedded store
    Logout,
    /// The team store: set one up, see where you are, copy an embedded one in
    #[command(subcommand)]
    Store(StoreCmd),
    /// Run the team store's always-on work (status sync, billing) as an
    /// admin: one serve leads at a time, others wait and take over. Detaches
    /// (logging to serve.log in the data dir) unless --foreground
    Serve {
        /// Stay attached and log to stderr (systemd units, containers)
        #[arg(long)]
        foreground: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum StoreCmd {
    /// Create (or bring up to date) a team store: its database if missing,
    /// its schema and roles, and the first admin's login with a password
    /// printed once. Run it with a role that may create databases and roles
    /// (the cluster's superuser; password from the URL, PGPASSWORD or
    /// ~/.pgpass). Idempotent
    Init {
        /// postgres://SUPERUSER@HOST[:PORT]/DB
        url: String,
        /// The first admin's login (default: your OS user name); an existing
        /// login of the cluster keeps its password
        #[arg(long)]
        admin: Option<String>,
    },
    /// Which store this desk works on: the team store, your login, your
    /// role and its schema step, or the embedded store's directory
    Status,
    /// Copy this desk's embedded data directory into an empty team store
    Migrate {
        /// postgres://LOGIN@HOST[:PORT]/DB of the team store
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConsoleCmd {
    /// Open a console bridge and print its WebSocket URL and token (for any
    /// noVNC); it stays open until the viewer or the VM closes it, or until
    /// interrupted
    Open {
        vm: String,
        /// Also accept a viewer from this origin (repeatable)
        #[arg(long = "origin")]
        origins: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PortsCmd {
    /// Free the ports of consoles whose process is gone, once
    Cleanup,
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user (admin only)
    #[command(allow_negative_numbers = true)]
    Add {
        name: String,
        #[arg(long)]
        admin: bool,
        #[arg(long, default_value_t = 0)]
        credits: i64,
        /// On a team store: make the login without a password (certificate
        /// or DBA-managed logins); otherwise one is generated and printed once
        #[arg(long)]
        no_password: bool,
    },
    /// List users (admin only)
    List,
    /// Make a user an admin or a plain user (admin only; the last admin
    /// stays one)
    Role {
        name: String,
        #[arg(value_parser = ["admin", "user"])]
        role: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CreditsCmd {
    /// Grant credits (admin only)
    #[command(allow_negative_numbers = true)]
    Grant {
        user: String,
        amount: i64,
        #[arg(long)]
        reason: String,
    },
    /// Add credits to a balance, or take them with a negative amount, as
    /// an adjustment; never below zero (admin only)
    #[command(allow_negative_numbers = true)]
    Adjust {
        user: String,
        amount: i64,
        #[arg(long)]
        reason: String,
    },
    /// Give back the creation charge of a VM whose creation failed
    /// (FAILED_TO_START) to whoever paid it; once per VM (admin only)
    Refund {
        vm: String,
        #[arg(long)]
        reason: String,
    },
    /// A balance and its ledger
    Show { user: Option<String> },
}

#[derive(Subcommand, Debug)]
pub enum OsCmd {
    /// Add a qcow2 disk image to the catalog (admin only)
    Import {
        name: String,
        file: PathBuf,
        /// The least memory (MB) the OS boots with; smaller VMs are refused
        #[arg(long)]
        min_ram_mb: Option<i64>,
        /// The least disk (GB) the OS needs; smaller VMs are refused
        #[arg(long)]
        min_disk_gb: Option<i64>,
    },
    /// Set the least memory and disk an imported OS boots with (admin only)
    Minimum {
        name: String,
        #[arg(long)]
        min_ram_mb: Option<i64>,
        #[arg(long)]
        min_disk_gb: Option<i64>,
    },
    /// List the catalog
    /// Remove an imported image that no VM uses (admin only)
    Remove {
        name: String,
    },
    List,
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Add a libvirt host or an Azure subscription (admin only)
    Add {
        name: String,
        /// A libvirt connection URI (qemu:///system, qemu+ssh://...)
        #[arg(
            long,
            required_unless_present = "azure_subscription",
            conflicts_with = "azure_subscription"
        )]
        uri: Option<String>,
        /// An Azure subscription id
        #[arg(long)]
        azure_subscription: Option<String>,
        /// Keep to this resource group of the subscription (repeatable)
        #[arg(long = "resource-group", requires = "azure_subscription")]
        resource_groups: Vec<String>,
    },
    /// Adopt a host's VMs that vmdesk does not know into a project's pool (admin only)
    Import {
        name: String,
        #[arg(long)]
        project: String,
        /// The VM type sessions ask for (default: the VM's size)
        #[arg(long)]
        vm_type: Option<String>,
    },
    /// List hosts: reachability, VMs, free memory and disk, console path, last event
    List,
}

#[derive(Subcommand, Debug)]
pub enum AzureCmd {
    /// Keep a service principal for Azure hosts: its secret (read from standard
    /// input) goes to the OS keyring after a token has been obtained with it
    Login {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        client_id: String,
        /// The Microsoft Entra ID authority host
        #[arg(long)]
        authority_host: Option<String>,
        /// The Resource Manager endpoint
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Forget the service principal and its secret
    Logout,
}

#[derive(Subcommand, Debug)]
pub enum ProjectCmd {
    /// Create a project (admin only)
    Create { name: String },
    /// Projects with their workspaces and cost controls
    List,
    /// Rename a project (admin only)
    Rename { name: String, new: String },
    /// Delete a project with no VMs and no sessions (past ones too), and
    /// its workspaces (admin only)
    Delete { name: String },
    /// Set a project's cost controls (admin only); a limit not named is
    /// kept, 0 turns it off
    Limits {
        project: String,
        /// Close a session this many minutes after it started (a warning
        /// 10 minutes before)
        #[arg(long, value_name = "MINUTES")]
        max_session_minutes: Option<i64>,
        /// Warn a session idle this long (no console, no SSH, CPU under
        /// --idle-cpu-percent), and close it if still idle 5 minutes later
        #[arg(long, value_name = "MINUTES")]
        idle_minutes: Option<i64>,
        /// The guest CPU use under which a session counts as idle (default 5)
        #[arg(long, value_name = "PERCENT")]
        idle_cpu_percent: Option<i64>,
        /// Hours of sessions each user may hold in the project in any 7 days
        #[arg(long, value_name = "HOURS")]
        weekly_hours: Option<i64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum WorkspaceCmd {
    /// Create a workspace (admin only)
    Create {
        name: String,
        #[arg(long)]
        project: String,
    },
    /// Rename a workspace (admin only)
    Rename {
        name: String,
        new: String,
        #[arg(long)]
        project: String,
    },
    /// Delete a workspace no session was ever in (admin only)
    Delete {
        name: String,
        #[arg(long)]
        project: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Add N VMs to a project's pool at once from a template (or any OS of
    /// the catalog), their disks copy-on-write over it; all or nothing
    /// (admin only)
    Fill {
        project: String,
        /// The template (an OS of the catalog)
        #[arg(long = "from", value_name = "TEMPLATE")]
        template: String,
        #[arg(long)]
        count: u32,
        /// Their type (default standard)
        #[arg(long = "type", value_name = "TYPE")]
        vm_type: Option<String>,
        /// Their names' prefix: PREFIX-1, PREFIX-2… (default: the project)
        #[arg(long)]
        prefix: Option<String>,
        /// Their host (default: the only libvirt host)
        #[arg(long)]
        host: Option<String>,
        /// Memory per VM (default: the template's minimum)
        #[arg(long)]
        ram_mb: Option<i64>,
        /// vCPUs per VM (default 1)
        #[arg(long)]
        cpus: Option<i64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// Make an OS image of the catalog from a stopped VM's disk (a flattened
    /// copy), to fill pools from (admin only)
    Template { vm: String, name: String },
    /// Add a VM to a project's pool and define it on its host (admin only)
    #[command(allow_negative_numbers = true)]
    Add {
        name: String,
        #[arg(long)]
        pool: String,
        #[arg(long)]
        host: String,
        #[arg(long)]
        ram_mb: i64,
        #[arg(long)]
        disk_gb: i64,
        #[arg(long)]
        cpus: i64,
        #[arg(long = "type", default_value = "standard")]
        vm_type: String,
        #[arg(long, default_value = "blank")]
        os: String,
    },
    /// Create a VM of your own, paid for in credits
    #[command(allow_negative_numbers = true)]
    Create {
        name: String,
        #[arg(long)]
        ram_mb: i64,
        #[arg(long)]
        disk_gb: i64,
        #[arg(long)]
        cpus: i64,
        #[arg(long, default_value = "blank")]
        os: String,
        /// Host (default: the only host)
        #[arg(long)]
        host: Option<String>,
        /// Define it but do not start it
        #[arg(long)]
        no_start: bool,
        /// Commit (and pay) and return at once (CREATING); a worker provisions it
        #[arg(long)]
        no_wait: bool,
    },
    /// Start a VM
    Start { vm: String },
    /// Shut a VM down (forced off after the shutdown timeout)
    Stop { vm: String },
    /// Stop, then start a VM
    Restart { vm: String },
    /// Power a VM off and remove it from its host
    Destroy { vm: String },
    /// Merge KEY=VALUE pairs into a VM's metadata
    Meta {
        vm: String,
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// List VMs (--all: every user's, admin only)
    List {
        #[arg(long)]
        all: bool,
    },
    /// Show one VM
    Show { vm: String },
    /// Stop a VM of your own once it has been idle for MINUTES (no console
    /// open, no SSH connection, guest CPU under 5 %), after a warning 5
    /// minutes before; `off` ends it
    IdleStop {
        vm: String,
        #[arg(value_name = "MINUTES|off")]
        minutes: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionCmd {
    /// Take a free VM of a project's pool for yourself
    Open {
        #[arg(long)]
        project: String,
        #[arg(long)]
        workspace: Option<String>,
        #[arg(long = "type")]
        vm_type: Option<String>,
        /// Commit the allocation and return at once (REQUESTED)
        #[arg(long)]
        no_wait: bool,
    },
    /// End a session and shut its VM down
    Close {
        #[arg(allow_negative_numbers = true)]
        session: i64,
        /// Mark it TERMINATING and return at once
        #[arg(long)]
        no_wait: bool,
    },
    /// List sessions (--all: every user's, admin only)
    List {
        #[arg(long)]
        all: bool,
    },
}

/// The data directory: the flag, the environment, or the XDG data dir.
pub fn data_dir(global: &Global) -> anyhow::Result<PathBuf> {
    if let Some(d) = &global.data_dir {
        return Ok(d.clone());
    }
    directories::ProjectDirs::from("dev", "vmdesk", "vmdesk")
        .map(|p| p.data_dir().to_path_buf())
        .ok_or_else(|| anyhow::anyhow!("no home directory; pass --data-dir"))
}

/// Where the settings file is: the flag, the environment, or the XDG config dir.
pub fn settings_path(global: &Global) -> anyhow::Result<PathBuf> {
    match &global.config {
        Some(p) => Ok(p.clone()),
        None => directories::ProjectDirs::from("dev", "vmdesk", "vmdesk")
            .map(|d| d.config_dir().join("settings.toml"))
            .ok_or_else(|| anyhow::anyhow!("no home directory; pass --config")),
    }
}

/// The settings (the defaults when there is no file).
pub fn settings(global: &Global) -> anyhow::Result<vmdesk_core::Settings> {
    Ok(vmdesk_core::Settings::load(&settings_path(global)?)?)
}

/// Settles the store and the acting user of `global`: the team store of
/// `--store`/`VMDESK_STORE` or the settings, whose login is the actor (an
/// explicit `--as`/`VMDESK_USER` is refused there); else the embedded store
/// and `--as` (`admin` by default).
pub fn resolve(global: &mut Global) -> anyhow::Result<()> {
    global.actor = global.as_user.clone().unwrap_or_else(|| "admin".into());
    global.team = None;
    let Some(url) = crate::store::team_url(global)? else {
        return Ok(());
    };
    let target = crate::store::parse(&url)?;
    let login = target.user().to_owned();
    if global.as_user.is_some() {
        anyhow::bail!(
            "--as: on a team store you act as your login {login}; log in as another user instead (`vmdesk login postgres://USER@{}`)",
            target.describe()
        );
    }
    global.actor = login;
    global.team = Some(url);
    Ok(())
}

/// Opens the core over the data directory of `global`, with libvirt hosts
/// reached through `libvirt` and Azure hosts as the settings say.
pub fn open_core(
    global: &Global,
    libvirt: Arc<LibvirtFactory>,
    on_change: Option<Arc<dyn Fn() + Send + Sync>>,
) -> anyhow::Result<Core> {
    let settings = settings(global)?;
    let azure = AzureFactory::new(settings.azure.clone(), settings.sync.clone());
    let factory = Arc::new(ByKind {
        libvirt,
        azure: Arc::new(azure),
    });
    let mut opts = OpenOptions::new(data_dir(global)?, factory);
    if let Some(url) = &global.team {
        let store = crate::store::connect(url)?;
        use vmdesk_core::team::prelude::*;
        if store.login() != global.actor {
            anyhow::bail!(
                "the team store's login is {}, not {}: log in again with `vmdesk login`",
                store.login(),
                global.actor
            );
        }
        opts.team = Some(Arc::new(store));
    }
    opts.billing = settings.billing_config();
    opts.network = settings.network.clone();
    opts.reboot_grace = settings.reboot_grace();
    opts.shutdown_timeout = Duration::from_secs(global.shutdown_timeout);
    opts.on_change = on_change;
    Ok(Core::open(opts)?)
}

/// Runs the program; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return 0;
            }
            // One line: clap's first, without its usage block.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("error: invalid arguments");
            eprintln!("{first} (see 'vmdesk --help')");
            return 2;
        }
    };
    crate::logging::init();
    let mut cli = cli;
    cli.global.actor = cli.global.as_user.clone().unwrap_or_else(|| "admin".into());
    let Some(command) = cli.command else {
        if let Err(e) = resolve(&mut cli.global) {
            eprintln!("error: {e:#}");
            return 1;
        }
        return match crate::app::run(&cli.global) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        };
    };
    match run(&cli.global, command) {
        Ok(()) => 0,
        // The reader has gone (`| head`, `| grep -q`): not an error.
        Err(e) if broken_pipe(&e) => 0,
        Err(e) if e.is::<crate::doctor::Failed>() => {
            eprintln!("error: {e}");
            1
        }
        Err(e) => {
            let line = match e.downcast_ref::<vmdesk_core::Error>() {
                Some(core) => core.one_line(),
                None => format!("{e:#}"),
            };
            eprintln!("error: {line}");
            1
        }
    }
}

/// `vmdesk azure login|logout`: the service principal in the settings file,
/// its secret in the OS keyring.
fn azure(g: &Global, cmd: AzureCmd) -> anyhow::Result<()> {
    let path = settings_path(g)?;
    let mut settings = vmdesk_core::Settings::load(&path)?;
    let bad = |source| vmdesk_core::Error::Provider {
        host: "azure".into(),
        source,
    };
    match cmd {
        AzureCmd::Login {
            tenant,
            client_id,
            authority_host,
            endpoint,
        } => {
            if let Some(a) = authority_host {
                settings.azure.authority_host = a;
            }
            if let Some(e) = endpoint {
                settings.azure.endpoint = e;
            }
            let mut secret = String::new();
            std::io::stdin().read_line(&mut secret)?;
            let secret = secret.trim_end_matches(['\r', '\n']);
            vmdesk_azure::credentials::login(&mut settings.azure, &tenant, &client_id, secret)
                .map_err(bad)?;
            settings.save(&path)?;
            out(&format!(
                "Azure client {client_id} of tenant {tenant} kept: its secret is in the OS keyring, the rest in {}",
                path.display()
            ))?;
        }
        AzureCmd::Logout => {
            vmdesk_azure::credentials::logout(&mut settings.azure).map_err(bad)?;
            settings.save(&path)?;
            out("the Azure service principal is forgotten")?;
        }
    }
    Ok(())
}

fn run(g: &Global, command: Command) -> anyhow::Result<()> {
    if let Command::Doctor = command {
        // Needs no database (it looks at a broken one without opening it).
        return crate::doctor::run(g);
    }
    if let Command::Azure(cmd) = command {
        // Needs no data directory.
        return azure(g, cmd);
    }
    match command {
        Command::Login { url } => return crate::store::login(g, &url),
        Command::Logout => return crate::store::logout(g),
        Command::Store(StoreCmd::Init { url, admin }) => return crate::store::init(g, &url, admin),
        Command::Store(StoreCmd::Migrate { to }) => return crate::store::migrate(g, &to),
        _ => {}
    }
    let mut resolved = g.clone();
    resolve(&mut resolved)?;
    let g = &resolved;
    if let Command::Store(StoreCmd::Status) = command {
        return crate::store::status(g);
    }
    if let Command::Serve { foreground } = command {
        return crate::serve::run(g, foreground);
    }
    if let Command::Sync {
        watch: true,
        parent_pipe,
        ..
    } = command
    {
        return crate::watch::run(g, parent_pipe);
    }
    let core = open_core(g, Arc::new(LibvirtFactory::new()), None)?;
    let a = g.actor.as_str();
    match command {
        Command::User(UserCmd::Add {
            name,
            admin,
            credits,
            no_password,
        }) => {
            if core.team().is_none() {
                let u = core.user_add(a, &name, admin, credits)?;
                return emit(g, &u, || {
                    format!("added user {} ({}, {} credits)", u.name, u.role, u.balance)
                });
            }
            // On a team store the user is a login too.
            let password = (!no_password).then(vmdesk_postgres::generate_password);
            let u = core.user_add_login(a, &name, admin, credits, password.as_deref())?;
            let mut doc = serde_json::to_value(&u)?;
            doc["password"] = serde_json::json!(password);
            let url = crate::store::login_hint(g, &u.name).unwrap_or_default();
            emit(g, &doc, || {
                let mut s = format!("added user {} ({}, {} credits)", u.name, u.role, u.balance);
                match &password {
                    Some(pw) => s.push_str(&format!(
                        "\nlogin {}, password: {pw} — printed once, pass it on safely; `vmdesk login {url}` to use it",
                        u.name
                    )),
                    None => s.push_str(&format!(
                        "\nlogin {} has no password: it authenticates as the cluster's administrator arranges",
                        u.name
                    )),
                }
                s
            })
        }
        Command::User(UserCmd::Role { name, role }) => {
            let role: vmdesk_core::Role = role.parse().map_err(anyhow::Error::msg)?;
            let u = core.user_role(a, &name, role)?;
            emit(g, &u, || format!("{} is now {}", u.name, u.role))
        }
        Command::Credits(CreditsCmd::Adjust {
            user,
            amount,
            reason,
        }) => {
            let s = core.credits_adjust(a, &user, amount, &reason)?;
            emit(g, &s, || {
                format!(
                    "adjusted the credits of {} by {amount:+}; balance {}",
                    s.user, s.balance
                )
            })
        }
        Command::Credits(CreditsCmd::Refund { vm, reason }) => {
            let e = core.credits_refund(a, &vm, &reason)?;
            emit(g, &e, || {
                format!(
                    "refunded {} credits for VM {vm} (ledger entry {})",
                    e.amount, e.id
                )
            })
        }
        Command::User(UserCmd::List) => {
            let users = core.user_list(a)?;
            emit(g, &users, || {
                table(
                    &["NAME", "ROLE", "BALANCE"],
                    users
                        .iter()
                        .map(|u| vec![u.name.clone(), u.role.to_string(), u.balance.to_string()]),
                )
            })
        }
        Command::Credits(CreditsCmd::Grant {
            user,
            amount,
            reason,
        }) => {
            let s = core.credits_grant(a, &user, amount, &reason)?;
            emit(g, &s, || {
                format!(
                    "granted {amount} credits to {}; balance {}",
                    s.user, s.balance
                )
            })
        }
        Command::Credits(CreditsCmd::Show { user }) => {
            let s = core.credits_show(a, user.as_deref())?;
            emit(g, &s, || {
                let mut out = format!("{}: {} credits\n", s.user, s.balance);
                out.push_str(&table(
                    &["WHEN", "AMOUNT", "KIND", "REASON"],
                    s.entries.iter().map(|e| {
                        vec![
                            e.created_at.clone(),
                            e.amount.to_string(),
                            e.kind.to_string(),
                            e.reason.clone(),
                        ]
                    }),
                ));
                out
            })
        }
        Command::SshKey => {
            let k = core.ssh_key(a)?;
            emit(g, &k, || k.public.clone())
        }
        Command::Ssh {
            vm,
            print,
            login,
            command,
        } => {
            let mut t = core.ssh_target(a, &vm)?;
            if let Some(user) = login {
                vmdesk_core::validate::name("login", &user)?;
                t.user = user;
            }
            if print || g.json {
                let line = t.command_line();
                return emit(
                    g,
                    &serde_json::json!({"target": t, "command_line": line}),
                    || line.clone(),
                );
            }
            use std::os::unix::process::CommandExt;
            let mut ssh = std::process::Command::new("ssh");
            ssh.args(t.args());
            ssh.args(&command);
            // ssh takes over this process: its exit status is vmdesk's.
            let e = ssh.exec();
            Err(anyhow::anyhow!(
                "cannot run ssh (Debian's openssh-client): {e}"
            ))
        }
        Command::Quote {
            ram_mb,
            disk_gb,
            cpus,
        } => {
            let q = vmdesk_core::quote(ram_mb, disk_gb, cpus)?;
            emit(g, &q, || format!("{} credits", q.cost))
        }
        Command::Host(HostCmd::Add {
            name,
            uri,
            azure_subscription,
            resource_groups,
        }) => {
            let uri = match (uri, azure_subscription) {
                (Some(uri), _) => uri,
                (None, Some(sub)) => Target::uri(&sub, &resource_groups).map_err(|source| {
                    vmdesk_core::Error::Provider {
                        host: name.clone(),
                        source,
                    }
                })?,
                (None, None) => anyhow::bail!("give --uri or --azure-subscription"),
            };
            let h = core.host_add(a, &name, &uri)?;
            emit(g, &h, || format!("added host {} ({})", h.name, h.uri))
        }
        Command::Host(HostCmd::Import {
            name,
            project,
            vm_type,
        }) => {
            let r = core.host_import(a, &name, &project, vm_type.as_deref())?;
            emit(g, &r, || {
                let mut lines: Vec<String> = r
                    .imported
                    .iter()
                    .map(|v| {
                        format!(
                            "imported {} ({}, {}) into {project}",
                            v.name, v.vm_type, v.status
                        )
                    })
                    .collect();
                lines.extend(
                    r.skipped
                        .iter()
                        .map(|s| format!("skipped {}: {}", s.machine, s.reason)),
                );
                lines.push(format!(
                    "{} imported, {} skipped",
                    r.imported.len(),
                    r.skipped.len()
                ));
                lines.join("\n")
            })
        }
        Command::Host(HostCmd::List) => {
            let hosts = core.host_overview(a)?;
            let size = |m: Option<i64>| m.map_or_else(|| "-".to_owned(), |m| format!("{m} MB"));
            emit(g, &hosts, || {
                table(
                    &[
                        "NAME",
                        "KIND",
                        "STATE",
                        "VMS",
                        "FREE MEMORY",
                        "FREE DISK",
                        "CONSOLE",
                        "LAST EVENT",
                        "URI",
                    ],
                    hosts.iter().map(|h| {
                        vec![
                            h.host.name.clone(),
                            h.host.kind.to_string(),
                            match &h.error {
                                None => "reachable".to_owned(),
                                Some(e) => format!("unreachable ({e})"),
                            },
                            format!("{} ({} running)", h.vms, h.running),
                            size(h.free_memory_mb),
                            size(h.free_disk_mb),
                            serde_json::to_value(h.console)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default(),
                            h.last_event.as_ref().map_or_else(
                                || "-".to_owned(),
                                |e| format!("{} {} {}", e.at, e.vm, e.action),
                            ),
                            h.host.uri.clone(),
                        ]
                    }),
                )
            })
        }
        Command::Project(ProjectCmd::Create { name }) => {
            let p = core.project_create(a, &name)?;
            emit(g, &p, || format!("created project {}", p.name))
        }
        Command::Project(ProjectCmd::Rename { name, new }) => {
            let p = core.project_rename(a, &name, &new)?;
            emit(g, &p, || format!("renamed project {name} to {}", p.name))
        }
        Command::Project(ProjectCmd::Delete { name }) => {
            confirm(g, &format!("Delete project {name} and its workspaces?"))?;
            core.project_delete(a, &name)?;
            emit(g, &serde_json::json!({"deleted": name}), || {
                format!("deleted project {name}")
            })
        }
        Command::Workspace(WorkspaceCmd::Rename { name, new, project }) => {
            let w = core.workspace_rename(a, &project, &name, &new)?;
            emit(g, &w, || {
                format!("renamed workspace {name} of {project} to {}", w.name)
            })
        }
        Command::Workspace(WorkspaceCmd::Delete { name, project }) => {
            confirm(g, &format!("Delete workspace {name} of project {project}?"))?;
            core.workspace_delete(a, &project, &name)?;
            emit(
                g,
                &serde_json::json!({"deleted": name, "project": project}),
                || format!("deleted workspace {name} of {project}"),
            )
        }
        Command::Project(ProjectCmd::List) => {
            let projects = core.projects(a)?;
            let rows: Vec<serde_json::Value> = projects
                .iter()
                .map(|(p, w)| serde_json::json!({"project": p, "workspaces": w}))
                .collect();
            emit(g, &rows, || {
                table(
                    &["PROJECT", "WORKSPACES", "MAX SESSION", "IDLE", "WEEKLY"],
                    projects.iter().map(|(p, w)| {
                        let l = &p.limits;
                        let or_none = |v: Option<i64>, unit: &str| {
                            v.map_or_else(|| "-".to_owned(), |n| format!("{n} {unit}"))
                        };
                        vec![
                            p.name.clone(),
                            if w.is_empty() {
                                "-".into()
                            } else {
                                w.join(",")
                            },
                            or_none(l.max_session_minutes, "min"),
                            l.idle_minutes.map_or_else(
                                || "-".to_owned(),
                                |n| format!("{n} min under {} % CPU", l.idle_cpu_percent),
                            ),
                            or_none(l.weekly_hours, "h"),
                        ]
                    }),
                )
            })
        }
        Command::Project(ProjectCmd::Limits {
            project,
            max_session_minutes,
            idle_minutes,
            idle_cpu_percent,
            weekly_hours,
        }) => {
            let was = core
                .projects(a)?
                .into_iter()
                .find(|(p, _)| p.name == project)
                .map(|(p, _)| p.limits)
                .ok_or_else(|| vmdesk_core::Error::UnknownProject(project.clone()))?;
            let limits = was.changed(
                max_session_minutes,
                idle_minutes,
                idle_cpu_percent,
                weekly_hours,
            );
            let p = core.project_limits(a, &project, &limits)?;
            emit(g, &p, || format!("set the limits of project {}", p.name))
        }
        Command::Workspace(WorkspaceCmd::Create { name, project }) => {
            let w = core.workspace_create(a, &name, &project)?;
            emit(g, &w, || {
                format!("created workspace {} in project {}", w.name, w.project)
            })
        }
        Command::Vm(VmCmd::Add {
            name,
            pool,
            host,
            ram_mb,
            disk_gb,
            cpus,
            vm_type,
            os,
        }) => {
            let vm = core.vm_add(
                a,
                &NewVm {
                    name,
                    pool,
                    host,
                    ram_mb,
                    disk_gb,
                    cpu_cores: cpus,
                    vm_type,
                    os_type: os,
                },
            )?;
            emit(g, &vm, || {
                format!(
                    "added VM {} to pool {} ({})",
                    vm.name,
                    vm.pool.as_deref().unwrap_or("-"),
                    vm.status
                )
            })
        }
        Command::Vm(VmCmd::Create {
            name,
            ram_mb,
            disk_gb,
            cpus,
            os,
            host,
            no_start,
            no_wait,
        }) => {
            let spec = VmCreate {
                name,
                ram_mb,
                disk_gb,
                cpu_cores: cpus,
                os_type: os,
                host,
                start: !no_start,
            };
            let bar = (!g.json && !no_wait).then(|| {
                let bar = indicatif::ProgressBar::new(3);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{bar:24}] {pos}/{len} {msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(spec.name.clone());
                bar
            });
            // VMDESK_PROGRESS=jsonl: each step as a JSON line on stderr, for scripts.
            let jsonl = std::env::var("VMDESK_PROGRESS").is_ok_and(|v| v == "jsonl");
            let report = |p: &vmdesk_core::Progress| {
                if jsonl {
                    eprintln!("{}", serde_json::to_string(p).unwrap_or_default());
                }
                if let Some(bar) = &bar {
                    bar.set_length(u64::from(p.steps));
                    bar.set_position(u64::from(p.step));
                    bar.set_message(p.message.clone());
                }
            };
            let created = core.vm_create(a, &spec, !no_wait, Some(&report));
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let vm = created?;
            emit(g, &vm, || format!("VM {}: {}", vm.name, vm.status))
        }
        Command::Vm(VmCmd::Template { vm, name }) => {
            let bar = bar_for(
                g,
                &format!("{vm} -> {name}"),
                "{prefix} [{bar:24}] {bytes}/{total_bytes}",
            );
            let report = |done: u64, total: u64| {
                if let Some(bar) = &bar {
                    bar.set_length(total);
                    bar.set_position(done);
                }
            };
            let made = core.vm_template(a, &vm, &name, &report);
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let os = made?;
            emit(g, &os, || {
                format!(
                    "made the template {} from {vm} ({} bytes; VMs from it need at least {} MB and {} GB)",
                    os.name, os.bytes, os.min_ram_mb, os.min_disk_gb
                )
            })
        }
        Command::Pool(PoolCmd::Fill {
            project,
            template,
            count,
            vm_type,
            prefix,
            host,
            ram_mb,
            cpus,
        }) => {
            let fill = vmdesk_core::templates::Fill {
                project,
                template,
                count,
                vm_type,
                prefix,
                host,
                ram_mb,
                disk_gb: None,
                cpus,
            };
            let bar = bar_for(g, &fill.project, "{prefix} [{bar:24}] {pos}/{len} VMs");
            let report = |done: u32, of: u32| {
                if let Some(bar) = &bar {
                    bar.set_length(u64::from(of));
                    bar.set_position(u64::from(done));
                }
            };
            let filled = core.pool_fill(a, &fill, &report);
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            let vms = filled?;
            emit(g, &vms, || {
                format!(
                    "added {} VMs to {}: {}",
                    vms.len(),
                    fill.project,
                    vms.iter()
                        .map(|v| v.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        }
        Command::Vm(VmCmd::Start { vm }) => vm_action(g, &core, &vm, VmAction::Start),
        Command::Vm(VmCmd::Stop { vm }) => vm_action(g, &core, &vm, VmAction::Stop),
        Command::Vm(VmCmd::Restart { vm }) => vm_action(g, &core, &vm, VmAction::Restart),
        Command::Vm(VmCmd::Destroy { vm }) => {
            confirm(
                g,
                &format!(
                    "Destroy VM {vm}? It is powered off and its disk is deleted: everything on it is lost, \
                     and the credits paid for it are not refunded."
                ),
            )?;
            vm_action(g, &core, &vm, VmAction::Destroy)
        }
        Command::Vm(VmCmd::Meta { vm, pairs }) => {
            let pairs = pairs
                .iter()
                .map(|p| {
                    p.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .ok_or_else(|| anyhow::anyhow!("{p:?} is not KEY=VALUE"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let v = core.vm_meta(a, &vm, &pairs)?;
            emit(g, &v, || format!("VM {} metadata: {}", v.name, v.metadata))
        }
        Command::Vm(VmCmd::IdleStop { vm, minutes }) => {
            let minutes =
                match minutes.as_str() {
                    "off" => None,
                    m => Some(m.parse::<i64>().map_err(|_| {
                        anyhow::anyhow!("{m:?} is not a number of minutes or 'off'")
                    })?),
                };
            let v = core.vm_idle_stop(a, &vm, minutes)?;
            emit(g, &v, || match minutes {
                Some(m) => format!(
                    "VM {} stops after {m} idle minutes (a warning 5 minutes before)",
                    v.name
                ),
                None => format!("VM {} is never stopped for idleness", v.name),
            })
        }
        Command::Vm(VmCmd::List { all }) => {
            let vms = core.vm_list(a, all)?;
            emit(g, &vms, || vm_table(&vms))
        }
        Command::Vm(VmCmd::Show { vm }) => {
            let v = core.vm_show(a, &vm)?;
            emit(g, &v, || {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            })
        }
        Command::Session(SessionCmd::Open {
            project,
            workspace,
            vm_type,
            no_wait,
        }) => {
            let s = core.session_open(
                a,
                &SessionRequest {
                    project,
                    workspace,
                    vm_type,
                },
                !no_wait,
            )?;
            if !no_wait {
                core.drive_pending()?;
            }
            emit(g, &s, || {
                format!("session {} on VM {}: {}", s.id, s.vm_name, s.status)
            })
        }
        Command::Session(SessionCmd::Close { session, no_wait }) => {
            confirm(
                g,
                &format!(
                    "Close session {session}? Its guest is shut down (forced off after {} s) \
                     and unsaved work in it is lost.",
                    g.shutdown_timeout
                ),
            )?;
            let s = core.session_close(a, session, !no_wait)?;
            if !no_wait {
                core.drive_pending()?;
            }
            emit(g, &s, || {
                format!("session {} on VM {}: {}", s.id, s.vm_name, s.status)
            })
        }
        Command::Session(SessionCmd::List { all }) => {
            let sessions = core.session_list(a, all)?;
            emit(g, &sessions, || {
                table(
                    &["ID", "USER", "PROJECT", "VM", "STATUS", "SINCE"],
                    sessions.iter().map(|s| {
                        vec![
                            s.id.to_string(),
                            s.user.clone(),
                            s.project.clone(),
                            s.vm_name.clone(),
                            s.status.to_string(),
                            s.created_at.clone(),
                        ]
                    }),
                )
            })
        }
        Command::Os(OsCmd::Import {
            name,
            file,
            min_ram_mb,
            min_disk_gb,
        }) => {
            let os = core.os_import_with(a, &name, &file, min_ram_mb, min_disk_gb)?;
            emit(g, &os, || {
                format!(
                    "imported OS {} ({} bytes; at least {} MB of memory and {} GB of disk)",
                    os.name, os.bytes, os.min_ram_mb, os.min_disk_gb
                )
            })
        }
        Command::Os(OsCmd::Minimum {
            name,
            min_ram_mb,
            min_disk_gb,
        }) => {
            let os = core.os_set_minimum(a, &name, min_ram_mb, min_disk_gb)?;
            emit(g, &os, || {
                format!(
                    "{} needs at least {} MB of memory and {} GB of disk",
                    os.name, os.min_ram_mb, os.min_disk_gb
                )
            })
        }
        Command::Os(OsCmd::Remove { name }) => {
            core.os_remove(a, &name)?;
            emit(g, &serde_json::json!({"removed": name}), || {
                format!("removed OS {name} from the catalog")
            })
        }
        Command::Os(OsCmd::List) => {
            let list = core.os_list()?;
            emit(g, &list, || {
                table(
                    &[
                        "NAME",
                        "KIND",
                        "BYTES",
                        "MIN RAM MB",
                        "MIN DISK GB",
                        "BOOTS",
                    ],
                    list.iter().map(|o| {
                        vec![
                            o.name.clone(),
                            o.kind.clone(),
                            o.bytes.to_string(),
                            o.min_ram_mb.to_string(),
                            o.min_disk_gb.to_string(),
                            if o.boots { "yes" } else { "firmware only" }.into(),
                        ]
                    }),
                )
            })
        }
        Command::Sync { .. } => {
            // The fast pass (active sessions), then the full one.
            let mut changes = core.sync_and_bill(false, "poll")?;
            changes.extend(core.sync_and_bill(true, "poll")?);
            // Then the addresses of running VMs (JSON: the status changes only).
            let addresses = core.sync_addresses(true, true, "poll")?;
            emit(g, &changes, || {
                let moved = addresses.iter().map(|c| {
                    format!(
                        "\nVM {}: address {} -> {}",
                        c.vm,
                        c.was.as_deref().unwrap_or("none"),
                        c.now.as_deref().unwrap_or("none")
                    )
                });
                if changes.is_empty() {
                    std::iter::once("in sync".to_owned()).chain(moved).collect()
                } else {
                    table(
                        &["VM", "WAS", "NOW", "TERMINATED SESSION"],
                        changes.iter().map(|c| {
                            vec![
                                c.vm.clone(),
                                c.was.to_string(),
                                c.now.to_string(),
                                c.terminated_session.map_or("-".into(), |s| s.to_string()),
                            ]
                        }),
                    )
                }
            })
        }
        Command::Azure(_)
        | Command::Doctor
        | Command::Login { .. }
        | Command::Logout
        | Command::Serve { .. }
        | Command::Store(_) => {
            unreachable!("handled before the core is opened")
        }
        Command::Console(ConsoleCmd::Open { vm, origins }) => {
            let mut console = settings(g)?.console;
            console.allowed_origins.extend(origins);
            let runtime = tokio::runtime::Runtime::new()?;
            let core = Arc::new(core);
            runtime.block_on(async {
                let consoles = vmdesk_console::Consoles::new(Arc::clone(&core), console);
                let handle = consoles.open(a, &vm).await?;
                emit(g, &handle.console, || {
                    format!(
                        "console of {} on port {}: {}\n(token single-use, valid until {}; Ctrl-C closes it)",
                        handle.console.grant.vm,
                        handle.console.grant.port,
                        handle.console.url,
                        handle.console.grant.expires_at
                    )
                })?;
                use std::io::Write as _;
                std::io::stdout().flush()?;
                let port = handle.console.grant.port;
                let why = tokio::select! {
                    why = handle.closed() => why,
                    _ = tokio::signal::ctrl_c() => {
                        let c = Arc::clone(&core);
                        let _ = tokio::task::spawn_blocking(move || c.console_release(port, "interrupted")).await;
                        vmdesk_console::Closed::Closed
                    }
                };
                eprintln!("console closed: {why:?}");
                Ok::<_, anyhow::Error>(())
            })
        }
        Command::Ports { command: None } => {
            let range = settings(g)?.console;
            let stats = core.console_stats((range.port_start, range.port_end))?;
            emit(g, &stats, || {
                let mut out = format!(
                    "{} ports, {} allocated, {} free ({:.1} %), {}",
                    stats.total,
                    stats.allocated,
                    stats.free,
                    stats.utilization_percent,
                    stats.health
                );
                for c in &stats.consoles {
                    out.push_str(&format!(
                        "\n  {}  {}  {}  since {}",
                        c.port, c.vm, c.user, c.since
                    ));
                }
                out
            })
        }
        Command::Ports {
            command: Some(PortsCmd::Cleanup),
        } => {
            let freed = core.console_cleanup()?;
            emit(g, &freed, || format!("{} ports freed", freed.len()))
        }
        Command::Recover { purge, grace_secs } => {
            let repairs = core.recover_all(a)?;
            let purged = if purge {
                core.purge_quarantine(a, Duration::from_secs(grace_secs))?
            } else {
                Vec::new()
            };
            let quarantined = core.quarantined(a)?;
            let out = serde_json::json!({
                "repairs": repairs, "quarantined": quarantined, "purged": purged,
            });
            emit(g, &out, || {
                let mut text = if repairs.is_empty() {
                    "nothing to recover".to_owned()
                } else {
                    table(
                        &["ACTION", "DETAILS"],
                        repairs
                            .iter()
                            .map(|e| vec![e.action.clone(), e.details.to_string()]),
                    )
                };
                for q in &purged {
                    text.push_str(&format!("\npurged {} on {}", q.machine, q.host));
                }
                if !quarantined.is_empty() {
                    text.push_str("\nquarantined (stopped, disk kept; 'vmdesk recover --purge' deletes them after the grace period):\n");
                    text.push_str(&table(
                        &["HOST", "MACHINE", "FOUND"],
                        quarantined
                            .iter()
                            .map(|q| vec![q.host.clone(), q.machine.clone(), q.found_at.clone()]),
                    ));
                }
                text
            })
        }
        Command::Events {
            limit,
            types,
            severities,
            user,
            since,
            follow,
        } => {
            let q = vmdesk_core::EventQuery {
                types: parse_all(&types, "event type")?,
                severities: parse_all(&severities, "severity")?,
                after: None,
                limit,
                user,
                since: since.as_deref().map(since_instant).transpose()?,
            };
            let events = core.events_query(a, &q)?;
            if follow {
                return follow_events(g, &core, a, q, events);
            }
            emit(g, &events, || event_table(&events))
        }
    }
}

/// A progress bar on a terminal (none with --json or without one).
fn bar_for(g: &Global, prefix: &str, template: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal as _;
    (!g.json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(1);
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(prefix.to_owned());
        bar
    })
}

/// Each of `values` parsed as a `T` (an event type, a severity), or an
/// error naming the one that is not and the ones there are.
fn parse_all<T>(values: &[String], what: &str) -> anyhow::Result<Vec<T>>
where
    T: std::str::FromStr + std::fmt::Display + 'static,
    T: StringEnum,
{
    values
        .iter()
        .map(|v| {
            v.trim().parse::<T>().map_err(|_| {
                let known: Vec<String> = T::all().iter().map(ToString::to_string).collect();
                anyhow::anyhow!("unknown {what} {v:?}: one of {}", known.join(", "))
            })
        })
        .collect()
}

/// The enums `parse_all` parses.
trait StringEnum: Sized {
    fn all() -> &'static [Self];
}
impl StringEnum for vmdesk_core::EventType {
    fn all() -> &'static [Self] {
        Self::ALL
    }
}
impl StringEnum for vmdesk_core::Severity {
    fn all() -> &'static [Self] {
        Self::ALL
    }
}

/// `--since`: a while ago (`90s`, `30m`, `2h`, `7d`) as an instant, or an
/// RFC 3339 time as it is (core checks it).
fn since_instant(text: &str) -> anyhow::Result<String> {
    let t = text.trim();
    let unit = match t.chars().last() {
        Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        _ => return Ok(vmdesk_core::instant(t)?),
    };
    let Ok(n) = t[..t.len() - 1].parse::<u64>() else {
        return Ok(vmdesk_core::instant(t)?);
    };
    let secs = n
        .checked_mul(unit)
        .filter(|s| *s <= 100 * 365 * 86_400)
        .ok_or_else(|| anyhow::anyhow!("--since {t}: further back than 100 years"))?;
    Ok(vmdesk_core::ago(Duration::from_secs(secs)))
}

/// Events as a table, in the order given.
fn event_table(events: &[vmdesk_core::model::Event]) -> String {
    table(
        &["WHEN", "TYPE", "SEVERITY", "ACTOR", "ACTION", "DETAILS"],
        events.iter().map(|e| {
            vec![
                e.created_at.clone(),
                e.event_type.to_string(),
                e.severity.to_string(),
                e.actor.clone(),
                e.action.clone(),
                e.details.to_string(),
            ]
        }),
    )
}

/// `events --follow`: `first` (newest first, as queried) oldest first, then
/// each new matching event once a second, until interrupted or the reader
/// goes. One line an event: tab-separated, or a JSON object with --json.
fn follow_events(
    g: &Global,
    core: &Core,
    actor: &str,
    mut q: vmdesk_core::EventQuery,
    first: Vec<vmdesk_core::model::Event>,
) -> anyhow::Result<()> {
    let line = |e: &vmdesk_core::model::Event| -> anyhow::Result<String> {
        Ok(if g.json {
            serde_json::to_string(e)?
        } else {
            format!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                e.created_at, e.event_type, e.severity, e.actor, e.action, e.details
            )
        })
    };
    // Nothing matched yet: nothing before now matches, so from the start.
    let mut last = first.iter().map(|e| e.id).max().unwrap_or(0);
    for e in first.iter().rev() {
        out(&line(e)?)?;
    }
    q.limit = 1000;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        q.after = Some(last);
        let new = core.events_query(actor, &q)?;
        for e in new.iter().rev() {
            out(&line(e)?)?;
            last = last.max(e.id);
        }
    }
}

/// Asks `question` on a terminal before something that deletes data or ends
/// a session; without a terminal on stdin (a script), or with `--yes`, goes
/// ahead without asking, as before.
fn confirm(g: &Global, question: &str) -> anyhow::Result<()> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if g.yes || !std::io::stdin().is_terminal() {
        return Ok(());
    }
    let mut err = std::io::stderr().lock();
    write!(err, "{question} [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if yes_answer(&answer) {
        Ok(())
    } else {
        anyhow::bail!("cancelled: nothing was changed (--yes skips this question)")
    }
}

/// Whether a typed answer says yes.
fn yes_answer(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

fn vm_action(g: &Global, core: &Core, vm: &str, action: VmAction) -> anyhow::Result<()> {
    let v = core.vm_action(&g.actor, vm, action)?;
    emit(g, &v, || format!("VM {}: {}", v.name, v.status))
}

pub fn emit<T: Serialize>(
    g: &Global,
    value: &T,
    human: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if g.json {
        out(&serde_json::to_string_pretty(value)?)?;
    } else {
        out(human().trim_end())?;
    }
    Ok(())
}

/// Writes `text` and a newline to stdout. A reader that has gone (`vmdesk
/// events | head`) is an `io::ErrorKind::BrokenPipe` error, which `main` ends
/// quietly, as Unix tools do.
pub fn out(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.write_all(b"\n")?;
    stdout.flush()
}

/// Whether `e` is a write to a reader that has gone.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn vm_table(vms: &[vmdesk_core::Vm]) -> String {
    table(
        &[
            "NAME", "STATUS", "POOL", "OWNER", "HOST", "IP", "TYPE", "RAM_MB", "CPUS",
        ],
        vms.iter().map(|v| {
            vec![
                v.name.clone(),
                v.status.to_string(),
                v.pool.clone().unwrap_or_else(|| "-".into()),
                v.owner.clone().unwrap_or_else(|| "-".into()),
                v.host.clone(),
                v.ip_address.clone().unwrap_or_else(|| "-".into()),
                v.vm_type.clone(),
                v.ram_mb.to_string(),
                v.cpu_cores.to_string(),
            ]
        }),
    )
}

/// Left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| (*h).to_owned()).collect())
        .chain(rows)
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
