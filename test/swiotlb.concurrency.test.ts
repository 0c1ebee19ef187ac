import type { Worker } from 'node:worker_threads';
import { runWorkersTogether } from './worker-harness.js';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { GiB, KiB, MiB } from '../src/addresses.js';
import { GuestRam } from '../src/memory/guest-ram.js';
import { Swiotlb, SWIOTLB_MAX_MAPPING } from '../src/dma/swiotlb.js';
import type { SwiotlbWorkerData, SwiotlbWorkerResult } from '../workers/swiotlb-worker.js';

// Workers run from the compiled tree (dist/workers/swiotlb-worker.js): `npm test` builds first.
const ram = GuestRam.create();
const live = new Set<Worker>();

afterEach(async () => {
  await Promise.all([...live].map((w) => w.terminate()));
  live.clear();
});

afterAll(() => {
  expect(ram.pagesInUse()).toBe(0);
});

type Job = Omit<SwiotlbWorkerData, 'ram' | 'swiotlb' | 'startFlag'>;

/** Starts one swiotlb-worker per job, releases them together, returns their results. */
async function runWorkers(tlb: Swiotlb, jobs: Job[]): Promise<SwiotlbWorkerResult[]> {
  const datas: Array<Omit<SwiotlbWorkerData, 'startFlag'>> = jobs.map((job) => ({ ...job, ram: ram.handle, swiotlb: tlb.handle }));
  return runWorkersTogether<SwiotlbWorkerResult>('swiotlb-worker', datas, live);
}

async function scenario(opts: {
  size: number;
  areas: number;
  homeAreas: [number | undefined, number | undefined];
  iterations: number;
  maxLive: number;
  maxLen?: number;
}) {
  const tlb = Swiotlb.create(ram, { size: opts.size, areas: opts.areas });
  const origs = [ram.alloc(1 * MiB, { above: 4 * GiB }), ram.alloc(1 * MiB, { above: 4 * GiB })];
  try {
    const jobs: Job[] = origs.map((o, k) => ({
      origBase: o.pa,
      origSize: o.size,
      bdf: `00:0${k + 3}.0`,
      seed: 1234 + k * 77,
      iterations: opts.iterations,
      maxLive: opts.maxLive,
      maxLen: opts.maxLen ?? SWIOTLB_MAX_MAPPING,
      homeArea: opts.homeAreas[k],
      tagBase: 1 + k * 64,
    }));
    const results = await runWorkers(tlb, jobs);
    for (const r of results) expect(r, r.error).toMatchObject({ ok: true });
    const s = tlb.stats();
    const sum = (f: (r: SwiotlbWorkerResult) => number) => results.reduce((x, r) => x + f(r), 0);
    expect(s.slotsInUse).toBe(0);
    expect(s.liveMappings).toBe(0);
    expect(s.areaUsed.every((u) => u === 0)).toBe(true);
    expect(s.maps).toBe(sum((r) => r.maps));
    expect(s.unmaps).toBe(sum((r) => r.unmaps));
    expect(s.maps).toBe(s.unmaps);
    expect(s.syncs).toBe(sum((r) => r.syncs));
    expect(s.bouncedBytes).toBe(sum((r) => r.bounced));
    expect(s.full).toBe(sum((r) => r.enospc));
    expect(s.highWater).toBeLessThanOrEqual(s.totalSlots);
    return { results, stats: s };
  } finally {
    tlb.destroy();
    for (const o of origs) ram.free(o);
  }
}

describe('SWIOTLB on real workers', () => {
  it('two threads in their own areas of a small pool spill into each other and never share a slot', async () => {
    // 4 segments in 2 areas; up to 6 live mappings of up to 256 KiB each per thread: areas fill.
    const { results, stats } = await scenario({ size: 1 * MiB, areas: 2, homeAreas: [0, 1], iterations: 800, maxLive: 6 });
    for (const r of results) expect(r.maps).toBeGreaterThan(50);
    expect(stats.full).toBeGreaterThan(0); // the pool did fill up
    expect(stats.highWater).toBeGreaterThan(256); // more than one area's worth at once: they spilled
  });

  it('two threads sharing one area lock', async () => {
    // Small mappings: the threads spend most of their time in the area's search, racing for its lock.
    const { results } = await scenario({ size: 256 * KiB, areas: 1, homeAreas: [0, 0], iterations: 3000, maxLive: 6, maxLen: 4 * KiB });
    for (const r of results) expect(r.checked).toBeGreaterThan(0);
  });

  it('home areas chosen by threadId', async () => {
    const { results } = await scenario({ size: 2 * MiB, areas: 4, homeAreas: [undefined, undefined], iterations: 200, maxLive: 8 });
    for (const r of results) {
      expect(r.unmaps).toBe(r.maps);
      expect(r.homeArea).toBe(r.threadId! % 4);
    }
    expect(results[0].homeArea).not.toBe(results[1].homeArea); // consecutive thread ids: different areas
  });
});
