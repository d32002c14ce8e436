// Disabled buttons stay readable: their text against their background has a
// contrast of at least 4.5:1 (WCAG AA), in the light and the dark scheme.
import { describe, expect, it } from "vitest";
// Node's fs, read as plain text (this project has no @types/node; Vitest gives CSS imports no text).
const fs = (await import("node:fs" as string)) as { readFileSync: (path: string, encoding: string) => string };
const css = fs.readFileSync(new URL("../app.css", import.meta.url).pathname, "utf8");

function luminance(hex: string): number {
  const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255);
  const lin = (c: number) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
  return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
}

function contrast(a: string, b: string): number {
  const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p);
  return (x + 0.05) / (y + 0.05);
}

describe("disabled buttons", () => {
  it("are readable in every scheme", () => {
    const pairs = [...css.matchAll(/--disabled-bg: (#[0-9a-f]{6}); --disabled-fg: (#[0-9a-f]{6})/g)];
    expect(pairs.length).toBeGreaterThanOrEqual(2);
    for (const [, bg, fg] of pairs) expect(contrast(bg, fg)).toBeGreaterThanOrEqual(4.5);
    expect(css).toMatch(/button:disabled \{ background: var\(--disabled-bg\); color: var\(--disabled-fg\)/);
    expect(css).not.toMatch(/button:disabled \{[^}]*opacity/);
  });
});
