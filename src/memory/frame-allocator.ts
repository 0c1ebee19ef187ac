/**
 * Page-frame allocator for guest RAM: which 4 KiB frames are handed out.
 *
 * Layout (Int32 words of its own SharedArrayBuffer):
 *   [0]      futex mutex word (shared/futex-mutex.ts)
 *   [1]      pages in use
 *   [2 ...]  bitmap, one bit per frame, frames numbered by RAM-buffer offset / 4096
 *            (region after region, as guest-ram.ts lays them out); bit set = in use
 * Writers: any thread, only with the mutex held. Readers of [1] use Atomics.load.
 * Invariant: word [1] equals the number of set bits.
 *
 * Where we differ from Linux: one bitmap and first fit instead of a buddy allocator; like
 * Linux's zone fallback (Normal → DMA32), an unconstrained request is served from the highest
 * region first, keeping low memory for devices that can only reach it.
 */
import { DmaError, hex } from '../errors.js';
import { type Pa, PAGE_SIZE } from '../addresses.js';
import { FutexMutex } from '../shared/futex-mutex.js';
import { PageBitmap } from '../shared/page-bitmap.js';
import type { RamBuffer, RamRegion } from './guest-ram.js';

export interface FrameAllocatorHandle {
  readonly sab: SharedArrayBuffer;
}

export interface AllocOptions {
  /** The buffer ends at or below this PA (pa + size ≤ below), like a DMA zone limit. */
  below?: number;
  /** The buffer starts at or above this PA. */
  above?: number;
  /** PA alignment in bytes: a power of two, at least 4096 (the default). */
  align?: number;
}

const LOCK = 0;
const IN_USE = 1;
const BITMAP = 2;

export class FrameAllocator {
  readonly handle: FrameAllocatorHandle;
  private readonly words: Int32Array;
  private readonly mutex: FutexMutex;
  private readonly bits: PageBitmap;

  static create(regions: readonly RamRegion[]): FrameAllocator {
    const last = regions[regions.length - 1];
    const frames = (last.offset + last.size) / PAGE_SIZE;
    const sab = new SharedArrayBuffer((BITMAP + Math.ceil(frames / 32)) * 4);
    return new FrameAllocator({ sab }, regions);
  }

  static attach(handle: FrameAllocatorHandle, regions: readonly RamRegion[]): FrameAllocator {
    return new FrameAllocator(handle, regions);
  }

  private constructor(
    handle: FrameAllocatorHandle,
    private readonly regions: readonly RamRegion[],
  ) {
    this.handle = handle;
    this.words = new Int32Array(handle.sab);
    this.mutex = new FutexMutex(this.words, LOCK);
    this.bits = new PageBitmap(this.words, BITMAP, IN_USE);
  }

  pagesInUse(): number {
    return this.bits.count();
  }

  alloc(size: number, options: AllocOptions = {}): RamBuffer {
    const { below, above, align = PAGE_SIZE } = options ?? {};
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new DmaError('EINVAL', `ram.alloc: size ${String(size)} must be a positive integer`);
    }
    if (!Number.isSafeInteger(align) || align < PAGE_SIZE || !isPow2(align)) {
      throw new DmaError('EINVAL', `ram.alloc: align ${String(align)} must be a power of two of at least 4096`);
    }
    for (const [k, v] of [['below', below], ['above', above]] as const) {
      if (v !== undefined && (!Number.isSafeInteger(v) || v < 0)) {
        throw new DmaError('EINVAL', `ram.alloc: ${k} ${String(v)} must be a non-negative integer address`);
      }
    }
    const pages = Math.ceil(size / PAGE_SIZE);
    const lo = above ?? 0;
    const hi = below ?? Number.MAX_SAFE_INTEGER;
    return this.mutex.with(() => {
      // Highest region first (zone fallback), first fit inside a region.
      for (let i = this.regions.length - 1; i >= 0; i--) {
        const r = this.regions[i];
        const start = Math.max(lo, r.base);
        const end = Math.min(hi, r.base + r.size);
        if (end - start < pages * PAGE_SIZE) continue;
        const pa = this.findRun(r, start, end, pages, align);
        if (pa >= 0) {
          this.bits.setRange(r.offset / PAGE_SIZE + (pa - r.base) / PAGE_SIZE, pages, true);
          return { pa: pa as Pa, size };
        }
      }
      const limits = [above !== undefined ? `above ${hex(above)}` : '', below !== undefined ? `below ${hex(below)}` : '']
        .filter(Boolean)
        .join(' and ');
      throw new DmaError(
        'ENOMEM',
        `ram.alloc: no ${pages} contiguous free page(s) aligned to ${align}${limits ? ' ' + limits : ''} (${this.pagesInUse()} of ${this.totalPages()} pages in use)`,
      );
    });
  }

  free(buf: RamBuffer): void {
    if (buf === null || typeof buf !== 'object' || !Number.isSafeInteger(buf.pa) || !Number.isSafeInteger(buf.size) || buf.size <= 0) {
      throw new DmaError('EINVAL', `ram.free: expected a buffer { pa, size } from ram.alloc`);
    }
    const r = this.regions.find((x) => buf.pa >= x.base && buf.pa + buf.size <= x.base + x.size);
    if (!r || buf.pa % PAGE_SIZE !== 0) {
      throw new DmaError('EINVAL', `ram.free: [${hex(buf.pa)}, ${hex(buf.pa + buf.size)}) was not handed out by ram.alloc`);
    }
    const first = r.offset / PAGE_SIZE + (buf.pa - r.base) / PAGE_SIZE;
    const pages = Math.ceil(buf.size / PAGE_SIZE);
    this.mutex.with(() => {
      for (let p = first; p < first + pages; p++) {
        if (!this.bits.has(p)) {
          throw new DmaError(
            'EINVAL',
            `ram.free: page at PA ${hex(buf.pa + (p - first) * PAGE_SIZE)} of [${hex(buf.pa)}, ${hex(buf.pa + buf.size)}) is not allocated (double free?)`,
          );
        }
      }
      this.bits.setRange(first, pages, false);
    });
  }

  private totalPages(): number {
    const last = this.regions[this.regions.length - 1];
    return (last.offset + last.size) / PAGE_SIZE;
  }

  /** First PA in [start, end) of region r, aligned, with n free pages; -1 if none. */
  private findRun(r: RamRegion, start: number, end: number, n: number, align: number): number {
    let pa = Math.ceil(start / align) * align;
    const base = r.offset / PAGE_SIZE;
    while (pa + n * PAGE_SIZE <= end) {
      const p0 = base + (pa - r.base) / PAGE_SIZE;
      let k = 0;
      while (k < n) {
        const p = p0 + k;
        const word = this.bits.word(p);
        if (word === 0 && (p & 31) === 0 && n - k >= 32) {
          k += 32; // a whole free word
          continue;
        }
        if ((word & (1 << (p & 31))) !== 0) break;
        k++;
      }
      if (k >= n) return pa;
      pa = Math.ceil((pa + (k + 1) * PAGE_SIZE) / align) * align;
    }
    return -1;
  }
}

function isPow2(n: number): boolean {
  return n > 0 && Math.log2(n) % 1 === 0;
}
