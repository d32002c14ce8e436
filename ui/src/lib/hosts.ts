// How the Hosts table words a host's figures.
import type { ConsolePath } from "../bindings/ConsolePath";

/** Megabytes, shown in GB past 10 GB; "–" when the host does not tell. */
export function mbText(mb: number | null): string {
  if (mb === null) return "–";
  if (mb >= 10240) return `${(mb / 1024).toFixed(1)} GB`;
  return `${mb} MB`;
}

/** What each console path means, for the Console column's tooltip. */
export function consoleTitle(c: ConsolePath): string {
  switch (c) {
    case "local":
      return "The local daemon hands vmdesk the display's socket.";
    case "ssh":
      return "An SSH channel to the display's socket on the host (your keys and known_hosts).";
    case "unavailable":
      return "Consoles need a local or qemu+ssh:// host: this transport cannot reach a display.";
    case "none":
      return "The cloud's own console.";
  }
}
