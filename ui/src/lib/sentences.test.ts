import { describe, expect, it } from "vitest";
import type { Event } from "../bindings/Event";
import { isRoutine, plain, sentence } from "./sentences";

function ev(action: string, details: Record<string, unknown>, over: Partial<Event> = {}): Event {
  return {
    id: 1, type: "vm", action, severity: "info", actor: "ann", vm_id: 3, session_id: null,
    details: details as Event["details"], created_at: "2026-01-01T10:00:00Z", ...over,
  };
}
const names = (id: number) => (id === 3 ? "lab-3" : undefined);

describe("event sentences", () => {
  it("says why status sync ended a session, naming its user and VM", () => {
    const e = ev("session.terminated", { user: "ann", reason: "the VM stopped under the session" },
      { type: "session", actor: "vmdesk", session_id: 7 });
    const parts = sentence(e, names);
    expect(plain(parts)).toBe("ann's session 7 on lab-3 ended: the VM was found off");
    // The VM and the session are links.
    expect(parts).toContainEqual({ vm: "lab-3" });
    expect(parts).toContainEqual({ session: 7 });
  });

  it("words cost controls, corrections and orphans", () => {
    const session = { type: "session" as const, actor: "vmdesk", session_id: 7, severity: "warning" as const };
    expect(plain(sentence(ev("session.limit_warning", { user: "ann", vm: "lab-3", rule: "idle", closes_at: "2026-01-01T10:35:00.000Z" }, session))))
      .toBe("ann's session 7 on lab-3 closes at 10:35 UTC: it has been idle");
    expect(plain(sentence(ev("session.limit_warning", { user: "ann", vm: "lab-3", rule: "max_session_length", closes_at: "2026-01-01T11:00:00.000Z" }, session))))
      .toBe("ann's session 7 on lab-3 closes at 11:00 UTC: it reaches the project's maximum session length");
    expect(plain(sentence(ev("session.limit_reached", { user: "ann", vm: "lab-3", rule: "idle" }, session))))
      .toBe("ann's session 7 on lab-3 was closed: idle too long");
    expect(plain(sentence(ev("vm.orphan_stop", { vm: "lab-3", grace_seconds: 600 }, { type: "system", actor: "vmdesk", vm_id: null }))))
      .toBe("vmdesk stopped the pool VM lab-3: it ran with no session for 10 min (billed to nobody)");
    expect(plain(sentence(ev("credits.adjust", { user: "ann", amount: -40, reason: "a double grant" }, { type: "admin", actor: "admin" }))))
      .toBe("admin adjusted ann's credits by -40: a double grant");
    expect(plain(sentence(ev("credits.refund", { user: "ann", vm: "wide", amount: 2561, reason: "the host refused it" }, { type: "billing", actor: "admin" }))))
      .toBe("admin refunded 2561 credits to ann for wide: the host refused it");
    expect(plain(sentence(ev("project.limits", { project: "lab" }, { type: "admin", actor: "admin", vm_id: null }))))
      .toBe("admin changed the cost controls of project lab");
  });

  it("words the lifecycle of a VM", () => {
    expect(plain(sentence(ev("vm.stop", { vm: "lab-3", forced_off: true })))).toBe("ann stopped lab-3 (the guest was forced off)");
    expect(plain(sentence(ev("vm.destroy", { vm: "web" })))).toBe("ann destroyed web");
    expect(plain(sentence(ev("vm.address", { vm: "web", now: "192.168.213.9", learned: "lease" })))).toBe(
      "web has the address 192.168.213.9 (from its DHCP lease)");
    expect(plain(sentence(ev("vm.address", { vm: "az", now: "10.0.0.4", public_ip: "20.1.2.3", learned: "azure" })))).toBe(
      "az has the address 10.0.0.4 (public 20.1.2.3) (from its Azure network interface)");
    expect(plain(sentence(ev("vm.address", { vm: "web", now: null })))).toBe("web has no address now");
    expect(plain(sentence(ev("vm.create", { vm: "web", cost: 34 })))).toBe("ann created web for 34 credits");
    expect(plain(sentence(ev("vm.start.failed", { vm: "web", reason: "Not enough credits." })))).toBe(
      "ann could not start web: not enough credits",
    );
    expect(plain(sentence(ev("vm.create_failed", { reason: "no disk", refunded: false }), names))).toBe(
      "Creating lab-3 failed: no disk (not refunded)",
    );
  });

  it("links only a VM that exists", () => {
    expect(sentence(ev("vm.start.failed", { vm: "nosuch", reason: "no VM named \"nosuch\"" }, { vm_id: null }))).toEqual([
      "ann could not start ", "nosuch", ': no VM named "nosuch"',
    ]);
  });

  it("takes the VM's name from its id when the details lack it", () => {
    expect(plain(sentence(ev("vm.meta", {}), names))).toBe("ann changed the metadata of lab-3");
    expect(plain(sentence(ev("vm.meta", {}, { vm_id: 9 }), names))).toBe("ann changed the metadata of VM #9");
    // A state an admin wrote by hand on a team store (vmdesk.vm_set_status).
    expect(plain(sentence(ev("vm.status", { status: "STOPPED" }), names))).toBe("ann set lab-3 to STOPPED");
  });

  it("words credits: a grant, a charge, running time, running out", () => {
    expect(plain(sentence(ev("credits.charge", { user: "ann", amount: 100, reason: "welcome" }, { actor: "admin", vm_id: null }))))
      .toBe("admin granted 100 credits to ann: welcome");
    expect(plain(sentence(ev("credits.charge", { user: "ann", amount: -34, vm: "web" })))).toBe("ann was charged 34 credits for web");
    expect(plain(sentence(ev("credits.grant", { user: "ann", amount: 50, reason: "opening balance" }, { actor: "admin", vm_id: null }))))
      .toBe("admin granted 50 credits to ann: opening balance");
    expect(plain(sentence(ev("credits.runtime", { user: "ann", vm: "web", amount: 2 }, { actor: "vmdesk" }))))
      .toBe("ann's credits: 2 for running web");
    expect(plain(sentence(ev("credits.exhausted", { user: "ann", vm: "web" }, { actor: "vmdesk" }))))
      .toBe("ann's credits ran out: web was stopped");
  });

  it("folds console open and close as routine", () => {
    expect(isRoutine(ev("console.open", { vm: "lab-3", port: 6100 }))).toBe(true);
    expect(isRoutine(ev("console.close", { port: 6100, reason: "closed" }))).toBe(true);
    expect(isRoutine(ev("vm.stop", {}))).toBe(false);
    expect(plain(sentence(ev("console.open", { vm: "lab-3", port: 6100 })))).toBe("ann opened the console of lab-3");
  });

  it("falls back to the action's words for anything new", () => {
    expect(plain(sentence(ev("serve.lead", {}, { vm_id: null, actor: "labadmin" })))).toBe("labadmin: serve lead");
  });

  it("words the quarantine of a machine without a VM, and its purge", () => {
    const q = { host: "h1", machine: "vmdesk-3f2a-old", powered_off: true };
    expect(plain(sentence(ev("recovery.quarantine", q, { vm_id: null, actor: "vmdesk" })))).toBe(
      "vmdesk quarantined the machine vmdesk-3f2a-old on h1: it has no VM here, so it is stopped and kept until an admin purges it",
    );
    expect(plain(sentence(ev("recovery.quarantine", { ...q, powered_off: false }, { vm_id: null, actor: "vmdesk" })))).toContain(
      "(it could not be powered off)",
    );
    expect(plain(sentence(ev("recovery.purge", q, { vm_id: null, actor: "root" })))).toBe(
      "root deleted the quarantined machine vmdesk-3f2a-old on h1",
    );
  });
});

describe("admin event sentences", () => {
  it("words role changes and single credits", () => {
    expect(plain(sentence(ev("user.role", { user: "ann", from: "user", to: "admin" }, { actor: "admin", vm_id: null })))).toBe("admin made ann an admin");
    expect(plain(sentence(ev("credits.grant", { user: "ann", amount: 1, reason: "x" }, { actor: "admin", vm_id: null })))).toBe("admin granted 1 credit to ann: x");
  });
});

describe("idle shutdown of an own VM", () => {
  it("tells the warning and the stop", () => {
    const base = { id: 1, type: "vm", severity: "warning", actor: "vmdesk", vm_id: 4, session_id: null, created_at: "2026-01-01T10:30:00Z" };
    const w = { ...base, action: "vm.idle_warning", details: { user: "ann", vm: "mine", idle_minutes: 30, stops_at: "2026-01-01T10:35:00.000Z" } };
    const s = { ...base, action: "vm.idle_stop", details: { user: "ann", vm: "mine", idle_minutes: 30 } };
    expect(plain(sentence(w as never))).toBe("mine stops at 10:35 UTC: idle for 30 min, as its owner chose");
    expect(plain(sentence(s as never))).toBe("vmdesk stopped mine: idle for 30 min, as its owner chose");
  });
});
