import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_SCENARIO } from '../src/scenario/default-scenario.js';
import { parseScenario } from '../src/scenario/scenario-schema.js';
import { applyOverrides } from '../src/scenario/scenario-overrides.js';
import { runScenario } from '../src/scenario/runner.js';
import { formatScenarioSummary } from '../src/scenario/summary-table.js';

describe('the default scenario (npm start), at small size', () => {
  for (const mode of ['strict', 'lazy', 'off'] as const) {
    it(`verifies every transfer and leaks nothing (IOMMU ${mode})`, async () => {
      const s = await runScenario(applyOverrides(parseScenario(DEFAULT_SCENARIO), { transfers: 40, mode }));
      expect(s.devices.map((d) => d.transfers)).toEqual([40, 40]);
      for (const d of s.devices) expect(d).toMatchObject({ verified: 40, mismatches: 0, failed: 0, faults: 0 });
      expect(s.leaks).toEqual({ liveMappings: 0, ramPages: 0, bounceSlots: 0 });
      // The 32-bit device's buffers sit above 4 GiB: bounced only when nothing translates.
      if (mode === 'off') {
        expect(s.dma.bouncedMaps).toBe(80);
        expect(s.devices[0].bouncedBytes).toBe(2 * s.devices[0].bytes);
        expect(s.bouncedBytes).toBeGreaterThan(0);
      } else {
        expect(s.bouncedBytes).toBe(0);
        expect(s.dma.iommuMaps).toBe(160);
      }
      const table = formatScenarioSummary(s);
      expect(table).toContain('0000:00:03.0  copy-engine  32-bit  contiguous above 4 GiB');
      expect(table).toContain('40 ok');
    });
  }
});

const cli = (...args: string[]) => spawnSync(process.execPath, ['dist/bin/dmaemu.js', ...args], { encoding: 'utf8', timeout: 60_000 });

describe('dmaemu run (the command)', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'dmaemu-cli-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('lists its commands in dmaemu --help', () => {
    const r = cli('--help');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/run \[options\] \[scenario\.json\]/);
    expect(r.stdout).toMatch(/groups/);
  });

  it('describes every option of run in dmaemu run --help', () => {
    const r = cli('run', '--help');
    expect(r.status).toBe(0);
    for (const opt of ['scenario.json', '--mode <mode>', 'off', 'strict', 'lazy', '--transfers <n>', '--duration <seconds>', '--seed <n>', '--no-verify', '--json', '--help']) {
      expect(r.stdout).toContain(opt);
    }
  });

  it('runs a scenario file with --json and a flag override, exit 0', () => {
    const p = join(dir, 'small.json');
    writeFileSync(p, JSON.stringify({ name: 'small', devices: [{ bdf: '00:05.0', dmaMask: 32 }], workloads: [{ device: '00:05.0', sizes: ['4 KiB'], count: 500 }] }));
    const r = cli('run', p, '--json', '--transfers', '12', '--mode', 'lazy');
    expect(r.stderr).toBe(''); // no progress line with --json
    expect(r.status).toBe(0);
    const s = JSON.parse(r.stdout);
    expect(s).toMatchObject({ scenario: 'small', mode: 'lazy', transfers: 12 });
    expect(s.devices[0]).toMatchObject({ bdf: '0000:00:05.0', verified: 12, mismatches: 0 });
  });

  it('refuses a bad scenario with a dmaemu: message naming the field, exit 2', () => {
    const p = join(dir, 'bad.json');
    writeFileSync(p, JSON.stringify({ devices: [{ bdf: '00:05.0', model: 'warp-drive' }], workloads: [{ device: '00:05.0', sizes: [1] }] }));
    const r = cli('run', p);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/^dmaemu: EINVAL: scenario file .*bad\.json: scenario\.devices\[0\]\.model: must be a device model/);
    expect(r.stdout).toBe('');
  });

  it('says clearly that a scenario file cannot be read, exit 2', () => {
    const r = cli('run', join(dir, 'missing.json'));
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/^dmaemu: ENOENT: scenario file .*missing\.json: cannot read it: no such file/);
  });

  it('refuses a bad flag value naming the flag, exit 2', () => {
    const r = cli('run', '--transfers', 'many');
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('--transfers "many" is not a number');
  });
});
