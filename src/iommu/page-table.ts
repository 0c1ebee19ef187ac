/**
 * PageTable — a 4-level lockless IOMMU page table in a shared TablePool, in the manner of Linux's
 * io-pgtable-arm: any thread maps and unmaps concurrently, device workers walk it with plain loads.
 *
 * Geometry: 48-bit IOVA, 4 KiB pages; levels 0..3 each index 9 bits (L0 = IOVA bits 39–47,
 * L1 = 30–38, L2 = 21–29, L3 = 12–20). Leaves: 4 KiB pages at L3, 2 MiB blocks at L2, 1 GiB blocks
 * at L1; L0 only points to tables. IOVAs are JS numbers: indices come from hi = iova / 2^32 and
 * lo = iova >>> 0 with integer ops only.
 *
 * Entry (one Int32 word of a 512-entry table in pool.entries; table t = words [t*512, t*512+512)):
 *   bit 0 PTE_VALID   bit 1 PTE_LEAF (1 = page/block, 0 = next-level table)
 *   bit 2 PTE_READ    bit 3 PTE_WRITE
 *   bits 4..31        PFN (PA >> 12, so PA < 2^40) for a leaf, table index for a table;
 *                     decode with `>>> 4`.
 *   0                 empty.
 *   FROZEN            valid = 0, leaf bit = 1, bits 4..31 = the freezing thread's id: a slot claimed
 *                     by a thread that is replacing or detaching the table it belongs to (below).
 *                     Walkers see "not present" (valid bit clear); mappers see "not empty".
 *
 * Who writes which word:
 *   - map installs a missing table with CAS 0 → table (the loser frees its own table and uses the
 *     winner's), and a leaf with CAS 0 → leaf only: a mapping is never overwritten.
 *   - A block over a table subtree: the mapper freezes the subtree (CAS 0 → FROZEN on every empty
 *     slot, recursively); if any slot holds a leaf (or another thread's FROZEN) it thaws what it
 *     froze and fails with EEXIST; otherwise nobody can install anything below any more, and it
 *     swaps the slot with CAS table → block. Freezing is what keeps a concurrent 4 KiB map into
 *     that subtree from being lost. When the whole map succeeds the subtree's tables are retired
 *     (walkers may still be reading them); if it fails later, CAS block → table puts the subtree
 *     back and it is thawed.
 *   - unmap checks that the leaves holding its first and last byte lie inside the range (leaves are
 *     aligned and disjoint, so no other leaf can stick out), then clears each leaf with CAS leaf → 0
 *     (a concurrent double unmap counts the bytes once, and a slot re-mapped or frozen in between
 *     is not clobbered). Tables are not freed on unmap (as io-pgtable-arm); see detachEmptyTables.
   - detachEmptyTables (VT-d's dma_pte_free_pagetable, run when the pool is spent): an L3 table,
     then an L2 table, whose entries are all 0 is unlinked — only inside the caller's claim of
     the table's whole IOVA span (Domain: the span taken in the IOVA allocator, so no mapper or
     unmapper can be in it) — by: seq_cst load of the parent slot (still this table?), freeze of
     every slot (CAS 0 → FROZEN; any failure thaws and skips), CAS table → 0 on the parent, then
     retire (a device walker may still be inside: the pool frees it after the grace period).
 *   - A failed map swaps back the subtrees its blocks replaced, clears the leaves it installed,
 *     then detaches the tables it installed that are still empty (freeze flat, CAS table → 0,
 *     retire: another thread may already have walked into them). A mapper that meets FROZEN in
 *     a table its parent slot no longer points to (detached or replaced meanwhile) descends again
 *     from the root instead of failing: a detached table was empty, so nothing was in its way.
 *   - destroy frees every table (the caller guarantees nobody uses the table any more).
 *   - CPU grace period: map, mapRuns, unmap and detachEmptyTables each run as one section of the
 *     pool's mapper epochs (mapper-epochs.ts: a seq_cst store of an odd number on entry, of the
 *     next even one on exit), and the pool frees a retired table only after every other thread
 *     that was inside a section when it was taken has left it. So a table pointer read during a
 *     section stays this page table's (retired or linked, never zeroed and reused by another
 *     domain) until the section ends; a mapper's CAS in a retired table meets FROZEN and restarts.
 *     A section inside a section (e.g. a detachEmptyTables claim callback that maps) counts as
 *     part of the outer one; a thread reclaims only outside every section.
 *   FROZEN tokens carry the thread id, so a thaw only ever undoes this thread's own freeze.
 *
 * Invariants: L0 entries are tables or empty; L3 entries are 4 KiB leaves, empty or FROZEN; a
 * table pointer changes only to a block (its subtree frozen and leafless) and back (rollback), or
 * to 0 (rollback of the map that installed it, or detachEmptyTables: frozen and empty, never while
 * a leaf is below it); tables reachable from the root
 * are IN_USE in the pool and tables unlinked from it are retired, so countTables() + retired ==
 * pool.inUse() for a pool holding one page table; a failed map leaves inUse() − retiredCount()
 * where it was.
 *
 * Walkers (`walk`) use plain loads. A table is zeroed before the seq_cst CAS that publishes it, and
 * each level's load depends on the address read at the level above (as Linux's READ_ONCE walk);
 * a translation that races with an unmap is caught by the device's one generation check per
 * transfer (see the invalidation protocol), not here.
 *
 * Differs from Linux: unmapping part of a 2 MiB/1 GiB block is EINVAL (io-pgtable-arm splits the
 * block); tables a block replaces are retired, not freed at once, and a failed map also unlinks
 * the tables it created (iommu_map's rollback only unmaps); empty tables are given back on demand
 * (detachEmptyTables), not on every unmap as VT-d's domain_unmap does.
 */
import { threadId } from 'node:worker_threads';
import type { Iova, Pa } from '../addresses.js';
import { DmaError, hex } from '../errors.js';
import { TABLE_ENTRIES, type TablePool } from './table-pool.js';
import type { MapperEpochs } from './mapper-epochs.js';

export const PTE_VALID = 1;
export const PTE_LEAF = 2;
export const PTE_READ = 4;
export const PTE_WRITE = 8;
/** Entry bits 4..31 hold the PFN or table index. */
export const PTE_ADDR_SHIFT = 4;

/** Prot flags, named as Linux's iommu_map takes them. */
export const IOMMU_READ = 1;
export const IOMMU_WRITE = 2;

export const IOVA_BITS = 48;
export const PA_BITS = 40;
export const SZ_4K = 0x1000;
export const SZ_2M = 0x20_0000;
export const SZ_1G = 0x4000_0000;
/** Page sizes this format supports; a page table may restrict itself to a subset. */
export const DEFAULT_PGSIZE_BITMAP = SZ_4K | SZ_2M | SZ_1G;

const IOVA_LIMIT = 2 ** IOVA_BITS;
const PA_LIMIT = 2 ** PA_BITS;
const TWO32 = 4294967296;
/** Bytes covered by one entry at each level. */
const SPAN = [2 ** 39, SZ_1G, SZ_2M, SZ_4K] as const;
/** A slot frozen by this thread (one module instance per thread, so one token per thread). */
const FROZEN = ((threadId & 0x0fff_ffff) << PTE_ADDR_SHIFT) | PTE_LEAF;

export interface PageTableHandle {
  readonly root: number;
  readonly name: string;
  readonly pgsizeBitmap: number;
}

export interface PageTableOptions {
  /** Used in error messages, e.g. "domain 3". */
  name: string;
  /** Page sizes map may use (bits SZ_4K | SZ_2M | SZ_1G); default all three. */
  pgsizeBitmap?: number;
}

export type MappingCallback = (iova: Iova, pa: Pa, size: number, prot: number) => void;

/**
 * The device fast path: the leaf entry for the 4 KiB page containing `iova` (for a block, the
 * block's entry with its PFN advanced to that page, same flag bits), or 0 when nothing is mapped
 * (or iova is outside the 48-bit space). Plain loads, no allocation.
 */
export function walk(entries: Int32Array, root: number, iova: number): number {
  const h = iova / TWO32;
  if (!(h >= 0 && h < 65536)) return 0;
  const hi = h | 0;
  const lo = iova >>> 0;
  let e = entries[(root << 9) | (hi >>> 7)];
  if ((e & 3) !== PTE_VALID) return 0;
  e = entries[((e >>> 4) << 9) | ((hi & 127) << 2) | (lo >>> 30)];
  if ((e & PTE_VALID) === 0) return 0;
  if ((e & PTE_LEAF) !== 0) return e | (((lo >>> 12) & 0x3ffff) << 4);
  e = entries[((e >>> 4) << 9) | ((lo >>> 21) & 511)];
  if ((e & PTE_VALID) === 0) return 0;
  if ((e & PTE_LEAF) !== 0) return e | (((lo >>> 12) & 511) << 4);
  e = entries[((e >>> 4) << 9) | ((lo >>> 12) & 511)];
  return (e & 3) === 3 ? e : 0;
}

/**
 * walk() by page number: the same leaf, computed with integer shifts only when the page number
 * fits 31 bits (IOVAs below 8 TiB, all the DMA API hands out); above that it defers to walk().
 */
export function walkPage(entries: Int32Array, root: number, page: number): number {
  if (page > 0x7fffffff || page < 0) return walk(entries, root, page * 4096);
  let e = entries[(root << 9) | (page >>> 27)];
  if ((e & 3) !== PTE_VALID) return 0;
  e = entries[((e >>> 4) << 9) | ((page >>> 18) & 511)];
  if ((e & PTE_VALID) === 0) return 0;
  if ((e & PTE_LEAF) !== 0) return e | ((page & 0x3ffff) << 4);
  e = entries[((e >>> 4) << 9) | ((page >>> 9) & 511)];
  if ((e & PTE_VALID) === 0) return 0;
  if ((e & PTE_LEAF) !== 0) return e | ((page & 511) << 4);
  e = entries[((e >>> 4) << 9) | (page & 511)];
  return (e & 3) === 3 ? e : 0;
}

/** Index of `iova` (split as hi/lo) in a table at `level`. */
function indexAt(level: number, hi: number, lo: number): number {
  switch (level) {
    case 0:
      return hi >>> 7;
    case 1:
      return ((hi & 127) << 2) | (lo >>> 30);
    case 2:
      return (lo >>> 21) & 511;
    default:
      return (lo >>> 12) & 511;
  }
}

function sizeName(size: number): string {
  if (size % SZ_1G === 0) return `${size / SZ_1G} GiB`;
  if (size % SZ_2M === 0) return `${size / 0x10_0000} MiB`;
  if (size % 1024 === 0) return `${size / 1024} KiB`;
  return `${size} bytes`;
}

/** The leaf entry bits for IOMMU_READ / IOMMU_WRITE `prot`. */
function leafBitsOf(prot: number): number {
  return PTE_VALID | PTE_LEAF | ((prot & IOMMU_READ) !== 0 ? PTE_READ : 0) | ((prot & IOMMU_WRITE) !== 0 ? PTE_WRITE : 0);
}

function leafKind(level: number): string {
  return level === 3 ? '4 KiB page' : `${sizeName(SPAN[level])} block`;
}

function show(n: number): string {
  return Number.isInteger(n) && n >= 0 ? hex(n) : String(n);
}

function checkBitmap(bitmap: number, name: string): void {
  if (!Number.isInteger(bitmap) || bitmap <= 0 || (bitmap & ~DEFAULT_PGSIZE_BITMAP) !== 0) {
    throw new DmaError(
      'EINVAL',
      `${name}: pgsizeBitmap ${show(bitmap)} must be a non-empty combination of 4 KiB (0x1000), ` +
        `2 MiB (0x200000) and 1 GiB (0x40000000)`,
    );
  }
}

export class PageTable {
  readonly pool: TablePool;
  /** The pool's entries (all tables). */
  readonly entries: Int32Array;
  /** Index of the L0 table in the pool. */
  readonly root: number;
  readonly name: string;
  readonly pgsizeBitmap: number;
  /** Smallest page size in pgsizeBitmap: the alignment map/unmap require. */
  readonly minPageSize: number;
  /** The pool's mapper epochs: map, mapRuns, unmap and detachEmptyTables run inside a section. */
  private readonly mappers: MapperEpochs;
  private live = true;
  /** Tables installed by the map in progress: (parent slot, table entry) pairs, for rollback. */
  private readonly installed: number[] = [];
  private installedN = 0;
  /** Table subtrees the map in progress swapped for blocks: (slot, old entry, block, level)
   *  quadruples. Retired when the map succeeds, swapped back (and thawed) when it fails. */
  private readonly replaced: number[] = [];
  private replacedN = 0;
  /** Tables the last failed map of this thread retired in its rollback (its own, not others'). */
  retiredByLastRollback = 0;
  /** For error messages: the entry a freeze ran into. */
  private conflictEntry = 0;
  private conflictLevel = 0;

  private constructor(pool: TablePool, root: number, name: string, pgsizeBitmap: number) {
    this.pool = pool;
    this.entries = pool.entries;
    this.root = root;
    this.name = name;
    this.pgsizeBitmap = pgsizeBitmap;
    this.minPageSize = pgsizeBitmap & -pgsizeBitmap;
    this.mappers = pool.mappers;
  }

  /** A new, empty page table: allocates its root (L0) table from the pool. */
  static create(pool: TablePool, options: PageTableOptions): PageTable {
    const name = options.name;
    const bitmap = options.pgsizeBitmap ?? DEFAULT_PGSIZE_BITMAP;
    checkBitmap(bitmap, name);
    let root: number;
    try {
      root = pool.alloc();
    } catch (err) {
      throw new DmaError('ENOMEM', `${name}: no page-table page for the root table (${(err as Error).message})`, {
        cause: err,
      });
    }
    return new PageTable(pool, root, name, bitmap);
  }

  /** Attaches (in any thread) to a page table created from the same pool. */
  static attach(pool: TablePool, handle: PageTableHandle): PageTable {
    const { root, name, pgsizeBitmap } = handle;
    checkBitmap(pgsizeBitmap, String(name));
    if (!Number.isInteger(root) || root < 1 || root > pool.capacity) {
      throw new DmaError('EINVAL', `${name}: root table ${root} is not a table of this pool (1..${pool.capacity})`);
    }
    return new PageTable(pool, root, String(name), pgsizeBitmap);
  }

  /** Structured-cloneable; the pool's handle travels separately. */
  get handle(): PageTableHandle {
    return { root: this.root, name: this.name, pgsizeBitmap: this.pgsizeBitmap };
  }

  /**
   * Maps [iova, iova + size) to [pa, pa + size) like iommu_map: in the largest page sizes of
   * pgsizeBitmap that iova and pa are both aligned to and that fit what remains. All or nothing.
   */
  map(iova: Iova, pa: Pa, size: number, prot: number): void {
    const m = this.mappers;
    m.enter(); // a map section: retired tables this walk may reach are not reused until exit
    try {
      this.mapSection(iova, pa, size, prot);
    } finally {
      m.exit();
    }
  }

  private mapSection(iova: Iova, pa: Pa, size: number, prot: number): void {
    this.checkLive('map');
    this.checkMapArgs(iova, pa, size, prot);
    const leafBits = leafBitsOf(prot);
    this.installedN = 0;
    this.replacedN = 0;
    // Fast path (every DMA API map below 2 MiB that does not cross a 2 MiB line): only 4 KiB
    // pages fit, all in one L3 table: one descent, then the leaves side by side.
    const first = iova / SZ_4K;
    const n = size / SZ_4K;
    if (n < TABLE_ENTRIES && first + n <= 0x80000000 && (first & 511) + n <= TABLE_ENTRIES) {
      this.mapL3(iova, first, n, pa, leafBits);
      return;
    }
    this.installRuns([iova, pa, size], leafBits);
  }

  /**
   * Maps several disjoint runs — `runs` holds [iova, pa, size] triples — as one all-or-nothing
   * map (dma-iommu's map_sg: one IOVA range, an entry or a physically contiguous run at each
   * place): when any run fails, the leaves of every run are cleared and the tables any of them
   * installed detached, as a failed map() leaves the table.
   */
  mapRuns(runs: readonly number[], prot: number): void {
    const m = this.mappers;
    m.enter(); // a map section: retired tables this walk may reach are not reused until exit
    try {
      this.mapRunsSection(runs, prot);
    } finally {
      m.exit();
    }
  }

  private mapRunsSection(runs: readonly number[], prot: number): void {
    this.checkLive('map');
    if (runs.length === 0 || runs.length % 3 !== 0) {
      throw new DmaError('EINVAL', `${this.name}: mapRuns needs [iova, pa, size] triples (got ${runs.length} numbers)`);
    }
    for (let i = 0; i < runs.length; i += 3) this.checkMapArgs(runs[i], runs[i + 1], runs[i + 2], prot);
    this.installedN = 0;
    this.replacedN = 0;
    this.installRuns(runs, leafBitsOf(prot));
  }

  /**
   * Installs the leaves of [iova, pa, size] triples in the largest page sizes that fit; all or
   * nothing: on a failure every leaf installed so far is cleared and the tables detached.
   */
  private installRuns(runs: readonly number[], leafBits: number): void {
    let i = 0;
    let cur = 0;
    try {
      for (; i < runs.length; i += 3) {
        cur = runs[i];
        let phys = runs[i + 1];
        let left = runs[i + 2];
        while (left > 0) {
          const pgsize = this.pickPageSize(cur, phys, left);
          this.installLeaf(cur, phys, pgsize, leafBits);
          cur += pgsize;
          phys += pgsize;
          left -= pgsize;
        }
      }
    } catch (err) {
      const done: number[] = [];
      for (let j = 0; j < i; j += 3) done.push(runs[j], runs[j] + runs[j + 2]);
      done.push(runs[i], cur);
      this.rollback(done);
      throw err;
    }
    if (this.replacedN !== 0) this.retireReplaced();
  }

  /**
   * Unmaps every leaf inside [iova, iova + size); holes are skipped. Returns the bytes cleared.
   * A block that the range covers only partly is EINVAL, and then nothing is cleared.
   */
  unmap(iova: Iova, size: number): number {
    const m = this.mappers;
    m.enter(); // a map section: retired tables this walk may reach are not reused until exit
    try {
      return this.unmapSection(iova, size);
    } finally {
      m.exit();
    }
  }

  private unmapSection(iova: Iova, size: number): number {
    this.checkLive('unmap');
    this.checkRange('unmap', iova, size);
    // Fast path (every DMA API unmap of up to 2 MiB that does not cross a 2 MiB line): the range
    // lies in one L3 table reached through table entries only, so every leaf there is a 4 KiB page
    // and none can stick out: one descent, no per-leaf walk from the root.
    const first = iova / SZ_4K;
    const n = size / SZ_4K;
    if (first + n <= 0x80000000 && (first & 511) + n <= TABLE_ENTRIES) {
      const t = this.l3TableOf(first);
      if (t >= 0) return this.clearL3(t, first & 511, n);
    }
    const end = iova + size;
    // Validate first: leaves are aligned to their size and never overlap, so only the leaves
    // holding the first and the last byte of the range can stick out of it.
    this.checkWhole(iova, size, iova);
    this.checkWhole(iova, size, end - 1);
    return this.clear(iova, end);
  }

  /** Whether IOVA page `page` (iova / 4 KiB) is mapped, by a page or a block: one integer walk. */
  pageMapped(page: number): boolean {
    this.checkLive('pageMapped');
    return walkPage(this.entries, this.root, page) !== 0;
  }

  /** The PA `iova` translates to (offset within the page or block kept), or null. */
  iovaToPhys(iova: Iova): Pa | null {
    this.checkLive('iovaToPhys');
    if (!Number.isInteger(iova) || iova < 0) {
      throw new DmaError('EINVAL', `${this.name}: iovaToPhys ${show(iova)}: not a non-negative integer`);
    }
    const e = walk(this.entries, this.root, iova);
    if (e === 0) return null;
    return ((e >>> PTE_ADDR_SHIFT) * SZ_4K + ((iova >>> 0) & 0xfff)) as Pa;
  }

  /** Tables reachable from the root, the root included. */
  countTables(): number {
    this.checkLive('countTables');
    return this.count(this.root, 0);
  }

  /** Calls cb for every leaf, in IOVA order (for debugging and tests). */
  forEachMapping(cb: MappingCallback): void {
    this.checkLive('forEachMapping');
    this.each(this.root, 0, 0, cb);
  }

  /**
   * Gives back the tables of spans nothing is mapped in (as VT-d's dma_pte_free_pagetable): every
   * level-3 table, and then every level-2 table, that is entirely empty is unlinked and retired,
   * provided `claim(iova, size, detach)` runs detach() — it must do so only while no thread can
   * map anywhere in the table's span [iova, iova + size), e.g. with the span taken in the domain's
   * IOVA allocator — and returns its result. Retired tables go back to the pool only after a
   * grace period (TablePool.reclaimRetired's caller's). Returns how many tables were retired.
   */
  detachEmptyTables(claim: (iova: number, size: number, detach: () => boolean) => boolean): number {
    const m = this.mappers;
    m.enter(); // a map section: retired tables this walk may reach are not reused until exit
    try {
      return this.detachEmptyTablesSection(claim);
    } finally {
      m.exit();
    }
  }

  private detachEmptyTablesSection(claim: (iova: number, size: number, detach: () => boolean) => boolean): number {
    this.checkLive('detachEmptyTables');
    const e = this.entries;
    let n = 0;
    for (let i0 = 0; i0 < TABLE_ENTRIES; i0++) {
      const v0 = e[(this.root << 9) | i0];
      if ((v0 & 3) !== PTE_VALID) continue;
      const t1 = v0 >>> PTE_ADDR_SHIFT;
      for (let i1 = 0; i1 < TABLE_ENTRIES; i1++) {
        const off1 = (t1 << 9) | i1;
        const v1 = e[off1];
        if ((v1 & 3) !== PTE_VALID) continue;
        const t2 = v1 >>> PTE_ADDR_SHIFT;
        const base1 = i0 * SPAN[0] + i1 * SPAN[1];
        for (let i2 = 0; i2 < TABLE_ENTRIES; i2++) {
          const off2 = (t2 << 9) | i2;
          const v2 = e[off2];
          if ((v2 & 3) !== PTE_VALID || !this.isEmpty(v2 >>> PTE_ADDR_SHIFT)) continue;
          if (claim(base1 + i2 * SZ_2M, SZ_2M, () => this.detachIfStill(off2, v2))) n++;
        }
        if (this.isEmpty(t2) && claim(base1, SZ_1G, () => this.detachIfStill(off1, v1))) n++;
      }
    }
    return n;
  }

  /** Frees every table of this page table back to the pool. No thread may use it afterwards. */
  destroy(): void {
    this.checkLive('destroy');
    this.live = false;
    this.freeTree(this.root, 0);
  }

  // ---- map ----

  private pickPageSize(cur: number, phys: number, left: number): number {
    const al = (cur >>> 0) | (phys >>> 0);
    const bm = this.pgsizeBitmap;
    if ((bm & SZ_1G) !== 0 && (al & (SZ_1G - 1)) === 0 && left >= SZ_1G) return SZ_1G;
    if ((bm & SZ_2M) !== 0 && (al & (SZ_2M - 1)) === 0 && left >= SZ_2M) return SZ_2M;
    return SZ_4K; // reached only when 4 KiB is in the bitmap: everything is minPageSize-aligned
  }

  private installLeaf(cur: number, phys: number, pgsize: number, leafBits: number): void {
    const level = pgsize === SZ_4K ? 3 : pgsize === SZ_2M ? 2 : 1;
    const e = this.entries;
    const hi = (cur / TWO32) | 0;
    const lo = cur >>> 0;
    const leaf = leafBits | ((phys / SZ_4K) << PTE_ADDR_SHIFT);
    descend: for (;;) {
      let table = this.root;
      let parentOff = -1;
      let parentVal = 0;
      for (let l = 0; l < level; l++) {
        const off = (table << 9) | indexAt(l, hi, lo);
        // Plain load: a stale value only costs a failed CAS below (which returns the real one); a
        // stale table pointer leads into a frozen (or retired) subtree, where our CAS from 0 fails.
        let v = e[off];
        if (v === 0) v = this.installTable(off, cur, l);
        if ((v & 3) !== PTE_VALID) {
          if (this.unlinkedSince(v, parentOff, parentVal)) continue descend;
          throw this.overlapError(cur, pgsize, phys, v, l);
        }
        parentOff = off;
        parentVal = v;
        table = v >>> PTE_ADDR_SHIFT;
      }
      const off = (table << 9) | indexAt(level, hi, lo);
      for (;;) {
        // ORDERING: seq_cst CAS from empty publishes the leaf; mapping over a mapping fails.
        const old = Atomics.compareExchange(e, off, 0, leaf);
        if (old === 0) return;
        if (this.unlinkedSince(old, parentOff, parentVal)) continue descend;
        if (level === 3 || (old & 3) !== PTE_VALID) throw this.overlapError(cur, pgsize, phys, old, level);
        // A block where a table is: allowed only if the subtree has no leaves. Freeze it first so
        // no concurrent map can add one between our check and our swap.
        const child = old >>> PTE_ADDR_SHIFT;
        const conflict = this.freeze(child, level + 1, cur);
        if (conflict >= 0) {
          this.thaw(child, level + 1);
          const what =
            (this.conflictEntry & PTE_VALID) !== 0
              ? `the ${leafKind(this.conflictLevel)} at ${hex(conflict)}`
              : `a concurrent change at ${hex(conflict)}`;
          throw new DmaError(
            'EEXIST',
            `${this.name}: map ${sizeName(pgsize)} block at ${hex(cur)} → PA ${hex(phys)}: ` +
              `the range still has mappings below it (${what}); unmap them first`,
          );
        }
        // ORDERING: seq_cst CAS table → block; the subtree is frozen, so it cannot have changed.
        if (Atomics.compareExchange(e, off, old, leaf) === old) {
          const r = this.replaced;
          r[this.replacedN++] = off;
          r[this.replacedN++] = old;
          r[this.replacedN++] = leaf;
          r[this.replacedN++] = level;
          return;
        }
        this.thaw(child, level + 1); // defensive: the slot moved under a frozen subtree; retry
      }
    }
  }

  /**
   * A mapper met `v` in the table that the slot at `parentOff` pointed to as `parentVal`: true
   * when `v` is a FROZEN token and that table is no longer linked there — a failed map detached
   * it (rollback) or a block replaced it — so the map descends again from the root instead of
   * failing: a detach only ever unlinks an empty table, nothing of the mapper's range was in it.
   * While the table is still linked (a freeze in progress) the mapper fails with EEXIST as before.
   */
  private unlinkedSince(v: number, parentOff: number, parentVal: number): boolean {
    // ORDERING: seq_cst load after the load or CAS that returned FROZEN: a detach stores FROZEN
    // into every slot before its CAS of the parent, so a changed parent is seen here or later.
    return v !== 0 && (v & PTE_VALID) === 0 && parentOff >= 0 && Atomics.load(this.entries, parentOff) !== parentVal;
  }

  /** map() of n 4 KiB pages from IOVA page `first` (< 2^31), all in one L3 table; all or nothing. */
  private mapL3(iova: number, first: number, n: number, pa: number, leafBits: number): void {
    const e = this.entries;
    let done = 0;
    try {
      descend: for (;;) {
        let table = this.root;
        let parentOff = -1;
        let parentVal = 0;
        for (let l = 0; l < 3; l++) {
          const off = (table << 9) | (l === 0 ? first >>> 27 : l === 1 ? (first >>> 18) & 511 : (first >>> 9) & 511);
          // Plain load, as installLeaf: a stale value only costs a failed CAS.
          let v = e[off];
          if (v === 0) v = this.installTable(off, iova, l);
          if ((v & 3) !== PTE_VALID) {
            if (this.unlinkedSince(v, parentOff, parentVal)) continue descend;
            throw this.overlapError(iova, SZ_4K, pa, v, l);
          }
          parentOff = off;
          parentVal = v;
          table = v >>> PTE_ADDR_SHIFT;
        }
        const base = (table << 9) | (first & 511);
        const pfn = pa / SZ_4K;
        for (; done < n; done++) {
          // ORDERING: seq_cst CAS from empty publishes the leaf; mapping over a mapping fails.
          const old = Atomics.compareExchange(e, base + done, 0, leafBits | ((pfn + done) << PTE_ADDR_SHIFT));
          if (old === 0) continue;
          // Only before our first leaf: a table holding one of our leaves is not empty, so no
          // rollback detaches it, and the leaves must stay where rollback's clear() finds them.
          if (done === 0 && this.unlinkedSince(old, parentOff, parentVal)) continue descend;
          throw this.overlapError(iova + done * SZ_4K, SZ_4K, pa + done * SZ_4K, old, 3);
        }
        break;
      }
    } catch (err) {
      this.rollback([iova, iova + done * SZ_4K]);
      throw err;
    }
  }

  private installTable(off: number, cur: number, level: number): number {
    let t: number;
    try {
      t = this.pool.alloc();
    } catch (err) {
      throw new DmaError(
        'ENOMEM',
        `${this.name}: map at ${hex(cur)}: no page-table page for a level-${level + 1} table ` +
          `(${(err as Error).message})`,
        { cause: err },
      );
    }
    const ptr = (t << PTE_ADDR_SHIFT) | PTE_VALID;
    // ORDERING: seq_cst CAS publishes the table after alloc's zeroing stores; a lost race frees
    // ours (never visible to anyone) and uses the winner's.
    const old = Atomics.compareExchange(this.entries, off, 0, ptr);
    if (old === 0) {
      this.installed[this.installedN++] = off;
      this.installed[this.installedN++] = ptr;
      return ptr;
    }
    this.pool.free(t);
    return old;
  }

  /**
   * Undo a failed map: clear the leaves it installed in the [start, end) pairs of `ranges`, then
   * detach its tables.
   */
  private rollback(ranges: readonly number[]): void {
    // Blocks that replaced empty subtrees get their (still frozen, still empty) subtree back, so a
    // failed map leaves even the table structure as it found it.
    const r = this.replaced;
    const retiredBefore = this.pool.retiredCount();
    for (let i = this.replacedN - 4; i >= 0; i -= 4) {
      // ORDERING: CAS block → table; the subtree was frozen all along, so nothing was added to it.
      if (Atomics.compareExchange(this.entries, r[i], r[i + 2], r[i + 1]) === r[i + 2]) {
        this.thaw(r[i + 1] >>> PTE_ADDR_SHIFT, r[i + 3] + 1);
      } else {
        this.retireTree(r[i + 1] >>> PTE_ADDR_SHIFT, r[i + 3] + 1); // block already gone: unlinked for good
      }
    }
    this.replacedN = 0;
    for (let i = 0; i < ranges.length; i += 2) if (ranges[i + 1] > ranges[i]) this.clear(ranges[i], ranges[i + 1]);
    const ins = this.installed;
    for (let i = this.installedN - 2; i >= 0; i -= 2) this.detachIfEmpty(ins[i], ins[i + 1]);
    this.installedN = 0;
    // Other threads may retire meanwhile: this can count theirs too, never fewer than ours.
    this.retiredByLastRollback = this.pool.retiredCount() - retiredBefore;
  }

  /** The map succeeded: the subtrees its blocks replaced are unlinked for good. */
  private retireReplaced(): void {
    const r = this.replaced;
    for (let i = 0; i < this.replacedN; i += 4) this.retireTree(r[i + 1] >>> PTE_ADDR_SHIFT, r[i + 3] + 1);
    this.replacedN = 0;
  }

  /**
   * detachIfEmpty for a pointer read before the span was claimed: only if the slot still holds it.
   * ORDERING: the seq_cst load re-validates the snapshot under the claim. Our plain read may be
   * stale by a detach (the table is retired, not reused: we are inside a map section, so the
   * CPU grace period waits for us); freezing a table someone else already unlinked must not. Once
   * the claim is held nobody can detach or install in this span, so the slot cannot change
   * between this load and detachIfEmpty's CAS except to a leaf-free state we then see.
   */
  private detachIfStill(parentOff: number, ptr: number): boolean {
    return Atomics.load(this.entries, parentOff) === ptr && this.detachIfEmpty(parentOff, ptr);
  }

  /** Whether every entry of `table` is 0 (plain loads: a snapshot). */
  private isEmpty(table: number): boolean {
    const e = this.entries;
    const base = table << 9;
    for (let i = 0; i < TABLE_ENTRIES; i++) if (e[base + i] !== 0) return false;
    return true;
  }

  /**
   * Unlinks the table `ptr` points to from the slot at parentOff if it is still empty, and retires
   * it. Returns whether it did.
   */
  private detachIfEmpty(parentOff: number, ptr: number): boolean {
    const e = this.entries;
    const base = (ptr >>> PTE_ADDR_SHIFT) << 9;
    for (let i = 0; i < TABLE_ENTRIES; i++) if (e[base + i] !== 0) return false; // in use by others
    let frozen = 0;
    // ORDERING: CAS 0 → FROZEN on every slot, so no concurrent mapper can install into the table
    // after we unlink it.
    while (frozen < TABLE_ENTRIES && Atomics.compareExchange(e, base + frozen, 0, FROZEN) === 0) frozen++;
    // ORDERING: seq_cst CAS table → 0 unlinks it; walkers that still hold it read FROZEN (absent).
    if (frozen === TABLE_ENTRIES && Atomics.compareExchange(e, parentOff, ptr, 0) === ptr) {
      this.pool.retire(ptr >>> PTE_ADDR_SHIFT);
      return true;
    }
    for (let i = 0; i < frozen; i++) Atomics.compareExchange(e, base + i, FROZEN, 0); // ORDERING: thaw
    return false;
  }

  /**
   * Freezes every empty slot of `table` and of the tables below it (CAS 0 → FROZEN). Returns -1,
   * or the IOVA of the first slot that is not empty (a leaf, another thread's FROZEN, or a slot
   * filled meanwhile) — then the caller thaws.
   */
  private freeze(table: number, level: number, base: number): number {
    const e = this.entries;
    const span = SPAN[level];
    for (let i = 0; i < TABLE_ENTRIES; i++) {
      const off = (table << 9) | i;
      // ORDERING: seq_cst CAS; once it succeeds no mapper's CAS from 0 can succeed on this slot.
      const v = Atomics.compareExchange(e, off, 0, FROZEN);
      if (v === 0) continue;
      if (level < 3 && (v & 3) === PTE_VALID) {
        const r = this.freeze(v >>> PTE_ADDR_SHIFT, level + 1, base + i * span);
        if (r >= 0) return r;
        continue;
      }
      this.conflictEntry = v;
      this.conflictLevel = level;
      return base + i * span;
    }
    return -1;
  }

  /** Undoes this thread's freeze of `table` and below. */
  private thaw(table: number, level: number): void {
    const e = this.entries;
    for (let i = 0; i < TABLE_ENTRIES; i++) {
      const off = (table << 9) | i;
      const v = e[off];
      // ORDERING: CAS FROZEN → 0 on our own token only; another thread's FROZEN is left alone.
      if (v === FROZEN) Atomics.compareExchange(e, off, FROZEN, 0);
      else if (level < 3 && (v & 3) === PTE_VALID) this.thaw(v >>> PTE_ADDR_SHIFT, level + 1);
    }
  }

  // ---- unmap ----

  /** Throws EINVAL when the leaf holding `at` is a block that sticks out of [iova, iova + size). */
  private checkWhole(iova: number, size: number, at: number): void {
    const e = this.entries;
    const hi = (at / TWO32) | 0;
    const lo = at >>> 0;
    let table = this.root;
    for (let level = 0; level < 3; level++) {
      const v = e[(table << 9) | indexAt(level, hi, lo)];
      if ((v & PTE_VALID) === 0) return;
      if ((v & PTE_LEAF) === 0) {
        table = v >>> PTE_ADDR_SHIFT;
        continue;
      }
      const span = SPAN[level];
      const slot = at - (lo & (span - 1)); // level ≥ 1 here: span ≤ 1 GiB
      if (slot >= iova && slot + span <= iova + size) return;
      throw new DmaError(
        'EINVAL',
        `${this.name}: unmap ${hex(iova)} size ${hex(size)} covers only part of the ` +
          `${leafKind(level)} at ${hex(slot)} → PA ${hex((v >>> PTE_ADDR_SHIFT) * SZ_4K)}; ` +
          `a block is unmapped whole (this emulator does not split blocks)`,
      );
    }
  }

  /**
   * The L3 table holding IOVA page `page` (< 2^31) when every level above points to a table;
   * -1 when a level holds a hole, a block or a frozen slot (the caller takes the general path).
   */
  private l3TableOf(page: number): number {
    const e = this.entries;
    let v = e[(this.root << 9) | (page >>> 27)];
    if ((v & 3) !== PTE_VALID) return -1;
    v = e[((v >>> 4) << 9) | ((page >>> 18) & 511)];
    if ((v & 3) !== PTE_VALID) return -1;
    v = e[((v >>> 4) << 9) | ((page >>> 9) & 511)];
    if ((v & 3) !== PTE_VALID) return -1;
    return v >>> PTE_ADDR_SHIFT;
  }

  /** clear() of entries [i, i + n) of L3 table `table`: the bytes of the 4 KiB leaves it cleared. */
  private clearL3(table: number, i: number, n: number): number {
    const e = this.entries;
    const base = table << 9;
    let bytes = 0;
    for (let off = base + i, end = base + i + n; off < end; off++) {
      const v = e[off];
      // ORDERING: CAS leaf → 0, as clear(): one of two racing unmaps counts the page, and a slot
      // re-mapped or frozen in between is not clobbered.
      if ((v & 3) === 3 && Atomics.compareExchange(e, off, v, 0) === v) bytes += SZ_4K;
    }
    return bytes;
  }

  /**
   * Clears every leaf that lies wholly inside [start, end) and returns the bytes it cleared. One
   * descent from the root per leaf or hole; a hole is skipped at the level where it is found.
   * A block sticking out of the range (mapped after validation) is skipped.
   */
  private clear(start: number, end: number): number {
    const e = this.entries;
    let bytes = 0;
    let cur = start;
    while (cur < end) {
      const hi = (cur / TWO32) | 0;
      const lo = cur >>> 0;
      let table = this.root;
      for (let level = 0; ; level++) {
        const off = (table << 9) | indexAt(level, hi, lo);
        const v = e[off];
        if ((v & 3) === PTE_VALID && level < 3) {
          table = v >>> PTE_ADDR_SHIFT;
          continue;
        }
        // a hole (or frozen), or a leaf: either way move on to the next slot of this level
        let slot: number;
        let next: number;
        if (level === 0) {
          slot = (hi >>> 7) * 2 ** 39;
          next = slot + 2 ** 39;
        } else {
          const span = SPAN[level];
          slot = cur - (lo & (span - 1));
          next = slot + span;
        }
        // ORDERING: CAS leaf → 0: exactly one of two racing unmaps counts the bytes, and a slot
        // re-mapped or frozen in between is not clobbered.
        if ((v & 3) === 3 && slot >= start && next <= end && Atomics.compareExchange(e, off, v, 0) === v) {
          bytes += next - slot;
        }
        cur = next;
        break;
      }
    }
    return bytes;
  }

  // ---- traversal helpers (plain loads: debugging, accounting, teardown) ----

  private count(table: number, level: number): number {
    let n = 1;
    if (level === 3) return n;
    const e = this.entries;
    for (let i = 0; i < TABLE_ENTRIES; i++) {
      const v = e[(table << 9) | i];
      if ((v & 3) === PTE_VALID) n += this.count(v >>> PTE_ADDR_SHIFT, level + 1);
    }
    return n;
  }

  private each(table: number, level: number, base: number, cb: MappingCallback): void {
    const e = this.entries;
    const span = SPAN[level];
    for (let i = 0; i < TABLE_ENTRIES; i++) {
      const v = e[(table << 9) | i];
      if ((v & PTE_VALID) === 0) continue;
      const slot = base + i * span;
      if ((v & PTE_LEAF) !== 0) {
        const prot = ((v & PTE_READ) !== 0 ? IOMMU_READ : 0) | ((v & PTE_WRITE) !== 0 ? IOMMU_WRITE : 0);
        cb(slot as Iova, ((v >>> PTE_ADDR_SHIFT) * SZ_4K) as Pa, span, prot);
      } else {
        this.each(v >>> PTE_ADDR_SHIFT, level + 1, slot, cb);
      }
    }
  }

  private retireTree(table: number, level: number): void {
    if (level < 3) {
      const e = this.entries;
      for (let i = 0; i < TABLE_ENTRIES; i++) {
        const v = e[(table << 9) | i];
        if ((v & 3) === PTE_VALID) this.retireTree(v >>> PTE_ADDR_SHIFT, level + 1);
      }
    }
    this.pool.retire(table);
  }

  private freeTree(table: number, level: number): void {
    if (level < 3) {
      const e = this.entries;
      for (let i = 0; i < TABLE_ENTRIES; i++) {
        const v = e[(table << 9) | i];
        if ((v & 3) === PTE_VALID) this.freeTree(v >>> PTE_ADDR_SHIFT, level + 1);
      }
    }
    this.pool.free(table);
  }

  // ---- argument checks and messages ----

  private checkLive(op: string): void {
    if (!this.live) throw new DmaError('ENOENT', `${this.name}: ${op} after destroy()`);
  }

  private checkRange(op: string, iova: number, size: number): void {
    const mask = this.minPageSize - 1;
    // Fast path first; the messages are built only on failure.
    if (
      Number.isInteger(iova) &&
      iova >= 0 &&
      Number.isInteger(size) &&
      size > 0 &&
      ((iova >>> 0) & mask) === 0 &&
      ((size >>> 0) & mask) === 0 &&
      iova + size <= IOVA_LIMIT
    ) {
      return;
    }
    const what = `${this.name}: ${op} iova ${show(iova)} size ${show(size)}`;
    if (!Number.isInteger(iova) || iova < 0) {
      throw new DmaError('EINVAL', `${what}: iova must be a non-negative integer`);
    }
    if (!Number.isInteger(size) || size <= 0) {
      throw new DmaError('EINVAL', `${what}: size must be a positive integer`);
    }
    if (((iova >>> 0) & mask) !== 0) {
      throw new DmaError('EINVAL', `${what}: iova is not aligned to the smallest page size ${hex(this.minPageSize)}`);
    }
    if (((size >>> 0) & mask) !== 0) {
      throw new DmaError('EINVAL', `${what}: size is not a multiple of the smallest page size ${hex(this.minPageSize)}`);
    }
    throw new DmaError('ERANGE', `${what}: ends at ${hex(iova + size)}, beyond the ${IOVA_BITS}-bit IOVA space`);
  }

  private checkMapArgs(iova: number, pa: number, size: number, prot: number): void {
    this.checkRange('map', iova, size);
    if (
      Number.isInteger(pa) &&
      pa >= 0 &&
      ((pa >>> 0) & (this.minPageSize - 1)) === 0 &&
      pa + size <= PA_LIMIT &&
      (prot === IOMMU_READ || prot === IOMMU_WRITE || prot === (IOMMU_READ | IOMMU_WRITE))
    ) {
      return;
    }
    const what = `${this.name}: map iova ${hex(iova)} → PA ${show(pa)} size ${hex(size)}`;
    if (!Number.isInteger(pa) || pa < 0) {
      throw new DmaError('EINVAL', `${what}: pa must be a non-negative integer`);
    }
    if (((pa >>> 0) & (this.minPageSize - 1)) !== 0) {
      throw new DmaError('EINVAL', `${what}: pa is not aligned to the smallest page size ${hex(this.minPageSize)}`);
    }
    if (pa + size > PA_LIMIT) {
      throw new DmaError('ERANGE', `${what}: ends at PA ${hex(pa + size)}, beyond the ${PA_BITS}-bit PA space of the PTE format`);
    }
    throw new DmaError('EINVAL', `${what}: prot ${String(prot)} must be IOMMU_READ (1), IOMMU_WRITE (2) or both`);
  }

  private overlapError(cur: number, pgsize: number, phys: number, v: number, level: number): DmaError {
    const what = `${this.name}: map ${leafKind(pgsize === SZ_4K ? 3 : pgsize === SZ_2M ? 2 : 1)} at ${hex(cur)} → PA ${hex(phys)}`;
    if ((v & PTE_VALID) === 0) {
      return new DmaError('EEXIST', `${what}: the range is being replaced by a concurrent block mapping`);
    }
    const span = SPAN[level];
    const slot = cur - (cur % span);
    return new DmaError(
      'EEXIST',
      `${what}: already mapped by the ${leafKind(level)} at ${hex(slot)} → PA ${hex((v >>> PTE_ADDR_SHIFT) * SZ_4K)}; ` +
        `unmap it first (a mapping is never overwritten)`,
    );
  }
}
