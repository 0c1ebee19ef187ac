import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { TablePool } from '../src/iommu/table-pool.js';
import { PageTable, walk, walkPage, IOMMU_READ, IOMMU_WRITE } from '../src/iommu/page-table.js';

const SZ = { '4k': 4096, '2m': 2 ** 21, '1g': 2 ** 30 } as const;

describe('walkPage', () => {
  it('finds exactly the leaf walk() finds, for pages, blocks and holes', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            size: fc.constantFrom('4k', '2m', '1g'),
            slot: fc.integer({ min: 0, max: 40 }),
            high: fc.boolean(), // above 8 TiB, where walkPage defers to walk()
            pa: fc.integer({ min: 0, max: 1000 }),
            prot: fc.constantFrom(IOMMU_READ, IOMMU_WRITE, IOMMU_READ | IOMMU_WRITE),
          }),
          { maxLength: 12 },
        ),
        fc.array(fc.integer({ min: 0, max: 2 ** 20 }), { minLength: 20, maxLength: 40 }),
        (maps, probes) => {
          const pool = TablePool.create(256);
          const pt = PageTable.create(pool, { name: 'walk test' });
          const bases: number[] = [];
          for (const m of maps) {
            const size = SZ[m.size];
            const iova = (m.high ? 2 ** 44 : 0) + m.slot * 2 ** 30 + (m.size === '1g' ? 0 : (m.pa % 8) * size);
            try {
              pt.map(iova as never, (m.pa * size) % 2 ** 39 as never, size, m.prot);
              bases.push(iova);
            } catch {
              // overlapping picks are skipped; the walks below still cover them
            }
          }
          for (const base of bases.length ? bases : [0]) {
            for (const p of probes) {
              const iova = base + p * 4096 - (p % 3) * 2 ** 21;
              if (iova < 0 || iova >= 2 ** 48) continue;
              const page = Math.floor(iova / 4096);
              expect(walkPage(pool.entries, pt.handle.root, page)).toBe(walk(pool.entries, pt.handle.root, page * 4096));
            }
          }
        },
      ),
      { numRuns: 150 },
    );
  });
});
