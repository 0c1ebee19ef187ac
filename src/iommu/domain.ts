/**
 * An IOMMU domain: one I/O address space (its page table), the devices attached to it, its
 * IOVA allocator and flush queue, and its IOTLB invalidation. Any thread can attach to a domain
 * from its structured-cloneable handle and map or unmap in it.
 *
 * unmap() is iommu_unmap(): the PTEs are cleared, the invalidation is published and the call
 * returns only when no attached device can still use the old translation (device-epoch.ts).
 * unmapLazy() is the flush-queue path of dma-iommu (iommu.strict=0): PTEs cleared, IOTLBs told
 * to treat the entries as stale, no waiting; flushIotlbAll() ends the window.
 *
 * Page-table pages come back: a map that runs out of them ('ENOMEM') first retires, in an
 * iovaManaged domain (the DMA API's: every mapped IOVA comes from `iova` and stays held until its
 * unmap is done), every empty L3/L2 table of a span in which the allocator holds nothing
 * (detachEmptyTables: caches flushed, then per span IovaAllocator.whileUnallocated keeps the span
 * unallocatable while PageTable freezes, unlinks and retires the table), then gives every retired
 * table back after a grace period (reclaimRetiredTables: a flush-all of every DMA domain with
 * devices, waited for as a strict unmap, and then the CPU grace period: TablePool.freeRetired waits
 * until no other thread is still inside a map or unmap that began before), then retries once.
 * ORDERING: the unlink (seq_cst CAS) happens before the flush is published, and a device that
 * observed the flush re-walks from the root, so after the wait no walker holds a freed table; a
 * mapper of another range (or domain) may hold one it read before the unlink — the upper tables
 * are shared — which is what the CPU grace period waits out. Domains not iovaManaged (VFIO's) only reclaim
 * what is already retired: nothing proves no one maps into an empty table there.
 */
import { DmaError } from '../errors.js';
import { type Iova, type Pa, PAGE_SIZE } from '../addresses.js';
import { TablePool } from './table-pool.js';
import { PageTable, type PageTableHandle } from './page-table.js';
import { DomainTable, DOMAIN_DMA, type DomainType } from './domain-table.js';
import { Invalidation } from './invalidation.js';
import { DeviceEpochs } from './device-epoch.js';
import { IovaAllocator, type IovaAllocatorHandle } from './iova.js';
import { FlushQueue, type FlushQueueHandle } from './flush-queue.js';
import type { IommuHandle } from './iommu-handle.js';

export interface DomainHandle {
  readonly iommu: IommuHandle;
  readonly id: number;
  readonly type: DomainType;
  readonly name: string;
  readonly pt: PageTableHandle | null;
  readonly iova: IovaAllocatorHandle;
  readonly fq: FlushQueueHandle;
  /** Every IOVA mapped in this domain comes from `iova` (see DomainOptions.iovaManaged). */
  readonly iovaManaged?: boolean;
}

export interface DomainOptions {
  /** Page sizes the page table may use, as Linux's pgsize_bitmap (default 4 KiB | 2 MiB | 1 GiB). */
  pgsizeBitmap?: number;
  /** Capacity of the lazy-mode flush queue. */
  flushQueueSize?: number;
  /** Pages of IOVA space its allocator hands out, [0, aperturePages) (geometry.aperture_end + 1). */
  aperturePages?: number;
  /**
   * Every map of this domain takes its IOVA from the domain's allocator and holds it until the
   * unmap is done (the DMA API's default domains: Linux's IOMMU_DOMAIN_DMA with its iova cookie).
   * Only then may a map that runs out of page-table pages take back the empty tables of spans
   * the allocator holds nothing in. Default false (VFIO's and other callers' domains, which map
   * IOVAs of their own choosing, like IOMMU_DOMAIN_UNMANAGED).
   */
  iovaManaged?: boolean;
}

/** Per-thread views of an IOMMU's shared structures, built once per handle. */
interface Shared {
  pool: TablePool;
  domains: DomainTable;
  invalidation: Invalidation;
  epochs: DeviceEpochs;
}
const sharedCache = new WeakMap<IommuHandle, Shared>();
function shared(h: IommuHandle): Shared {
  let s = sharedCache.get(h);
  if (!s) {
    s = {
      pool: TablePool.attach(h.pool),
      domains: DomainTable.attach(h.domains),
      invalidation: Invalidation.attach(h.invalidation),
      epochs: DeviceEpochs.attach(h.epochs),
    };
    sharedCache.set(h, s);
  }
  return s;
}

/**
 * Gives retired page-table pages back to the pool once no walker can hold one: the retired list
 * is taken first, then every DMA domain with attached devices publishes a flush-all and waits
 * until each of its devices has observed it or is outside a transfer (the strict-unmap wait, as
 * synchronize_rcu), then the taken tables are freed once no other thread is inside a map section
 * that began before (TablePool.freeRetired). A device walks only its own domain's tables and
 * re-reads its context after a flush, so after the wait none of them is reachable.
 * Returns how many tables went back (0 when a thread stayed inside a map: they stay retired).
 */
function reclaimRetiredTables(s: Shared): number {
  const taken = s.pool.takeRetired();
  if (taken.length === 0) return 0;
  for (let n = 0; n < s.domains.slots; n++) {
    if (s.domains.typeCode(n) !== DOMAIN_DMA) continue;
    if (s.domains.attachedMask(n, 0) === 0 && s.domains.attachedMask(n, 1) === 0) continue;
    // ORDERING: the flush is published after the tables were unlinked (retire happened-before the
    // take above); a device that observes it re-walks from the root and cannot reach them.
    const gen = s.invalidation.publish(n, 0, 0, false);
    for (let k = 0; k < 2; k++) {
      for (let m = s.domains.attachedMask(n, k); m !== 0; m &= m - 1) s.epochs.waitFor(k * 32 + (31 - Math.clz32(m & -m)), gen);
    }
  }
  return s.pool.freeRetired(taken);
}

export class Domain {
  readonly handle: DomainHandle;
  readonly id: number;
  readonly type: DomainType;
  readonly name: string;
  readonly pt: PageTable | null;
  readonly iova: IovaAllocator;
  readonly fq: FlushQueue;
  readonly iovaManaged: boolean;
  private readonly s: Shared;

  /** Creates a domain in the IOMMU described by `iommu` (normally through Iommu.createDomain). */
  static create(iommu: IommuHandle, type: DomainType, options: DomainOptions = {}): Domain {
    const s = shared(iommu);
    const pt = type === 'dma' ? PageTable.create(s.pool, { name: 'domain', pgsizeBitmap: options.pgsizeBitmap }) : null;
    let id: number;
    try {
      id = s.domains.claim(type, pt ? pt.handle.root : 0);
    } catch (e) {
      pt?.destroy();
      throw e;
    }
    // The slot's invalidation queue and generation are not reset: they keep counting across
    // incarnations, so no device can mistake an old incarnation's position for the new one's.
    const name = `domain ${id}`;
    return new Domain({
      iommu,
      id,
      type,
      name,
      pt: pt ? { ...pt.handle, name } : null,
      iova: IovaAllocator.create(options.aperturePages).handle,
      fq: FlushQueue.create(options.flushQueueSize).handle,
      iovaManaged: options.iovaManaged === true,
    });
  }

  static attach(handle: DomainHandle): Domain {
    return new Domain(handle);
  }

  private constructor(handle: DomainHandle) {
    this.handle = handle;
    this.id = handle.id;
    this.type = handle.type;
    this.name = handle.name;
    this.s = shared(handle.iommu);
    this.pt = handle.pt ? PageTable.attach(this.s.pool, handle.pt) : null;
    this.iova = IovaAllocator.attach(handle.iova);
    this.fq = FlushQueue.attach(handle.fq);
    this.iovaManaged = handle.iovaManaged === true;
  }

  private table(op: string): PageTable {
    if (!this.pt) {
      throw new DmaError('EINVAL', `${this.name}: ${op} needs a translating (dma) domain; this one is ${this.type}`);
    }
    return this.pt;
  }

  /**
   * iommu_map: maps [iova, iova + size) to [pa, pa + size) with IOMMU_READ/IOMMU_WRITE prot. All
   * or nothing. A failed map retires the tables it had installed (a walker may be inside them);
   * they and any other retired tables go back to the pool after a grace period, here, so a map
   * that fails for want of page-table pages ('ENOMEM') costs the pool nothing. When the pool was
   * empty only because of retired tables, the map is retried once after reclaiming them.
   */
  map(iova: Iova, pa: Pa, size: number, prot: number): void {
    const pt = this.table('map');
    // Two plain try blocks, not a closure: this is on every mapSingle.
    try {
      pt.map(iova, pa, size, prot);
      return;
    } catch (e) {
      if (!this.afterFailedMap(e, iova, size)) throw e;
    }
    try {
      pt.map(iova, pa, size, prot);
    } catch (e) {
      this.afterFailedMap(e, iova, size);
      throw e;
    }
  }

  /**
   * Several disjoint runs ([iova, pa, size] triples, all inside [iova, iova + span)) mapped all or
   * nothing, as map() maps one (the sg path of the DMA API).
   */
  mapRuns(runs: readonly number[], iova: Iova, span: number, prot: number): void {
    const pt = this.table('map');
    try {
      pt.mapRuns(runs, prot);
      return;
    } catch (e) {
      if (!this.afterFailedMap(e, iova, span)) throw e;
    }
    try {
      pt.mapRuns(runs, prot);
    } catch (e) {
      this.afterFailedMap(e, iova, span);
      throw e;
    }
  }

  /**
   * After a failed map (whose leaves are cleared again): a device that walked into the range
   * meanwhile drops what it cached (strict invalidation of the range), and retired tables go back
   * to the pool. Returns whether the map is worth one retry: it ran out of tables ('ENOMEM') and
   * more went back than its own rollback had retired.
   */
  private afterFailedMap(e: unknown, iova: Iova, size: number): boolean {
    // Only these come after leaves may have gone in (EINVAL, ENOENT: refused before any did).
    const enomem = e instanceof DmaError && e.code === 'ENOMEM';
    if (enomem || (e instanceof DmaError && e.code === 'EEXIST')) {
      this.invalidate(Math.floor(iova / PAGE_SIZE), Math.ceil(size / PAGE_SIZE));
    }
    const ownRetired = enomem ? (this.pt?.retiredByLastRollback ?? 0) : 0;
    if (enomem) this.detachEmptyTables();
    const reclaimed = this.s.pool.retiredCount() > 0 ? reclaimRetiredTables(this.s) : 0;
    // Worth a retry only when tables came back beyond the ones this map itself had installed.
    return enomem && reclaimed > ownRetired;
  }

  /**
   * Unlinks and retires the page-table pages of this domain that map nothing in spans whose IOVAs
   * nobody holds (PageTable.detachEmptyTables): each span is taken in the IOVA allocator for the
   * moment of the unlink, after the per-thread caches were flushed so cached-but-free IOVAs count
   * as free. Only for an iovaManaged domain (elsewhere 0: nothing proves no one maps there). The
   * tables reach the pool at the next reclaim of retired tables (as a failed map does: map() calls
   * this when it runs out of tables). Returns how many were retired.
   */
  detachEmptyTables(): number {
    if (!this.iovaManaged || !this.pt) return 0;
    const iova = this.iova;
    iova.flushCaches();
    return this.pt.detachEmptyTables((at, size, detach) =>
      iova.whileUnallocated(Math.floor(at / PAGE_SIZE), size / PAGE_SIZE, detach),
    );
  }

  /** Gives retired page-table pages back to the pool after a grace period; returns how many. */
  reclaimRetiredTables(): number {
    return this.s.pool.retiredCount() > 0 ? reclaimRetiredTables(this.s) : 0;
  }

  /** iommu_unmap, strict: returns the bytes cleared once no attached device can use them. */
  unmap(iova: Iova, size: number): number {
    const bytes = this.table('unmap').unmap(iova, size);
    if (bytes > 0) this.invalidate(Math.floor(iova / PAGE_SIZE), Math.ceil(size / PAGE_SIZE));
    return bytes;
  }

  /** Clears the PTEs and lets IOTLBs keep the entries (marked stale) until flushIotlbAll(). */
  unmapLazy(iova: Iova, size: number): number {
    const bytes = this.table('unmap').unmap(iova, size);
    if (bytes > 0) this.s.invalidation.publish(this.id, Math.floor(iova / PAGE_SIZE), Math.ceil(size / PAGE_SIZE), true);
    return bytes;
  }

  /** iommu_flush_iotlb_all: every IOTLB entry of this domain is dropped, and waited for. */
  flushIotlbAll(): void {
    this.invalidate(0, 0);
  }

  iovaToPhys(iova: Iova): Pa | null {
    if (this.type === 'identity') return iova as number as Pa;
    if (!this.pt) return null;
    return this.pt.iovaToPhys(iova);
  }

  /** Whether IOVA page `page` is mapped (a cheaper iovaToPhys(page * 4 KiB) !== null). */
  pageMapped(page: number): boolean {
    if (this.type === 'identity') return true;
    return this.pt !== null && this.pt.pageMapped(page);
  }

  /** Device slots attached to this domain. */
  attachedSlots(): number[] {
    return this.s.domains.attached(this.id);
  }

  invalidationCounts(): { strict: number; lazy: number } {
    return this.s.invalidation.counts(this.id);
  }

  /** Publishes a strict invalidation of [page, page + npages) (0 = all) and waits for devices. */
  private invalidate(page: number, npages: number): void {
    const gen = this.s.invalidation.publish(this.id, page, npages, false);
    // The attached set as two mask words (no array per unmap: this is on every strict unmap).
    for (let k = 0; k < 2; k++) {
      for (let m = this.s.domains.attachedMask(this.id, k); m !== 0; m &= m - 1) {
        this.s.epochs.waitFor(k * 32 + (31 - Math.clz32(m & -m)), gen);
      }
    }
  }

  /** Frees the page table and the slot; the domain must have no device attached. */
  destroy(): void {
    const slots = this.attachedSlots();
    if (slots.length > 0) {
      throw new DmaError('EBUSY', `${this.name}: cannot be freed while ${slots.length} device(s) are attached`);
    }
    this.iova.release(); // this thread's IOVA cache slot (other threads release their own)
    this.fq.release(); // and its flush-queue ring
    this.pt?.destroy();
    this.s.domains.release(this.id);
  }

  toString(): string {
    return `${this.name} (${this.type})`;
  }
}

