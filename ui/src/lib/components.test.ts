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
  it("shows the core's sentence for a bad size and cannot be submitted", async () => {
    api.quote.mockImplementation(async (ram: number) => {
      if (ram < 64) throw { code: "invalid_input", message: "memory must be at least 64 MB, not 1" };
      return { cost: 34 };
    });
    render(Launch, { balance: 100, onerror: vi.fn(), onconsole: vi.fn(), ondetail: vi.fn() });
    const name = screen.getByTestId("launch-name") as HTMLInputElement;
    await fireEvent.input(name, { target: { value: "web-1" } });
    await waitFor(() => expect((screen.getByTestId("launch-submit") as HTMLButtonElement).disabled).toBe(false));

    await fireEvent.input(screen.getByTestId("launch-ram"), { target: { value: "1" } });
    await waitFor(() => expect(screen.getByTestId("launch-error").textContent).toBe("memory must be at least 64 MB, not 1"));
    expect(screen.getByTestId("launch-error").getAttribute("role")).toBe("alert");
    const submit = screen.getByTestId("launch-submit") as HTMLButtonElement;
    expect(submit.disabled).toBe(true);
    await fireEvent.click(submit);
    expect(api.createVm).not.toHaveBeenCalled();
  });

  it("passes a refused creation's error on, code and sentence", async () => {
    api.quote.mockResolvedValue({ cost: 34 });
    const refusal = { code: "invalid_input", message: 'the VM name "bad name!" may hold only letters' };
    api.createVm.mockRejectedValue(refusal);
    const onerror = vi.fn();
    render(Launch, { balance: 100, onerror, onconsole: vi.fn(), ondetail: vi.fn() });
    await fireEvent.input(screen.getByTestId("launch-name"), { target: { value: "bad name!" } });
    await waitFor(() => expect((screen.getByTestId("launch-submit") as HTMLButtonElement).disabled).toBe(false));
    await fireEvent.click(screen.getByTestId("launch-submit"));
    await waitFor(() => expect(onerror).toHaveBeenCalledWith(refusal));
    expect(api.createVm).toHaveBeenCalledWith(expect.objectContaining({ name: "bad name!", ram_mb: 1024 }));
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
