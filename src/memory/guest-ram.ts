/**
 * Guest RAM: the emulated machine's physical memory, one SharedArrayBuffer for every region.
 *
 * Layout of the RAM buffer: the regions back to back, in ascending guest-physical order, each
 * starting at a page-aligned byte offset. Region r holds PAs [base_r, base_r + size_r) at offsets
 * [offset_r, offset_r + size_r). Nothing else lives in it: every byte is guest memory.
 * Writers: any thread (CPU accesses through read/write, device DMA through the DMA engine).
 * Guest RAM has no ordering of its own, as real RAM has none: rings and doorbells that publish
 * data written here carry their own Atomics.
 *
 * Typed arrays hold at most 2^32 elements, so RAM larger than that is seen through windows of
 * 1 GiB; windows and regions are page aligned, so a page-bounded access never crosses a window.
 * The page-frame allocator lives beside it (frame-allocator.ts) in its own buffer.
 */
import { DmaError, hex } from '../errors.js';
import { type Pa, PAGE_SIZE, GiB, isPageAligned } from '../addresses.js';
import { FrameAllocator, type AllocOptions, type FrameAllocatorHandle } from './frame-allocator.js';
import { createSharedMemory, memmoveFor, WASM_MEMORY_MAX_BYTES, type Memmove } from './wasm-memmove.js';

export interface RamRegionConfig {
  base: number;
  size: number;
}

export interface RamRegion {
  readonly base: Pa;
  readonly size: number;
  /** Byte offset of the region in the RAM buffer. */
  readonly offset: number;
}

export interface GuestRamHandle {
  readonly sab: SharedArrayBuffer;
  /** The shared wasm memory whose buffer `sab` is, when RAM fits one (≤ 4 GiB). */
  readonly memory: WebAssembly.Memory | null;
  readonly regions: readonly RamRegion[];
  readonly frames: FrameAllocatorHandle;
}

/** A block of guest RAM handed out by `ram.alloc`. */
export interface RamBuffer {
  readonly pa: Pa;
  readonly size: number;
}

/** PAs must fit in a page-table entry's 28-bit frame number. */
export const MAX_PA = 2 ** 40;
/** The largest fixed SharedArrayBuffer this host gives. */
export const MAX_RAM_BYTES = 16 * GiB;
const WINDOW_SHIFT = 30;
const WINDOW_SIZE = 2 ** WINDOW_SHIFT;
/** Below this, a misaligned copy is not worth the detour through the scratch buffer. */
const MISALIGNED_DETOUR_MIN = 128;

export const DEFAULT_RAM: readonly RamRegionConfig[] = [
  { base: 0, size: 64 * 1024 * 1024 },
  { base: 4 * GiB, size: 64 * 1024 * 1024 },
];

function checkRegions(config: readonly RamRegionConfig[]): void {
  if (!Array.isArray(config) || config.length === 0) {
    throw new DmaError('EINVAL', 'ram: at least one region { base, size } is required');
  }
  let total = 0;
  config.forEach((r, i) => {
    const where = `ram[${i}]`;
    if (r === null || typeof r !== 'object') throw new DmaError('EINVAL', `${where}: must be { base, size }`);
    for (const k of ['base', 'size'] as const) {
      const v = r[k];
      if (!Number.isSafeInteger(v) || v < 0) {
        throw new DmaError('EINVAL', `${where}.${k} = ${String(v)}: must be a non-negative integer`);
      }
      if (!isPageAligned(v)) {
        throw new DmaError('EINVAL', `${where}.${k} = ${hex(v)}: must be a multiple of the 4 KiB page size`);
      }
    }
    if (r.size === 0) throw new DmaError('EINVAL', `${where}.size: a region cannot be empty`);
    if (r.base + r.size > MAX_PA) {
      throw new DmaError('EINVAL', `${where}: [${hex(r.base)}, ${hex(r.base + r.size)}) ends beyond the 40-bit physical address space`);
    }
    total += r.size;
  });
  if (total > MAX_RAM_BYTES) {
    throw new DmaError('EINVAL', `ram: ${total} bytes in all is more than this host's ${MAX_RAM_BYTES}-byte shared buffer limit`);
  }
  const sorted = [...config].sort((a, b) => a.base - b.base);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1];
    if (sorted[i].base < prev.base + prev.size) {
      throw new DmaError('EINVAL', `ram: region at ${hex(sorted[i].base)} overlaps region [${hex(prev.base)}, ${hex(prev.base + prev.size)})`);
    }
  }
}

export class GuestRam {
  readonly handle: GuestRamHandle;
  readonly regions: readonly RamRegion[];
  /** Total bytes of RAM (the buffer's size). */
  readonly size: number;
  /** Byte views of the RAM buffer; one when it fits a typed array, else 1 GiB windows. */
  private readonly windows: Uint8Array[];
  private readonly single: Uint8Array | null;
  private readonly frames: FrameAllocator;
  /** This thread's wasm memmove over RAM, when RAM is a wasm memory. */
  private readonly memmove: Memmove | null;
  /**
   * A DataView over all of RAM when it fits one typed array (null for windowed RAM), indexed by
   * buffer offset: lets a device read and write small ring entries in place, without a copy.
   */
  readonly dataView: DataView | null;
  // Per-thread scratch (non-shared, so copies inside it are plain memmoves at any alignment).
  private scratch = new Uint8Array(0);

  /**
   * `backing: 'wasm'` (the default when RAM fits 4 GiB) puts RAM in a shared WebAssembly.Memory
   * so that device copies are real memmoves; 'sab' keeps a plain SharedArrayBuffer.
   */
  static create(config: readonly RamRegionConfig[] = DEFAULT_RAM, options: { backing?: 'wasm' | 'sab' } = {}): GuestRam {
    checkRegions(config);
    const sorted = [...config].sort((a, b) => a.base - b.base);
    let offset = 0;
    const regions: RamRegion[] = sorted.map((r) => {
      const region = { base: r.base as Pa, size: r.size, offset };
      offset += r.size;
      return region;
    });
    const wasm = (options.backing ?? 'wasm') === 'wasm' && offset <= WASM_MEMORY_MAX_BYTES;
    const memory = wasm ? createSharedMemory(offset) : null;
    const sab = memory ? (memory.buffer as SharedArrayBuffer) : new SharedArrayBuffer(offset);
    const frames = FrameAllocator.create(regions);
    return new GuestRam({ sab, memory, regions, frames: frames.handle });
  }

  static attach(handle: GuestRamHandle): GuestRam {
    return new GuestRam(handle);
  }

  private constructor(handle: GuestRamHandle) {
    this.handle = handle;
    this.regions = handle.regions;
    const last = handle.regions[handle.regions.length - 1];
    this.size = last.offset + last.size; // the buffer may be larger (wasm pages are 64 KiB)
    this.memmove = handle.memory ? memmoveFor(handle.memory) : null;
    if (this.size <= 2 ** 32) {
      this.single = new Uint8Array(handle.sab);
      this.dataView = this.size < 2 ** 31 ? new DataView(handle.sab) : null;
      this.windows = [this.single];
    } else {
      this.single = null;
      this.dataView = null;
      this.windows = [];
      for (let off = 0; off < this.size; off += WINDOW_SIZE) {
        this.windows.push(new Uint8Array(handle.sab, off, Math.min(WINDOW_SIZE, this.size - off)));
      }
    }
    this.frames = FrameAllocator.attach(handle.frames, handle.regions);
  }

  /** Allocates page-aligned RAM: `{ below }` keeps pa + size ≤ below, `{ above }` keeps pa ≥ above. */
  alloc(size: number, options: AllocOptions = {}): RamBuffer {
    return this.frames.alloc(size, options);
  }

  free(buf: RamBuffer): void {
    this.frames.free(buf);
  }

  /** Pages handed out by alloc and not yet freed. */
  pagesInUse(): number {
    return this.frames.pagesInUse();
  }

  /**
   * Byte offset in the RAM buffer of [pa, pa + len), or -1 when that range is not entirely inside
   * one region. The device data path calls this once per page-bounded chunk.
   */
  offsetOf(pa: number, len: number): number {
    const rs = this.regions;
    for (let i = 0; i < rs.length; i++) {
      const r = rs[i];
      const d = pa - r.base;
      if (d >= 0 && d + len <= r.size) return r.offset + d;
    }
    return -1;
  }

  /** True when every byte of [pa, pa + len) is RAM. */
  isRam(pa: number, len: number): boolean {
    // Most buffers lie inside one region: no span list for them (every DMA API map asks).
    return this.offsetOf(pa, len) >= 0 || this.spans(pa, len, null) !== null;
  }

  /** Copies n bytes of guest RAM out (a CPU read). */
  read(pa: Pa | number, n: number): Uint8Array {
    const out = new Uint8Array(n);
    const spans = this.checkedSpans(pa, n, 'read');
    let k = 0;
    for (const [off, len] of spans) {
      out.set(this.view(off, len), k);
      k += len;
    }
    return out;
  }

  /** Copies bytes into guest RAM (a CPU write). */
  write(pa: Pa | number, bytes: ArrayLike<number>): void {
    const src = bytes instanceof Uint8Array ? bytes : Uint8Array.from(bytes);
    const spans = this.checkedSpans(pa, src.length, 'write');
    let k = 0;
    for (const [off, len] of spans) {
      this.view(off, len).set(src.subarray(k, k + len));
      k += len;
    }
  }

  /** Sets n bytes at pa to `value`. */
  fill(pa: Pa | number, n: number, value: number): void {
    for (const [off, len] of this.checkedSpans(pa, n, 'fill')) this.view(off, len).fill(value);
  }

  /** Sets len bytes at a buffer offset to `value` (the range must lie in one window). */
  fillOffset(offset: number, len: number, value: number): void {
    if (this.memmove !== null) this.memmove.fill(offset | 0, value | 0, len | 0);
    else this.view(offset, len).fill(value);
  }

  /** A view of [offset, offset + len) of the RAM buffer; the range must lie in one window. */
  view(offset: number, len: number): Uint8Array {
    if (this.single) return this.single.subarray(offset, offset + len);
    const w = Math.floor(offset / WINDOW_SIZE);
    const base = w * WINDOW_SIZE;
    if (offset + len > base + WINDOW_SIZE) {
      throw new DmaError('EINVAL', `RAM offset ${hex(offset)}+${len} crosses a 1 GiB window`);
    }
    return this.windows[w].subarray(offset - base, offset - base + len);
  }

  /**
   * Copies len bytes inside the RAM buffer, by offsets, as memmove does. RAM in a wasm memory
   * uses wasm's memory.copy (a real memmove). Otherwise copies whose source and destination are
   * not 8-byte aligned to each other go through a non-shared scratch buffer: shared-memory
   * copies fall back to bytes when misaligned (~3 GB/s), while the detour (aligned in, memmove
   * inside the scratch, aligned out) keeps ~10 GB/s.
   */
  copy(dstOff: number, srcOff: number, len: number): void {
    const mm = this.memmove;
    if (mm !== null) {
      mm.copy(dstOff | 0, srcOff | 0, len | 0); // int32 arguments (wasm reads them unsigned) take the fast call path
      return;
    }
    const u8 = this.single;
    if (u8 !== null) {
      if (((dstOff - srcOff) & 7) === 0 || len < MISALIGNED_DETOUR_MIN) {
        u8.copyWithin(dstOff, srcOff, srcOff + len);
      } else {
        this.copyMisaligned(u8, dstOff, u8, srcOff, len);
      }
      return;
    }
    // Windowed RAM: split where either side crosses a window; memmove order for overlaps.
    const backward = dstOff > srcOff && dstOff < srcOff + len;
    let done = 0;
    while (done < len) {
      const left = len - done;
      const s = backward ? srcOff + left : srcOff + done;
      const d = backward ? dstOff + left : dstOff + done;
      let n: number;
      if (backward) {
        n = Math.min(left, ((s - 1) % WINDOW_SIZE) + 1, ((d - 1) % WINDOW_SIZE) + 1);
        this.copyWithinWindows(d - n, s - n, n);
      } else {
        n = Math.min(left, WINDOW_SIZE - (s % WINDOW_SIZE), WINDOW_SIZE - (d % WINDOW_SIZE));
        this.copyWithinWindows(d, s, n);
      }
      done += n;
    }
  }

  private copyWithinWindows(dstOff: number, srcOff: number, len: number): void {
    const sw = Math.floor(srcOff / WINDOW_SIZE);
    const dw = Math.floor(dstOff / WINDOW_SIZE);
    const src = this.windows[sw];
    const dst = this.windows[dw];
    const so = srcOff - sw * WINDOW_SIZE;
    const dOff = dstOff - dw * WINDOW_SIZE;
    if (((dstOff - srcOff) & 7) !== 0 && len >= MISALIGNED_DETOUR_MIN) {
      this.copyMisaligned(dst, dOff, src, so, len);
    } else if (sw === dw) {
      src.copyWithin(dOff, so, so + len);
    } else {
      dst.set(src.subarray(so, so + len), dOff);
    }
  }

  private copyMisaligned(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number, len: number): void {
    const CHUNK = 256 * 1024;
    if (this.scratch.length < 2 * CHUNK + 32) this.scratch = new Uint8Array(2 * CHUNK + 32);
    const sc = this.scratch;
    // memmove semantics: copy overlapping ranges from the end when the destination is above.
    const backward = dst.buffer === src.buffer && dst.byteOffset + dstOff > src.byteOffset + srcOff;
    let done = 0;
    while (done < len) {
      const n = Math.min(CHUNK, len - done);
      const at = backward ? len - done - n : done;
      const s = srcOff + at;
      const d = dstOff + at;
      const inA = (src.byteOffset + s) & 7; // scratch position aligned like the source
      const outA = 16 + CHUNK + ((dst.byteOffset + d) & 7); // and like the destination
      sc.set(src.subarray(s, s + n), inA);
      sc.copyWithin(outA, inA, inA + n);
      dst.set(sc.subarray(outA, outA + n), d);
      done += n;
    }
  }

  /** [offset, len] pieces of [pa, pa + n), split at region and window edges; null if not all RAM. */
  private spans(pa: number, n: number, out: Array<[number, number]> | null): Array<[number, number]> | null {
    const res = out ?? [];
    let p = pa;
    let left = n;
    while (left > 0) {
      const r = this.regions.find((x) => p >= x.base && p < x.base + x.size);
      if (!r) return null;
      const off = r.offset + (p - r.base);
      let len = Math.min(left, r.base + r.size - p);
      if (!this.single) len = Math.min(len, WINDOW_SIZE - (off % WINDOW_SIZE));
      res.push([off, len]);
      p += len;
      left -= len;
    }
    return res;
  }

  private checkedSpans(pa: number, n: number, op: string): Array<[number, number]> {
    if (!Number.isSafeInteger(pa) || pa < 0) throw new DmaError('EINVAL', `ram.${op}: address ${String(pa)} is not a valid physical address`);
    if (!Number.isSafeInteger(n) || n < 0) throw new DmaError('EINVAL', `ram.${op}: length ${String(n)} at PA ${hex(pa)} is not a valid length`);
    const s = this.spans(pa, n, null);
    if (s === null) {
      const bad = this.firstHole(pa, n);
      throw new DmaError(
        'EFAULT',
        `ram.${op}: [${hex(pa)}, ${hex(pa + n)}) is not all guest RAM: PA ${hex(bad)} is outside every region (${this.describe()})`,
      );
    }
    return s;
  }

  private firstHole(pa: number, n: number): number {
    let p = pa;
    for (;;) {
      const r = this.regions.find((x) => p >= x.base && p < x.base + x.size);
      if (!r || r.base + r.size >= pa + n) return r ? pa + n : p;
      p = r.base + r.size;
    }
  }

  /** "[0x0, 0x4000000) [0x100000000, 0x104000000)" */
  describe(): string {
    return this.regions.map((r) => `[${hex(r.base)}, ${hex(r.base + r.size)})`).join(' ');
  }
}

export { PAGE_SIZE };
