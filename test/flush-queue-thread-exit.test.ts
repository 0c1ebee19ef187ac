/**
 * Lazy mode: a driver thread's flush-queue ring outlives neither the thread's DMA API nor the
 * thread. A ring stays claimed until release() (or a FinalizationRegistry callback, which never
 * runs for a thread that has ended), so without these every driver thread that came and went
 * kept one of the FLUSH_QUEUE_SLOTS rings, and after that many all later threads queued through
 * the overflow ring under the mutex; a thread that died with ranges queued also kept their IOVAs
 * until some other thread happened to flush that domain.
 */
import { describe, it, expect } from 'vitest';
import { Machine, MiB, DriverPool, type DriverThreadReport } from '../src/index.js';
import { until } from './support.js';

describe('flush-queue rings of driver threads', () => {
  it('a driver thread that closes its DMA API gives its ring back', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }], iommu: { invalidation: 'lazy', flushTimeoutMs: 0 } });
    const pool = new DriverPool({ threads: 1 });
    try {
      const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
      const domain = m.iommu.domainOf(dev)!;
      // mapBench maps and lazily unmaps (its thread claims a ring on the first push), then closes.
      const r = await pool.run('mapBench', { driver: m.driverHandle(), bdf: dev.bdf, granulePages: 1, dir: 'to-device', durationMs: 10_000, iterations: 8, delayNs: 0, batch: 4, warmup: 0 });
      expect(r.iterations).toBe(8);
      expect(domain.fq.claimedRings()).toBe(0);
      expect(domain.fq.size()).toBe(0); // close() flushed what it had queued
    } finally {
      await pool.close();
      await m.close();
    }
  });

  it('reclaimDriverThread frees the ring of a thread that died with ranges queued and gives their IOVAs back', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }], iommu: { invalidation: 'lazy', flushTimeoutMs: 0 } });
    const reports: Array<DriverThreadReport | null> = [];
    const pool = new DriverPool({ threads: 1, onThreadExit: (id) => reports.push(m.reclaimDriverThread(id)) });
    try {
      const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
      const domain = m.iommu.domainOf(dev)!;
      const inUseBefore = domain.iova.pagesInUse();
      const flushesBefore = domain.fq.flushes();
      const out = new SharedArrayBuffer(8 * (2 + 4 * 2));
      // 40 lazy unmaps (fewer than the 256 a ring holds: nothing flushed them), 2 mappings kept.
      await expect(pool.run('mapAndDie', { driver: m.driverHandle(), bdf: dev.bdf, keep: 2, pages: 1, churn: 40, out })).rejects.toThrow();
      await until(() => reports.length === 1);
      expect(domain.fq.claimedRings()).toBe(0);
      expect(domain.fq.size()).toBe(0);
      expect(domain.fq.flushes()).toBe(flushesBefore + 1); // one flush-all before the IOVAs went back
      expect(domain.iova.pagesInUse()).toBe(inUseBefore + 2); // only the two mappings it left
    } finally {
      await pool.close();
      await m.close();
    }
  });
});
