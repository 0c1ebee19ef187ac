import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { iova, pa } from '../src/addresses.js';
import { DmaError } from '../src/errors.js';
import { TablePool } from '../src/iommu/table-pool.js';
import { IOMMU_READ, IOMMU_WRITE, PageTable, SZ_1G, SZ_2M, SZ_4K, walk } from '../src/iommu/page-table.js';

// A few regions so that operations collide often: the first GiB, the last GiB below 512 GiB (the
// end of L0 entry 0), and a GiB high in the 48-bit space; inside each, a few 2 MiB and 4 KiB slots.
const REGIONS = [0, 2 ** 39 - SZ_1G, 2 ** 47 + 5 * 2 ** 39 + 3 * SZ_1G];
const PA_BASES = [0, 4 * SZ_1G, 2 ** 39];
const SIZES = [SZ_4K, 2 * SZ_4K, SZ_2M, SZ_2M + SZ_4K, 2 * SZ_2M, SZ_1G, SZ_1G + SZ_2M];

const place = fc.record({
  region: fc.integer({ min: 0, max: REGIONS.length - 1 }),
  mid: fc.constantFrom(0, 1, 2, 511),
  page: fc.constantFrom(0, 1, 2, 511),
  sizeIx: fc.integer({ min: 0, max: SIZES.length - 1 }),
});

const op = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant('map' as const),
      at: place,
      paBase: fc.integer({ min: 0, max: PA_BASES.length - 1 }),
      shifted: fc.boolean(), // pa one page off the iova's alignment: forces 4 KiB pages
      prot: fc.constantFrom(IOMMU_READ, IOMMU_WRITE, IOMMU_READ | IOMMU_WRITE),
    }),
  },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('unmap' as const), at: place }) },
  {
    weight: 3,
    arbitrary: fc.record({ kind: fc.constant('translate' as const), at: place, offset: fc.nat(3 * SZ_4K) }),
  },
  { weight: 1, arbitrary: fc.constant({ kind: 'reclaim' as const }) },
);

function where(at: { region: number; mid: number; page: number; sizeIx: number }) {
  const size = SIZES[at.sizeIx];
  // keep 1 GiB ranges 2 MiB-aligned so they split into blocks, not 262144 pages
  const page = size >= SZ_1G ? 0 : at.page;
  const off = at.mid * SZ_2M + page * SZ_4K;
  return { iova: REGIONS[at.region] + off, off, size };
}

/** What iommu_map's splitting rule gives for this range (from the spec, not the code). */
function split(i: number, p: number, size: number): { iova: number; pa: number; size: number }[] {
  const out = [];
  while (size > 0) {
    const s = [SZ_1G, SZ_2M, SZ_4K].find((s) => i % s === 0 && p % s === 0 && size >= s)!;
    out.push({ iova: i, pa: p, size: s });
    i += s;
    p += s;
    size -= s;
  }
  return out;
}

/** Reference model: non-overlapping leaves sorted by IOVA. */
class Model {
  readonly leaves: { iova: number; pa: number; size: number; prot: number }[] = [];
  /** Index of the first leaf that ends after `at`. */
  private first(at: number): number {
    let lo = 0;
    let hi = this.leaves.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const l = this.leaves[mid];
      if (l.iova + l.size <= at) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
  /** [from, to): the leaves that intersect [at, at + size). */
  span(at: number, size: number): [number, number] {
    const from = this.first(at);
    let to = from;
    while (to < this.leaves.length && this.leaves[to].iova < at + size) to++;
    return [from, to];
  }
  insert(leaves: { iova: number; pa: number; size: number }[], prot: number): void {
    const [from] = this.span(leaves[0].iova, 1);
    this.leaves.splice(from, 0, ...leaves.map((l) => ({ ...l, prot })));
  }
  find(at: number) {
    const i = this.first(at);
    const l = this.leaves[i];
    return l && l.iova <= at ? l : undefined;
  }
}

function code(fn: () => unknown): string | null {
  try {
    fn();
    return null;
  } catch (err) {
    if (err instanceof DmaError) return err.code;
    throw err;
  }
}

let enomemCount = 0;

type Op = typeof op extends fc.Arbitrary<infer T> ? T : never;

/**
 * Runs ops against a fresh page table and the model. With `tables` small, a map may also fail
 * with ENOMEM (even one the model says collides: it may run out of tables before it gets there):
 * then it must have changed nothing (all or nothing) and left no table linked in.
 */
function check(ops: Op[], tables: number): void {
  const pool = TablePool.create(tables);
  const pt = PageTable.create(pool, { name: 'model' });
  const model = new Model();
  for (const o of ops) {
    if (o.kind === 'map') {
      const w = where(o.at);
      const shift = o.shifted && w.size <= 2 * SZ_2M ? SZ_4K : 0;
      const p = PA_BASES[o.paBase] + w.off + shift;
      const leaves = split(w.iova, p, w.size);
      const [from, to] = model.span(w.iova, w.size);
      const clash = to > from;
      const inUse = pool.inUse() - pool.retiredCount();
      const c = code(() => pt.map(iova(w.iova), pa(p), w.size, o.prot));
      if (c === 'ENOMEM' && tables < 64) {
        enomemCount++;
        expect(pool.inUse() - pool.retiredCount()).toBe(inUse); // its tables unlinked and retired
        expect(pt.iovaToPhys(iova(w.iova))).toBeNull();
      } else {
        expect(c).toBe(clash ? 'EEXIST' : null);
        if (!clash) model.insert(leaves, o.prot);
      }
    } else if (o.kind === 'unmap') {
      const w = where(o.at);
      const [from, to] = model.span(w.iova, w.size);
      const hit = model.leaves.slice(from, to);
      const partial = hit.some((m) => m.iova < w.iova || m.iova + m.size > w.iova + w.size);
      let bytes = -1;
      const c = code(() => (bytes = pt.unmap(iova(w.iova), w.size)));
      if (partial) {
        expect(c).toBe('EINVAL');
      } else {
        expect(c).toBeNull();
        expect(bytes).toBe(hit.reduce((n, m) => n + m.size, 0));
        model.leaves.splice(from, to - from);
      }
    } else if (o.kind === 'translate') {
      const at = where(o.at).iova + o.offset;
      const leaf = model.find(at);
      const want = leaf ? leaf.pa + (at - leaf.iova) : null;
      expect(pt.iovaToPhys(iova(at))).toBe(want);
      const e = walk(pt.entries, pt.root, at);
      if (leaf) {
        expect((e >>> 4) * SZ_4K).toBe(want! - (want! % SZ_4K));
        expect(((e >> 2) & 1) === 1).toBe((leaf.prot & IOMMU_READ) !== 0);
        expect(((e >> 3) & 1) === 1).toBe((leaf.prot & IOMMU_WRITE) !== 0);
      } else {
        expect(e).toBe(0);
      }
    } else {
      pool.reclaimRetired(); // single thread: no walker can hold a retired table
    }
  }
  const seen: { iova: number; pa: number; size: number; prot: number }[] = [];
  pt.forEachMapping((i, p, size, prot) => seen.push({ iova: i, pa: p, size, prot }));
  expect(seen).toEqual(model.leaves);
  expect(pt.countTables() + pool.retiredCount()).toBe(pool.inUse());
  pt.destroy();
  pool.reclaimRetired();
  expect(pool.inUse()).toBe(0);
}

describe('PageTable model', () => {
  it('random map/unmap/translate sequences agree with a reference map at every step', () => {
    fc.assert(
      fc.property(fc.array(op, { minLength: 1, maxLength: 60, size: 'max' }), (ops) => check(ops, 4096)),
      { numRuns: 300 },
    );
  });

  it('with a pool too small for the sequence, a map is either right or ENOMEM with nothing changed', () => {
    let enomem = 0;
    fc.assert(
      fc.property(
        fc.array(op, { minLength: 1, maxLength: 60, size: 'max' }),
        fc.integer({ min: 4, max: 12 }),
        (ops, tables) => {
          const before = enomemCount;
          check(ops, tables);
          enomem += enomemCount - before;
        },
      ),
      { numRuns: 300 },
    );
    expect(enomem).toBeGreaterThan(0); // the property was exercised
  });
});
