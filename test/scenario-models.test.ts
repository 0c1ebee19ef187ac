import { describe, it, expect } from 'vitest';
import type { Machine, Device } from '../src/index.js';
import { parseScenario } from '../src/scenario/scenario-schema.js';
import { runScenario } from '../src/scenario/runner.js';
import { loadScenarioFile } from '../src/scenario/scenario-file.js';
import { applyOverrides } from '../src/scenario/scenario-overrides.js';
import { MAPPING_STRATEGIES, WORKLOAD_DIRECTIONS } from '../src/scenario/scenario-schema.js';

/** Small RAM: the tests run beside other engineers' on 2 cores. */
const SMALL = { ram: [{ base: 0, size: '32 MiB' }, { base: '4 GiB', size: '32 MiB' }], swiotlb: { size: '4 MiB' } };
const NO_LEAKS = { liveMappings: 0, ramPages: 0, bounceSlots: 0 };

function one(device: Record<string, unknown>, workload: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  return { ...SMALL, devices: [{ bdf: '00:04.0', ...device }], workloads: [{ device: '00:04.0', ...workload }], ...extra };
}
const nvme = (w: Record<string, unknown>, d: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) => parseScenario(one({ model: 'nvme', ...d }, w, extra));
const nic = (w: Record<string, unknown>, d: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) => parseScenario(one({ model: 'nic', ...d }, w, extra));

/** Device 00:04.0 as the run had it (the last progress report comes before the machine closes). */
function deviceSeen() {
  let m: Machine | null = null;
  let dev: Device | undefined;
  return {
    options: { onMachine: (x: Machine) => (m = x), onProgress: () => (dev = m?.device('00:04.0') ?? dev) },
    dev: () => dev,
  };
}

/** The scenario error message (parseScenario throws a DmaError naming the field). */
function errorOf(input: unknown): string {
  try {
    parseScenario(input);
  } catch (e) {
    return (e as Error).message;
  }
  return 'no error';
}

describe('nvme in scenarios', () => {
  for (const direction of WORKLOAD_DIRECTIONS) {
    for (const mapping of MAPPING_STRATEGIES) {
      it(`verifies every ${direction} I/O with ${mapping} mappings over scattered buffers, a WRITE and a READ each`, async () => {
        const s = await runScenario(nvme({ sizes: ['512', '4 KiB', '12 KiB', '40 KiB'], count: 24, inFlight: 4, direction, mapping, buffers: { layout: 'scattered' } }));
        expect(s.devices[0]).toMatchObject({ model: 'nvme', transfers: 24, verified: 24, mismatches: 0, failed: 0, faults: 0, descriptors: 48 });
        expect(s.leaks).toEqual(NO_LEAKS);
      });
    }
  }

  /** Transfer slices on the device's trace track, by name. */
  async function commandsOf(w: Record<string, unknown>, verify: boolean): Promise<Record<string, number>> {
    let m: Machine | null = null;
    const s = await runScenario(nvme(w, {}, { verify }), { machine: { trace: { enabled: true } }, onMachine: (x) => (m = x) });
    expect(s.devices[0]).toMatchObject({ transfers: 16, failed: 0 });
    const names: Record<string, number> = {};
    for (const e of (m as unknown as Machine).trace!.toChromeTrace().traceEvents) if (e.cat === 'transfer') names[e.name] = (names[e.name] ?? 0) + 1;
    expect(Object.values(names).reduce((a, n) => a + n, 0)).toBe(s.devices[0].descriptors);
    return names;
  }

  it('runs a to-device workload without verify as one WRITE per I/O', async () => {
    expect(await commandsOf({ sizes: ['4 KiB'], count: 16, inFlight: 2, direction: 'to-device' }, false)).toEqual({ 'nvme write': 16 });
  });

  it('runs a from-device workload without verify as one READ per I/O', async () => {
    expect(await commandsOf({ sizes: ['8 KiB'], count: 16, inFlight: 2, direction: 'from-device' }, false)).toEqual({ 'nvme read': 16 });
  });

  it('reads a verified to-device WRITE back from the namespace', async () => {
    expect(await commandsOf({ sizes: ['4 KiB'], count: 16, inFlight: 2, direction: 'to-device' }, true)).toEqual({ 'nvme write': 16, 'nvme read': 16 });
  });

  it('leaves what a verified workload wrote on the namespace', async () => {
    const seen = deviceSeen();
    const s = await runScenario(nvme({ sizes: ['4 KiB'], count: 8, inFlight: 2, direction: 'to-device' }, { nvme: { size: '1 MiB' } }), seen.options);
    expect(s.devices[0]).toMatchObject({ verified: 8 });
    expect(new Uint8Array(seen.dev()!.modelOptions.nvme!.media).some((b) => b !== 0)).toBe(true);
  });

  it('verifies every I/O handed through 2 driver threads', async () => {
    const s = await runScenario(nvme({ sizes: ['4 KiB', '64 KiB'], count: 30, driverThreads: 2, buffers: { layout: 'scattered' } }));
    expect(s.devices[0]).toMatchObject({ driverThreads: 2, transfers: 30, verified: 30, mismatches: 0, failed: 0, descriptors: 60 });
    expect(s.leaks).toEqual(NO_LEAKS);
  });

  it('draws sizes from a distribution in whole LBAs', async () => {
    const s = await runScenario(nvme({ sizes: { dist: 'uniform', min: '4 KiB', max: '32 KiB' }, count: 30, inFlight: 3 }, { nvme: { lbaSize: 4096 } }));
    expect(s.devices[0]).toMatchObject({ transfers: 30, verified: 30, failed: 0 });
    expect(s.devices[0].bytes % 4096).toBe(0);
    expect(s.devices[0].bytes).not.toBe(30 * 4096); // not all the minimum: sizes really vary
  });

  it('gives the controller multi-entry PRP lists over scattered pages when the IOMMU is off', async () => {
    const s = await runScenario(nvme({ sizes: ['64 KiB'], count: 12, inFlight: 2, buffers: { layout: 'scattered' } }, {}, { iommu: { mode: 'off' } }));
    const st = s.devices[0].modelStats;
    expect(s.devices[0]).toMatchObject({ verified: 12, failed: 0 });
    expect(st.prpListCommands).toBe(24); // every WRITE and READ of 16 pages needs a list
    expect(st.prpListEntries).toBe(24 * 15); // PRP1 holds the first page, the list the other 15
  });

  it('passes its namespace options to Machine.addDevice', async () => {
    const seen = deviceSeen();
    await runScenario(nvme({ sizes: ['4 KiB'], count: 2, inFlight: 1 }, { nvme: { lbaSize: 4096, size: '2 MiB' } }), seen.options);
    const o = seen.dev()!.modelOptions.nvme!;
    expect(o.lbaSize).toBe(4096);
    expect(o.media.byteLength).toBe(2 * 2 ** 20);
  });
});

describe('nic in scenarios', () => {
  for (const direction of WORKLOAD_DIRECTIONS) {
    for (const mapping of MAPPING_STRATEGIES) {
      it(`loops every ${direction} frame back verified with ${mapping} mappings, an RX and a TX descriptor each`, async () => {
        const s = await runScenario(nic({ sizes: [64, 1514, '9000', '64 KiB'], count: 24, inFlight: 4, direction, mapping, buffers: { layout: 'scattered' } }));
        expect(s.devices[0]).toMatchObject({ model: 'nic', transfers: 24, verified: 24, mismatches: 0, failed: 0, faults: 0, descriptors: 48 });
        expect(s.leaks).toEqual(NO_LEAKS);
      });
    }
  }

  it('loops back frames handed through 2 driver threads', async () => {
    const s = await runScenario(nic({ sizes: [1514, '9000'], count: 30, driverThreads: 2, mapping: 'pool' }));
    expect(s.devices[0]).toMatchObject({ driverThreads: 2, transfers: 30, verified: 30, failed: 0, descriptors: 60 });
    expect(s.leaks).toEqual(NO_LEAKS);
  });
});

describe('scenario schema: what nvme and nic cannot run', () => {
  it('refuses an nvme size that is not whole LBAs, naming the size', () => {
    expect(errorOf(one({ model: 'nvme' }, { sizes: ['4 KiB', 1000] }))).toMatch(/^EINVAL: scenario\.workloads\[0\]\.sizes\[1\]: 1000 bytes is not whole blocks.*LBA size 512/);
  });

  it('refuses a distribution whose min is not whole LBAs of the device\'s lbaSize', () => {
    expect(errorOf(one({ model: 'nvme', nvme: { lbaSize: 4096 } }, { sizes: { dist: 'uniform', min: 512, max: '8 KiB' } }))).toMatch(/^EINVAL: scenario\.workloads\[0\]\.sizes\.min: .*LBA size 4096/);
  });

  it('refuses an nvme I/O larger than one command moves (MDTS)', () => {
    expect(errorOf(one({ model: 'nvme' }, { sizes: { weighted: [{ size: '8 MiB', weight: 1 }] } }))).toMatch(/^EINVAL: scenario\.workloads\[0\]\.sizes\.weighted\[0\]\.size: .*MDTS/);
  });

  it('refuses a namespace too small for the I/Os in flight, naming its size', () => {
    expect(errorOf(one({ model: 'nvme', nvme: { size: '256 KiB' } }, { sizes: ['64 KiB'], inFlight: 8 }))).toMatch(/^EINVAL: scenario\.devices\[0\]\.nvme\.size: .*keeps 8 in flight/);
  });

  it('refuses an LBA size nvme does not have', () => {
    expect(errorOf(one({ model: 'nvme', nvme: { lbaSize: 1000 } }, { sizes: [4096] }))).toMatch(/^EINVAL: scenario\.devices\[0\]\.nvme\.lbaSize: /);
  });

  it('refuses nvme options on a device of another model', () => {
    expect(errorOf(one({ model: 'copy-engine', nvme: { lbaSize: 512 } }, { sizes: [4096] }))).toMatch(/^EINVAL: scenario\.devices\[0\]\.nvme: only for model 'nvme'/);
  });

  it('refuses a nic frame larger than 64 KiB', () => {
    expect(errorOf(one({ model: 'nic' }, { sizes: ['128 KiB'] }))).toMatch(/^EINVAL: scenario\.workloads\[0\]\.sizes\[0\]: .*more than one nic frame/);
  });

  it('refuses more nic I/Os in flight than half its ring', () => {
    expect(errorOf(one({ model: 'nic', queueDepth: 16 }, { sizes: [1514], inFlight: 9 }))).toMatch(/^EINVAL: scenario\.workloads\[0\]\.inFlight: 9 I\/Os in flight .*at most 8/);
  });

  it('counts a nic\'s driver threads as its I/Os in flight', () => {
    expect(errorOf(one({ model: 'nic', queueDepth: 4 }, { sizes: [1514], driverThreads: 3 }))).toMatch(/^EINVAL: scenario\.workloads\[0\]\.driverThreads: 3 I\/Os in flight/);
  });
});

describe('example scenarios with nvme and nic, at small size', () => {
  it('storage-and-network verifies every NVMe and NIC I/O under a strict IOMMU and leaks nothing', async () => {
    const s = await runScenario(applyOverrides(loadScenarioFile('scenarios/storage-and-network.json'), { transfers: 24 }));
    expect(s.mode).toBe('strict');
    expect(s.devices.map((d) => [d.model, d.transfers, d.verified, d.failed, d.descriptors])).toEqual([
      ['nvme', 24, 24, 0, 48],
      ['nic', 24, 24, 0, 48],
    ]);
    expect(s.devices[0].modelStats.prpListCommands).toBeGreaterThan(0);
    expect(s.leaks).toEqual(NO_LEAKS);
  });

  it('storage-iommu-off walks multi-entry PRP lists, bounces the 32-bit controller and verifies everything', async () => {
    const s = await runScenario(applyOverrides(loadScenarioFile('scenarios/storage-iommu-off.json'), { transfers: 24 }));
    expect(s.mode).toBe('off');
    for (const d of s.devices) expect(d).toMatchObject({ transfers: 24, verified: 24, mismatches: 0, failed: 0 });
    const [big, low] = s.devices;
    expect(big.modelStats.prpListEntries / big.modelStats.prpListCommands).toBeGreaterThan(2);
    expect(low.bouncedBytes).toBe(low.bytes);
    expect(s.leaks).toEqual(NO_LEAKS);
  });
});
