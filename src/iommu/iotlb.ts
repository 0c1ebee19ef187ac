/**
 * A device's IOTLB: its cache of translations (ATS-style, one per device), direct mapped with a
 * hashed index (iotlbSlot).
 *
 * Layout (its own SharedArrayBuffer, N entries, N a power of two):
 *   Float64 tags[N]   IOVA page number cached in the entry, -1 = empty
 *   Float64 offs[N]   where that page lives: byte offset in the RAM buffer, -1 = not RAM
 *   Uint8   flags[N]  bit 0 = device may read, bit 1 = may write, bit 2 = stale
 * Writer: only the owning device worker (it is the device's private cache; shared memory only so
 * that it can be inspected). Invalidations reach it through invalidation.ts, applied by the
 * device itself at the start of a transfer.
 * Stale: a lazily unmapped page stays cached (as on real hardware until the flush queue's
 * flush); the device keeps using it and counts each such access.
 */
export interface IotlbHandle {
  readonly sab: SharedArrayBuffer;
  readonly entries: number;
}

/**
 * The entry a page lives in: the page number plus a multiplicative hash of its bits above 4 MiB,
 * so pages of one buffer take consecutive entries while buffers in different 4 MiB regions land
 * at unrelated offsets (a plain low-bits index makes buffers a power of two apart evict each
 * other on every transfer). The device's hot loop inlines this.
 */
export function iotlbSlot(page: number, mask: number): number {
  return (page + Math.imul(page >>> 10, 0x9e3779b1)) & mask;
}

export const IOTLB_READ = 1;
export const IOTLB_WRITE = 2;
export const IOTLB_STALE = 4;

export class Iotlb {
  readonly handle: IotlbHandle;
  readonly tags: Float64Array;
  readonly offs: Float64Array;
  readonly flags: Uint8Array;
  readonly mask: number;
  flushes = 0;

  static create(entries: number): Iotlb {
    const sab = new SharedArrayBuffer(entries * 17);
    const t = new Iotlb({ sab, entries });
    t.tags.fill(-1);
    return t;
  }

  static attach(handle: IotlbHandle): Iotlb {
    return new Iotlb(handle);
  }

  private constructor(handle: IotlbHandle) {
    this.handle = handle;
    const n = handle.entries;
    this.tags = new Float64Array(handle.sab, 0, n);
    this.offs = new Float64Array(handle.sab, n * 8, n);
    this.flags = new Uint8Array(handle.sab, n * 16, n);
    this.mask = n - 1;
  }

  /** Entry index holding `page`, or -1. */
  find(page: number): number {
    const i = iotlbSlot(page, this.mask);
    return this.tags[i] === page ? i : -1;
  }

  insert(page: number, off: number, flags: number): number {
    const i = iotlbSlot(page, this.mask);
    this.tags[i] = page;
    this.offs[i] = off;
    this.flags[i] = flags;
    return i;
  }

  invalidate(page: number, npages: number): void {
    if (npages > this.tags.length) {
      this.flushAll();
      return;
    }
    for (let p = page; p < page + npages; p++) {
      const i = iotlbSlot(p, this.mask);
      if (this.tags[i] === p) this.tags[i] = -1;
    }
  }

  markStale(page: number, npages: number): void {
    const n = this.tags.length;
    if (npages === 0 || npages > n) {
      for (let i = 0; i < n; i++) {
        const t = this.tags[i];
        if (t >= 0 && (npages === 0 || (t >= page && t < page + npages))) this.flags[i] |= IOTLB_STALE;
      }
      return;
    }
    for (let p = page; p < page + npages; p++) {
      const i = iotlbSlot(p, this.mask);
      if (this.tags[i] === p) this.flags[i] |= IOTLB_STALE;
    }
  }

  flushAll(): void {
    this.tags.fill(-1);
    this.flushes++;
  }

  /** Valid entries (for inspection and tests). */
  occupancy(): number {
    let k = 0;
    for (let i = 0; i < this.tags.length; i++) if (this.tags[i] >= 0) k++;
    return k;
  }
}
