/**
 * A device attached to a domain made from the IOMMU handle (Domain.create, or in another thread)
 * is one the machine's DMA API cannot map for (it knows only the domains it created): it must
 * refuse, not treat the device as untranslated. Found in review: mapSingle handed out the
 * PHYSICAL address as the DMA address, with nothing mapped.
 */
import { describe, it, expect } from 'vitest';
import { Machine, MiB, Domain, IOMMU_READ, IOMMU_WRITE, type Iova } from '../src/index.js';

describe('a device attached to a domain made from the IOMMU handle', () => {
  it('is refused by the DMA API (ENOENT) instead of getting a physical address', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
    try {
      const dev = await m.addDevice({ bdf: '00:03.0' });
      const unit = m.iommu.unit;
      const home = m.iommu.domainOf(dev)!;
      const other = Domain.create(unit.handle, 'dma');
      const rp = (n: number) => Math.ceil((n * 32) / 4096) * 4096;
      other.map(dev.sq.dma as number as Iova, dev.sq.pa, rp(dev.sq.depth), IOMMU_READ);
      other.map(dev.cq.dma as number as Iova, dev.cq.pa, rp(dev.cq.depth), IOMMU_WRITE);
      unit.attachDevice(dev.requesterId, dev.slot, other);
      const buf = m.ram.alloc(4096);
      let outcome: string;
      try {
        const h = m.dma.mapSingle(dev, buf.pa, 4096, 'from-device');
        outcome = h.addr === (buf.pa as number) ? 'PA handed out as DMA address' : 'IOVA';
        if (outcome === 'IOVA') await dev.fill({ dst: h.addr, len: 4096, value: 1 });
      } catch (e) {
        outcome = `refused: ${(e as { code: string }).code}`;
      }
      unit.attachDevice(dev.requesterId, dev.slot, home);
      expect(outcome).toBe('refused: ENOENT');
    } finally {
      await m.close();
    }
  });
});
