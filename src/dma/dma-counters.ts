/**
 * Counters of the DMA API, one slot per DmaApi instance (one per thread that maps), so a map
 * costs a plain store and two threads never write one cache line.
 *
 * Layout of its SharedArrayBuffer:
 *   Int32 [0 .. SLOTS)            owner word per slot: 0 free, else the owner's threadId + 1
 *                                 (SLOTS × 4 bytes, rounded up to whole SLOT_BYTES: OWNER_BYTES)
 *   Float64 at byte OWNER_BYTES + SLOT_BYTES*s, per slot (256 bytes, two cache lines), written by the owner only:
 *     [0 .. FIELDS)               the counts
 *     [BASELINE .. +FIELDS)       the counts when the owner claimed the slot (what earlier owners
 *                                 left in it), stored by the claimer right after its compareExchange
 * Invariant: a slot's fields only grow while it is taken; a released slot keeps its counts, and
 * the next owner adds to them, so sums never go backwards. What one owner did is counts − baseline.
 * Readers sum every slot; while threads are mapping a sum is a snapshot, exact when all are idle.
 */
import { threadId } from 'node:worker_threads';
import { DmaError } from '../errors.js';

export interface DmaCountersHandle {
  readonly sab: SharedArrayBuffer;
}

export const DMA_COUNTER_FIELDS = [
  'maps',
  'unmaps',
  'sgMaps',
  'sgUnmaps',
  'coherentAllocs',
  'coherentFrees',
  'iommuMaps',
  'directMaps',
  'bouncedMaps',
  'syncs',
  'mappedBytes',
] as const;
export type DmaCounterField = (typeof DMA_COUNTER_FIELDS)[number];
export type DmaCounterValues = Record<DmaCounterField, number>;

const SLOTS = 64;
const SLOT_BYTES = 256; // 32 float64: one slot never shares a cache line with another
/** Float64 index in a slot of the baseline counts (see the layout). */
const BASELINE = 16;
/** The owner words come first and never overlap slot 0's fields. */
const OWNER_BYTES = Math.ceil((SLOTS * 4) / SLOT_BYTES) * SLOT_BYTES;
/** Field indices, for add(): DMA_COUNTER.maps etc. */
export const DMA_COUNTER = Object.fromEntries(DMA_COUNTER_FIELDS.map((k, i) => [k, i])) as Record<DmaCounterField, number>;

export class DmaCounters {
  readonly handle: DmaCountersHandle;
  private readonly owners: Int32Array;
  private readonly all: Float64Array;
  private slot = -1;
  /** This instance's slot, as a view: counters[FIELD] += n. */
  private mine: Float64Array | null = null;

  static create(): DmaCounters {
    return new DmaCounters({ sab: new SharedArrayBuffer(OWNER_BYTES + SLOT_BYTES * SLOTS) });
  }

  static attach(handle: DmaCountersHandle): DmaCounters {
    return new DmaCounters(handle);
  }

  private constructor(handle: DmaCountersHandle) {
    this.handle = handle;
    this.owners = new Int32Array(handle.sab, 0, SLOTS);
    this.all = new Float64Array(handle.sab, OWNER_BYTES);
  }

  /** Adds `n` to field `DMA_COUNTER[name]` in this thread's slot (claimed on first use). */
  add(field: number, n = 1): void {
    (this.mine ?? this.claim())[field] += n;
  }

  /** Gives the slot back (its counts stay in the sums). */
  release(): void {
    if (this.slot < 0) return;
    // ORDERING: the counts written above are published before the slot can be reused.
    Atomics.store(this.owners, this.slot, 0);
    this.slot = -1;
    this.mine = null;
  }

  /**
   * What thread `tid` counted in the slot(s) it holds (since it claimed them: not what earlier
   * owners left there), and frees them (their counts stay in the sums). Only for a thread that
   * has ended; null when it holds none (it released them itself).
   */
  reclaimThread(tid: number): DmaCounterValues | null {
    let out: DmaCounterValues | null = null;
    for (let s = 0; s < SLOTS; s++) {
      // ORDERING: the owner word, stored by the claimer's compareExchange before its counts.
      if (Atomics.load(this.owners, s) !== tid + 1 || s === this.slot) continue;
      out ??= Object.fromEntries(DMA_COUNTER_FIELDS.map((k) => [k, 0])) as DmaCounterValues;
      const at = s * (SLOT_BYTES / 8);
      for (let f = 0; f < DMA_COUNTER_FIELDS.length; f++) out[DMA_COUNTER_FIELDS[f]] += this.all[at + f] - this.all[at + BASELINE + f];
      Atomics.store(this.owners, s, 0);
    }
    return out;
  }

  /** Sums over every slot. */
  read(): DmaCounterValues {
    const out = Object.fromEntries(DMA_COUNTER_FIELDS.map((k) => [k, 0])) as DmaCounterValues;
    for (let s = 0; s < SLOTS; s++) {
      for (let f = 0; f < DMA_COUNTER_FIELDS.length; f++) out[DMA_COUNTER_FIELDS[f]] += this.all[s * (SLOT_BYTES / 8) + f];
    }
    return out;
  }

  /** Takes this thread's slot now (DmaApi does, before any mapping can have a side effect). */
  claim(): Float64Array {
    if (this.mine) return this.mine;
    for (let s = 0; s < SLOTS; s++) {
      // ORDERING: taking the slot happens-after the previous owner's release, so its counts are seen.
      if (Atomics.compareExchange(this.owners, s, 0, threadId + 1) === 0) {
        this.slot = s;
        this.mine = new Float64Array(this.handle.sab, OWNER_BYTES + SLOT_BYTES * s, SLOT_BYTES / 8);
        this.mine.copyWithin(BASELINE, 0, DMA_COUNTER_FIELDS.length); // what earlier owners left
        return this.mine;
      }
    }
    throw new DmaError('ENOSPC', `dma: more than ${SLOTS} threads use this machine's DMA API at once (no counter slot left)`);
  }
}
