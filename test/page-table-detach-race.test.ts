/**
 * A failed map detaches the tables it installed (rollback, exhaustion fixes). A concurrent map of
 * a *different*, free range through one of those tables must not fail for it (review of the
 * one-descent mapL3 against the rollback). Interleaving, each party in its own thread:
 *   A: map [R - 4 KiB, R + 4 KiB) across the 2 MiB line R: installs L3 table T below R, its leaf
 *      in T ................................................. [preempted before the page at R]
 *   B: map one page at R - 2 MiB + 64 KiB (also in T): one descent reads T ... [preempted before its CAS]
 *   A: the page at R is mapped already: EEXIST; rollback clears its leaf, T is empty: freeze,
 *      unlink, retire
 *   B: CAS into T: FROZEN. Before the fix B failed with EEXIST ("being replaced by a concurrent
 *      block mapping") although nothing was ever mapped in its range.
 * Only the scheduling is forced (by hooking Atomics.compareExchange in the paused threads).
 */
import { describe, it, expect } from 'vitest';
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { TablePool } from '../src/iommu/table-pool.js';
import { IOMMU_READ, IOMMU_WRITE, PageTable, SZ_2M, SZ_4K } from '../src/iommu/page-table.js';
import { iova, pa } from '../src/addresses.js';
import { until } from './support.js';

const poolModule = pathToFileURL(resolve(__dirname, '../dist/src/iommu/table-pool.js')).href;
const ptModule = pathToFileURL(resolve(__dirname, '../dist/src/iommu/page-table.js')).href;
const RW = IOMMU_READ | IOMMU_WRITE;
const R = 0x4000_0000 + 8 * SZ_2M; // a 2 MiB line inside the second GiB
const PA_A = 0x10_0000_0000; // A's pages (distinctive PFNs)
const PA_B = 0x20_0000_0000;
// B's map, through the one-descent path (one page in T) or the general one (two pages across
// the 2 MiB line below T: the first in a table of its own, the second in T); it pauses before
// its CAS in T. `tables`: the tables B's success adds (a new L3 table replaces the detached T).
const B_CASES = [
  { path: 'mapL3 (one page)', iova: R - SZ_2M + 16 * SZ_4K, size: SZ_4K, pauseAt: 0, tables: 1 },
  { path: 'installLeaf (across a 2 MiB line)', iova: R - SZ_2M - SZ_4K, size: 2 * SZ_4K, pauseAt: 1, tables: 2 },
];

// sig: [0] A paused [1] go A [2] A done [3] B paused [4] go B [5] B done; results in [6] A ok, [7] B ok
const partySource = `
const { workerData: wd } = require('node:worker_threads');
Promise.all([import(${JSON.stringify(poolModule)}), import(${JSON.stringify(ptModule)})]).then(([{ TablePool }, { PageTable }]) => {
  const sig = new Int32Array(wd.sig);
  const pt = PageTable.attach(TablePool.attach(wd.pool), wd.table);
  const realCas = Atomics.compareExchange, realStore = Atomics.store, realLoad = Atomics.load;
  const pause = (at, go) => { realStore(sig, at, 1); Atomics.notify(sig, at); while (realLoad(sig, go) === 0) Atomics.wait(sig, go, 0, 5); };
  // Pause before the CAS that would install a leaf with PFN wd.pausePfn.
  Atomics.compareExchange = (a, i, expected, v) => {
    if (a === pt.entries && expected === 0 && (v >>> 4) === wd.pausePfn) { Atomics.compareExchange = realCas; pause(wd.pausedAt, wd.goAt); }
    return realCas(a, i, expected, v);
  };
  let ok = 1;
  try { pt.map(wd.iova, wd.pa, wd.size, 3); } catch (e) { ok = 2; realStore(sig, wd.errAt, 1); console.error(String(e && e.message)); }
  realStore(sig, wd.okAt, ok);
  realStore(sig, wd.doneAt, 1);
});`;

describe('PageTable: a failed map detaching its tables vs a concurrent map through them', () => {
  it.each(B_CASES)('a map of a free range through a table that a failed map detaches meanwhile still succeeds: $path', async (b) => {
    const pool = TablePool.create(64);
    const pt = PageTable.create(pool, { name: 'detach race' });
    pt.map(iova(R), pa(0x3000_0000), SZ_4K, RW); // the page A will collide with (its own L3 table)
    const tablesBefore = pool.inUse() - pool.retiredCount();
    const sig = new Int32Array(new SharedArrayBuffer(64));
    const spawn = (d: Record<string, number>) =>
      new Worker(partySource, { eval: true, workerData: { ...d, sig: sig.buffer, pool: pool.handle, table: pt.handle, errAt: 10 } });
    const go = (i: number) => {
      Atomics.store(sig, i, 1);
      Atomics.notify(sig, i);
    };
    const ws: Worker[] = [];
    try {
      // A pauses before its CAS at R (PFN of PA_A + 4 KiB), T and its first leaf installed.
      ws.push(spawn({ iova: R - SZ_4K, pa: PA_A, size: 2 * SZ_4K, pausePfn: PA_A / SZ_4K + 1, pausedAt: 0, goAt: 1, okAt: 6, doneAt: 2 }));
      await until(() => Atomics.load(sig, 0) === 1);
      // B descends into T and pauses before its leaf CAS.
      ws.push(spawn({ iova: b.iova, pa: PA_B, size: b.size, pausePfn: PA_B / SZ_4K + b.pauseAt, pausedAt: 3, goAt: 4, okAt: 7, doneAt: 5 }));
      await until(() => Atomics.load(sig, 3) === 1);
      go(1);
      await until(() => Atomics.load(sig, 2) === 1); // A failed and rolled back
      go(4);
      await until(() => Atomics.load(sig, 5) === 1);
    } finally {
      await Promise.all(ws.map((w) => w.terminate()));
    }
    expect(Atomics.load(sig, 6)).toBe(2); // A: EEXIST at R, as it should
    expect(pt.iovaToPhys(iova(R - SZ_4K))).toBeNull(); // and nothing of A is left
    expect(Atomics.load(sig, 7)).toBe(1); // B: mapped
    for (let off = 0; off < b.size; off += SZ_4K) expect(pt.iovaToPhys(iova(b.iova + off + 0x10))).toBe(PA_B + off + 0x10);
    // A's detached T is retired, not leaked; B's tables are linked.
    expect(pool.inUse() - pool.retiredCount()).toBe(tablesBefore + b.tables);
    expect(pt.countTables() + pool.retiredCount()).toBe(pool.inUse());
  });
});
