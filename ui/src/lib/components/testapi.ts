// A stand-in for the backend in component tests: each command is a mock the
// test sets up; events can be fired by hand.
import { vi } from "vitest";

export const handlers: Record<string, (...args: never[]) => void> = {};

export function on(event: string, f: (...args: never[]) => void): Promise<() => void> {
  handlers[event] = f;
  return Promise.resolve(() => delete handlers[event]);
}

export const api = {
  quote: vi.fn(),
  price: vi.fn(),
  placement: vi.fn(async (_ram: number, _os: string, host: string | null) => ({ host: host ?? "local", free_memory_mb: 8000, free_disk_mb: 50000 })),
  hostOverview: vi.fn(async (): Promise<unknown[]> => []),
  validateVmName: vi.fn(async (_name: string): Promise<null> => null),
  validateName: vi.fn(async (_kind: string, _name: string): Promise<null> => null),
  osCatalog: vi.fn(async () => [
    { name: "blank", kind: "builtin", bytes: 0, min_ram_mb: 64, min_disk_gb: 1, boots: false },
    { name: "tiny-linux", kind: "image", bytes: 9, min_ram_mb: 128, min_disk_gb: 1, boots: true },
  ]),
  myVms: vi.fn(async () => []),
  createVm: vi.fn(),
  vmAction: vi.fn(),
  vmList: vi.fn(async () => []),
  vmChanges: vi.fn(async () => ({ vms: [], total: 0, cursor: "1" })),
  vmIdleStop: vi.fn(),
  events: vi.fn(async (): Promise<unknown[]> => []),
  users: vi.fn(async (): Promise<unknown[]> => []),
  ports: vi.fn(async () => ({ total: 900, allocated: 0, free: 900, utilization_percent: 0, health: "healthy", consoles: [] })),
  creditsGrant: vi.fn(),
  creditsAdjust: vi.fn(),
  creditsRefund: vi.fn(),
  adminRecover: vi.fn(async () => ({ summary: "Nothing to recover, nothing quarantined.", details: {} })),
  adminSyncOnce: vi.fn(async () => ({ summary: "Status sync: everything is in sync.", details: {} })),
  adminPortsCleanup: vi.fn(async () => ({ summary: "Freed 2 console port(s).", details: [7001, 7002] })),
  overview: vi.fn(),
  projectLimits: vi.fn(),
  osAdminList: vi.fn(async (): Promise<unknown[]> => []),
  osImport: vi.fn(),
  osRemove: vi.fn(),
  onOsProgress: vi.fn((f: () => void) => on("os-progress", f)),
  projectCreate: vi.fn(),
  placeChange: vi.fn(),
  workspaceCreate: vi.fn(),
  poolVmAdd: vi.fn(),
  vmTemplate: vi.fn(),
  onPoolProgress: vi.fn((f: () => void) => on("pool-progress", f)),
  closeSession: vi.fn(),
  openSession: vi.fn(),
  userRole: vi.fn(),
  userAdd: vi.fn(),
  onChange: vi.fn((f: () => void) => on("changed", f)),
  onProgress: vi.fn((f: () => void) => on("vm-progress", f)),
};
