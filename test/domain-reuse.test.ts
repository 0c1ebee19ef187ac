/**
 * A domain slot freed and claimed again is a new domain to every device: a device that last ran
 * in domain id N, was moved away, and is attached to a new domain that got id N again must not
 * translate through the old domain's cached entries or page-table root (the slot's incarnation
 * tells them apart). Found in review: it once wrote into a page the new domain never mapped.
 */
import { describe, it, expect } from 'vitest';
import { Machine, MiB, dmaAddr, IOMMU_READ, IOMMU_WRITE, type Iova, type Pa } from '../src/index.js';
import { allBytes } from './support.js';

describe('domain id reuse', () => {
  it('gives a device attached to a new domain with a reused id none of the old translations', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }], iommu: { invalidation: 'strict' } });
    try {
      const dev = await m.addDevice({ bdf: '00:03.0', iotlbEntries: 1024 });
      const unit = m.iommu.unit;
      const home = m.iommu.domainOf(dev)!;
      const ringPages = (depth: number) => Math.ceil((depth * 32) / 4096) * 4096;
      const mapRings = (d: typeof home) => {
        d.map(dev.sq.dma as number as Iova, dev.sq.pa, ringPages(dev.sq.depth), IOMMU_READ);
        d.map(dev.cq.dma as number as Iova, dev.cq.pa, ringPages(dev.cq.depth), IOMMU_WRITE);
      };
      const SRC = 0x2000_0000;
      const DST = 0x2000_1000;
      const src = m.ram.alloc(4096);
      const oldPage = m.ram.alloc(4096); // what DST meant in the OLD domain
      const newPage = m.ram.alloc(4096); // what DST means in the NEW domain
      m.ram.fill(src.pa, 4096, 0x5a);

      // Domain X: the device runs one copy there, so its IOTLB caches DST -> oldPage.
      const x = unit.createDomain('dma');
      mapRings(x);
      x.map(SRC as Iova, src.pa, 4096, IOMMU_READ);
      x.map(DST as Iova, oldPage.pa, 4096, IOMMU_WRITE);
      unit.attachDevice(dev.requesterId, dev.slot, x);
      await dev.copy({ src: dmaAddr(SRC), dst: dmaAddr(DST), len: 4096 });
      expect(allBytes(m.ram.read(oldPage.pa, 4096), 0x5a)).toBe(true);

      // Move the device home (detach flushes X and waits), free X, create Y: Y gets X's id.
      unit.attachDevice(dev.requesterId, dev.slot, home);
      unit.destroyDomain(x);
      const y = unit.createDomain('dma');
      expect(y.id).toBe(x.id);
      mapRings(y);
      y.map(SRC as Iova, src.pa, 4096, IOMMU_READ);
      y.map(DST as Iova, newPage.pa, 4096, IOMMU_WRITE); // in Y, DST is newPage
      unit.attachDevice(dev.requesterId, dev.slot, y);

      m.ram.fill(oldPage.pa, 4096, 0);
      m.ram.fill(newPage.pa, 4096, 0);
      await dev.copy({ src: dmaAddr(SRC), dst: dmaAddr(DST), len: 4096 });
      const wroteOld = !allBytes(m.ram.read(oldPage.pa, 4096), 0);
      const wroteNew = allBytes(m.ram.read(newPage.pa, 4096), 0x5a);
      // cleanup before asserting, so the machine closes either way
      unit.attachDevice(dev.requesterId, dev.slot, home);
      unit.destroyDomain(y);
      // Y's translation is used: newPage written, oldPage (not mapped in Y at all) untouched.
      expect({ wroteOld, wroteNew }).toEqual({ wroteOld: false, wroteNew: true });
    } finally {
      await m.close();
    }
  });
});
