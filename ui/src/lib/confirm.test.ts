// @vitest-environment jsdom
// The confirmation dialog: labelled, modal, focus on Cancel and kept inside,
// Escape and Cancel say no, the confirming button says yes.
import { afterEach, describe, expect, it, vi } from "vitest";
import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/svelte";
import Host from "./components/ConfirmHost.svelte";

afterEach(() => cleanup());

async function open() {
  const onanswer = vi.fn();
  render(Host, { onanswer });
  await fireEvent.click(screen.getByText("Destroy"));
  const dialog = await screen.findByRole("alertdialog", { name: "Destroy w1?" });
  return { onanswer, dialog };
}

describe("the confirmation dialog", () => {
  it("is a labelled modal with the focus on Cancel, kept inside by Tab", async () => {
    const { dialog } = await open();
    expect(dialog.getAttribute("aria-modal")).toBe("true");
    expect(dialog.textContent).toContain("The disk is deleted.");
    await waitFor(() => expect(document.activeElement?.textContent).toBe("Cancel"));
    await fireEvent.keyDown(document.activeElement!, { key: "Tab" });
    expect(document.activeElement?.textContent).toBe("Destroy w1");
    await fireEvent.keyDown(document.activeElement!, { key: "Tab" });
    expect(document.activeElement?.textContent).toBe("Cancel");
    await fireEvent.keyDown(document.activeElement!, { key: "Tab", shiftKey: true });
    expect(document.activeElement?.textContent).toBe("Destroy w1");
  });

  it("says no on Escape without letting the key reach the window", async () => {
    const { onanswer, dialog } = await open();
    const seen = vi.fn();
    window.addEventListener("keydown", seen);
    await fireEvent.keyDown(dialog, { key: "Escape" });
    window.removeEventListener("keydown", seen);
    await waitFor(() => expect(onanswer).toHaveBeenCalledWith(false));
    expect(seen).not.toHaveBeenCalled();
    expect(screen.queryByRole("alertdialog")).toBeNull();
  });

  it("says no on Cancel and yes on the confirming button", async () => {
    let { onanswer } = await open();
    await fireEvent.click(screen.getByText("Cancel"));
    await waitFor(() => expect(onanswer).toHaveBeenCalledWith(false));
    cleanup();
    ({ onanswer } = await open());
    await fireEvent.click(screen.getByText("Destroy w1"));
    await waitFor(() => expect(onanswer).toHaveBeenCalledWith(true));
  });
});
