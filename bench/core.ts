/**
 * The core suite: the device data path against this machine's own limits, measured in one run.
 *
 *   sg64k-scattered-vs-memcpy   a 64 KiB device copy whose source and destination are 16
 *                               scattered 4 KiB pages each, through the IOMMU (epoch, IOTLB,
 *                               translation, copies), as a throughput ratio of one raw contiguous
 *                               64 KiB copyWithin                                   goal ≥ 0.75
 *   sg64k-contiguous-vs-memcpy  the same over physically contiguous pages (merged)  goal ≥ 0.90
 *   …-vs-memmove                both again against one raw wasm memory.copy, the real limit:
 *                               guest RAM is a shared wasm memory and the DMA engine copies with
 *                               memory.copy, which is ~4× copyWithin on shared memory
 *   iotlb-hit-ns                translation of one page on an IOTLB hit              goal ≤ 5 ns
 *   walk-ns                     translation of one page that misses: a 4-level walk  goal ≤ 12 ns
 *   misaligned-4k-gbps          a 4 KiB copy whose source and destination are not 8-byte aligned
 *                               to each other                                       goal ≥ 8 GB/s
 *   doorbell-sleep-us           doorbell → completion of a sleeping device (64 B copy) goal ≤ 15 µs
 *   doorbell-poll-us            the same with the device polling its doorbell       goal ≤ 1 µs
 *
 * The data-path figures run the device's own DmaEngine code on this thread (what a device
 * worker runs per descriptor), so that they measure translation and copying, not scheduling.
 * The doorbell figures use a real device worker; the driver polls for the completion.
 */
import { GuestRam } from '../src/memory/guest-ram.js';
import { Iommu } from '../src/iommu/iommu.js';
import { Iotlb } from '../src/iommu/iotlb.js';
import { IOMMU_READ, IOMMU_WRITE } from '../src/iommu/page-table.js';
import { DmaEngine, RunList } from '../src/device/dma-engine.js';
import { Machine } from '../src/machine.js';
import { dmaAddr, type Iova, type Pa, MiB, GiB } from '../src/addresses.js';
import { memmoveFor } from '../src/memory/wasm-memmove.js';
import type { Figure } from './figures.js';
import { median, timeNs } from './measure.js';

const PAGE = 4096;
const K64 = 64 * 1024;


interface EngineRig {
  ram: GuestRam;
  engine: DmaEngine;
  cold: DmaEngine;
}

function rig(): EngineRig {
  const ram = GuestRam.create([{ base: 0, size: 64 * MiB }, { base: 4 * GiB, size: 64 * MiB }]);
  const iommu = Iommu.create();
  const dom = iommu.createDomain('dma');
  const make = (rid: number, entries: number) => {
    const slot = iommu.epochs.claim();
    iommu.attachDevice(rid, slot, dom);
    return new DmaEngine({ ram: ram.handle, iommu: iommu.handle, requesterId: rid, slot, iotlb: Iotlb.create(entries).handle, maxPayload: 256 });
  };
  const engine = make(0x18, 1024);
  const cold = make(0x20, 1); // one entry: every page of a range misses
  // Scattered: 16 + 16 pages picked at random from a 1024-page pool, mapped at contiguous IOVAs.
  const pool = ram.alloc(1024 * PAGE, { below: 4 * GiB });
  const order = Array.from({ length: 1024 }, (_, i) => i);
  let x = 12345;
  for (let i = order.length - 1; i > 0; i--) {
    x = (x * 1103515245 + 12345) >>> 0;
    const j = x % (i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  for (let i = 0; i < 16; i++) {
    dom.map((0x1000000 + i * PAGE) as Iova, (pool.pa + order[i] * PAGE) as Pa, PAGE, IOMMU_READ);
    dom.map((0x2000000 + i * PAGE) as Iova, (pool.pa + order[16 + i] * PAGE) as Pa, PAGE, IOMMU_WRITE);
  }
  // Contiguous: 64 KiB each side, 4 KiB pages (merged by the engine into one copy).
  const cs = ram.alloc(K64, { above: 4 * GiB });
  const cd = ram.alloc(K64, { above: 4 * GiB });
  for (let i = 0; i < 16; i++) {
    dom.map((0x3000000 + i * PAGE) as Iova, (cs.pa + i * PAGE) as Pa, PAGE, IOMMU_READ);
    dom.map((0x4000000 + i * PAGE) as Iova, (cd.pa + i * PAGE) as Pa, PAGE, IOMMU_WRITE);
  }
  // 256 pages (1 MiB) for translation costs.
  const big = ram.alloc(256 * PAGE, { below: 4 * GiB });
  dom.map(0x5000000 as Iova, big.pa, 256 * PAGE, IOMMU_READ | IOMMU_WRITE);
  return { ram, engine, cold };
}

export async function coreSuite(ms = 400): Promise<Figure[]> {
  const { ram, engine, cold } = rig();
  const u8 = new Uint8Array(ram.handle.sab);
  const src = new RunList();
  const dst = new RunList();
  const copy = (s: number, d: number) => () => {
    engine.begin();
    engine.translate(s, K64, false, src);
    engine.translate(d, K64, true, dst);
    engine.copyRuns(dst, src);
    engine.end();
  };
  const rawOff = ram.offsetOf(4 * GiB + 32 * MiB, 2 * K64);
  const raw = () => u8.copyWithin(rawOff + K64, rawOff, rawOff + K64);
  // The machine's real limit: one memmove of the same 64 KiB (wasm memory.copy on guest RAM).
  if (!ram.handle.memory) throw new Error('bench RAM is expected to be a wasm memory');
  const mm = memmoveFor(ram.handle.memory);
  const rawMemmove = () => mm.copy(rawOff + K64, rawOff, K64);
  // The ceiling for scattered pages: 16 raw memmoves of exactly the engine's scattered pages.
  engine.begin();
  engine.translate(0x1000000, K64, false, src);
  engine.translate(0x2000000, K64, true, dst);
  engine.end();
  const sOffs = Array.from({ length: src.count }, (_, i) => src.offs[i]);
  const dOffs = Array.from({ length: dst.count }, (_, i) => dst.offs[i]);
  if (sOffs.length !== 16 || dOffs.length !== 16) throw new Error('scattered pages are expected not to merge');
  const rawScattered = () => {
    for (let i = 0; i < 16; i++) mm.copy(dOffs[i], sOffs[i], PAGE);
  };
  const translateHit = () => {
    engine.begin();
    engine.translate(0x5000000, 256 * PAGE, false, src);
    engine.end();
  };
  const translateMiss = () => {
    cold.begin();
    cold.translate(0x5000000, 256 * PAGE, false, src);
    cold.end();
  };
  const mOff = ram.offsetOf(8 * MiB, 4 * PAGE);
  const misaligned = () => ram.copy(mOff + 2 * PAGE + 3, mOff, PAGE);
  const rawMisaligned = () => u8.copyWithin(mOff + 2 * PAGE + 3, mOff, mOff + PAGE);

  // Interleaved rounds: the figure is the median of the per-round ratios.
  const ratiosScattered: number[] = [];
  const ratiosContig: number[] = [];
  const mmScattered: number[] = [];
  const ceilingScattered: number[] = [];
  const mmContig: number[] = [];
  const hit: number[] = [];
  const miss: number[] = [];
  const mis: number[] = [];
  const rawMis: number[] = [];
  for (let round = 0; round < 3; round++) {
    const t = await timeNs(
      {
        raw,
        rawMemmove,
        rawScattered,
        scattered: copy(0x1000000, 0x2000000),
        contiguous: copy(0x3000000, 0x4000000),
        translateHit,
        translateMiss,
        misaligned,
        rawMisaligned,
      },
      ms,
    );
    ratiosScattered.push(t.raw / t.scattered);
    ratiosContig.push(t.raw / t.contiguous);
    mmScattered.push(t.rawMemmove / t.scattered);
    ceilingScattered.push(t.rawMemmove / t.rawScattered);
    mmContig.push(t.rawMemmove / t.contiguous);
    hit.push(t.translateHit / 256);
    miss.push(t.translateMiss / 256);
    mis.push(PAGE / t.misaligned);
    rawMis.push(PAGE / t.rawMisaligned);
  }
  const figures: Figure[] = [
    { id: 'sg64k-scattered-vs-memcpy', value: median(ratiosScattered), unit: '×copyWithin', goal: { op: '>=', value: 0.75 }, note: 'baseline: one contiguous 64 KiB copyWithin' },
    { id: 'sg64k-contiguous-vs-memcpy', value: median(ratiosContig), unit: '×copyWithin', goal: { op: '>=', value: 0.9 }, note: 'baseline: one contiguous 64 KiB copyWithin' },
    { id: 'sg64k-scattered-vs-memmove', value: median(mmScattered), unit: '×memmove', goal: { op: '>=', value: 0.75 }, note: `baseline: one contiguous 64 KiB wasm memory.copy; 16 raw memmoves of the same scattered pages reach ${median(ceilingScattered).toFixed(2)}×` },
    { id: 'sg64k-contiguous-vs-memmove', value: median(mmContig), unit: '×memmove', goal: { op: '>=', value: 0.9 }, note: 'baseline: one contiguous 64 KiB wasm memory.copy (the real limit)' },
    { id: 'iotlb-hit-ns', value: median(hit), unit: 'ns', goal: { op: '<=', value: 5 } },
    { id: 'walk-ns', value: median(miss), unit: 'ns', goal: { op: '<=', value: 12 } },
    {
      id: 'misaligned-4k-gbps',
      value: median(mis),
      unit: 'GB/s',
      goal: { op: '>=', value: 8 },
      note: `plain copyWithin at the same misalignment: ${median(rawMis).toFixed(1)} GB/s`,
    },
  ];
  figures.push(...(await doorbellFigures()));
  return figures;
}

async function doorbellFigures(): Promise<Figure[]> {
  const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
  try {
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const b = m.ram.alloc(PAGE);
    const h = m.dma.mapSingle(dev, b.pa, PAGE, 'bidirectional');
    const s = dmaAddr(h.addr);
    const d = dmaAddr(h.addr + 2048);
    for (let i = 0; i < 200; i++) dev.submitPolled(s, d, 64); // warm up the JIT and the IOTLB
    const sleeping: number[] = [];
    for (let i = 0; i < 300; i++) {
      // Wait (without spinning) until the device has gone to sleep on its doorbell.
      while (!dev.control.sleeping()) await new Promise((r) => setImmediate(r));
      const t0 = performance.now();
      dev.submitPolled(s, d, 64);
      sleeping.push((performance.now() - t0) * 1000);
    }
    dev.setDoorbellPolling(true);
    const polling: number[] = [];
    for (let i = 0; i < 2000; i++) {
      const t0 = performance.now();
      dev.submitPolled(s, d, 64);
      polling.push((performance.now() - t0) * 1000);
    }
    dev.setDoorbellPolling(false);
    m.dma.unmapSingle(dev, h);
    return [
      { id: 'doorbell-sleep-us', value: median(sleeping), unit: 'µs', goal: { op: '<=', value: 15 }, note: 'median; device asleep in Atomics.wait, driver polls the completion' },
      { id: 'doorbell-poll-us', value: median(polling), unit: 'µs', goal: { op: '<=', value: 1 }, note: 'median; device polls its doorbell' },
    ];
  } finally {
    await m.close();
  }
}
