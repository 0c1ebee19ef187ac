import { describe, it, expect } from 'vitest';
import { parseScenario } from '../src/scenario/scenario-schema.js';
import { DEFAULT_SCENARIO } from '../src/scenario/default-scenario.js';
import { parseByteSize } from '../src/scenario/byte-size.js';
import { applyOverrides } from '../src/scenario/scenario-overrides.js';

const base = () => ({
  devices: [{ bdf: '00:03.0', dmaMask: 32 }],
  workloads: [{ device: '00:03.0', sizes: [4096] }],
});

/** The DmaError message parseScenario gives for `s`. */
function errorOf(s: unknown): string {
  try {
    parseScenario(s);
  } catch (e) {
    expect(e).toMatchObject({ name: 'DmaError', code: 'EINVAL' });
    return (e as Error).message;
  }
  throw new Error('parseScenario accepted it');
}

describe('scenario schema', () => {
  it('fills defaults for a minimal scenario', () => {
    const s = parseScenario(base());
    expect(s.iommu.mode).toBe('strict');
    expect(s.verify).toBe(true);
    expect(s.devices[0]).toMatchObject({ model: 'copy-engine', dmaMask: 32, queueDepth: 64 });
    expect(s.workloads[0]).toMatchObject({ direction: 'bidirectional', mapping: 'per-transfer', inFlight: 8, driverThreads: 1, buffers: { layout: 'contiguous' } });
  });

  it('accepts the built-in default scenario and reads its sizes as bytes', () => {
    const s = parseScenario(DEFAULT_SCENARIO);
    expect(s.workloads[0].sizes).toEqual([512, 4096, 16384, 65536, 262144]);
    expect(s.workloads[0].buffers.above).toBe(4 * 2 ** 30);
    expect(s.swiotlb.size).toBe(8 * 2 ** 20);
  });

  it('parses byte sizes written as text', () => {
    expect(parseByteSize('4 KiB')).toBe(4096);
    expect(parseByteSize('64MiB')).toBe(64 * 2 ** 20);
    expect(parseByteSize('4G')).toBe(4 * 2 ** 30);
    expect(parseByteSize('12 parsecs')).toBeUndefined();
  });

  it('names the field of an unknown device model and lists the models with an adapter', () => {
    const s = base();
    (s.devices[0] as Record<string, unknown>).model = 'hostile';
    expect(errorOf(s)).toMatch(/scenario\.devices\[0\]\.model: must be a device model with a workload adapter \(copy-engine, nvme, nic\).*"hostile"/);
  });

  it('names the field inside a size distribution whose max is below its min', () => {
    const s = { ...base(), workloads: [{ device: '00:03.0', sizes: { dist: 'uniform', min: '64 KiB', max: '4 KiB' } }] };
    expect(errorOf(s)).toMatch(/^EINVAL: scenario\.workloads\[0\]\.sizes\.max: must not be below min/);
  });

  it('names the sizes field when it is none of the three forms', () => {
    const s = { ...base(), workloads: [{ device: '00:03.0', sizes: 'lots' }] };
    expect(errorOf(s)).toMatch(/scenario\.workloads\[0\]\.sizes: must be a list of sizes/);
  });

  it('names the list element of a size that is not a byte count', () => {
    const s = { ...base(), workloads: [{ device: '00:03.0', sizes: [4096, '3 furlongs'] }] };
    expect(errorOf(s)).toMatch(/scenario\.workloads\[0\]\.sizes\[1\]: must be a byte count/);
  });

  it('names a workload whose device is not among the devices', () => {
    const s = { ...base(), workloads: [{ device: '00:03.0', sizes: [4096] }, { device: '00:09.0', sizes: [4096] }] };
    expect(errorOf(s)).toMatch(/scenario\.workloads\[1\]\.device: no device 0000:00:09\.0 among devices/);
  });

  it('names a second workload on the same device', () => {
    const s = { ...base(), workloads: [{ device: '00:03.0', sizes: [4096] }, { device: '0000:00:03.0', sizes: [512] }] };
    expect(errorOf(s)).toMatch(/scenario\.workloads\[1\]\.device: device 0000:00:03\.0 already runs workloads\[0\]/);
  });

  it('names an unknown key and where it is', () => {
    const s = { ...base(), workloads: [{ device: '00:03.0', sizes: [4096], mapping: 'cached', strategy: 'pool' }] };
    expect(errorOf(s)).toMatch(/scenario\.workloads\[0\]: Unrecognized key.*strategy/);
  });

  it('refuses a count and a duration together, naming durationMs', () => {
    const s = { ...base(), workloads: [{ device: '00:03.0', sizes: [4096], count: 10, durationMs: 100 }] };
    expect(errorOf(s)).toMatch(/scenario\.workloads\[0\]\.durationMs: give count or durationMs, not both/);
  });

  it('names a bad IOMMU mode, mapping strategy and BDF', () => {
    expect(errorOf({ ...base(), iommu: { mode: 'loose' } })).toMatch(/scenario\.iommu\.mode:/);
    expect(errorOf({ ...base(), workloads: [{ device: '00:03.0', sizes: [1], mapping: 'sometimes' }] })).toMatch(/scenario\.workloads\[0\]\.mapping:/);
    expect(errorOf({ ...base(), devices: [{ bdf: 'zz:99' }] })).toMatch(/scenario\.devices\[0\]\.bdf: must be a PCI address/);
  });

  it('refuses a scenario that is not an object', () => {
    expect(errorOf([1, 2])).toMatch(/scenario: must be a JSON object/);
  });
});

describe('command-line overrides', () => {
  it('replace the mode, seed and verification, and give every workload the flag count', () => {
    const s = applyOverrides(parseScenario(DEFAULT_SCENARIO), { mode: 'off', transfers: 5, seed: 9, verify: false });
    expect(s.iommu.mode).toBe('off');
    expect(s.seed).toBe(9);
    expect(s.verify).toBe(false);
    expect(s.workloads.map((w) => w.count)).toEqual([5, 5]);
  });

  it('turn counts into a duration with --duration', () => {
    const s = applyOverrides(parseScenario(DEFAULT_SCENARIO), { durationS: 0.5 });
    expect(s.workloads.map((w) => [w.count, w.durationMs])).toEqual([
      [undefined, 500],
      [undefined, 500],
    ]);
  });

  it('refuse a non-positive transfer count, naming the flag', () => {
    expect(() => applyOverrides(parseScenario(DEFAULT_SCENARIO), { transfers: 0 })).toThrow(/--transfers 0 must be a positive integer/);
  });
});
