//! The desktop window: Tauri commands into the core, a background worker that
//! drives pending sessions, change notifications, and the tray icon.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tauri::image::Image;
use tauri::menu::{Menu, MenuItem, PredefinedMenuItem, Submenu};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Emitter, Manager, State};
use tauri_plugin_notification::NotificationExt;
use vmdesk_core::Core;
use vmdesk_core::{
    CreditStatement, Event, EventQuery, LedgerEntry, Overview, PortStats, Progress, Role, Session,
    SessionRequest, Severity, User, Vm, VmAction, VmCreate, VmStats,
};

use crate::cli::{open_core, Global};
use crate::supervise::{Supervisor, SyncHealth};
use crate::tray::{self, Look, TrayAction, TrayModel};

/// Event sent to the window whenever the data may have changed.
const CHANGED: &str = "changed";
/// Event carrying a [`SyncHealth`] whenever status sync's health changes.
const SYNC_HEALTH: &str = "sync-health";
/// How often the worker looks for work and for other processes' changes.
const TICK: Duration = Duration::from_secs(1);

/// What the window shares with the commands.
struct Ctx {
    core: Arc<Core>,
    actor: String,
    wake: Mutex<Sender<()>>,
    global: Global,
    /// The status-sync child's supervisor; restarted when the settings change.
    sync: Arc<Supervisor>,
    /// Console bridges of this process.
    consoles: vmdesk_console::Consoles,
    /// The open ones, by port.
    open_consoles: Mutex<std::collections::HashMap<u16, vmdesk_console::Handle>>,
    /// The VM whose counters the window shows (`vm-stats` events), if any.
    stats_vm: Arc<Mutex<Option<String>>>,
    /// When the process started (for `ready`).
    started: std::time::Instant,
}

/// What the window shows about the app itself.
#[derive(Debug, Serialize, ts_rs::TS)]
#[ts(export)]
struct AppInfo {
    /// vmdesk's version.
    version: String,
    /// The data directory.
    data_dir: String,
    /// The settings file.
    settings_path: String,
    /// The view to open on (`--view`), if given.
    start_view: Option<String>,
    /// Which store the desk works on, and as whom.
    store: StoreInfo,
}

/// The store the window works on: the desk's own file, or a team store
/// (PostgreSQL) as its login.
#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[ts(export)]
struct StoreInfo {
    /// Whether it is a team store.
    team: bool,
    /// "ann @ db.example:5432/vmdesk" on a team store (login @ place);
    /// the data directory on the embedded store.
    place: String,
    /// Who acts: the team store's login, or the embedded store's user.
    login: String,
    /// The team store's URL, without its password.
    url: Option<String>,
}

/// The store of `ctx`, as the header and the settings page show it.
fn store_info(ctx: &Ctx) -> Result<StoreInfo, ApiError> {
    Ok(match ctx.core.team() {
        Some(t) => StoreInfo {
            team: true,
            place: t.describe(),
            login: t.login().to_owned(),
            url: ctx
                .global
                .team
                .as_deref()
                .and_then(|u| crate::store::without_password(u).ok()),
        },
        None => StoreInfo {
            team: false,
            place: crate::cli::data_dir(&ctx.global)
                .map_err(internal)?
                .display()
                .to_string(),
            login: ctx.actor.clone(),
            url: None,
        },
    })
}

/// One sample of the watched VM's counters, or why there is none.
#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[ts(export)]
struct StatsUpdate {
    /// The VM.
    vm: String,
    /// The sample.
    stats: Option<VmStats>,
    /// Why there is no sample (the core's sentence).
    error: Option<String>,
}

/// The settings page: the file's contents and where it is, whether the
/// keyring holds the Azure secret, and the hosts.
#[derive(Debug, Serialize, ts_rs::TS)]
#[ts(export)]
struct SettingsView {
    /// The settings file.
    path: String,
    /// Its contents (the defaults when it does not exist).
    settings: vmdesk_core::Settings,
    /// Whether the OS keyring holds the secret of the settings' Azure client.
    azure_secret_kept: bool,
    /// The hosts.
    hosts: Vec<vmdesk_core::Host>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError {
        code: "internal",
        message: e.to_string(),
    }
}

fn provider_error(e: vmdesk_core::provider::ProviderError) -> ApiError {
    ApiError::from(vmdesk_core::Error::Provider {
        host: "azure".into(),
        source: e,
    })
}

/// The settings page's data. The core's calls block (a team store's
/// client runs a tokio runtime of its own, which panics inside another):
/// they run on a blocking thread, never on the async command's.
async fn settings_view(ctx: &Ctx) -> Result<SettingsView, ApiError> {
    let (core, actor, global) = (Arc::clone(&ctx.core), ctx.actor.clone(), ctx.global.clone());
    tauri::async_runtime::spawn_blocking(move || settings_view_blocking(&core, &actor, &global))
        .await
        .map_err(internal)?
}

fn settings_view_blocking(
    core: &Core,
    actor: &str,
    global: &Global,
) -> Result<SettingsView, ApiError> {
    let path = crate::cli::settings_path(global).map_err(internal)?;
    let settings = vmdesk_core::Settings::load(&path)?;
    let a = &settings.azure;
    let azure_secret_kept = !a.tenant_id.is_empty()
        && !a.client_id.is_empty()
        && vmdesk_azure::credentials::secret(&a.tenant_id, &a.client_id)
            .ok()
            .flatten()
            .is_some();
    Ok(SettingsView {
        path: path.display().to_string(),
        settings,
        azure_secret_kept,
        hosts: core.host_list(actor)?,
    })
}

/// Restarts the status-sync child so it reads the new settings.
fn restart_watcher(ctx: &Ctx, settings: &vmdesk_core::Settings) -> Result<(), ApiError> {
    ctx.sync.restart(settings.sync.enabled);
    Ok(())
}

/// The health of status sync: last pass, last error, hosts unreachable,
/// restarts of its process (also sent as `sync-health` events).
#[tauri::command]
async fn sync_health(ctx: State<'_, Ctx>) -> Result<SyncHealth, ApiError> {
    Ok(ctx.sync.health())
}

/// Checks the installation as `vmdesk doctor` does: data directory,
/// database, settings, hosts, libvirt, console ports, keyring.
#[tauri::command]
async fn doctor(ctx: State<'_, Ctx>) -> Result<Vec<vmdesk_core::doctor::Check>, ApiError> {
    let global = ctx.global.clone();
    tauri::async_runtime::spawn_blocking(move || crate::doctor::checks(&global))
        .await
        .map_err(internal)
}

/// Opens a console on a running VM: a bridge on a pool port whose
/// single-use token is in the returned URL (noVNC connects to it).
#[tauri::command]
async fn console_open(
    ctx: State<'_, Ctx>,
    vm: String,
) -> Result<vmdesk_console::OpenConsole, ApiError> {
    let handle = ctx.consoles.open(&ctx.actor, &vm).await?;
    let console = handle.console.clone();
    let port = console.grant.port;
    let mut open = ctx.open_consoles.lock().unwrap_or_else(|p| p.into_inner());
    open.retain(|_, h| !h.is_finished());
    open.insert(port, handle);
    Ok(console)
}

/// What an open console's display offers now: a clipboard agent in the
/// guest (copy and paste both ways) and a display that takes the window's
/// size. The window asks again while the guest boots.
#[tauri::command]
async fn console_features(
    ctx: State<'_, Ctx>,
    port: u16,
) -> Result<vmdesk_core::provider::DisplayFeatures, ApiError> {
    let (host, machine) = ctx
        .open_consoles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&port)
        .map(|h| {
            (
                h.console.grant.host.clone(),
                h.console.grant.machine.clone(),
            )
        })
        .ok_or_else(|| ApiError {
            code: "unknown_console",
            message: format!("no console of this window is on port {port}"),
        })?;
    let core = Arc::clone(&ctx.core);
    tauri::async_runtime::spawn_blocking(move || core.display_features(&host, &machine))
        .await
        .map_err(internal)?
        .map_err(ApiError::from)
}

/// The person's own settings (the settings file's `[desktop]`), read afresh:
/// only the file, not the keyring the whole settings view asks.
async fn desktop_settings(ctx: &Ctx) -> Result<vmdesk_core::settings::DesktopSettings, ApiError> {
    let global = ctx.global.clone();
    tauri::async_runtime::spawn_blocking(move || {
        let path = crate::cli::settings_path(&global).map_err(internal)?;
        Ok(vmdesk_core::Settings::load(&path)?.desktop)
    })
    .await
    .map_err(internal)?
}

/// Most text a guest may put on the desktop's clipboard at once (QEMU's own
/// limit for a clipboard message).
const GUEST_CLIPBOARD_MAX: usize = 1 << 20;

/// Text copied in a VM, for the desktop's clipboard: written unless the
/// person turned that off (Settings: *Text copied in a VM reaches your
/// clipboard*). Whether it was written.
#[tauri::command]
async fn console_copied(
    app: AppHandle,
    ctx: State<'_, Ctx>,
    text: String,
) -> Result<bool, ApiError> {
    if !desktop_settings(&ctx).await?.guest_clipboard {
        return Ok(false);
    }
    if text.len() > GUEST_CLIPBOARD_MAX {
        return Err(ApiError {
            code: "invalid_input",
            message: format!(
                "the VM copied {} bytes; at most {GUEST_CLIPBOARD_MAX} reach the clipboard",
                text.len()
            ),
        });
    }
    copy_text(&app, &text)?;
    Ok(true)
}

/// The desktop clipboard's text, for a console's VM (its clipboard agent,
/// or typed): refused when the person turned that off (Settings: *Consoles
/// may read the clipboard*).
#[tauri::command]
async fn console_clipboard(app: AppHandle, ctx: State<'_, Ctx>) -> Result<String, ApiError> {
    use tauri_plugin_clipboard_manager::ClipboardExt;
    if !desktop_settings(&ctx).await?.clipboard {
        return Err(ApiError {
            code: "clipboard_off",
            message:
                "reading the clipboard is turned off in Settings (Consoles may read the clipboard)"
                    .into(),
        });
    }
    // An empty clipboard, or one that holds no text, is no text.
    Ok(app.clipboard().read_text().unwrap_or_default())
}

/// Closes a console (both sides) and returns its port.
#[tauri::command]
async fn console_close(ctx: State<'_, Ctx>, port: u16) -> Result<(), ApiError> {
    let handle = ctx
        .open_consoles
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&port);
    if let Some(h) = handle {
        h.close().await;
    }
    Ok(())
}

#[tauri::command]
async fn settings_get(ctx: State<'_, Ctx>) -> Result<SettingsView, ApiError> {
    settings_view(&ctx).await
}

/// A refused settings save: the code, a sentence, and each field that
/// cannot be used with why (the window shows each beside its field).
#[derive(Debug, Serialize)]
struct SettingsError {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fields: Vec<vmdesk_core::settings::FieldError>,
}

impl From<ApiError> for SettingsError {
    fn from(e: ApiError) -> Self {
        Self {
            code: e.code,
            message: e.message,
            fields: Vec::new(),
        }
    }
}

impl From<vmdesk_core::Error> for SettingsError {
    fn from(e: vmdesk_core::Error) -> Self {
        ApiError::from(e).into()
    }
}

/// The values of `settings` that cannot be used, each with its field, without
/// saving anything (the window checks as the person types).
#[tauri::command]
async fn settings_check(
    settings: vmdesk_core::Settings,
) -> Result<Vec<vmdesk_core::settings::FieldError>, ApiError> {
    Ok(settings.problems())
}

/// Checks and writes the settings file, then restarts status sync on it.
/// A user who is not an admin changes only their own part (`desktop`); the
/// rest of the file stays as it is.
#[tauri::command]
async fn settings_save(
    ctx: State<'_, Ctx>,
    settings: vmdesk_core::Settings,
) -> Result<SettingsView, SettingsError> {
    let path = crate::cli::settings_path(&ctx.global).map_err(internal)?;
    let role = blocking(&ctx, |core, actor| core.user(actor)).await?.role;
    let on_disk = vmdesk_core::Settings::load(&path)?;
    // The team store is changed only by a login or logout (this page's
    // Store section, or the CLI's), never by a save of a page loaded before.
    let store = on_disk.store.clone();
    let mut settings = vmdesk_core::Settings::as_changed_by(on_disk, settings, role);
    settings.store = store;
    let fields = settings.problems();
    if let Some(first) = fields.first() {
        let message = if fields.len() == 1 {
            first.message.clone()
        } else {
            format!(
                "{} settings cannot be used; see the marked fields.",
                fields.len()
            )
        };
        return Err(SettingsError {
            code: "invalid_setting",
            message,
            fields,
        });
    }
    settings.save(&path)?;
    restart_watcher(&ctx, &settings)?;
    Ok(settings_view(&ctx).await?)
}

/// A change of the store the desk starts on, from the Settings page (a
/// login to a team store or a logout): what to tell the person. The
/// running app keeps its open store until it starts again.
#[derive(Debug, Serialize, ts_rs::TS)]
#[ts(export)]
struct StoreChange {
    /// The sentence the page shows, ending with what to do: restart.
    message: String,
    /// Whether the next start is on a team store.
    team: bool,
}

impl From<crate::store::LoginError> for SettingsError {
    fn from(e: crate::store::LoginError) -> Self {
        Self {
            code: if e.field.is_some() {
                "login_refused"
            } else {
                "login_failed"
            },
            fields: e
                .field
                .map(|f| vmdesk_core::settings::FieldError {
                    field: f.into(),
                    message: e.message.clone(),
                })
                .into_iter()
                .collect(),
            message: e.message,
        }
    }
}

/// Logs this desk in to a team store, as `vmdesk login` does (the same
/// code): the URL checked, the password checked by the server, kept in the
/// OS keyring, and the URL without it written as `[store] url`. The URL
/// must not carry the password (the settings refuse it). A refusal names
/// its field (`store.url`, `store.password`); nothing is saved then. The
/// desk's own settings and the OS user's keyring: no admin check. The
/// password goes nowhere else (never logged, never returned).
#[tauri::command]
async fn store_login(
    ctx: State<'_, Ctx>,
    url: String,
    password: String,
) -> Result<StoreChange, SettingsError> {
    let path = crate::cli::settings_path(&ctx.global).map_err(internal)?;
    // Connecting blocks on the PostgreSQL client's own runtime: off this one.
    let done = tauri::async_runtime::spawn_blocking(
        move || -> Result<crate::store::LoggedIn, crate::store::LoginError> {
            let raw = url.trim();
            if let Some(m) = vmdesk_core::settings::store_url_problem(raw) {
                return Err(crate::store::LoginError {
                    field: Some("store.url"),
                    message: m,
                });
            }
            let (account, target) = crate::store::login_target(raw)?;
            if password.is_empty() {
                return Err(crate::store::LoginError {
                    field: Some("store.password"),
                    message: format!(
                        "Enter the password of {} on {}.",
                        target.user(),
                        target.describe()
                    ),
                });
            }
            crate::store::log_in(
                &path,
                &account,
                target,
                &password,
                crate::store::Source::None,
            )
        },
    )
    .await
    .map_err(internal)??;
    tracing::info!(store = %done.place, login = %done.login, "logged in to a team store from the window");
    Ok(StoreChange {
        message: format!(
            "Logged in to {} as {}. Restart vmdesk to work on the team store.",
            done.place, done.login
        ),
        team: true,
    })
}

/// Logs this desk out of its team store, as `vmdesk logout` does: the
/// password leaves the OS keyring and `[store] url` the settings; the next
/// start is on the desk's own embedded store (the team store keeps
/// everything).
#[tauri::command]
async fn store_logout(ctx: State<'_, Ctx>) -> Result<StoreChange, ApiError> {
    let path = crate::cli::settings_path(&ctx.global).map_err(internal)?;
    let out = tauri::async_runtime::spawn_blocking(move || crate::store::log_out(&path))
        .await
        .map_err(internal)?
        .map_err(|e| ApiError {
            code: "logout_failed",
            message: format!("{e:#}"),
        })?;
    let Some(out) = out else {
        if ctx.core.team().is_some() {
            return Err(ApiError {
                code: "not_logged_in",
                message: "The settings file names no team store: this run's was given with --store \
                          or VMDESK_STORE. Start vmdesk without it to work on this desk's own store."
                    .into(),
            });
        }
        return Ok(StoreChange {
            message: "Not logged in to a team store: this desk works on its own store.".into(),
            team: false,
        });
    };
    tracing::info!(store = %out.place, "logged out of a team store from the window");
    let mut message = format!(
        "Logged out of {}. Restart vmdesk to work on this desk's own store.",
        out.place
    );
    if let Some(w) = out.warning {
        message = format!("{message} ({w}.)");
    }
    Ok(StoreChange {
        message,
        team: false,
    })
}

/// Starts vmdesk again (after a login or logout, to open the new store).
#[tauri::command]
fn app_restart(app: AppHandle) {
    app.restart();
}

/// Keeps an Azure service principal: the secret goes to the OS keyring after
/// a token has been granted with it; tenant and client go to the settings.
#[tauri::command]
async fn azure_login(
    ctx: State<'_, Ctx>,
    tenant: String,
    client_id: String,
    secret: String,
) -> Result<SettingsView, ApiError> {
    // The service principal is the admin's part of the settings.
    blocking(&ctx, |core, actor| {
        core.require_admin(actor, "keep an Azure service principal")
    })
    .await?;
    let path = crate::cli::settings_path(&ctx.global).map_err(internal)?;
    let mut settings = vmdesk_core::Settings::load(&path)?;
    let mut azure = settings.azure.clone();
    tauri::async_runtime::spawn_blocking(move || {
        vmdesk_azure::credentials::login(&mut azure, &tenant, &client_id, &secret).map(|()| azure)
    })
    .await
    .map_err(internal)?
    .map(|azure| settings.azure = azure)
    .map_err(provider_error)?;
    settings.save(&path)?;
    restart_watcher(&ctx, &settings)?;
    settings_view(&ctx).await
}

/// Adds a host: a libvirt URI, or an Azure subscription (and resource groups).
#[tauri::command]
async fn host_add(
    ctx: State<'_, Ctx>,
    name: String,
    uri: Option<String>,
    subscription: Option<String>,
    resource_groups: Vec<String>,
) -> Result<SettingsView, ApiError> {
    let uri = match (uri, subscription) {
        (Some(uri), None) => uri,
        (None, Some(sub)) => {
            vmdesk_azure::Target::uri(&sub, &resource_groups).map_err(provider_error)?
        }
        _ => {
            return Err(ApiError {
                code: "invalid",
                message: "give either a libvirt URI or an Azure subscription".into(),
            })
        }
    };
    blocking(&ctx, move |core, actor| core.host_add(actor, &name, &uri)).await?;
    restart_watcher(
        &ctx,
        &vmdesk_core::Settings::load(&crate::cli::settings_path(&ctx.global).map_err(internal)?)?,
    )?;
    settings_view(&ctx).await
}

/// Adopts a host's unknown VMs into a project's pool.
#[tauri::command]
async fn host_import(
    ctx: State<'_, Ctx>,
    host: String,
    project: String,
) -> Result<vmdesk_core::ImportReport, ApiError> {
    blocking(&ctx, move |core, actor| {
        core.host_import(actor, &host, &project, None)
    })
    .await
}

/// How the actor logs in to a VM by SSH: the command line to paste.
#[tauri::command]
async fn ssh_command(ctx: State<'_, Ctx>, vm: String) -> Result<String, ApiError> {
    blocking(&ctx, move |core, actor| {
        core.ssh_target(actor, &vm).map(|t| t.command_line())
    })
    .await
}

/// Puts the SSH command of a VM on the desktop's clipboard; returns it.
#[tauri::command]
async fn copy_ssh_command(
    app: AppHandle,
    ctx: State<'_, Ctx>,
    vm: String,
) -> Result<String, ApiError> {
    let line = blocking(&ctx, move |core, actor| {
        core.ssh_target(actor, &vm).map(|t| t.command_line())
    })
    .await?;
    copy_text(&app, &line)?;
    Ok(line)
}

fn copy_text(app: &AppHandle, text: &str) -> Result<(), ApiError> {
    use tauri_plugin_clipboard_manager::ClipboardExt;
    app.clipboard().write_text(text).map_err(|e| ApiError {
        code: "clipboard",
        message: format!("the clipboard cannot be written: {e}"),
    })
}

/// Opens the desktop's terminal emulator logged in to a VM; returns the
/// terminal's name.
#[tauri::command]
async fn open_terminal(ctx: State<'_, Ctx>, vm: String) -> Result<String, ApiError> {
    let target = blocking(&ctx, move |core, actor| core.ssh_target(actor, &vm)).await?;
    crate::terminal::open("ssh", &target.args()).map_err(|e| ApiError {
        code: "no_terminal",
        message: e.to_string(),
    })
}

/// An error as the window gets it: a stable code and the core's sentence.
#[derive(Debug, Serialize)]
struct ApiError {
    code: &'static str,
    message: String,
}

impl From<vmdesk_core::Error> for ApiError {
    fn from(e: vmdesk_core::Error) -> Self {
        Self {
            code: e.code(),
            message: e.one_line(),
        }
    }
}

async fn blocking<T: Send + 'static>(
    ctx: &State<'_, Ctx>,
    f: impl FnOnce(&Core, &str) -> vmdesk_core::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let core = Arc::clone(&ctx.core);
    let actor = ctx.actor.clone();
    tauri::async_runtime::spawn_blocking(move || f(&core, &actor))
        .await
        .map_err(|e| ApiError {
            code: "internal",
            message: e.to_string(),
        })?
        .map_err(ApiError::from)
}

#[tauri::command]
async fn overview(ctx: State<'_, Ctx>) -> Result<Overview, ApiError> {
    blocking(&ctx, |core, actor| core.overview(actor)).await
}

#[tauri::command]
async fn open_session(ctx: State<'_, Ctx>, request: SessionRequest) -> Result<Session, ApiError> {
    // Allocation is committed here; the worker starts the VM.
    let s = blocking(&ctx, move |core, actor| {
        core.session_open(actor, &request, false)
    })
    .await?;
    let _ = ctx.wake.lock().map(|w| w.send(()));
    Ok(s)
}

#[tauri::command]
async fn close_session(ctx: State<'_, Ctx>, id: i64) -> Result<Session, ApiError> {
    let s = blocking(&ctx, move |core, actor| {
        core.session_close(actor, id, false)
    })
    .await?;
    let _ = ctx.wake.lock().map(|w| w.send(()));
    Ok(s)
}

/// Event carrying a VM creation's progress (a `Progress`).
const PROGRESS: &str = "vm-progress";

#[tauri::command]
async fn quote(ram_mb: i64, disk_gb: i64, cpus: i64) -> Result<vmdesk_core::Quote, ApiError> {
    Ok(vmdesk_core::quote(ram_mb, disk_gb, cpus)?)
}

/// The launch form's price: checks the OS's minimum and the size, and gives
/// the creation's cost and the hourly running cost (the core's billing rate).
#[tauri::command]
async fn price(
    ctx: State<'_, Ctx>,
    os: String,
    ram_mb: i64,
    disk_gb: i64,
    cpus: i64,
) -> Result<vmdesk_core::Price, ApiError> {
    blocking(&ctx, move |core, _| core.price(&os, ram_mb, disk_gb, cpus)).await
}

/// Where the launch form's VM would run and the room there (`host` none:
/// placed by capacity); refuses, with the core's sentence, when it fits no
/// host. Nothing is charged.
#[tauri::command]
async fn placement(
    ctx: State<'_, Ctx>,
    ram_mb: i64,
    os: String,
    host: Option<String>,
) -> Result<vmdesk_core::Placement, ApiError> {
    blocking(&ctx, move |core, actor| {
        core.placement(actor, ram_mb, &os, host.as_deref())
    })
    .await
}

/// The hosts with their reachability, VMs, room, console path and last
/// event (the Hosts table), each host asked in parallel.
#[tauri::command]
async fn host_overview(ctx: State<'_, Ctx>) -> Result<Vec<vmdesk_core::HostView>, ApiError> {
    blocking(&ctx, move |core, actor| core.host_overview(actor)).await
}

/// Checks a VM name with the core's rule (the launch form, as you type).
#[tauri::command]
async fn validate_vm_name(name: String) -> Result<(), ApiError> {
    Ok(vmdesk_core::validate::vm_name(&name)?)
}

/// Asks the desktop for a disk image to import (the OS import's Browse…):
/// its path, or none when the user cancels.
#[tauri::command]
async fn pick_image_file(app: AppHandle) -> Result<Option<String>, ApiError> {
    use tauri_plugin_dialog::DialogExt;
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.dialog()
        .file()
        .set_title("Choose a disk image to import")
        .add_filter("Disk images (qcow2, raw)", &["qcow2", "img", "raw"])
        .pick_file(move |p| {
            let _ = tx.send(p);
        });
    let picked = rx.await.ok().flatten();
    Ok(picked
        .and_then(|p| p.into_path().ok())
        .map(|p| p.display().to_string()))
}

/// Checks a project's or workspace's name as the core would, for the forms'
/// as-you-type errors.
#[tauri::command]
async fn validate_name(kind: String, name: String) -> Result<(), ApiError> {
    let kind = match kind.as_str() {
        "project" => "project",
        "workspace" => "workspace",
        other => {
            return Err(vmdesk_core::Error::Invalid(format!("no kind of name {other:?}")).into())
        }
    };
    Ok(vmdesk_core::validate::name(kind, &name)?)
}

#[tauri::command]
async fn os_catalog(ctx: State<'_, Ctx>) -> Result<Vec<vmdesk_core::OsEntry>, ApiError> {
    blocking(&ctx, |core, _| core.os_list()).await
}

#[tauri::command]
async fn my_vms(ctx: State<'_, Ctx>) -> Result<Vec<Vm>, ApiError> {
    blocking(&ctx, |core, actor| core.vm_list_own(actor)).await
}

/// Creates a VM in the background; the window follows it through `vm-progress`
/// events and returns at once with the VM CREATING (credits already paid).
#[tauri::command]
async fn create_vm(app: AppHandle, ctx: State<'_, Ctx>, spec: VmCreate) -> Result<Vm, ApiError> {
    // Payment and the CREATING row are committed before this returns; the
    // provisioning runs on, along the same path the CLI waits on.
    let vm = blocking(&ctx, move |core, actor| {
        core.vm_create(actor, &spec, false, None)
    })
    .await?;
    let (core, id) = (Arc::clone(&ctx.core), vm.id);
    tauri::async_runtime::spawn_blocking(move || {
        let report = |p: &Progress| {
            let _ = app.emit(PROGRESS, p);
        };
        if let Err(e) = core.provision_vm(id, Some(&report)) {
            tracing::warn!(vm = id, error = %e.one_line(), "creation failed");
        }
    });
    Ok(vm)
}

#[tauri::command]
async fn vm_events(ctx: State<'_, Ctx>, vm: String) -> Result<Vec<Event>, ApiError> {
    blocking(&ctx, move |core, actor| core.vm_events(actor, &vm, 100)).await
}

#[tauri::command]
async fn vm_meta(
    ctx: State<'_, Ctx>,
    vm: String,
    key: String,
    value: String,
) -> Result<Vm, ApiError> {
    blocking(&ctx, move |core, actor| {
        core.vm_meta(actor, &vm, &[(key, value)])
    })
    .await
}

#[tauri::command]
async fn vm_action(ctx: State<'_, Ctx>, vm: String, action: VmAction) -> Result<Vm, ApiError> {
    blocking(&ctx, move |core, actor| core.vm_action(actor, &vm, action)).await
}

/// The acting user (name, role, balance).
#[tauri::command]
async fn me(ctx: State<'_, Ctx>) -> Result<User, ApiError> {
    blocking(&ctx, |core, actor| core.user(actor)).await
}

/// One VM, by name, if the actor may see it.
#[tauri::command]
async fn vm_show(ctx: State<'_, Ctx>, vm: String) -> Result<Vm, ApiError> {
    blocking(&ctx, move |core, actor| core.vm_show(actor, &vm)).await
}

/// Every VM the actor can see; with `all`, every user's (admin only).
#[tauri::command]
async fn vm_list(ctx: State<'_, Ctx>, all: bool) -> Result<Vec<Vm>, ApiError> {
    blocking(&ctx, move |core, actor| core.vm_list(actor, all)).await
}

/// The VM list's rows changed since `since` (issue 16: a change refetches
/// only these).
#[tauri::command]
async fn vm_changes(
    ctx: State<'_, Ctx>,
    all: bool,
    since: Option<String>,
) -> Result<vmdesk_core::VmChanges, ApiError> {
    blocking(&ctx, move |core, actor| {
        core.vm_changes(actor, all, since.as_deref())
    })
    .await
}

/// Sets or ends the idle shutdown of an own VM.
#[tauri::command]
async fn vm_idle_stop(
    ctx: State<'_, Ctx>,
    vm: String,
    minutes: Option<i64>,
) -> Result<Vm, ApiError> {
    blocking(&ctx, move |core, actor| {
        core.vm_idle_stop(actor, &vm, minutes)
    })
    .await
}

/// The event feed, filtered.
#[tauri::command]
async fn events_query(ctx: State<'_, Ctx>, query: EventQuery) -> Result<Vec<Event>, ApiError> {
    blocking(&ctx, move |core, actor| core.events_query(actor, &query)).await
}

/// A user's balance and ledger (the actor's own without `user`).
#[tauri::command]
async fn credits(ctx: State<'_, Ctx>, user: Option<String>) -> Result<CreditStatement, ApiError> {
    blocking(&ctx, move |core, actor| {
        core.credits_show(actor, user.as_deref())
    })
    .await
}

/// Every user (admin only).
#[tauri::command]
async fn users(ctx: State<'_, Ctx>) -> Result<Vec<User>, ApiError> {
    blocking(&ctx, |core, actor| core.user_list(actor)).await
}

/// A user just added; on a team store, with its login's password (shown
/// once, never kept) and the URL to log in with.
#[derive(Debug, Serialize, ts_rs::TS)]
#[ts(export)]
struct UserAdded {
    /// The user.
    user: User,
    /// The generated password of the user's login (team store only).
    password: Option<String>,
    /// `vmdesk login` this URL to use it (team store only).
    login_url: Option<String>,
}

/// Adds a user (admin only); on a team store its login too, with a
/// generated password returned once.
#[tauri::command]
async fn user_add(
    ctx: State<'_, Ctx>,
    name: String,
    admin: bool,
    credits: i64,
) -> Result<UserAdded, ApiError> {
    let global = ctx.global.clone();
    blocking(&ctx, move |core, actor| {
        let password = core.team().map(|_| vmdesk_postgres::generate_password());
        let user = core.user_add_login(actor, &name, admin, credits, password.as_deref())?;
        let login_url = password
            .as_ref()
            .and_then(|_| crate::store::login_hint(&global, &user.name));
        Ok(UserAdded {
            user,
            password,
            login_url,
        })
    })
    .await
}

/// Changes a user's role (admin only).
#[tauri::command]
async fn user_role(ctx: State<'_, Ctx>, name: String, role: Role) -> Result<User, ApiError> {
    blocking(&ctx, move |core, actor| core.user_role(actor, &name, role)).await
}

/// Grants credits (admin only).
#[tauri::command]
async fn credits_grant(
    ctx: State<'_, Ctx>,
    user: String,
    amount: i64,
    reason: String,
) -> Result<CreditStatement, ApiError> {
    blocking(&ctx, move |core, actor| {
        core.credits_grant(actor, &user, amount, &reason)
    })
    .await
}

/// Adds credits to a balance or takes them, as an adjustment (admin only).
#[tauri::command]
async fn credits_adjust(
    ctx: State<'_, Ctx>,
    user: String,
    amount: i64,
    reason: String,
) -> Result<CreditStatement, ApiError> {
    blocking(&ctx, move |core, actor| {
        core.credits_adjust(actor, &user, amount, &reason)
    })
    .await
}

/// Refunds the creation charge of a VM whose creation failed (admin only).
#[tauri::command]
async fn credits_refund(
    ctx: State<'_, Ctx>,
    vm: String,
    reason: String,
) -> Result<LedgerEntry, ApiError> {
    blocking(&ctx, move |core, actor| {
        core.credits_refund(actor, &vm, &reason)
    })
    .await
}

/// Creates a project (admin only), as `vmdesk project create`.
#[tauri::command]
async fn project_create(
    ctx: State<'_, Ctx>,
    name: String,
) -> Result<vmdesk_core::Project, ApiError> {
    blocking(&ctx, move |core, actor| core.project_create(actor, &name)).await
}

/// Renames (with `new`) or deletes (without) a project, or a workspace of
/// it when `workspace` is given (admin only), as `vmdesk project|workspace
/// rename|delete`.
#[tauri::command]
async fn place_change(
    ctx: State<'_, Ctx>,
    project: String,
    workspace: Option<String>,
    new: Option<String>,
) -> Result<(), ApiError> {
    blocking(&ctx, move |core, actor| match (workspace, new) {
        (None, Some(new)) => core.project_rename(actor, &project, &new).map(|_| ()),
        (None, None) => core.project_delete(actor, &project),
        (Some(w), Some(new)) => core.workspace_rename(actor, &project, &w, &new).map(|_| ()),
        (Some(w), None) => core.workspace_delete(actor, &project, &w),
    })
    .await
}

/// Creates a workspace in a project (admin only), as `vmdesk workspace create`.
#[tauri::command]
async fn workspace_create(
    ctx: State<'_, Ctx>,
    name: String,
    project: String,
) -> Result<vmdesk_core::Workspace, ApiError> {
    blocking(&ctx, move |core, actor| {
        core.workspace_create(actor, &name, &project)
    })
    .await
}

/// Adds pool VMs (admin only): one named `spec.name` as `vmdesk vm add`,
/// or `count` named NAME-1… at once as `vmdesk pool fill` (all or nothing),
/// telling the window how far it is through `pool-progress`.
#[tauri::command]
async fn pool_vm_add(
    app: AppHandle,
    ctx: State<'_, Ctx>,
    spec: vmdesk_core::NewVm,
    count: u32,
) -> Result<Vec<Vm>, ApiError> {
    blocking(&ctx, move |core, actor| {
        if count == 1 {
            return core.vm_add(actor, &spec).map(|vm| vec![vm]);
        }
        let fill = vmdesk_core::templates::Fill {
            project: spec.pool.clone(),
            template: spec.os_type.clone(),
            count,
            vm_type: Some(spec.vm_type.clone()),
            prefix: Some(spec.name.clone()),
            host: Some(spec.host.clone()),
            ram_mb: Some(spec.ram_mb),
            disk_gb: Some(spec.disk_gb),
            cpus: Some(spec.cpu_cores),
        };
        let report = |done: u32, of: u32| {
            let _ = app.emit(
                POOL_PROGRESS,
                serde_json::json!({"project": fill.project, "done": done, "of": of}),
            );
        };
        core.pool_fill(actor, &fill, &report)
    })
    .await
}

/// Event carrying a pool fill's progress: `{project, done, of}`.
const POOL_PROGRESS: &str = "pool-progress";

/// Makes a template (an OS image of the catalog) from a stopped VM's disk
/// (admin only), as `vmdesk vm template`; its copy's progress goes out as
/// `os-progress`.
#[tauri::command]
async fn vm_template(
    app: AppHandle,
    ctx: State<'_, Ctx>,
    vm: String,
    name: String,
) -> Result<vmdesk_core::OsEntry, ApiError> {
    blocking(&ctx, move |core, actor| {
        let report = os_progress(app, name.clone());
        core.vm_template(actor, &vm, &name, &report)
    })
    .await
}

/// Tells the window an image copy's progress (`os-progress`): at most ~20
/// times a second, and the end always.
fn os_progress(app: AppHandle, name: String) -> impl Fn(u64, u64) {
    let last = Mutex::new(std::time::Instant::now());
    move |done: u64, total: u64| {
        let mut at = last.lock().unwrap_or_else(|p| p.into_inner());
        if done != 0 && done < total && at.elapsed() < Duration::from_millis(50) {
            return;
        }
        *at = std::time::Instant::now();
        let _ = app.emit(
            OS_PROGRESS,
            serde_json::json!({"name": name, "done": done, "total": total}),
        );
    }
}

/// One row of the Admin view's OS catalog: an image and how many VMs use it.
#[derive(Debug, Clone, serde::Serialize)]
struct OsRow {
    #[serde(flatten)]
    os: vmdesk_core::OsEntry,
    /// VMs (that the user can see) of this OS.
    used_by: u64,
}

/// The OS catalog with each image's use count.
#[tauri::command]
async fn os_admin_list(ctx: State<'_, Ctx>) -> Result<Vec<OsRow>, ApiError> {
    blocking(&ctx, |core, actor| {
        let uses = core.os_uses(actor)?;
        Ok(core
            .os_list()?
            .into_iter()
            .map(|os| OsRow {
                used_by: uses.get(&os.name).copied().unwrap_or(0),
                os,
            })
            .collect())
    })
    .await
}

/// Event carrying an OS import's progress: `{name, done, total}` in bytes.
const OS_PROGRESS: &str = "os-progress";

/// Imports a qcow2 image into the OS catalog (admin), as `vmdesk os
/// import`, telling the window how far the copy is through `os-progress`.
#[tauri::command]
async fn os_import(
    app: AppHandle,
    ctx: State<'_, Ctx>,
    name: String,
    file: String,
    min_ram_mb: Option<i64>,
    min_disk_gb: Option<i64>,
) -> Result<vmdesk_core::OsEntry, ApiError> {
    blocking(&ctx, move |core, actor| {
        let report = os_progress(app, name.clone());
        core.os_import_progress(
            actor,
            &name,
            std::path::Path::new(&file),
            (min_ram_mb, min_disk_gb),
            &report,
        )
    })
    .await
}

/// Removes an unused OS image from the catalog (admin), as `vmdesk os remove`.
#[tauri::command]
async fn os_remove(ctx: State<'_, Ctx>, name: String) -> Result<(), ApiError> {
    blocking(&ctx, move |core, actor| core.os_remove(actor, &name)).await
}

/// Sets a project's cost controls (admin only).
#[tauri::command]
async fn project_limits(
    ctx: State<'_, Ctx>,
    project: String,
    limits: vmdesk_core::ProjectLimits,
) -> Result<vmdesk_core::Project, ApiError> {
    blocking(&ctx, move |core, actor| {
        core.project_limits(actor, &project, &limits)
    })
    .await
}

/// What the Admin view's maintenance buttons did, in one sentence each.
#[derive(Debug, Clone, serde::Serialize)]
struct Maintenance {
    /// What was done, for the window's note.
    summary: String,
    /// The details (events, changes, ports), as the CLI's JSON prints them.
    details: serde_json::Value,
}

/// `vmdesk recover`, from the Admin view (admin only): settles crashed
/// work and lists the quarantined leftovers.
#[tauri::command]
async fn admin_recover(ctx: State<'_, Ctx>) -> Result<Maintenance, ApiError> {
    blocking(&ctx, |core, actor| {
        let repairs = core.recover_all(actor)?;
        let quarantined = core.quarantined(actor)?;
        let summary = match (repairs.len(), quarantined.len()) {
            (0, 0) => "Nothing to recover, nothing quarantined.".to_owned(),
            (r, q) => format!("Recovery settled {r} piece(s) of work; {q} machine(s) quarantined."),
        };
        Ok(Maintenance {
            summary,
            details: serde_json::json!({"repairs": repairs, "quarantined": quarantined}),
        })
    })
    .await
}

/// `vmdesk sync --once`, from the Admin view (admin only): the fast and
/// the full pass, then the addresses.
#[tauri::command]
async fn admin_sync_once(ctx: State<'_, Ctx>) -> Result<Maintenance, ApiError> {
    blocking(&ctx, |core, actor| {
        core.require_admin(actor, "run status sync")?;
        let mut changes = core.sync_and_bill(false, "poll")?;
        changes.extend(core.sync_and_bill(true, "poll")?);
        let addresses = core.sync_addresses(true, true, "poll")?;
        let summary = if changes.is_empty() && addresses.is_empty() {
            "Status sync: everything is in sync.".to_owned()
        } else {
            format!(
                "Status sync: {} status change(s), {} address change(s).",
                changes.len(),
                addresses.len()
            )
        };
        Ok(Maintenance {
            summary,
            details: serde_json::json!({"changes": changes, "addresses": addresses}),
        })
    })
    .await
}

/// `vmdesk ports cleanup`, from the Admin view (admin only): frees the
/// ports of consoles whose process is gone.
#[tauri::command]
async fn admin_ports_cleanup(ctx: State<'_, Ctx>) -> Result<Maintenance, ApiError> {
    blocking(&ctx, |core, actor| {
        core.require_admin(actor, "free console ports")?;
        let freed = core.console_cleanup()?;
        Ok(Maintenance {
            summary: match freed.len() {
                0 => "No console port was held by a process that is gone.".to_owned(),
                n => format!("Freed {n} console port(s)."),
            },
            details: serde_json::json!(freed),
        })
    })
    .await
}

/// The console port pool and its open consoles.
#[tauri::command]
async fn ports(ctx: State<'_, Ctx>) -> Result<PortStats, ApiError> {
    let range = ctx.consoles.range();
    blocking(&ctx, move |core, _| core.console_stats(range)).await
}

/// Follows a VM's counters: `vm-stats` events every second until another VM
/// (or none) is asked for.
#[tauri::command]
async fn stats_watch(ctx: State<'_, Ctx>, vm: Option<String>) -> Result<(), ApiError> {
    *ctx.stats_vm.lock().unwrap_or_else(|p| p.into_inner()) = vm;
    Ok(())
}

#[tauri::command]
async fn app_info(ctx: State<'_, Ctx>) -> Result<AppInfo, ApiError> {
    Ok(AppInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        data_dir: crate::cli::data_dir(&ctx.global)
            .map_err(internal)?
            .display()
            .to_string(),
        settings_path: crate::cli::settings_path(&ctx.global)
            .map_err(internal)?
            .display()
            .to_string(),
        start_view: ctx.global.view.clone(),
        store: store_info(&ctx)?,
    })
}

/// The window says it shows its data: logs the time since the process
/// started (and writes it to `$VMDESK_READY_FILE`, for the start benchmark).
#[tauri::command]
fn ready(ctx: State<'_, Ctx>) -> u64 {
    let ms = u64::try_from(ctx.started.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::info!(ms, "window ready");
    if let Some(file) = std::env::var_os("VMDESK_READY_FILE") {
        let _ = std::fs::write(file, ms.to_string());
    }
    ms
}

/// Quits the app (the window's close button only hides it to the tray).
#[tauri::command]
fn app_quit(app: AppHandle) {
    app.exit(0);
}

/// Samples the watched VM's counters every second and sends them to the window.
fn stats_loop(app: AppHandle, core: Arc<Core>, actor: String, watched: Arc<Mutex<Option<String>>>) {
    let mut prev: Option<VmStats> = None;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(vm) = watched.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            prev = None;
            continue;
        };
        let update = match core.vm_stats(&actor, &vm, prev.as_ref()) {
            Ok(s) => {
                prev = Some(s.clone());
                StatsUpdate {
                    vm,
                    stats: Some(s),
                    error: None,
                }
            }
            Err(e) => {
                prev = None;
                StatsUpdate {
                    vm,
                    stats: None,
                    error: Some(e.one_line()),
                }
            }
        };
        let _ = app.emit(STATS, update);
    }
}

/// Event carrying a `StatsUpdate`.
const STATS: &str = "vm-stats";
/// Event asking the window to open a VM's console (from the tray).
const OPEN_CONSOLE: &str = "open-console";
/// Warnings younger than this make the tray icon amber.
const RECENT: Duration = Duration::from_secs(15 * 60);

/// The warnings concerning the actor in the last [`RECENT`].
fn recent_warnings(core: &Core, actor: &str) -> usize {
    let since = vmdesk_core::ago(RECENT);
    core.events_query(
        actor,
        &EventQuery {
            severities: vec![Severity::Warning, Severity::Critical],
            limit: 100,
            ..Default::default()
        },
    )
    .map(|e| e.iter().filter(|e| e.created_at >= since).count())
    .unwrap_or(0)
}

/// The tray as the core's data says it should be.
fn tray_model(core: &Core, actor: &str) -> Option<TrayModel> {
    let user = core.user(actor).ok()?;
    let own = core.vm_list_own(actor).ok()?;
    let sessions = core.session_list(actor, false).ok()?;
    let mut m = tray::model(&user, &own, &sessions, recent_warnings(core, actor));
    // Addresses: own VMs' from their rows, a session's VM's asked for.
    for v in &mut m.vms {
        v.ip = match own.iter().find(|o| o.name == v.name) {
            Some(o) => o.ip_address.clone(),
            None => core.vm_show(actor, &v.name).ok().and_then(|o| o.ip_address),
        };
    }
    Some(m)
}

fn tray_icon(app: &AppHandle, look: Look) -> Option<Image<'static>> {
    let base = app.default_window_icon()?;
    let rgba = tray::icon_rgba(base.rgba(), base.width(), look);
    Some(Image::new_owned(rgba, base.width(), base.height()))
}

fn tray_menu(app: &AppHandle, m: &TrayModel) -> tauri::Result<Menu<tauri::Wry>> {
    let menu = Menu::new(app)?;
    menu.append(&MenuItem::new(app, &m.summary, false, None::<&str>)?)?;
    menu.append(&PredefinedMenuItem::separator(app)?)?;
    for vm in &m.vms {
        let console = MenuItem::with_id(
            app,
            TrayAction::Console(vm.name.clone()).id(),
            "Open console",
            true,
            None::<&str>,
        )?;
        let (stop_id, stop_label) = match vm.session {
            Some(id) => (
                TrayAction::CloseSession(id).id(),
                format!("Close session {id}"),
            ),
            None => (TrayAction::Stop(vm.name.clone()).id(), "Stop".to_owned()),
        };
        let stop = MenuItem::with_id(app, stop_id, stop_label, vm.stoppable(), None::<&str>)?;
        let reachable = vm.stoppable() && vm.ip.is_some();
        let copy = MenuItem::with_id(
            app,
            TrayAction::CopySsh(vm.name.clone()).id(),
            "Copy SSH command",
            reachable,
            None::<&str>,
        )?;
        let terminal = MenuItem::with_id(
            app,
            TrayAction::Terminal(vm.name.clone()).id(),
            "Open terminal",
            reachable,
            None::<&str>,
        )?;
        menu.append(&Submenu::with_items(
            app,
            vm.label(),
            true,
            &[&console, &copy, &terminal, &stop],
        )?)?;
    }
    if m.more > 0 {
        let more = MenuItem::new(app, format!("{} more", m.more), false, None::<&str>)?;
        menu.append(&more)?;
    }
    if m.vms.is_empty() {
        menu.append(&MenuItem::new(app, "Nothing running", false, None::<&str>)?)?;
    }
    menu.append(&PredefinedMenuItem::separator(app)?)?;
    menu.append(&MenuItem::with_id(
        app,
        TrayAction::Show.id(),
        "Show vmdesk",
        true,
        None::<&str>,
    )?)?;
    menu.append(&MenuItem::with_id(
        app,
        TrayAction::Quit.id(),
        "Quit",
        true,
        None::<&str>,
    )?)?;
    Ok(menu)
}

/// Brings the tray up to date; rebuilds the menu and icon only on a change.
fn refresh_tray(
    app: &AppHandle,
    core: &Core,
    actor: &str,
    sync: &SyncHealth,
    last: &mut Option<TrayModel>,
) {
    let (Some(tray), Some(mut m)) = (app.tray_by_id("main"), tray_model(core, actor)) else {
        return;
    };
    tray::with_sync(&mut m, sync);
    if last.as_ref() == Some(&m) {
        return;
    }
    let _ = tray.set_tooltip(Some(&m.tooltip));
    if last.as_ref().map(|l| l.look) != Some(m.look) {
        let _ = tray.set_icon(tray_icon(app, m.look));
    }
    if last.as_ref().map(|l| (&l.vms, l.more)) != Some((&m.vms, m.more)) {
        if let Ok(menu) = tray_menu(app, &m) {
            let _ = tray.set_menu(Some(menu));
        }
    }
    *last = Some(m);
}

fn show_window(app: &AppHandle) {
    if let Some(w) = app.get_webview_window("main") {
        let _ = w.show();
        let _ = w.unminimize();
        let _ = w.set_focus();
    }
}

/// Does what a tray menu item says; errors become notifications.
fn on_tray_action(app: &AppHandle, action: TrayAction) {
    let ctx = app.state::<Ctx>();
    let (core, actor) = (Arc::clone(&ctx.core), ctx.actor.clone());
    let worker_app = app.clone();
    let run = move |f: Box<dyn FnOnce() -> vmdesk_core::Result<()> + Send>| {
        let app = worker_app;
        std::thread::spawn(move || {
            if let Err(e) = f() {
                notify(&app, "vmdesk could not do that", &e.one_line());
            }
            if let Some(w) = app.try_state::<Ctx>() {
                let _ = w.wake.lock().map(|w| w.send(()));
            }
        });
    };
    match action {
        TrayAction::Show => show_window(app),
        // Not from inside the menu's own callback: GTK is still tearing the
        // menu down there, and exiting under it crashed the process now and
        // then (SIGSEGV, seen in app_tray). Queued, the exit runs once the
        // callback has returned.
        TrayAction::Quit => {
            let handle = app.clone();
            let _ = app.run_on_main_thread(move || handle.exit(0));
        }
        TrayAction::Console(vm) => {
            show_window(app);
            let _ = app.emit(OPEN_CONSOLE, vm);
        }
        TrayAction::CopySsh(vm) => {
            let app = app.clone();
            run(Box::new(move || {
                let line = core.ssh_target(&actor, &vm)?.command_line();
                match copy_text(&app, &line) {
                    Ok(()) => notify(&app, &format!("SSH command of {vm} copied"), &line),
                    Err(e) => notify(&app, "Copy SSH command", &e.message),
                }
                Ok(())
            }))
        }
        TrayAction::Terminal(vm) => {
            let app = app.clone();
            run(Box::new(move || {
                let target = core.ssh_target(&actor, &vm)?;
                if let Err(e) = crate::terminal::open("ssh", &target.args()) {
                    notify(&app, "Open terminal", &e.to_string());
                }
                Ok(())
            }))
        }
        TrayAction::Stop(vm) => {
            let app = app.clone();
            run(Box::new(move || {
                announce_stopping(&app, &core, &actor, &vm, None, Duration::from_secs(3));
                let v = core.vm_action(&actor, &vm, VmAction::Stop)?;
                let n = tray::stopped_notice(&v);
                notify(&app, &n.title, &n.body);
                Ok(())
            }))
        }
        TrayAction::CloseSession(id) => {
            let app = app.clone();
            run(Box::new(move || {
                let s = core.session_close(&actor, id, false)?;
                // The worker shuts the guest down: say when it will be forced
                // off once it has started (the end is a session.ended notice).
                announce_stopping(
                    &app,
                    &core,
                    &actor,
                    &s.vm_name,
                    Some(id),
                    Duration::from_secs(10),
                );
                Ok(())
            }))
        }
    }
}

/// Watches (on its own thread, for up to `within`) for `vm` to be STOPPING
/// and then notifies what happens next and when it is forced off: the
/// tray's feedback for a stop or a session close.
fn announce_stopping(
    app: &AppHandle,
    core: &Arc<Core>,
    actor: &str,
    vm: &str,
    session: Option<i64>,
    within: Duration,
) {
    let (app, core, actor, vm) = (
        app.clone(),
        Arc::clone(core),
        actor.to_owned(),
        vm.to_owned(),
    );
    std::thread::spawn(move || {
        let end = std::time::Instant::now() + within;
        while std::time::Instant::now() < end {
            match core.vm_show(&actor, &vm) {
                Ok(v) => {
                    let deadline_known = v.metadata.get("force_off_at").is_some();
                    if let (true, Some(n)) = (
                        deadline_known || session.is_none(),
                        tray::stopping_notice(&v, session, chrono::Utc::now()),
                    ) {
                        notify(&app, &n.title, &n.body);
                        return;
                    }
                    if v.status == vmdesk_core::VmStatus::Stopped {
                        return;
                    }
                }
                Err(_) => return,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

fn notify(app: &AppHandle, title: &str, body: &str) {
    if let Err(e) = app.notification().builder().title(title).body(body).show() {
        tracing::info!(error = %e, title, "notification not shown");
    }
}

/// Notifies the user of the events since `after` that call for it; returns
/// the newest event id seen.
fn notify_new_events(app: &AppHandle, core: &Core, actor: &str, after: i64) -> i64 {
    let Ok(events) = core.events_query(
        actor,
        &EventQuery {
            after: Some(after),
            limit: 200,
            ..Default::default()
        },
    ) else {
        return after;
    };
    let newest = events.first().map_or(after, |e| e.id);
    // The person may have turned desktop notifications off (Settings, yours).
    let wanted = app
        .try_state::<Ctx>()
        .and_then(|ctx| crate::cli::settings(&ctx.global).ok())
        .is_none_or(|s| s.desktop.notifications);
    if !wanted {
        return newest;
    }
    let names = |id: i64| core.vm_show(actor, &id.to_string()).ok().map(|v| v.name);
    // Oldest first, as they happened.
    let ordered: Vec<Event> = events.into_iter().rev().collect();
    for n in tray::notices(actor, &ordered, names) {
        notify(app, &n.title, &n.body);
    }
    newest
}

/// Drives pending sessions and tells the window about changes, including those
/// committed by other processes (the CLI) on the same data directory.
/// On a team store, how long the worker goes without asking the store when
/// nothing was pushed.
const TEAM_IDLE: Duration = Duration::from_secs(15);

fn worker(
    app: AppHandle,
    core: Arc<Core>,
    actor: String,
    sync: Arc<Supervisor>,
    wake: mpsc::Receiver<()>,
) {
    let mut seen = core.data_version().unwrap_or(0);
    let mut last_event = core.last_event_id().unwrap_or(0);
    let team = core.team().is_some();
    // The first tick looks at once (which serve leads, for the status bar).
    let mut last_team_look = std::time::Instant::now()
        .checked_sub(TEAM_IDLE)
        .unwrap_or_else(std::time::Instant::now);
    let mut tray: Option<TrayModel> = None;
    refresh_tray(&app, &core, &actor, &sync.health(), &mut tray);
    loop {
        let woken = match wake.recv_timeout(TICK) {
            Ok(()) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        // On a team store other desks' changes wake this (team_watch): the
        // events they bring are notified as the desk's own are. The store
        // pushes its changes, so it is not asked every tick: only when
        // woken, and now and then for what time alone changes (countdowns).
        if team {
            if !woken && last_team_look.elapsed() < TEAM_IDLE {
                continue;
            }
            last_team_look = std::time::Instant::now();
            if woken {
                last_event = notify_new_events(&app, &core, &actor, last_event);
            }
            if let Some(leader) = core.team().map(|t| t.serve_leader()) {
                match leader {
                    Ok(l) => sync.team_serve(l),
                    Err(e) => tracing::warn!(error = %e.one_line(), "asking which serve leads"),
                }
            }
        }
        if let Err(e) = core.drive_pending() {
            tracing::warn!(error = %e.one_line(), "driving pending sessions");
        }
        let version = core.data_version().unwrap_or(seen);
        if version != seen {
            seen = version;
            let _ = app.emit(CHANGED, ());
            last_event = notify_new_events(&app, &core, &actor, last_event);
        }
        refresh_tray(&app, &core, &actor, &sync.health(), &mut tray);
    }
}

/// The D-Bus name (under the app's identifier) that makes the app single
/// instance per data directory: a second start on the same directory shows
/// the first window; another data directory is another instance.
fn instance_id(data_dir: &std::path::Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut h);
    format!("dev.vmdesk.app.d{:016x}", h.finish())
}

/// Whether vmdesk turns WebKit's accelerated compositing off: unless
/// `VMDESK_GPU=1`, or WebKit's own variable already says. Off it takes about
/// 85 MiB less (no compositing buffers and GL contexts) and the first paint
/// stays under 1 s (the README's figures).
fn compositing_off(vmdesk_gpu: Option<&std::ffi::OsStr>, webkit_says: bool) -> bool {
    !webkit_says && vmdesk_gpu.is_none_or(|v| v != "1")
}

/// Opens the desktop window over the data directory of `global`.
pub fn run(global: &Global) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // Set before any other thread runs.
    if compositing_off(
        std::env::var_os("VMDESK_GPU").as_deref(),
        std::env::var_os("WEBKIT_DISABLE_COMPOSITING_MODE").is_some(),
    ) {
        std::env::set_var("WEBKIT_DISABLE_COMPOSITING_MODE", "1");
    }
    // Changes this process commits reach the window through this handle.
    let handle: Arc<Mutex<Option<AppHandle>>> = Arc::new(Mutex::new(None));
    let notify = {
        let handle = Arc::clone(&handle);
        Arc::new(move || {
            if let Some(app) = handle.lock().ok().and_then(|h| h.clone()) {
                let _ = app.emit(CHANGED, ());
            }
        })
    };
    let (wake_tx, wake_rx) = mpsc::channel();
    // On a team store a change pushed by the database also wakes the worker
    // (notifications of other desks' events).
    let team_notify: Arc<dyn Fn() + Send + Sync> = {
        let (notify, wake) = (notify.clone(), Mutex::new(wake_tx.clone()));
        Arc::new(move || {
            notify();
            let _ = wake.lock().map(|w| w.send(()));
        })
    };
    let core = Arc::new(open_core(
        global,
        Arc::new(vmdesk_libvirt::LibvirtFactory::new()),
        Some(notify),
    )?);
    // Team mode: other desks' changes are pushed by the database (kept for
    // the app's life: `run` below returns when the app ends).
    let _team_watch = match &global.team {
        Some(url) => {
            crate::team_watch::start(&core, crate::store::with_password(url)?.0, team_notify)
        }
        None => None,
    };
    // Status sync runs in a child process: libvirt's event loop takes GLib's
    // default main context, which GTK needs in this one. Its changes reach
    // the window through the database (data_version), like the CLI's.
    // Supervised: started again (with backoff) whenever it exits.
    let sync = Supervisor::start(
        global.clone(),
        crate::cli::settings(global)?.sync.enabled,
        {
            let handle = Arc::clone(&handle);
            Box::new(move |health: &SyncHealth| {
                if let Some(app) = handle.lock().ok().and_then(|h| h.clone()) {
                    let _ = app.emit(SYNC_HEALTH, health);
                }
            })
        },
    )?;
    core.user(&global.actor)?;
    let actor = global.actor.clone();

    let stats_vm = Arc::new(Mutex::new(None));
    tauri::Builder::default()
        // First: a second start on the same data directory shows this window and exits.
        .plugin(
            tauri_plugin_single_instance::Builder::new()
                .dbus_id(instance_id(&crate::cli::data_dir(global)?))
                .callback(|app, _args, _cwd| show_window(app))
                .build(),
        )
        .plugin(tauri_plugin_window_state::Builder::default().build())
        .plugin(tauri_plugin_notification::init())
        .plugin(tauri_plugin_clipboard_manager::init())
        .plugin(tauri_plugin_dialog::init())
        .manage(Ctx {
            core: Arc::clone(&core),
            actor: actor.clone(),
            wake: Mutex::new(wake_tx),
            global: global.clone(),
            sync: Arc::clone(&sync),
            consoles: vmdesk_console::Consoles::new(
                Arc::clone(&core),
                crate::cli::settings(global)?.console,
            ),
            open_consoles: Mutex::new(std::collections::HashMap::new()),
            stats_vm: Arc::clone(&stats_vm),
            started,
        })
        .invoke_handler(tauri::generate_handler![
            ssh_command,
            copy_ssh_command,
            open_terminal,
            overview,
            open_session,
            close_session,
            quote,
            price,
            placement,
            host_overview,
            validate_vm_name,
            os_catalog,
            my_vms,
            create_vm,
            vm_action,
            vm_events,
            vm_meta,
            settings_get,
            settings_save,
            settings_check,
            azure_login,
            store_login,
            store_logout,
            app_restart,
            host_add,
            host_import,
            console_open,
            console_close,
            console_features,
            console_copied,
            console_clipboard,
            me,
            vm_show,
            vm_list,
            vm_changes,
            validate_name,
            pick_image_file,
            vm_idle_stop,
            events_query,
            credits,
            users,
            user_add,
            user_role,
            credits_grant,
            credits_adjust,
            credits_refund,
            admin_recover,
            project_limits,
            project_create,
            place_change,
            workspace_create,
            pool_vm_add,
            vm_template,
            os_admin_list,
            os_import,
            os_remove,
            admin_sync_once,
            admin_ports_cleanup,
            ports,
            stats_watch,
            app_info,
            sync_health,
            doctor,
            ready,
            app_quit
        ])
        .on_window_event(|window, event| {
            // Closing the window keeps vmdesk in the tray; Quit (tray, Ctrl+Q) ends it.
            if let tauri::WindowEvent::CloseRequested { api, .. } = event {
                use tauri_plugin_window_state::{AppHandleExt, StateFlags};
                let _ = window.app_handle().save_window_state(StateFlags::all());
                api.prevent_close();
                let _ = window.hide();
            }
        })
        .setup(move |app| {
            *handle.lock().unwrap_or_else(|p| p.into_inner()) = Some(app.handle().clone());
            let empty = TrayModel {
                look: Look::Idle,
                tooltip: "vmdesk".into(),
                summary: "vmdesk".into(),
                vms: Vec::new(),
                more: 0,
            };
            let mut tray = TrayIconBuilder::with_id("main")
                .tooltip(&empty.tooltip)
                .menu(&tray_menu(app.handle(), &empty)?)
                .on_menu_event(|app, event| {
                    if let Some(action) = TrayAction::parse(event.id.as_ref()) {
                        on_tray_action(app, action);
                    }
                });
            if let Some(icon) = tray_icon(app.handle(), Look::Idle) {
                tray = tray.icon(icon);
            }
            tray.build(app)?;
            let (app_handle, core, actor) =
                (app.handle().clone(), Arc::clone(&core), actor.clone());
            // Leftovers of crashes on the hosts are swept at start, off the UI thread.
            let (sweeper, sweep_actor) = (Arc::clone(&core), actor.clone());
            std::thread::spawn(move || {
                if let Ok(done) = sweeper.recover_all(&sweep_actor) {
                    tracing::info!(repairs = done.len(), "recovery at start");
                }
            });
            let checkpointer = Arc::clone(&core);
            let (stats_app, stats_core, stats_actor) =
                (app.handle().clone(), Arc::clone(&core), actor.clone());
            std::thread::Builder::new()
                .name("vmdesk-stats".into())
                .spawn(move || stats_loop(stats_app, stats_core, stats_actor, stats_vm))?;
            std::thread::Builder::new()
                .name("vmdesk-worker".into())
                .spawn(move || worker(app_handle, core, actor, sync, wake_rx))?;
            // Writers never checkpoint themselves (see vmdesk_core::store): this keeps the log short.
            std::thread::Builder::new()
                .name("vmdesk-checkpoint".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_millis(50));
                    if let Err(e) = checkpointer.checkpoint_if_over(1 << 20) {
                        tracing::warn!(error = %e.one_line(), "checkpoint");
                    }
                })?;
            Ok(())
        })
        .run(tauri::generate_context!())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compositing_is_off_unless_the_person_asks_for_the_gpu() {
        use std::ffi::OsStr;
        assert!(compositing_off(None, false));
        assert!(compositing_off(Some(OsStr::new("0")), false));
        assert!(!compositing_off(Some(OsStr::new("1")), false));
        // WebKit's own variable is left as the person set it.
        assert!(!compositing_off(None, true));
    }

    #[test]
    fn one_instance_per_data_directory() {
        let a = instance_id(std::path::Path::new("/data/a"));
        assert_eq!(a, instance_id(std::path::Path::new("/data/a")));
        assert_ne!(a, instance_id(std::path::Path::new("/data/b")));
        // A valid D-Bus name: elements of [A-Za-z0-9_-], none starting with a digit.
        assert!(a
            .split('.')
            .all(|e| !e.is_empty() && !e.starts_with(|c: char| c.is_ascii_digit())));
    }
}
