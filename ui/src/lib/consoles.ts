// Pure logic of the console view, tested by Vitest.

/** Reconnection attempts before the view gives up. */
export const MAX_ATTEMPTS = 5;

/** Milliseconds to wait before reconnection attempt `n` (1-based): 0.5 s doubling, at most 8 s. */
export function backoff(n: number): number {
  return Math.min(500 * 2 ** Math.max(0, n - 1), 8000);
}

/** X11 keysyms the send-keys menu uses. */
export const KEY = {
  ctrl: 0xffe3,
  alt: 0xffe9,
  del: 0xffff,
  f1: 0xffbe,
  ret: 0xff0d,
  tab: 0xff09,
} as const;

/** The keysyms of Ctrl-Alt-F`n` (1 to 12). */
export function ctrlAltF(n: number): number[] {
  if (!Number.isInteger(n) || n < 1 || n > 12) throw new RangeError(`no key F${n}`);
  return [KEY.ctrl, KEY.alt, KEY.f1 + n - 1];
}

/**
 * The keysyms that type `text` into the guest: Latin-1 characters are their
 * own keysym, newlines are Return, tabs Tab; other characters are left out
 * (and counted).
 */
export function typeable(text: string): { keys: number[]; skipped: number } {
  const keys: number[] = [];
  let skipped = 0;
  for (const ch of text) {
    const c = ch.codePointAt(0) ?? 0;
    if (ch === "\n") keys.push(KEY.ret);
    else if (ch === "\t") keys.push(KEY.tab);
    else if (ch === "\r") continue;
    else if ((c >= 0x20 && c <= 0x7e) || (c >= 0xa0 && c <= 0xff)) keys.push(c);
    else skipped++;
  }
  return { keys, skipped };
}

/** What the user reads when a console fails, by the core's error code or the viewer's event. */
export function failureMessage(kind: string, detail = ""): string {
  switch (kind) {
    case "console_unavailable":
      return `The VM has no console now: ${detail || "it is not running"}.`;
    case "console_refused":
    case "securityfailure":
      return `The console refused the connection${detail ? ": " + detail : ""}.`;
    case "port_pool_exhausted":
      return "Every console port is in use; close a console and try again.";
    case "disconnected":
      return "The console bridge is gone (the VM stopped, or the link dropped).";
    case "not_on_team_store":
      return "Consoles are not available on a team store yet: this desk cannot show a team VM's screen.";
    default:
      return detail || "The console failed.";
  }
}

/** What a tab says when its VM is off (the tab offers Start beside it). */
export function offMessage(vm: string): string {
  return `${vm} is not running, so there is no screen to show. Start it to see its console.`;
}
