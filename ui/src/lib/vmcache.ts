// A VM list kept up to date by merging only the rows changed since the
// previous answer (issue 16): with 10,000 VMs a change costs the rows it
// touched, not megabytes of JSON.
import type { Vm } from "../bindings/Vm";
import type { VmChanges } from "../bindings/VmChanges";

/** Asks the backend for the rows changed since a cursor (null: all rows). */
export type FetchChanges = (since: string | null) => Promise<VmChanges>;

const byName = (a: Vm, b: Vm) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

export class VmCache {
  private rows = new Map<number, Vm>();
  private cursor: string | null = null;
  /** The list, by name; a new array only when a row changed. */
  list: Vm[] = [];
  /** How many rows the last answer carried (for tests and the benchmark). */
  lastRows = 0;

  /**
   * Merges an answer. A full answer (no cursor asked) replaces the rows; a
   * partial one that leaves another number of rows than the store holds
   * (rows went away, or were hidden) is refused: ask again from nothing.
   */
  merge(c: VmChanges, full: boolean): boolean {
    const rows = full ? new Map<number, Vm>() : new Map(this.rows);
    for (const v of c.vms) rows.set(v.id, v);
    if (!full && rows.size !== c.total) {
      this.cursor = null;
      return false;
    }
    this.rows = rows;
    this.cursor = c.cursor;
    this.lastRows = c.vms.length;
    if (full || c.vms.length > 0) this.list = [...rows.values()].sort(byName);
    return true;
  }

  /** Brings the list up to date: the changes since the last answer, or everything. */
  async refresh(fetch: FetchChanges): Promise<Vm[]> {
    const since = this.cursor;
    if (!this.merge(await fetch(since), since === null)) this.merge(await fetch(null), true);
    return this.list;
  }
}
