import { describe, expect, it } from "vitest";
import { backoff, clipboardMode, ctrlAltF, failureMessage, fitMode, KEY, MAX_ATTEMPTS, offMessage, typeable } from "./consoles";

describe("backoff", () => {
  it("doubles from half a second and stops at eight", () => {
    expect([1, 2, 3, 4, 5, 6].map(backoff)).toEqual([500, 1000, 2000, 4000, 8000, 8000]);
  });
  it("gives up after a few attempts", () => {
    expect(MAX_ATTEMPTS).toBeGreaterThan(1);
    expect(MAX_ATTEMPTS).toBeLessThan(10);
  });
});

describe("ctrlAltF", () => {
  it("holds Ctrl and Alt and presses the function key", () => {
    expect(ctrlAltF(1)).toEqual([KEY.ctrl, KEY.alt, 0xffbe]);
    expect(ctrlAltF(12)).toEqual([KEY.ctrl, KEY.alt, 0xffc9]);
  });
  it("refuses keys that do not exist", () => {
    expect(() => ctrlAltF(13)).toThrow(RangeError);
  });
});

describe("typeable", () => {
  it("types ASCII, newlines and tabs and counts the rest", () => {
    const { keys, skipped } = typeable("ls -l\r\n\té✓");
    expect(keys).toEqual([[0x6c], [0x73], [0x20], [0x2d], [0x6c], [KEY.ret], [KEY.tab], [0xe9]]);
    expect(skipped).toBe(1);
  });
  it("holds Shift for what a US keyboard types with Shift", () => {
    // Without it QEMU typed "Hello, World! a@b.c" as "hello, world1 a2b.c".
    const { keys } = typeable("Hi! a@b (x)");
    expect(keys).toEqual([
      [KEY.shift, 0x48], [0x69], [KEY.shift, 0x21], [0x20], [0x61], [KEY.shift, 0x40], [0x62], [0x20],
      [KEY.shift, 0x28], [0x78], [KEY.shift, 0x29],
    ]);
  });
});

describe("the toolbar's modes", () => {
  it("says whether the clipboard is shared or typed", () => {
    expect(clipboardMode(true).label).toBe("Clipboard shared");
    expect(clipboardMode(false).label).toBe("Clipboard typed");
    expect(clipboardMode(false).title).toContain("no clipboard agent");
  });
  it("says whether the resolution follows or the picture scales", () => {
    expect(fitMode(true, true)).toBe("Resolution follows the window");
    expect(fitMode(false, true)).toBe("Scaled to fit");
    expect(fitMode(false, false)).toBe("Real size (1:1)");
  });
});

describe("failureMessage", () => {
  it("says plainly that a team store has no consoles yet", () => {
    expect(failureMessage("not_on_team_store", "a console is not available on a team store yet")).toBe(
      "Consoles are not available on a team store yet: this desk cannot show a team VM's screen.",
    );
  });
  it("names each failure", () => {
    expect(failureMessage("console_unavailable", 'VM "a" is STOPPED, not RUNNING')).toContain("STOPPED");
    expect(failureMessage("console_refused", "the token has expired")).toContain("expired");
    expect(failureMessage("disconnected")).toContain("bridge is gone");
  });
});

describe("a tab whose VM is off", () => {
  it("says so in plain words and points to Start", () => {
    expect(offMessage("web-1")).toBe("web-1 is not running, so there is no screen to show. Start it to see its console.");
  });
});
