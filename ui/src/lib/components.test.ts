// @vitest-environment jsdom
// Components mounted in a DOM, with the backend replaced by mocks.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/svelte";

vi.mock("./api", async () => {
  const m = await import("./components/testapi");
  return { api: m.api, toApiError: (e: unknown) => e };
});

import { api } from "./components/testapi";
import Launch from "./Launch.svelte";
import VmList from "./VmList.svelte";
import Admin from "./Admin.svelte";
import Events from "./Events.svelte";
import Pools from "./Pools.svelte";
import { vm } from "./components/fixtures";

// jsdom has no layout: the list's viewport size is observed through this.
globalThis.ResizeObserver ??= class {
  observe() {}
  unobserve() {}
  disconnect() {}
} as unknown as typeof ResizeObserver;

beforeEach(() => vi.clearAllMocks());
afterEach(() => cleanup());

describe("the launch form", () => {
  it("says where the VM will run and refuses in advance when no host has room", async () => {
    api.price.mockResolvedValue({ cost: 8, hourly_milli: 800 });
    api.hostOverview.mockResolvedValue([
      { id: 1, name: "local", kind: "libvirt", uri: "qemu:///system" },
      { id: 2, name: "lab-2", kind: "libvirt", uri: "qemu+ssh://lab@lab-2/system" },
    ]);
    api.placement.mockImplementation(async (ram: number, _os: string, host: string | null) => {
      if (ram > 4096) throw { code: "no_room", message: "no host has room for a VM of 8192 MB of memory; the most free memory is 4096 MB, on lab-2; nothing was charged" };
      return { host: host ?? "lab-2", free_memory_mb: 4096, free_disk_mb: 90000 };
    });
    render(Launch, { balance: 100, onerror: vi.fn(), onconsole: vi.fn(), ondetail: vi.fn() });
    await waitFor(() => expect(screen.getByTestId("launch-where").textContent).toBe(
      "Runs on lab-2: 4,096 MB of memory free (the host with the most free memory)"));
    await waitFor(() => expect(screen.getByTestId("launch-host").querySelectorAll("option").length).toBe(3));
    await fireEvent.input(screen.getByTestId("launch-name"), { target: { value: "big" } });
    await fireEvent.input(screen.getByTestId("launch-ram"), { target: { value: "8192" } });
    await waitFor(() => expect(screen.getByTestId("launch-where").textContent).toMatch(/no host has room.*4096 MB, on lab-2/));
    expect(screen.getByTestId("launch-why").textContent).toMatch(/No host has room/);
    expect((screen.getByTestId("launch-submit") as HTMLButtonElement).disabled).toBe(true);
    // The form keeps its choices across visits: leave it as the next test expects.
    await fireEvent.input(screen.getByTestId("launch-ram"), { target: { value: "128" } });
    await fireEvent.input(screen.getByTestId("launch-name"), { target: { value: "" } });
    api.placement.mockImplementation(async (_r: number, _o: string, host: string | null) => ({ host: host ?? "local", free_memory_mb: 8000, free_disk_mb: 50000 }));
    api.hostOverview.mockResolvedValue([]);
  });

  it("shows the core's sentence for a bad size and cannot be submitted", async () => {
    api.price.mockImplementation(async (_os: string, ram: number) => {
      if (ram < 128) throw { code: "invalid_input", message: "tiny-linux needs at least 128 MB of memory to boot; 64 MB is too little" };
      return { cost: 8, hourly_milli: 800 };
    });
    render(Launch, { balance: 100, onerror: vi.fn(), onconsole: vi.fn(), ondetail: vi.fn() });
    // A bootable OS at the least size it boots with, priced with its hourly cost.
    await waitFor(() => expect((screen.getByTestId("launch-os") as HTMLSelectElement).value).toBe("tiny-linux"));
    expect((screen.getByTestId("launch-ram") as HTMLInputElement).value).toBe("128");
    await waitFor(() => expect(screen.getByTestId("launch-hourly").textContent).toBe("then 0.8 credits an hour while it runs"));
    expect(screen.getByTestId("launch-after").textContent).toBe("Balance after: 92 of 100 credits");
    expect(screen.getByTestId("launch-why").textContent).toBe("Give the VM a name.");
    const name = screen.getByTestId("launch-name") as HTMLInputElement;
    await fireEvent.input(name, { target: { value: "web-1" } });
    await waitFor(() => expect((screen.getByTestId("launch-submit") as HTMLButtonElement).disabled).toBe(false));

    await fireEvent.input(screen.getByTestId("launch-ram"), { target: { value: "64" } });
    await waitFor(() => expect(screen.getByTestId("launch-error").textContent).toMatch(/needs at least 128 MB/));
    expect(screen.getByTestId("launch-error").getAttribute("role")).toBe("alert");
    const submit = screen.getByTestId("launch-submit") as HTMLButtonElement;
    expect(submit.disabled).toBe(true);
    await fireEvent.click(submit);
    expect(api.createVm).not.toHaveBeenCalled();
    // The choices are kept for the next visit.
    cleanup();
    render(Launch, { balance: 100, onerror: vi.fn(), onconsole: vi.fn(), ondetail: vi.fn() });
    expect((screen.getByTestId("launch-name") as HTMLInputElement).value).toBe("web-1");
    expect((screen.getByTestId("launch-ram") as HTMLInputElement).value).toBe("64");
  });

  it("checks the name as you type and says why an unaffordable VM cannot be created", async () => {
    api.price.mockResolvedValue({ cost: 68, hourly_milli: 6800 });
    api.validateVmName.mockImplementation(async (n: string) => {
      if (n.includes("!")) throw { code: "invalid_input", message: 'the VM name "x!" may hold only letters' };
      return null;
    });
    render(Launch, { balance: 50, onerror: vi.fn(), onconsole: vi.fn(), ondetail: vi.fn() });
    await fireEvent.input(screen.getByTestId("launch-name"), { target: { value: "x!" } });
    await waitFor(() => expect(screen.getByTestId("launch-name-error").textContent).toMatch(/may hold only letters/));
    await fireEvent.input(screen.getByTestId("launch-name"), { target: { value: "x1" } });
    await waitFor(() => expect(screen.getByTestId("launch-name-error").textContent).toBe(""));
    await waitFor(() => expect(screen.getByTestId("launch-why").textContent).toMatch(/costs 68 credits and you have 50/));
    expect((screen.getByTestId("launch-submit") as HTMLButtonElement).disabled).toBe(true);
  });

  it("passes a refused creation's error on, code and sentence", async () => {
    api.price.mockResolvedValue({ cost: 34, hourly_milli: 3400 });
    const refusal = { code: "invalid_input", message: "there is no host yet" };
    api.createVm.mockRejectedValue(refusal);
    const onerror = vi.fn();
    render(Launch, { balance: 100, onerror, onconsole: vi.fn(), ondetail: vi.fn() });
    await fireEvent.input(screen.getByTestId("launch-name"), { target: { value: "web-2" } });
    await fireEvent.input(screen.getByTestId("launch-ram"), { target: { value: "128" } });
    await waitFor(() => expect((screen.getByTestId("launch-submit") as HTMLButtonElement).disabled).toBe(false));
    await fireEvent.click(screen.getByTestId("launch-submit"));
    await waitFor(() => expect(onerror).toHaveBeenCalledWith(refusal));
    expect(api.createVm).toHaveBeenCalledWith(expect.objectContaining({ name: "web-2", ram_mb: 128, os_type: "tiny-linux" }));
  });
});

describe("the VM list", () => {
  const many = Array.from({ length: 10_000 }, (_, i) => vm(`vm-${String(i).padStart(5, "0")}`, { id: i }));

  it("draws a window of 10,000 VMs and filters them by search", async () => {
    render(VmList, { onerror: vi.fn(), admin: false, user: "ann", ondetail: vi.fn(), onconsole: vi.fn(), initial: many });
    await waitFor(() => expect(screen.getByText("10000 of 10000")).toBeTruthy());
    const drawn = document.querySelectorAll('[data-testid^="vm-row-"]').length;
    expect(drawn).toBeGreaterThan(0);
    expect(drawn).toBeLessThan(60);

    const search = screen.getByLabelText("Search VMs");
    await fireEvent.input(search, { target: { value: "vm-09999" } });
    await waitFor(() => expect(screen.getByText("1 of 10000")).toBeTruthy(), { timeout: 2000 });
    expect(screen.getByTestId("vm-row-vm-09999")).toBeTruthy();
    expect(api.vmList).not.toHaveBeenCalled();
  });

  it("offers the actions that fit the state, for the owner only", async () => {
    const vms = [vm("mine", { id: 1, owner: "ann", pool: null, status: "RUNNING" }), vm("theirs", { id: 2, owner: "bob", pool: null, status: "RUNNING" })];
    render(VmList, { onerror: vi.fn(), admin: false, user: "ann", ondetail: vi.fn(), onconsole: vi.fn(), initial: vms });
    await waitFor(() => expect(screen.getByLabelText("Stop mine")).toBeTruthy());
    expect(screen.queryByLabelText("Stop theirs")).toBeNull();
    expect(screen.queryByLabelText("Start mine")).toBeNull();
    expect(screen.getByLabelText("Open the console of theirs")).toBeTruthy();
    await fireEvent.click(screen.getByLabelText("Stop mine"));
    expect(api.vmAction).toHaveBeenCalledWith("mine", "stop");
  });
});

describe("the admin view", () => {
  it("grants the typed credits and shows the new balance", async () => {
    api.users.mockResolvedValue([
      { id: 1, name: "admin", role: "admin", balance: 10, created_at: "2026-01-01" },
      { id: 2, name: "ann", role: "user", balance: 0, created_at: "2026-01-01" },
    ]);
    api.creditsGrant.mockResolvedValue({ user: "ann", balance: 250, entries: [] });
    render(Admin, { onerror: vi.fn(), onview: vi.fn() });
    await waitFor(() => expect(screen.getByTestId("user-balance-ann").textContent).toBe("0"));
    await fireEvent.change(screen.getByLabelText("Grant to"), { target: { value: "ann" } });
    await fireEvent.input(screen.getByLabelText("Amount"), { target: { value: "250" } });
    await fireEvent.input(screen.getByLabelText("Reason"), { target: { value: "course" } });
    await fireEvent.click(screen.getByTestId("grant-submit"));
    await waitFor(() => expect(screen.getByTestId("user-balance-ann").textContent).toBe("250"));
    expect(api.creditsGrant).toHaveBeenCalledWith("ann", 250, "course");
    expect(screen.getByRole("status").textContent).toContain("Granted 250 credits to ann");
  });
});

describe("the admin view's corrections and maintenance", () => {
  const users = [
    { id: 1, name: "admin", role: "admin", balance: 10, created_at: "2026-01-01" },
    { id: 2, name: "ann", role: "user", balance: 30, created_at: "2026-01-01" },
  ];

  it("stops an adjustment below zero as it is typed, then adjusts", async () => {
    api.users.mockResolvedValue(users);
    api.creditsAdjust.mockResolvedValue({ user: "ann", balance: 20, entries: [] });
    render(Admin, { onerror: vi.fn(), onview: vi.fn() });
    await waitFor(() => expect(screen.getByTestId("user-balance-ann").textContent).toBe("30"));
    await fireEvent.change(screen.getByLabelText("Adjust the credits of"), { target: { value: "ann" } });
    await fireEvent.input(screen.getByTestId("adjust-amount"), { target: { value: "-31" } });
    await fireEvent.input(screen.getByTestId("adjust-reason"), { target: { value: "typo" } });
    await waitFor(() => expect(screen.getByTestId("adjust-problem").textContent).toContain("below zero (it is 30)"));
    expect((screen.getByTestId("adjust-submit") as HTMLButtonElement).disabled).toBe(true);
    await fireEvent.input(screen.getByTestId("adjust-amount"), { target: { value: "-10" } });
    await waitFor(() => expect((screen.getByTestId("adjust-submit") as HTMLButtonElement).disabled).toBe(false));
    await fireEvent.click(screen.getByTestId("adjust-submit"));
    await waitFor(() => expect(screen.getByTestId("user-balance-ann").textContent).toBe("20"));
    expect(api.creditsAdjust).toHaveBeenCalledWith("ann", -10, "typo");
  });

  it("runs recovery, a sync pass and the port cleanup and says what each did", async () => {
    api.users.mockResolvedValue(users);
    render(Admin, { onerror: vi.fn(), onview: vi.fn() });
    await waitFor(() => expect(screen.getByTestId("user-balance-ann").textContent).toBe("30"));
    await fireEvent.click(screen.getByTestId("admin-recover"));
    await waitFor(() => expect(screen.getByRole("status").textContent).toContain("Nothing to recover"));
    await fireEvent.click(screen.getByTestId("admin-sync"));
    await waitFor(() => expect(screen.getByRole("status").textContent).toContain("everything is in sync"));
    await fireEvent.click(screen.getByTestId("admin-ports-cleanup"));
    await waitFor(() => expect(screen.getByRole("status").textContent).toContain("Freed 2 console port(s)."));
    expect(api.adminRecover).toHaveBeenCalledTimes(1);
    expect(api.adminSyncOnce).toHaveBeenCalledTimes(1);
    expect(api.adminPortsCleanup).toHaveBeenCalledTimes(1);
  });
});

describe("the admin view's OS catalog", () => {
  it("lists each image's use, removes only unused ones and imports a typed file", async () => {
    api.users.mockResolvedValue([{ id: 1, name: "admin", role: "admin", balance: 0, created_at: "2026-01-01" }]);
    const row = (name: string, used_by: number) => ({
      name, kind: "image", bytes: 13 << 20, min_ram_mb: 128, min_disk_gb: 1, boots: true, used_by,
    });
    api.osAdminList.mockResolvedValue([row("tiny", 2), row("spare", 0)]);
    api.osImport.mockResolvedValue({ name: "deb", kind: "image", bytes: 300 << 20, min_ram_mb: 512, min_disk_gb: 3, boots: true });
    render(Admin, { onerror: vi.fn(), onview: vi.fn() });
    await waitFor(() => expect(screen.getByTestId("os-used-tiny").textContent).toBe("2 VMs"));
    expect((screen.getByTestId("os-remove-tiny") as HTMLButtonElement).disabled).toBe(true);
    expect((screen.getByTestId("os-remove-spare") as HTMLButtonElement).disabled).toBe(false);
    await fireEvent.input(screen.getByTestId("os-import-name"), { target: { value: "deb" } });
    await fireEvent.input(screen.getByTestId("os-import-file"), { target: { value: "/srv/deb.qcow2" } });
    await fireEvent.input(screen.getByTestId("os-import-ram"), { target: { value: "512" } });
    await fireEvent.input(screen.getByTestId("os-import-disk"), { target: { value: "3" } });
    await fireEvent.click(screen.getByTestId("os-import-submit"));
    await waitFor(() => expect(api.osImport).toHaveBeenCalledWith("deb", "/srv/deb.qcow2", 512, 3));
    await waitFor(() => expect(screen.getByRole("status").textContent).toContain("Imported deb (300 MiB)."));
  });
});

describe("the pools view", () => {
  it("cancels a session that was requested and not started", async () => {
    const session = (id: number, status: string) => ({
      id, vm_id: id, vm_name: "vm" + id, user: "ann", project: "lab", workspace: null, status, error: null,
      created_at: "2026-01-01T00:00:00Z", updated_at: "2026-01-01T00:00:00Z", started_at: null, ended_at: null,
    });
    api.overview.mockResolvedValue({
      user: { id: 2, name: "ann", role: "user", balance: 30, created_at: "2026-01-01" },
      pools: [],
      sessions: [session(7, "REQUESTED"), session(8, "ACTIVE")],
    });
    api.closeSession.mockResolvedValue(session(7, "COMPLETED"));
    render(Pools, { onerror: vi.fn(), onconsole: vi.fn(), ondetail: vi.fn() });
    await waitFor(() => expect(screen.getByTestId("session-cancel-7")).toBeTruthy());
    expect(screen.queryByTestId("session-cancel-8")).toBeNull();
    expect(screen.getByLabelText("Close session 8")).toBeTruthy();
    await fireEvent.click(screen.getByTestId("session-cancel-7"));
    await waitFor(() => expect(api.closeSession).toHaveBeenCalledWith(7));
  });
});

describe("a pool's cost controls", () => {
  const project = (limits: Record<string, number | null>) => ({
    id: 1, name: "lab", created_at: "2026-01-01",
    limits: { max_session_minutes: null, idle_minutes: null, idle_cpu_percent: 5, weekly_hours: null, ...limits },
  });

  it("are shown before a session is opened, and an admin sets them", async () => {
    api.overview.mockResolvedValue({
      user: { id: 1, name: "admin", role: "admin", balance: 0, created_at: "2026-01-01" },
      pools: [{ project: project({ max_session_minutes: 120 }), workspaces: [], vms: [] }],
      sessions: [],
    });
    api.projectLimits.mockResolvedValue(project({ max_session_minutes: 120, weekly_hours: 4 }));
    render(Pools, { onerror: vi.fn(), onconsole: vi.fn(), ondetail: vi.fn(), admin: true });
    await waitFor(() => expect(screen.getByTestId("pool-limits-lab").textContent).toBe("Sessions end after 2 h."));
    await fireEvent.click(screen.getByTestId("limits-edit-lab"));
    await fireEvent.input(screen.getByTestId("limit-weekly"), { target: { value: "4" } });
    await fireEvent.click(screen.getByTestId("limits-save"));
    await waitFor(() =>
      expect(api.projectLimits).toHaveBeenCalledWith("lab", {
        max_session_minutes: 120, idle_minutes: null, idle_cpu_percent: 5, weekly_hours: 4,
      }),
    );
  });

  it("have no form for a user", async () => {
    api.overview.mockResolvedValue({
      user: { id: 2, name: "ann", role: "user", balance: 0, created_at: "2026-01-01" },
      pools: [{ project: project({ weekly_hours: 3 }), workspaces: [], vms: [] }],
      sessions: [],
    });
    render(Pools, { onerror: vi.fn(), onconsole: vi.fn(), ondetail: vi.fn() });
    await waitFor(() => expect(screen.getByTestId("pool-limits-lab").textContent).toBe("3 h of sessions a week each."));
    expect(screen.queryByTestId("limits-edit-lab")).toBeNull();
  });
});

describe("the event feed", () => {
  it("fetches once, then only newer events on a change (no loop)", async () => {
    const ev = (id: number) => ({ id, type: "vm", action: "vm.start", severity: "info", actor: "ann", vm_id: null, session_id: null, details: {}, created_at: "2026-01-01T00:00:00Z" });
    api.events.mockResolvedValueOnce([ev(2), ev(1)]).mockResolvedValue([ev(3)]);
    render(Events, { onerror: vi.fn() });
    await waitFor(() => expect(screen.getAllByTestId("event-row")).toHaveLength(2));
    await new Promise((r) => setTimeout(r, 50));
    expect(api.events).toHaveBeenCalledTimes(1);
    const { handlers } = await import("./components/testapi");
    handlers["changed"]();
    await waitFor(() => expect(screen.getAllByTestId("event-row")).toHaveLength(3));
    expect(api.events).toHaveBeenLastCalledWith(expect.objectContaining({ after: 2 }));
    await new Promise((r) => setTimeout(r, 50));
    expect(api.events).toHaveBeenCalledTimes(2);
  });
});

describe("the event feed as sentences", () => {
  it("tells each event as a sentence with its VM a link, and folds console open/close away", async () => {
    const base = { type: "vm", severity: "info", actor: "ann", session_id: null, created_at: "2026-01-01T00:00:00Z" };
    api.vmChanges.mockResolvedValue({ vms: [vm("lab-3", { id: 3 })], total: 1, cursor: "2" } as never);
    api.events.mockResolvedValue([
      { ...base, id: 3, action: "console.close", vm_id: 3, details: { port: 6100, reason: "closed" } },
      { ...base, id: 2, action: "console.open", vm_id: 3, details: { vm: "lab-3", port: 6100 } },
      { ...base, id: 1, type: "session", action: "session.terminated", actor: "vmdesk", severity: "warning", vm_id: 3, session_id: 7,
        details: { user: "ann", reason: "the VM stopped under the session" } },
    ]);
    const ondetail = vi.fn();
    render(Events, { onerror: vi.fn(), ondetail });
    await waitFor(() => expect(screen.getAllByTestId("event-row")).toHaveLength(1));
    await waitFor(() =>
      expect(screen.getByTestId("event-sentence").textContent).toBe("ann's session 7 on lab-3 ended: the VM was found off"),
    );
    expect(screen.getByTestId("events-hidden").textContent).toMatch(/^2 console events/);
    await fireEvent.click(screen.getByRole("button", { name: "Details of lab-3" }));
    expect(ondetail).toHaveBeenCalledWith("lab-3");
    await fireEvent.click(screen.getByTestId("events-routine"));
    await waitFor(() => expect(screen.getAllByTestId("event-row")).toHaveLength(3));
  });
});
