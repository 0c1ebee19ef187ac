/**
 * `dmaemu bench`: its options, its refusal of an unknown suite, and the shape of a run's result
 * (from a fixed, instant suite: no benchmark runs here).
 */
import { spawnSync } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { missingFigures, REQUIRED_FIGURE_IDS, runBench, suites } from '../bench/run.js';
import { formatFigures } from '../bench/figures.js';
import { fixedBenchResult } from './bench-fixture.js';

const cli = (...args: string[]) => spawnSync(process.execPath, ['dist/bin/dmaemu.js', 'bench', ...args], { encoding: 'utf8', timeout: 30_000 });

describe('dmaemu bench (command line)', () => {
  it('--help lists every option and every suite', () => {
    const r = cli('--help');
    expect(r.status).toBe(0);
    for (const o of ['--suite <name>', '--json', '--report <file>']) expect(r.stdout).toContain(o);
    for (const name of Object.keys(suites)) expect(r.stdout).toContain(`"${name}"`);
  });

  it('--suite nosuch fails before running anything, listing the valid suites', () => {
    const r = cli('--suite', 'nosuch');
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(`argument 'nosuch' is invalid. Allowed choices are ${Object.keys(suites).join(', ')}.`);
    expect(r.stderr).not.toContain('dmaemu bench: suite');
  });
});

describe('a run\'s result', () => {
  afterEach(() => {
    delete suites.fixed;
  });

  it('is { machine, figures: [{ id, value, unit, goal, met }], series }, each figure judged against its goal', async () => {
    const f = fixedBenchResult();
    suites.fixed = async () => ({ figures: f.figures.map(({ met: _met, ...rest }) => rest), series: f.series });
    const r = JSON.parse(JSON.stringify(await runBench({ suite: 'fixed' })));
    expect(Object.keys(r)).toEqual(['machine', 'figures', 'series']);
    expect(Object.keys(r.machine).sort()).toEqual(['cores', 'cpu', 'date', 'loadAverage', 'memoryGiB', 'node', 'platform']);
    for (const x of r.figures) expect(Object.keys(x).filter((k) => k !== 'note').sort()).toEqual(['goal', 'id', 'met', 'unit', 'value']);
    expect(r.figures.map((x: { id: string; met: boolean }) => [x.id, x.met])).toEqual(f.figures.map((x) => [x.id, x.met]));
    expect(r.figures.find((x: { id: string }) => x.id === 'iotlb-hit-ns').met).toBe(false); // 5.32 ns > 5 ns
    expect(r.figures.find((x: { id: string }) => x.id === 'walk-ns').met).toBe(true); // 11.99 ns ≤ 12 ns
    expect(r.figures.find((x: { id: string }) => x.id === 'bounce-breakeven-bytes')).toMatchObject({ goal: null, met: null }); // information only
    expect(r.series).toEqual(f.series);
  });

  it('a suite that returns a bare figure list adds figures and no series', async () => {
    suites.fixed = async () => [{ id: 'x', value: 3, unit: 'ns', goal: { op: '<=', value: 2 } }];
    const r = await runBench({ suite: 'fixed' });
    expect(r.figures).toEqual([{ id: 'x', value: 3, unit: 'ns', goal: { op: '<=', value: 2 }, met: false }]);
    expect(r.series).toEqual([]);
  });

  it('runBench names the valid suites when asked for an unknown one', async () => {
    await expect(runBench({ suite: 'nosuch' })).rejects.toThrow(`EINVAL: bench: no suite "nosuch"; suites: ${Object.keys(suites).join(', ')}`);
  });

  it('missingFigures names the required ids a run lacks', () => {
    const f = fixedBenchResult();
    expect(missingFigures(f)).toEqual([]);
    f.figures = f.figures.filter((x) => x.id !== 'dma-2dev-scaling');
    expect(missingFigures(f)).toEqual(['dma-2dev-scaling']);
    expect(REQUIRED_FIGURE_IDS).toHaveLength(11);
  });

  it('the text table prints each figure with 3 digits, its goal and met / NOT MET', () => {
    const lines = formatFigures(fixedBenchResult().figures).split('\n');
    expect(lines[0]).toMatch(/^figure\s+value\s+goal\s+met\s+note$/);
    expect(lines.find((l) => l.startsWith('iotlb-hit-ns'))).toMatch(/^iotlb-hit-ns\s+5\.32 ns\s+<= 5 ns\s+NOT MET$/);
    expect(lines.find((l) => l.startsWith('walk-ns'))).toMatch(/^walk-ns\s+12\.0 ns\s+<= 12 ns\s+met$/);
    expect(lines.find((l) => l.startsWith('bounce-breakeven-bytes'))).toMatch(/^bounce-breakeven-bytes\s+1\.20e\+5 B\s+—\s+info\s+reported for information$/);
  });
});
