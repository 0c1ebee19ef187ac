import { describe, it, expect } from 'vitest';
import { stress } from '../src/stress/stress.js';
import { formatViolations } from '../src/cli/stress-command.js';
import { INVARIANTS } from '../src/stress/invariants.js';

// stress() builds and closes its own machine and driver pool (in a finally), so no test leaves a worker behind.
describe('stress runner', () => {
  it('holds every invariant in a 3 s strict run with 2 devices and 2 driver threads', async () => {
    const s = await stress({ seed: 1, durationS: 3, devices: 2, driverThreads: 2, mode: 'strict' });
    expect(s.violations).toBe(0);
    expect(Object.values(s.invariants)).toEqual(INVARIANTS.map(() => 0));
    expect(s.operations).toBeGreaterThan(0);
    expect(s.bytes).toBeGreaterThan(0);
    expect(s.expectedFaults).toBeGreaterThan(0);
    expect(s.faults).toBe(s.expectedFaults);
    expect(s.bytesSubmitted).toBe(s.bytes + s.bytesFaulted);
    expect(s.staleAccesses).toBe(0);
    expect(s.bouncedBytes).toBe(0);
    expect(s.leaks).toEqual({ liveMappings: 0, iovaPages: 0, bounceSlots: 0, ramPages: 0, pageTablePages: 0 });
    expect(s.perDevice.map((d) => d.requests > 0)).toEqual([true, true]);
    for (const n of Object.values(s.perKind)) expect(n).toBeGreaterThan(0);
  });

  it('runs the same per-thread op sequence twice for one seed', async () => {
    const a = await stress({ seed: 5, ops: 1500, logOps: 40 });
    const b = await stress({ seed: 5, ops: 1500, logOps: 40 });
    expect(a.violations + b.violations).toBe(0);
    expect(b.perThread.map((t) => t.opLog)).toEqual(a.perThread.map((t) => t.opLog));
    expect(b.perThread.map((t) => [t.opLogHash, t.stressOps])).toEqual(a.perThread.map((t) => [t.opLogHash, t.stressOps]));
    expect(a.perThread[0].opLog).toHaveLength(40);
    expect(a.perThread[0].opLogHash).not.toBe(a.perThread[1].opLogHash);
  });

  it('runs a different op sequence for another seed', async () => {
    const a = await stress({ seed: 5, ops: 300, logOps: 10 });
    const b = await stress({ seed: 6, ops: 300, logOps: 10 });
    expect(b.perThread[0].opLog).not.toEqual(a.perThread[0].opLog);
  });

  it('catches one corrupted byte of a completed transfer and names the seed, the op and its events', async () => {
    const s = await stress({ seed: 3, ops: 400, inject: 'corrupt-byte' });
    expect(s.violations).toBe(1);
    expect(s.invariants.data).toBe(1);
    const v = s.violationDetails[0];
    expect(v.invariant).toBe('data');
    expect(v.events.map((e) => e.what)).toEqual(expect.arrayContaining(['INJECTED: corrupted one byte', 'dma-copy', 'complete ok']));
    const report = formatViolations(s);
    expect(report).toContain('with seed 3');
    expect(report).toContain('INJECTED: corrupted one byte');
    expect(report).toContain('dmaemu stress --seed 3 --ops 400');
  });

  it('catches a skipped unmap as a leak, with the mapping\'s history', async () => {
    const s = await stress({ seed: 4, ops: 600, inject: 'skip-unmap' });
    expect(s.invariants['no-leak']).toBeGreaterThan(0);
    expect(s.leaks.liveMappings).toBe(1);
    const v = s.violationDetails.find((x) => x.thread === 0 && x.invariant === 'no-leak')!;
    expect(v.message).toMatch(/mapSingle 0x[0-9a-f]+ \(\+\d+\) of op \d+ on device .* was never unmapped/);
    expect(v.events.map((e) => e.what)).toEqual(expect.arrayContaining(['INJECTED: skipped unmapSingle']));
    expect(v.events[0].what).toMatch(/^mapSingle/);
  });

  it('reports stale accesses without violations in lazy mode', async () => {
    const s = await stress({ seed: 2, ops: 12_000, mode: 'lazy' });
    expect(s.violations).toBe(0);
    expect(s.staleAccesses).toBeGreaterThan(0);
    expect(s.staleWrites).toBeGreaterThan(0);
    expect(s.leaks).toEqual({ liveMappings: 0, iovaPages: 0, bounceSlots: 0, ramPages: 0, pageTablePages: 0 });
  });

  it('holds every invariant without an IOMMU (direct and SWIOTLB bounce)', async () => {
    const s = await stress({ seed: 8, ops: 3000, mode: 'off' });
    expect(s.violations).toBe(0);
    expect(s.faults).toBe(s.expectedFaults);
    expect(s.expectedFaults).toBeGreaterThan(0);
    expect(s.bouncedBytes).toBeGreaterThan(0);
    expect(s.perKind['use-after-unmap'] + s.perKind['unmap-in-flight'] + s.perKind['dma-to-device-mapping']).toBe(0);
  });

  it('refuses a bad option with EINVAL before it starts anything', async () => {
    await expect(stress({ devices: 0 })).rejects.toMatchObject({ code: 'EINVAL' });
    await expect(stress({ ops: -1 })).rejects.toMatchObject({ code: 'EINVAL' });
  });
});
