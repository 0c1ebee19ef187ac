import { describe, it, expect } from 'vitest';
import { Machine, GiB, MiB, DmaError, dmaAddr, IOMMU_READ, IOMMU_WRITE, type MachineConfig } from '../src/index.js';
import { pattern, same, allBytes, closeAfterEach } from './support.js';
const { machines } = closeAfterEach();

const small: MachineConfig = { ram: [{ base: 0, size: 8 * MiB }, { base: 4 * GiB, size: 8 * MiB }] };
async function machine(cfg: MachineConfig = small): Promise<Machine> {
  const m = await Machine.create(cfg);
  machines.push(m);
  return m;
}

describe('device DMA through the IOMMU', () => {
  it('copies bytes between two mapped buffers', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const a = m.ram.alloc(16384, { above: 4 * GiB });
    const b = m.ram.alloc(16384, { below: 4 * GiB });
    const data = pattern(16384, 1);
    m.ram.write(a.pa, data);
    const src = m.dma.mapSingle(dev, a.pa, a.size, 'to-device');
    const dst = m.dma.mapSingle(dev, b.pa, b.size, 'from-device');
    expect(src.addr).toBeLessThan(4 * GiB); // a 32-bit device reaches high RAM through an IOVA
    const c = await dev.copy({ src: src.addr, dst: dst.addr, len: 16384 });
    expect(c).toMatchObject({ status: 'ok', bytes: 16384 });
    expect(same(m.ram.read(b.pa, 16384), data)).toBe(true);
  });

  it('faults on an unmapped page, records it and changes nothing around it', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const a = m.ram.alloc(4096);
    const b = m.ram.alloc(3 * 4096); // canary, target, canary
    m.ram.write(a.pa, pattern(4096, 2));
    m.ram.fill(b.pa, 3 * 4096, 0xcc);
    const src = m.dma.mapSingle(dev, a.pa, 4096, 'to-device');
    const dst = m.dma.mapSingle(dev, b.pa + 4096, 4096, 'from-device');
    const iova = dst.addr;
    m.dma.unmapSingle(dev, dst);
    // 8 KiB: the first page was mapped until just now, the second never was.
    await expect(dev.copy({ src: src.addr, dst: iova, len: 4096 })).rejects.toMatchObject({ code: 'EFAULT' });
    expect(allBytes(m.ram.read(b.pa, 3 * 4096), 0xcc)).toBe(true);
    const faults = m.iommu.faults();
    expect(faults).toEqual([expect.objectContaining({ bdf: '0000:00:03.0', addr: iova, access: 'write', reason: 'not-present' })]);
    expect(m.stats().faults).toBe(1);
  });

  it('faults a write into a read-only (to-device) mapping, leaving it intact', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:04.0' });
    const a = m.ram.alloc(8192);
    const b = m.ram.alloc(8192);
    m.ram.write(a.pa, pattern(8192, 3));
    m.ram.fill(b.pa, 8192, 0x5a);
    const src = m.dma.mapSingle(dev, a.pa, 8192, 'to-device');
    const ro = m.dma.mapSingle(dev, b.pa, 8192, 'to-device');
    const c = await dev.submit(src.addr, ro.addr, 8192, 0);
    expect(c.status).toBe('fault');
    expect(c.fault).toEqual({ addr: ro.addr, access: 'write', reason: 'permission' });
    expect(allBytes(m.ram.read(b.pa, 8192), 0x5a)).toBe(true);
    expect(m.iommu.faults()).toHaveLength(1);
  });

  it('aborts a transfer whose last page faults without writing its first pages', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:05.0' });
    const d = m.iommu.domainOf(dev)!;
    const a = m.ram.alloc(3 * 4096);
    const b = m.ram.alloc(3 * 4096);
    m.ram.write(a.pa, pattern(3 * 4096, 4));
    m.ram.fill(b.pa, 3 * 4096, 0x11);
    // Placed by hand: source at 1 MiB (readable), destination at 2 MiB with its third page unmapped.
    d.map(0x100000 as never, a.pa, 3 * 4096, IOMMU_READ);
    d.map(0x200000 as never, b.pa, 2 * 4096, IOMMU_WRITE);
    const c = await dev.submit(0x100000, 0x200000, 3 * 4096, 0);
    expect(c.status).toBe('fault');
    expect(c.fault).toEqual({ addr: 0x202000, access: 'write', reason: 'not-present' });
    expect(allBytes(m.ram.read(b.pa, 3 * 4096), 0x11)).toBe(true);
  });

  it('keeps devices apart: one device cannot use another device\'s IOVA', async () => {
    const m = await machine();
    const d1 = await m.addDevice({ bdf: '00:03.0' });
    const d2 = await m.addDevice({ bdf: '00:04.0' });
    const a = m.ram.alloc(4096);
    const h1 = m.dma.mapSingle(d1, a.pa, 4096, 'bidirectional');
    const c = await d2.submit(h1.addr, h1.addr, 4096, 0);
    expect(c.status).toBe('fault');
    expect(m.iommu.faults()[0]).toMatchObject({ bdf: '0000:00:04.0', access: 'read' });
  });

  it('refuses a raw descriptor whose length does not fit its 32-bit field instead of cutting it', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0' });
    await expect(dev.submit(0x100000, 0x200000, 2 ** 32 + 16, 0)).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/0000:00:03\.0: descriptor len 4294967312 does not fit its 32-bit field/) });
    await expect(dev.submit(-4096, 0x200000, 16, 0)).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/descriptor src -4096 is not a DMA address/) });
    expect(dev.counters().descriptors).toBe(0);
  });

  it('moves a misaligned copy intact', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const a = m.ram.alloc(4 * 4096);
    const b = m.ram.alloc(4 * 4096);
    const data = pattern(10000, 5);
    m.ram.write(a.pa + 3, data);
    const src = m.dma.mapSingle(dev, a.pa, 4 * 4096, 'to-device');
    const dst = m.dma.mapSingle(dev, b.pa, 4 * 4096, 'from-device');
    await dev.copy({ src: dmaAddr(src.addr + 3), dst: dmaAddr(dst.addr + 4101), len: 10000 });
    expect(same(m.ram.read(b.pa + 4101, 10000), data)).toBe(true);
  });

  it('invalidates cached pages on both sides of a 4 MiB IOVA boundary (where the IOTLB index hash changes)', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0', iotlbEntries: 1024 });
    const d = m.iommu.domainOf(dev)!;
    const a = m.ram.alloc(4 * 4096);
    const b = m.ram.alloc(4 * 4096);
    m.ram.write(a.pa, pattern(4 * 4096, 12));
    const EDGE = 0x1000000; // 16 MiB: pages 0xfff and 0x1000 hash into unrelated IOTLB sets
    d.map((EDGE - 2 * 4096) as never, a.pa, 4 * 4096, IOMMU_READ);
    d.map((2 * EDGE - 2 * 4096) as never, b.pa, 4 * 4096, IOMMU_WRITE);
    await dev.copy({ src: dmaAddr(EDGE - 2 * 4096), dst: dmaAddr(2 * EDGE - 2 * 4096), len: 4 * 4096 });
    expect(same(m.ram.read(b.pa, 4 * 4096), pattern(4 * 4096, 12))).toBe(true);
    expect(d.unmap((2 * EDGE - 2 * 4096) as never, 4 * 4096)).toBe(4 * 4096); // strict
    m.ram.fill(b.pa, 4 * 4096, 0);
    const c = await dev.submit(EDGE - 2 * 4096, 2 * EDGE - 2 * 4096, 4 * 4096, 0);
    expect(c.status).toBe('fault'); // no page of it survived in the IOTLB
    expect(allBytes(m.ram.read(b.pa, 4 * 4096), 0)).toBe(true);
  });

  it('counts IOTLB hits and misses', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const a = m.ram.alloc(4096);
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'bidirectional');
    await dev.fill({ dst: h.addr, len: 4096, value: 1 });
    const first = dev.counters();
    await dev.fill({ dst: h.addr, len: 4096, value: 2 });
    const second = dev.counters();
    expect(second.iotlbMisses).toBe(first.iotlbMisses); // everything was cached
    expect(second.iotlbHits).toBeGreaterThan(first.iotlbHits);
    expect(allBytes(m.ram.read(a.pa, 4096), 2)).toBe(true);
  });
});

describe('without translation', () => {
  it('hands out physical addresses and lets a device reach any RAM (the flat view)', async () => {
    const m = await machine({ ...small, iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const a = m.ram.alloc(8192, { above: 4 * GiB });
    const b = m.ram.alloc(8192, { below: 4 * GiB });
    const h = m.dma.mapSingle(dev, a.pa, 8192, 'to-device');
    expect(h.addr).toBe(a.pa);
    m.ram.write(a.pa, pattern(8192, 6));
    // b was never mapped: without an IOMMU nothing stops the device.
    await dev.copy({ src: h.addr, dst: dmaAddr(b.pa), len: 8192 });
    expect(same(m.ram.read(b.pa, 8192), pattern(8192, 6))).toBe(true);
    // Even a write into a to-device buffer goes through: no permissions without an IOMMU.
    await dev.copy({ src: dmaAddr(b.pa), dst: h.addr, len: 8 });
    expect(m.iommu.faults()).toEqual([]);
  });

  it('faults only outside RAM', async () => {
    const m = await machine({ ...small, iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const a = m.ram.alloc(4096);
    await expect(dev.copy({ src: dmaAddr(a.pa), dst: dmaAddr(2 * GiB), len: 16 })).rejects.toMatchObject({ code: 'EFAULT' });
    expect(m.iommu.faults()[0]).toMatchObject({ reason: 'out-of-range', addr: 2 * GiB, access: 'write' });
  });

  it('refuses to map a buffer beyond the device mask when nothing translates and there is no bounce pool', async () => {
    const m = await machine({ ...small, iommu: { enabled: false }, swiotlb: { size: 0 } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const a = m.ram.alloc(4096, { above: 4 * GiB });
    expect(() => m.dma.mapSingle(dev, a.pa, 4096, 'to-device')).toThrow(expect.objectContaining({ code: 'ERANGE' }));
  });
});

describe('bad input', () => {
  it('rejects unaligned, zero-length, overflowing, out-of-IOVA-space and overlapping maps', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const d = m.iommu.domainOf(dev)!;
    const a = m.ram.alloc(8192);
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(DmaError);
        return (e as DmaError).code;
      }
      return 'none';
    };
    const I = (n: number) => n as never;
    expect(code(() => d.map(I(0x10000 + 1), I(a.pa), 4096, 3))).toBe('EINVAL');
    expect(code(() => d.map(I(0x10000), I(a.pa), 0, 3))).toBe('EINVAL');
    expect(code(() => d.map(I(2 ** 48 - 4096), I(a.pa), 8192, 3))).toBe('ERANGE');
    expect(code(() => d.map(I(2 ** 48), I(a.pa), 4096, 3))).toBe('ERANGE');
    expect(code(() => d.map(I(0x10000), I(2 ** 40 - 4096), 8192, 3))).toBe('ERANGE');
    d.map(I(0x10000), I(a.pa), 8192, 3);
    expect(code(() => d.map(I(0x11000), I(a.pa), 4096, 3))).toBe('EEXIST');
    expect(d.iovaToPhys(I(0x11008))).toBe(a.pa + 4096 + 8);
    expect(d.unmap(I(0x10000), 8192)).toBe(8192);
  });

  it('rejects bad mapSingle arguments with a DmaError naming the device', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const a = m.ram.alloc(4096);
    expect(() => m.dma.mapSingle(dev, a.pa, 0, 'to-device')).toThrow(/EINVAL.*0000:00:03.0/);
    expect(() => m.dma.mapSingle(dev, a.pa, 4096, 'sideways' as never)).toThrow(/EINVAL.*direction/);
    expect(() => m.dma.mapSingle(dev, (64 * MiB) as never, 4096, 'to-device')).toThrow(/EFAULT.*0x04000000/);
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'to-device');
    m.dma.unmapSingle(dev, h);
    expect(() => m.dma.unmapSingle(dev, h)).toThrow(/EINVAL.*double unmap/);
  });

  it('rejects bad machine and device configs naming the field', async () => {
    await expect(Machine.create({ iommu: { invalidation: 'eager' as never } })).rejects.toThrow(/config\.iommu\.invalidation/);
    await expect(Machine.create({ ram: [{ base: 4096, size: 100 }] })).rejects.toThrow(/EINVAL/);
    await expect(Machine.create({ bogus: 1 } as never)).rejects.toThrow(/bogus/);
    const m = await machine();
    await expect(m.addDevice({ bdf: 'zz:03.0' })).rejects.toThrow(/device\.bdf/);
    await expect(m.addDevice({ bdf: '00:03.0', queueDepth: 3 })).rejects.toThrow(/device\.queueDepth/);
    await expect(m.addDevice({ bdf: '00:03.0', model: 'toaster' as never })).rejects.toThrow(/device\.model/);
    await m.addDevice({ bdf: '00:03.0' });
    await expect(m.addDevice({ bdf: '0000:00:03.0' })).rejects.toMatchObject({ code: 'EEXIST' });
  });

  it('rejects bad copy requests before they reach the device', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0' });
    await expect(dev.copy({ src: dmaAddr(0), dst: dmaAddr(0), len: 0 })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(dev.copy({ src: dmaAddr(-1), dst: dmaAddr(0), len: 1 })).rejects.toMatchObject({ code: 'EINVAL' });
    expect(dev.counters().descriptors).toBe(0);
  });

  it('reports a descriptor the device cannot address with its DMA mask', async () => {
    const m = await machine({ ...small, iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const a = m.ram.alloc(4096, { above: 4 * GiB });
    await expect(dev.copy({ src: dmaAddr(a.pa), dst: dmaAddr(0x1000), len: 16 })).rejects.toMatchObject({ code: 'EINVAL' });
  });
});

describe('lifecycle', () => {
  it('close() twice is harmless and leaves no worker running', async () => {
    const ports = () => process.getActiveResourcesInfo().filter((r) => r === 'MessagePort').length;
    const portsBefore = ports();
    const m = await Machine.create(small);
    const devs = [await m.addDevice({ bdf: '00:03.0' }), await m.addDevice({ bdf: '00:04.0' })];
    const before = m.stats();
    expect(before.liveMappings).toBe(4); // two rings per device
    expect(ports()).toBeGreaterThan(portsBefore); // each device's worker holds a port open
    await m.close();
    await m.close();
    expect(ports()).toBe(portsBefore); // every worker ended, nothing keeps the process alive
    expect(m.stats().liveMappings).toBe(0);
    expect(m.ram.pagesInUse()).toBe(0);
    expect(m.iommu.unit.pool.inUse()).toBe(0);
    for (const d of devs) await expect(d.info()).rejects.toMatchObject({ code: 'ESHUTDOWN' });
    await expect(m.addDevice({ bdf: '00:05.0' })).rejects.toMatchObject({ code: 'ESHUTDOWN' });
  });

  it('answers control-plane calls while its data loop runs', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const info = await dev.info();
    expect(info).toMatchObject({ name: '0000:00:03.0', model: 'copy-engine', state: 1, error: null });
  });
});

describe('RAM larger than a typed array can address', () => {
  for (const enabled of [true, false]) {
    it(`moves a transfer across a 1 GiB window boundary (IOMMU ${enabled ? 'on' : 'off'})`, async () => {
      // 5 GiB of guest RAM: the host commits only the pages that are touched.
      const m = await machine({ ram: [{ base: 0, size: 5 * GiB }], iommu: { enabled } });
      const dev = await m.addDevice({ bdf: '00:03.0' });
      const a = m.ram.alloc(8192, { above: GiB - 4096 }); // straddles the first window edge
      const b = m.ram.alloc(8192, { above: 4 * GiB + 100 * MiB });
      expect(a.pa).toBe(GiB - 4096);
      const data = pattern(8192, 11);
      m.ram.write(a.pa, data);
      const src = m.dma.mapSingle(dev, a.pa, 8192, 'to-device');
      const dst = m.dma.mapSingle(dev, b.pa, 8192, 'from-device');
      await dev.copy({ src: dmaAddr(src.addr + 5), dst: dmaAddr(dst.addr + 1), len: 8000 });
      expect(same(m.ram.read(b.pa + 1, 8000), data.subarray(5, 8005))).toBe(true);
    });
  }
});
