// @vitest-environment jsdom
// The Settings page mounted with the backend mocked: a user who is not an
// admin sees only their own part; a refused value shows under its field and
// goes when fixed.
import { afterEach, describe, expect, it, vi } from "vitest";
import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/svelte";
import type { Settings as S } from "../bindings/Settings";

const defaults = (): S => ({
  sync: { enabled: true, fast_interval_secs: 30, full_interval_secs: 300, batch_size: 10, retry_attempts: 3, timeout_secs: 30, reboot_grace_ms: 800 },
  billing: { hourly_percent: 10, warn_seconds: 3600 },
  azure: {
    endpoint: "https://management.azure.com", authority_host: "https://login.microsoftonline.com", tenant_id: "", client_id: "",
    max_retry_after_secs: 60, poll_interval_ms: 1000, allow_insecure_endpoints: false,
    limits: { vm_reads_per_min: 12, vm_reads_burst: 36, subscription_reads_per_min: 8000, subscription_reads_burst: 24000, lists_per_min: 300, lists_burst: 900, vm_writes_per_min: 4, vm_writes_burst: 12 },
  },
  console: { port_start: 6100, port_end: 6999, token_ttl_secs: 60, idle_timeout_secs: 1800, allowed_origins: [] },
  desktop: { theme: "system", notifications: true, clipboard: true, guest_clipboard: true },
  store: { url: "" },
  network: { hosts: {} },
});

/** The core's rule, as settings_check answers. */
function problems(s: S) {
  return s.console.port_start > s.console.port_end
    ? [{ field: "console.port_start", message: `The first console port (${s.console.port_start}) must not be above the last one (${s.console.port_end}).` }]
    : [];
}

const api = vi.hoisted(() => ({
  settingsGet: vi.fn(),
  settingsCheck: vi.fn(),
  settingsSave: vi.fn(),
  appInfo: vi.fn(async () => ({ version: "0", data_dir: "/d", settings_path: "/d/s.toml", start_view: null,
    store: { team: false, place: "/d", login: "admin", url: null } })),
  doctor: vi.fn(),
  hostAdd: vi.fn(),
  hostImport: vi.fn(),
  azureLogin: vi.fn(),
}));
vi.mock("./api", () => ({ api, toApiError: (e: unknown) => e }));

import Settings from "./Settings.svelte";

afterEach(() => cleanup());

function view() {
  return { path: "/d/s.toml", settings: defaults(), azure_secret_kept: false, hosts: [] };
}

describe("the settings page", () => {
  it("shows a user only their own part", async () => {
    api.settingsGet.mockResolvedValue(view());
    render(Settings, { onerror: vi.fn(), admin: false });
    await screen.findByTestId("settings-user");
    expect(screen.queryByTestId("settings-admin")).toBeNull();
    expect(screen.queryByTestId("settings-hosts")).toBeNull();
    expect(screen.queryByLabelText("Per hour, % of the VM's price")).toBeNull();
    expect(screen.getByLabelText("Appearance")).toBeTruthy();
  });

  it("puts a refused value's error under its field and clears it when fixed", async () => {
    api.settingsGet.mockResolvedValue(view());
    api.settingsCheck.mockImplementation(async (s: S) => problems(s));
    api.settingsSave.mockImplementation(async (s: S) => {
      const fields = problems(s);
      if (fields.length > 0) throw { code: "invalid_setting", message: fields[0].message, fields };
      return { ...view(), settings: s };
    });
    const onerror = vi.fn();
    render(Settings, { onerror, admin: true });
    const start = (await screen.findByLabelText("First port")) as HTMLInputElement;
    await fireEvent.input(start, { target: { value: "7000" } });
    await fireEvent.click(screen.getByTestId("settings-save"));
    await waitFor(() =>
      expect(screen.getByTestId("error-console.port_start").textContent).toBe(
        "The first console port (7000) must not be above the last one (6999).",
      ),
    );
    expect(start.getAttribute("aria-invalid")).toBe("true");
    expect(screen.getByTestId("settings-result").textContent).toMatch(/^Not saved/);
    expect(onerror).not.toHaveBeenCalled();

    await fireEvent.input(start, { target: { value: "6200" } });
    await waitFor(() => expect(screen.getByTestId("error-console.port_start").textContent).toBe(""));
    expect(start.getAttribute("aria-invalid")).toBeNull();
    await fireEvent.click(screen.getByTestId("settings-save"));
    await waitFor(() => expect(screen.getByTestId("settings-result").textContent).toMatch(/^Settings saved/));
  });

  it("marks an emptied number without sending it", async () => {
    api.settingsGet.mockResolvedValue(view());
    api.settingsCheck.mockResolvedValue([]);
    api.settingsSave.mockClear();
    render(Settings, { onerror: vi.fn(), admin: true });
    const ttl = (await screen.findByLabelText("Token valid (s)")) as HTMLInputElement;
    await fireEvent.input(ttl, { target: { value: "" } });
    await fireEvent.click(screen.getByTestId("settings-save"));
    await waitFor(() => expect(screen.getByTestId("error-console.token_ttl_secs").textContent).toBe("Enter a number."));
    expect(api.settingsSave).not.toHaveBeenCalled();
  });
});
