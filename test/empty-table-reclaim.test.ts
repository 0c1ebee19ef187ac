/**
 * Empty page-table pages come back (issue 6: page-table-pool exhaustion never lasts): a map that
 * runs out of tables in a DMA-API (iovaManaged) domain detaches the empty tables of spans whose
 * IOVAs nobody holds, reclaims them after the grace period and retries.
 */
import type { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { iova, pa, MiB } from '../src/addresses.js';
import { Machine } from '../src/index.js';
import { Iommu } from '../src/iommu/iommu.js';
import type { Domain } from '../src/iommu/domain.js';
import { IOMMU_READ, IOMMU_WRITE, SZ_1G, SZ_2M, SZ_4K } from '../src/iommu/page-table.js';
import { runWorkersTogether } from './worker-harness.js';
import type { TableReclaimChurnData, TableReclaimChurnResult } from '../workers/table-reclaim-churn.js';

const RW = IOMMU_READ | IOMMU_WRITE;
const SPAN_PAGES = SZ_2M / SZ_4K;
const live = new Set<Worker>();

afterEach(async () => {
  await Promise.all([...live].map((w) => w.terminate()));
  live.clear();
});

/** An IOMMU whose pool holds `tables` pages, and a DMA-API domain over `spans` 2 MiB spans. */
function setup(tables: number, spans = 4, iovaManaged = true): { iommu: Iommu; d: Domain } {
  const iommu = Iommu.create({ tables });
  const d = iommu.createDomain('dma', { aperturePages: spans * SPAN_PAGES, iovaManaged });
  return { iommu, d };
}

/** Maps and unmaps one page in each given span: each leaves an empty level-3 table behind. */
function leaveEmptyTables(d: Domain, spans: number[]): void {
  for (const s of spans) {
    d.map(iova(s * SZ_2M + SZ_4K), pa(0x10_0000), SZ_4K, RW);
    expect(d.unmap(iova(s * SZ_2M + SZ_4K), SZ_4K)).toBe(SZ_4K);
  }
}

describe('a DMA-API domain whose table pool is spent on empty tables', () => {
  it('maps in a fresh span: the empty level-3 tables are detached, reclaimed, and the pool count is back', () => {
    // root + L1 + L2 + three L3 tables: the pool is full once spans 1, 2 and 3 were used.
    const { iommu, d } = setup(6);
    leaveEmptyTables(d, [1, 2, 3]);
    expect(iommu.pool.inUse()).toBe(6);
    d.map(iova(SZ_4K), pa(0x20_0000), SZ_4K, RW); // span 0 needs a level-3 table
    expect(d.iovaToPhys(iova(SZ_4K + 0x10))).toBe(0x20_0010);
    // root, L1, L2 and span 0's table: the three empty ones went back to the pool
    expect(d.pt!.countTables()).toBe(4);
    expect(iommu.pool.inUse()).toBe(4);
    expect(iommu.pool.retiredCount()).toBe(0);
  });

  it('keeps the table of a span in which an IOVA is allocated, even though the table is empty', () => {
    const { iommu, d } = setup(6);
    leaveEmptyTables(d, [1, 2, 3]);
    const held = d.iova.alloc(1, 4 * SPAN_PAGES); // top-down: the last page, in span 3
    expect(Math.floor(held / SPAN_PAGES)).toBe(3);
    expect(d.detachEmptyTables()).toBe(2); // spans 1 and 2
    expect(d.reclaimRetiredTables()).toBe(2);
    expect(iommu.pool.inUse()).toBe(4);
    d.map(iova(held * SZ_4K), pa(0x30_0000), SZ_4K, RW); // span 3's table is still linked: no alloc
    expect(iommu.pool.inUse()).toBe(4);
    expect(d.iovaToPhys(iova(held * SZ_4K))).toBe(0x30_0000);
  });

  it('counts an IOVA freed into a per-thread cache as free: its span\'s empty table is detached', () => {
    const { d } = setup(6);
    leaveEmptyTables(d, [3]);
    const p = d.iova.alloc(1, 4 * SPAN_PAGES);
    d.iova.free(p, 1); // cached in this thread's magazine, still allocated in the shared space
    expect(d.iova.cachedPages()).toBe(1);
    expect(d.detachEmptyTables()).toBe(2); // span 3's level-3 table, then the level-2 table above it
    expect(d.iova.cachedPages()).toBe(0);
    expect(d.pt!.countTables()).toBe(2); // root and L1
  });

  it('never detaches a table that still maps a page, even one whose IOVA no allocator handed out', () => {
    const { iommu, d } = setup(6);
    leaveEmptyTables(d, [1, 2]);
    d.map(iova(3 * SZ_2M), pa(0x40_0000), SZ_4K, RW); // span 3: a mapping the allocator knows nothing of
    expect(d.detachEmptyTables()).toBe(2);
    d.reclaimRetiredTables();
    expect(d.iovaToPhys(iova(3 * SZ_2M))).toBe(0x40_0000);
    expect(iommu.pool.inUse()).toBe(d.pt!.countTables());
  });

  it('detaches an empty level-2 table once its level-3 tables are gone', () => {
    // GiB 1 lies beyond the aperture, where the allocator hands out nothing: its span is unheld.
    const { iommu, d } = setup(5);
    d.map(iova(SZ_1G), pa(0x10_0000), SZ_4K, RW); // L1, L2 and L3 of GiB 1
    d.unmap(iova(SZ_1G), SZ_4K);
    expect(iommu.pool.inUse()).toBe(4);
    d.map(iova(SZ_4K), pa(0x20_0000), SZ_4K, RW); // GiB 0 needs an L2 and an L3: one is free
    expect(d.iovaToPhys(iova(SZ_4K))).toBe(0x20_0000);
    expect(d.pt!.countTables()).toBe(4); // root, L1, and GiB 0's L2 and L3: GiB 1's two went back
    expect(iommu.pool.inUse()).toBe(4);
    expect(iommu.pool.retiredCount()).toBe(0);
  });

  it('in a domain whose IOVAs are not all from its allocator (VFIO\'s), the map fails with ENOMEM and nothing is detached', () => {
    const { iommu, d } = setup(6, 4, false);
    leaveEmptyTables(d, [1, 2, 3]);
    expect(() => d.map(iova(SZ_4K), pa(0x20_0000), SZ_4K, RW)).toThrow(/^ENOMEM: domain \d+: map at 0x00001000: no page-table page for a level-3 table/);
    expect(d.detachEmptyTables()).toBe(0);
    expect(d.pt!.countTables()).toBe(6);
    expect(iommu.pool.inUse()).toBe(6);
  });
});

describe('which domains reclaim empty tables', () => {
  it('a device\'s default DMA domain does (the DMA API maps only IOVAs it allocated), a VFIO container\'s does not', async () => {
    const acs = { cap: ['SV', 'RR', 'CR', 'UF'], ctl: ['SV', 'RR', 'CR', 'UF'] };
    const topology = {
      functions: [
        { bdf: '00:00.0', type: 'host-bridge' },
        { bdf: '00:01.0', type: 'root-port', secondary: 1, acs, driver: 'pcieport' },
        { bdf: '01:00.0', type: 'endpoint', driver: 'vfio-pci' },
      ],
    };
    const m = await Machine.create({ ram: [{ base: 0, size: 8 * MiB }], topology });
    try {
      const dev = await m.addDevice({ bdf: '01:00.0' });
      expect(m.iommu.domainOf(dev)!.iovaManaged).toBe(true);
      const c = m.vfio.openContainer();
      m.vfio.group('01:00.0').setContainer(c);
      c.setIommu('type1v2');
      expect(c.domain!.iovaManaged).toBe(false);
      expect(c.domain!.detachEmptyTables()).toBe(0);
    } finally {
      await m.close();
    }
  });
});

describe('empty-table reclaim on real workers', () => {
  it('one worker maps/unmaps in its span while another detaches empty tables: every map translates, no table leaks or is freed twice', async () => {
    // root + L1 + L2 + two L3: three spans in play, so maps also run out and reclaim on their own.
    const { iommu, d } = setup(5);
    const ROUNDS = 1500;
    const base = { domain: d.handle, rounds: ROUNDS };
    const datas: Array<Omit<TableReclaimChurnData, 'startFlag'>> = [
      { ...base, limitPage: 4 * SPAN_PAGES, alternate: false, reclaim: false, paBase: 0x100_0000 }, // span 3
      { ...base, limitPage: 3 * SPAN_PAGES, alternate: true, reclaim: true, paBase: 0x200_0000 }, // spans 2 and 1
    ];
    const [mapper, reclaimer] = await runWorkersTogether<TableReclaimChurnResult>('table-reclaim-churn', datas, live);
    expect(mapper.error).toBeUndefined();
    expect(reclaimer.error).toBeUndefined();
    expect(mapper.mapped).toBeGreaterThan(0);
    expect(reclaimer.mapped).toBeGreaterThan(0);
    expect(mapper.mapped + mapper.enomem).toBe(ROUNDS);
    expect(reclaimer.mapped + reclaimer.enomem).toBe(ROUNDS);
    expect(reclaimer.detached).toBeGreaterThan(0);
    // Everything was unmapped: nothing is left mapped, and every table is either linked or retired.
    let leaves = 0;
    d.pt!.forEachMapping(() => leaves++);
    expect(leaves).toBe(0);
    expect(iommu.pool.inUse()).toBe(d.pt!.countTables() + iommu.pool.retiredCount());
    d.detachEmptyTables();
    d.reclaimRetiredTables();
    expect(iommu.pool.retiredCount()).toBe(0);
    expect(iommu.pool.inUse()).toBe(d.pt!.countTables());
    // The free stack holds exactly the rest, each table once (a table on it twice would be handed
    // out twice, which alloc's state check refuses).
    const got: number[] = [];
    expect(() => {
      for (;;) got.push(iommu.pool.alloc());
    }).toThrow(/^ENOMEM: table pool/);
    expect(new Set(got).size).toBe(got.length);
    expect(got.length).toBe(5 - d.pt!.countTables());
  });
});
