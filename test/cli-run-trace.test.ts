import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChromeTrace, ScenarioSummary } from '../src/index.js';
import { expectValidTrace, trackOf, eventsOn } from './trace-check.js';

const cli = (...args: string[]) => spawnSync(process.execPath, ['dist/bin/dmaemu.js', ...args], { encoding: 'utf8', timeout: 120_000 });

/** Runs `dmaemu run … --json --trace <file>`; the summary, the trace and what it printed on stderr. */
function runTraced(dir: string, name: string, ...args: string[]): { summary: ScenarioSummary; trace: ChromeTrace; stderr: string } {
  const out = join(dir, `${name}.json`);
  const r = cli('run', ...args, '--json', '--trace', out);
  expect(r.stderr).not.toMatch(/dmaemu: /);
  expect(r.status).toBe(0);
  return { summary: JSON.parse(r.stdout) as ScenarioSummary, trace: JSON.parse(readFileSync(out, 'utf8')) as ChromeTrace, stderr: r.stderr };
}

/** Per device row: its track (named by BDF and model) and the transfer slices on it. */
function expectSlicesPerDevice(s: ScenarioSummary, t: ChromeTrace): void {
  for (const d of s.devices) {
    const track = trackOf(t, `${d.bdf} ${d.model}`);
    expect(track, `a track for ${d.bdf} ${d.model}`).toBeDefined();
    const slices = eventsOn(t, track!, 'X').filter((e) => e.cat === 'transfer');
    expect(slices.length, d.bdf).toBe(d.descriptors);
    expect(d.descriptors).toBeGreaterThanOrEqual(d.transfers);
  }
  expect(t.metadata.droppedEvents).toBe(0);
}

describe('dmaemu run --trace', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'dmaemu-trace-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('lists --trace and --trace-events in dmaemu run --help', () => {
    const r = cli('run', '--help');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('--trace <out.json>');
    expect(r.stdout).toContain('--trace-events <n>');
  });

  it('writes the default scenario\'s trace: valid Trace Event JSON, one copy slice per descriptor on each device\'s track', () => {
    const { summary, trace, stderr } = runTraced(dir, 'default', '--transfers', '30');
    expectValidTrace(trace);
    expectSlicesPerDevice(summary, trace);
    for (const d of summary.devices) expect(d.descriptors).toBe(d.transfers); // one copy per contiguous I/O
    expect(stderr).toMatch(new RegExp(`trace: wrote ${trace.traceEvents.length} events to .*default\\.json \\(0 dropped\\)`));
  });

  it('writes storage-and-network\'s trace: nvme and nic tracks whose slices equal the run\'s commands, and a track per driver thread', () => {
    const { summary, trace } = runTraced(dir, 'storage', 'scenarios/storage-and-network.json', '--transfers', '24');
    expectValidTrace(trace);
    expectSlicesPerDevice(summary, trace);
    const [nvme, nic] = summary.devices;
    expect(nic.driverThreads).toBe(2);
    const names = (bdf: string, model: string) => eventsOn(trace, trackOf(trace, `${bdf} ${model}`)!, 'X').map((e) => e.name);
    expect(names(nvme.bdf, 'nvme').filter((n) => n === 'nvme write')).toHaveLength(nvme.transfers);
    expect(names(nvme.bdf, 'nvme').filter((n) => n === 'nvme read')).toHaveLength(nvme.transfers);
    expect(names(nic.bdf, 'nic').filter((n) => n === 'nic tx')).toHaveLength(nic.transfers);
    expect(names(nic.bdf, 'nic').filter((n) => n === 'nic rx post')).toHaveLength(nic.transfers);
    // The NIC's two driver threads map and sync on tracks of their own.
    const threads = trace.traceEvents.filter((e) => e.ph === 'M' && e.name === 'thread_name' && /^driver thread /.test(String(e.args?.name)));
    expect(threads).toHaveLength(2);
    for (const th of threads) expect(eventsOn(trace, th, 'X').length).toBeGreaterThan(0);
  });

  it('refuses --trace-events without --trace', () => {
    const r = cli('run', '--transfers', '2', '--trace-events', '100');
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('--trace-events needs --trace');
  });
});
