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
    expect(Object.keys(j.invariants)).toEqual(['data', 'completion-once', 'strict-unmap', 'expected-faults', 'no-leak', 'counters']);
    expect(j.perDevice).toHaveLength(2);
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

  it('refuses --duration together with --ops', () => {
    const r = run('--ops', '10', '--duration', '1');
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/cannot be used with/);
  });

  it('lists every option in --help', () => {
    const r = run('--help');
    expect(r.status).toBe(0);
    for (const o of ['--seed', '--duration', '--ops', '--devices', '--driver-threads', '--mode', '--window', '--json', '--inject']) expect(r.stdout).toContain(o);
  });
});
