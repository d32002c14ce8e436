// Calls into the Rust core through Tauri commands. Types come from
// src/bindings, generated from the Rust types by ts-rs.
import { invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";
import type { Overview } from "../bindings/Overview";
import type { Session } from "../bindings/Session";
import type { SessionRequest } from "../bindings/SessionRequest";
import type { Progress } from "../bindings/Progress";
import type { Quote } from "../bindings/Quote";
import type { Vm } from "../bindings/Vm";
import type { Event } from "../bindings/Event";
import type { VmAction } from "../bindings/VmAction";
import type { VmCreate } from "../bindings/VmCreate";
import type { Settings } from "../bindings/Settings";
import type { SettingsView } from "../bindings/SettingsView";
import type { ImportReport } from "../bindings/ImportReport";
import type { OpenConsole } from "../bindings/OpenConsole";

/** An error from the core: act on `code`, show `message`. */
export interface ApiError {
  code: string;
  message: string;
}

/** Turns whatever a command rejected with into an ApiError. */
export function toApiError(e: unknown): ApiError {
  if (e && typeof e === "object" && "code" in e && "message" in e) {
    return { code: String(e.code), message: String(e.message) };
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
  osCatalog: () => call<string[]>("os_catalog"),
  myVms: () => call<Vm[]>("my_vms"),
  createVm: (spec: VmCreate) => call<Vm>("create_vm", { spec }),
  vmAction: (vm: string, action: VmAction) => call<Vm>("vm_action", { vm, action }),
  vmEvents: (vm: string) => call<Event[]>("vm_events", { vm }),
  vmMeta: (vm: string, key: string, value: string) => call<Vm>("vm_meta", { vm, key, value }),
  settingsGet: () => call<SettingsView>("settings_get"),
  settingsSave: (settings: Settings) => call<SettingsView>("settings_save", { settings }),
  azureLogin: (tenant: string, clientId: string, secret: string) =>
    call<SettingsView>("azure_login", { tenant, clientId, secret }),
  hostAdd: (name: string, uri: string | null, subscription: string | null, resourceGroups: string[]) =>
    call<SettingsView>("host_add", { name, uri, subscription, resourceGroups }),
  hostImport: (host: string, project: string) => call<ImportReport>("host_import", { host, project }),
  consoleOpen: (vm: string) => call<OpenConsole>("console_open", { vm }),
  consoleClose: (port: number) => call<void>("console_close", { port }),
  /** Calls `f` with each step of a VM creation running in the background. */
  onProgress: (f: (p: Progress) => void): Promise<UnlistenFn> =>
    listen<Progress>("vm-progress", (e) => f(e.payload)),
  /** Calls `f` whenever the backend reports a change. */
  onChange: (f: () => void): Promise<UnlistenFn> => listen("changed", f),
};
