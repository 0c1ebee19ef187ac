import type { Worker } from 'node:worker_threads';
import { runWorkersTogether } from './worker-harness.js';
import { afterEach, describe, expect, it } from 'vitest';
import { IovaAllocator, type IovaAllocatorOptions } from '../src/iommu/iova.js';
import type { IovaWorkerData, IovaWorkerResult } from '../workers/iova-worker.js';

// Workers run from the compiled tree (dist/workers/iova-worker.js): `npm test` builds first.
const live = new Set<Worker>();

afterEach(async () => {
  await Promise.all([...live].map((w) => w.terminate()));
  live.clear();
});

type Params = Omit<IovaWorkerData, 'iova' | 'owners' | 'id' | 'seed' | 'startFlag'>;

/** Starts one iova-worker per seed on allocator `a`, releases them together, returns their results. */
async function runWorkers(a: IovaAllocator, owners: SharedArrayBuffer, seeds: number[], p: Params): Promise<IovaWorkerResult[]> {
  const datas: Array<Omit<IovaWorkerData, 'startFlag'>> = seeds.map((seed, i) => ({ ...p, iova: a.handle, owners, id: i + 1, seed }));
  return runWorkersTogether<IovaWorkerResult>('iova-worker', datas, live);
}

interface Case {
  name: string;
  aperture: number;
  opts: IovaAllocatorOptions;
  params: Params;
  expectEnospc: boolean;
}

const cases: Case[] = [
  {
    name: 'default caches, mixed sizes and limits',
    aperture: 4096,
    opts: {},
    params: { ops: 20_000, sizes: [1, 1, 1, 2, 3, 4, 8, 16, 32, 33, 64], limits: [4096, 4096, 2048, 1000], maxLive: 48 },
    expectEnospc: false,
  },
  {
    name: 'tiny magazines and depot in a full space: depot exchanges, spills, flushes of the other thread’s cache',
    aperture: 512,
    opts: { magazineSize: 4, depotMagazines: 1 },
    params: { ops: 20_000, sizes: [1, 1, 2, 4, 8, 16, 32, 40], limits: [512, 512, 300], maxLive: 40 },
    expectEnospc: true,
  },
  {
    name: 'one slot: the other thread works on the depot and the shared space',
    aperture: 1024,
    opts: { cpuSlots: 1, magazineSize: 8, depotMagazines: 2 },
    params: { ops: 20_000, sizes: [1, 2, 4, 8, 1, 1], limits: [1024, 700], maxLive: 32 },
    expectEnospc: false,
  },
];

describe('IovaAllocator on real workers', () => {
  for (const c of cases) {
    it(`two workers never hold overlapping ranges: ${c.name}`, async () => {
      const a = IovaAllocator.create(c.aperture, c.opts);
      const owners = new SharedArrayBuffer(c.aperture * 4);
      const results = await runWorkers(a, owners, [0x9e3779b9, 0x7f4a7c15], c.params);
      for (const r of results) {
        expect(r, r.error).toMatchObject({ ok: true });
        expect(r.allocs).toBeGreaterThan(1000);
        expect(r.frees).toBe(r.allocs);
      }
      if (c.expectEnospc) expect(results.reduce((s, r) => s + r.enospc, 0)).toBeGreaterThan(0);
      expect(new Int32Array(owners).every((o) => o === 0)).toBe(true);
      // Each worker released its slot: only the depot may still cache ranges.
      expect(a.pagesInUse()).toBe(0);
      a.flushCaches();
      expect(a.cachedPages()).toBe(0);
      expect(a.pagesInUse()).toBe(0);
      // Everything is free again: the whole aperture but page 0 in one piece.
      expect(a.alloc(c.aperture / 2, c.aperture)).toBe(c.aperture / 2);
      expect(a.alloc(c.aperture / 4, c.aperture)).toBe(c.aperture / 4);
    });
  }
});
