// Keyboard shortcuts of the window: which key does what. Pure; App.svelte
// turns the action into a view change or a focus.

/** The views, in the order of the navigation (Alt+1 is the first). */
// Consoles are a view of their own (Alt+9), not a strip above every view: an
// open console then never pushes another view down or takes its wheel, and it
// stays connected (kept mounted, hidden) while another view is shown.
// Hosts came last, on Alt+0, so that no older shortcut moved.
export const VIEWS = ["dashboard", "vms", "launch", "pools", "events", "credits", "admin", "settings", "consoles", "hosts"] as const;
export type View = (typeof VIEWS)[number];

export const VIEW_LABELS: Record<View, string> = {
  dashboard: "Dashboard",
  vms: "VMs",
  launch: "Launch",
  pools: "Pools & sessions",
  events: "Events",
  credits: "Credits",
  admin: "Admin",
  settings: "Settings",
  consoles: "Consoles",
  hosts: "Hosts",
};

/** The key that shows the i-th view with Alt: 1 to 9, then 0. */
export function viewKey(i: number): string {
  return i === 9 ? "0" : String(i + 1);
}

export type Action =
  | { kind: "view"; view: View }
  | { kind: "new-vm" }
  | { kind: "search" }
  | { kind: "escape" }
  | { kind: "help" }
  | { kind: "quit" };

/** The part of a KeyboardEvent the shortcuts look at. */
export interface Key {
  key: string;
  altKey: boolean;
  ctrlKey: boolean;
  metaKey: boolean;
  /** Whether the focus is in a text field (then plain keys are typing). */
  typing: boolean;
}

export function isView(v: string | null | undefined): v is View {
  return (VIEWS as readonly string[]).includes(v ?? "");
}

/** The action of a key press, or null. */
export function shortcut(k: Key): Action | null {
  const ctrl = k.ctrlKey || k.metaKey;
  if (k.altKey && !ctrl && /^[0-9]$/.test(k.key)) {
    const i = k.key === "0" ? 9 : Number(k.key) - 1;
    return i < VIEWS.length ? { kind: "view", view: VIEWS[i] } : null;
  }
  if (ctrl && !k.altKey) {
    switch (k.key.toLowerCase()) {
      case "n":
        return { kind: "new-vm" };
      case "f":
        return { kind: "search" };
      case "q":
        return { kind: "quit" };
    }
    return null;
  }
  if (k.key === "Escape") return { kind: "escape" };
  if (k.typing || k.altKey) return null;
  if (k.key === "/") return { kind: "search" };
  if (k.key === "?") return { kind: "help" };
  return null;
}

/** Shortcut help: [keys, what]. */
export const HELP: [string, string][] = [
  ...VIEWS.map((v, i): [string, string] => [`Alt+${viewKey(i)}`, VIEW_LABELS[v]]),
  ["Ctrl+N", "Launch a new VM"],
  ["/ or Ctrl+F", "Search the VMs"],
  ["Escape", "Close the detail or the error"],
  ["?", "This list"],
  ["Ctrl+Q", "Quit vmdesk"],
];
