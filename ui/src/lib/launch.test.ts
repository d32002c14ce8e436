import { describe, expect, it } from "vitest";
import { defaultOs, disabledReason, hourlyText, osHint, placementText } from "./launch";
import type { OsEntry } from "../bindings/OsEntry";

const blank: OsEntry = { name: "blank", kind: "builtin", bytes: 0, min_ram_mb: 64, min_disk_gb: 1, boots: false };
const tiny: OsEntry = { name: "tiny-linux", kind: "image", bytes: 9, min_ram_mb: 128, min_disk_gb: 1, boots: true };
const other: OsEntry = { name: "alpine", kind: "image", bytes: 9, min_ram_mb: 256, min_disk_gb: 2, boots: true };

describe("the launch form's defaults", () => {
  it("prefers tiny-linux, then an OS that boots, then whatever there is", () => {
    expect(defaultOs([blank, other, tiny])?.name).toBe("tiny-linux");
    expect(defaultOs([blank, other])?.name).toBe("alpine");
    expect(defaultOs([blank])?.name).toBe("blank");
    expect(defaultOs([])).toBeNull();
  });

  it("says blank boots nothing, and what an image needs", () => {
    expect(osHint(blank)).toMatch(/firmware only/);
    expect(osHint(tiny)).toBe("Boots to a shell; needs at least 128 MB of memory and 1 GB of disk.");
  });
});

describe("the hourly running cost", () => {
  it("reads as credits an hour", () => {
    expect(hourlyText(3400)).toBe("3.4 credits an hour while it runs");
    expect(hourlyText(1000)).toBe("1 credit an hour while it runs");
    expect(hourlyText(500)).toBe("0.5 credits an hour while it runs");
    expect(hourlyText(0)).toBe("0 credits an hour while it runs");
  });
});

describe("why Create is disabled", () => {
  const ok = { busy: false, name: "web-1", nameError: null, sizeError: null, cost: 8, balance: 50 };
  it("is enabled when all is well", () => expect(disabledReason(ok)).toBeNull());
  it("names the first problem", () => {
    expect(disabledReason({ ...ok, name: " " })).toBe("Give the VM a name.");
    expect(disabledReason({ ...ok, nameError: "bad" })).toBe("Fix the name first.");
    expect(disabledReason({ ...ok, sizeError: "too small" })).toBe("Fix the size first.");
    expect(disabledReason({ ...ok, cost: 68 })).toMatch(/costs 68 credits and you have 50/);
    expect(disabledReason({ ...ok, roomError: "no host has room" })).toMatch(/No host has room/);
  });
});

describe("where it runs", () => {
  it("says the host and its free memory, and why it was chosen", () => {
    expect(placementText({ host: "lab-2", free_memory_mb: 8960 }, true)).toBe(
      "Runs on lab-2: 8,960 MB of memory free (the host with the most free memory)",
    );
    expect(placementText({ host: "local", free_memory_mb: null }, false)).toBe("On local");
  });
});
