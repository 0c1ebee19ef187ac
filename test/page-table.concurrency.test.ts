import type { Worker } from 'node:worker_threads';
import { runWorkersTogether } from './worker-harness.js';
import { afterEach, describe, expect, it } from 'vitest';
import { iova, pa } from '../src/addresses.js';
import { TablePool } from '../src/iommu/table-pool.js';
import { IOMMU_READ, IOMMU_WRITE, PageTable, SZ_1G, SZ_2M, SZ_4K } from '../src/iommu/page-table.js';
import type { PtMapperData, PtMapperRange, PtMapperResult } from '../workers/pt-mapper.js';

// Workers run from the compiled tree (dist/workers/pt-mapper.js): `npm test` builds first.
const RW = IOMMU_READ | IOMMU_WRITE;
const live = new Set<Worker>();

afterEach(async () => {
  await Promise.all([...live].map((w) => w.terminate()));
  live.clear();
});

/** Starts one pt-mapper per range list, releases them together, returns their results. */
async function runMappers(
  pool: TablePool,
  pt: PageTable,
  lists: PtMapperRange[][],
  keepGoing = false,
): Promise<PtMapperResult[]> {
  const datas: Array<Omit<PtMapperData, 'startFlag'>> = lists.map((ranges) => ({ pool: pool.handle, table: pt.handle, ranges, keepGoing }));
  return runWorkersTogether<PtMapperResult>('pt-mapper', datas, live);
}

function mappingsOf(pt: PageTable): Map<number, { pa: number; size: number }> {
  const out = new Map<number, { pa: number; size: number }>();
  pt.forEachMapping((i, p, size) => out.set(i, { pa: p, size }));
  return out;
}

describe('PageTable on real workers', () => {
  it('two workers mapping interleaved pages that share every intermediate table lose nothing and leak no table', async () => {
    const pool = TablePool.create(1024);
    // 2 MiB chunks spread over two GiBs of one L0 entry and one GiB of another, so the workers race
    // to create L1, L2 and L3 tables alike.
    const chunks: number[] = [];
    for (const gib of [0, 1, 2 ** 9 + 7]) for (let c = 0; c < 16; c++) chunks.push(gib * SZ_1G + c * 31 * SZ_2M);
    const PAGES = 64; // per chunk: worker 0 maps the even pages, worker 1 the odd ones
    for (let round = 0; round < 5; round++) {
      const pt = PageTable.create(pool, { name: `round ${round}` });
      const lists: PtMapperRange[][] = [[], []];
      // page-major order: both workers' first pages land in every chunk before any tables exist
      for (let p = 0; p < PAGES; p++) {
        for (const [ci, chunk] of chunks.entries()) {
          const at = chunk + p * SZ_4K;
          lists[p & 1].push({ iova: at, pa: 0x1_0000_0000 + ci * SZ_2M + p * SZ_4K + round * SZ_1G, size: SZ_4K, prot: RW });
        }
      }
      const results = await runMappers(pool, pt, lists);
      for (const r of results) expect(r, r.error).toMatchObject({ ok: true });
      for (const list of lists) {
        for (const r of list) expect(pt.iovaToPhys(iova(r.iova + 0x10))).toBe(r.pa + 0x10);
      }
      expect(mappingsOf(pt).size).toBe(chunks.length * PAGES);
      // 1 root + 2 L1 + 3 L2 + 48 L3: every loser freed its table
      expect(pt.countTables()).toBe(1 + 2 + 3 + chunks.length);
      expect(pool.inUse()).toBe(pt.countTables());
      expect(pool.retiredCount()).toBe(0);
      pt.destroy();
      expect(pool.inUse()).toBe(0);
    }
  });

  it('a 1 GiB block racing 4 KiB pages into its empty subtree: every success is present, every failure absent', async () => {
    // The block mapper must freeze 512 L3 tables before it may swap the L2 table for the block:
    // a long window in which the page mapper keeps mapping pages into tables it already passed.
    // Were the check a mere scan, those pages would succeed and then vanish with the retired
    // tables; frozen, they fail with EEXIST (or, when the pages came first, the block fails).
    const pool = TablePool.create(2048);
    const R = 3 * SZ_1G;
    const ROUNDS = 12;
    const outcomes = { block: 0, pages: 0 };
    for (let round = 0; round < ROUNDS; round++) {
      const pt = PageTable.create(pool, { name: `race ${round}` });
      for (let c = 0; c < 512; c++) pt.map(iova(R + c * SZ_2M), pa(c * SZ_2M), SZ_4K, RW); // 512 L3 tables
      expect(pt.unmap(iova(R), SZ_1G)).toBe(512 * SZ_4K);
      const block: PtMapperRange[] = [{ iova: R, pa: 4 * SZ_1G, size: SZ_1G, prot: RW }];
      const pages: PtMapperRange[] = [];
      for (let c = 0; c < 4; c++) {
        for (let p = 0; p < 32; p++) {
          pages.push({ iova: R + c * SZ_2M + p * SZ_4K, pa: 16 * SZ_1G + c * SZ_2M + p * SZ_4K, size: SZ_4K, prot: RW });
        }
      }
      const [a, b] = await runMappers(pool, pt, [block, pages], true);
      for (const c of [...a.codes, ...b.codes]) expect([null, 'EEXIST']).toContain(c);
      const want = new Map<number, { pa: number; size: number }>();
      if (a.codes[0] === null) want.set(R, { pa: 4 * SZ_1G, size: SZ_1G });
      for (const [i, r] of pages.entries()) if (b.codes[i] === null) want.set(r.iova, { pa: r.pa, size: r.size });
      expect(mappingsOf(pt)).toEqual(want);
      // exactly one side won: the block, or at least one page (which then made the block fail)
      const pagesIn = b.codes.filter((c) => c === null).length;
      expect(a.codes[0] === null ? pagesIn === 0 : pagesIn > 0).toBe(true);
      if (a.codes[0] === null) outcomes.block++;
      else outcomes.pages++;
      expect(pt.countTables() + pool.retiredCount()).toBe(pool.inUse());
      pt.destroy();
      pool.reclaimRetired();
      expect(pool.inUse()).toBe(0);
    }
    expect(outcomes.block + outcomes.pages).toBe(ROUNDS);
  });
});
