import { describe, expect, it } from "vitest";
import { limitsText } from "./limits";

describe("a project's limits in words", () => {
  it("says nothing without limits", () => {
    expect(limitsText({ max_session_minutes: null, idle_minutes: null, idle_cpu_percent: 5, weekly_hours: null })).toBe("");
    expect(limitsText(undefined)).toBe("");
  });

  it("names each limit set", () => {
    expect(limitsText({ max_session_minutes: 120, idle_minutes: 30, idle_cpu_percent: 5, weekly_hours: 10 })).toBe(
      "Sessions end after 2 h · closed when idle 30 min (no console, no SSH, CPU under 5 %) · 10 h of sessions a week each",
    );
    expect(limitsText({ max_session_minutes: 90, idle_minutes: null, idle_cpu_percent: 5, weekly_hours: null })).toBe(
      "Sessions end after 1 h 30 min",
    );
    expect(limitsText({ max_session_minutes: null, idle_minutes: null, idle_cpu_percent: 5, weekly_hours: 3 })).toBe(
      "3 h of sessions a week each",
    );
  });
});
