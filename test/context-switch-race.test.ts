/**
 * Adversarial (from review; holds): a device preempted inside switchContext() — it has
 * loaded the context entry, the incarnation and the page-table ROOT of domain A, but not yet A's
 * generation — while its `seen` word still carries a much larger generation of another domain Z.
 * A detach from A then returns at once (genAtLeast compares Z's generation with A's), so the
 * driver can, before the device resumes:
 *   'recycle': destroy A, create A2 (same id, new incarnation, A's freed tables), map the IOVA to Q
 *   'recycle-attach': the same, and attach the device to A2
 *   'aba': strict-unmap the IOVA in A (nobody attached: returns at once), attach B, attach A again
 * The old page P must never be written; Q only when the device is attached to A2.
 * Only scheduling is forced (a hook on Invalidation.gen in the device thread); the code is the library's.
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
const IOVA = 0x20_0000;
// sig: [0] phase from device  [1] go from main  [2] translate result (1 ok, 2 fault)  [3] paused  [4] resume
const deviceSource = `
const { workerData: wd } = require('node:worker_threads');
import(${JSON.stringify(engineModule)}).then(({ DmaEngine, RunList }) => {
  const sig = new Int32Array(wd.sig);
  const waitGo = (i) => { const t = Date.now(); while (Atomics.load(sig, i) === 0 && Date.now() - t < 3000) Atomics.wait(sig, i, 0, 5); };
  const e = new DmaEngine(wd.cfg);
  e.begin(); e.end();                          // one transfer in Z: lastGen = Z's (large) generation
  Atomics.store(sig, 0, 1); waitGo(1);         // main attaches the device to A
  const inval = e.inval;
  const gen = inval.gen.bind(inval);
  inval.gen = (d) => {                         // first gen load of A: inside switchContext, root already loaded
    if (d === wd.a) { inval.gen = gen; Atomics.store(sig, 3, 1); waitGo(4); }
    return gen(d);
  };
  e.begin();
  const runs = new RunList();
  const ok = e.translate(${IOVA}, 4096, true, runs);
  if (ok) e.fillRuns(runs, 0xab);
  e.end();
  Atomics.store(sig, 2, ok ? 1 : 2);
});`;


async function run(variant: 'recycle' | 'recycle-attach' | 'aba') {
  const ram = GuestRam.create([{ base: 0, size: 16 * MiB }]);
  const iommu = Iommu.create();
  const z = iommu.createDomain('dma');
  const b = iommu.createDomain('dma');
  const a = iommu.createDomain('dma');
  const slot = iommu.epochs.claim();
  const rid = 0x20;
  iommu.attachDevice(rid, slot, z);
  for (let i = 0; i < 1000; i++) z.flushIotlbAll(); // Z's generation: 1000 (device idle: no waiting)
  const P = ram.alloc(4096);
  const Q = ram.alloc(4096);
  ram.fill(P.pa, 4096, 0);
  ram.fill(Q.pa, 4096, 0);
  const sig = new Int32Array(new SharedArrayBuffer(64));
  const cfg = { ram: ram.handle, iommu: iommu.handle, requesterId: rid, slot, iotlb: Iotlb.create(64).handle, maxPayload: 256 };
  const w = new Worker(deviceSource, { eval: true, workerData: { sig: sig.buffer, cfg, a: a.id } });
  const go = (i: number) => {
    Atomics.store(sig, i, 1);
    Atomics.notify(sig, i);
  };
  try {
    await until(() => Atomics.load(sig, 0) === 1);
    iommu.attachDevice(rid, slot, a);
    a.map(IOVA as Iova, P.pa, 4096, IOMMU_READ | IOMMU_WRITE);
    go(1);
    await until(() => Atomics.load(sig, 3) === 1); // device: in switchContext(A), root loaded
    iommu.detachDevice(rid, slot); // returns at once: seen carries Z's generation 1000 >= A's
    const returnedWhileBusy = iommu.epochs.isBusy(slot); // the device is still paused mid-switch
    let a2id = -1;
    if (variant === 'aba') {
      a.unmap(IOVA as Iova, 4096); // strict, nobody attached: returns at once
      iommu.attachDevice(rid, slot, b);
      iommu.attachDevice(rid, slot, a); // back to A, same incarnation
    } else {
      iommu.destroyDomain(a); // A's tables go back to the pool
      const a2 = iommu.createDomain('dma');
      a2id = a2.id;
      a2.map(IOVA as Iova, Q.pa, 4096, IOMMU_READ | IOMMU_WRITE);
      if (variant === 'recycle-attach') iommu.attachDevice(rid, slot, a2);
    }
    go(4);
    await until(() => Atomics.load(sig, 2) !== 0);
    return {
      detachReturnedAtOnce: returnedWhileBusy,
      reusedId: variant === 'aba' ? true : a2id === a.id,
      translated: Atomics.load(sig, 2) === 1,
      wroteP: !allBytes(ram.read(P.pa, 4096), 0),
      wroteQ: !allBytes(ram.read(Q.pa, 4096), 0),
    };
  } finally {
    await w.terminate();
  }
}

describe('device preempted mid-switch while its seen word carries another domain’s generation', () => {
  it('destroy + re-create of the domain id, device left detached: faults, old page untouched', async () => {
    expect(await run('recycle')).toEqual({ detachReturnedAtOnce: true, reusedId: true, translated: false, wroteP: false, wroteQ: false });
  });
  it('destroy + re-create + attach: uses only the new incarnation’s mapping', async () => {
    expect(await run('recycle-attach')).toEqual({ detachReturnedAtOnce: true, reusedId: true, translated: true, wroteP: false, wroteQ: true });
  });
  it('A -> (unmap in A) -> B -> A while preempted: the unmapped page is not written', async () => {
    expect(await run('aba')).toEqual({ detachReturnedAtOnce: true, reusedId: true, translated: false, wroteP: false, wroteQ: false });
  });
});
