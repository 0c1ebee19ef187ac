/**
 * Unit tests of the pieces the resource-limit guarantees rest on: PageTable.mapRuns (the sg map,
 * all or nothing down to its tables), TablePool.takeRetired/freeRetired (a reclaim split around a
 * grace period), Domain.map giving a failed map's tables back, FaultRing.takeOverflow.
 */
import { describe, it, expect } from 'vitest';
import type { Iova, Pa } from '../src/addresses.js';
import { TablePool } from '../src/iommu/table-pool.js';
import { PageTable, IOMMU_READ, IOMMU_WRITE, SZ_2M, SZ_4K } from '../src/iommu/page-table.js';
import { Iommu } from '../src/iommu/iommu.js';
import { FaultRing, REASON_NOT_PRESENT } from '../src/iommu/fault-ring.js';

const RW = IOMMU_READ | IOMMU_WRITE;

describe('PageTable.mapRuns', () => {
  it('maps every run at its IOVA', () => {
    const pool = TablePool.create(16);
    const pt = PageTable.create(pool, { name: 'domain 1' });
    pt.mapRuns([0x10000, 0x5000, SZ_4K, 0x12000, 0x9000, 2 * SZ_4K], RW);
    expect(pt.iovaToPhys(0x10000 as Iova)).toBe(0x5000);
    expect(pt.iovaToPhys(0x13000 as Iova)).toBe(0xa000);
    expect(pt.iovaToPhys(0x11000 as Iova)).toBeNull();
  });

  it('a run failing for want of a table undoes the earlier runs and detaches every table they installed', () => {
    const pool = TablePool.create(4); // root + L1 + L2 + one L3
    const pt = PageTable.create(pool, { name: 'domain 1' });
    const before = pool.inUse();
    // Run 1 takes the last three tables (L1, L2, L3 of region 0); run 2 needs the L3 of region 1.
    expect(() => pt.mapRuns([0x1000, 0x1000, SZ_4K, SZ_2M, 0x100000, SZ_4K], RW)).toThrow(/^ENOMEM: /);
    expect(pt.countTables()).toBe(1);
    expect(pool.inUse() - pool.retiredCount()).toBe(before);
    expect(pt.iovaToPhys(0x1000 as Iova)).toBeNull();
  });

  it('a run over an existing mapping is EEXIST and leaves the earlier runs unmapped, the existing one whole', () => {
    const pool = TablePool.create(16);
    const pt = PageTable.create(pool, { name: 'domain 1' });
    pt.map(0x20000 as Iova, 0x7000 as Pa, SZ_4K, RW);
    expect(() => pt.mapRuns([0x10000, 0x5000, SZ_4K, 0x20000, 0x9000, SZ_4K], RW)).toThrow(/^EEXIST: /);
    expect(pt.iovaToPhys(0x10000 as Iova)).toBeNull();
    expect(pt.iovaToPhys(0x20000 as Iova)).toBe(0x7000);
  });

  it('refuses a list that is not [iova, pa, size] triples', () => {
    const pt = PageTable.create(TablePool.create(4), { name: 'domain 1' });
    expect(() => pt.mapRuns([0x1000, 0x1000], RW)).toThrow(/^EINVAL: domain 1: mapRuns needs \[iova, pa, size\] triples/);
  });
});

describe('TablePool.takeRetired / freeRetired', () => {
  it('takes the retired tables without freeing them, and frees them when asked', () => {
    const pool = TablePool.create(4);
    const a = pool.alloc();
    const b = pool.alloc();
    pool.retire(a);
    pool.retire(b);
    const taken = pool.takeRetired();
    expect(taken.sort()).toEqual([a, b].sort());
    expect(pool.inUse()).toBe(2); // still in use until the grace period ends
    expect(pool.takeRetired()).toEqual([]); // and no longer on the retired stack
    pool.freeRetired(taken);
    expect(pool.inUse()).toBe(0);
    expect(pool.retiredCount()).toBe(0);
  });

  it('refuses to free a table twice', () => {
    const pool = TablePool.create(4);
    const a = pool.alloc();
    pool.retire(a);
    const taken = pool.takeRetired();
    pool.freeRetired(taken);
    expect(() => pool.freeRetired(taken)).toThrow(/^EINVAL: table pool: reclaim of table \d+, which is free/);
  });
});

describe('Domain.map on an exhausted page-table pool', () => {
  it('a map that fails mid-range leaves no table retired or in use', () => {
    const iommu = Iommu.create({ tables: 4 });
    const d = iommu.createDomain('dma');
    const before = iommu.pool.inUse();
    // 513 pages of 4 KiB: region 0 gets the last table, region 1 finds none.
    expect(() => d.map(0 as Iova, 0x1000 as Pa, SZ_2M + SZ_4K, RW)).toThrow(/^ENOMEM: /);
    expect(iommu.pool.retiredCount()).toBe(0);
    expect(iommu.pool.inUse()).toBe(before);
  });

  it('is not retried when the only tables that came back were its own', () => {
    const iommu = Iommu.create({ tables: 4 });
    const d = iommu.createDomain('dma');
    const before = d.invalidationCounts().strict;
    expect(() => d.map(0 as Iova, 0x1000 as Pa, SZ_2M + SZ_4K, RW)).toThrow(/^ENOMEM: /);
    expect(d.invalidationCounts().strict - before).toBe(1); // one attempt, one invalidation of its range
  });

  it('retries once after reclaiming tables retired earlier, and succeeds', () => {
    const iommu = Iommu.create({ tables: 5 });
    const d = iommu.createDomain('dma');
    d.map(0 as Iova, 0x1000 as Pa, SZ_4K, RW); // L1, L2, L3 of region 0: 4 in use, 1 free
    // A table some earlier operation retired: the pool's last free one.
    const t = iommu.pool.alloc();
    iommu.pool.retire(t);
    d.map(SZ_2M as Iova, 0x1000 as Pa, SZ_4K, RW); // needs one table: only the retired one can serve
    expect(d.iovaToPhys(SZ_2M as Iova)).toBe(0x1000);
    expect(iommu.pool.retiredCount()).toBe(0);
  });
});

describe('FaultRing.takeOverflow', () => {
  it('is null until a record is dropped, then reports the count and the last requester once', () => {
    const r = FaultRing.create(1);
    expect(r.takeOverflow()).toBeNull();
    r.record(0x18, 0x1000, false, REASON_NOT_PRESENT, 1);
    r.record(0x20, 0x2000, false, REASON_NOT_PRESENT, 1);
    r.record(0x28, 0x3000, true, REASON_NOT_PRESENT, 1);
    expect(r.takeOverflow()).toEqual({ dropped: 2, lastRequesterId: 0x28 });
    expect(r.takeOverflow()).toBeNull();
    expect(r.overflowed()).toBe(2); // the running total stays
  });
});
