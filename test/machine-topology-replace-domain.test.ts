/**
 * Iommu.replaceDomain (Linux's iommu_group_replace_domain), which VFIO uses to move a group
 * between domains: the context entry switches from the old domain to the new one in one store,
 * so no transfer ever meets 'no-context'; a transfer already translated through the old domain
 * completes there; and when replaceDomain returns the device can no longer translate through the
 * old domain (it waited for the device's epoch, as detach does), so a strict unmap there need not
 * wait for it. The interleaving is forced: the device thread is held inside its transfer, after
 * translating through the old domain, until it sees the new context entry.
 */
import { describe, it, expect } from 'vitest';
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { GuestRam } from '../src/memory/guest-ram.js';
import { Iommu } from '../src/iommu/iommu.js';
import { Iotlb } from '../src/iommu/iotlb.js';
import { IOMMU_READ, IOMMU_WRITE } from '../src/iommu/page-table.js';
import { MiB, type Iova } from '../src/addresses.js';
import { allBytes, until } from './support.js';

const engineModule = pathToFileURL(resolve(__dirname, '../dist/src/device/dma-engine.js')).href;
const IOVA = 0x30_0000;
// sig: [0] translated in A, held  [1] first transfer's bytes written (just before end())  [2] go second  [3] second result
//      [4] first result  [5] context seen empty (-1) while held  [6] still busy when B was seen
const deviceSource = `
const { workerData: wd } = require('node:worker_threads');
import(${JSON.stringify(engineModule)}).then(({ DmaEngine, RunList }) => {
  const sig = new Int32Array(wd.sig);
  const e = new DmaEngine(wd.cfg);
  const runs = new RunList();
  e.begin();
  const ok1 = e.translate(${IOVA}, 4096, true, runs);       // through A
  Atomics.store(sig, 4, ok1 ? 1 : 2);
  Atomics.store(sig, 0, 1);                                 // held here, inside the transfer
  const t = Date.now();
  let d;
  while ((d = e.contexts.domainOf(wd.rid)) !== wd.b && Date.now() - t < 3000) {
    if (d === -1) Atomics.store(sig, 5, 1);
    Atomics.wait(sig, 7, 0, 1);
  }
  Atomics.store(sig, 6, e.epochs.isBusy(wd.slot) ? 1 : 0);
  if (ok1) e.fillRuns(runs, 0xaa);                          // completes through A's translation
  // Marked before end(): once end() leaves the transfer, replaceDomain may return at once, before
  // a store placed after end() is visible.
  Atomics.store(sig, 1, 1);
  e.end();
  while (Atomics.load(sig, 2) === 0) Atomics.wait(sig, 2, 0, 5);
  e.begin();
  const ok2 = e.translate(${IOVA}, 4096, true, runs);
  if (ok2) e.fillRuns(runs, 0xbb);
  e.end();
  Atomics.store(sig, 3, ok2 ? 1 : 2);
});`;

describe('Iommu.replaceDomain', () => {
  it('switches an in-flight device from A to B in one step: the transfer finishes in A, the next uses B', async () => {
    const ram = GuestRam.create([{ base: 0, size: 16 * MiB }]);
    const iommu = Iommu.create();
    const a = iommu.createDomain('dma');
    const b = iommu.createDomain('dma');
    const slot = iommu.epochs.claim();
    const rid = 0x0300;
    const P = ram.alloc(4096);
    const Q = ram.alloc(4096);
    ram.fill(P.pa, 4096, 0);
    ram.fill(Q.pa, 4096, 0);
    a.map(IOVA as Iova, P.pa, 4096, IOMMU_READ | IOMMU_WRITE);
    b.map(IOVA as Iova, Q.pa, 4096, IOMMU_READ | IOMMU_WRITE);
    iommu.attachDevice(rid, slot, a);
    const sig = new Int32Array(new SharedArrayBuffer(64));
    const cfg = { ram: ram.handle, iommu: iommu.handle, requesterId: rid, slot, iotlb: Iotlb.create(64).handle, maxPayload: 256 };
    const w = new Worker(deviceSource, { eval: true, workerData: { sig: sig.buffer, cfg, rid, slot, b: b.id } });
    try {
      await until(() => Atomics.load(sig, 0) === 1); // the device holds a translation through A
      const olds = iommu.replaceDomain(rid, slot, b); // blocks until the device left its transfer
      const endedBeforeReturn = Atomics.load(sig, 1) === 1;
      expect({
        olds,
        endedBeforeReturn,
        firstTranslated: Atomics.load(sig, 4),
        sawNoContext: Atomics.load(sig, 5),
        busyWhenSwitched: Atomics.load(sig, 6),
        context: iommu.contexts.domainOf(rid),
        inA: a.attachedSlots(),
        inB: b.attachedSlots(),
        wroteP: allBytes(ram.read(P.pa, 4096), 0xaa),
      }).toEqual({ olds: [a.id], endedBeforeReturn: true, firstTranslated: 1, sawNoContext: 0, busyWhenSwitched: 1, context: b.id, inA: [], inB: [slot], wroteP: true });
      a.unmap(IOVA as Iova, 4096); // strict; the device is no longer A's: returns at once
      Atomics.store(sig, 2, 1);
      Atomics.notify(sig, 2);
      await until(() => Atomics.load(sig, 3) !== 0);
      expect({ second: Atomics.load(sig, 3), wroteQ: allBytes(ram.read(Q.pa, 4096), 0xbb), pKept: allBytes(ram.read(P.pa, 4096), 0xaa) }).toEqual({
        second: 1,
        wroteQ: true,
        pKept: true,
      });
    } finally {
      await w.terminate();
    }
  });

  it('moves every alias and device slot of a group together, leaving the old attached set empty', () => {
    const iommu = Iommu.create();
    const a = iommu.createDomain('dma');
    const b = iommu.createDomain('dma');
    const s1 = iommu.epochs.claim();
    const s2 = iommu.epochs.claim();
    for (const [rid, s] of [[0x0208, s1], [0x0200, s1], [0x0210, s2], [0x0200, s2]] as const) iommu.attachDevice(rid, s, a);
    expect(iommu.replaceDomain([0x0208, 0x0200, 0x0210], [s1, s2], b)).toEqual([a.id]);
    expect([0x0208, 0x0200, 0x0210].map((r) => iommu.contexts.domainOf(r))).toEqual([b.id, b.id, b.id]);
    expect(a.attachedSlots()).toEqual([]);
    expect(b.attachedSlots().sort()).toEqual([s1, s2].sort());
  });

  it('is a plain attach for an ID without a context entry', () => {
    const iommu = Iommu.create();
    const b = iommu.createDomain('dma');
    const s = iommu.epochs.claim();
    expect(iommu.replaceDomain(0x42, s, b)).toEqual([]);
    expect(iommu.contexts.domainOf(0x42)).toBe(b.id);
    expect(b.attachedSlots()).toEqual([s]);
  });
});
