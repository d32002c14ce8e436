import { describe, expect, it } from "vitest";
import type { Pool } from "../bindings/Pool";
import type { Vm } from "../bindings/Vm";
import { age, badge, duration, poolCounts, resourceGroups, severityBadge, vmTypes } from "./view";

function vm(over: Partial<Vm>): Vm {
  return {
    id: 1, name: "a", os_type: "blank", ram_mb: 64, disk_gb: 1, cpu_cores: 1, vm_type: "standard",
    status: "STOPPED", ip_address: null, ssh_port: null, uptime_seconds: null, metadata: {},
    owner: null, pool: "p", host: "h", provider_id: null, session_id: null, last_stopped: null,
    created_at: "2026-01-01T00:00:00.000Z", updated_at: "2026-01-01T00:00:00.000Z",
    synced_at: null, synced_by: null, ...over,
  };
}

function pool(vms: Vm[]): Pool {
  const limits = { max_session_minutes: null, idle_minutes: null, idle_cpu_percent: 5, weekly_hours: null };
  return { project: { id: 1, name: "p", created_at: "", limits }, workspaces: [], vms };
}

describe("poolCounts", () => {
  it("counts a VM in a session as in use, not free", () => {
    const c = poolCounts(pool([vm({ id: 1, session_id: 9, status: "RUNNING" }), vm({ id: 2 })]));
    expect(c).toEqual({ total: 2, free: 1, inUse: 1 });
  });

  it("does not count a failed VM as free", () => {
    expect(poolCounts(pool([vm({ status: "FAILED_TO_START" })])).free).toBe(0);
  });
});

describe("vmTypes", () => {
  it("lists each type once, sorted", () => {
    expect(vmTypes(pool([vm({ vm_type: "gpu" }), vm({ vm_type: "cpu" }), vm({ vm_type: "gpu" })]))).toEqual(["cpu", "gpu"]);
  });
});

describe("badge", () => {
  it("maps running and active to ok, transitions to busy, failures to bad", () => {
    expect(badge("RUNNING")).toBe("ok");
    expect(badge("ACTIVE")).toBe("ok");
    expect(badge("STARTING")).toBe("busy");
    expect(badge("FAILED")).toBe("bad");
    expect(badge("UNKNOWN")).toBe("bad");
    expect(badge("STOPPED")).toBe("off");
  });
});

describe("age", () => {
  it("says minutes for a few minutes", () => {
    expect(age("2026-01-01T00:00:00Z", new Date("2026-01-01T00:03:10Z"))).toBe("3 min ago");
  });
});

describe("duration", () => {
  it("says seconds, minutes, hours and days", () => {
    expect(duration(42)).toBe("42 s");
    expect(duration(125)).toBe("2 min 5 s");
    expect(duration(7500)).toBe("2 h 5 min");
    expect(duration(90000)).toBe("1 d 1 h");
  });
});

describe("resourceGroups", () => {
  it("splits on commas and drops blanks", () => {
    expect(resourceGroups(" lab-rg, ,Other ")).toEqual(["lab-rg", "Other"]);
  });
  it("is empty for an empty field", () => {
    expect(resourceGroups("")).toEqual([]);
  });
});

describe("severityBadge", () => {
  it("colours info, warning and critical apart", () => {
    expect(severityBadge("info")).toBe("off");
    expect(severityBadge("warning")).toBe("busy");
    expect(severityBadge("critical")).toBe("bad");
  });
});
