import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const bin = fileURLToPath(new URL('../dist/bin/dmaemu.js', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [bin, 'stress', ...args], { encoding: 'utf8', timeout: 60_000 });

describe('dmaemu stress (CLI)', () => {
  it('prints one JSON summary with the issue\'s fields and exits 0 when every invariant held', () => {
    const r = run('--ops', '1500', '--seed', '11', '--json');
    expect(r.status).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j).toMatchObject({ seed: 11, violations: 0, mode: 'strict', devices: 2, driverThreads: 2 });
    for (const k of ['operations', 'bytes', 'faults', 'staleAccesses']) expect(typeof j[k]).toBe('number');
    expect(j.operations).toBeGreaterThanOrEqual(1500);
    expect(Object.keys(j.invariants)).toEqual(['data', 'completion-once', 'strict-unmap', 'expected-faults', 'no-leak', 'counters', 'hostile-isolation', 'fault-accounting']);
    expect(j.perDevice).toHaveLength(2);
    // One hostile device by default, its figures in the summary.
    expect(j.hostile).toMatchObject({ devices: 1, accessesPerBurst: 4096 });
    for (const k of ['bursts', 'accesses', 'refused', 'moved', 'faultsRecorded', 'faultsDropped']) expect(typeof j.hostile[k]).toBe('number');
    expect(j.hostile.faultsRecorded + j.hostile.faultsDropped).toBe(j.hostile.refused);
  });

  it('exits 1 and prints the seed, the history and the replay command when an invariant is violated', () => {
    const r = run('--ops', '400', '--seed', '12', '--json', '--inject', 'corrupt-byte');
    expect(r.status).toBe(1);
    expect(JSON.parse(r.stdout).violations).toBe(1);
    expect(r.stderr).toContain('with seed 12');
    expect(r.stderr).toContain('[data]');
    expect(r.stderr).toContain('replay');
    expect(r.stderr).toContain('dmaemu stress --seed 12 --ops 400');
  });

  it('takes --hostile, --hostile-accesses and --hostile-bursts', () => {
    const r = run('--ops', '300', '--seed', '13', '--json', '--hostile', '2', '--hostile-accesses', '1000', '--hostile-bursts', '3');
    expect(r.status).toBe(0);
    const j = JSON.parse(r.stdout);
    expect(j.hostile).toMatchObject({ devices: 2, accessesPerBurst: 1000 });
    expect(j.hostile.perDevice.map((d: { bursts: number }) => d.bursts >= 3)).toEqual([true, true]);
    expect(j.replay).toContain('--hostile 2 --hostile-accesses 1000');
  });

  it('runs without a hostile device with --hostile 0', () => {
    const r = run('--ops', '300', '--seed', '14', '--json', '--hostile', '0');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout).hostile).toMatchObject({ devices: 0, bursts: 0, accesses: 0 });
  });

  it('refuses --duration together with --ops', () => {
    const r = run('--ops', '10', '--duration', '1');
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/cannot be used with/);
  });

  it('lists every option in --help', () => {
    const r = run('--help');
    expect(r.status).toBe(0);
    for (const o of ['--seed', '--duration', '--ops', '--devices', '--driver-threads', '--mode', '--window', '--hostile', '--hostile-accesses', '--hostile-bursts', '--hostile-duty', '--json', '--inject']) expect(r.stdout).toContain(o);
  });
});
