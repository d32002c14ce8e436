import { describe, expect, it } from "vitest";
import type { VmStats } from "../bindings/VmStats";
import type { LedgerEntry } from "../bindings/LedgerEntry";
import { HISTORY, linePath, memPercent, niceMax, perHour, pushSample, spendingBuckets, spendingByDay, xLabelled, yTicks } from "./chart";

function sample(vm: string, at: number, over: Partial<VmStats> = {}): VmStats {
  return { vm, at_ms: at, cpu_time_ns: 0, vcpus: 1, memory_kib: 1000, used_kib: 250, cpu_percent: null, ...over };
}

describe("charts", () => {
  it("draws values from bottom (0) to top (max), newest at the right", () => {
    expect(linePath([0, 50, 100], 100, 10, 100)).toBe("M0,10L50,5L100,0");
    // Fewer values than slots: they sit at the right.
    expect(linePath([100], 100, 10, 100, 3)).toBe("M100,0");
    // Values beyond the axis are clamped.
    expect(linePath([-5, 500], 10, 10, 100)).toBe("M0,10L10,0");
  });

  it("breaks the line where a value is missing", () => {
    expect(linePath([10, null, 10], 20, 10, 10)).toBe("M0,0M20,0");
    expect(linePath([], 20, 10, 10)).toBe("");
  });

  it("rounds the axis up to 1, 2 or 5 times a power of ten", () => {
    expect(niceMax([3])).toBe(5);
    expect(niceMax([120, null])).toBe(200);
    expect(niceMax([0.2], 1)).toBe(1);
    expect(niceMax([700])).toBe(1000);
  });

  it("keeps a minute of one VM's samples", () => {
    let h: VmStats[] = [];
    for (let i = 0; i < HISTORY + 5; i++) h = pushSample(h, sample("a", i));
    expect(h).toHaveLength(HISTORY);
    expect(h[0].at_ms).toBe(5);
    expect(pushSample(h, sample("b", 99))).toHaveLength(1);
  });

  it("shows memory use as a share, unknown when the host does not tell", () => {
    expect(memPercent(sample("a", 0))).toBe(25);
    expect(memPercent(sample("a", 0, { used_kib: null }))).toBeNull();
  });

  it("sums debits per day", () => {
    const e = (amount: number, created_at: string): LedgerEntry => ({
      id: 0, amount, kind: "runtime", reason: "", vm_id: null, session_id: null, actor: "a", created_at,
    });
    expect(
      spendingByDay([e(100, "2026-01-01T10:00:00Z"), e(-34, "2026-01-02T10:00:00Z"), e(-6, "2026-01-02T23:00:00Z"), e(-1, "2026-01-01T09:00:00Z")]),
    ).toEqual([{ day: "2026-01-01", spent: 1 }, { day: "2026-01-02", spent: 40 }]);
  });

  const entry = (amount: number, created_at: string, kind: LedgerEntry["kind"] = "runtime"): LedgerEntry => ({
    id: 0, amount, kind, reason: "", vm_id: null, session_id: null, actor: "a", created_at,
  });

  it("draws a single day of spending as one bar among empty days", () => {
    const now = new Date("2026-01-10T15:30:00Z");
    const days = spendingBuckets([entry(-34, "2026-01-10T09:00:00Z"), entry(50, "2026-01-10T08:00:00Z")], "day", 7, now);
    expect(days).toHaveLength(7);
    expect(days[0]).toEqual({ key: "2026-01-04", label: "01-04", spent: 0 });
    expect(days[6]).toEqual({ key: "2026-01-10", label: "01-10", spent: 34 });
    expect(days.filter((d) => d.spent > 0)).toHaveLength(1);
  });

  it("sums spending per hour over the last hours, older ones left out", () => {
    const now = new Date("2026-01-10T15:30:00Z");
    const hours = spendingBuckets(
      [entry(-2, "2026-01-10T15:05:00Z"), entry(-3, "2026-01-10T15:25:00Z"), entry(-1, "2026-01-10T13:59:59Z"), entry(-9, "2026-01-09T10:00:00Z")],
      "hour", 3, now,
    );
    expect(hours).toEqual([
      { key: "2026-01-10T13", label: "13:00", spent: 1 },
      { key: "2026-01-10T14", label: "14:00", spent: 0 },
      { key: "2026-01-10T15", label: "15:00", spent: 5 },
    ]);
    expect(perHour([entry(-6, "2026-01-10T15:00:00Z"), entry(-100, "2026-01-01T00:00:00Z")], 24, now)).toBe(0.3);
  });

  it("does not count a refunded creation, an adjustment or a grant as spending", () => {
    const now = new Date("2026-01-10T15:30:00Z");
    const vm = (amount: number, kind: LedgerEntry["kind"], vm_id: number, created_at: string): LedgerEntry => ({
      ...entry(amount, created_at, kind), vm_id,
    });
    const days = spendingBuckets(
      [
        vm(-34, "vm_create", 7, "2026-01-09T09:00:00Z"), // refunded the next day
        vm(34, "refund", 7, "2026-01-10T09:00:00Z"),
        vm(-20, "vm_create", 8, "2026-01-10T10:00:00Z"),
        vm(-3, "runtime", 8, "2026-01-10T11:00:00Z"),
        entry(-50, "2026-01-10T12:00:00Z", "adjustment"),
        entry(100, "2026-01-10T12:00:00Z", "grant"),
      ],
      "day", 2, now,
    );
    expect(days.map((d) => d.spent)).toEqual([0, 23]);
  });

  it("labels the axes: 0, half and top; about seven x labels, the newest always", () => {
    expect(yTicks(50)).toEqual([0, 25, 50]);
    expect([...xLabelled(30)].sort((a, b) => a - b)).toEqual([4, 9, 14, 19, 24, 29]);
    expect([...xLabelled(1)]).toEqual([0]);
  });
});
