/**
 * Iommu.attachDevice / detachDevice change two words together (the context entry and the
 * domain's attached bit), and any thread may drive the IOMMU from its handle, so they are
 * serialized by the context table's mutex. Found in review; the interleaving that broke it
 * before the mutex, forced here (each party in its own thread, library code only):
 *   T1 detachDevice(rid): old = A; context cleared ............................ [preempted]
 *   T2 attachDevice(rid, A): context is empty -> sets A's attached bit; context = A
 *   T1: flush-all on A, waitFor, clears A's attached bit
 * End state: the context entry points at A but the device is not in A's attached set, so a
 * strict A.unmap() returns without waiting for a device that translates through A.
 */
import { describe, it, expect } from 'vitest';
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { Iommu } from '../src/iommu/iommu.js';
import { until } from './support.js';

const iommuModule = pathToFileURL(resolve(__dirname, '../dist/src/iommu/iommu.js')).href;
const domainModule = pathToFileURL(resolve(__dirname, '../dist/src/iommu/domain.js')).href;
const partySource = `
const { workerData: wd } = require('node:worker_threads');
Promise.all([import(${JSON.stringify(iommuModule)}), import(${JSON.stringify(domainModule)})]).then(([{ Iommu }, { Domain }]) => {
  const sig = new Int32Array(wd.sig);
  const iommu = Iommu.attach(wd.iommu);
  const realStore = Atomics.store;
  if (wd.role === 'T1') {
    const ctx = iommu.contexts.words;
    Atomics.store = (a, i, v) => {
      const r = realStore(a, i, v);
      if (a === ctx && i === wd.rid && v === 0) {            // context cleared: preempted here
        Atomics.store = realStore;
        realStore(sig, 0, 1); Atomics.notify(sig, 0);
        while (Atomics.load(sig, 1) === 0) Atomics.wait(sig, 1, 0, 5);
      }
      return r;
    };
    iommu.detachDevice(wd.rid, wd.slot);
    realStore(sig, 2, 1);
  } else {
    iommu.attachDevice(wd.rid, wd.slot, Domain.attach(wd.a));
    realStore(sig, 3, 1);
  }
});`;


describe('attach and detach of one device from two threads', () => {
  it('never leaves the context entry pointing at a domain the device is not attached to', async () => {
    const iommu = Iommu.create();
    const a = iommu.createDomain('dma');
    const slot = iommu.epochs.claim();
    const rid = 0x28;
    iommu.attachDevice(rid, slot, a);
    const sig = new Int32Array(new SharedArrayBuffer(32));
    const spawn = (role: string) => new Worker(partySource, { eval: true, workerData: { role, sig: sig.buffer, iommu: iommu.handle, a: a.handle, rid, slot } });
    const ws = [spawn('T1')];
    try {
      await until(() => Atomics.load(sig, 0) === 1); // T1 is inside detach, context cleared
      ws.push(spawn('T2'));
      await new Promise((r) => setTimeout(r, 50));
      expect(Atomics.load(sig, 3)).toBe(0); // T2's attach waits for T1's detach to finish
      Atomics.store(sig, 1, 1);
      Atomics.notify(sig, 1);
      await until(() => Atomics.load(sig, 2) === 1 && Atomics.load(sig, 3) === 1);
    } finally {
      await Promise.all(ws.map((w) => w.terminate()));
    }
    const ctx = iommu.contexts.domainOf(rid);
    const consistent = ctx < 0 || iommu.domainTable.attached(ctx).includes(slot);
    expect({ ctx, attachedToA: a.attachedSlots().includes(slot), consistent }).toEqual({ ctx: a.id, attachedToA: true, consistent: true });
  });
});
