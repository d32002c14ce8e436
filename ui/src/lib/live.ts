// Data that follows the backend: fetched once, then again whenever the
// backend reports a change (`changed`). Never on a timer.
import { api, toApiError, type ApiError } from "./api";

/** Runs `load` now and on every change until the returned function is called. */
export function follow(load: () => Promise<void>, onerror: (e: ApiError) => void): () => void {
  let stopped = false;
  let running = false;
  let again = false;
  const run = async () => {
    // Changes that arrive during a load are folded into one more load.
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        await load();
      } while (again && !stopped);
    } catch (e) {
      if (!stopped) onerror(toApiError(e));
    } finally {
      running = false;
    }
  };
  run();
  const off = api.onChange(() => {
    if (!stopped) run();
  });
  return () => {
    stopped = true;
    off.then((f) => f());
  };
}

/** An action that sets an element's height in pixels (through the CSSOM, which the CSP allows). */
export function height(node: HTMLElement, px: number) {
  node.style.height = `${px}px`;
  return {
    update(next: number) {
      node.style.height = `${next}px`;
    },
  };
}

/** "1,234"-style number. */
export function fmt(n: number): string {
  return n.toLocaleString("en-US");
}
