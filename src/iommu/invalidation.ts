/**
 * IOTLB invalidation: each domain's invalidation queue and generation (VT-d's invalidation
 * queue, page-selective descriptors and a wait descriptor, reduced to shared words).
 *
 * Layout (Int32 words, BLOCK per domain, domain n at n * BLOCK):
 *   [0] gen    strict invalidations completed-by-publisher; moves after its entry is published
 *   [1] tail   queue entries ever reserved (writers reserve with Atomics.add)
 *   [2] [3]   unused (the counts are derived: strict = gen, lazy = tail - gen, so an unmap
 *              pays no extra atomic for statistics)
 *   [4 + 4k]   entry k of a RING-entry ring: seq, pageLo, pageHi, npages | flags
 *              seq = sequence + 1 once published; npages 0 = every page; bit 30 = lazy
 * Writers: unmappers (driver side, any thread). Readers: devices, once per transfer.
 *
 * Protocol (writer): clear the PTEs; reserve sequence k (tail += 1); write the entry; publish
 * it (store seq); for a strict invalidation move gen with Atomics.add and then wait on the
 * device epochs (device-epoch.ts). A lazy entry does not move gen: devices learn of it at their
 * next transfer and only mark the cached translation stale (see iotlb.ts); the flush queue's
 * later flush-all moves gen.
 * Protocol (device, inside its epoch): load gen, then tail; apply entries from its last tail to
 * tail; an entry not yet published, or a slot that writers may have lapped (tail more than RING
 * past the entry, re-read after its fields), makes it drop its whole IOTLB, which is always safe.
 * Generations are 30-bit; a device more than 2^29 generations behind would be misjudged by
 * genAtLeast, but it is then far more than RING entries behind too, so it flushes everything.
 */
import type { Iotlb } from './iotlb.js';

export interface InvalidationHandle {
  readonly sab: SharedArrayBuffer;
}

export const INVALIDATION_RING = 64;
const HEADER = 4;
const BLOCK = HEADER + INVALIDATION_RING * 4;
if ((INVALIDATION_RING & (INVALIDATION_RING - 1)) !== 0) throw new Error('INVALIDATION_RING must be a power of two');
const GEN = 0;
const TAIL = 1;
const LAZY_FLAG = 1 << 30;
const NPAGES_MASK = LAZY_FLAG - 1;

export class Invalidation {
  readonly handle: InvalidationHandle;
  readonly words: Int32Array;

  static create(domains: number): Invalidation {
    return new Invalidation({ sab: new SharedArrayBuffer(domains * BLOCK * 4) });
  }

  static attach(handle: InvalidationHandle): Invalidation {
    return new Invalidation(handle);
  }

  private constructor(handle: InvalidationHandle) {
    this.handle = handle;
    this.words = new Int32Array(handle.sab);
  }

  // ---- writer side --------------------------------------------------------------------------

  /**
   * Publishes the invalidation of [page, page + npages) (npages 0 = all) and, unless lazy,
   * moves the generation. Returns the generation devices must reach (strict), or -1 (lazy).
   */
  publish(domain: number, page: number, npages: number, lazy: boolean): number {
    const w = this.words;
    const b = domain * BLOCK;
    // ORDERING: reserving after the PTE clears means a device that sees this tail and flushes
    // (or applies the entry) walks tables that no longer hold the old entries.
    const k = Atomics.add(w, b + TAIL, 1);
    const e = b + HEADER + (k & (INVALIDATION_RING - 1)) * 4;
    const hi = page > 0xffffffff ? Math.floor(page / 2 ** 32) : 0;
    // No seq = 0 before the fields: a device reads a slot's fields only for the entry whose seq it
    // finds there, and if a writer a full ring ahead (this one, for the slot's older entry) has
    // reserved the slot meanwhile, even publishing its seq over our fields, the device's re-read
    // of tail after the fields shows the lap (apply()) and it flushes everything. So plain field
    // stores suffice, and the one seq store below publishes them.
    w[e + 1] = hi === 0 ? page | 0 : page - hi * 2 ** 32;
    w[e + 2] = hi;
    w[e + 3] = (npages > NPAGES_MASK ? 0 : npages) | (lazy ? LAZY_FLAG : 0);
    // ORDERING: publishes the fields above to a device's seq load.
    Atomics.store(w, e, (k + 1) | 0);
    if (lazy) return -1;
    // ORDERING: the generation moves after the entry is published, so a device that loads the
    // new generation also sees the entry when it loads tail afterwards.
    return (Atomics.add(w, b + GEN, 1) + 1) & 0x3fffffff;
  }

  counts(domain: number): { strict: number; lazy: number } {
    const b = domain * BLOCK;
    // Every published entry moved tail once; every strict one moved gen once (both only grow).
    const gen = Atomics.load(this.words, b + GEN) >>> 0;
    const tail = Atomics.load(this.words, b + TAIL) >>> 0;
    return { strict: gen, lazy: Math.max(0, tail - gen) };
  }

  // ---- device side --------------------------------------------------------------------------

  /** The domain's generation (device side: load this, then call apply()). */
  gen(domain: number): number {
    // ORDERING: loaded before tail (see protocol).
    return Atomics.load(this.words, domain * BLOCK + GEN) & 0x3fffffff;
  }

  /**
   * Applies to `iotlb` every entry published since `lastTail`; returns the new tail.
   * Called by the device inside its epoch, after gen().
   */
  apply(domain: number, lastTail: number, iotlb: Iotlb): number {
    const w = this.words;
    const b = domain * BLOCK;
    const t = Atomics.load(w, b + TAIL);
    if (t === lastTail) return t;
    const behind = (t - lastTail) | 0;
    if (behind < 0 || behind > INVALIDATION_RING) {
      iotlb.flushAll();
      return t;
    }
    for (let k = lastTail; k !== t; k = (k + 1) | 0) {
      const e = b + HEADER + ((k >>> 0) % INVALIDATION_RING) * 4;
      // ORDERING: seq before and after the plain field loads (a seqlock read).
      const seq = Atomics.load(w, e);
      if (seq !== ((k + 1) | 0)) {
        iotlb.flushAll();
        return t;
      }
      const page = (w[e + 2] >>> 0) * 2 ** 32 + (w[e + 1] >>> 0);
      const f = w[e + 3];
      if (Atomics.load(w, e) !== seq) {
        iotlb.flushAll();
        return t;
      }
      // ORDERING: re-read tail after the fields: if writers have lapped this slot since k was
      // reserved, a later writer may have written these fields under our seq (a torn entry).
      const now = Atomics.load(w, b + TAIL);
      if (((now - k) | 0) > INVALIDATION_RING) {
        iotlb.flushAll();
        return now;
      }
      const npages = f & NPAGES_MASK;
      if ((f & LAZY_FLAG) !== 0) iotlb.markStale(page, npages);
      else if (npages === 0) iotlb.flushAll();
      else iotlb.invalidate(page, npages);
    }
    return t;
  }

  tail(domain: number): number {
    return Atomics.load(this.words, domain * BLOCK + TAIL);
  }
}
