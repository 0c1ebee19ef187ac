/**
 * Strict and lazy invalidation on real device workers.
 */
import { describe, it, expect } from 'vitest';
import { Machine, GiB, MiB, dmaAddr, type Device, type DmaMapping, type Completion, type MachineConfig } from '../src/index.js';
import { pattern, same, allBytes, closeAfterEach } from './support.js';
const { machines } = closeAfterEach();

const ram: MachineConfig['ram'] = [{ base: 0, size: 16 * MiB }, { base: 4 * GiB, size: 16 * MiB }];

const POISON = 0xee;

describe('strict invalidation under load', () => {
  it('never lets a device write a page after its unmap returned; every transfer is whole or faulted', async () => {
    const m = await Machine.create({ ram, iommu: { invalidation: 'strict' } });
    machines.push(m);
    const PAGES = 6;
    const ROUNDS = 150;
    const LEN = 64 * 1024; // long transfers keep a device inside its epoch long enough to matter
    interface Lane {
      dev: Device;
      src: DmaMapping;
      data: Uint8Array;
      pages: { pa: number; map: DmaMapping | null }[];
    }
    const lanes: Lane[] = [];
    for (const [i, bdf] of ['00:03.0', '00:04.0'].entries()) {
      const dev = await m.addDevice({ bdf, dmaMask: 32, queueDepth: 32 });
      const s = m.ram.alloc(LEN, { above: 4 * GiB });
      const data = pattern(LEN, 100 + i);
      m.ram.write(s.pa, data);
      const pages = [];
      for (let k = 0; k < PAGES; k++) {
        const p = m.ram.alloc(LEN);
        m.ram.fill(p.pa, LEN, POISON);
        pages.push({ pa: p.pa, map: m.dma.mapSingle(dev, p.pa, LEN, 'from-device') });
      }
      lanes.push({ dev, src: m.dma.mapSingle(dev, s.pa, LEN, 'to-device'), data, pages });
    }

    // Devices copy continuously into their pages through whatever IOVA each page has now.
    let stop = false;
    const results: Completion[] = [];
    const feeders = lanes.map(async (lane) => {
      const inflight = new Set<Promise<void>>();
      let k = 0;
      while (!stop) {
        const page = lane.pages[k++ % PAGES];
        const dst = page.map?.addr ?? dmaAddr(0x1000); // an unmapped page: faults
        const p = lane.dev.submit(lane.src.addr, dst, LEN, 0).then((c) => {
          results.push(c);
          inflight.delete(p);
        });
        inflight.add(p);
        if (inflight.size >= 24) await Promise.race(inflight);
      }
      await Promise.all(inflight);
    });

    // Meanwhile: unmap a page, poison it, let the devices run, check the poison, remap.
    let violations = 0;
    let checked = 0;
    for (let r = 0; r < ROUNDS; r++) {
      const lane = lanes[r % 2];
      const page = lane.pages[(r * 5) % PAGES];
      if (!page.map) continue;
      m.dma.unmapSingle(lane.dev, page.map); // strict: no device can use the old IOVA once this returns
      page.map = null;
      m.ram.fill(page.pa, LEN, POISON);
      await new Promise((res) => setTimeout(res, 1));
      if (!allBytes(m.ram.read(page.pa, LEN), POISON)) violations++;
      checked++;
      page.map = m.dma.mapSingle(lane.dev, page.pa, LEN, 'from-device');
    }
    stop = true;
    await Promise.all(feeders);

    expect(checked).toBeGreaterThan(100);
    expect(violations).toBe(0);
    const ok = results.filter((c) => c.status === 'ok');
    const faulted = results.filter((c) => c.status === 'fault');
    expect(ok.length + faulted.length).toBe(results.length);
    expect(ok.every((c) => c.bytes === LEN)).toBe(true);
    expect(ok.length).toBeGreaterThan(100);
    // Every buffer now holds either its poison or one whole copy of its lane's data: never a torn mix.
    for (const lane of lanes) {
      for (const p of lane.pages) {
        const bytes = m.ram.read(p.pa, LEN);
        expect(allBytes(bytes, POISON) || same(bytes, lane.data)).toBe(true);
      }
    }
    const s = m.stats();
    expect(s.invalidations.strict).toBeGreaterThanOrEqual(checked);
    expect(s.staleAccesses).toBe(0);
  });
});

describe('lazy invalidation', () => {
  it('lets a cached translation reach the old page until the flush, counting each stale access', async () => {
    const m = await Machine.create({ ram, iommu: { invalidation: 'lazy', flushTimeoutMs: 0 } });
    machines.push(m);
    const dev = await m.addDevice({ bdf: '00:03.0', iotlbEntries: 1024 });
    const d = m.iommu.domainOf(dev)!;
    const s = m.ram.alloc(4096);
    const t = m.ram.alloc(4096);
    m.ram.write(s.pa, pattern(4096, 7));
    const src = m.dma.mapSingle(dev, s.pa, 4096, 'to-device');
    const dst = m.dma.mapSingle(dev, t.pa, 4096, 'from-device');
    await dev.copy({ src: src.addr, dst: dst.addr, len: 4096 }); // caches dst's translation
    const oldIova = dst.addr;

    m.dma.unmapSingle(dev, dst); // lazy: returns at once
    expect(d.iovaToPhys(oldIova as never)).toBeNull(); // the PTE is gone
    m.ram.fill(t.pa, 4096, 0);
    const before = dev.counters().staleAccesses;
    await dev.copy({ src: src.addr, dst: oldIova, len: 4096 }); // still reaches the old page
    expect(same(m.ram.read(t.pa, 4096), pattern(4096, 7))).toBe(true);
    expect(dev.counters().staleAccesses - before).toBe(1);

    // An IOVA waiting for its flush is never handed out again.
    const others: DmaMapping[] = [];
    for (let i = 0; i < 64; i++) {
      const b = m.ram.alloc(4096);
      const h = m.dma.mapSingle(dev, b.pa, 4096, 'from-device');
      expect(h.addr).not.toBe(oldIova);
      others.push(h);
    }
    expect(d.fq.holds(oldIova / 4096)).toBe(true);

    m.iommu.flush();
    expect(d.fq.size()).toBe(0);
    m.ram.fill(t.pa, 4096, 0);
    await expect(dev.copy({ src: src.addr, dst: oldIova, len: 4096 })).rejects.toMatchObject({ code: 'EFAULT' });
    expect(allBytes(m.ram.read(t.pa, 4096), 0)).toBe(true);
    expect(dev.counters().staleAccesses - before).toBe(1);
    expect(m.iommu.faults()).toEqual([expect.objectContaining({ addr: oldIova, reason: 'not-present' })]);
    for (const h of others) m.dma.unmapSingle(dev, h);
  });

  it('flushes by itself when the flush queue fills', async () => {
    const m = await Machine.create({ ram, iommu: { invalidation: 'lazy', flushTimeoutMs: 0, flushQueueSize: 4 } });
    machines.push(m);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const d = m.iommu.domainOf(dev)!;
    const b = m.ram.alloc(4096);
    for (let i = 0; i < 9; i++) m.dma.unmapSingle(dev, m.dma.mapSingle(dev, b.pa, 4096, 'to-device'));
    expect(d.fq.flushes()).toBe(2);
    expect(d.fq.size()).toBe(1);
  });

  it('flushes on its timer', async () => {
    const m = await Machine.create({ ram, iommu: { invalidation: 'lazy', flushTimeoutMs: 5 } });
    machines.push(m);
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const d = m.iommu.domainOf(dev)!;
    const b = m.ram.alloc(4096);
    m.dma.unmapSingle(dev, m.dma.mapSingle(dev, b.pa, 4096, 'to-device'));
    expect(d.fq.size()).toBe(1);
    for (let i = 0; i < 100 && d.fq.size() > 0; i++) await new Promise((r) => setTimeout(r, 5));
    expect(d.fq.size()).toBe(0);
    expect(d.fq.flushes()).toBeGreaterThanOrEqual(1);
  });
});
