// Pure logic of the launch form, tested by Vitest. Prices and rules are the
// core's (api.price, api.validateVmName); this only picks defaults and words.
import type { OsEntry } from "../bindings/OsEntry";

/** The OS a new user should start with: tiny-linux when present, else the first that boots, else the first. */
export function defaultOs(catalog: OsEntry[]): OsEntry | null {
  return catalog.find((o) => o.name === "tiny-linux") ?? catalog.find((o) => o.boots) ?? catalog[0] ?? null;
}

/** What the form says under an OS: what it boots and the least size it needs. */
export function osHint(o: OsEntry): string {
  const need = `needs at least ${o.min_ram_mb} MB of memory and ${o.min_disk_gb} GB of disk`;
  return o.boots ? `Boots to a shell; ${need}.` : "Boots to firmware only: no operating system, nothing to log in to.";
}

/** Thousandths of a credit per hour, as a person reads it: "3.4 credits an hour". */
export function hourlyText(milli: number): string {
  const credits = milli / 1000;
  const shown = Number.isInteger(credits) ? String(credits) : credits.toFixed(credits < 1 ? 3 : 1).replace(/0+$/, "");
  return `${shown} ${credits === 1 ? "credit" : "credits"} an hour while it runs`;
}

/** Why the Create button is disabled (null: it is not). The first problem wins. */
export function disabledReason(s: {
  busy: boolean;
  name: string;
  nameError: string | null;
  sizeError: string | null;
  cost: number | null;
  balance: number;
  /** The core's refusal when the VM fits no host (or the chosen one). */
  roomError?: string | null;
}): string | null {
  if (s.busy) return "Creating…";
  if (s.name.trim() === "") return "Give the VM a name.";
  if (s.nameError) return "Fix the name first.";
  if (s.sizeError) return "Fix the size first.";
  if (s.cost === null) return "Pricing…";
  if (s.roomError) return "No host has room for it: choose less memory, or another host.";
  if (s.cost > s.balance) {
    return `It costs ${s.cost} credits and you have ${s.balance}: choose a smaller size, or ask an admin for credits.`;
  }
  return null;
}

/** Where the VM will run, for the launch form ("Runs on lab-2: 8,960 MB free"). */
export function placementText(p: { host: string; free_memory_mb: number | null }, auto: boolean): string {
  const room = p.free_memory_mb === null ? "" : `: ${p.free_memory_mb.toLocaleString("en")} MB of memory free`;
  return `${auto ? "Runs on" : "On"} ${p.host}${room}${auto ? " (the host with the most free memory)" : ""}`;
}
