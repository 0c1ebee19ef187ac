import { describe, it, expect } from 'vitest';
import { Machine, GiB, MiB, DriverPool, HandoffMailbox, mapBenchmark, type MachineConfig, type Device } from '../src/index.js';
import { closeAfterEach } from './support.js';
const { machines, pools } = closeAfterEach();

async function machine(cfg: MachineConfig): Promise<Machine> {
  const m = await Machine.create({ ram: [{ base: 0, size: 32 * MiB }, { base: 4 * GiB, size: 32 * MiB }], swiotlb: { size: 2 * MiB }, ...cfg });
  machines.push(m);
  return m;
}

/** After the drivers are done: only the devices' rings are mapped, no bounce slot is held, no IOVA is left. */
function expectNoLeak(m: Machine, devs: Device[]): void {
  const s = m.stats();
  expect(s.liveMappings).toBe(2 * devs.length);
  expect(s.bounceSlotsInUse).toBe(0);
  for (const d of devs) {
    const dom = m.iommu.domainOf(d);
    if (!dom) continue;
    dom.iova.flushCaches();
    expect(dom.iova.pagesInUse()).toBe(2);
  }
}

/**
 * Each device's driver thread maps a source and a destination per round and hands the transfer
 * over a mailbox; the main thread (which owns the devices' queues) DMAs it and completes it.
 */
async function handoffRounds(m: Machine, devs: Device[], rounds: number, sizes: number[], seed: number) {
  const pool = new DriverPool({ threads: devs.length });
  pools.push(pool);
  const box = HandoffMailbox.create(devs.length);
  const driver = m.driverHandle();
  const drivers = devs.map((d, slot) => pool.run('handoff', { driver, bdf: d.bdf, mailbox: box.handle, slot, rounds, sizes, seed: seed + slot, above: 4 * GiB }));
  const served = devs.map(async (d, slot) => {
    let n = 0;
    for (let req = await box.take(slot); req; req = await box.take(slot)) {
      const c = await d.submit(req.src, req.dst, req.len, 0);
      box.complete(slot, c.status === 'ok' ? 0 : 1);
      n++;
    }
    return n;
  });
  return { results: await Promise.all(drivers), served: await Promise.all(served) };
}

describe('driver threads (piscina)', () => {
  it('runs dma_map_benchmark on 2 threads against one domain and returns per-thread latency and throughput', async () => {
    const m = await machine({});
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const r = await mapBenchmark(m, { device: '00:03.0', threads: 2, iterations: 4096, durationMs: 5000, warmup: 256 });
    expect(r.threads).toHaveLength(2);
    expect(new Set(r.threads.map((t) => t.threadId)).size).toBe(2); // two different threads
    for (const t of r.threads) {
      expect(t.iterations).toBeGreaterThanOrEqual(4096);
      expect(t.map.samples).toBeGreaterThan(0);
      expect(t.map.p50).toBeGreaterThan(0);
      expect(t.map.p99).toBeGreaterThanOrEqual(t.map.p50);
      expect(t.unmap.mean).toBeGreaterThan(0);
      expect(t.pairsPerSecond).toBeGreaterThan(0);
    }
    expect(m.stats().dma.iommuMaps).toBeGreaterThanOrEqual(2 * 4096);
    expectNoLeak(m, [dev]);
  });

  for (const mode of ['iommu', 'bounce'] as const) {
    it(`keeps every transfer intact while 2 driver threads map and unmap and 2 devices DMA (${mode})`, async () => {
      const m = await machine(mode === 'iommu' ? {} : { iommu: { enabled: false } });
      const devs = [await m.addDevice({ bdf: '00:03.0', dmaMask: 32 }), await m.addDevice({ bdf: '00:04.0', dmaMask: 32 })];
      const rounds = 120;
      const { results, served } = await handoffRounds(m, devs, rounds, [4096, 512, 16384, 3000, 65536], 7);
      expect(served).toEqual([rounds, rounds]);
      for (const r of results) expect(r).toMatchObject({ rounds, mismatches: 0, failed: 0 });
      expect(m.iommu.faults()).toEqual([]);
      if (mode === 'bounce') expect(m.stats().bouncedBytes).toBeGreaterThan(0);
      else expect(m.stats().bouncedBytes).toBe(0);
      expectNoLeak(m, devs);
    });
  }

  /** Two functions of one multifunction device without ACS: one IOMMU group, so one domain. */
  const sharedGroup = {
    functions: [
      { bdf: '00:00.0', type: 'host-bridge' },
      { bdf: '00:01.0', type: 'root-port', secondary: 1, acs: { cap: ['SV', 'RR', 'CR', 'UF'], ctl: ['SV', 'RR', 'CR', 'UF'] } },
      { bdf: '01:00.0', type: 'endpoint', multifunction: true },
      { bdf: '01:00.1', type: 'endpoint' },
    ],
  };
  for (const invalidation of ['strict', 'lazy'] as const) {
    it(`keeps every transfer intact when both driver threads map into one shared domain while its 2 devices DMA (${invalidation})`, async () => {
      const m = await machine({ topology: sharedGroup, iommu: { invalidation } });
      const devs = [await m.addDevice({ bdf: '01:00.0', dmaMask: 32 }), await m.addDevice({ bdf: '01:00.1', dmaMask: 32 })];
      expect(m.iommu.domainOf(devs[0])!.id).toBe(m.iommu.domainOf(devs[1])!.id); // one IOVA allocator, one page table
      const rounds = 150;
      const { results, served } = await handoffRounds(m, devs, rounds, [4096, 100, 8192, 40000, 131072], 11);
      expect(served).toEqual([rounds, rounds]);
      for (const r of results) expect(r).toMatchObject({ rounds, mismatches: 0, failed: 0 });
      expect(m.iommu.faults()).toEqual([]);
      m.iommu.flush();
      const s = m.stats();
      expect(s.liveMappings).toBe(4);
      const dom = m.iommu.domainOf(devs[0])!;
      dom.iova.flushCaches();
      expect(dom.iova.pagesInUse()).toBe(4); // the two devices' rings
    });
  }

  it('refuses a bad thread count', () => {
    expect(() => new DriverPool({ threads: 0 })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  });
});

describe('driver thread failures', () => {
  it('keeps the DmaError code of an error thrown in a driver thread', async () => {
    const m = await machine({});
    await m.addDevice({ bdf: '00:03.0' });
    await expect(mapBenchmark(m, { device: '00:09.0', iterations: 10 })).rejects.toMatchObject({ name: 'DmaError', code: 'ENODEV' });
  });

  it('leaves nothing mapped when a batch of maps runs out of bounce slots', async () => {
    const m = await machine({ iommu: { enabled: false }, swiotlb: { size: 1 * MiB, force: true } });
    const dev = await m.addDevice({ bdf: '00:03.0' });
    await expect(mapBenchmark(m, { device: '00:03.0', granulePages: 64, batch: 8, iterations: 8, warmup: 0 })).rejects.toMatchObject({ code: 'ENOSPC' });
    expectNoLeak(m, [dev]);
  });

  it('refuses more benchmark threads than the pool has (they would not overlap)', async () => {
    const m = await machine({});
    await m.addDevice({ bdf: '00:03.0' });
    const pool = new DriverPool({ threads: 1 });
    pools.push(pool);
    await expect(mapBenchmark(m, { device: '00:03.0', threads: 2, pool })).rejects.toMatchObject({ code: 'EINVAL' });
  });
});
