// Events as sentences for a person: "ann's session on lab-3 ended: the VM
// was found off". A sentence is a list of parts: text, and the VM or session
// it is about (the window draws those as links).
import type { Event } from "../bindings/Event";

export type Part = string | { vm: string } | { session: number };

/** The words of a sentence, links as their names. */
export function plain(parts: readonly Part[]): string {
  return parts.map((p) => (typeof p === "string" ? p : "vm" in p ? p.vm : `session ${p.session}`)).join("");
}

/** The system's own name as an actor. */
const SYSTEM = "vmdesk";

/** Console opened and closed: routine, folded away by default. */
export function isRoutine(e: Event): boolean {
  return e.action === "console.open" || e.action === "console.close";
}

type Details = Record<string, unknown>;

function str(d: Details, k: string): string | null {
  const v = d[k];
  return typeof v === "string" && v !== "" ? v : typeof v === "number" ? String(v) : null;
}

/** A core reason made to read after a colon: no trailing full stop, first letter small. */
function reason(r: string | null): string {
  if (!r) return "";
  const t = r.trim().replace(/\.$/, "");
  return ": " + (/^[A-Z][a-z]/.test(t) ? t[0].toLowerCase() + t.slice(1) : t);
}

/** Better words for the core's reasons. */
function why(r: string | null): string {
  if (r === "the VM stopped under the session") return ": the VM was found off";
  return reason(r);
}

/** "1 credit", "34 credits", "some credits". */
function credits(amount: string | null): string {
  if (amount === null) return "some credits";
  const n = Math.abs(Number(amount));
  return `${n} credit${n === 1 ? "" : "s"}`;
}

function who(actor: string): string {
  return actor === SYSTEM ? "vmdesk" : actor;
}

function possessive(name: string): string {
  return name.endsWith("s") ? name + "'" : name + "'s";
}

const VM_VERBS: Record<string, string> = {
  start: "started",
  stop: "stopped",
  restart: "restarted",
  destroy: "destroyed",
};

/** Where an address was learned, as the end of a sentence. */
const LEARNED: Record<string, string> = {
  lease: " (from its DHCP lease)",
  agent: " (from its guest agent)",
  arp: " (from the host's ARP table)",
  azure: " (from its Azure network interface)",
};

const VM_TRIED: Record<string, string> = {
  start: "start",
  stop: "stop",
  restart: "restart",
  destroy: "destroy",
};

/**
 * The sentence of an event. `vmName` gives a VM's name from its id when the
 * details do not carry it.
 */
export function sentence(e: Event, vmName: (id: number) => string | undefined = () => undefined): Part[] {
  const d: Details = e.details && typeof e.details === "object" && !Array.isArray(e.details) ? (e.details as Details) : {};
  const name = str(d, "vm") ?? (e.vm_id !== null ? vmName(e.vm_id) ?? null : null);
  // A link only to a VM that exists (a refused action may name one that does not).
  const vm: Part = name ? (e.vm_id !== null ? { vm: name } : name) : e.vm_id !== null ? `VM #${e.vm_id}` : "a VM";
  const session: Part = e.session_id !== null ? { session: e.session_id } : "a session";
  const actor = who(e.actor);
  const user = str(d, "user") ?? e.actor;
  const [kind, verb, sub] = e.action.split(".");

  if (kind === "session") {
    const theirs = possessive(who(user));
    switch (verb) {
      case "open": {
        const project = str(d, "project");
        return [`${actor} asked for a session`, ...(project ? [` in ${project}`] : []), ": ", session, " on ", vm];
      }
      case "starting":
        return [possessive(actor) + " ", session, " is starting ", vm];
      case "active":
        return [possessive(actor) + " ", session, " on ", vm, " is ready"];
      case "failed":
        return [possessive(actor) + " ", session, " on ", vm, " failed" + reason(str(d, "reason"))];
      case "close":
        return [`${actor} closed `, session, " on ", vm, ": the guest is shutting down"];
      case "cancel":
        return [`${actor} cancelled `, session, " before ", vm, " started"];
      case "ended":
        return [theirs + " ", session, " on ", vm, " ended" + (d.forced_off === true ? ": the guest was forced off" : "")];
      case "terminated":
        return [theirs + " ", session, " on ", vm, " ended" + why(str(d, "reason"))];
      case "close_failed":
        return ["Closing ", session, " on ", vm, " failed" + reason(str(d, "reason"))];
      case "limit_warning": {
        const at = (str(d, "closes_at") ?? "").slice(11, 16) || "soon";
        const what = str(d, "rule") === "idle" ? "it has been idle" : "it reaches the project's maximum session length";
        return [theirs + " ", session, " on ", vm, ` closes at ${at} UTC: ${what}`];
      }
      case "limit_reached":
        return [theirs + " ", session, " on ", vm, str(d, "rule") === "idle" ? " was closed: idle too long" : " was closed: it reached the project's maximum session length"];
    }
  }
  if (kind === "vm" && verb === "idle_warning") {
    const at = (str(d, "stops_at") ?? "").slice(11, 16) || "soon";
    return [vm, ` stops at ${at} UTC: idle for ${str(d, "idle_minutes") ?? "?"} min, as its owner chose`];
  }
  if (kind === "vm" && verb === "idle_stop") {
    return ["vmdesk stopped ", vm, `: idle for ${str(d, "idle_minutes") ?? "?"} min, as its owner chose`];
  }
  if (kind === "vm" && verb === "orphan_stop") {
    const minutes = Math.round(Number(str(d, "grace_seconds") ?? "600") / 60);
    return ["vmdesk stopped the pool VM ", vm, `: it ran with no session for ${minutes} min (billed to nobody)`];
  }
  if (kind === "vm") {
    if (verb === "create" && sub === "refused") return [`${actor} could not create `, vm, reason(str(d, "reason"))];
    if (sub === "failed" && VM_TRIED[verb]) return [`${actor} could not ${VM_TRIED[verb]} `, vm, reason(str(d, "reason"))];
    if (VM_VERBS[verb]) return [`${actor} ${VM_VERBS[verb]} `, vm, d.forced_off === true ? " (the guest was forced off)" : ""];
    switch (verb) {
      case "create": {
        const cost = str(d, "cost");
        return [`${actor} created `, vm, cost ? ` for ${cost} credits` : ""];
      }
      case "created":
        return [vm, " is ready on its host"];
      case "create_failed":
        return ["Creating ", vm, " failed" + reason(str(d, "reason")) + (d.refunded === false ? " (not refunded)" : "")];
      case "meta":
        return [`${actor} changed the metadata of `, vm];
      case "status": {
        const status = str(d, "status");
        return [`${actor} set `, vm, status ? ` to ${status}` : "'s state"];
      }
      case "add":
        return [`${actor} added `, vm, " to a pool"];
      case "add_failed":
        return ["Adding ", vm, " failed" + reason(str(d, "reason"))];
      case "import":
        return [`${actor} imported `, vm];
      case "address": {
        const now = str(d, "now");
        const pub = str(d, "public_ip");
        const from = LEARNED[str(d, "learned") ?? ""] ?? "";
        if (!now) return [vm, " has no address now"];
        return [vm, ` has the address ${now}` + (pub ? ` (public ${pub})` : "") + from];
      }
    }
  }
  if (kind === "console") {
    if (verb === "open") return [`${actor} opened the console of `, vm];
    if (verb === "close") return ["The console of ", vm, " closed" + reason(str(d, "reason"))];
  }
  if (kind === "sync" && verb === "status") {
    const now = str(d, "now");
    return ["Status sync found ", vm, now ? ` ${now.toLowerCase().replace(/_/g, " ")}` : " changed", reason(str(d, "reason") ?? str(d, "error"))];
  }
  if (kind === "credits") {
    const amount = str(d, "amount");
    switch (verb) {
      case "charge": {
        const n = Number(amount);
        if (n > 0) return [`${actor} granted ${credits(amount)} to ${who(user)}` + reason(str(d, "reason"))];
        return [`${who(user)} was charged ${amount ? Math.abs(n) + " credits" : "credits"}`, ...(name ? [" for ", vm] : [])];
      }
      case "grant":
        return [`${actor} granted ${credits(amount)} to ${who(user)}` + reason(str(d, "reason"))];
      case "runtime":
        return [`${possessive(who(user))} credits: ${amount ?? "some"} for running `, vm];
      case "low":
        return [`${possessive(who(user))} credits are running low (${str(d, "balance") ?? "?"} left) while `, vm, " runs"];
      case "exhausted":
        return [`${possessive(who(user))} credits ran out: `, vm, " was stopped"];
      case "adjust": {
        const n = Number(amount);
        return [`${actor} adjusted ${possessive(who(user))} credits by ${n > 0 ? "+" : ""}${amount ?? "?"}` + reason(str(d, "reason"))];
      }
      case "refund":
        return [`${actor} refunded ${credits(amount)} to ${who(user)} for `, vm, reason(str(d, "reason"))];
    }
  }
  if (kind === "recovery" && (verb === "quarantine" || verb === "purge")) {
    const machine = `machine ${str(d, "machine") ?? "?"} on ${str(d, "host") ?? "its host"}`;
    if (verb === "purge") return [`${actor} deleted the quarantined ${machine}`];
    const off = d.powered_off === false ? " (it could not be powered off)" : "";
    return [`vmdesk quarantined the ${machine}: it has no VM here, so it is stopped and kept until an admin purges it${off}`];
  }
  if (kind === "user" && verb === "add") return [`${actor} added the user ${str(d, "name") ?? str(d, "user") ?? ""}`.trimEnd()];
  if (kind === "host" && verb === "add") return [`${actor} added the host ${str(d, "name") ?? str(d, "host") ?? ""}`.trimEnd()];
  if (kind === "user" && verb === "role") return [`${actor} made ${str(d, "user") ?? "a user"} ${(str(d, "to") ?? str(d, "role")) === "admin" ? "an admin" : "a " + (str(d, "to") ?? str(d, "role") ?? "user")}`];
  if (kind === "workspace" && verb === "create") return [`${actor} created the workspace ${str(d, "workspace") ?? ""}`.trimEnd()];
  if (kind === "os" && verb === "import") return [`${actor} added ${str(d, "os") ?? str(d, "name") ?? "an OS image"} to the OS catalog`];
  if (kind === "project" && verb === "limits") return [`${actor} changed the cost controls of project ${str(d, "project") ?? ""}`.trimEnd()];
  if (kind === "project" && verb === "create") return [`${actor} created the project ${str(d, "name") ?? str(d, "project") ?? ""}`.trimEnd()];
  // Anything else: who did what, in the core's words.
  const words = e.action.replace(/[._]/g, " ");
  return [`${actor}: ${words}`, ...(e.vm_id !== null || name ? [" (", vm, ")"] : [])];
}
