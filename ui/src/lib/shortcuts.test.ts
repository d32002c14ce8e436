import { describe, expect, it } from "vitest";
import { HELP, isView, shortcut, VIEWS, type Key } from "./shortcuts";

const k = (key: string, over: Partial<Key> = {}): Key => ({ key, altKey: false, ctrlKey: false, metaKey: false, typing: false, ...over });

describe("shortcuts", () => {
  it("Alt+digit switches views in the nav's order", () => {
    expect(shortcut(k("1", { altKey: true }))).toEqual({ kind: "view", view: "dashboard" });
    expect(shortcut(k("2", { altKey: true }))).toEqual({ kind: "view", view: "vms" });
    expect(shortcut(k("8", { altKey: true }))).toEqual({ kind: "view", view: "settings" });
    expect(shortcut(k("9", { altKey: true }))).toEqual({ kind: "view", view: "consoles" });
    expect(shortcut(k("0", { altKey: true }))).toEqual({ kind: "view", view: "hosts" });
  });

  it("Ctrl shortcuts work even while typing", () => {
    expect(shortcut(k("n", { ctrlKey: true, typing: true }))).toEqual({ kind: "new-vm" });
    expect(shortcut(k("F", { ctrlKey: true }))).toEqual({ kind: "search" });
    expect(shortcut(k("q", { metaKey: true }))).toEqual({ kind: "quit" });
    expect(shortcut(k("x", { ctrlKey: true }))).toBeNull();
  });

  it("plain keys are shortcuts only outside text fields", () => {
    expect(shortcut(k("/"))).toEqual({ kind: "search" });
    expect(shortcut(k("?"))).toEqual({ kind: "help" });
    expect(shortcut(k("/", { typing: true }))).toBeNull();
    expect(shortcut(k("?", { typing: true }))).toBeNull();
    expect(shortcut(k("Escape", { typing: true }))).toEqual({ kind: "escape" });
    expect(shortcut(k("a"))).toBeNull();
  });

  it("knows its views and lists every shortcut", () => {
    expect(isView("vms")).toBe(true);
    expect(isView("nope")).toBe(false);
    expect(isView(null)).toBe(false);
    expect(HELP).toHaveLength(VIEWS.length + 5);
  });
});
