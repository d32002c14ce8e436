// Pure view logic of the window, tested by Vitest.
import type { Pool } from "../bindings/Pool";
import type { Session } from "../bindings/Session";
import type { SessionStatus } from "../bindings/SessionStatus";
import type { VmStatus } from "../bindings/VmStatus";
import type { Severity } from "../bindings/Severity";

/** States in which a session holds its VM (the core's `SessionStatus::LIVE`). */
export const LIVE: readonly SessionStatus[] = ["REQUESTED", "STARTING", "ACTIVE", "TERMINATING"];

export function isLive(s: Session): boolean {
  return LIVE.includes(s.status);
}

/** The badge colour class of a VM or session state. */
export function badge(status: VmStatus | SessionStatus): "ok" | "busy" | "off" | "bad" {
  switch (status) {
    case "RUNNING":
    case "ACTIVE":
      return "ok";
    case "CREATING":
    case "STARTING":
    case "STOPPING":
    case "REQUESTED":
    case "TERMINATING":
      return "busy";
    case "STOPPED":
    case "COMPLETED":
    case "DESTROYED":
      return "off";
    default:
      return "bad";
  }
}

/** The badge colour class of an event's severity. */
export function severityBadge(s: Severity): "off" | "busy" | "bad" {
  return s === "info" ? "off" : s === "warning" ? "busy" : "bad";
}

/** Counts of a pool: VMs, those free for a session, those in one. */
export function poolCounts(pool: Pool): { total: number; free: number; inUse: number } {
  const total = pool.vms.length;
  const inUse = pool.vms.filter((v) => v.session_id !== null).length;
  const free = pool.vms.filter(
    (v) => v.session_id === null && (v.status === "STOPPED" || v.status === "RUNNING"),
  ).length;
  return { total, free, inUse };
}

/** The distinct VM types of a pool, sorted. */
export function vmTypes(pool: Pool): string[] {
  return [...new Set(pool.vms.map((v) => v.vm_type))].sort();
}

/** "3 min ago"-style age of an RFC 3339 time, relative to `now`. */
export function age(iso: string, now: Date = new Date()): string {
  const s = Math.max(0, Math.round((now.getTime() - new Date(iso).getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** "2 h 5 min"-style length of a number of seconds. */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** The resource groups of a comma-separated list, blanks dropped. */
export function resourceGroups(text: string): string[] {
  return text
    .split(",")
    .map((g) => g.trim())
    .filter((g) => g.length > 0);
}
