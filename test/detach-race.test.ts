/**
 * Iommu.detachDevice() must not return while the device can still translate through the old
 * domain: after it the device is out of the domain's attached set, so a strict unmap there no
 * longer waits for it. Found in review; the interleaving that broke it, forced here:
 *   device: enter(busy, old gen); domainOf(rid) -> A
 *   driver: detachDevice: clear context; flush-all on A (gen -> G); waitFor(device, G) ...
 *   device: gen(A) -> G; apply (IOTLB flushed); advance(G)
 *   driver: ... waitFor returns (device "has seen G"); A's attached set loses the device
 *   device: translate IOVA (page-table walk, PTE still there) -> IOTLB filled
 *   driver: A.unmap(IOVA) strict: attached(A) = {} -> returns at once; the page is reused
 *   device: writes the page  <-- after both detach and a strict unmap returned
 * The only forcing here is a delay of the device thread between its context load and its
 * generation load (what an OS preemption does); every step is the library's own code. The fix:
 * the device re-reads its context after acknowledging the generation (dma-engine.ts begin()).
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
const IOVA = 0x10_0000;
const deviceSource = `
const { workerData } = require('node:worker_threads');
import(${JSON.stringify(engineModule)}).then(({ DmaEngine, RunList }) => {
  const sig = new Int32Array(workerData.sig);
  const e = new DmaEngine(workerData.cfg);
  e.begin(); e.end();                       // one transfer: the engine now knows domain A
  const inval = e.inval;                    // hook the generation load that follows domainOf()
  const gen = inval.gen.bind(inval);
  inval.gen = (d) => {
    const g0 = gen(d);
    Atomics.store(sig, 0, 1);               // context loaded (A); the thread is preempted here...
    while (gen(d) === g0) Atomics.wait(sig, 7, 0, 1); // ...until the detach's flush moved A's gen
    inval.gen = gen;
    return gen(d);
  };
  e.begin();
  const runs = new RunList();
  const ok = e.translate(${IOVA}, 4096, true, runs);
  Atomics.store(sig, 1, ok ? 1 : 2);
  while (Atomics.load(sig, 2) === 0) Atomics.wait(sig, 2, 0, 5);
  if (ok) e.fillRuns(runs, 0xab);
  e.end();
  Atomics.store(sig, 3, 1);
});`;


describe('detach against an in-flight transfer', () => {
  it('leaves a device preempted inside begin() unable to translate through the old domain', async () => {
    const ram = GuestRam.create([{ base: 0, size: 16 * MiB }]);
    const iommu = Iommu.create();
    const a = iommu.createDomain('dma');
    const slot = iommu.epochs.claim();
    const rid = 0x18;
    iommu.attachDevice(rid, slot, a);
    const page = ram.alloc(4096);
    a.map(IOVA as Iova, page.pa, 4096, IOMMU_READ | IOMMU_WRITE);
    const iotlb = Iotlb.create(64);
    const sig = new Int32Array(new SharedArrayBuffer(32));
    const cfg = { ram: ram.handle, iommu: iommu.handle, requesterId: rid, slot, iotlb: iotlb.handle, maxPayload: 256 };
    const w = new Worker(deviceSource, { eval: true, workerData: { sig: sig.buffer, cfg } });
    try {
      await until(() => Atomics.load(sig, 0) === 1);
      iommu.detachDevice(rid, slot); // "returns once the device cannot use the old domain"
      expect(iommu.contexts.domainOf(rid)).toBe(-1);
      expect(a.attachedSlots()).toEqual([]);

      await until(() => Atomics.load(sig, 1) !== 0);
      const translatedAfterDetach = Atomics.load(sig, 1) === 1;
      expect(a.unmap(IOVA as Iova, 4096)).toBe(4096); // strict unmap; returns at once
      ram.fill(page.pa, 4096, 0); // the page is handed to somebody else
      Atomics.store(sig, 2, 1);
      await until(() => Atomics.load(sig, 3) === 1);

      const untouched = allBytes(ram.read(page.pa, 4096), 0);
      // The device's access fails: it did not translate after the detach returned, and did not
      // write the page after the strict unmap returned.
      expect({ translatedAfterDetach, untouched }).toEqual({ translatedAfterDetach: false, untouched: true });
    } finally {
      await w.terminate();
    }
  });
});
