/**
 * The stress runner with hostile devices: bursts of wild DMA beside the honest copy engines, the
 * hostile-isolation and fault-accounting invariants, and the test-only hook that breaks
 * isolation on purpose. stress() builds and closes its own machine and pool (in a finally).
 */
import { describe, it, expect } from 'vitest';
import { stress } from '../src/stress/stress.js';
import { formatViolations } from '../src/cli/stress-command.js';
import { INVARIANTS } from '../src/stress/invariants.js';
import { HOSTILE_AIMS } from '../src/stress/stress-hostile.js';

describe('stress with a hostile device', () => {
  it('holds every invariant over 10^5 hostile accesses in strict mode, with refused = recorded exactly', async () => {
    const s = await stress({ seed: 21, ops: 2000, hostileBursts: 25 });
    expect(s.violationDetails).toEqual([]);
    expect(s.violations).toBe(0);
    expect(Object.keys(s.invariants)).toEqual([...INVARIANTS]);
    const h = s.hostile;
    expect(h.devices).toBe(1);
    expect(h.bursts).toBeGreaterThanOrEqual(25);
    expect(h.accesses).toBe(h.bursts * 4096);
    expect(h.accesses).toBeGreaterThanOrEqual(100_000);
    expect(h.refused + h.moved).toBe(h.accesses);
    // Every refusal is one record; the ring (drained after each burst) never filled.
    expect(h.faultsDropped).toBe(0);
    expect(h.faultsRecorded).toBe(h.refused);
    // The honest devices' own faults are accounted apart, by requester ID.
    expect(h.honestFaultsRecorded).toBe(s.faults);
    expect(s.faults).toBe(s.expectedFaults);
    // It aimed everywhere, and wrote into its own writable buffers.
    for (const aim of HOSTILE_AIMS) expect(h.perAim[aim]).toBeGreaterThan(0);
    expect(h.refused).toBeGreaterThan(50_000);
    expect(h.bytesWritten).toBeGreaterThan(0);
    expect(h.perDevice.map((d) => [d.bdf, d.accesses, d.faultsRecorded])).toEqual([['0000:00:05.0', h.accesses, h.refused]]);
  });

  it('keeps the accounting exact when bursts overflow the fault ring: the rest are counted drops', async () => {
    const s = await stress({ seed: 22, ops: 300, hostileAccesses: 100_000, hostileBursts: 2 });
    expect(s.violationDetails).toEqual([]);
    const h = s.hostile;
    expect(h.faultsDropped).toBeGreaterThan(0);
    expect(h.faultsRecorded).toBeGreaterThan(0);
    expect(h.faultsRecorded + h.faultsDropped).toBe(h.refused);
  });

  it('holds every invariant in lazy mode with a hostile device', async () => {
    const s = await stress({ seed: 23, ops: 3000, mode: 'lazy', hostileBursts: 8 });
    expect(s.violationDetails).toEqual([]);
    expect(s.hostile.bursts).toBeGreaterThanOrEqual(8);
    expect(s.hostile.faultsRecorded + s.hostile.faultsDropped).toBe(s.hostile.refused);
  });

  it('catches a write landing on a canary page mapped behind its back as hostile-isolation, with the seed', async () => {
    const s = await stress({ seed: 31, ops: 300, hostileBursts: 4, inject: 'map-canary' });
    expect(s.invariants['hostile-isolation']).toBeGreaterThan(0);
    expect(s.violations).toBe(s.invariants['hostile-isolation']);
    const canary = s.violationDetails.find((v) => /canary page .* changed at PA/.test(v.message));
    expect(canary).toBeDefined();
    expect(canary!.invariant).toBe('hostile-isolation');
    expect(canary!.message).toContain('stress seed 31');
    expect(canary!.message).toMatch(/burst seed 0x[0-9a-f]+/);
    expect(canary!.events.at(-1)!.what).toBe('hostile-burst');
    // The burst's replay from its seed shows accesses no mapping of the stress allows.
    expect(s.violationDetails.some((v) => /went through that none of its mappings allows/.test(v.message))).toBe(true);
    const report = formatViolations(s);
    expect(report).toContain('with seed 31');
    expect(report).toContain('[hostile-isolation]');
  });

  it('catches one hostile fault record lost without a count as fault-accounting', async () => {
    const s = await stress({ seed: 32, ops: 300, hostileBursts: 2, inject: 'lose-fault-record' });
    expect(s.invariants['fault-accounting']).toBe(1);
    expect(s.violations).toBe(1);
    const v = s.violationDetails[0];
    expect(v.message).toContain('stress seed 32');
    expect(v.message).toMatch(/hostile refusals (\d+) ≠ (\d+) records \+ 0 dropped/);
    const [, refused, recorded] = /refusals (\d+) ≠ (\d+)/.exec(v.message)!;
    expect(Number(refused) - Number(recorded)).toBe(1);
  });

  it('with hostile 0 runs no hostile device and the same op sequences as with one', async () => {
    const off = await stress({ seed: 5, ops: 1500, logOps: 40, hostile: 0 });
    const on = await stress({ seed: 5, ops: 1500, logOps: 40, hostile: 1 });
    expect(off.violations + on.violations).toBe(0);
    expect(off.hostile).toMatchObject({ devices: 0, bursts: 0, accesses: 0, faultsRecorded: 0, faultsDropped: 0 });
    expect(on.hostile.devices).toBe(1);
    expect(off.perDevice).toHaveLength(2);
    expect(off.perThread.map((t) => [t.opLogHash, t.stressOps])).toEqual(on.perThread.map((t) => [t.opLogHash, t.stressOps]));
  });

  it('runs no hostile device without an IOMMU, and refuses one there with EINVAL', async () => {
    await expect(stress({ ops: 10, mode: 'off', hostile: 1 })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(stress({ ops: 10, hostile: 9 })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(stress({ ops: 10, inject: 'map-canary', hostile: 0 })).rejects.toMatchObject({ code: 'EINVAL' });
    const s = await stress({ seed: 8, ops: 500, mode: 'off' });
    expect(s.violations).toBe(0);
    expect(s.hostile.devices).toBe(0);
  });
});
