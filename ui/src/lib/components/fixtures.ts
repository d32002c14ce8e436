// Test data shared by the UI tests.
import type { Vm } from "../../bindings/Vm";

export function vm(name: string, over: Partial<Vm> = {}): Vm {
  return {
    id: 0, name, os_type: "blank", ram_mb: 512, disk_gb: 1, cpu_cores: 1, vm_type: "standard",
    status: "STOPPED", ip_address: null, ssh_port: null, uptime_seconds: null, metadata: {},
    owner: null, pool: "lab", host: "qemu", provider_id: null, session_id: null, last_stopped: null,
    created_at: "", updated_at: "", synced_at: null, synced_by: null, ...over,
  };
}
