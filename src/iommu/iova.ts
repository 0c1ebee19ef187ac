/**
 * IOVA allocator of one domain: which I/O virtual page ranges are handed out.
 *
 * Layout (Int32 words of its own SharedArrayBuffer):
 *   [0] futex mutex      [1] pages in use     [2] hint: search starts below this page (top-down)
 *   [3] aperture pages   [4 ...] bitmap, one bit per IOVA page of [0, aperture); bit set = in use
 * Writers: any driver thread, with the mutex held. Page 0 is reserved at creation, so DMA
 * address 0 is never handed out (as Linux's iova domains start at pfn 1).
 *
 * Like Linux's alloc_iova: top-down below the caller's limit (the device's DMA mask), ranges
 * aligned to their size rounded up to a power of two. Where we differ: the aperture is the
 * 32-bit space that Linux tries first for PCI devices; there is no fallback above 4 GiB yet, and
 * no per-thread caches yet (a bitmap under one mutex).
 */
import { DmaError, hex } from '../errors.js';
import { FutexMutex } from '../shared/futex-mutex.js';
import { PageBitmap } from '../shared/page-bitmap.js';
import { PAGE_SIZE } from '../addresses.js';

export interface IovaAllocatorHandle {
  readonly sab: SharedArrayBuffer;
}

const LOCK = 0;
const IN_USE = 1;
const HINT = 2;
const APERTURE = 3;
const BITMAP = 4;
export const DEFAULT_APERTURE_PAGES = 2 ** 20; // 4 GiB of IOVA space

export class IovaAllocator {
  readonly handle: IovaAllocatorHandle;
  readonly aperturePages: number;
  private readonly w: Int32Array;
  private readonly mutex: FutexMutex;
  private readonly bits: PageBitmap;

  static create(aperturePages = DEFAULT_APERTURE_PAGES): IovaAllocator {
    const sab = new SharedArrayBuffer((BITMAP + Math.ceil(aperturePages / 32)) * 4);
    const w = new Int32Array(sab);
    w[APERTURE] = aperturePages;
    w[HINT] = aperturePages;
    w[BITMAP] = 1; // page 0 reserved
    w[IN_USE] = 1;
    return new IovaAllocator({ sab });
  }

  static attach(handle: IovaAllocatorHandle): IovaAllocator {
    return new IovaAllocator(handle);
  }

  private constructor(handle: IovaAllocatorHandle) {
    this.handle = handle;
    this.w = new Int32Array(handle.sab);
    this.aperturePages = this.w[APERTURE];
    this.mutex = new FutexMutex(this.w, LOCK);
    this.bits = new PageBitmap(this.w, BITMAP, IN_USE);
  }

  /** Pages handed out (page 0, reserved, included). */
  pagesInUse(): number {
    return this.bits.count();
  }

  /**
   * Allocates `npages` IOVA pages ending at or below page `limitPage` (exclusive; from the DMA
   * mask). Returns the first page number. 'ENOSPC' when no aligned free range is left.
   */
  alloc(npages: number, limitPage: number, who = 'domain'): number {
    if (!Number.isSafeInteger(npages) || npages <= 0) {
      throw new DmaError('EINVAL', `iova: cannot allocate ${String(npages)} pages for ${who}`);
    }
    const limit = Math.min(limitPage, this.aperturePages);
    let align = 1;
    while (align < npages) align *= 2;
    return this.mutex.with(() => {
      const hint = this.w[HINT];
      let p = this.search(Math.min(limit, hint), npages, align);
      if (p < 0 && hint < limit) p = this.search(limit, npages, align);
      if (p < 0) {
        throw new DmaError(
          'ENOSPC',
          `iova: no free ${npages}-page range below ${hex(limit * PAGE_SIZE)} for ${who} (${this.pagesInUse()} of ${this.aperturePages} IOVA pages in use)`,
        );
      }
      this.bits.setRange(p, npages, true);
      this.w[HINT] = p;
      return p;
    });
  }

  /** Frees a range returned by alloc; freeing pages not in use is 'EINVAL' and changes nothing. */
  free(page: number, npages: number, who = 'domain'): void {
    if (!Number.isSafeInteger(page) || !Number.isSafeInteger(npages) || page < 1 || npages <= 0 || page + npages > this.aperturePages) {
      throw new DmaError('EINVAL', `iova: [${hex(page * PAGE_SIZE)}, +${npages} pages) is not an IOVA range of ${who}`);
    }
    this.mutex.with(() => {
      for (let q = page; q < page + npages; q++) {
        if (!this.bits.has(q)) throw new DmaError('EINVAL', `iova: page ${hex(q * PAGE_SIZE)} of ${who} is not allocated (double free?)`);
      }
      this.bits.setRange(page, npages, false);
      if (page + npages > this.w[HINT]) this.w[HINT] = page + npages;
    });
  }

  isAllocated(page: number): boolean {
    return page >= 0 && page < this.aperturePages && this.bits.has(page);
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
}
