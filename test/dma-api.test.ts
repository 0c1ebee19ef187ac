import { describe, it, expect } from 'vitest';
import { Machine, GiB, MiB, KiB, type MachineConfig, type Device } from '../src/index.js';
import { pattern, same, allBytes, closeAfterEach } from './support.js';
const { machines } = closeAfterEach();

const small: MachineConfig = { ram: [{ base: 0, size: 16 * MiB }, { base: 4 * GiB, size: 16 * MiB }], swiotlb: { size: 1 * MiB } };
async function machine(cfg: MachineConfig = small): Promise<Machine> {
  const m = await Machine.create({ ...small, ...cfg });
  machines.push(m);
  return m;
}

/** No leak left behind: mappings, bounce slots, and (with an IOMMU) IOVA pages. */
function expectNothingMapped(m: Machine, dev: Device): void {
  expect(m.stats().liveMappings).toBe(2 * m.devices().length); // each device's two rings
  expect(m.stats().bounceSlotsInUse).toBe(0);
  const d = m.iommu.domainOf(dev);
  if (d) {
    d.iova.flushCaches();
    expect(d.iova.pagesInUse()).toBe(2); // the device's two rings
  }
}

describe('a 32-bit device and a buffer above 4 GiB (the article\'s case)', () => {
  it('without an IOMMU: bounces through SWIOTLB below 4 GiB and the data arrives intact both ways', async () => {
    const m = await machine({ iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const a = m.ram.alloc(8192, { above: 4 * GiB });
    const b = m.ram.alloc(8192, { above: 4 * GiB });
    const data = pattern(8192, 1);
    m.ram.write(a.pa, data);
    const src = m.dma.mapSingle(dev, a.pa, 8192, 'to-device');
    const dst = m.dma.mapSingle(dev, b.pa, 8192, 'from-device');
    expect(src).toMatchObject({ bounced: true });
    expect(dst).toMatchObject({ bounced: true });
    expect(src.addr + 8192).toBeLessThanOrEqual(4 * GiB);
    expect(dst.addr + 8192).toBeLessThanOrEqual(4 * GiB);
    expect(await dev.copy({ src: src.addr, dst: dst.addr, len: 8192 })).toMatchObject({ status: 'ok' });
    m.dma.unmapSingle(dev, src);
    m.dma.unmapSingle(dev, dst); // from-device: copied back now
    expect(same(m.ram.read(b.pa, 8192), data)).toBe(true);
    // To the slot at map (both directions, so a from-device slot holds no stale data) and back at unmap.
    const s = m.stats();
    expect(s.bouncedBytes).toBeGreaterThanOrEqual(2 * 8192);
    expect(s.dma.bouncedMaps).toBe(2);
    expectNothingMapped(m, dev);
  });

  it('with an IOMMU: maps an IOVA below 4 GiB to the high buffer and bounces nothing', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const a = m.ram.alloc(8192, { above: 4 * GiB });
    const b = m.ram.alloc(8192, { above: 4 * GiB });
    const data = pattern(8192, 2);
    m.ram.write(a.pa, data);
    const src = m.dma.mapSingle(dev, a.pa, 8192, 'to-device');
    const dst = m.dma.mapSingle(dev, b.pa, 8192, 'from-device');
    expect(src.bounced || dst.bounced).toBe(false);
    expect(src.addr + 8192).toBeLessThanOrEqual(4 * GiB);
    expect(await dev.copy({ src: src.addr, dst: dst.addr, len: 8192 })).toMatchObject({ status: 'ok' });
    expect(same(m.ram.read(b.pa, 8192), data)).toBe(true); // already there: no copy back needed
    m.dma.unmapSingle(dev, src);
    m.dma.unmapSingle(dev, dst);
    expect(m.stats().bouncedBytes).toBe(0);
    expect(m.stats().dma.iommuMaps).toBeGreaterThanOrEqual(2);
    expectNothingMapped(m, dev);
  });

  it('maps a reachable buffer directly (DMA address = PA) without an IOMMU', async () => {
    const m = await machine({ iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const a = m.ram.alloc(4096, { below: 4 * GiB });
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'bidirectional');
    expect(h).toMatchObject({ addr: a.pa, bounced: false });
    m.dma.unmapSingle(dev, h);
    expect(m.stats().bouncedBytes).toBe(0);
  });

  it('bounces even reachable buffers with swiotlb force', async () => {
    const m = await machine({ iommu: { enabled: false }, swiotlb: { size: 1 * MiB, force: true } });
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const a = m.ram.alloc(4096, { below: 4 * GiB });
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'to-device');
    expect(h.bounced).toBe(true);
    expect(h.addr).not.toBe(a.pa);
    m.dma.unmapSingle(dev, h);
  });
});

describe('sync rules of bounced mappings', () => {
  it('from-device data reaches the CPU only at syncForCpu (or unmap)', async () => {
    const m = await machine({ iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const b = m.ram.alloc(4096, { above: 4 * GiB });
    m.ram.fill(b.pa, 4096, 0x11);
    const h = m.dma.mapSingle(dev, b.pa, 4096, 'from-device');
    expect(await dev.fill({ dst: h.addr, len: 4096, value: 0x5a })).toMatchObject({ status: 'ok' });
    expect(allBytes(m.ram.read(b.pa, 4096), 0x11)).toBe(true); // still in the slot
    m.dma.syncForCpu(dev, h);
    expect(allBytes(m.ram.read(b.pa, 4096), 0x5a)).toBe(true);
    m.dma.unmapSingle(dev, h);
  });

  it('CPU writes after map reach the device only at syncForDevice', async () => {
    const m = await machine({ iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const a = m.ram.alloc(4096, { above: 4 * GiB });
    const out = m.ram.alloc(4096, { below: 4 * GiB });
    m.ram.fill(a.pa, 4096, 0x22);
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'to-device');
    const o = m.dma.mapSingle(dev, out.pa, 4096, 'from-device');
    m.ram.fill(a.pa, 4096, 0x33); // after map: the slot still has 0x22
    await dev.copy({ src: h.addr, dst: o.addr, len: 4096 });
    expect(allBytes(m.ram.read(out.pa, 4096), 0x22)).toBe(true);
    m.dma.syncForDevice(dev, h);
    await dev.copy({ src: h.addr, dst: o.addr, len: 4096 });
    expect(allBytes(m.ram.read(out.pa, 4096), 0x33)).toBe(true);
    m.dma.unmapSingle(dev, h);
    m.dma.unmapSingle(dev, o);
  });

  it('a to-device unmap copies nothing back', async () => {
    const m = await machine({ iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const a = m.ram.alloc(4096, { above: 4 * GiB });
    m.ram.fill(a.pa, 4096, 0x44);
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'to-device');
    await dev.fill({ dst: h.addr, len: 4096, value: 0x99 }); // a (buggy) device write into its read buffer
    m.dma.unmapSingle(dev, h);
    expect(allBytes(m.ram.read(a.pa, 4096), 0x44)).toBe(true);
  });
});

describe('scatter-gather', () => {
  async function twoScatteredPages(enabled: boolean) {
    const m = await machine({ iommu: { enabled } });
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const p1 = m.ram.alloc(4096);
    m.ram.alloc(4096); // keeps the two apart
    const p2 = m.ram.alloc(4096);
    expect(Math.abs(p2.pa - p1.pa)).toBeGreaterThan(4096);
    return { m, dev, p1, p2 };
  }

  it('makes two scattered 4 KiB pages one 8 KiB segment under an IOMMU; one descriptor moves it all', async () => {
    const { m, dev, p1, p2 } = await twoScatteredPages(true);
    const data = pattern(8192, 3);
    m.ram.write(p1.pa, data.subarray(0, 4096));
    m.ram.write(p2.pa, data.subarray(4096));
    const sg = m.dma.mapSg(dev, [p1, { pa: p2.pa, len: 4096 }].map((p) => ({ pa: p.pa, len: 4096 })), 'to-device');
    expect(sg.segments).toHaveLength(1);
    expect(sg.segments[0].len).toBe(8192);
    const out = m.ram.alloc(8192);
    const o = m.dma.mapSingle(dev, out.pa, 8192, 'from-device');
    expect(await dev.copy({ src: sg.segments[0].addr, dst: o.addr, len: 8192 })).toMatchObject({ status: 'ok', bytes: 8192 });
    expect(same(m.ram.read(out.pa, 8192), data)).toBe(true);
    m.dma.unmapSg(dev, sg);
    m.dma.unmapSingle(dev, o);
    expectNothingMapped(m, dev);
  });

  it('keeps two scattered pages two segments without translation', async () => {
    const { m, dev, p1, p2 } = await twoScatteredPages(false);
    const sg = m.dma.mapSg(dev, [{ pa: p1.pa, len: 4096 }, { pa: p2.pa, len: 4096 }], 'to-device');
    expect(sg.segments).toEqual([
      { addr: p1.pa, len: 4096 },
      { addr: p2.pa, len: 4096 },
    ]);
    m.dma.unmapSg(dev, sg);
  });

  it('merges physically adjacent buffers without translation', async () => {
    const m = await machine({ iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const a = m.ram.alloc(8192);
    const sg = m.dma.mapSg(dev, [{ pa: a.pa, len: 4096 }, { pa: a.pa + 4096, len: 4096 }], 'to-device');
    expect(sg.segments).toEqual([{ addr: a.pa, len: 8192 }]);
    m.dma.unmapSg(dev, sg);
  });

  it('splits segments at the device\'s max segment size', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0', maxSegmentSize: 8192 });
    const pages = [0, 1, 2, 3].map(() => m.ram.alloc(4096));
    const sg = m.dma.mapSg(dev, pages.map((p) => ({ pa: p.pa, len: 4096 })), 'bidirectional');
    expect(sg.segments.map((s) => s.len)).toEqual([8192, 8192]);
    expect(sg.segments[1].addr).toBe(sg.segments[0].addr + 8192);
    m.dma.unmapSg(dev, sg);
    expectNothingMapped(m, dev);
  });

  it('never lets a segment cross the device\'s segment boundary', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0', segmentBoundaryMask: 0x3fff });
    const pages = [8192, 4096, 8192].map((n) => m.ram.alloc(n));
    const sg = m.dma.mapSg(dev, pages.map((p) => ({ pa: p.pa, len: p.size })), 'to-device');
    for (const s of sg.segments) expect(Math.floor(s.addr / 0x4000)).toBe(Math.floor((s.addr + s.len - 1) / 0x4000));
    expect(sg.segments.reduce((n, s) => n + s.len, 0)).toBe(20480);
    m.dma.unmapSg(dev, sg);
    expectNothingMapped(m, dev);
  });

  it('keeps an entry that starts inside its page a segment of its own, at its offset', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const a = m.ram.alloc(4096);
    const b = m.ram.alloc(8192);
    const sg = m.dma.mapSg(dev, [{ pa: a.pa, len: 4096 }, { pa: b.pa + 100, len: 5000 }], 'to-device');
    expect(sg.segments).toHaveLength(2);
    expect(sg.segments[1].addr % 4096).toBe(100);
    expect(sg.segments[1].len).toBe(5000);
    m.dma.unmapSg(dev, sg);
    expectNothingMapped(m, dev);
  });

  it('bounces the entries a 32-bit device cannot reach and copies them back at unmapSg', async () => {
    const m = await machine({ iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const hi = m.ram.alloc(4096, { above: 4 * GiB });
    const lo = m.ram.alloc(4096, { below: 4 * GiB });
    const sg = m.dma.mapSg(dev, [{ pa: lo.pa, len: 4096 }, { pa: hi.pa, len: 4096 }], 'from-device');
    expect(sg.entries.map((e) => e.bounced)).toEqual([false, true]);
    for (const s of sg.segments) await dev.fill({ dst: s.addr, len: s.len, value: 0x77 });
    m.dma.unmapSg(dev, sg);
    expect(allBytes(m.ram.read(hi.pa, 4096), 0x77)).toBe(true);
    expect(allBytes(m.ram.read(lo.pa, 4096), 0x77)).toBe(true);
    expectNothingMapped(m, dev);
  });
});

describe('coherent allocations', () => {
  it('come from below the mask without an IOMMU and are shared without syncs', async () => {
    const m = await machine({ iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const c = m.dma.allocCoherent(dev, 6000);
    expect(c.size).toBe(8192);
    expect(c.addr).toBe(c.cpuAddr);
    expect(c.addr + c.size).toBeLessThanOrEqual(4 * GiB);
    await dev.fill({ dst: c.addr, len: 8192, value: 0x5c });
    expect(allBytes(m.ram.read(c.cpuAddr, 8192), 0x5c)).toBe(true);
    const pages = m.ram.pagesInUse();
    m.dma.freeCoherent(dev, c);
    expect(m.ram.pagesInUse()).toBe(pages - 2);
  });

  it('are mapped bidirectionally at an IOVA under an IOMMU', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const c = m.dma.allocCoherent(dev, 4096);
    expect(c.addr + c.size).toBeLessThanOrEqual(4 * GiB);
    m.ram.fill(c.cpuAddr, 2048, 0x12);
    // The device reads the first half and writes the second: both directions are allowed.
    expect(await dev.copy({ src: c.addr, dst: c.addr + 2048, len: 2048 })).toMatchObject({ status: 'ok' });
    expect(allBytes(m.ram.read(c.cpuAddr + 2048, 2048), 0x12)).toBe(true);
    expect(m.iommu.faults()).toEqual([]);
    m.dma.freeCoherent(dev, c);
    expectNothingMapped(m, dev);
  });
});

describe('bounce pool limits', () => {
  it('gives ENOSPC when the pool is full, and the next mapping after an unmap succeeds', async () => {
    const m = await machine({ iommu: { enabled: false }, swiotlb: { size: 512 * KiB } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const big = m.ram.alloc(256 * KiB, { above: 4 * GiB });
    const h1 = m.dma.mapSingle(dev, big.pa, 256 * KiB, 'to-device');
    const h2 = m.dma.mapSingle(dev, big.pa, 256 * KiB, 'to-device');
    expect(() => m.dma.mapSingle(dev, big.pa, 4096, 'to-device')).toThrow(expect.objectContaining({ code: 'ENOSPC' }));
    m.dma.unmapSingle(dev, h1);
    const h3 = m.dma.mapSingle(dev, big.pa, 4096, 'to-device');
    m.dma.unmapSingle(dev, h3);
    m.dma.unmapSingle(dev, h2);
    expectNothingMapped(m, dev);
  });

  it('refuses a mapping larger than 128 slots', async () => {
    const m = await machine({ iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const big = m.ram.alloc(512 * KiB, { above: 4 * GiB });
    expect(() => m.dma.mapSingle(dev, big.pa, 256 * KiB + 1, 'to-device')).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(m.stats().bounceSlotsInUse).toBe(0);
  });

  it('without a pool, refuses an unreachable buffer with ERANGE naming the device', async () => {
    const m = await machine({ iommu: { enabled: false }, swiotlb: { size: 0 } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const a = m.ram.alloc(4096, { above: 4 * GiB });
    expect(() => m.dma.mapSingle(dev, a.pa, 4096, 'to-device')).toThrow(/ERANGE.*00:03\.0.*32-bit/);
  });
});

describe('unmap with a wrong size or address (caught before anything changes)', () => {
  it('refuses an unmap shorter than the mapping and leaves the mapping whole', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const a = m.ram.alloc(4 * 4096);
    const h = m.dma.mapSingle(dev, a.pa, 4 * 4096, 'to-device');
    expect(() => m.dma.unmapSingle(dev, { ...h, len: 3 * 4096 })).toThrow(/EINVAL.*wrong size/);
    const d = m.iommu.domainOf(dev)!;
    for (let i = 0; i < 4; i++) expect(d.iovaToPhys((h.addr + i * 4096) as never)).toBe(a.pa + i * 4096);
    m.dma.unmapSingle(dev, h);
    expectNothingMapped(m, dev);
  });

  it('refuses an unmap longer than the mapping without touching the mapping next to it', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const a = m.ram.alloc(4096);
    const b = m.ram.alloc(4096);
    const ha = m.dma.mapSingle(dev, a.pa, 4096, 'to-device');
    const hb = m.dma.mapSingle(dev, b.pa, 4096, 'to-device');
    const [lo, hi] = ha.addr < hb.addr ? [ha, hb] : [hb, ha];
    expect(hi.addr - lo.addr).toBe(4096); // neighbours, so a 2-page unmap of the lower one would reach the other
    expect(() => m.dma.unmapSingle(dev, { ...lo, len: 8192 })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    const d = m.iommu.domainOf(dev)!;
    expect(d.iovaToPhys(hi.addr as never)).not.toBeNull();
    m.dma.unmapSingle(dev, ha);
    m.dma.unmapSingle(dev, hb);
    expectNothingMapped(m, dev);
  });

  it('refuses a double unmap under the IOMMU in lazy mode too, changing nothing', async () => {
    const m = await machine({ iommu: { invalidation: 'lazy', flushTimeoutMs: 0 } });
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const a = m.ram.alloc(4096);
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'to-device');
    m.dma.unmapSingle(dev, h);
    expect(() => m.dma.unmapSingle(dev, h)).toThrow(/EINVAL.*double unmap/);
    m.iommu.flush();
    expectNothingMapped(m, dev);
  });

  it('refuses freeCoherent with another CPU address, freeing nothing', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const c = m.dma.allocCoherent(dev, 4096);
    const other = m.ram.alloc(4096);
    const pages = m.ram.pagesInUse();
    expect(() => m.dma.freeCoherent(dev, { ...c, cpuAddr: other.pa })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(m.ram.pagesInUse()).toBe(pages);
    m.dma.freeCoherent(dev, c);
    m.ram.free(other);
    expectNothingMapped(m, dev);
  });
});

describe('more DMA API rules', () => {
  it('hands out zeroed coherent memory, as dma_alloc_coherent does', async () => {
    for (const enabled of [true, false]) {
      const m = await machine({ iommu: { enabled } });
      const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
      const dirty = m.ram.alloc(64 * 4096, { below: 4 * GiB });
      m.ram.fill(dirty.pa, dirty.size, 0xee);
      m.ram.free(dirty);
      const c = m.dma.allocCoherent(dev, 64 * 4096);
      expect(allBytes(m.ram.read(c.cpuAddr, c.size), 0)).toBe(true);
      m.dma.freeCoherent(dev, c);
    }
  });

  it('lets a bounced bidirectional mapping be synced in either direction', async () => {
    const m = await machine({ iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const a = m.ram.alloc(4096, { above: 4 * GiB });
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'bidirectional');
    await dev.fill({ dst: h.addr, len: 4096, value: 0x3c });
    m.dma.syncForCpu(dev, h.addr, 4096, 'from-device');
    expect(allBytes(m.ram.read(a.pa, 4096), 0x3c)).toBe(true);
    m.dma.syncForDevice(dev, h.addr, 4096, 'to-device');
    m.dma.unmapSingle(dev, h);
  });

  it('refuses to map the bounce pool\'s own memory directly', async () => {
    const m = await machine({ iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const start = m.dma.swiotlb!.start;
    expect(() => m.dma.mapSingle(dev, start, 4096, 'to-device')).toThrow(/EINVAL.*SWIOTLB pool/);
  });

  it('refuses syncs with a bad length or direction', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const a = m.ram.alloc(4096);
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'to-device');
    expect(() => m.dma.syncForCpu(dev, h, -5)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(() => m.dma.syncForCpu(dev, h, 10, 'sideways' as never)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    m.dma.unmapSingle(dev, h);
  });
});
