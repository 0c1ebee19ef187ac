/**
 * SWIOTLB: bounce buffers in low guest RAM, modeled on Linux's kernel/dma/swiotlb.c.
 *
 * A device that cannot reach a buffer (its DMA mask is too small and nothing translates for it)
 * is given a slot of this pool instead; the CPU copies the data between the original buffer and
 * the slot ("bounces" it). The pool is one run of guest RAM, allocated from the lowest RAM below
 * `limit` (default 4 GiB, so a 32-bit device reaches it), cut into 2 KiB slots (IO_TLB_SIZE).
 * Slots are grouped in segments of 128 (IO_TLB_SEGSIZE): a mapping never crosses a segment, so
 * the largest mapping is 256 KiB. Segments are grouped in areas, each with its own lock, so that
 * threads mapping at the same time do not fight over one lock: a thread starts at its own area
 * (worker_threads.threadId modulo the area count, as Linux starts at raw_smp_processor_id()) and
 * tries the others only when its own has no room; only then does map fail with 'ENOSPC'.
 *
 * As Linux does: an allocation is found by Linux's per-slot free-run counts ("list"); a mapping
 * keeps the original address's bits under the device's min_align_mask (swiotlb_align_offset),
 * padding with whole slots before it when the offset is ≥ 2 KiB; with no alignment asked at all,
 * a mapping of ≥ 4 KiB is page aligned in the pool; the original is copied into the slot at map
 * time for EVERY direction (Linux since 5.18, the fix of CVE-2022-0854 "swiotlb: fix info leak
 * with DMA_FROM_DEVICE" and its rework): a device that writes only part of a from-device buffer
 * would otherwise leave the slot's stale bytes — another mapping's, maybe another device's data —
 * to be copied back into the caller's buffer at unmap. With the original copied in first, the
 * unwritten bytes come back unchanged, as without a bounce buffer.
 * Where we differ: a pool slot beyond the device's mask is skipped rather than mapped and then
 * refused, and when only such slots are free the error is 'ERANGE'; a request needing more than
 * 128 slots (with its alignment padding) is 'EINVAL', not "buffer is full"; bad unmaps/syncs (not
 * a live mapping, another size or direction, a range outside the mapping) are 'EINVAL' with
 * nothing done, where Linux only warns (dma-debug) and copies or frees by its slot records.
 *
 * ─── Shared memory layout (one SharedArrayBuffer; only this module indexes into it) ───────────
 *
 * Header, Int32 words [0, 16):
 *   [0] MAGIC          0x5710b, written once by create
 *   [1] NSLOTS         total slots, written once by create
 *   [2] NAREAS         areas, written once by create
 *   [3] DESTROYED      0 → 1 once, by destroy (compareExchange); map/unmap/sync then fail
 *   [4] SLOTS_IN_USE   Atomics.add/sub by map/unmap after the area lock is released
 *   [5] HIGH_WATER     max SLOTS_IN_USE seen, raised with a compareExchange loop
 *   [6] LIVE_MAPPINGS  Atomics.add/sub by map/unmap
 * Counters, BigInt64 at byte 64, 8 entries:
 *   [0] BOUNCED        bytes copied either way        [1] TO_DEVICE   bytes original → slot
 *   [2] FROM_DEVICE    bytes slot → original           [3] MAPS        successful maps
 *   [4] UNMAPS         unmaps                          [5] FULL        maps refused with ENOSPC
 *   [6] SYNCS          syncForCpu/syncForDevice calls  [7] unused
 *   All written with Atomics.add by whichever thread did the work, read with Atomics.load.
 * Areas, at byte 128, 64 bytes (one cache line, 16 Int32) each:
 *   [+0] LOCK          futex mutex word (shared/futex-mutex.ts)
 *   [+1] USED          slots allocated in the area           } written only with LOCK held;
 *   [+2] INDEX         area-relative slot where the next     } USED also read by stats() with
 *                      search starts (Linux's area->index)   } Atomics.load
 * Slots, Int32, 8 words per slot, slot i of area a iff a = floor(i / slotsPerArea):
 *   [+0] LIST    free slots from i to the end of i's segment if i is free, 0 if allocated
 *   [+1] OWNER   0 if free, else head + 1 for every slot of an allocation (padding included)
 *   --- the rest is meaningful in the head slot only (the first slot the mapping's data uses) ---
 *   [+2] STATE   0 none; 1 to-device, 2 from-device, 3 bidirectional = live; 4 being unmapped
 *   [+3] SIZE    mapping size in bytes
 *   [+4] OFFSET  byte offset of the mapping's first byte in the head slot (0 .. 2047)
 *   [+5] PAD     whole padding slots allocated before the head (Linux's pad_slots)
 *   [+6] NSLOTS  slots of the allocation, padding included
 *   [+7] ALLOC   bytes allocated from the mapping's first byte (Linux's alloc_size; ≥ SIZE)
 *   Every slot word is written only with the slot's area LOCK held, and read with it held too.
 * Heads, Float64, 2 per slot, 8-byte aligned after the slots (head slot only, same lock):
 *   [+0] ORIG    the original buffer's PA of the mapping's first byte
 *   [+1] DEV     the mapping device's requester ID + 65536 * PCI domain, -1 if its bdf is not one
 *
 * Invariants (with every area lock free):
 *   - LIST[i] = 0 iff OWNER[i] ≠ 0; a free slot's LIST counts the free run from it up to the end
 *     of its segment (so LIST[i] ≥ n means slots i .. i+n-1 are free and in one segment).
 *   - segments never straddle areas (each area holds a whole number of segments), so a mapping
 *     lives in exactly one area, and that area's lock guards all of it.
 *   - USED of an area = its slots with OWNER ≠ 0; SLOTS_IN_USE = Σ USED once no map or unmap
 *     is in flight (the global counter trails the area's by one critical section, as Linux's).
 *   - a mapping's bytes [tlb, tlb + SIZE) lie inside its allocated slots; STATE = 4 is set by the
 *     one unmap that claimed it, so no other unmap or sync can use it while it is copied back.
 * The pool's RAM itself is guest memory with no ordering of its own (see guest-ram.ts): the
 * caller that hands a tlb address to a device publishes the slot's bytes with its own Atomics.
 */
import { threadId } from 'node:worker_threads';
import { DmaError, hex } from '../errors.js';
import { type Pa, GiB, PAGE_SIZE, isBitMask } from '../addresses.js';
import { dmaLimitOfBits } from './dma-device.js';
import { parseBdf, formatBdf, pciDevId, devfnOf, slotOfDevfn, fnOfDevfn } from '../pci/bdf.js';
import type { GuestRam, RamBuffer } from '../memory/guest-ram.js';
import { FutexMutex } from '../shared/futex-mutex.js';

/** Linux's IO_TLB_SHIFT / IO_TLB_SIZE: a slot is 2 KiB. */
export const IO_TLB_SHIFT = 11;
export const IO_TLB_SIZE = 1 << IO_TLB_SHIFT;
/** Linux's IO_TLB_SEGSIZE: a mapping never crosses a segment of 128 slots. */
export const IO_TLB_SEGSIZE = 128;
/** The largest mapping (swiotlb_max_mapping_size for a device without min_align_mask): 256 KiB. */
export const SWIOTLB_MAX_MAPPING = IO_TLB_SEGSIZE * IO_TLB_SIZE;
export const SWIOTLB_DEFAULT_SIZE = 4 * 1024 * 1024;
export const SWIOTLB_DEFAULT_AREAS = 4;

export type BounceDirection = 'to-device' | 'from-device' | 'bidirectional';
const DIRS: readonly BounceDirection[] = ['to-device', 'from-device', 'bidirectional'];

/** What SWIOTLB needs of a device (Linux's struct device: dma_mask, dma_parms). */
export interface SwiotlbDevice {
  readonly bdf: string;
  readonly dmaMaskBits: number;
  /** dma_set_min_align_mask: low address bits the bounce buffer must keep. Default 0. */
  readonly minAlignMask?: number;
  /** dma_set_seg_boundary: an allocation never crosses a multiple of (mask + 1). Default: none. */
  readonly segmentBoundaryMask?: number;
}

export interface SwiotlbOptions {
  /** Pool bytes; rounded up to whole 256 KiB segments, as Linux does. Default 4 MiB. */
  size?: number;
  /** Areas (locks): rounded up to a power of two, at most one per segment. Default 4. */
  areas?: number;
  /** The pool ends at or below this PA. Default 4 GiB. */
  limit?: number;
  /** The area this thread searches first. Default threadId modulo the area count. */
  homeArea?: number;
}

export interface SwiotlbHandle {
  readonly sab: SharedArrayBuffer;
  /** PA of slot 0 (page aligned). */
  readonly start: number;
  readonly nslots: number;
  readonly nareas: number;
}

export interface SwiotlbStats {
  readonly totalSlots: number;
  readonly slotsInUse: number;
  readonly highWater: number;
  readonly liveMappings: number;
  /** Every byte copied, either way. */
  readonly bouncedBytes: number;
  readonly bytesToDevice: number;
  readonly bytesFromDevice: number;
  readonly maps: number;
  readonly unmaps: number;
  readonly syncs: number;
  /** Maps refused with ENOSPC. */
  readonly full: number;
  /** Slots allocated in each area. */
  readonly areaUsed: readonly number[];
}

/** A live mapping as the pool records it (for DMA-API debugging and tests). */
export interface SwiotlbMappingInfo {
  /** The DMA address the mapping was given (its first byte in the pool). */
  readonly tlbAddr: Pa;
  readonly size: number;
  readonly origAddr: Pa;
  readonly dir: BounceDirection;
  /** First slot of the allocation (padding included) and the slot count. */
  readonly firstSlot: number;
  readonly nslots: number;
  readonly padSlots: number;
  /** Bytes allocated from tlbAddr on (Linux's alloc_size). */
  readonly allocSize: number;
  readonly area: number;
}

// Header (Int32)
const MAGIC = 0x5710b;
const H_MAGIC = 0;
const H_NSLOTS = 1;
const H_NAREAS = 2;
const H_DESTROYED = 3;
const H_IN_USE = 4;
const H_HIGH_WATER = 5;
const H_LIVE = 6;
// Counters (BigInt64 at byte 64)
const COUNTERS_BYTE = 64;
const C_BOUNCED = 0;
const C_TO_DEVICE = 1;
const C_FROM_DEVICE = 2;
const C_MAPS = 3;
const C_UNMAPS = 4;
const C_FULL = 5;
const C_SYNCS = 6;
// Areas (Int32, 16 words each from byte 128)
const AREAS_BYTE = 128;
const AREA_WORDS = 16;
const A_LOCK = 0;
const A_USED = 1;
const A_INDEX = 2;
// Slots (Int32, 8 words each)
const SLOT_WORDS = 8;
const S_LIST = 0;
const S_OWNER = 1;
const S_STATE = 2;
const S_SIZE = 3;
const S_OFFSET = 4;
const S_PAD = 5;
const S_NSLOTS = 6;
const S_ALLOC = 7;
// Heads (Float64, 2 each)
const F_ORIG = 0;
const F_DEV = 1;

const STATE_DYING = 4;

export class Swiotlb {
  readonly handle: SwiotlbHandle;
  /** PA of the first slot and the first PA after the pool. */
  readonly start: Pa;
  readonly end: Pa;
  readonly nslots: number;
  readonly nareas: number;
  readonly slotsPerArea: number;
  /** The area this thread searches first. */
  readonly homeArea: number;
  private readonly words: Int32Array;
  private readonly counters: BigInt64Array;
  private readonly heads: Float64Array;
  private readonly slotBase: number; // Int32 index of slot 0's first word
  private readonly locks: FutexMutex[];
  private readonly poolOffset: number; // RAM-buffer offset of slot 0

  /**
   * Allocates the pool from the lowest guest RAM below `limit` (page aligned, zeroed, as Linux's
   * memblock_alloc_low + memset) and its metadata in a new SharedArrayBuffer.
   */
  static create(ram: GuestRam, options: SwiotlbOptions = {}): Swiotlb {
    const { size = SWIOTLB_DEFAULT_SIZE, areas = SWIOTLB_DEFAULT_AREAS, limit = 4 * GiB } = options ?? {};
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new DmaError('EINVAL', `swiotlb: pool size ${String(size)} must be a positive integer number of bytes`);
    }
    if (!Number.isSafeInteger(areas) || areas <= 0 || areas > 1024) {
      throw new DmaError('EINVAL', `swiotlb: area count ${String(areas)} must be an integer in [1, 1024]`);
    }
    if (!Number.isSafeInteger(limit) || limit <= 0) {
      throw new DmaError('EINVAL', `swiotlb: limit ${String(limit)} must be a positive address`);
    }
    // swiotlb_adjust_nareas + limit_nareas + round_up_default_nslabs: a power of two of areas,
    // no more areas than segments, each area the same whole number of segments.
    let nsegs = Math.ceil(size / SWIOTLB_MAX_MAPPING);
    let nareas = 2 ** Math.ceil(Math.log2(areas));
    if (nsegs < nareas) nareas = nsegs;
    nsegs = Math.ceil(nsegs / nareas) * nareas;
    const nslots = nsegs * IO_TLB_SEGSIZE;
    const bytes = nslots * IO_TLB_SIZE;

    const buf = lowestRam(ram, bytes, limit);
    ram.fill(buf.pa, bytes, 0);
    const slotsByte = AREAS_BYTE + nareas * AREA_WORDS * 4;
    const headsByte = align8(slotsByte + nslots * SLOT_WORDS * 4);
    const sab = new SharedArrayBuffer(headsByte + nslots * 2 * 8);
    const w = new Int32Array(sab);
    const slotBase = slotsByte / 4;
    for (let i = 0; i < nslots; i++) w[slotBase + i * SLOT_WORDS + S_LIST] = IO_TLB_SEGSIZE - (i % IO_TLB_SEGSIZE);
    new Float64Array(sab, headsByte).fill(-1);
    w[H_NSLOTS] = nslots;
    w[H_NAREAS] = nareas;
    // ORDERING: the magic is stored last; a handle only leaves this thread after create returns.
    Atomics.store(w, H_MAGIC, MAGIC);
    return new Swiotlb(ram, { sab, start: buf.pa, nslots, nareas }, options.homeArea);
  }

  /** Attaches to a pool created in another thread (`ram` is that thread's GuestRam.attach). */
  static attach(ram: GuestRam, handle: SwiotlbHandle, options: { homeArea?: number } = {}): Swiotlb {
    return new Swiotlb(ram, handle, options?.homeArea);
  }

  private constructor(
    private readonly ram: GuestRam,
    handle: SwiotlbHandle,
    homeArea?: number,
  ) {
    this.handle = handle;
    this.words = new Int32Array(handle.sab);
    // ORDERING: pairs with create's store of the magic (written after the rest of the layout).
    if (Atomics.load(this.words, H_MAGIC) !== MAGIC || this.words[H_NSLOTS] !== handle.nslots || this.words[H_NAREAS] !== handle.nareas) {
      throw new DmaError('EINVAL', 'swiotlb: the handle is not one Swiotlb.create returned');
    }
    this.nslots = handle.nslots;
    this.nareas = handle.nareas;
    this.slotsPerArea = handle.nslots / handle.nareas;
    this.start = handle.start as Pa;
    this.end = (handle.start + handle.nslots * IO_TLB_SIZE) as Pa;
    const slotsByte = AREAS_BYTE + this.nareas * AREA_WORDS * 4;
    this.slotBase = slotsByte / 4;
    this.counters = new BigInt64Array(handle.sab, COUNTERS_BYTE, 8);
    this.heads = new Float64Array(handle.sab, align8(slotsByte + this.nslots * SLOT_WORDS * 4));
    this.locks = [];
    for (let a = 0; a < this.nareas; a++) this.locks.push(new FutexMutex(this.words, AREAS_BYTE / 4 + a * AREA_WORDS + A_LOCK));
    const home = homeArea ?? threadId;
    if (!Number.isSafeInteger(home) || home < 0) throw new DmaError('EINVAL', `swiotlb: home area ${String(home)} must be a non-negative integer`);
    this.homeArea = home % this.nareas;
    const off = ram.offsetOf(this.start, this.end - this.start);
    if (off < 0) throw new DmaError('EINVAL', `swiotlb: pool [${hex(this.start)}, ${hex(this.end)}) is not in this guest RAM (${ram.describe()})`);
    this.poolOffset = off;
  }

  /** True when pa is inside the pool (is_swiotlb_buffer). */
  isSwiotlbBuffer(pa: number): boolean {
    return pa >= this.start && pa < this.end;
  }

  /** swiotlb_max_mapping_size: 256 KiB less what min_align_mask may cost in padding. */
  maxMappingSize(dev?: Pick<SwiotlbDevice, 'minAlignMask'>): number {
    const m = dev?.minAlignMask ?? 0;
    return SWIOTLB_MAX_MAPPING - (m ? Math.ceil(m / IO_TLB_SIZE) * IO_TLB_SIZE : 0);
  }

  /**
   * swiotlb_tbl_map_single: allocates slots for [pa, pa + len), copies the original into them
   * (every direction: see the header) and returns the address in the pool to give the device.
   * `allocAlignMask` (2^n - 1) aligns the start of the allocation, as for Linux's IOMMU callers.
   */
  map(dev: SwiotlbDevice, pa: Pa | number, len: number, dir: BounceDirection, allocAlignMask = 0): Pa {
    this.checkLive('map');
    const who = checkDevice(dev);
    const minAlign = dev.minAlignMask ?? 0;
    const boundary = dev.segmentBoundaryMask;
    checkDir(dir, who);
    if (!Number.isSafeInteger(pa) || pa < 0) throw new DmaError('EINVAL', `swiotlb: map for ${who}: ${String(pa)} is not a physical address`);
    if (!Number.isSafeInteger(len) || len <= 0 || len > SWIOTLB_MAX_MAPPING) {
      throw new DmaError('EINVAL', `swiotlb: map of ${String(len)} bytes at PA ${hex(pa)} for ${who}: a bounce mapping is 1 to ${SWIOTLB_MAX_MAPPING} bytes (128 slots of 2 KiB)`);
    }
    if (!isBitMask(allocAlignMask) || allocAlignMask >= 2 ** 30) {
      throw new DmaError('EINVAL', `swiotlb: map for ${who}: alloc align mask ${String(allocAlignMask)} must be 2^n - 1`);
    }
    if (!this.ram.isRam(pa, len)) {
      throw new DmaError('EFAULT', `swiotlb: map of [${hex(pa)}, ${hex(pa + len)}) for ${who}: not all guest RAM (${this.ram.describe()})`);
    }
    if (pa < this.end && pa + len > this.start) {
      throw new DmaError('EINVAL', `swiotlb: map of [${hex(pa)}, ${hex(pa + len)}) for ${who}: the buffer overlaps the bounce pool [${hex(this.start)}, ${hex(this.end)}) itself`);
    }
    // swiotlb_align_offset: the bits of pa under min_align_mask that the slot must repeat; those
    // at or above 2 KiB that the allocation's alignment does not fix become padding slots.
    const offset = pa & minAlign & (allocAlignMask | (IO_TLB_SIZE - 1));
    const allocSize = alignUp(len + offset, allocAlignMask + 1);
    const nslots = Math.ceil(allocSize / IO_TLB_SIZE);
    if (nslots > IO_TLB_SEGSIZE) {
      throw new DmaError(
        'EINVAL',
        `swiotlb: map of ${len} bytes at PA ${hex(pa)} for ${who}: needs ${nslots} slots with its alignment (min align mask ${hex(minAlign)}, alloc align mask ${hex(allocAlignMask)}), more than the ${IO_TLB_SEGSIZE} of a segment (max mapping size for this device: ${this.maxMappingSize(dev)} bytes)`,
      );
    }
    const limit = dmaLimitOfBits(dev.dmaMaskBits);
    if (this.start + nslots * IO_TLB_SIZE > limit) {
      throw new DmaError('ERANGE', `swiotlb: map for ${who}: the bounce pool [${hex(this.start)}, ${hex(this.end)}) is beyond its ${dev.dmaMaskBits}-bit DMA mask`);
    }

    const search: SearchRequest = {
      orig: pa,
      len,
      state: DIRS.indexOf(dir) + 1,
      devKey: requesterKey(dev.bdf),
      offset,
      allocSize,
      nslots,
      allocAlignMask,
      minAlignMask: minAlign,
      limit,
      boundary: boundary === undefined || boundary >= Number.MAX_SAFE_INTEGER ? 0 : boundary + 1, // 0: none
      unreachable: false,
    };
    let first = -1;
    for (let k = 0; k < this.nareas && first < 0; k++) first = this.searchArea((this.homeArea + k) % this.nareas, search);
    if (first < 0) {
      if (search.unreachable) {
        throw new DmaError(
          'ERANGE',
          `swiotlb: map of ${len} bytes at PA ${hex(pa)} for ${who}: the only free slots are beyond its ${dev.dmaMaskBits}-bit DMA mask (${hex(limit)})`,
        );
      }
      Atomics.add(this.counters, C_FULL, 1n);
      throw new DmaError(
        'ENOSPC',
        `swiotlb: buffer is full: no ${nslots} contiguous slot(s) for ${len} bytes at PA ${hex(pa)} for ${who} (${Atomics.load(this.words, H_IN_USE)} of ${this.nslots} slots in use, ${this.nareas} areas tried)`,
      );
    }
    const tlb = this.slotAddr(first) + offset;
    // ORDERING: plain counters; add/sub are atomic, and nobody orders other memory by them.
    const used = Atomics.add(this.words, H_IN_USE, nslots) + nslots;
    let hw = Atomics.load(this.words, H_HIGH_WATER);
    while (used > hw) {
      // ORDERING: compareExchange only keeps the maximum; a lost race re-reads and retries.
      const seen = Atomics.compareExchange(this.words, H_HIGH_WATER, hw, used);
      if (seen === hw) break;
      hw = seen;
    }
    Atomics.add(this.words, H_LIVE, 1);
    Atomics.add(this.counters, C_MAPS, 1n);
    this.bounce(tlb, pa, len, true);
    return tlb as Pa;
  }

  /**
   * swiotlb_tbl_unmap_single: copies the slot back to the original (from-device, bidirectional),
   * then frees the slots. `tlbAddr`, `len` and `dir` must be those of the map. `skipCpuSync`
   * (DMA_ATTR_SKIP_CPU_SYNC) frees without copying back: the undo of a map the caller never used.
   */
  unmap(tlbAddr: Pa | number, len: number, dir: BounceDirection, dev?: Pick<SwiotlbDevice, 'bdf'>, skipCpuSync = false): void {
    this.checkLive('unmap');
    const who = dev?.bdf !== undefined ? `device ${dev.bdf}` : 'its device';
    checkDir(dir, who);
    const m = this.withMapping(tlbAddr, 'unmap', who, (head, s) => {
      const w = this.words;
      const start = this.slotAddr(head) + w[s + S_OFFSET];
      if (start !== tlbAddr) {
        throw new DmaError('EINVAL', `swiotlb: unmap of ${hex(tlbAddr)} for ${who}: not the start of a mapping (the mapping there starts at ${hex(start)}, ${w[s + S_SIZE]} bytes)`);
      }
      this.checkSame(head, s, len, dir, who, 'unmap', dev);
      w[s + S_STATE] = STATE_DYING; // claimed: a racing unmap or sync of it now fails
      return { orig: this.heads[head * 2 + F_ORIG], head };
    });
    if (dir !== 'to-device' && !skipCpuSync) this.bounce(Number(tlbAddr), m.orig, len, false);
    this.release(m.head);
  }

  /** swiotlb_sync_single_for_cpu: from-device/bidirectional copy [tlbAddr, +len) back to the original. */
  syncForCpu(tlbAddr: Pa | number, len: number, dir: BounceDirection, dev?: Pick<SwiotlbDevice, 'bdf'>): void {
    this.sync(tlbAddr, len, dir, dev, 'syncForCpu');
  }

  /** swiotlb_sync_single_for_device: to-device/bidirectional copy the original's bytes into [tlbAddr, +len). */
  syncForDevice(tlbAddr: Pa | number, len: number, dir: BounceDirection, dev?: Pick<SwiotlbDevice, 'bdf'>): void {
    this.sync(tlbAddr, len, dir, dev, 'syncForDevice');
  }

  /** The original buffer's PA for an address inside a live mapping. */
  origAddr(tlbAddr: Pa | number): Pa {
    return this.withMapping(tlbAddr, 'origAddr', 'its device', (head, s) => {
      const start = this.slotAddr(head) + this.words[s + S_OFFSET];
      const off = Number(tlbAddr) - start;
      if (off < 0 || off >= this.words[s + S_SIZE]) {
        throw new DmaError('EINVAL', `swiotlb: origAddr of ${hex(tlbAddr)}: outside the mapping [${hex(start)}, ${hex(start + this.words[s + S_SIZE])}) that owns its slot`);
      }
      return (this.heads[head * 2 + F_ORIG] + off) as Pa;
    });
  }

  /** The live mapping whose slots hold tlbAddr (padding included), or null. */
  lookup(tlbAddr: Pa | number): SwiotlbMappingInfo | null {
    if (!Number.isSafeInteger(tlbAddr) || !this.isSwiotlbBuffer(tlbAddr)) return null;
    const slot = Math.floor((tlbAddr - this.start) / IO_TLB_SIZE);
    const area = this.areaOf(slot);
    return this.locks[area].with(() => {
      const owner = this.words[this.slotBase + slot * SLOT_WORDS + S_OWNER];
      if (owner === 0) return null;
      const head = owner - 1;
      const s = this.slotBase + head * SLOT_WORDS;
      const w = this.words;
      const state = w[s + S_STATE];
      if (state < 1 || state > 3) return null;
      return {
        tlbAddr: (this.slotAddr(head) + w[s + S_OFFSET]) as Pa,
        size: w[s + S_SIZE],
        origAddr: this.heads[head * 2 + F_ORIG] as Pa,
        dir: DIRS[state - 1],
        firstSlot: head - w[s + S_PAD],
        nslots: w[s + S_NSLOTS],
        padSlots: w[s + S_PAD],
        allocSize: w[s + S_ALLOC],
        area,
      };
    });
  }

  /** Slots allocated now (one load; the trace samples it after each map and unmap). */
  slotsInUse(): number {
    // ORDERING: a statistic, as in stats().
    return Atomics.load(this.words, H_IN_USE);
  }

  stats(): SwiotlbStats {
    const w = this.words;
    const c = this.counters;
    const areaUsed: number[] = [];
    // ORDERING: statistics: each load is atomic (no torn values), none orders anything else; a
    // snapshot taken while other threads map may mix before and after one of their operations.
    for (let a = 0; a < this.nareas; a++) areaUsed.push(Atomics.load(w, AREAS_BYTE / 4 + a * AREA_WORDS + A_USED));
    return {
      totalSlots: this.nslots,
      slotsInUse: Atomics.load(w, H_IN_USE),
      highWater: Atomics.load(w, H_HIGH_WATER),
      liveMappings: Atomics.load(w, H_LIVE),
      bouncedBytes: Number(Atomics.load(c, C_BOUNCED)),
      bytesToDevice: Number(Atomics.load(c, C_TO_DEVICE)),
      bytesFromDevice: Number(Atomics.load(c, C_FROM_DEVICE)),
      maps: Number(Atomics.load(c, C_MAPS)),
      unmaps: Number(Atomics.load(c, C_UNMAPS)),
      syncs: Number(Atomics.load(c, C_SYNCS)),
      full: Number(Atomics.load(c, C_FULL)),
      areaUsed,
    };
  }

  /**
   * Gives the pool's RAM back, as swiotlb_exit tears the pool down: mappings still live are
   * dropped with it, and their number is returned (0 when everything was unmapped) so that the
   * caller can report the leak. Idempotent (later calls return 0); every thread's map, unmap and
   * sync then fail with 'ESHUTDOWN'. Call it when no other thread is inside a map, unmap or sync.
   */
  destroy(): number {
    // ORDERING: compareExchange makes exactly one caller give the RAM back.
    if (Atomics.compareExchange(this.words, H_DESTROYED, 0, 1) !== 0) return 0;
    const buf: RamBuffer = { pa: this.start, size: this.end - this.start };
    this.ram.free(buf);
    return Atomics.load(this.words, H_LIVE);
  }

  // ─── internals ──────────────────────────────────────────────────────────────────────────────

  private sync(tlbAddr: Pa | number, len: number, dir: BounceDirection, dev: Pick<SwiotlbDevice, 'bdf'> | undefined, op: 'syncForCpu' | 'syncForDevice'): void {
    this.checkLive(op);
    const who = dev?.bdf !== undefined ? `device ${dev.bdf}` : 'its device';
    checkDir(dir, who);
    if (!Number.isSafeInteger(len) || len <= 0) {
      throw new DmaError('EINVAL', `swiotlb: ${op} of ${String(len)} bytes at ${hex(Number(tlbAddr))} for ${who}: length must be a positive integer`);
    }
    const orig = this.withMapping(tlbAddr, op, who, (head, s) => {
      const w = this.words;
      const start = this.slotAddr(head) + w[s + S_OFFSET];
      const size = w[s + S_SIZE];
      if (tlbAddr < start || tlbAddr + len > start + size) {
        throw new DmaError(
          'EINVAL',
          `swiotlb: ${op} of [${hex(tlbAddr)}, ${hex(tlbAddr + len)}) for ${who}: outside the mapping [${hex(start)}, ${hex(start + size)}) that owns its slot`,
        );
      }
      const mapped = DIRS[w[s + S_STATE] - 1];
      // Linux's check_sync lets a bidirectional mapping be synced in any direction; the copy
      // follows the direction passed in (swiotlb_sync_single_for_*).
      if (mapped !== dir && mapped !== 'bidirectional') {
        throw new DmaError('EINVAL', `swiotlb: ${op} of ${hex(tlbAddr)} for ${who} as ${dir}, but it was mapped ${mapped}`);
      }
      return this.heads[head * 2 + F_ORIG] + (tlbAddr - start);
    });
    Atomics.add(this.counters, C_SYNCS, 1n);
    if (op === 'syncForCpu' && dir !== 'to-device') this.bounce(Number(tlbAddr), orig, len, false);
    if (op === 'syncForDevice' && dir !== 'from-device') this.bounce(Number(tlbAddr), orig, len, true);
  }

  /** Runs fn(head, headWordIndex) with the area lock held, for the live mapping owning tlbAddr's slot. */
  private withMapping<T>(tlbAddr: Pa | number, op: string, who: string, fn: (head: number, s: number) => T): T {
    if (!Number.isSafeInteger(tlbAddr) || !this.isSwiotlbBuffer(tlbAddr)) {
      throw new DmaError('EINVAL', `swiotlb: ${op} of ${typeof tlbAddr === 'number' ? hex(tlbAddr) : String(tlbAddr)} for ${who}: not an address in the bounce pool [${hex(this.start)}, ${hex(this.end)})`);
    }
    const slot = Math.floor((tlbAddr - this.start) / IO_TLB_SIZE);
    return this.locks[this.areaOf(slot)].with(() => {
      const owner = this.words[this.slotBase + slot * SLOT_WORDS + S_OWNER];
      const head = owner - 1;
      const s = this.slotBase + head * SLOT_WORDS;
      const state = owner === 0 ? 0 : this.words[s + S_STATE];
      if (state < 1 || state > 3) {
        const what = state === STATE_DYING ? 'its mapping is being unmapped' : 'no live mapping holds it (never mapped, or already unmapped)';
        throw new DmaError('EINVAL', `swiotlb: ${op} of ${hex(tlbAddr)} for ${who}: ${what}`);
      }
      return fn(head, s);
    });
  }

  private checkSame(head: number, s: number, len: number, dir: BounceDirection, who: string, op: string, dev?: Pick<SwiotlbDevice, 'bdf'>): void {
    const w = this.words;
    const start = this.slotAddr(head) + w[s + S_OFFSET];
    if (len !== w[s + S_SIZE]) {
      throw new DmaError('EINVAL', `swiotlb: ${op} of ${hex(start)} for ${who} with size ${String(len)}, but it was mapped with size ${w[s + S_SIZE]}`);
    }
    const mapped = DIRS[w[s + S_STATE] - 1];
    if (mapped !== dir) throw new DmaError('EINVAL', `swiotlb: ${op} of ${hex(start)} for ${who} as ${dir}, but it was mapped ${mapped}`);
    if (dev?.bdf !== undefined) {
      const key = this.heads[head * 2 + F_DEV];
      const given = requesterKey(dev.bdf);
      if (key >= 0 && given >= 0 && key !== given) {
        throw new DmaError('EINVAL', `swiotlb: ${op} of ${hex(start)} for device ${dev.bdf}, but it was mapped for device ${formatKey(key)}`);
      }
    }
  }

  /**
   * swiotlb_search_pool_area: one area, under its lock. Returns the first slot of the allocation
   * (padding included) and commits it with the mapping's record, or -1 with nothing changed.
   */
  private searchArea(a: number, r: SearchRequest): number {
    let alignMask = r.allocAlignMask;
    let iotlbMask = r.minAlignMask;
    // Linux keeps mappings of ≥ PAGE_SIZE page aligned when nobody asked for an alignment.
    if (alignMask === 0 && iotlbMask === 0 && r.allocSize >= PAGE_SIZE) alignMask = PAGE_SIZE - 1;
    alignMask |= IO_TLB_SIZE - 1;
    iotlbMask &= ~alignMask; // the bits below the allocation's alignment are kept by the offset
    const stride = (Math.max(alignMask, iotlbMask) >>> IO_TLB_SHIFT) + 1;
    const n = r.nslots;
    const per = this.slotsPerArea;
    const w = this.words;
    const aw = AREAS_BYTE / 4 + a * AREA_WORDS;
    const base = a * per;
    const lock = this.locks[a];
    lock.lock();
    try {
      if (n > per - w[aw + A_USED]) return -1;
      let index = w[aw + A_INDEX];
      let slot = -1;
      for (let checked = 0; checked < per; ) {
        const i = base + index;
        const addr = this.slotAddr(i);
        if ((addr & alignMask) !== 0 || (addr & iotlbMask) !== (r.orig & iotlbMask)) {
          index = index + 1 >= per ? 0 : index + 1;
          checked++;
          continue;
        }
        if (!crossesBoundary(addr, n * IO_TLB_SIZE, r.boundary) && w[this.slotBase + i * SLOT_WORDS + S_LIST] >= n) {
          if (addr + n * IO_TLB_SIZE <= r.limit) {
            slot = i;
            break;
          }
          r.unreachable = true;
        }
        index = index + stride >= per ? 0 : index + stride;
        checked += stride;
      }
      if (slot < 0) return -1;
      // Taken: LIST 0 and the owner in every slot; the mapping's record in its head, the first
      // slot after the padding (Linux's pad_slots).
      const pad = r.offset >>> IO_TLB_SHIFT;
      const head = slot + pad;
      for (let i = slot; i < slot + n; i++) {
        const s = this.slotBase + i * SLOT_WORDS;
        w[s + S_LIST] = 0;
        w[s + S_OWNER] = head + 1;
      }
      const hs = this.slotBase + head * SLOT_WORDS;
      w[hs + S_STATE] = r.state;
      w[hs + S_SIZE] = r.len;
      w[hs + S_OFFSET] = r.offset & (IO_TLB_SIZE - 1);
      w[hs + S_PAD] = pad;
      w[hs + S_NSLOTS] = n;
      w[hs + S_ALLOC] = r.allocSize - r.offset;
      this.heads[head * 2 + F_ORIG] = r.orig;
      this.heads[head * 2 + F_DEV] = r.devKey;
      // The free run just before the allocation now ends at it: renumber it, inside the segment.
      const segStart = slot - (slot % IO_TLB_SEGSIZE);
      let count = 0;
      for (let i = slot - 1; i >= segStart && w[this.slotBase + i * SLOT_WORDS + S_LIST] !== 0; i--) {
        w[this.slotBase + i * SLOT_WORDS + S_LIST] = ++count;
      }
      w[aw + A_INDEX] = index + n >= per ? 0 : index + n;
      // ORDERING: USED is written under the lock; the store is atomic only for stats() readers.
      Atomics.store(w, aw + A_USED, w[aw + A_USED] + n);
      return slot;
    } finally {
      lock.unlock();
    }
  }

  /** swiotlb_release_slots: frees the allocation whose head is `head`, merging free runs. */
  private release(head: number): void {
    const a = this.areaOf(head);
    const w = this.words;
    const aw = AREAS_BYTE / 4 + a * AREA_WORDS;
    let n = 0;
    this.locks[a].with(() => {
      const hs = this.slotBase + head * SLOT_WORDS;
      const first = head - w[hs + S_PAD];
      n = w[hs + S_NSLOTS];
      const segEnd = first - (first % IO_TLB_SEGSIZE) + IO_TLB_SEGSIZE;
      let count = first + n < segEnd ? w[this.slotBase + (first + n) * SLOT_WORDS + S_LIST] : 0;
      for (let i = first + n - 1; i >= first; i--) {
        const s = this.slotBase + i * SLOT_WORDS;
        w[s + S_LIST] = ++count;
        w[s + S_OWNER] = 0;
      }
      w[hs + S_STATE] = w[hs + S_SIZE] = w[hs + S_OFFSET] = w[hs + S_PAD] = w[hs + S_NSLOTS] = w[hs + S_ALLOC] = 0;
      this.heads[head * 2 + F_ORIG] = -1;
      this.heads[head * 2 + F_DEV] = -1;
      const segStart = segEnd - IO_TLB_SEGSIZE;
      for (let i = first - 1; i >= segStart && w[this.slotBase + i * SLOT_WORDS + S_LIST] !== 0; i--) {
        w[this.slotBase + i * SLOT_WORDS + S_LIST] = ++count;
      }
      // ORDERING: as in searchArea, an atomic store only for stats() readers.
      Atomics.store(w, aw + A_USED, w[aw + A_USED] - n);
    });
    // ORDERING: plain counters (see map).
    Atomics.sub(w, H_IN_USE, n);
    Atomics.sub(w, H_LIVE, 1);
    Atomics.add(this.counters, C_UNMAPS, 1n);
  }

  /** swiotlb_bounce: copies len bytes between the slot at tlb and the original at orig. */
  private bounce(tlb: number, orig: number, len: number, toSlot: boolean): void {
    const ram = this.ram;
    const slotOff = this.poolOffset + (tlb - this.start);
    let done = 0;
    while (done < len) {
      // The original may span RAM regions; the pool lies in one.
      const p = orig + done;
      const r = ram.regions.find((x) => p >= x.base && p < x.base + x.size);
      if (!r) throw new DmaError('EFAULT', `swiotlb: bounce of PA ${hex(p)}: not guest RAM`); // checked at map: unreachable
      const n = Math.min(len - done, r.base + r.size - p);
      const off = r.offset + (p - r.base);
      if (toSlot) ram.copy(slotOff + done, off, n);
      else ram.copy(off, slotOff + done, n);
      done += n;
    }
    const b = BigInt(len);
    // ORDERING: statistics only.
    Atomics.add(this.counters, C_BOUNCED, b);
    Atomics.add(this.counters, toSlot ? C_TO_DEVICE : C_FROM_DEVICE, b);
  }

  private checkLive(op: string): void {
    // ORDERING: pairs with destroy's compareExchange; a call racing with destroy is the caller's bug.
    if (Atomics.load(this.words, H_DESTROYED) !== 0) {
      throw new DmaError('ESHUTDOWN', `swiotlb: ${op} after the bounce pool [${hex(this.start)}, ${hex(this.end)}) was destroyed`);
    }
  }

  private slotAddr(i: number): number {
    return this.start + i * IO_TLB_SIZE;
  }

  private areaOf(slot: number): number {
    return Math.floor(slot / this.slotsPerArea);
  }
}

interface SearchRequest {
  orig: number;
  allocSize: number;
  nslots: number;
  allocAlignMask: number;
  minAlignMask: number;
  /** First PA the device cannot reach. */
  limit: number;
  /** Segment boundary (mask + 1), 0 for none. */
  boundary: number;
  /** Set when a free run was found but lay beyond the limit. */
  unreachable: boolean;
  /** The mapping's record: its size, STATE (direction), device key and swiotlb_align_offset. */
  len: number;
  state: number;
  devKey: number;
  offset: number;
}

/** The lowest page-aligned run of `bytes` below `limit`, trying regions from the lowest. */
function lowestRam(ram: GuestRam, bytes: number, limit: number): RamBuffer {
  for (const r of [...ram.regions].sort((x, y) => x.base - y.base)) {
    const below = Math.min(limit, r.base + r.size);
    // Never page 0 (x86 keeps low memory for firmware): so no bounced mapping gets DMA address 0,
    // as no IOVA does either.
    const above = Math.max(r.base, 4096);
    if (below - above < bytes) continue;
    try {
      return ram.alloc(bytes, { above, below });
    } catch (e) {
      if (!(e instanceof DmaError) || e.code !== 'ENOMEM') throw e;
    }
  }
  throw new DmaError('ENOMEM', `swiotlb: no ${bytes} contiguous free bytes of guest RAM below ${hex(limit)} for the bounce pool (${ram.describe()}, ${ram.pagesInUse()} pages in use)`);
}

function checkDevice(dev: SwiotlbDevice): string {
  if (!dev || typeof dev !== 'object' || typeof dev.bdf !== 'string') {
    throw new DmaError('EINVAL', 'swiotlb: the device must be { bdf, dmaMaskBits, minAlignMask? }');
  }
  const who = `device ${dev.bdf}`;
  if (!Number.isInteger(dev.dmaMaskBits) || dev.dmaMaskBits < 1 || dev.dmaMaskBits > 64) {
    throw new DmaError('EINVAL', `swiotlb: ${who}: DMA mask of ${String(dev.dmaMaskBits)} bits must be an integer in [1, 64]`);
  }
  const m = dev.minAlignMask ?? 0;
  if (!isBitMask(m) || m > 0xffff) throw new DmaError('EINVAL', `swiotlb: ${who}: min align mask ${String(m)} must be 2^n - 1 and at most 0xffff`);
  const b = dev.segmentBoundaryMask;
  if (b !== undefined && !(typeof b === 'number' && b >= Number.MAX_SAFE_INTEGER) && (!isBitMask(b) || b === 0)) {
    throw new DmaError('EINVAL', `swiotlb: ${who}: segment boundary mask ${String(b)} must be 2^n - 1`);
  }
  return who;
}

function checkDir(dir: BounceDirection, who: string): void {
  if (!DIRS.includes(dir)) throw new DmaError('EINVAL', `swiotlb: direction ${String(dir)} for ${who} must be one of ${DIRS.join(', ')}`);
}

/** 2^bits, the first address the mask cannot express (exact up to 2^53). */
/** iommu_is_span_boundary on addresses: [addr, addr + len) crosses a multiple of `boundary`. */
function crossesBoundary(addr: number, len: number, boundary: number): boolean {
  if (boundary === 0 || boundary >= Number.MAX_SAFE_INTEGER) return false;
  return Math.floor(addr / boundary) !== Math.floor((addr + len - 1) / boundary);
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

function align8(n: number): number {
  return (n + 7) & ~7;
}

/** "[dddd:]bb:dd.f" → domain * 65536 + requester ID; -1 when bdf is not a PCI address. */
/** Devices map over and over: their keys are parsed once (the cache stays small: one entry per BDF string seen). */
const requesterKeys = new Map<string, number>();
function requesterKey(bdf: string): number {
  let k = requesterKeys.get(bdf);
  if (k === undefined) {
    k = parseRequesterKey(bdf);
    if (requesterKeys.size < 4096) requesterKeys.set(bdf, k);
  }
  return k;
}

function parseRequesterKey(bdf: string): number {
  const b = parseBdf(bdf);
  return b ? b.domain * 65536 + pciDevId(b.bus, devfnOf(b.slot, b.fn)) : -1;
}

function formatKey(k: number): string {
  const rid = k % 65536;
  return formatBdf({ domain: Math.floor(k / 65536), bus: rid >> 8, slot: slotOfDevfn(rid & 0xff), fn: fnOfDevfn(rid & 0xff) });
}
