import { describe, expect, it } from "vitest";
import { consoleTitle, mbText } from "./hosts";

describe("the Hosts table", () => {
  it("words sizes in MB, and in GB past 10 GB", () => {
    expect(mbText(null)).toBe("–");
    expect(mbText(900)).toBe("900 MB");
    expect(mbText(24000)).toBe("23.4 GB");
  });
  it("says how each console path reaches a display", () => {
    expect(consoleTitle("ssh")).toMatch(/SSH channel/);
    expect(consoleTitle("unavailable")).toMatch(/qemu\+ssh/);
  });
});
