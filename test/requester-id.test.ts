/**
 * Requester IDs: the IOMMU tells devices apart by their 16-bit requester ID only (bus, device,
 * function; no PCI segment). Found in review: '0000:00:03.0' and '0001:00:03.0' were both
 * accepted and shared ID 0x18, moving device 1 into device 2's domain, out of the attached set
 * that strict unmaps wait for.
 */
import { describe, it, expect } from 'vitest';
import { Machine, MiB, dmaAddr } from '../src/index.js';

describe('requester IDs', () => {
  it('refuses a second device with a requester ID already in use, naming the first', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
    try {
      const dev1 = await m.addDevice({ bdf: '0000:00:03.0' });
      const own = m.iommu.domainOf(dev1)!;
      await expect(m.addDevice({ bdf: '0001:00:03.0' })).rejects.toThrow(/EEXIST.*requester ID 00:03\.0.*0000:00:03\.0/);
      expect(m.devices()).toHaveLength(1);
      expect(m.iommu.domainOf(dev1)).toBe(own);
      expect(own.attachedSlots()).toEqual([dev1.slot]);
      expect(await m.addDevice({ bdf: '0001:00:04.0' })).toBeTruthy(); // another ID is fine
    } finally {
      await m.close();
    }
  });

  it('puts every device slot that uses one requester ID in the domain\'s attached set (aliases)', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
    try {
      const dev = await m.addDevice({ bdf: '00:03.0' });
      const unit = m.iommu.unit;
      const d = m.iommu.domainOf(dev)!;
      // A second function aliased to the same ID (as behind a PCIe-to-PCI bridge) attaches to it.
      const aliasSlot = unit.epochs.claim();
      unit.attachDevice(dev.requesterId, aliasSlot, d);
      expect(d.attachedSlots().sort()).toEqual([dev.slot, aliasSlot].sort());
      // Strict unmaps keep working (and wait on both slots; the alias is idle).
      const b = m.ram.alloc(4096);
      const h = m.dma.mapSingle(dev, b.pa, 4096, 'bidirectional');
      await dev.fill({ dst: dmaAddr(h.addr), len: 16, value: 3 });
      m.dma.unmapSingle(dev, h);
      unit.domainTable.detachDevice(d.id, aliasSlot);
      unit.epochs.release(aliasSlot);
    } finally {
      await m.close();
    }
  });
});
