import { describe, it, expect, afterEach } from 'vitest';
import { Machine, GiB, MiB } from '../src/index.js';
import { parseScenario, type ScenarioInput } from '../src/scenario/scenario-schema.js';
import { runScenario, type ScenarioProgress } from '../src/scenario/runner.js';
import { WorkloadDriver } from '../src/scenario/workload.js';

/** Small RAM: the tests run beside other engineers' on 2 cores. */
const SMALL = { ram: [{ base: 0, size: '32 MiB' }, { base: '4 GiB', size: '32 MiB' }], swiotlb: { size: '4 MiB' } };

function scenario(workload: Record<string, unknown>, extra: Partial<ScenarioInput> = {}, dmaMask = 32) {
  return parseScenario({ ...SMALL, devices: [{ bdf: '00:03.0', dmaMask }], workloads: [{ device: '00:03.0', ...workload }], ...extra });
}

describe('scenario runner: mapping strategies', () => {
  it('per-transfer maps and unmaps every buffer of every transfer', async () => {
    const s = await runScenario(scenario({ sizes: [4096, 16384], count: 30, inFlight: 3, mapping: 'per-transfer' }));
    expect(s.devices[0]).toMatchObject({ transfers: 30, verified: 30, mismatches: 0, failed: 0 });
    expect(s.dma.maps).toBe(60); // a source and a destination per transfer
    expect(s.dma.unmaps).toBe(60);
    expect(s.dma.syncs).toBe(0);
    expect(s.leaks).toEqual({ liveMappings: 0, ramPages: 0, bounceSlots: 0 });
  });

  it('cached maps each lane buffer once and syncs around every transfer', async () => {
    const s = await runScenario(scenario({ sizes: [4096, 65536], count: 40, inFlight: 4, mapping: 'cached' }));
    expect(s.devices[0]).toMatchObject({ transfers: 40, verified: 40, mismatches: 0 });
    expect(s.dma.maps).toBe(8); // 4 lanes × (source, destination)
    expect(s.dma.unmaps).toBe(8);
    expect(s.dma.syncs).toBe(40 * 4); // for-device and for-cpu on both buffers
    expect(s.devices[0].mapUs.samples).toBe(8);
    expect(s.leaks).toEqual({ liveMappings: 0, ramPages: 0, bounceSlots: 0 });
  });

  it('pool maps its arena once for all lanes', async () => {
    const s = await runScenario(scenario({ sizes: [512, 8192], count: 40, inFlight: 6, mapping: 'pool', direction: 'from-device' }));
    expect(s.devices[0]).toMatchObject({ transfers: 40, verified: 40, mismatches: 0, direction: 'from-device' });
    expect(s.dma.maps).toBe(1);
    expect(s.dma.unmaps).toBe(1);
    expect(s.leaks).toEqual({ liveMappings: 0, ramPages: 0, bounceSlots: 0 });
  });

  it('pool over scattered pages maps one sg table per role', async () => {
    const s = await runScenario(scenario({ sizes: [4096, 12288], count: 30, inFlight: 4, mapping: 'pool', buffers: { layout: 'scattered' } }));
    expect(s.devices[0]).toMatchObject({ transfers: 30, verified: 30, mismatches: 0 });
    expect(s.dma.sgMaps).toBe(2);
    expect(s.dma.maps).toBe(0);
    expect(s.leaks).toEqual({ liveMappings: 0, ramPages: 0, bounceSlots: 0 });
  });
});

describe('scenario runner: buffers, directions, IOMMU modes', () => {
  it('moves to-device data into device memory intact (scattered, per-transfer)', async () => {
    const s = await runScenario(scenario({ sizes: [4096, 20000, 65536], count: 30, inFlight: 2, direction: 'to-device', buffers: { layout: 'scattered', above: '4 GiB' } }));
    expect(s.devices[0]).toMatchObject({ transfers: 30, verified: 30, mismatches: 0, faults: 0 });
    expect(s.dma.sgMaps).toBeGreaterThan(0);
    expect(s.leaks).toEqual({ liveMappings: 0, ramPages: 0, bounceSlots: 0 });
  });

  it('bounces the 32-bit device\'s high buffers when the IOMMU is off, and not the 64-bit device\'s', async () => {
    const s = await runScenario(
      parseScenario({
        ...SMALL,
        iommu: { mode: 'off' },
        devices: [{ bdf: '00:03.0', dmaMask: 32 }, { bdf: '00:04.0', dmaMask: 64 }],
        workloads: [
          { device: '00:03.0', sizes: [4096, 65536], buffers: { above: '4 GiB' }, count: 20, inFlight: 2 },
          { device: '00:04.0', sizes: [4096, 65536], buffers: { above: '4 GiB' }, count: 20, inFlight: 2 },
        ],
      }),
    );
    expect(s.devices.map((d) => d.verified)).toEqual([20, 20]);
    expect(s.devices[0].bouncedBytes).toBe(2 * s.devices[0].bytes); // source and destination of every transfer
    expect(s.devices[1].bouncedBytes).toBe(0);
    expect(s.bouncedBytes).toBeGreaterThan(0);
    expect(s.dma.bouncedMaps).toBe(40);
    expect(s.leaks).toEqual({ liveMappings: 0, ramPages: 0, bounceSlots: 0 });
  });

  it('keeps data intact through bounced cached mappings, copied by the syncs (IOMMU off)', async () => {
    const s = await runScenario(scenario({ sizes: [100, 4096, 30000], count: 30, inFlight: 2, mapping: 'cached', buffers: { above: '4 GiB' } }, { iommu: { mode: 'off' } }));
    expect(s.devices[0]).toMatchObject({ transfers: 30, verified: 30, mismatches: 0 });
    expect(s.devices[0].bouncedBytes).toBeGreaterThan(0);
    expect(s.leaks).toEqual({ liveMappings: 0, ramPages: 0, bounceSlots: 0 });
  });

  it('keeps scattered bounced sg transfers intact (IOMMU off, 32-bit device, pages above 4 GiB)', async () => {
    const s = await runScenario(scenario({ sizes: [8192, 16384], count: 20, inFlight: 2, buffers: { layout: 'scattered', above: '4 GiB' } }, { iommu: { mode: 'off' } }));
    expect(s.devices[0]).toMatchObject({ transfers: 20, verified: 20, mismatches: 0 });
    expect(s.dma.bouncedMaps).toBe(40);
    expect(s.leaks).toEqual({ liveMappings: 0, ramPages: 0, bounceSlots: 0 });
  });

  it('refuses a pool too large to bounce with SWIOTLB\'s limit (IOMMU off, 32-bit device, high buffers)', async () => {
    const s = scenario({ sizes: ['256 KiB'], count: 4, inFlight: 4, mapping: 'pool', buffers: { above: '4 GiB' } }, { iommu: { mode: 'off' } });
    await expect(runScenario(s)).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/swiotlb: map of 1048576 bytes .* device 0000:00:03\.0: a bounce mapping is 1 to 262144 bytes/) });
  });

  it('runs under lazy invalidation: every unmap queues a lazy invalidation', async () => {
    const s = await runScenario(scenario({ sizes: [4096], count: 40, inFlight: 4 }, { iommu: { mode: 'lazy' } }));
    expect(s.devices[0]).toMatchObject({ transfers: 40, verified: 40, mismatches: 0 });
    // 40 transfers × 2 unmaps; the strict count holds only the flush queue's flush-alls (timer-driven, so not fixed).
    expect(s.invalidations.lazy).toBe(80);
    expect(s.invalidations.strict).toBeLessThan(80);
    expect(s.leaks.liveMappings).toBe(0);
  });

  it('runs for a duration instead of a count', async () => {
    const s = await runScenario(scenario({ sizes: [4096], durationMs: 150, inFlight: 2 }));
    expect(s.devices[0].transfers).toBeGreaterThan(0);
    expect(s.devices[0].verified).toBe(s.devices[0].transfers);
  });

  it('moves data without checking it when verification is off', async () => {
    const s = await runScenario(scenario({ sizes: [4096], count: 10, inFlight: 2 }, { verify: false }));
    expect(s.devices[0]).toMatchObject({ transfers: 10, verified: 0, mismatches: 0, bytes: 40960 });
  });

  it('reports progress while running and a complete last report', async () => {
    const seen: ScenarioProgress[] = [];
    await runScenario(scenario({ sizes: [4096, 65536], count: 50, inFlight: 2 }), { onProgress: (p) => seen.push(p), progressIntervalMs: 5 });
    const last = seen[seen.length - 1];
    expect(last).toMatchObject({ transfers: 50, faults: 0, fraction: 1 });
    expect(last.bytes).toBeGreaterThan(0);
    for (let i = 1; i < seen.length; i++) expect(seen[i].transfers).toBeGreaterThanOrEqual(seen[i - 1].transfers);
  });
});

describe('scenario runner: driver threads', () => {
  it('runs a workload on 2 driver threads that map, unmap and verify while the main thread submits', async () => {
    const s = await runScenario(scenario({ sizes: [4096, 20000, 65536], count: 41, driverThreads: 2, buffers: { layout: 'scattered', above: '4 GiB' } }));
    expect(s.devices[0]).toMatchObject({ transfers: 41, verified: 41, mismatches: 0, failed: 0, driverThreads: 2 });
    expect(s.devices[0].mapUs.samples).toBeGreaterThan(0);
    expect(s.leaks).toEqual({ liveMappings: 0, ramPages: 0, bounceSlots: 0 });
  });

  it('hands scatter-gather I/Os of many segments through the mailbox (IOMMU off, scattered pages)', async () => {
    const s = await runScenario(scenario({ sizes: [16384, 40000], count: 20, driverThreads: 2, buffers: { layout: 'scattered' } }, { iommu: { mode: 'off' } }, 64));
    expect(s.devices[0]).toMatchObject({ transfers: 20, verified: 20, mismatches: 0, failed: 0 });
    expect(s.dma.sgMaps).toBe(40); // per-transfer: a scattered source and destination each time
    expect(s.dma.directMaps).toBe(40); // a 64-bit device reaches every page: no bounce
    expect(s.leaks).toEqual({ liveMappings: 0, ramPages: 0, bounceSlots: 0 });
  });

  it('bounces in driver threads with the IOMMU off, cached mappings, data intact', async () => {
    const s = await runScenario(scenario({ sizes: [4096, 30000], count: 20, driverThreads: 2, mapping: 'cached', buffers: { above: '4 GiB' } }, { iommu: { mode: 'off' } }));
    expect(s.devices[0]).toMatchObject({ transfers: 20, verified: 20, mismatches: 0 });
    expect(s.dma.maps).toBe(4); // 2 threads × (source, destination)
    expect(s.devices[0].bouncedBytes).toBeGreaterThan(0);
    expect(s.leaks).toEqual({ liveMappings: 0, ramPages: 0, bounceSlots: 0 });
  });
});

describe('workload driver: what the device is given', () => {
  let m: Machine | null = null;
  afterEach(async () => {
    await m?.close();
    m = null;
  });

  for (const translated of [true, false]) {
    it(`gives ${translated ? 'one DMA segment' : 'one segment per page'} for a scattered 16 KiB buffer ${translated ? 'under' : 'without'} an IOMMU`, async () => {
      m = await Machine.create({ ram: [{ base: 0, size: 32 * MiB }, { base: 4 * GiB, size: 32 * MiB }], iommu: { enabled: translated } });
      const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 64 });
      const w = scenario({ sizes: [16384], count: 1, direction: 'to-device', buffers: { layout: 'scattered' } }, {}, 64).workloads[0];
      const wd = new WorkloadDriver({ dma: m.dma, dev, ram: m.ram }, { workload: w, lanes: 1, seed: 3, verify: true });
      try {
        const io = wd.prepare(0, 0);
        expect(io.len).toBe(16384);
        if (translated) expect(io.reads).toHaveLength(1);
        else expect(io.reads.length).toBeGreaterThan(1); // pages spread through RAM stay apart
        expect(io.reads.reduce((a, r) => a + r.len, 0)).toBe(16384);
        expect(io.writes).toHaveLength(1); // device memory: one coherent buffer
        wd.finish(0, 'aborted');
      } finally {
        const r = wd.close();
        expect(r).toMatchObject({ transfers: 1, failed: 1 });
      }
      expect(m.stats().liveMappings).toBe(2); // the device's own rings
    });
  }
});
