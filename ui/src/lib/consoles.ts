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
  shift: 0xffe1,
} as const;

/** The keysyms of Ctrl-Alt-F`n` (1 to 12). */
export function ctrlAltF(n: number): number[] {
  if (!Number.isInteger(n) || n < 1 || n > 12) throw new RangeError(`no key F${n}`);
  return [KEY.ctrl, KEY.alt, KEY.f1 + n - 1];
}

/** Characters a US keyboard types with Shift (their keysyms need it held). */
const SHIFTED = new Set('~!@#$%^&*()_+{}|:"<>?ABCDEFGHIJKLMNOPQRSTUVWXYZ');

/**
 * The keystrokes that type `text` into the guest when it has no clipboard
 * agent: each a list of keysyms pressed together. Characters that a US
 * keyboard types with Shift get Shift_L held (QEMU adds no Shift to a bare
 * keysym); other Latin-1 characters are their own keysym; newlines are
 * Return, tabs Tab; other characters are left out (and counted).
 */
export function typeable(text: string): { keys: number[][]; skipped: number } {
  const keys: number[][] = [];
  let skipped = 0;
  for (const ch of text) {
    const c = ch.codePointAt(0) ?? 0;
    if (ch === "\n") keys.push([KEY.ret]);
    else if (ch === "\t") keys.push([KEY.tab]);
    else if (ch === "\r") continue;
    else if (SHIFTED.has(ch)) keys.push([KEY.shift, c]);
    else if ((c >= 0x20 && c <= 0x7e) || (c >= 0xa0 && c <= 0xff)) keys.push([c]);
    else skipped++;
  }
  return { keys, skipped };
}

/** How the console's clipboard works: shared through the guest's agent, or typed. */
export function clipboardMode(agent: boolean): { label: string; title: string } {
  return agent
    ? {
        label: "Clipboard shared",
        title: "The VM's clipboard agent shares text both ways: copy in the VM and paste on the desktop, and the reverse.",
      }
    : {
        label: "Clipboard typed",
        title: "The VM has no clipboard agent: Paste clipboard types the text as keystrokes, and text copied in the VM stays there.",
      };
}

/** How the guest's screen fits the window: its resolution follows (seen), or the picture is scaled. */
export function fitMode(following: boolean, scale: boolean): string {
  if (following) return "Resolution follows the window";
  return scale ? "Scaled to fit" : "Real size (1:1)";
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
