import { describe, expect, it } from 'vitest';
import { iova, pa, type Iova, type Pa } from '../src/addresses.js';
import { DmaError } from '../src/errors.js';
import { TablePool } from '../src/iommu/table-pool.js';
import {
  IOMMU_READ,
  IOMMU_WRITE,
  PageTable,
  PTE_LEAF,
  PTE_READ,
  PTE_VALID,
  PTE_WRITE,
  SZ_1G,
  SZ_2M,
  SZ_4K,
  walk,
} from '../src/iommu/page-table.js';

const RW = IOMMU_READ | IOMMU_WRITE;

function setup(tables = 64, pgsizeBitmap?: number) {
  const pool = TablePool.create(tables);
  const pt = PageTable.create(pool, { name: 'domain 3', pgsizeBitmap });
  return { pool, pt };
}

function mappings(pt: PageTable) {
  const out: { iova: number; pa: number; size: number; prot: number }[] = [];
  pt.forEachMapping((i, p, size, prot) => out.push({ iova: i, pa: p, size, prot }));
  return out;
}

function catchErr(fn: () => unknown): DmaError {
  try {
    fn();
  } catch (err) {
    if (err instanceof DmaError) return err;
    throw err;
  }
  throw new Error('expected a DmaError');
}

const map = (pt: PageTable, i: number, p: number, size: number, prot = RW) => pt.map(iova(i), pa(p), size, prot);

describe('PageTable: mapping and translation', () => {
  it('maps a 4 KiB page and translates it with the offset kept', () => {
    const { pt } = setup();
    map(pt, 0x1000_0000, 0x4_0000_2000, SZ_4K);
    expect(pt.iovaToPhys(iova(0x1000_0123))).toBe(0x4_0000_2123);
    expect(pt.iovaToPhys(iova(0x1000_1000))).toBeNull();
    expect(pt.iovaToPhys(iova(0x0fff_f000))).toBeNull();
  });

  it('walk returns the leaf entry (PFN and permission bits) or 0', () => {
    const { pt } = setup();
    map(pt, 0x5000, 0x9000, SZ_4K, IOMMU_READ);
    map(pt, 0x6000, 0xa000, SZ_4K, IOMMU_WRITE);
    const r = walk(pt.entries, pt.root, 0x5fff);
    expect(r & (PTE_VALID | PTE_LEAF | PTE_READ | PTE_WRITE)).toBe(PTE_VALID | PTE_LEAF | PTE_READ);
    expect(r >>> 4).toBe(0x9);
    const w = walk(pt.entries, pt.root, 0x6000);
    expect(w & (PTE_READ | PTE_WRITE)).toBe(PTE_WRITE);
    expect(w >>> 4).toBe(0xa);
    expect(walk(pt.entries, pt.root, 0x7000)).toBe(0);
  });

  it('walk on a 2 MiB or 1 GiB block gives the PFN of the page inside the block', () => {
    const { pt } = setup();
    map(pt, 0x4020_0000, 0x80_0000, SZ_2M, IOMMU_READ);
    map(pt, 2 * SZ_1G, 3 * SZ_1G, SZ_1G);
    const b = walk(pt.entries, pt.root, 0x4020_0000 + 0x5_1234);
    expect(b >>> 4).toBe((0x80_0000 + 0x5_1000) / SZ_4K);
    expect(b & 15).toBe(PTE_VALID | PTE_LEAF | PTE_READ);
    const g = walk(pt.entries, pt.root, 2 * SZ_1G + 0x3ff_f000);
    expect(g >>> 4).toBe((3 * SZ_1G + 0x3ff_f000) / SZ_4K);
    expect(pt.iovaToPhys(iova(2 * SZ_1G + 0x1234_5678))).toBe(3 * SZ_1G + 0x1234_5678);
  });

  it('indexes all 48 IOVA bits without aliasing high addresses', () => {
    const { pt } = setup();
    const high = 2 ** 47 + 2 ** 39 * 3 + 2 ** 33 + 2 ** 30 + 0x1234_5000; // bits in every level
    map(pt, high, 0xff_ffff_f000, SZ_4K); // and the highest PFN the format holds
    expect(pt.iovaToPhys(iova(high + 0xabc))).toBe(0xff_ffff_fabc);
    for (const alias of [high - 2 ** 47, high - 2 ** 39, high - 2 ** 33, high - 2 ** 30, high % 2 ** 32]) {
      expect(pt.iovaToPhys(iova(alias))).toBeNull();
    }
    expect(walk(pt.entries, pt.root, high + 2 ** 48)).toBe(0);
    expect(walk(pt.entries, pt.root, -4096)).toBe(0);
    expect(walk(pt.entries, pt.root, Number.NaN)).toBe(0);
    expect(pt.iovaToPhys(iova(2 ** 48))).toBeNull();
  });

  it('splits a range into the largest page sizes both iova and pa are aligned to', () => {
    const { pt } = setup();
    // 4 KiB up to the 2 MiB boundary, 2 MiB blocks up to 1 GiB, one 1 GiB block, then the tail.
    const start = SZ_1G - SZ_2M - SZ_4K;
    const size = SZ_4K + SZ_2M + SZ_1G + SZ_2M + SZ_4K;
    map(pt, start, 4 * SZ_1G + start, size);
    const sizes = mappings(pt).map((m) => m.size);
    expect(sizes).toEqual([SZ_4K, SZ_2M, SZ_1G, SZ_2M, SZ_4K]);
    for (const m of mappings(pt)) expect(m.pa - m.iova).toBe(4 * SZ_1G);
  });

  it('uses 4 KiB pages when iova and pa are aligned differently', () => {
    const { pt } = setup();
    map(pt, SZ_2M, SZ_2M + SZ_4K, SZ_2M);
    const ms = mappings(pt);
    expect(ms.length).toBe(512);
    expect(ms.every((m) => m.size === SZ_4K && m.pa - m.iova === SZ_4K)).toBe(true);
  });

  it('pgsizeBitmap restricts the page sizes map may use', () => {
    const { pt } = setup(64, SZ_4K);
    map(pt, 0, 0, SZ_2M);
    expect(mappings(pt).length).toBe(512);
    const big = setup(64, SZ_2M);
    expect(big.pt.minPageSize).toBe(SZ_2M);
    map(big.pt, SZ_1G, 0, SZ_1G);
    expect(mappings(big.pt).length).toBe(512);
    expect(catchErr(() => map(big.pt, 0, 0, SZ_4K)).code).toBe('EINVAL');
    expect(catchErr(() => PageTable.create(TablePool.create(2), { name: 'x', pgsizeBitmap: 0x2000 })).code).toBe(
      'EINVAL',
    );
  });

  it('forEachMapping reports prot as IOMMU_READ/IOMMU_WRITE', () => {
    const { pt } = setup();
    map(pt, 0, 0, SZ_4K, IOMMU_READ);
    map(pt, SZ_4K, 0, SZ_4K, IOMMU_WRITE);
    map(pt, SZ_2M, 0, SZ_2M, RW);
    expect(mappings(pt).map((m) => m.prot)).toEqual([IOMMU_READ, IOMMU_WRITE, RW]);
  });

  it('a handle attached elsewhere sees the same mappings', () => {
    const { pool, pt } = setup();
    map(pt, 0x3000, 0x7000, SZ_4K);
    const pool2 = TablePool.attach(structuredClone(pool.handle));
    const pt2 = PageTable.attach(pool2, structuredClone(pt.handle));
    expect(pt2.name).toBe('domain 3');
    expect(pt2.iovaToPhys(iova(0x3010))).toBe(0x7010);
    map(pt2, 0x4000, 0x8000, SZ_4K);
    expect(pt.iovaToPhys(iova(0x4000))).toBe(0x8000);
  });
});

describe('PageTable: unmap', () => {
  it('returns the bytes cleared and skips holes', () => {
    const { pt } = setup();
    map(pt, 0, 0, SZ_4K);
    map(pt, 3 * SZ_4K, 0, 2 * SZ_4K);
    map(pt, SZ_2M, 0, SZ_2M);
    expect(pt.unmap(iova(0), 2 * SZ_2M)).toBe(3 * SZ_4K + SZ_2M);
    expect(mappings(pt)).toEqual([]);
  });

  it('a second unmap of the same range returns 0', () => {
    const { pt } = setup();
    map(pt, SZ_1G, SZ_1G, SZ_1G);
    expect(pt.unmap(iova(SZ_1G), SZ_1G)).toBe(SZ_1G);
    expect(pt.unmap(iova(SZ_1G), SZ_1G)).toBe(0);
  });

  it('keeps intermediate tables after unmap (as Linux)', () => {
    const { pool, pt } = setup();
    map(pt, 0x1000, 0, SZ_4K);
    expect(pt.countTables()).toBe(4);
    pt.unmap(iova(0x1000), SZ_4K);
    expect(pt.countTables()).toBe(4);
    expect(pool.inUse()).toBe(4);
  });

  it('unmapping part of a block is EINVAL naming the block, and nothing is cleared', () => {
    const { pt } = setup();
    map(pt, SZ_2M - SZ_4K, 0x100_0000, SZ_4K);
    map(pt, SZ_2M, 0x20_0000, SZ_2M);
    const before = mappings(pt);
    const err = catchErr(() => pt.unmap(iova(SZ_2M - SZ_4K), 2 * SZ_4K));
    expect(err.code).toBe('EINVAL');
    expect(err.message).toContain('domain 3');
    expect(err.message).toContain('2 MiB block at 0x00200000');
    expect(mappings(pt)).toEqual(before);
    expect(catchErr(() => pt.unmap(iova(SZ_2M + SZ_4K), SZ_2M)).code).toBe('EINVAL');
    expect(pt.unmap(iova(0), 2 * SZ_2M)).toBe(SZ_4K + SZ_2M);
  });

  it('unmap argument errors: unaligned, zero, beyond the IOVA space', () => {
    const { pt } = setup();
    expect(catchErr(() => pt.unmap(iova(0x800), SZ_4K)).code).toBe('EINVAL');
    expect(catchErr(() => pt.unmap(iova(0), 100)).code).toBe('EINVAL');
    expect(catchErr(() => pt.unmap(iova(0), 0)).code).toBe('EINVAL');
    expect(catchErr(() => pt.unmap(iova(-4096), SZ_4K)).code).toBe('EINVAL');
    expect(catchErr(() => pt.unmap(iova(2 ** 48 - SZ_4K), 2 * SZ_4K)).code).toBe('ERANGE');
  });
});

describe('PageTable: blocks over tables', () => {
  it('a block over a table subtree with no leaves replaces it and retires the tables', () => {
    const { pool, pt } = setup();
    map(pt, SZ_2M + SZ_4K, 0, SZ_4K); // builds L1, L2, L3 tables
    pt.unmap(iova(SZ_2M + SZ_4K), SZ_4K);
    expect(pt.countTables()).toBe(4);
    map(pt, SZ_2M, 0x4000_0000, SZ_2M);
    expect(pt.countTables()).toBe(3);
    expect(pool.retiredCount()).toBe(1);
    expect(pt.countTables() + pool.retiredCount()).toBe(pool.inUse());
    expect(pt.iovaToPhys(iova(SZ_2M + 0x1234))).toBe(0x4000_1234);
    // 1 GiB over an L2 table whose only L3 table is empty: both go.
    map(pt, SZ_1G + SZ_4K, 0, SZ_4K);
    pt.unmap(iova(SZ_1G + SZ_4K), SZ_4K);
    map(pt, SZ_1G, 0, SZ_1G);
    expect(pool.retiredCount()).toBe(3);
    expect(pt.countTables() + pool.retiredCount()).toBe(pool.inUse());
    expect(pool.reclaimRetired()).toBe(3);
    expect(pt.countTables()).toBe(pool.inUse());
  });

  it('a block over a subtree that still has a leaf is EEXIST and changes nothing', () => {
    const { pool, pt } = setup();
    map(pt, SZ_2M + 5 * SZ_4K, 0x9000, SZ_4K);
    const err = catchErr(() => map(pt, SZ_2M, 0, SZ_2M));
    expect(err.code).toBe('EEXIST');
    expect(err.message).toContain('4 KiB page at 0x00205000');
    expect(pt.iovaToPhys(iova(SZ_2M + 5 * SZ_4K))).toBe(0x9000);
    expect(pt.iovaToPhys(iova(SZ_2M))).toBeNull();
    expect(pool.retiredCount()).toBe(0);
    // the failed freeze was thawed: the empty slots of that table still accept pages
    map(pt, SZ_2M, 0, SZ_4K);
    expect(catchErr(() => map(pt, 0, 0, SZ_1G)).code).toBe('EEXIST');
    map(pt, SZ_2M + SZ_4K, 0, SZ_4K);
  });

  it('a page inside a block is EEXIST naming the block', () => {
    const { pt } = setup();
    map(pt, SZ_1G, 0, SZ_1G);
    const err = catchErr(() => map(pt, SZ_1G + SZ_2M + SZ_4K, 0, SZ_4K));
    expect(err.code).toBe('EEXIST');
    expect(err.message).toMatch(/domain 3: map 4 KiB page at 0x40201000 .*1 GiB block at 0x40000000/);
  });
});

describe('PageTable: map errors', () => {
  it('unaligned iova, pa or size is EINVAL', () => {
    const { pt } = setup();
    expect(catchErr(() => map(pt, 0x800, 0, SZ_4K)).code).toBe('EINVAL');
    expect(catchErr(() => map(pt, 0, 0x10, SZ_4K)).code).toBe('EINVAL');
    const e = catchErr(() => map(pt, 0, 0, 0x1800));
    expect(e.code).toBe('EINVAL');
    expect(e.message).toMatch(/domain 3: map iova 0x00000000 .*size is not a multiple/);
  });

  it('zero length, negative and non-integer arguments are EINVAL', () => {
    const { pt } = setup();
    expect(catchErr(() => map(pt, 0, 0, 0)).code).toBe('EINVAL');
    expect(catchErr(() => map(pt, -4096, 0, SZ_4K)).code).toBe('EINVAL');
    expect(catchErr(() => map(pt, 0, -4096, SZ_4K)).code).toBe('EINVAL');
    expect(catchErr(() => map(pt, 0.5, 0, SZ_4K)).code).toBe('EINVAL');
    expect(catchErr(() => map(pt, 0, 0, Number.NaN)).code).toBe('EINVAL');
    expect(catchErr(() => pt.iovaToPhys(-1 as Iova)).code).toBe('EINVAL');
  });

  it('prot without READ or WRITE (or with unknown bits) is EINVAL', () => {
    const { pt } = setup();
    expect(catchErr(() => map(pt, 0, 0, SZ_4K, 0)).code).toBe('EINVAL');
    expect(catchErr(() => map(pt, 0, 0, SZ_4K, 4)).code).toBe('EINVAL');
    expect(catchErr(() => map(pt, 0, 0, SZ_4K, 1.5)).code).toBe('EINVAL');
  });

  it('a range past the 48-bit IOVA space is ERANGE', () => {
    const { pt } = setup();
    const err = catchErr(() => map(pt, 2 ** 48 - SZ_4K, 0, 2 * SZ_4K));
    expect(err.code).toBe('ERANGE');
    expect(err.message).toContain('48-bit IOVA space');
    expect(catchErr(() => map(pt, 2 ** 48, 0, SZ_4K)).code).toBe('ERANGE');
    map(pt, 2 ** 48 - SZ_4K, 0, SZ_4K); // the last page is fine
  });

  it('an overflowing size or a PA range past 2^40 is ERANGE', () => {
    const { pt } = setup();
    expect(catchErr(() => map(pt, 0, 0, 2 ** 60)).code).toBe('ERANGE');
    expect(catchErr(() => map(pt, SZ_4K, 0, 2 ** 53 + 2 ** 32)).code).toBe('ERANGE');
    const err = catchErr(() => map(pt, 0, 2 ** 40 - SZ_4K, 2 * SZ_4K));
    expect(err.code).toBe('ERANGE');
    expect(err.message).toContain('ends at PA 0x010000001000');
    expect(mappings(pt)).toEqual([]);
  });

  it('mapping over an existing page is EEXIST and the call installs nothing (all or nothing)', () => {
    const { pool, pt } = setup();
    map(pt, 0x10_0000, 0x5000, SZ_4K);
    const tables = pool.inUse();
    // 16 pages from 0xf8000: the first 8 would go in, the 9th collides.
    const err = catchErr(() => map(pt, 0xf_8000, 0x100_0000, 16 * SZ_4K));
    expect(err.code).toBe('EEXIST');
    expect(err.message).toContain('0x00100000');
    expect(mappings(pt)).toEqual([{ iova: 0x10_0000, pa: 0x5000, size: SZ_4K, prot: RW }]);
    expect(pool.inUse()).toBe(tables);
  });

  it('pool exhaustion is ENOMEM and rolls back leaves and the tables the call installed', () => {
    const { pool, pt } = setup(6); // root + 5
    map(pt, 0, 0, SZ_4K); // root, L1, L2, L3: 4 in use
    const inUse = pool.inUse();
    // a 2 MiB block just below 512 GiB needs a new L2 (the 5th table, fine); the 4 KiB page at
    // 512 GiB needs a new L1 (6th) and L2 (none left)
    const start = 2 ** 39 - SZ_2M;
    const err = catchErr(() => map(pt, start, 0, SZ_2M + SZ_4K));
    expect(err.code).toBe('ENOMEM');
    expect(err.message).toContain('domain 3');
    expect(err.message).toContain('all 6 page-table pages');
    expect(mappings(pt)).toEqual([{ iova: 0, pa: 0, size: SZ_4K, prot: RW }]);
    // tables the failed call linked in were unlinked and retired (walkers may have seen them)
    expect(pt.countTables()).toBe(inUse);
    expect(pool.inUse() - pool.retiredCount()).toBe(inUse);
    pool.reclaimRetired();
    expect(pool.inUse()).toBe(inUse);
    // and the page table still works
    map(pt, SZ_4K, SZ_4K, SZ_4K);
    expect(pt.iovaToPhys(iova(SZ_4K))).toBe(SZ_4K);
  });

  it('a failed map gives back the empty subtree its block had replaced', () => {
    const { pool, pt } = setup(5);
    map(pt, SZ_2M + SZ_4K, 0, SZ_4K); // root, L1, L2, L3 under the 2nd 2 MiB
    map(pt, 0, 0, SZ_4K); // L3 under the 1st: the pool is full
    pt.unmap(iova(SZ_2M + SZ_4K), SZ_4K);
    // the 2 MiB block swaps out the empty L3 table; the page after it needs a table: ENOMEM
    expect(catchErr(() => map(pt, SZ_2M, SZ_2M, SZ_2M + SZ_4K)).code).toBe('ENOMEM');
    expect(pool.retiredCount()).toBe(0);
    expect(pt.countTables()).toBe(5);
    expect(pool.inUse()).toBe(5);
    // the L3 table is back, thawed, and takes pages again
    map(pt, SZ_2M + 7 * SZ_4K, 0x7000, SZ_4K);
    expect(pt.iovaToPhys(iova(SZ_2M + 7 * SZ_4K))).toBe(0x7000);
    expect(mappings(pt).length).toBe(2);
  });

  it('create is ENOMEM when the pool has no page for the root', () => {
    const pool = TablePool.create(1);
    PageTable.create(pool, { name: 'a' });
    const err = catchErr(() => PageTable.create(pool, { name: 'domain 9' }));
    expect(err.code).toBe('ENOMEM');
    expect(err.message).toContain('domain 9');
  });
});

describe('PageTable: accounting and teardown', () => {
  it('countTables counts the tables reachable from the root', () => {
    const { pool, pt } = setup();
    expect(pt.countTables()).toBe(1);
    map(pt, 0, 0, SZ_4K);
    map(pt, SZ_2M, 0, SZ_4K); // new L3
    map(pt, SZ_1G, 0, SZ_4K); // new L2 + L3
    map(pt, 2 ** 39, 0, SZ_4K); // new L1 + L2 + L3
    expect(pt.countTables()).toBe(1 + 3 + 1 + 2 + 3);
    expect(pool.inUse()).toBe(pt.countTables());
  });

  it('destroy frees every table and later calls are ENOENT', () => {
    const { pool, pt } = setup();
    map(pt, 0, 0, SZ_2M + SZ_4K);
    map(pt, 5 * SZ_1G, 0, SZ_1G);
    pt.destroy();
    expect(pool.inUse()).toBe(0);
    expect(catchErr(() => map(pt, 0, 0, SZ_4K)).code).toBe('ENOENT');
  });

  it('map and unmap take branded addresses (compile-time check only)', () => {
    const { pt } = setup();
    const i: Iova = iova(0x1000);
    const p: Pa = pa(0x2000);
    pt.map(i, p, SZ_4K, IOMMU_READ);
    const back: Pa | null = pt.iovaToPhys(i);
    expect(back).toBe(p);
  });
});
