// What a VM or session in transition is doing and what comes next, from the
// backend's state only (so it survives a view change and shows in every window).
import type { Session } from "../bindings/Session";
import type { Vm } from "../bindings/Vm";

/** The deadline of a stopping VM (when it is forced off), if the backend set one. */
export function forceOffAt(vm: Vm | null | undefined): Date | null {
  const meta = (vm?.metadata ?? {}) as Record<string, unknown>;
  const t = meta["force_off_at"];
  if (typeof t !== "string") return null;
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** Whole seconds left before `deadline` (never below 0). */
export function secondsLeft(deadline: Date, now: Date): number {
  return Math.max(0, Math.ceil((deadline.getTime() - now.getTime()) / 1000));
}

/** Whether a VM is between two states: its actions wait until it settles. */
export function inTransition(vm: Vm | null | undefined): boolean {
  return !!vm && (vm.status === "STOPPING" || vm.status === "STARTING" || vm.status === "CREATING");
}

/** What happens next to a VM in transition, for a person ("" when none). */
export function vmNext(vm: Vm | null | undefined, now: Date): string {
  if (!vm) return "";
  switch (vm.status) {
    case "STOPPING": {
      const at = forceOffAt(vm);
      if (!at) return "Shutting down…";
      const s = secondsLeft(at, now);
      return s > 0
        ? `Shutting down: forcing off in ${s} s if the guest does not stop`
        : "Shutting down: forcing off now";
    }
    case "STARTING":
      return "Starting…";
    case "CREATING":
      return "Being created…";
    default:
      return "";
  }
}

/** What happens next to a session being closed, given its VM ("" when none). */
export function sessionNext(s: Session, vm: Vm | null | undefined, now: Date): string {
  if (s.status !== "TERMINATING") return "";
  const at = forceOffAt(vm);
  if (!at) return "Closing: the guest is being shut down…";
  const n = secondsLeft(at, now);
  return n > 0 ? `Closing: forcing the guest off in ${n} s` : "Closing: forcing the guest off now";
}

/** How status sync last learned a VM's state, in plain words. */
export function syncedBy(source: string | null): string {
  switch (source) {
    case "poll":
      return "regular check";
    case "event":
      return "reported by the host";
    case null:
    case "":
      return "";
    default:
      return source;
  }
}
