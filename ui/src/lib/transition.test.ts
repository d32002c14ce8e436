import { describe, expect, it } from "vitest";
import { vm } from "./components/fixtures";
import { forceOffAt, inTransition, secondsLeft, sessionNext, vmNext } from "./transition";
import type { Session } from "../bindings/Session";

const now = new Date("2026-01-01T10:00:00.000Z");

describe("transitions", () => {
  it("counts down from the backend's deadline", () => {
    const v = vm("w1", { status: "STOPPING", metadata: { force_off_at: "2026-01-01T10:00:45.000Z" } });
    expect(forceOffAt(v)?.toISOString()).toBe("2026-01-01T10:00:45.000Z");
    expect(vmNext(v, now)).toBe("Shutting down: forcing off in 45 s if the guest does not stop");
    expect(vmNext(v, new Date("2026-01-01T10:00:44.200Z"))).toContain("in 1 s");
    expect(vmNext(v, new Date("2026-01-01T10:01:00.000Z"))).toBe("Shutting down: forcing off now");
    expect(inTransition(v)).toBe(true);
  });

  it("says nothing of a settled VM, and copes with no deadline", () => {
    expect(vmNext(vm("w1", { status: "RUNNING" }), now)).toBe("");
    expect(inTransition(vm("w1", { status: "RUNNING" }))).toBe(false);
    expect(vmNext(vm("w1", { status: "STOPPING", metadata: { force_off_at: "nonsense" } }), now)).toBe("Shutting down…");
    expect(secondsLeft(new Date(0), now)).toBe(0);
  });

  it("tells what a closing session waits for", () => {
    const s = { status: "TERMINATING" } as Session;
    const v = vm("p1", { status: "STOPPING", metadata: { force_off_at: "2026-01-01T10:00:05.000Z" } });
    expect(sessionNext(s, v, now)).toBe("Closing: forcing the guest off in 5 s");
    expect(sessionNext(s, null, now)).toBe("Closing: the guest is being shut down…");
    expect(sessionNext({ status: "ACTIVE" } as Session, v, now)).toBe("");
  });
});
