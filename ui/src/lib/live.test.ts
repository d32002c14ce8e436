import { describe, expect, it, vi } from "vitest";

const listeners: (() => void)[] = [];
vi.mock("./api", () => ({
  api: { onChange: (f: () => void) => { listeners.push(f); return Promise.resolve(() => listeners.splice(listeners.indexOf(f), 1)); } },
  toApiError: (e: unknown) => ({ code: "internal", message: String(e) }),
}));

import { fmt, follow } from "./live";

describe("follow", () => {
  it("loads now, again on each change, and not after it stops", async () => {
    let loads = 0;
    const stop = follow(async () => { loads++; }, () => {});
    await Promise.resolve();
    expect(loads).toBe(1);
    listeners[0]();
    await new Promise((r) => setTimeout(r, 0));
    expect(loads).toBe(2);
    stop();
    await new Promise((r) => setTimeout(r, 0));
    expect(listeners).toHaveLength(0);
    expect(loads).toBe(2);
  });

  it("folds changes during a load into one more load, and reports errors", async () => {
    let loads = 0;
    let release: () => void = () => {};
    const errors: string[] = [];
    const stop = follow(
      () => { loads++; if (loads === 3) return Promise.reject("boom"); return new Promise<void>((r) => (release = r)); },
      (e) => errors.push(e.message),
    );
    const f = listeners[listeners.length - 1];
    f(); f(); f();
    release();
    await new Promise((r) => setTimeout(r, 0));
    release();
    await new Promise((r) => setTimeout(r, 0));
    expect(loads).toBe(2);
    f();
    await new Promise((r) => setTimeout(r, 0));
    expect(errors).toEqual(["boom"]);
    stop();
  });

  it("writes numbers with thousands separators", () => {
    expect(fmt(1234567)).toBe("1,234,567");
  });
});
