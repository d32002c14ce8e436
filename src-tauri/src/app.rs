//! The desktop window: Tauri commands into the core, a background worker that
//! drives pending sessions, change notifications, and the tray icon.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tauri::menu::{Menu, MenuItem};
use tauri::tray::{TrayIcon, TrayIconBuilder};
use tauri::{AppHandle, Emitter, Manager, State};
use vmdesk_core::{
    Core, Event, Overview, Progress, Session, SessionRequest, SessionStatus, Vm, VmAction, VmCreate,
};

use crate::cli::{open_core, Global};

/// Event sent to the window whenever the data may have changed.
const CHANGED: &str = "changed";
/// How often the worker looks for work and for other processes' changes.
const TICK: Duration = Duration::from_secs(1);

/// What the window shares with the commands.
struct Ctx {
    core: Arc<Core>,
    actor: String,
    wake: Mutex<Sender<()>>,
    global: Global,
    /// The status-sync child; restarted when the settings change.
    watcher: Mutex<Option<Watcher>>,
    /// Console bridges of this process.
    consoles: vmdesk_console::Consoles,
    /// The open ones, by port.
    open_consoles: Mutex<std::collections::HashMap<u16, vmdesk_console::Handle>>,
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

fn settings_view(ctx: &Ctx) -> Result<SettingsView, ApiError> {
    let path = crate::cli::settings_path(&ctx.global).map_err(internal)?;
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
        hosts: ctx.core.host_list(&ctx.actor)?,
    })
}

/// Restarts the status-sync child so it reads the new settings.
fn restart_watcher(ctx: &Ctx, settings: &vmdesk_core::Settings) -> Result<(), ApiError> {
    let mut w = ctx.watcher.lock().unwrap_or_else(|p| p.into_inner());
    *w = None; // stops the old one
    if settings.sync.enabled {
        *w = Some(spawn_watcher(&ctx.global).map_err(internal)?);
    }
    Ok(())
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
    settings_view(&ctx)
}

/// Checks and writes the settings file, then restarts status sync on it.
#[tauri::command]
async fn settings_save(
    ctx: State<'_, Ctx>,
    settings: vmdesk_core::Settings,
) -> Result<SettingsView, ApiError> {
    let path = crate::cli::settings_path(&ctx.global).map_err(internal)?;
    settings.save(&path)?;
    restart_watcher(&ctx, &settings)?;
    settings_view(&ctx)
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
    settings_view(&ctx)
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
    settings_view(&ctx)
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

#[tauri::command]
async fn os_catalog(ctx: State<'_, Ctx>) -> Result<Vec<String>, ApiError> {
    blocking(&ctx, |core, _| {
        Ok(core.os_list()?.into_iter().map(|o| o.name).collect())
    })
    .await
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

/// The tray tooltip for a number of active sessions.
fn tooltip(active: usize) -> String {
    match active {
        1 => "vmdesk: 1 active session".to_owned(),
        n => format!("vmdesk: {n} active sessions"),
    }
}

fn refresh_tray(tray: &TrayIcon, core: &Core, actor: &str) {
    let active = core
        .session_list(actor, false)
        .map(|s| {
            s.iter()
                .filter(|s| s.status == SessionStatus::Active)
                .count()
        })
        .unwrap_or(0);
    let _ = tray.set_tooltip(Some(tooltip(active)));
}

/// Drives pending sessions and tells the window about changes, including those
/// committed by other processes (the CLI) on the same data directory.
fn worker(app: AppHandle, core: Arc<Core>, actor: String, wake: mpsc::Receiver<()>) {
    let mut seen = core.data_version().unwrap_or(0);
    loop {
        match wake.recv_timeout(TICK) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Err(e) = core.drive_pending() {
            tracing::warn!(error = %e.one_line(), "driving pending sessions");
        }
        let version = core.data_version().unwrap_or(seen);
        if version != seen {
            seen = version;
            let _ = app.emit(CHANGED, ());
        }
        if let Some(tray) = app.tray_by_id("main") {
            refresh_tray(&tray, &core, &actor);
        }
    }
}

/// The status-sync child (`vmdesk sync --watch --parent-pipe`): it follows
/// the hosts' lifecycle events and exits when this process's end of its
/// stdin closes, however this process ends.
struct Watcher(std::process::Child);

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_watcher(global: &Global) -> anyhow::Result<Watcher> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--data-dir").arg(crate::cli::data_dir(global)?);
    cmd.arg("--as").arg(&global.actor);
    if let Some(config) = &global.config {
        cmd.arg("--config").arg(config);
    }
    cmd.args(["sync", "--watch", "--parent-pipe"]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    Ok(Watcher(cmd.spawn()?))
}

/// Opens the desktop window over the data directory of `global`.
pub fn run(global: &Global) -> anyhow::Result<()> {
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
    let core = Arc::new(open_core(
        global,
        Arc::new(vmdesk_libvirt::LibvirtFactory::new()),
        Some(notify),
    )?);
    // Status sync runs in a child process: libvirt's event loop takes GLib's
    // default main context, which GTK needs in this one. Its changes reach
    // the window through the database (data_version), like the CLI's.
    let watcher = if crate::cli::settings(global)?.sync.enabled {
        Some(spawn_watcher(global)?)
    } else {
        None
    };
    core.user(&global.actor)?;
    let actor = global.actor.clone();
    let (wake_tx, wake_rx) = mpsc::channel();

    tauri::Builder::default()
        .manage(Ctx {
            core: Arc::clone(&core),
            actor: actor.clone(),
            wake: Mutex::new(wake_tx),
            global: global.clone(),
            watcher: Mutex::new(watcher),
            consoles: vmdesk_console::Consoles::new(
                Arc::clone(&core),
                crate::cli::settings(global)?.console,
            ),
            open_consoles: Mutex::new(std::collections::HashMap::new()),
        })
        .invoke_handler(tauri::generate_handler![
            overview,
            open_session,
            close_session,
            quote,
            os_catalog,
            my_vms,
            create_vm,
            vm_action,
            vm_events,
            vm_meta,
            settings_get,
            settings_save,
            azure_login,
            host_add,
            host_import,
            console_open,
            console_close
        ])
        .setup(move |app| {
            *handle.lock().unwrap_or_else(|p| p.into_inner()) = Some(app.handle().clone());
            let show = MenuItem::with_id(app, "show", "Show", true, None::<&str>)?;
            let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
            let menu = Menu::with_items(app, &[&show, &quit])?;
            let mut tray = TrayIconBuilder::with_id("main")
                .tooltip(tooltip(0))
                .menu(&menu)
                .on_menu_event(|app, event| match event.id.as_ref() {
                    "show" => {
                        if let Some(w) = app.get_webview_window("main") {
                            let _ = w.show();
                            let _ = w.unminimize();
                            let _ = w.set_focus();
                        }
                    }
                    "quit" => app.exit(0),
                    _ => {}
                });
            if let Some(icon) = app.default_window_icon() {
                tray = tray.icon(icon.clone());
            }
            let tray = tray.build(app)?;
            refresh_tray(&tray, &core, &actor);
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
            std::thread::Builder::new()
                .name("vmdesk-worker".into())
                .spawn(move || worker(app_handle, core, actor, wake_rx))?;
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
    fn tooltip_counts_sessions() {
        assert_eq!(tooltip(0), "vmdesk: 0 active sessions");
        assert_eq!(tooltip(1), "vmdesk: 1 active session");
        assert_eq!(tooltip(3), "vmdesk: 3 active sessions");
    }
}
