import { describe, expect, it } from "vitest";
import type { Vm } from "../bindings/Vm";
import { vm } from "./components/fixtures";
import { choices, filterVms, NO_FILTER, ownerOf, sortVms, visibleWindow } from "./vmlist";


const many: Vm[] = Array.from({ length: 10_000 }, (_, i) =>
  vm(`vm-${String(i).padStart(5, "0")}`, {
    id: i,
    status: i % 3 === 0 ? "RUNNING" : "STOPPED",
    host: i % 2 ? "east" : "west",
    owner: i % 10 === 0 ? "ann" : null,
    ram_mb: (i % 7) * 512,
  }),
);

describe("the VM list", () => {
  it("searches every word across name, host, owner, pool and type", () => {
    const vms = [vm("web-1", { host: "east" }), vm("db-1", { owner: "ann", pool: null }), vm("web-2", { host: "west" })];
    expect(filterVms(vms, { ...NO_FILTER, search: "web east" }).map((v) => v.name)).toEqual(["web-1"]);
    expect(filterVms(vms, { ...NO_FILTER, search: "ANN" }).map((v) => v.name)).toEqual(["db-1"]);
    expect(filterVms(vms, { ...NO_FILTER, search: "  " })).toHaveLength(3);
  });

  it("finds a VM by its address", () => {
    const vms = [vm("web-1", { ip_address: "192.168.213.17" }), vm("web-2", { ip_address: null })];
    expect(filterVms(vms, { ...NO_FILTER, search: "213.17" }).map((v) => v.name)).toEqual(["web-1"]);
  });

  it("filters 10,000 VMs by state, owner and host together", () => {
    const f = filterVms(many, { search: "", status: "RUNNING", owner: "ann", host: "west" });
    // i % 3 == 0, i % 10 == 0, even: multiples of 30.
    expect(f).toHaveLength(334);
    expect(f.every((v) => v.status === "RUNNING" && v.owner === "ann" && v.host === "west")).toBe(true);
    expect(filterVms(many, { ...NO_FILTER, owner: "pool:lab" })).toHaveLength(9_000);
  });

  it("sorts by a column either way, ties by name", () => {
    const s = sortVms(many, "ram_mb", true);
    expect(s[0].ram_mb).toBe(3072);
    expect(s[s.length - 1].ram_mb).toBe(0);
    expect(s[0].name < s[1].name).toBe(true);
    expect(sortVms([vm("b"), vm("a")], "name", false).map((v) => v.name)).toEqual(["a", "b"]);
    expect(sortVms([vm("a", { owner: "zed" }), vm("b", { owner: "al" })], "owner", false)[0].name).toBe("b");
  });

  it("draws only the rows in view", () => {
    const w = visibleWindow(10_000, 280_000, 600, 28, 8);
    expect(w.start).toBe(10_000 - 8);
    expect(w.end).toBe(10_000);
    const top = visibleWindow(10_000, 0, 600, 28, 8);
    expect(top).toEqual({ start: 0, end: 31, before: 0, after: (10_000 - 31) * 28 });
    const mid = visibleWindow(10_000, 28 * 5000, 600, 28, 8);
    expect(mid.end - mid.start).toBeLessThan(50);
    expect(mid.before + (mid.end - mid.start) * 28 + mid.after).toBe(10_000 * 28);
    expect(visibleWindow(0, 100, 600, 28)).toEqual({ start: 0, end: 0, before: 0, after: 0 });
  });

  it("offers each owner and host once", () => {
    expect(choices(many, ownerOf)).toEqual(["ann", "pool:lab"]);
    expect(choices(many, (v) => v.host)).toEqual(["east", "west"]);
  });

  it("hides destroyed VMs unless asked, or filtered by that state", () => {
    const vms = [vm("a", { status: "RUNNING" }), vm("b", { status: "DESTROYED" })];
    expect(filterVms(vms, { ...NO_FILTER, destroyed: false }).map((v) => v.name)).toEqual(["a"]);
    expect(filterVms(vms, { ...NO_FILTER, destroyed: true }).map((v) => v.name)).toEqual(["a", "b"]);
    expect(filterVms(vms, { ...NO_FILTER, destroyed: false, status: "DESTROYED" }).map((v) => v.name)).toEqual(["b"]);
  });
});
