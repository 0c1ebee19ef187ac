/**
 * Fault injection on the driver side: a driver thread (a piscina task) that dies holding
 * mappings. The machine takes back that thread's IOVA caches and counter slot, reports what it
 * left, leaves the mappings valid (as Linux does for a crashed driver), and close() returns.
 */
import { describe, it, expect } from 'vitest';
import { Machine, MiB, DriverPool, type DriverThreadReport, type DmaMapping, type DmaDirection, dmaAddr } from '../src/index.js';
import { until } from './support.js';

const PAGE = 4096;
const ports = () => process.getActiveResourcesInfo().filter((r) => r === 'MessagePort').length;

describe('driver thread death', () => {
  it('reclaims the IOVA caches of a thread that died holding mappings and reports what it left', async () => {
    const before = ports();
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
    const reports: Array<DriverThreadReport | null> = [];
    const pool = new DriverPool({ threads: 1, onThreadExit: (id) => reports.push(m.reclaimDriverThread(id)) });
    try {
      const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
      const domain = m.iommu.domainOf(dev)!;
      const liveBefore = m.stats().liveMappings;
      const out = new SharedArrayBuffer(8 * (2 + 4 * 3));
      await expect(pool.run('mapAndDie', { driver: m.driverHandle(), bdf: dev.bdf, keep: 3, pages: 2, churn: 40, out })).rejects.toThrow();
      await until(() => reports.length === 1);
      const o = new Float64Array(out);
      expect(o[1]).toBe(3); // the thread got as far as reporting its mappings
      expect(reports[0]).toEqual({ threadId: o[0], mappingsLeft: 3, iovaPagesFreed: expect.any(Number) });
      expect(reports[0]!.iovaPagesFreed).toBeGreaterThan(0); // its magazines held the churned ranges
      expect(domain.iova.cachedPages()).toBe(0); // nobody else caches here: everything came back
      expect(m.stats().deadDriverThreads).toEqual(reports);
      expect(m.stats().liveMappings).toBe(liveBefore + 3);

      // The mappings it left stay valid: the device still DMAs through them ...
      const kept: DmaMapping[] = [0, 1, 2].map((i) => ({ addr: dmaAddr(o[2 + 4 * i]), len: o[3 + 4 * i], dir: 'from-device' as DmaDirection, bounced: false, domainId: o[4 + 4 * i] }));
      for (const [i, h] of kept.entries()) {
        await dev.fill({ dst: h.addr, len: h.len, value: 0x60 + i });
        expect(m.ram.read(o[5 + 4 * i], h.len).every((b) => b === 0x60 + i)).toBe(true);
      }
      // ... until another thread unmaps them.
      for (const h of kept) m.dma.unmapSingle(dev, h);
      expect(m.stats().liveMappings).toBe(liveBefore);
      expect(domain.iova.pagesInUse()).toBe(liveBefore); // only the device's two ring pages
    } finally {
      await pool.close();
      await m.close();
    }
    expect(ports()).toBe(before);
  });

  it('reports only what the dead thread itself left, not what an earlier owner of its counter slot left', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
    const reports: Array<DriverThreadReport | null> = [];
    const pool = new DriverPool({ threads: 1, onThreadExit: (id) => reports.push(m.reclaimDriverThread(id)) });
    try {
      const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
      const die = async (keep: number) => {
        const out = new SharedArrayBuffer(8 * (2 + 4 * keep));
        await expect(pool.run('mapAndDie', { driver: m.driverHandle(), bdf: dev.bdf, keep, pages: 1, churn: 4, out })).rejects.toThrow();
        return new Float64Array(out);
      };
      const first = await die(3);
      await until(() => reports.length === 1);
      expect(reports[0]).toMatchObject({ mappingsLeft: 3 });
      // The main thread unmaps what the first thread left; a fresh thread (likely on the freed slot) dies with one.
      for (let i = 0; i < 3; i++) {
        m.dma.unmapSingle(dev, { addr: dmaAddr(first[2 + 4 * i]), len: first[3 + 4 * i], dir: 'from-device', bounced: false, domainId: first[4 + 4 * i] });
      }
      const second = await die(1);
      await until(() => reports.length === 2);
      expect(reports[1]).toEqual({ threadId: second[0], mappingsLeft: 1, iovaPagesFreed: expect.any(Number) });
    } finally {
      await pool.close();
      await m.close();
    }
  });

  it('finds nothing to reclaim from a thread that closed its driver before it ended', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
    const reports: Array<DriverThreadReport | null> = [];
    const pool = new DriverPool({ threads: 1, onThreadExit: (id) => reports.push(m.reclaimDriverThread(id)) });
    try {
      const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
      await pool.run('mapBench', { driver: m.driverHandle(), bdf: dev.bdf, granulePages: 1, dir: 'to-device', durationMs: 1000, iterations: 64, delayNs: 0, batch: 8, warmup: 0 });
      await pool.close();
      await until(() => reports.length === 1);
      expect(reports).toEqual([null]);
      expect(m.stats().deadDriverThreads).toEqual([]);
    } finally {
      await pool.close();
      await m.close();
    }
  });
});
