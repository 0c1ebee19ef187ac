/**
 * IOVA allocator of one domain, shared by every thread that maps into the domain: Linux's
 * scalable design (drivers/iommu/iova.c). alloc() is alloc_iova_fast and free() is free_iova_fast:
 * per-CPU range caches (rcache) of freed ranges, each a `loaded` and a `prev` magazine per size
 * class, in front of a shared depot of full magazines, in front of the shared space (alloc_iova /
 * free_iova). All of it lives in one SharedArrayBuffer; any thread attaches from the handle.
 *
 * Behaviour, as Linux:
 *  - Size classes are orders 0..5 (1..32 pages = 4 KiB..128 KiB, IOVA_RANGE_CACHE_MAX_SIZE 6).
 *    A request of fewer than 32 pages is rounded up to a power of two (alloc_iova_fast), so the
 *    range reserved is that size and free() accepts the requested or the rounded size. Larger
 *    ranges are never cached: they come from and go back to the shared space, exact size.
 *  - Shared space: a bitmap over the aperture (32-bit IOVA space by default), searched top-down
 *    below the caller's limit (the DMA mask), ranges aligned to their size rounded up to a power
 *    of two (size_aligned). Page 0 is reserved, so DMA address 0 is never handed out.
 *  - reserve() is reserve_iova: pages the domain's owner takes out of the space for good (the MSI
 *    window, PCI windows: iova_reserve_iommu_regions). Reserved pages are never handed out, never
 *    freed, and not counted in pagesInUse() or cachedPages(); reserving them again is a no-op.
 *  - Cached ranges stay allocated in the shared space (as cached IOVAs stay in Linux's rbtree).
 *  - alloc: loaded magazine (swapped with prev when empty) → prev → when both are empty, a full
 *    magazine from the depot becomes `loaded` → the shared space. iova_magazine_pop honours the
 *    limit: it takes the most recently freed range that ends at or below it.
 *  - free: into `loaded`; when full, swap with prev; when both are full, `loaded` goes to the
 *    depot (bounded, MAX_GLOBAL_MAGS) and an empty magazine takes its place, or, the depot being
 *    full, the ranges of `loaded` go back to the shared space.
 *  - When the shared space has no room, every cache (all slots and the depot) is flushed
 *    (free_cpu_cached_iovas + free_global_cached_iovas) and the search is retried once.
 *
 * "CPUs" are slots in the buffer. An IovaAllocator instance (one thread) claims a free slot on
 * first use with Atomics.compareExchange and keeps it until release(); only that instance touches
 * its slot's magazines and counter. An instance that finds no free slot works on the depot and
 * the shared space under the mutex (and tries again to claim once some slot was released).
 * A thread that stops using the domain must call release(); an instance garbage-collected
 * without it is released by a FinalizationRegistry on its own thread (a terminated worker's slot
 * stays claimed, but flushCaches() still recovers its cached ranges).
 *
 * Ownership of a range lives in one byte per page, `state[page]`, nonzero only at the first page of
 * an allocated range: HELD|order (a caller holds a cached-size range), LARGE (a caller holds a
 * range of more than 32 pages), CACHED|order (the range sits in some magazine), RESERVED (page 0
 * and every page reserve() took: each reserved page carries it, not only the first).
 * Every hand-over is a compareExchange on that byte: free HELD→CACHED (or HELD→0 into the shared
 * space), alloc from a magazine CACHED→HELD, a flush CACHED→0. So a double free, a free with the
 * wrong size or of an address never handed out fails the exchange ('EINVAL', nothing changed), and
 * a flusher may take cached ranges out of another thread's magazines while that thread runs: it
 * claims them through the bytes, never writes the other slot's magazines, and the owner drops
 * such stale entries when it meets them (its compareExchange fails). Magazines are lists of
 * candidates; the bytes are the truth.
 *
 * Layout (Int32 words, then bytes, of the allocator's SharedArrayBuffer):
 *   [0]  LOCK        futex mutex over the shared space, the depot and the magazine pool
 *   [1]  SPACE_COUNT pages set in the shared bitmap (page 0, reserved pages and cached ranges included)
 *   [2]  HINT        the shared-space search starts below this page (top-down; like cached32_node)
 *   [3]  APERTURE    pages of IOVA space
 *   [4]  HELD_PAGES  pages held by callers through no slot (and folded in from released slots)
 *   [5]  SLOT_GEN    bumped whenever a slot is released
 *   [6]  N_SLOTS  [7] MAG_SIZE  [8] DEPOT_MAX  [9] N_MAGS  (configuration, written at creation)
 *   [10] POOL_TOP    empty magazines on the pool stack
 *   [11] RESERVED_PAGES pages reserve() took (page 0 not included)
 *   [16 ...]         slots, 16 words each: [0] OWNER (0 = free, else the owner's threadId + 1), [1] NET pages handed out minus
 *                    pages freed through this slot, [2..8) LOADED magazine per order,
 *                    [8..14) PREV magazine per order (a magazine is named by its word index),
 *                    [14] SLOT_HINT: where this slot's shared-space search for cached sizes starts
 *                    (below; slot i of n starts at aperture × (1 − i/n))
 *   then             depot, per order: [0] count, [1..DEPOT_MAX] magazines (Linux's depot[])
 *   then             pool: N_MAGS words, a stack of empty magazines (POOL_TOP of them)
 *   then             magazines, N_MAGS × (1 + MAG_SIZE) words: [0] size, [1..size] first pages
 *   then             bitmap, one bit per IOVA page of [0, aperture); set = allocated
 *   then             state bytes, one per IOVA page (see above)
 * N_MAGS = N_SLOTS × 6 × 2 + 6 × DEPOT_MAX: each slot always owns exactly two magazines per order,
 * so the pool holds an empty magazine whenever a depot bin has room. Size with the defaults (4 GiB
 * aperture, 16 slots, 127-entry magazines, 32 per depot bin): 128 KiB of bitmap, 192 KiB of
 * magazines, 1 MiB of state bytes (untouched pages of a SharedArrayBuffer cost no memory).
 *
 * Who writes what:
 *   OWNER: claimed by compareExchange 0→threadId+1, freed by the owner's release() with
 *     Atomics.store, or by reclaimThread() once that thread is known dead (the mutex held).
 *   NET, LOADED, PREV and the magazines they name: the slot's owner only (plain stores). Others
 *     only read them, under the mutex, when flushing: reads of Int32 elements never tear, and a
 *     stale view only makes a flusher miss or skip entries, since every claim is a compareExchange.
 *   Depot, pool, bitmap, HINT, SLOT_HINT, SPACE_COUNT, magazines while in the depot or the pool: with the
 *     mutex held (PageBitmap keeps SPACE_COUNT with Atomics.add for lock-free readers).
 *   RESERVED_PAGES: reserve(), mutex held, with Atomics.add (read lock-free by cachedPages()).
 *   HELD_PAGES, SLOT_GEN: Atomics.add from any thread.
 *   State bytes: always with Atomics (compareExchange or store). A byte goes between zero and
 *     nonzero only with the mutex held; outside it only HELD|k ⇄ CACHED|k.
 *
 * Invariants (when no call is in progress): a bitmap bit is set iff its page is page 0, is
 * reserved, or lies in a held or cached range; the state byte of a range's first page says which,
 * interior pages of held and cached ranges are 0, every reserved page is RESERVED; every CACHED
 * range has an entry in the live part of some slot magazine or depot magazine; live ranges never
 * overlap. pagesInUse() = HELD_PAGES + Σ NET (pages held by callers, rounded sizes, page 0 and
 * reserved pages excluded); cachedPages() = SPACE_COUNT − 1 − RESERVED_PAGES − pagesInUse().
 * While other threads run, both counters are momentary sums, exact only when the allocator is
 * quiescent.
 *
 * Cost: a cached-size alloc from the thread's own magazine is plain loads and stores plus one
 * compareExchange; free into it is one compareExchange plus plain stores. No JS object is
 * allocated on either path.
 *
 * Where we differ from Linux: one 32-bit aperture (no fallback above 4 GiB); a cached-size range
 * that a slot takes from the shared space comes first from below that slot's own search start
 * (SLOT_HINT: slot i of n starts at aperture × (1 − i/n), then moves down to its last range),
 * and only when nothing fits there, or that start is not below the limit, from the highest free
 * range below the limit — so two threads' IOVAs, their state bytes and their PTEs do not share
 * cache lines (Linux's rbtree has one cached node for all CPUs); magazines carry
 * first pages and the size class carries the size; the magazine store is fixed (a pool instead of
 * kmalloc); "CPUs" are claimed slots; the depot is bounded (the older MAX_GLOBAL_MAGS, no timed
 * trimming); a flush may leave stale entries in other threads' magazines (dropped on use);
 * reserve() ignores pages beyond the aperture and refuses ('EBUSY') to swallow a range a caller
 * holds, where reserve_iova would merge it into the reservation.
 */
import { threadId } from 'node:worker_threads';
import { DmaError, hex } from '../errors.js';
import { FutexMutex } from '../shared/futex-mutex.js';
import { PageBitmap } from '../shared/page-bitmap.js';
import { PAGE_SIZE } from '../addresses.js';

export interface IovaAllocatorHandle {
  readonly sab: SharedArrayBuffer;
}

export interface IovaAllocatorOptions {
  /** Per-thread cache slots ("CPUs"). Default 16. */
  cpuSlots?: number;
  /** Ranges per magazine (Linux's IOVA_MAG_SIZE). Default 127. */
  magazineSize?: number;
  /** Full magazines the depot keeps per size class (Linux's MAX_GLOBAL_MAGS). Default 32. */
  depotMagazines?: number;
}

export const DEFAULT_APERTURE_PAGES = 2 ** 20; // 4 GiB of IOVA space
/** Size classes cached: orders 0..5 (IOVA_RANGE_CACHE_MAX_SIZE). */
export const IOVA_RCACHE_ORDERS = 6;
/** Largest range, in pages, kept in the range caches (128 KiB). */
export const IOVA_RCACHE_MAX_PAGES = 1 << (IOVA_RCACHE_ORDERS - 1);

/** Pages an allocation of `npages` reserves: below 32 pages rounded up to a power of two (alloc_iova_fast), else exact. */
export function iovaAllocationPages(npages: number): number {
  return npages <= IOVA_RCACHE_MAX_PAGES ? 1 << (32 - Math.clz32(npages - 1)) : npages;
}

// Header words.
const LOCK = 0;
const SPACE_COUNT = 1;
const HINT = 2;
const APERTURE = 3;
const HELD_PAGES = 4;
const SLOT_GEN = 5;
const N_SLOTS = 6;
const MAG_SIZE = 7;
const DEPOT_MAX = 8;
const N_MAGS = 9;
const POOL_TOP = 10;
const RESERVED_PAGES = 11;
const HEADER = 16;
// Slot words.
const SLOT_STRIDE = 16;
const OWNER = 0;
const NET = 1;
const LOADED = 2;
const PREV = 2 + IOVA_RCACHE_ORDERS;
const SLOT_HINT = PREV + IOVA_RCACHE_ORDERS;
// State bytes.
const RESERVED = 1;
const LARGE = 2;
const HELD = 0x10; // | order
const CACHED = 0x20; // | order
const KIND = 0xf0;

const MAX_APERTURE_PAGES = 2 ** 30;

interface Layout {
  depot: number;
  depotStride: number;
  pool: number;
  mags: number;
  magStride: number;
  bitmap: number;
  words: number;
}

function layoutOf(slots: number, magSize: number, depotMax: number, aperture: number): Layout {
  const nmags = slots * IOVA_RCACHE_ORDERS * 2 + IOVA_RCACHE_ORDERS * depotMax;
  const depot = HEADER + slots * SLOT_STRIDE;
  const depotStride = 1 + depotMax;
  const pool = depot + IOVA_RCACHE_ORDERS * depotStride;
  const mags = pool + nmags;
  const magStride = 1 + magSize;
  const bitmap = mags + nmags * magStride;
  return { depot, depotStride, pool, mags, magStride, bitmap, words: bitmap + Math.ceil(aperture / 32) };
}

function intIn(v: unknown, lo: number, hi: number): v is number {
  return Number.isSafeInteger(v) && (v as number) >= lo && (v as number) <= hi;
}

/** Releases the slot of an instance that was garbage-collected without release() (same thread). */
const orphanedSlots = new FinalizationRegistry<IovaAllocator>((twin) => twin.release());

export class IovaAllocator {
  readonly handle: IovaAllocatorHandle;
  readonly aperturePages: number;
  private readonly w: Int32Array;
  private readonly state: Uint8Array;
  private readonly mutex: FutexMutex;
  private readonly bits: PageBitmap;
  private readonly nslots: number;
  private readonly magSize: number;
  private readonly depotMax: number;
  private readonly L: Layout;
  /** Word index of this instance's slot, or -1. */
  private sb = -1;
  /** SLOT_GEN when a claim last found every slot taken (-1: try at next use). */
  private noSlotGen = -1;

  static create(aperturePages = DEFAULT_APERTURE_PAGES, opts: IovaAllocatorOptions = {}): IovaAllocator {
    const slots = opts.cpuSlots ?? 16;
    const magSize = opts.magazineSize ?? 127;
    const depotMax = opts.depotMagazines ?? 32;
    if (!intIn(aperturePages, 2, MAX_APERTURE_PAGES)) {
      throw new DmaError('EINVAL', `iova: an aperture of ${String(aperturePages)} pages is not between 2 and ${MAX_APERTURE_PAGES}`);
    }
    if (!intIn(slots, 1, 256) || !intIn(magSize, 1, 4096) || !intIn(depotMax, 0, 4096)) {
      throw new DmaError(
        'EINVAL',
        `iova: cache options ${JSON.stringify(opts)}: cpuSlots must be 1..256, magazineSize 1..4096, depotMagazines 0..4096`,
      );
    }
    const L = layoutOf(slots, magSize, depotMax, aperturePages);
    const sab = new SharedArrayBuffer(L.words * 4 + aperturePages);
    const w = new Int32Array(sab, 0, L.words);
    w[APERTURE] = aperturePages;
    w[HINT] = aperturePages;
    w[N_SLOTS] = slots;
    w[MAG_SIZE] = magSize;
    w[DEPOT_MAX] = depotMax;
    const nmags = slots * IOVA_RCACHE_ORDERS * 2 + IOVA_RCACHE_ORDERS * depotMax;
    w[N_MAGS] = nmags;
    let next = 0;
    for (let i = 0; i < slots; i++) {
      w[HEADER + i * SLOT_STRIDE + SLOT_HINT] = aperturePages - Math.floor((i * aperturePages) / slots);
      for (let k = 0; k < IOVA_RCACHE_ORDERS; k++) {
        w[HEADER + i * SLOT_STRIDE + LOADED + k] = L.mags + next++ * L.magStride;
        w[HEADER + i * SLOT_STRIDE + PREV + k] = L.mags + next++ * L.magStride;
      }
    }
    let top = 0;
    while (next < nmags) w[L.pool + top++] = L.mags + next++ * L.magStride;
    w[POOL_TOP] = top;
    w[L.bitmap] = 1; // page 0 reserved
    w[SPACE_COUNT] = 1;
    new Uint8Array(sab, L.words * 4, aperturePages)[0] = RESERVED;
    // Published to other threads by the postMessage that carries the handle.
    return new IovaAllocator({ sab });
  }

  static attach(handle: IovaAllocatorHandle): IovaAllocator {
    return new IovaAllocator(handle);
  }

  private constructor(handle: IovaAllocatorHandle) {
    this.handle = handle;
    const head = new Int32Array(handle.sab, 0, HEADER);
    this.aperturePages = head[APERTURE];
    this.nslots = head[N_SLOTS];
    this.magSize = head[MAG_SIZE];
    this.depotMax = head[DEPOT_MAX];
    this.L = layoutOf(this.nslots, this.magSize, this.depotMax, this.aperturePages);
    this.w = new Int32Array(handle.sab, 0, this.L.words);
    this.state = new Uint8Array(handle.sab, this.L.words * 4, this.aperturePages);
    this.mutex = new FutexMutex(this.w, LOCK);
    this.bits = new PageBitmap(this.w, this.L.bitmap, SPACE_COUNT);
  }

  /** Pages held by callers: handed out (at their rounded size) and not freed; page 0 and cached ranges excluded. */
  pagesInUse(): number {
    const w = this.w;
    // ORDERING: atomic loads only so that each count is read whole; the sum is a snapshot, exact
    // when no other thread is in the allocator.
    let n = Atomics.load(w, HELD_PAGES);
    for (let i = 0; i < this.nslots; i++) n += Atomics.load(w, HEADER + i * SLOT_STRIDE + NET);
    return n;
  }

  /** Pages of freed ranges kept in magazines (slots and depot): allocated in the shared space, free to reuse. */
  cachedPages(): number {
    return Math.max(0, this.bits.count() - 1 - Atomics.load(this.w, RESERVED_PAGES) - this.pagesInUse());
  }

  /** Full magazines in the depot, per order 0..5 (diagnostics). */
  depotMagazines(): number[] {
    return this.mutex.with(() => {
      const out: number[] = [];
      for (let k = 0; k < IOVA_RCACHE_ORDERS; k++) out.push(this.w[this.L.depot + k * this.L.depotStride]);
      return out;
    });
  }

  /**
   * alloc_iova_fast: `npages` IOVA pages (fewer than 32 are rounded up to a power of two) ending
   * at or below page `limitPage` (exclusive; from the DMA mask). Returns the first page.
   * 'ENOSPC' when no aligned range fits below the limit even after flushing every cache (the
   * flush is the only effect of a failed call: nothing is handed out; 'EINVAL' changes nothing).
   */
  alloc(npages: number, limitPage: number, who = 'domain'): number {
    if (npages >= 1 && npages <= IOVA_RCACHE_MAX_PAGES && (npages | 0) === npages && limitPage >= 1) {
      const k = 32 - Math.clz32(npages - 1);
      const n = 1 << k;
      const limit = limitPage < this.aperturePages ? limitPage : this.aperturePages;
      const sb = this.sb >= 0 ? this.sb : this.claimSlot();
      if (sb >= 0) {
        // ORDERING: LOADED, PREV and the magazines they name are this thread's alone (see layout).
        const w = this.w;
        let m = w[sb + LOADED + k];
        if (w[m] === 0) {
          const pm = w[sb + PREV + k];
          if (w[pm] !== 0) {
            w[sb + LOADED + k] = pm;
            w[sb + PREV + k] = m;
            m = pm;
          }
        }
        let p = this.magazinePop(m, k, n, limit);
        if (p < 0) {
          const pm = w[sb + PREV + k];
          if (w[pm] !== 0) p = this.magazinePop(pm, k, n, limit);
        }
        if (p >= 0) {
          w[sb + NET] += n;
          return p;
        }
      }
      return this.allocSlow(npages, n, k, limit, sb, who);
    }
    return this.allocLarge(npages, limitPage, who);
  }

  /**
   * free_iova_fast: gives back a range returned by alloc (the requested or the rounded size).
   * Anything else — a double free, a wrong size, an address never handed out — is 'EINVAL' and
   * changes nothing.
   */
  free(page: number, npages: number, who = 'domain'): void {
    if (npages >= 1 && npages <= IOVA_RCACHE_MAX_PAGES && (npages | 0) === npages && (page | 0) === page && page >= 1) {
      const k = 32 - Math.clz32(npages - 1);
      const n = 1 << k;
      const sb = this.sb >= 0 ? this.sb : this.claimSlot();
      if (sb >= 0 && page + n <= this.aperturePages) {
        // ORDERING: the seq-cst exchange is the hand-over from the caller to the cache: exactly one
        // free of the range succeeds, and no other thread can take it before it is CACHED.
        const old = Atomics.compareExchange(this.state, page, HELD | k, CACHED | k);
        if (old !== (HELD | k)) throw this.badFree(page, npages, old, who);
        const w = this.w;
        let m = w[sb + LOADED + k];
        let size = w[m];
        if (size === this.magSize) {
          const pm = w[sb + PREV + k];
          if (w[pm] < this.magSize) {
            w[sb + LOADED + k] = pm;
            w[sb + PREV + k] = m;
            m = pm;
          } else {
            m = this.depositLoaded(sb, k);
          }
          size = w[m];
        }
        w[m + 1 + size] = page;
        w[m] = size + 1;
        w[sb + NET] -= n;
        return;
      }
    }
    this.freeSlow(page, npages, who);
  }

  /**
   * Throws the 'EINVAL' that free(page, npages) would throw, changing nothing: lets a caller
   * check a range before it undoes anything else (the DMA API checks before clearing PTEs).
   * A snapshot: a concurrent free of the same range can still make the later free fail.
   */
  checkFree(page: number, npages: number, who = 'domain'): void {
    if (!Number.isSafeInteger(page) || !Number.isSafeInteger(npages) || page < 1 || npages < 1 || page + npages > this.aperturePages) {
      throw new DmaError('EINVAL', `iova: [${hex(page * PAGE_SIZE)}, +${npages} pages) is not an IOVA range of ${who}`);
    }
    // ORDERING: a snapshot of the range's state byte (see free()).
    const old = Atomics.load(this.state, page);
    if (npages <= IOVA_RCACHE_MAX_PAGES) {
      const k = 32 - Math.clz32(npages - 1);
      if (old !== (HELD | k)) throw this.badFree(page, npages, old, who);
      return;
    }
    if (old !== LARGE) throw this.badFree(page, npages, old, who);
    this.mutex.lock();
    try {
      const why = this.largeMismatch(page, npages);
      if (why) throw new DmaError('EINVAL', `iova: free of [${hex(page * PAGE_SIZE)}, +${npages} pages) by ${who}: ${why}`);
    } finally {
      this.mutex.unlock();
    }
  }

  /**
   * reserve_iova: takes pages [page, page + npages) out of the space for good: they are never
   * handed out and cannot be freed (free() of one is 'EINVAL'), and they count in neither
   * pagesInUse() nor cachedPages(). Pages beyond the aperture are ignored (no IOVA there is ever
   * handed out); pages already reserved stay so. Cached ranges in the way go back to the shared
   * space first; a range a caller holds there is 'EBUSY' and nothing is reserved. Returns the
   * pages newly reserved.
   */
  reserve(page: number, npages: number, who = 'domain'): number {
    if (!Number.isSafeInteger(page) || page < 0 || !Number.isSafeInteger(npages) || npages < 0) {
      throw new DmaError('EINVAL', `iova: reserve of ${String(npages)} pages at page ${String(page)} for ${who}: page and count must be non-negative integers`);
    }
    const lo = page;
    const hi = Math.min(page + npages, this.aperturePages);
    if (lo >= hi) return 0;
    return this.mutex.with(() => {
      let busy = this.unreservedIn(lo, hi);
      if (busy >= 0) {
        this.flushLocked(); // cached ranges in the way go back to the shared space
        busy = this.unreservedIn(lo, hi);
      }
      if (busy >= 0) {
        let q = busy;
        while (q > 0 && Atomics.load(this.state, q) === 0) q--;
        throw new DmaError(
          'EBUSY',
          `iova: cannot reserve [${hex(lo * PAGE_SIZE)}, ${hex(hi * PAGE_SIZE)}) for ${who}: IOVA ${hex(busy * PAGE_SIZE)} lies in the range at ${hex(q * PAGE_SIZE)} that a caller holds`,
        );
      }
      let added = 0;
      let run = -1; // first page of the current run of unreserved pages
      for (let q = lo; q <= hi; q++) {
        if (q < hi && !this.bits.has(q)) {
          if (run < 0) run = q;
          // ORDERING: under the mutex (0 → nonzero happens only there); RESERVED never changes again.
          Atomics.store(this.state, q, RESERVED);
          continue;
        }
        if (run >= 0) {
          this.bits.setRange(run, q - run, true);
          added += q - run;
          run = -1;
        }
      }
      Atomics.add(this.w, RESERVED_PAGES, added);
      return added;
    });
  }

  /**
   * Runs `fn` only while nobody holds or can be handed an IOVA in [page, page + npages): with the
   * mutex held, after checking that no page of the range inside the aperture is allocated other
   * than reserved ones (pages beyond the aperture are never handed out). Returns fn's result, or
   * false (fn not run) when some page is held or cached. Call flushCaches() first if cached ranges
   * should count as free. For taking a span away from every mapper for a moment (the page table's
   * empty-table reclaim), like a reserve_iova that is given back; fn must not call the allocator.
   */
  whileUnallocated(page: number, npages: number, fn: () => boolean): boolean {
    const lo = Math.max(0, page);
    const hi = Math.min(page + npages, this.aperturePages);
    // ORDERING: a bitmap bit goes 0 → 1 only under the mutex (spaceAlloc, reserve) and a cached
    // range keeps its bit set, so with the mutex held and every bit of the range clear (or
    // RESERVED) no thread can obtain an IOVA there until unlock, not even from its own magazine.
    return this.mutex.with(() => (lo < hi && this.unreservedIn(lo, hi) >= 0 ? false : fn()));
  }

  /** The first page of [lo, hi) that is allocated but not reserved (mutex held), or -1. */
  private unreservedIn(lo: number, hi: number): number {
    for (let q = lo; q < hi; q++) {
      if ((q & 31) === 0 && this.bits.word(q) === 0) {
        q += 31; // a whole free word
        continue;
      }
      if (this.bits.has(q) && Atomics.load(this.state, q) !== RESERVED) return q;
    }
    return -1;
  }

  /** Whether the page lies in a range a caller holds (page 0, reserved, counts as allocated). */
  isAllocated(page: number): boolean {
    if (!Number.isSafeInteger(page) || page < 0 || page >= this.aperturePages || !this.bits.has(page)) return false;
    let q = page;
    // ORDERING: a snapshot (the nearest range start at or below the page); exact when quiescent.
    while (q > 0 && Atomics.load(this.state, q) === 0) q--;
    const s = Atomics.load(this.state, q);
    return s === RESERVED || s === LARGE || (s & KIND) === HELD;
  }

  /**
   * Gives this thread's slot back: its cached ranges return to the shared space and the slot is
   * free for another thread. Call it when a thread stops using the domain. The instance stays
   * usable (it claims a slot again on its next call).
   */
  release(): void {
    const sb = this.sb;
    if (sb < 0) return;
    this.mutex.with(() => this.freeSlotLocked(sb));
    Atomics.add(this.w, SLOT_GEN, 1);
    this.sb = -1;
    this.noSlotGen = -1;
    orphanedSlots.unregister(this);
  }

  /**
   * Empties slot `sb` with the mutex held: its magazines go back to the shared space, the pages
   * its owner still holds (live mappings) move to HELD_PAGES, and the slot is free.
   */
  private freeSlotLocked(sb: number): void {
    const w = this.w;
    for (let k = 0; k < IOVA_RCACHE_ORDERS; k++) {
      this.drainMagazine(w[sb + LOADED + k], true);
      this.drainMagazine(w[sb + PREV + k], true);
    }
    // ORDERING: the slot's count moves to HELD_PAGES, then the seq-cst store of OWNER = 0 publishes
    // the emptied magazines and the zeroed count to the next claimer (whose compareExchange reads it).
    Atomics.add(w, HELD_PAGES, w[sb + NET]);
    Atomics.store(w, sb + NET, 0);
    Atomics.store(w, sb + OWNER, 0);
  }

  /**
   * Returns every cached range (all slots' magazines and the depot) to the shared space. Safe at
   * any time (ranges are claimed through their state bytes; other slots' magazines are only read),
   * but complete only when no other thread is in the allocator: a range another thread is caching
   * at that moment stays cached. For leak checks and close.
   */
  flushCaches(): void {
    this.mutex.with(() => this.flushLocked());
  }

  /**
   * free_cpu_cached_iovas for a dead thread's "CPU": the cached ranges of every slot thread
   * `tid` owned go back to the shared space, the pages it still held (its live mappings) move to
   * HELD_PAGES, and the slot is free again. Only for a thread that has ended (a live owner writes
   * its magazines without the mutex). Returns the cached pages freed.
   */
  reclaimThread(tid: number): number {
    const w = this.w;
    return this.mutex.with(() => {
      const before = this.cachedPages();
      let found = false;
      for (let i = 0; i < this.nslots; i++) {
        const sb = HEADER + i * SLOT_STRIDE;
        if (Atomics.load(w, sb + OWNER) !== tid + 1 || sb === this.sb) continue;
        found = true;
        this.freeSlotLocked(sb);
      }
      if (found) Atomics.add(w, SLOT_GEN, 1);
      return before - this.cachedPages();
    });
  }

  // ---- slots ----

  private claimSlot(): number {
    const w = this.w;
    // ORDERING: SLOT_GEN is read before the scan, so a slot released during the scan changes it
    // and the next call scans again.
    const gen = Atomics.load(w, SLOT_GEN);
    if (gen === this.noSlotGen) return -1;
    for (let i = 0; i < this.nslots; i++) {
      const sb = HEADER + i * SLOT_STRIDE;
      // ORDERING: the compareExchange reads the 0 that the last owner's release() stored after
      // emptying the slot's magazines, so this thread sees them empty.
      if (Atomics.load(w, sb + OWNER) === 0 && Atomics.compareExchange(w, sb + OWNER, 0, threadId + 1) === 0) {
        this.sb = sb;
        const twin = new IovaAllocator(this.handle);
        twin.sb = sb;
        orphanedSlots.register(this, twin, this);
        return sb;
      }
    }
    this.noSlotGen = gen;
    return -1;
  }

  /**
   * iova_magazine_pop: the most recently freed range of magazine `m` (order k, n pages) that ends
   * at or below `limit`, or -1. Entries whose state is no longer CACHED|k (a flusher took them) are
   * dropped on the way. Caller: the magazine's owner (its slot's thread, or the mutex holder).
   */
  private magazinePop(m: number, k: number, n: number, limit: number): number {
    const w = this.w;
    let size = w[m];
    let i = size - 1;
    while (i >= 0) {
      const p = w[m + 1 + i];
      if (p + n > limit) {
        i--;
        continue;
      }
      size--;
      w[m + 1 + i] = w[m + 1 + size]; // entries above i did not fit: moving the last one down is fine
      w[m] = size;
      // ORDERING: the seq-cst exchange hands the range from the cache to the caller; it fails if
      // a flusher claimed the range first (then this entry was stale).
      if (Atomics.compareExchange(this.state, p, CACHED | k, HELD | k) === (CACHED | k)) return p;
      i--;
    }
    return -1;
  }

  /** Both magazines of order k full: `loaded` goes to the depot (or, depot full, back to the shared space). */
  private depositLoaded(sb: number, k: number): number {
    const w = this.w;
    return this.mutex.with(() => {
      const m = w[sb + LOADED + k];
      const dc = this.L.depot + k * this.L.depotStride;
      const cnt = w[dc];
      if (cnt < this.depotMax) {
        w[dc + 1 + cnt] = m;
        w[dc] = cnt + 1;
        const e = this.poolPop();
        w[sb + LOADED + k] = e;
        return e;
      }
      this.drainMagazine(m, true);
      return m;
    });
  }

  // ---- slow paths (mutex) ----

  private allocSlow(npages: number, n: number, k: number, limit: number, sb: number, who: string): number {
    const w = this.w;
    this.mutex.lock();
    try {
      let p = -1;
      if (sb >= 0) {
        // Both magazines empty: a full one from the depot becomes `loaded`, the empty one goes to the pool.
        if (w[w[sb + LOADED + k]] === 0 && w[w[sb + PREV + k]] === 0) {
          const dc = this.L.depot + k * this.L.depotStride;
          const cnt = w[dc];
          if (cnt > 0) {
            this.poolPush(w[sb + LOADED + k]);
            w[sb + LOADED + k] = w[dc + cnt];
            w[dc] = cnt - 1;
            p = this.magazinePop(w[sb + LOADED + k], k, n, limit);
          }
        }
      } else {
        // No slot: take straight from the newest depot magazine.
        const dc = this.L.depot + k * this.L.depotStride;
        const cnt = w[dc];
        if (cnt > 0) {
          const m = w[dc + cnt];
          p = this.magazinePop(m, k, n, limit);
          if (w[m] === 0) {
            w[dc] = cnt - 1;
            this.poolPush(m);
          }
        }
      }
      if (p < 0) p = this.spaceAllocOrFlush(npages, n, Math.floor(limit), HELD | k, who, sb);
      // ORDERING: NET is ours (plain); HELD_PAGES is shared by slot-less threads (atomic add).
      if (sb >= 0) w[sb + NET] += n;
      else Atomics.add(w, HELD_PAGES, n);
      return p;
    } finally {
      this.mutex.unlock();
    }
  }

  /** alloc_iova for a range of more than 32 pages (never cached), or argument errors. */
  private allocLarge(npages: number, limitPage: number, who: string): number {
    if (!Number.isSafeInteger(npages) || npages <= 0) {
      throw new DmaError('EINVAL', `iova: cannot allocate ${String(npages)} pages for ${who}`);
    }
    if (typeof limitPage !== 'number' || !(limitPage >= 1)) {
      throw new DmaError('EINVAL', `iova: limit page ${String(limitPage)} for ${who} is not a positive page number`);
    }
    const limit = Math.floor(Math.min(limitPage, this.aperturePages));
    this.mutex.lock();
    try {
      const p = this.spaceAllocOrFlush(npages, npages, limit, LARGE, who);
      if (this.sb >= 0) this.w[this.sb + NET] += npages;
      else Atomics.add(this.w, HELD_PAGES, npages);
      return p;
    } finally {
      this.mutex.unlock();
    }
  }

  private freeSlow(page: number, npages: number, who: string): void {
    const ap = this.aperturePages;
    const size = intIn(npages, 1, IOVA_RCACHE_MAX_PAGES) ? 1 << (32 - Math.clz32(npages - 1)) : npages;
    if (!Number.isSafeInteger(page) || !Number.isSafeInteger(npages) || npages <= 0 || page < 1 || page + size > ap) {
      throw new DmaError(
        'EINVAL',
        `iova: free of [${hex(Number(page) * PAGE_SIZE)}, +${String(npages)} pages) by ${who}: not an IOVA range of this domain (aperture ${hex(ap * PAGE_SIZE)})`,
      );
    }
    const w = this.w;
    this.mutex.lock();
    try {
      if (npages <= IOVA_RCACHE_MAX_PAGES) {
        // No slot: straight back to the shared space.
        const k = 32 - Math.clz32(npages - 1);
        // ORDERING: under the mutex (a byte goes to 0 only there); the exchange still races with a
        // concurrent free of the same range, and exactly one of them wins.
        const old = Atomics.compareExchange(this.state, page, HELD | k, 0);
        if (old !== (HELD | k)) throw this.badFree(page, npages, old, who);
        this.spaceFree(page, size);
        Atomics.sub(w, HELD_PAGES, size);
        return;
      }
      // ORDERING: a LARGE byte and the interior bytes change only under the mutex, which we hold.
      const old = Atomics.load(this.state, page);
      if (old !== LARGE) throw this.badFree(page, npages, old, who);
      const why = this.largeMismatch(page, npages);
      if (why) throw new DmaError('EINVAL', `iova: free of [${hex(page * PAGE_SIZE)}, +${npages} pages) by ${who}: ${why}`);
      Atomics.store(this.state, page, 0);
      this.spaceFree(page, npages);
      if (this.sb >= 0) w[this.sb + NET] -= npages;
      else Atomics.sub(w, HELD_PAGES, npages);
    } finally {
      this.mutex.unlock();
    }
  }

  /** Why [page, page + n) is not exactly the LARGE range starting at page (mutex held), or null. */
  private largeMismatch(page: number, n: number): string | null {
    const s = this.state;
    for (let q = page + 1; q < page + n; q++) {
      if (!this.bits.has(q)) return `page ${hex(q * PAGE_SIZE)} is not allocated (the range is shorter: wrong size?)`;
      if (s[q] !== 0) return `another range starts at ${hex(q * PAGE_SIZE)} (the range is shorter: wrong size?)`;
    }
    const end = page + n;
    if (end < this.aperturePages && this.bits.has(end) && s[end] === 0) {
      return `the range continues past ${hex(end * PAGE_SIZE)} (wrong size?)`;
    }
    return null;
  }

  private badFree(page: number, npages: number, old: number, who: string): DmaError {
    let why: string;
    if (old === 0) why = 'not allocated, or not the start of a range (double free?)';
    else if (old === RESERVED) why = page === 0 ? 'page 0 is reserved' : 'the page is reserved (reserve_iova: never handed out, never freed)';
    else if ((old & KIND) === CACHED) why = 'already freed (double free)';
    else if ((old & KIND) === HELD) why = `it was allocated as ${1 << (old & 0xf)} pages (wrong size)`;
    else why = 'it was allocated as a range of more than 32 pages (wrong size)';
    return new DmaError('EINVAL', `iova: free of [${hex(page * PAGE_SIZE)}, +${npages} pages) by ${who}: ${why}`);
  }

  /** alloc_iova with the retry of alloc_iova_fast: on no room, flush every cache and search again. */
  private spaceAllocOrFlush(npages: number, size: number, limit: number, code: number, who: string, sb = -1): number {
    let align = 1;
    while (align < size) align *= 2;
    let p = this.spaceAlloc(size, align, limit, sb);
    if (p < 0) {
      this.flushLocked();
      p = this.spaceAlloc(size, align, limit, sb);
    }
    if (p < 0) {
      throw new DmaError(
        'ENOSPC',
        `iova: no free ${npages}-page range${size !== npages ? ` (rounded to ${size})` : ''} below ${hex(limit * PAGE_SIZE)} for ${who} (${this.pagesInUse()} of ${this.aperturePages} IOVA pages in use, ${this.cachedPages()} cached)`,
      );
    }
    // ORDERING: under the mutex (0 → nonzero happens only there); the caller's hand-over of the
    // IOVA to another thread (a message or an atomic) carries it to whoever frees the range.
    Atomics.store(this.state, p, code);
    return p;
  }

  private spaceAlloc(size: number, align: number, limit: number, sb = -1): number {
    const w = this.w;
    if (sb >= 0) {
      // A slot's own stripe first, when it lies below the limit (slot 0's starts at the top: the
      // shared search below). Threads then fill different cache lines of the state bytes and the
      // page table's leaves instead of interleaving page by page.
      const top = w[sb + SLOT_HINT];
      if (top < limit) {
        const p = this.search(top, size, align);
        if (p >= 0) {
          this.bits.setRange(p, size, true);
          w[sb + SLOT_HINT] = p;
          return p;
        }
      }
    }
    const hint = w[HINT];
    let p = this.search(Math.min(limit, hint), size, align);
    if (p < 0 && hint < limit) p = this.search(limit, size, align);
    if (p >= 0) {
      this.bits.setRange(p, size, true);
      w[HINT] = p;
    }
    return p;
  }

  private spaceFree(page: number, size: number): void {
    this.bits.setRange(page, size, false);
    if (page + size > this.w[HINT]) this.w[HINT] = page + size;
  }

  /** Highest aligned start s with [s, s + n) free and s + n ≤ top; -1 if none. */
  private search(top: number, n: number, align: number): number {
    let s = Math.floor((top - n) / align) * align;
    while (s >= 1) {
      let blocked = -1;
      for (let p = s + n - 1; p >= s; p--) {
        const word = this.bits.word(p);
        if (word === 0 && (p & 31) === 31 && p - 31 >= s) {
          p -= 31; // a whole free word
          continue;
        }
        if ((word & (1 << (p & 31))) !== 0) {
          blocked = p;
          break;
        }
      }
      if (blocked < 0) return s;
      s = Math.floor((blocked - n) / align) * align;
    }
    return -1;
  }

  /**
   * Returns the cached ranges of magazine m to the shared space (mutex held). `reset`: the caller
   * owns the magazine and empties it; otherwise (another thread's slot) it is only read.
   */
  private drainMagazine(m: number, reset: boolean): void {
    const w = this.w;
    const s = this.state;
    if (m < this.L.mags || m >= this.L.bitmap) return;
    let size = w[m];
    if (!(size > 0)) size = 0;
    if (size > this.magSize) size = this.magSize;
    for (let i = 0; i < size; i++) {
      const p = w[m + 1 + i];
      if (p >= 1 && p < this.aperturePages) {
        const v = Atomics.load(s, p);
        // ORDERING: the exchange claims the range against its owner's magazinePop; the winner has it.
        if ((v & KIND) === CACHED && Atomics.compareExchange(s, p, v, 0) === v) this.spaceFree(p, 1 << (v & 0xf));
      }
    }
    if (reset) w[m] = 0;
  }

  /** free_cpu_cached_iovas for every slot + free_global_cached_iovas (mutex held). */
  private flushLocked(): void {
    const w = this.w;
    for (let i = 0; i < this.nslots; i++) {
      const sb = HEADER + i * SLOT_STRIDE;
      const own = sb === this.sb;
      for (let k = 0; k < IOVA_RCACHE_ORDERS; k++) {
        this.drainMagazine(w[sb + LOADED + k], own);
        this.drainMagazine(w[sb + PREV + k], own);
      }
    }
    for (let k = 0; k < IOVA_RCACHE_ORDERS; k++) {
      const dc = this.L.depot + k * this.L.depotStride;
      const cnt = w[dc];
      for (let j = 1; j <= cnt; j++) {
        this.drainMagazine(w[dc + j], true);
        this.poolPush(w[dc + j]);
      }
      w[dc] = 0;
    }
  }

  private poolPop(): number {
    const w = this.w;
    const t = w[POOL_TOP];
    if (t === 0) throw new Error('iova: magazine pool empty (invariant broken)');
    w[POOL_TOP] = t - 1;
    return w[this.L.pool + t - 1];
  }

  private poolPush(m: number): void {
    const w = this.w;
    const t = w[POOL_TOP];
    w[this.L.pool + t] = m;
    w[POOL_TOP] = t + 1;
  }
}
