import { describe, expect, it } from "vitest";
import type { SyncHealth } from "../bindings/SyncHealth";
import { clock, syncLook, worst } from "./health";

function health(over: Partial<SyncHealth>): SyncHealth {
  return {
    state: "running", pid: 42, last_pass_at: null, last_full_pass_at: null, last_error: null,
    unreachable: [], restarts: 0, last_exit: null, last_exit_at: null, retry_at: null, serve: null, ...over,
  };
}

const T = "2026-01-01T10:00:05.000Z";

describe("syncLook", () => {
  it("is ok after a pass", () => {
    const l = syncLook(health({ last_pass_at: T }));
    expect(l).toEqual({ state: "ok", text: `Status sync: last pass ${clock(T)}` });
  });

  it("says it starts before the first pass", () => {
    expect(syncLook(health({})).state).toBe("starting");
  });

  it("shows a stopped child as down, with how it ended", () => {
    const l = syncLook(health({ state: "down", pid: null, last_exit: "killed by signal 9", last_exit_at: T }));
    expect(l.state).toBe("down");
    expect(l.text).toContain("killed by signal 9");
  });

  it("keeps the gap in view after a restart", () => {
    const l = syncLook(health({ last_pass_at: T, restarts: 1, last_exit: "killed by signal 9", last_exit_at: T }));
    expect(l.text).toContain("restarted 1× (last stop: killed by signal 9 at");
  });

  it("warns of unreachable hosts", () => {
    const l = syncLook(health({ last_pass_at: T, unreachable: ["far"] }));
    expect(l).toMatchObject({ state: "warning" });
    expect(l.text).toContain("unreachable: far");
  });

  it("warns of a failed pass", () => {
    expect(syncLook(health({ last_pass_at: T, last_error: "database is busy" })).state).toBe("warning");
  });

  it("says when it is turned off", () => {
    expect(syncLook(health({ state: "disabled", pid: null })).state).toBe("off");
  });

  it("names the team's serve that leads on a team store", () => {
    const look = syncLook(health({ state: "team", pid: null, serve: "lab1, pid 42, leading since 2026-11-30T08:00:00.000Z" }));
    expect(look.state).toBe("ok");
    expect(look.text).toContain("vmdesk serve (lab1, pid 42");
  });

  it("warns when no serve leads on a team store", () => {
    const look = syncLook(health({ state: "team", pid: null, last_error: "no vmdesk serve runs for this team store" }));
    expect(look.state).toBe("warning");
    expect(look.text).toContain("no vmdesk serve runs");
  });
});

describe("worst", () => {
  it("is the most severe status", () => {
    expect(worst([{ check: "a", status: "ok", message: "" }, { check: "b", status: "warning", message: "" }])).toBe("warning");
    expect(worst([])).toBe("ok");
  });
});
