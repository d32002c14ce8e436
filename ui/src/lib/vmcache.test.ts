import { describe, expect, it, vi } from "vitest";
import { VmCache } from "./vmcache";
import type { Vm } from "../bindings/Vm";
import type { VmChanges } from "../bindings/VmChanges";

const vm = (id: number, name: string, status = "STOPPED") => ({ id, name, status }) as unknown as Vm;
const answer = (vms: Vm[], total: number, cursor: string): VmChanges => ({ vms, total, cursor });

describe("a VM list kept by changes", () => {
  it("asks for everything first, then only since its cursor, and merges rows by id", async () => {
    const c = new VmCache();
    const fetch = vi.fn(async (since: string | null) =>
      since === null ? answer([vm(2, "b"), vm(1, "a")], 2, "10") : answer([vm(2, "b", "RUNNING"), vm(3, "c")], 3, "12"),
    );
    expect((await c.refresh(fetch)).map((v) => v.name)).toEqual(["a", "b"]);
    const list = await c.refresh(fetch);
    expect(fetch.mock.calls.map((a) => a[0])).toEqual([null, "10"]);
    expect(list.map((v) => [v.name, v.status])).toEqual([["a", "STOPPED"], ["b", "RUNNING"], ["c", "STOPPED"]]);
    expect(c.lastRows).toBe(2);
  });

  it("keeps the same array when nothing changed", async () => {
    const c = new VmCache();
    c.merge(answer([vm(1, "a")], 1, "5"), true);
    const before = c.list;
    await c.refresh(async () => answer([], 1, "6"));
    expect(c.list).toBe(before);
  });

  it("asks again from nothing when rows went away", async () => {
    const c = new VmCache();
    c.merge(answer([vm(1, "a"), vm(2, "b")], 2, "5"), true);
    // vm 2 was removed and vm 3 made: merged there would be 3 rows, the store has 2.
    const fetch = vi.fn(async (since: string | null) =>
      since === null ? answer([vm(1, "a"), vm(3, "c")], 2, "9") : answer([vm(3, "c")], 2, "9"),
    );
    const list = await c.refresh(fetch);
    expect(fetch.mock.calls.map((a) => a[0])).toEqual(["5", null]);
    expect(list.map((v) => v.name)).toEqual(["a", "c"]);
  });
});
