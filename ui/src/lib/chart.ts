// Line charts as SVG paths, and the series the window draws: a VM's CPU and
// memory over the last minute, and credits spent per day.
import type { LedgerEntry } from "../bindings/LedgerEntry";
import type { VmStats } from "../bindings/VmStats";

export interface Point {
  x: number;
  y: number;
}

/**
 * The SVG path of `values` (nulls break the line) in a `width` x `height`
 * box, x spread evenly over `slots` places (the newest at the right), y from
 * 0 at the bottom to `max` at the top.
 */
export function linePath(values: readonly (number | null)[], width: number, height: number, max: number, slots = values.length): string {
  if (slots < 2 || max <= 0) return "";
  const step = width / (slots - 1);
  const offset = slots - values.length;
  let d = "";
  let pen = false;
  values.forEach((v, i) => {
    if (v === null || !Number.isFinite(v)) {
      pen = false;
      return;
    }
    const x = (offset + i) * step;
    const y = height - (Math.min(Math.max(v, 0), max) / max) * height;
    d += `${pen ? "L" : "M"}${round(x)},${round(y)}`;
    pen = true;
  });
  return d;
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}

/** A round upper bound for a chart's y axis (1, 2, 5 × 10^n), at least `min`. */
export function niceMax(values: readonly (number | null)[], min = 1): number {
  const top = Math.max(min, ...values.filter((v): v is number => v !== null && Number.isFinite(v)));
  const p = 10 ** Math.floor(Math.log10(top));
  for (const m of [1, 2, 5, 10]) if (m * p >= top) return m * p;
  return 10 * p;
}

/** Samples kept per graph: a minute at one a second. */
export const HISTORY = 60;

/** Adds a sample to a VM's history (the last HISTORY), starting over for another VM. */
export function pushSample(history: readonly VmStats[], s: VmStats): VmStats[] {
  const same = history.length === 0 || history[history.length - 1].vm === s.vm;
  const next = same ? [...history, s] : [s];
  return next.slice(-HISTORY);
}

/** Memory in use as a percentage of the VM's memory, where known. */
export function memPercent(s: VmStats): number | null {
  if (s.used_kib === null || s.memory_kib <= 0) return null;
  return Math.min(100, (s.used_kib * 100) / s.memory_kib);
}

/**
 * What each entry of a ledger spent: debits for VMs (creation and running
 * time), less what was refunded of a creation (a refund entry of the same
 * VM). Grants, adjustments and refunds themselves are not spending.
 */
export function spending(entries: readonly LedgerEntry[]): { created_at: string; spent: number }[] {
  const refunded = new Map<number, number>();
  for (const e of entries) {
    if (e.kind === "refund" && e.vm_id !== null && e.amount > 0) refunded.set(e.vm_id, (refunded.get(e.vm_id) ?? 0) + e.amount);
  }
  const out: { created_at: string; spent: number }[] = [];
  for (const e of entries) {
    if (e.amount >= 0 || (e.kind !== "vm_create" && e.kind !== "runtime")) continue;
    let spent = -e.amount;
    if (e.kind === "vm_create" && e.vm_id !== null) {
      const back = Math.min(spent, refunded.get(e.vm_id) ?? 0);
      refunded.set(e.vm_id, (refunded.get(e.vm_id) ?? 0) - back);
      spent -= back;
    }
    if (spent > 0) out.push({ created_at: e.created_at, spent });
  }
  return out;
}

/** Credits spent per day (UTC), oldest first, from a ledger (see `spending`). */
export function spendingByDay(entries: readonly LedgerEntry[]): { day: string; spent: number }[] {
  const days = new Map<string, number>();
  for (const e of spending(entries)) {
    const day = e.created_at.slice(0, 10);
    days.set(day, (days.get(day) ?? 0) + e.spent);
  }
  return [...days.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([day, spent]) => ({ day, spent }));
}

export type Unit = "day" | "hour";

/** One bar of the spending chart: its UTC key, its axis label and what was spent. */
export interface Bucket {
  key: string;
  label: string;
  spent: number;
}

/**
 * Credits spent per day or per hour (UTC) over the last `count` of them up to
 * `now`, oldest first, with the empty ones too (one day of spending is one
 * bar among empty days, not a bar the width of the chart).
 */
export function spendingBuckets(entries: readonly LedgerEntry[], unit: Unit, count: number, now: Date = new Date()): Bucket[] {
  const step = unit === "day" ? 86_400_000 : 3_600_000;
  const len = unit === "day" ? 10 : 13; // "2026-01-02" or "2026-01-02T10"
  const end = Math.floor(now.getTime() / step) * step;
  const spent = new Map<string, number>();
  for (const e of spending(entries)) {
    const key = new Date(e.created_at).toISOString().slice(0, len);
    spent.set(key, (spent.get(key) ?? 0) + e.spent);
  }
  const out: Bucket[] = [];
  for (let i = count - 1; i >= 0; i--) {
    const iso = new Date(end - i * step).toISOString();
    const key = iso.slice(0, len);
    const label = unit === "day" ? iso.slice(5, 10) : iso.slice(11, 13) + ":00";
    out.push({ key, label, spent: spent.get(key) ?? 0 });
  }
  return out;
}

/** The y axis' labelled values: 0, half and the top. */
export function yTicks(top: number): number[] {
  return [0, top / 2, top];
}

/** Which of `count` bars get an x label: about `most` of them, the newest always. */
export function xLabelled(count: number, most = 7): Set<number> {
  const every = Math.max(1, Math.ceil(count / most));
  const out = new Set<number>();
  for (let i = count - 1; i >= 0; i -= every) out.add(i);
  return out;
}

/** Credits spent per hour on average over `hours` up to `now` (one decimal). */
export function perHour(entries: readonly LedgerEntry[], hours: number, now: Date = new Date()): number {
  const since = now.getTime() - hours * 3_600_000;
  let spent = 0;
  for (const e of spending(entries)) if (new Date(e.created_at).getTime() > since) spent += e.spent;
  return Math.round((spent / hours) * 10) / 10;
}
