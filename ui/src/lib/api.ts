// Calls into the Rust core through Tauri commands. Types come from
// src/bindings, generated from the Rust types by ts-rs.
import { invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";
import type { Overview } from "../bindings/Overview";
import type { Session } from "../bindings/Session";
import type { SessionRequest } from "../bindings/SessionRequest";
import type { Progress } from "../bindings/Progress";
import type { Quote } from "../bindings/Quote";
import type { Price } from "../bindings/Price";
import type { Placement } from "../bindings/Placement";
import type { HostView } from "../bindings/HostView";
import type { OsEntry } from "../bindings/OsEntry";
import type { Vm } from "../bindings/Vm";
import type { VmChanges } from "../bindings/VmChanges";
import type { Event } from "../bindings/Event";
import type { VmAction } from "../bindings/VmAction";
import type { VmCreate } from "../bindings/VmCreate";
import type { Settings } from "../bindings/Settings";
import type { SettingsView } from "../bindings/SettingsView";
import type { ImportReport } from "../bindings/ImportReport";
import type { OpenConsole } from "../bindings/OpenConsole";
import type { DisplayFeatures } from "../bindings/DisplayFeatures";
import type { EventQuery } from "../bindings/EventQuery";
import type { CreditStatement } from "../bindings/CreditStatement";
import type { LedgerEntry } from "../bindings/LedgerEntry";
import type { Project } from "../bindings/Project";
import type { NewVm } from "../bindings/NewVm";
import type { Workspace } from "../bindings/Workspace";
import type { ProjectLimits } from "../bindings/ProjectLimits";

/** An OS of the catalog and how many VMs use it. */
export type OsRow = OsEntry & { used_by: number };
/** How far an OS import's copy is, in bytes. */
export type OsProgress = { name: string; done: number; total: number };

/** What a maintenance action of the Admin view did. */
export type Maintenance = { summary: string; details: unknown };
import type { User } from "../bindings/User";
import type { UserAdded } from "../bindings/UserAdded";
import type { Role } from "../bindings/Role";
import type { PortStats } from "../bindings/PortStats";
import type { StatsUpdate } from "../bindings/StatsUpdate";
import type { AppInfo } from "../bindings/AppInfo";
import type { SyncHealth } from "../bindings/SyncHealth";
import type { Check } from "../bindings/Check";
import type { FieldError } from "../bindings/FieldError";
import type { StoreChange } from "../bindings/StoreChange";

/** An error from the core: act on `code`, show `message`. */
export interface ApiError {
  code: string;
  message: string;
  /** Values that cannot be used, each with its field (`console.port_start`): shown beside the field. */
  fields?: FieldError[];
}

/** Turns whatever a command rejected with into an ApiError. */
export function toApiError(e: unknown): ApiError {
  if (e && typeof e === "object" && "code" in e && "message" in e) {
    const fields = "fields" in e && Array.isArray(e.fields) ? (e.fields as FieldError[]) : undefined;
    return fields ? { code: String(e.code), message: String(e.message), fields } : { code: String(e.code), message: String(e.message) };
  }
  return { code: "internal", message: String(e) };
}

async function call<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
  try {
    return await invoke<T>(cmd, args);
  } catch (e) {
    throw toApiError(e);
  }
}

export const api = {
  overview: () => call<Overview>("overview"),
  openSession: (request: SessionRequest) => call<Session>("open_session", { request }),
  closeSession: (id: number) => call<Session>("close_session", { id }),
  quote: (ramMb: number, diskGb: number, cpus: number) =>
    call<Quote>("quote", { ramMb, diskGb, cpus }),
  /** The creation's price and hourly running cost; refuses a size below the OS's minimum. */
  price: (os: string, ramMb: number, diskGb: number, cpus: number) =>
    call<Price>("price", { os, ramMb, diskGb, cpus }),
  /** Where a VM of this memory would run (host null: placed by capacity); rejects when it fits no host. */
  placement: (ramMb: number, os: string, host: string | null) =>
    call<Placement>("placement", { ramMb, os, host }),
  /** The hosts with reachability, VMs, room, console path and last event. */
  hostOverview: () => call<HostView[]>("host_overview"),
  /** Resolves when the core accepts `name` as a VM name; rejects with its sentence. */
  validateVmName: (name: string) => call<null>("validate_vm_name", { name }),
  /** Checks a project's or workspace's name as the core would (rejects with its sentence). */
  validateName: (kind: "project" | "workspace", name: string) => call<null>("validate_name", { kind, name }),
  /** Opens the desktop's file chooser for a disk image; its path, or null when cancelled. */
  pickImageFile: () => call<string | null>("pick_image_file"),
  osCatalog: () => call<OsEntry[]>("os_catalog"),
  myVms: () => call<Vm[]>("my_vms"),
  createVm: (spec: VmCreate) => call<Vm>("create_vm", { spec }),
  vmAction: (vm: string, action: VmAction) => call<Vm>("vm_action", { vm, action }),
  vmEvents: (vm: string) => call<Event[]>("vm_events", { vm }),
  vmMeta: (vm: string, key: string, value: string) => call<Vm>("vm_meta", { vm, key, value }),
  settingsGet: () => call<SettingsView>("settings_get"),
  /** Writes the settings; a refusal carries `fields` (each value that cannot be used). */
  settingsSave: (settings: Settings) => call<SettingsView>("settings_save", { settings }),
  /** The values that cannot be used, each with its field; nothing is saved. */
  settingsCheck: (settings: Settings) => call<FieldError[]>("settings_check", { settings }),
  azureLogin: (tenant: string, clientId: string, secret: string) =>
    call<SettingsView>("azure_login", { tenant, clientId, secret }),
  /** Logs this desk in to a team store, as `vmdesk login`; a refusal carries `fields` (store.url, store.password). */
  storeLogin: (url: string, password: string) => call<StoreChange>("store_login", { url, password }),
  /** Logs this desk out of its team store, as `vmdesk logout`. */
  storeLogout: () => call<StoreChange>("store_logout"),
  /** Starts vmdesk again (a login or logout applies at the next start). */
  restart: () => call<void>("app_restart"),
  hostAdd: (name: string, uri: string | null, subscription: string | null, resourceGroups: string[]) =>
    call<SettingsView>("host_add", { name, uri, subscription, resourceGroups }),
  hostImport: (host: string, project: string) => call<ImportReport>("host_import", { host, project }),
  consoleOpen: (vm: string) => call<OpenConsole>("console_open", { vm }),
  consoleClose: (port: number) => call<void>("console_close", { port }),
  /** What an open console's display offers now (a clipboard agent, a display that resizes). */
  consoleFeatures: (port: number) => call<DisplayFeatures>("console_features", { port }),
  /** Text the VM copied, for the desktop's clipboard (unless turned off in Settings); whether it was written. */
  consoleCopied: (text: string) => call<boolean>("console_copied", { text }),
  /** The desktop clipboard's text for a console (refused with clipboard_off when turned off in Settings). */
  consoleClipboard: () => call<string>("console_clipboard"),
  /** The acting user. */
  me: () => call<User>("me"),
  vmShow: (vm: string) => call<Vm>("vm_show", { vm }),
  /** The command line that logs in to a VM by SSH (its address, the user's key, the host key). */
  sshCommand: (vm: string) => call<string>("ssh_command", { vm }),
  /** Puts a VM's SSH command on the desktop's clipboard; returns it. */
  copySshCommand: (vm: string) => call<string>("copy_ssh_command", { vm }),
  /** Opens the desktop's terminal emulator logged in to a VM; returns its name. */
  openTerminal: (vm: string) => call<string>("open_terminal", { vm }),
  /** Every VM the user can see (pool VMs and their own); `all`: every user's (admin). */
  vmList: (all: boolean) => call<Vm[]>("vm_list", { all }),
  /** The rows of that list changed since `since` (a cursor of an earlier answer; null: all), with the list's size and the next cursor. */
  vmChanges: (all: boolean, since: string | null) => call<VmChanges>("vm_changes", { all, since }),
  /** Stops an own VM after `minutes` idle (null: never). */
  vmIdleStop: (vm: string, minutes: number | null) => call<Vm>("vm_idle_stop", { vm, minutes }),
  /** The event feed, newest first, filtered. */
  events: (query: EventQuery) => call<Event[]>("events_query", { query }),
  /** A balance and ledger: the user's own, or `user`'s (admin). */
  credits: (user: string | null = null) => call<CreditStatement>("credits", { user }),
  users: () => call<User[]>("users"),
  /** Adds a user; on a team store its login too, with a password shown once. */
  userAdd: (name: string, admin: boolean, credits: number) =>
    call<UserAdded>("user_add", { name, admin, credits }),
  userRole: (name: string, role: Role) => call<User>("user_role", { name, role }),
  creditsGrant: (user: string, amount: number, reason: string) =>
    call<CreditStatement>("credits_grant", { user, amount, reason }),
  /** Adds credits to a balance, or takes them (negative), as an adjustment; never below zero (admin). */
  creditsAdjust: (user: string, amount: number, reason: string) =>
    call<CreditStatement>("credits_adjust", { user, amount, reason }),
  /** Gives back the creation charge of a VM whose creation failed, once (admin). */
  creditsRefund: (vm: string, reason: string) => call<LedgerEntry>("credits_refund", { vm, reason }),
  /** `vmdesk recover`: settles crashed work, lists quarantined machines (admin). */
  adminRecover: () => call<Maintenance>("admin_recover"),
  /** `vmdesk sync --once`: a fast and a full status-sync pass, then addresses (admin). */
  adminSyncOnce: () => call<Maintenance>("admin_sync_once"),
  /** `vmdesk ports cleanup`: frees the ports of consoles whose process is gone (admin). */
  adminPortsCleanup: () => call<Maintenance>("admin_ports_cleanup"),
  /** Creates a project (admin). */
  projectCreate: (name: string) => call<Project>("project_create", { name }),
  /** Renames (`newName`) or deletes (null) a project, or its workspace `workspace` (admin). */
  placeChange: (project: string, workspace: string | null, newName: string | null) =>
    call<void>("place_change", { project, workspace, new: newName }),
  /** Creates a workspace in a project (admin). */
  workspaceCreate: (name: string, project: string) => call<Workspace>("workspace_create", { name, project }),
  /** Adds pool VMs (admin): NAME alone, or `count` at once (NAME-1…, all or nothing; progress through `onPoolProgress`). */
  poolVmAdd: (spec: NewVm, count: number) => call<Vm[]>("pool_vm_add", { spec, count }),
  /** The OS catalog with how many VMs use each image. */
  osAdminList: () => call<OsRow[]>("os_admin_list"),
  /** Imports a qcow2 image into the OS catalog (admin); progress through `onOsProgress`. */
  osImport: (name: string, file: string, minRamMb: number | null, minDiskGb: number | null) =>
    call<OsEntry>("os_import", { name, file, minRamMb, minDiskGb }),
  /** Makes a template (an OS image) from a stopped VM's disk (admin); progress through `onOsProgress`. */
  vmTemplate: (vm: string, name: string) => call<OsEntry>("vm_template", { vm, name }),
  /** Calls `f` as a pool fill adds its VMs. */
  onPoolProgress: (f: (p: { project: string; done: number; of: number }) => void): Promise<UnlistenFn> =>
    listen<{ project: string; done: number; of: number }>("pool-progress", (e) => f(e.payload)),
  /** Removes an unused OS image (admin). */
  osRemove: (name: string) => call<void>("os_remove", { name }),
  /** Calls `f` as an OS import copies its image. */
  onOsProgress: (f: (p: OsProgress) => void): Promise<UnlistenFn> =>
    listen<OsProgress>("os-progress", (e) => f(e.payload)),
  /** Sets a project's cost controls (admin). */
  projectLimits: (project: string, limits: ProjectLimits) => call<Project>("project_limits", { project, limits }),
  /** The console port pool and the open consoles. */
  ports: () => call<PortStats>("ports"),
  /** Follow a VM's counters through `onStats` (null: stop). */
  statsWatch: (vm: string | null) => call<void>("stats_watch", { vm }),
  appInfo: () => call<AppInfo>("app_info"),
  /** Status sync's health: last pass, last error, unreachable hosts, restarts. */
  syncHealth: () => call<SyncHealth>("sync_health"),
  /** Checks of the installation, as `vmdesk doctor` runs them. */
  doctor: () => call<Check[]>("doctor"),
  /** Calls `f` whenever status sync's health changes. */
  onSyncHealth: (f: (h: SyncHealth) => void): Promise<UnlistenFn> =>
    listen<SyncHealth>("sync-health", (e) => f(e.payload)),
  /** Tells the backend the window shows its data (start-up timing). */
  ready: () => call<number>("ready"),
  quit: () => call<void>("app_quit"),
  /** Calls `f` with each sample of the watched VM's counters. */
  onStats: (f: (s: StatsUpdate) => void): Promise<UnlistenFn> =>
    listen<StatsUpdate>("vm-stats", (e) => f(e.payload)),
  /** Calls `f` when the tray asks to open a VM's console. */
  onOpenConsole: (f: (vm: string) => void): Promise<UnlistenFn> =>
    listen<string>("open-console", (e) => f(e.payload)),
  /** Calls `f` with each step of a VM creation running in the background. */
  onProgress: (f: (p: Progress) => void): Promise<UnlistenFn> =>
    listen<Progress>("vm-progress", (e) => f(e.payload)),
  /** Calls `f` whenever the backend reports a change. */
  onChange: (f: () => void): Promise<UnlistenFn> => listen("changed", f),
};
