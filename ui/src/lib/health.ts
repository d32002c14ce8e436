// Status sync's health in words, for the window's status bar.
import type { SyncHealth } from "../bindings/SyncHealth";
import type { Check } from "../bindings/Check";

/** How the status bar looks: its colour and what it says. */
export type SyncLook = { state: "ok" | "warning" | "down" | "off" | "starting"; text: string };

/** "14:03:07": a stored time as the local clock shows it. */
export function clock(iso: string): string {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const two = (n: number) => String(n).padStart(2, "0");
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

/** What the status bar says of status sync. */
export function syncLook(h: SyncHealth): SyncLook {
  if (h.state === "disabled") return { state: "off", text: "Status sync is off (Settings → Status sync)." };
  if (h.state === "team") {
    if (h.last_error) return { state: "warning", text: `Status sync and billing: ${h.last_error}.` };
    if (h.serve) return { state: "ok", text: `Status sync and billing: by the team's vmdesk serve (${h.serve}).` };
    return { state: "starting", text: "Status sync and billing: by the team's vmdesk serve, for every desk." };
  }
  const exit = h.last_exit ? `${h.last_exit}${h.last_exit_at ? " at " + clock(h.last_exit_at) : ""}` : "";
  if (h.state === "down") {
    if (!h.last_exit) {
      return h.last_error
        ? { state: "down", text: `Status sync: ${h.last_error}${h.retry_at ? `; trying again at ${clock(h.retry_at)}` : ""}.` }
        : { state: "starting", text: "Status sync is starting…" };
    }
    return {
      state: "down",
      text: `Status sync stopped (${exit}); VM states and metered billing are not followed until it is back` +
        (h.retry_at ? `, at ${clock(h.retry_at)}.` : "."),
    };
  }
  const parts: string[] = [];
  let state: SyncLook["state"] = "ok";
  if (h.last_pass_at) {
    parts.push(`Status sync: last pass ${clock(h.last_pass_at)}`);
  } else {
    state = "starting";
    parts.push("Status sync started; first pass under way");
  }
  if (h.last_error) {
    state = "warning";
    parts.push(`last pass failed: ${h.last_error}`);
  }
  if (h.unreachable.length > 0) {
    state = "warning";
    parts.push(`unreachable: ${h.unreachable.join(", ")}`);
  }
  if (h.restarts > 0) {
    parts.push(`restarted ${h.restarts}× (last stop: ${exit || "unknown"})`);
  }
  return { state, text: parts.join(" · ") };
}

/** The worst status among checks (what a summary line shows). */
export function worst(checks: Check[]): "ok" | "warning" | "error" {
  if (checks.some((c) => c.status === "error")) return "error";
  if (checks.some((c) => c.status === "warning")) return "warning";
  return "ok";
}
