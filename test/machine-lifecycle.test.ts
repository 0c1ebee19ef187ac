/**
 * Machine lifecycle under concurrency: adds racing close(), two adds of one address, close()
 * with a long queue, and mappings that outlive a device's move to another domain.
 */
import { describe, it, expect } from 'vitest';
import { Machine, MiB, dmaAddr, type Device } from '../src/index.js';

const ports = () => process.getActiveResourcesInfo().filter((r) => r === 'MessagePort').length;

describe('machine lifecycle', () => {
  it('takes back a device whose add was still starting when close() began', async () => {
    const before = ports();
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
    const adding = m.addDevice({ bdf: '00:03.0' });
    await m.close();
    await expect(adding).rejects.toMatchObject({ code: 'ESHUTDOWN' });
    expect(m.devices()).toHaveLength(0);
    expect(ports()).toBe(before); // its worker ended too
    expect(m.ram.pagesInUse()).toBe(0);
  });

  it('refuses a second add of the same address while the first is starting', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
    try {
      const results = await Promise.allSettled([m.addDevice({ bdf: '00:04.0' }), m.addDevice({ bdf: '0000:00:04.0' })]);
      expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
      expect((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason).toMatchObject({ code: 'EEXIST' });
      expect(m.devices()).toHaveLength(1);
    } finally {
      await m.close();
    }
  });

  it('stops between descriptors: close() does not run a long queue to its end', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 128 * MiB }] });
    const dev = await m.addDevice({ bdf: '00:03.0', queueDepth: 64 });
    const LEN = 16 * MiB;
    const s = m.ram.alloc(LEN);
    const d = m.ram.alloc(LEN);
    const src = m.dma.mapSingle(dev, s.pa, LEN, 'to-device');
    const dst = m.dma.mapSingle(dev, d.pa, LEN, 'from-device');
    const outcomes = Array.from({ length: 64 }, () => dev.copy({ src: src.addr, dst: dst.addr, len: LEN }).then(() => 'ok', (e: { code: string }) => e.code));
    while (dev.counters().descriptors === 0) await new Promise((r) => setTimeout(r, 1));
    await m.close();
    const results = await Promise.all(outcomes);
    expect(results.filter((r) => r === 'EIO').length).toBeGreaterThan(0); // the rest were not run
    expect(results.every((r) => r === 'ok' || r === 'EIO')).toBe(true);
    expect(dev.counters().descriptors).toBeLessThan(64);
  });

  it('unmaps a mapping in the domain it was made in, even after the device moved', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
    try {
      const dev: Device = await m.addDevice({ bdf: '00:03.0' });
      const unit = m.iommu.unit;
      const home = m.iommu.domainOf(dev)!;
      const b1 = m.ram.alloc(4096);
      const b2 = m.ram.alloc(4096);
      const h1 = m.dma.mapSingle(dev, b1.pa, 4096, 'to-device');
      // Move the device to a fresh domain (as a group move would) and map there.
      const other = unit.createDomain('dma');
      unit.attachDevice(dev.requesterId, dev.slot, other);
      expect(dev.domain).toBe(other);
      expect(m.iommu.domainOf(dev)).toBe(other);
      const h2 = m.dma.mapSingle(dev, b2.pa, 4096, 'to-device');
      m.dma.unmapSingle(dev, h1);
      expect(home.iovaToPhys(h1.addr as never)).toBeNull(); // gone from where it was made
      expect(other.iovaToPhys(h2.addr as never)).toBe(b2.pa); // the other domain untouched
      m.dma.unmapSingle(dev, h2);
      unit.attachDevice(dev.requesterId, dev.slot, home);
      unit.destroyDomain(other);
      // The device works in its home domain again.
      const h3 = m.dma.mapSingle(dev, b1.pa, 4096, 'bidirectional');
      await dev.fill({ dst: h3.addr, len: 64, value: 9 });
      expect(m.ram.read(b1.pa, 1)[0]).toBe(9);
    } finally {
      await m.close();
    }
  });

  it('refuses DMA API calls after close with ESHUTDOWN', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const b = m.ram.alloc(4096);
    const h = m.dma.mapSingle(dev, b.pa, 4096, 'to-device');
    m.dma.unmapSingle(dev, h);
    await m.close();
    expect(() => m.dma.mapSingle(dev, b.pa, 4096, 'to-device')).toThrow(expect.objectContaining({ code: 'ESHUTDOWN' }));
    await expect(dev.copy({ src: dmaAddr(0x1000), dst: dmaAddr(0x2000), len: 1 })).rejects.toMatchObject({ code: 'ESHUTDOWN' });
  });
});
