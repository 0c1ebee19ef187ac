/**
 * Resource exhaustion through the public API (issue 6, resource limits): RAM, IOVA space, the
 * bounce pool, the page-table pool and the fault ring each run out on a small machine; each gives
 * a DmaError with its stable code and a message naming the resource, the device and the size, a
 * failed operation leaves nothing behind, and after one thing is freed the next normal operation
 * — device DMA included — succeeds. Also: a full device queue (submit waits), VFIO's
 * dma_entry_limit and DMA-API debugging's entry table.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { Machine, MiB, GiB, KiB, DmaError, dmaAddr, pa as physAddr, iova, type Device, type MachineConfig, type Pa } from '../src/index.js';
import { pattern, same, allBytes } from './support.js';

const PAGE = 4096;
const open: Machine[] = [];
async function machine(config: MachineConfig): Promise<Machine> {
  const m = await Machine.create(config);
  open.push(m);
  return m;
}
afterEach(async () => {
  await Promise.all(open.splice(0).map((m) => m.close()));
});

/** The DmaError `f` throws (fails the test if it throws anything else or nothing). */
function thrown(f: () => unknown): DmaError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(DmaError);
    return e as DmaError;
  }
  throw new Error('expected a DmaError, nothing was thrown');
}

/** Every PTE of the device's domain, as [iova, pa, size, prot]. */
function leaves(m: Machine, dev: Device): number[][] {
  const out: number[][] = [];
  m.iommu.domainOf(dev)?.pt?.forEachMapping((iova, pa, size, prot) => out.push([iova, pa, size, prot]));
  return out;
}

/** What a failed operation must not change and what a freed machine must come back to. */
function usage(m: Machine) {
  const s = m.stats();
  return {
    liveMappings: s.liveMappings,
    ramPagesInUse: s.ramPagesInUse,
    pageTablePages: s.pageTablePages,
    retiredTables: m.iommu.unit.pool.retiredCount(),
    bounceSlotsInUse: s.bounceSlotsInUse,
    iovaPagesInUse: s.iovaPagesInUse,
  };
}

/**
 * One normal operation with device DMA: a page is mapped bidirectionally, the device copies its
 * first half onto its second half, the CPU sees it. Takes one RAM page, one IOVA page or one
 * bounce mapping, and gives them back.
 */
async function dmaWorks(m: Machine, dev: Device, alloc: { above?: number } = {}): Promise<void> {
  const buf = m.ram.alloc(PAGE, alloc);
  try {
    const data = pattern(PAGE / 2, buf.pa);
    m.ram.write(buf.pa, data);
    m.ram.fill(buf.pa + PAGE / 2, PAGE / 2, 0);
    const h = m.dma.mapSingle(dev, buf.pa, PAGE, 'bidirectional');
    try {
      expect(await dev.copy({ src: h.addr, dst: dmaAddr(h.addr + PAGE / 2), len: PAGE / 2 })).toMatchObject({ status: 'ok' });
      m.dma.syncForCpu(dev, h);
    } finally {
      m.dma.unmapSingle(dev, h);
    }
    expect(same(m.ram.read(buf.pa + PAGE / 2, PAGE / 2), data)).toBe(true);
  } finally {
    m.ram.free(buf);
  }
}

describe('RAM exhaustion', () => {
  const config: MachineConfig = { ram: [{ base: 0, size: 1 * MiB }], swiotlb: { size: 0 } };

  it('ram.alloc beyond the free RAM is ENOMEM naming RAM and the pages asked for, and changes nothing', async () => {
    const m = await machine(config);
    const taken = [];
    for (;;) {
      try {
        taken.push(m.ram.alloc(PAGE));
      } catch (e) {
        expect((e as DmaError).code).toBe('ENOMEM');
        break;
      }
    }
    const before = usage(m);
    const e = thrown(() => m.ram.alloc(2 * PAGE));
    expect(e.code).toBe('ENOMEM');
    expect(e.message).toMatch(/^ENOMEM: ram\.alloc: no 2 contiguous free page\(s\).*\(256 of 256 pages in use\)/);
    expect(usage(m)).toEqual(before);
  });

  it('after RAM ran out, freeing one page makes the next allocation and a device DMA through it work', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const baseline = usage(m);
    const taken = [];
    for (;;) {
      try {
        taken.push(m.ram.alloc(PAGE));
      } catch {
        break;
      }
    }
    expect(m.stats().ramPagesInUse).toBe(256);
    m.ram.free(taken.pop()!);
    await dmaWorks(m, dev);
    for (const b of taken) m.ram.free(b);
    expect(usage(m)).toEqual(baseline);
  });

  it('allocCoherent with RAM exhausted is ENOMEM naming the device and the bytes asked for, taking no IOVA or page-table page', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const taken = [];
    for (;;) {
      try {
        taken.push(m.ram.alloc(PAGE));
      } catch {
        break;
      }
    }
    const before = usage(m);
    const ptes = leaves(m, dev);
    const e = thrown(() => m.dma.allocCoherent(dev, 3 * PAGE));
    expect(e.code).toBe('ENOMEM');
    expect(e.message).toMatch(/^ENOMEM: dma: allocCoherent of 12288 bytes for device 0000:00:03\.0: ram\.alloc: no 3 contiguous free page/);
    expect(usage(m)).toEqual(before);
    expect(leaves(m, dev)).toEqual(ptes);
    for (const b of taken.splice(0, 3)) m.ram.free(b);
    const c = m.dma.allocCoherent(dev, 3 * PAGE);
    m.dma.freeCoherent(dev, c);
    for (const b of taken) m.ram.free(b);
  });
});

describe('IOVA space exhaustion (config.iommu.apertureEnd)', () => {
  // 64 pages of IOVA space: page 0 is never handed out, the device's two rings take two.
  const config: MachineConfig = { ram: [{ base: 0, size: 8 * MiB }], swiotlb: { size: 0 }, iommu: { apertureEnd: 256 * KiB - 1 } };
  const FREE_PAGES = 61;
  /** Maps one page until the IOVA space is full; returns the mappings. */
  const fill = (m: Machine, dev: Device, pa: Pa) => {
    const maps = [];
    for (;;) {
      try {
        maps.push(m.dma.mapSingle(dev, pa, PAGE, 'to-device'));
      } catch (e) {
        expect((e as DmaError).code).toBe('ENOSPC');
        return maps;
      }
    }
  };

  it('refuses an aperture end that does not end a page, naming the field', async () => {
    await expect(Machine.create({ iommu: { apertureEnd: 64 * KiB } })).rejects.toThrow(/^EINVAL: config\.iommu\.apertureEnd: must be the last byte of a page.*\(got 65536\)/);
  });

  it('refuses an aperture end beyond 4 GiB, naming the field', async () => {
    await expect(Machine.create({ iommu: { apertureEnd: 8 * GiB - 1 } })).rejects.toThrow(/^EINVAL: config\.iommu\.apertureEnd/);
  });

  it('no IOVA is handed out at or beyond the aperture end, whatever the DMA mask', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 64 });
    const buf = m.ram.alloc(PAGE);
    const maps = fill(m, dev, buf.pa);
    expect(maps).toHaveLength(FREE_PAGES);
    expect(Math.max(...maps.map((h) => h.addr + h.len))).toBeLessThanOrEqual(256 * KiB);
  });

  it('mapSingle in a full IOVA space is ENOSPC naming the IOVA space, the device and the pages, and changes nothing', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const buf = m.ram.alloc(PAGE);
    fill(m, dev, buf.pa);
    const before = usage(m);
    const ptes = leaves(m, dev);
    const e = thrown(() => m.dma.mapSingle(dev, buf.pa, 100, 'to-device'));
    expect(e.code).toBe('ENOSPC');
    expect(e.message).toMatch(/^ENOSPC: iova: no free 1-page range below 0x00040000 for 0000:00:03\.0 \(63 of 64 IOVA pages in use/);
    expect(usage(m)).toEqual(before);
    expect(leaves(m, dev)).toEqual(ptes);
  });

  it('after the IOVA space ran out, one unmap makes the next map and a device DMA through it work, and everything comes back', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const baseline = usage(m);
    const buf = m.ram.alloc(PAGE);
    const maps = fill(m, dev, buf.pa);
    m.dma.unmapSingle(dev, maps.pop()!);
    await dmaWorks(m, dev);
    for (const h of maps) m.dma.unmapSingle(dev, h);
    m.ram.free(buf);
    expect(usage(m)).toEqual(baseline);
  });

  it('a mapSg whose one IOVA range does not fit is ENOSPC and maps none of its entries', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const bufs = [0, 1, 2].map(() => m.ram.alloc(4 * PAGE));
    const maps = fill(m, dev, bufs[0].pa);
    for (const h of maps.splice(0, 12)) m.dma.unmapSingle(dev, h); // 12 pages free, but scattered
    const before = usage(m);
    const ptes = leaves(m, dev);
    const e = thrown(() => m.dma.mapSg(dev, bufs.map((b) => ({ pa: b.pa, len: 4 * PAGE })), 'from-device'));
    expect(e.code).toBe('ENOSPC');
    expect(e.message).toMatch(/iova: no free 12-page range \(rounded to 16\) below 0x00040000 for 0000:00:03\.0/);
    expect(usage(m)).toEqual(before);
    expect(leaves(m, dev)).toEqual(ptes);
    for (const h of maps) m.dma.unmapSingle(dev, h);
    const sg = m.dma.mapSg(dev, bufs.map((b) => ({ pa: b.pa, len: 4 * PAGE })), 'from-device');
    expect(sg.segments).toHaveLength(1);
    m.dma.unmapSg(dev, sg);
  });

  it('allocCoherent with RAM but no IOVA left is ENOSPC and gives the RAM it took back', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const buf = m.ram.alloc(PAGE);
    const maps = fill(m, dev, buf.pa);
    const before = usage(m);
    const ptes = leaves(m, dev);
    const e = thrown(() => m.dma.allocCoherent(dev, 2 * PAGE));
    expect(e.code).toBe('ENOSPC');
    expect(e.message).toMatch(/iova: no free 2-page range below 0x00040000 for 0000:00:03\.0/);
    expect(usage(m)).toEqual(before);
    expect(leaves(m, dev)).toEqual(ptes);
    for (const h of maps.splice(0)) m.dma.unmapSingle(dev, h);
    const c = m.dma.allocCoherent(dev, 2 * PAGE);
    m.dma.freeCoherent(dev, c);
  });
});

describe('bounce pool exhaustion (SWIOTLB)', () => {
  // The smallest pool: one 256 KiB segment of 128 slots, one area.
  const config: MachineConfig = { iommu: { enabled: false }, swiotlb: { size: 256 * KiB, areas: 1 } };

  it('a bounced mapSingle in a full pool is ENOSPC naming the pool, the device and the bytes, and changes nothing', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const high = m.ram.alloc(256 * KiB, { above: 4 * GiB });
    const h = m.dma.mapSingle(dev, high.pa, 256 * KiB, 'to-device');
    const before = usage(m);
    const e = thrown(() => m.dma.mapSingle(dev, high.pa, 6000, 'from-device'));
    expect(e.code).toBe('ENOSPC');
    expect(e.message).toMatch(/^ENOSPC: swiotlb: buffer is full: no 3 contiguous slot\(s\) for 6000 bytes at PA 0x\w+ for device 0000:00:03\.0 \(128 of 128 slots in use/);
    expect(usage(m)).toEqual(before);
    m.dma.unmapSingle(dev, h);
  });

  it('after the pool ran out, one unmap makes the next bounced map and a device DMA through it work', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const baseline = usage(m);
    const high = m.ram.alloc(256 * KiB, { above: 4 * GiB });
    const maps = [0, 1, 2, 3].map(() => m.dma.mapSingle(dev, high.pa, 64 * KiB, 'to-device'));
    expect(() => m.dma.mapSingle(dev, high.pa, PAGE, 'to-device')).toThrow(expect.objectContaining({ code: 'ENOSPC' }));
    m.dma.unmapSingle(dev, maps.pop()!);
    await dmaWorks(m, dev, { above: 4 * GiB });
    expect(m.stats().dma.bouncedMaps).toBeGreaterThanOrEqual(5);
    for (const h of maps) m.dma.unmapSingle(dev, h);
    m.ram.free(high);
    expect(usage(m)).toEqual(baseline);
  });

  it('an sg list whose 3rd entry finds no slot is ENOSPC and gives back the slots of the first two', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const high = m.ram.alloc(256 * KiB, { above: 4 * GiB });
    const held = m.dma.mapSingle(dev, high.pa, 240 * KiB, 'to-device'); // 120 slots: 8 left (16 KiB)
    const bufs = [0, 1, 2].map(() => m.ram.alloc(8 * KiB, { above: 4 * GiB }));
    const before = usage(m);
    const e = thrown(() => m.dma.mapSg(dev, bufs.map((b) => ({ pa: b.pa, len: 8 * KiB })), 'to-device'));
    expect(e.code).toBe('ENOSPC');
    expect(e.message).toMatch(/swiotlb: buffer is full: no 4 contiguous slot\(s\) for 8192 bytes at PA .* for device 0000:00:03\.0 \(8 of 128 slots free|swiotlb: buffer is full: no 4 contiguous slot\(s\) for 8192 bytes at PA .* for device 0000:00:03\.0 \(128 of 128 slots in use/);
    expect(usage(m)).toEqual(before);
    // The first two fit again now: their slots are free.
    const sg = m.dma.mapSg(dev, bufs.slice(0, 2).map((b) => ({ pa: b.pa, len: 8 * KiB })), 'to-device');
    m.dma.unmapSg(dev, sg);
    m.dma.unmapSingle(dev, held);
  });

  it('a failed bounced sg map copies nothing back into the entries it had bounced (as DMA_ATTR_SKIP_CPU_SYNC)', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const high = m.ram.alloc(256 * KiB, { above: 4 * GiB });
    const held = m.dma.mapSingle(dev, high.pa, 240 * KiB, 'to-device');
    const bufs = [0, 1, 2].map(() => m.ram.alloc(8 * KiB, { above: 4 * GiB }));
    const bounced = m.stats().bouncedBytes;
    expect(() => m.dma.mapSg(dev, bufs.map((b) => ({ pa: b.pa, len: 8 * KiB })), 'from-device')).toThrow(expect.objectContaining({ code: 'ENOSPC' }));
    // Map copies each original into its slot (Linux ≥ 5.18); the rollback must not copy them back.
    expect(m.stats().bouncedBytes - bounced).toBe(16 * KiB);
    m.dma.unmapSingle(dev, held);
  });
});

describe('page-table pool exhaustion (config.iommu.tables)', () => {
  // The domain's root and the three tables under the rings' IOVA (just below 4 GiB): 4 tables.
  // One more is left, enough for the 4 KiB pages of one more 2 MiB IOVA region.
  const config: MachineConfig = { ram: [{ base: 0, size: 16 * MiB }], swiotlb: { size: 0 }, iommu: { tables: 5 } };
  /** A buffer whose PA is 4 KiB but not 2 MiB aligned: mapped with 4 KiB pages, never a block. */
  const unaligned = (m: Machine, size: number) => {
    const b = m.ram.alloc(size + PAGE, { align: 2 * MiB });
    return { buf: b, pa: physAddr(b.pa + PAGE) };
  };
  /**
   * Takes the 2 MiB IOVA region below the rings' with one block (no table needed), so that the
   * next range of more than 512 pages straddles two fresh regions: [0xff800000, 0xffa00000] …
   */
  const spacer = (m: Machine, dev: Device) => {
    const b = m.ram.alloc(2 * MiB, { align: 2 * MiB });
    const h = m.dma.mapSingle(dev, b.pa, 2 * MiB, 'to-device');
    expect(h.addr).toBe(0xffc0_0000);
    return h;
  };

  it('a map that needs two more tables than the pool has left is ENOMEM naming the device and the size, and changes nothing', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    spacer(m, dev);
    expect(m.stats().pageTablePages).toBe(4);
    const { pa } = unaligned(m, 2 * MiB + PAGE);
    const before = usage(m);
    const ptes = leaves(m, dev);
    // 513 pages in a 4 MiB-aligned IOVA range: the first 512 fill the last table, page 513 finds none.
    const e = thrown(() => m.dma.mapSingle(dev, pa, 2 * MiB + PAGE, 'to-device'));
    expect(e.code).toBe('ENOMEM');
    expect(e.message).toMatch(/^ENOMEM: dma: map of 2101248 bytes at PA 0x\w+ for device 0000:00:03\.0: domain \d+: map at 0x\w+: no page-table page for a level-3 table \(ENOMEM: table pool: all 5 page-table pages/);
    expect(usage(m)).toEqual(before);
    expect(leaves(m, dev)).toEqual(ptes);
  });

  it('the table a failed map installed goes back to the pool, so the next map that needs one table succeeds and DMAs', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    spacer(m, dev);
    const { pa } = unaligned(m, 2 * MiB + PAGE);
    expect(() => m.dma.mapSingle(dev, pa, 2 * MiB + PAGE, 'to-device')).toThrow(expect.objectContaining({ code: 'ENOMEM' }));
    expect(m.iommu.unit.pool.retiredCount()).toBe(0);
    // 512 pages: one 2 MiB-aligned IOVA region, one new table.
    const h = m.dma.mapSingle(dev, pa, 2 * MiB, 'bidirectional');
    expect(m.stats().pageTablePages).toBe(5);
    m.ram.write(pa, pattern(PAGE, 1));
    expect(await dev.copy({ src: h.addr, dst: dmaAddr(h.addr + 2 * MiB - PAGE), len: PAGE })).toMatchObject({ status: 'ok' });
    expect(same(m.ram.read(pa + 2 * MiB - PAGE, PAGE), pattern(PAGE, 1))).toBe(true);
    m.dma.unmapSingle(dev, h);
  });

  it('a mapSg whose second entry runs out of tables is ENOMEM and leaves no PTE and no table of the first entry behind', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    spacer(m, dev);
    const small = m.ram.alloc(PAGE);
    const { pa } = unaligned(m, 2 * MiB);
    const before = usage(m);
    const ptes = leaves(m, dev);
    // One IOVA range of 513 pages: entry 0 takes the last table, entry 1 needs one more.
    const e = thrown(() => m.dma.mapSg(dev, [{ pa: small.pa, len: PAGE }, { pa, len: 2 * MiB }], 'to-device'));
    expect(e.code).toBe('ENOMEM');
    expect(e.message).toMatch(/^ENOMEM: dma: mapSg of 2 entries \(2101248 bytes\) for device 0000:00:03\.0: .*no page-table page/);
    expect(usage(m)).toEqual(before);
    expect(leaves(m, dev)).toEqual(ptes);
    await dmaWorks(m, dev);
  });

  it('allocCoherent that runs out of tables is ENOMEM naming the device, and gives its RAM and IOVA back', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    spacer(m, dev);
    m.ram.alloc(PAGE, { above: 4 * MiB }); // so that the coherent buffer's PA is not 2 MiB aligned (no block)
    const before = usage(m);
    const ptes = leaves(m, dev);
    const e = thrown(() => m.dma.allocCoherent(dev, 2 * MiB + PAGE));
    expect(e.code).toBe('ENOMEM');
    expect(e.message).toMatch(/^ENOMEM: dma: map of 2101248 bytes at PA 0x\w+ for device 0000:00:03\.0: .*no page-table page/);
    expect(usage(m)).toEqual(before);
    expect(leaves(m, dev)).toEqual(ptes);
    const c = m.dma.allocCoherent(dev, 2 * MiB); // one new table: there is one
    m.dma.freeCoherent(dev, c);
  });

  it('giving a failed map\'s tables back waits for a device busy copying, and its copies stay right', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const src = m.ram.alloc(16 * PAGE);
    const dst = m.ram.alloc(16 * PAGE);
    const data = pattern(16 * PAGE, 3);
    m.ram.write(src.pa, data);
    m.ram.fill(dst.pa, 16 * PAGE, 0);
    const s = m.dma.mapSingle(dev, src.pa, 16 * PAGE, 'to-device');
    const d = m.dma.mapSingle(dev, dst.pa, 16 * PAGE, 'from-device'); // beside the rings: no new table
    spacer(m, dev);
    const { pa } = unaligned(m, 2 * MiB + PAGE);
    const copies = [];
    for (let round = 0; round < 4; round++) {
      for (let i = 0; i < 16; i++) copies.push(dev.copy({ src: dmaAddr(s.addr + i * PAGE), dst: dmaAddr(d.addr + i * PAGE), len: PAGE }));
    }
    // While the device works through 64 descriptors, maps fail and their tables go back each time.
    for (let i = 0; i < 8; i++) expect(() => m.dma.mapSingle(dev, pa, 2 * MiB + PAGE, 'to-device')).toThrow(expect.objectContaining({ code: 'ENOMEM' }));
    expect((await Promise.all(copies)).every((c) => c.status === 'ok')).toBe(true);
    expect(same(m.ram.read(dst.pa, 16 * PAGE), data)).toBe(true);
    expect(m.iommu.unit.pool.retiredCount()).toBe(0);
    expect(m.stats().pageTablePages).toBe(4);
    m.dma.unmapSingle(dev, s);
    m.dma.unmapSingle(dev, d);
  });

  it('a 2 MiB-aligned buffer at a 2 MiB-aligned IOVA needs no new table (a block), even with the pool empty', async () => {
    const m = await machine({ ...config, iommu: { tables: 4 } });
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const b = m.ram.alloc(2 * MiB, { align: 2 * MiB });
    const h = m.dma.mapSingle(dev, b.pa, 2 * MiB, 'to-device');
    expect(leaves(m, dev).some(([iova, , size]) => iova === h.addr && size === 2 * MiB)).toBe(true);
    m.dma.unmapSingle(dev, h);
    const { pa } = unaligned(m, 2 * MiB);
    expect(() => m.dma.mapSingle(dev, pa, 2 * MiB, 'to-device')).toThrow(expect.objectContaining({ code: 'ENOMEM' }));
  });
});

describe('fault ring exhaustion (config.iommu.faultRing)', () => {
  const config: MachineConfig = { ram: [{ base: 0, size: 8 * MiB }], swiotlb: { size: 0 }, iommu: { faultRing: 2 } };
  const unmapped = (i: number) => dmaAddr(0x1000_0000 + i * PAGE);

  it('a fault the full ring cannot record still refuses the DMA (EFAULT) and is counted as dropped', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    for (let i = 0; i < 3; i++) {
      await expect(dev.copy({ src: unmapped(i), dst: unmapped(i), len: 64 })).rejects.toMatchObject({ code: 'EFAULT' });
    }
    expect(m.stats().faults).toBe(2);
    expect(m.stats().faultsDropped).toBe(1);
    expect(m.iommu.faults().map((f) => f.addr)).toEqual([unmapped(0), unmapped(1)]);
  });

  it('faultOverflow() reports the dropped records as ENOSPC naming the ring size and the device, once', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    expect(m.iommu.faultOverflow()).toBeNull();
    for (let i = 0; i < 5; i++) await dev.copy({ src: unmapped(i), dst: unmapped(i), len: 64 }).catch(() => undefined);
    const e = m.iommu.faultOverflow();
    expect(e).toBeInstanceOf(DmaError);
    expect(e!.code).toBe('ENOSPC');
    expect(e!.message).toMatch(/^ENOSPC: iommu: fault ring full: 3 fault record\(s\) dropped since the last check \(ring of 2 records, config\.iommu\.faultRing.*the last dropped was from device 0000:00:03\.0/);
    expect(m.iommu.faultOverflow()).toBeNull(); // read and cleared, as VT-d's overflow bit
  });

  it('after draining a full ring, the next fault is recorded and a good DMA works', async () => {
    const m = await machine(config);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    for (let i = 0; i < 4; i++) await dev.copy({ src: unmapped(i), dst: unmapped(i), len: 64 }).catch(() => undefined);
    expect(m.iommu.faults()).toHaveLength(2);
    await expect(dev.copy({ src: unmapped(9), dst: unmapped(9), len: 64 })).rejects.toMatchObject({ code: 'EFAULT' });
    expect(m.iommu.faults()).toMatchObject([{ addr: unmapped(9), access: 'read', reason: 'not-present' }]);
    expect(m.stats().faultsDropped).toBe(2);
    await dmaWorks(m, dev);
  });
});

describe('device queue exhaustion', () => {
  it('submitting more copies than the queue holds waits for room instead of failing, and every copy completes', async () => {
    const m = await machine({ ram: [{ base: 0, size: 8 * MiB }], swiotlb: { size: 0 } });
    const dev = await m.addDevice({ bdf: '00:03.0', queueDepth: 2 });
    const src = m.ram.alloc(8 * PAGE);
    const dst = m.ram.alloc(8 * PAGE);
    const data = pattern(8 * PAGE, 7);
    m.ram.write(src.pa, data);
    m.ram.fill(dst.pa, 8 * PAGE, 0);
    const s = m.dma.mapSingle(dev, src.pa, 8 * PAGE, 'to-device');
    const d = m.dma.mapSingle(dev, dst.pa, 8 * PAGE, 'from-device');
    const copies = Array.from({ length: 8 }, (_, i) => dev.copy({ src: dmaAddr(s.addr + i * PAGE), dst: dmaAddr(d.addr + i * PAGE), len: PAGE }));
    expect(dev.inFlight()).toBe(2); // the other six wait for a free descriptor
    const done = await Promise.all(copies);
    expect(done.every((c) => c.status === 'ok')).toBe(true);
    expect(dev.inFlight()).toBe(0);
    expect(same(m.ram.read(dst.pa, 8 * PAGE), data)).toBe(true);
    m.dma.unmapSingle(dev, s);
    m.dma.unmapSingle(dev, d);
  });
});

describe('VFIO dma_entry_limit exhaustion', () => {
  const topology = {
    functions: [
      { bdf: '00:00.0', type: 'host-bridge' },
      { bdf: '00:01.0', type: 'root-port', secondary: 1, acs: { cap: ['SV', 'RR', 'CR', 'UF'], ctl: ['SV', 'RR', 'CR', 'UF'] }, driver: 'pcieport' },
      { bdf: '01:00.0', type: 'endpoint', driver: 'vfio-pci' },
    ],
  };

  it('MAP_DMA past the limit is ENOSPC; after one UNMAP_DMA the container maps again and the device DMAs through it', async () => {
    const m = await machine({ ram: [{ base: 0, size: 16 * MiB }], swiotlb: { size: 0 }, topology });
    const dev = await m.addDevice({ bdf: '01:00.0' });
    const c = m.vfio.openContainer({ dmaEntryLimit: 2 });
    const g = m.vfio.group('01:00.0');
    g.setContainer(c);
    c.setIommu('type1v2');
    const buf = m.ram.alloc(3 * PAGE);
    m.ram.fill(buf.pa, 3 * PAGE, 0);
    const map = (i: number) => c.mapDma({ vaddr: buf.pa + i * PAGE, iova: 0x10_0000 + i * 0x10_0000, size: PAGE, read: true, write: true });
    map(0);
    map(1);
    expect(c.info().dmaAvail).toBe(0);
    const e = thrown(() => map(2));
    expect(e.code).toBe('ENOSPC');
    expect(e.message).toMatch(/dma_entry_limit/);
    expect(c.info().dmaAvail).toBe(0);
    expect(m.iommu.domainOf(dev)!.iovaToPhys(iova(0x30_0000))).toBeNull();
    c.unmapDma({ iova: 0x10_0000, size: PAGE });
    map(2);
    const h = g.device('01:00.0');
    try {
      await h.device.fill({ dst: dmaAddr(0x30_0000), len: PAGE, value: 0x5a });
      expect(allBytes(m.ram.read(buf.pa + 2 * PAGE, PAGE), 0x5a)).toBe(true);
    } finally {
      h.close();
    }
  });
});

describe('DMA-API debugging entry exhaustion (config.dmaDebug.entries)', () => {
  it('a mapping beyond the entry table proceeds, is reported once as table-full, and no false report follows', async () => {
    const m = await machine({ ram: [{ base: 0, size: 8 * MiB }], swiotlb: { size: 0 }, dmaDebug: { enabled: true, entries: 4 } });
    const dev = await m.addDevice({ bdf: '00:03.0' }); // its two rings take two entries
    const bufs = [0, 1, 2].map(() => m.ram.alloc(PAGE));
    const maps = bufs.map((b) => m.dma.mapSingle(dev, b.pa, PAGE, 'bidirectional'));
    await dmaWorks(m, dev);
    const reports = m.dma.debug!.reports();
    expect(reports.map((r) => r.check)).toEqual(['table-full']);
    expect(reports[0]).toMatchObject({ bdf: '0000:00:03.0' });
    for (const h of maps) m.dma.unmapSingle(dev, h);
    expect(m.dma.debug!.reports()).toHaveLength(1);
    expect(m.stats().liveMappings).toBe(2); // the rings
  });
});
