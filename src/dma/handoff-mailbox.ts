/**
 * A mailbox through which a driver thread hands a mapped transfer to whoever drives the device
 * (the device's submission queue belongs to the main thread) and waits until it was done: the
 * multithreaded-driver pattern of "map, let the device DMA, unmap" with mapping and unmapping in
 * the driver thread.
 *
 * Layout (one slot per driver thread; its own SharedArrayBuffer):
 *   Int32 [slot * 8 + 0] STATE: 0 empty, 1 posted (by the driver), 2 done (by the device side),
 *                               3 closed (by the driver: no more posts)
 *   Float64 [slot * 4 + 1 .. 3] src DMA address, dst DMA address, length — written by the
 *                               driver before STATE = 1
 *   Int32 [slot * 8 + 1] result status written by the device side before STATE = 2 (0 = ok)
 *   With maxSegments > 0, after every slot's header, per slot (2 + 4 * maxSegments) Float64:
 *                               read count, write count, then maxSegments (addr, len) pairs the
 *                               device reads, then maxSegments pairs it writes — written by the
 *                               driver before STATE = 1 (postIo); src/dst above are the first ones
 * Invariant: STATE only moves 0 → 1 (driver), 1 → 2 (device side), 2 → 0 (driver), any → 3 (driver).
 */
import { DmaError } from '../errors.js';

export interface HandoffMailboxHandle {
  readonly sab: SharedArrayBuffer;
  readonly slots: number;
  /** Segments per side a postIo may carry (0: post() only, one address per side). */
  readonly maxSegments?: number;
}

/** One side's DMA segments of a transfer. */
export interface HandoffSegment {
  addr: number;
  len: number;
}

export interface HandoffRequest {
  slot: number;
  src: number;
  dst: number;
  len: number;
  /** What the device reads and writes (one segment each for post()). */
  reads: HandoffSegment[];
  writes: HandoffSegment[];
}

const EMPTY = 0;
const POSTED = 1;
const DONE = 2;
const CLOSED = 3;
const WORDS = 8; // 32 bytes per slot

export class HandoffMailbox {
  readonly handle: HandoffMailboxHandle;
  private readonly w: Int32Array;
  private readonly f: Float64Array;
  private readonly maxSegments: number;

  static create(slots: number, options: { maxSegments?: number } = {}): HandoffMailbox {
    const maxSegments = options.maxSegments ?? 0;
    return new HandoffMailbox({ sab: new SharedArrayBuffer(slots * WORDS * 4 + slots * (2 + 4 * maxSegments) * 8), slots, maxSegments });
  }

  static attach(handle: HandoffMailboxHandle): HandoffMailbox {
    return new HandoffMailbox(handle);
  }

  private constructor(handle: HandoffMailboxHandle) {
    this.handle = handle;
    this.w = new Int32Array(handle.sab);
    this.f = new Float64Array(handle.sab);
    this.maxSegments = handle.maxSegments ?? 0;
  }

  /** Float64 index of a slot's segment area. */
  private segs(slot: number): number {
    return (this.handle.slots * WORDS) / 2 + slot * (2 + 4 * this.maxSegments);
  }

  /**
   * Driver thread: posts a transfer of `len` bytes over segment lists (scatter-gather on both
   * sides) and blocks until it is done; returns its status.
   */
  postIo(slot: number, len: number, reads: readonly HandoffSegment[], writes: readonly HandoffSegment[]): number {
    if (reads.length < 1 || writes.length < 1 || reads.length > this.maxSegments || writes.length > this.maxSegments) {
      throw new DmaError('EINVAL', `handoff mailbox: slot ${slot}: ${reads.length} read and ${writes.length} write segments; each side needs 1 to ${this.maxSegments}`);
    }
    const b = this.segs(slot);
    this.f[b] = reads.length;
    this.f[b + 1] = writes.length;
    reads.forEach((r, i) => {
      this.f[b + 2 + 2 * i] = r.addr;
      this.f[b + 3 + 2 * i] = r.len;
    });
    const w0 = b + 2 + 2 * this.maxSegments;
    writes.forEach((w, i) => {
      this.f[w0 + 2 * i] = w.addr;
      this.f[w0 + 1 + 2 * i] = w.len;
    });
    // ORDERING: the segment words are plain stores before post()'s STATE = 1 store publishes them.
    return this.publish(slot, reads[0].addr, writes[0].addr, len);
  }

  /** Driver thread: posts a transfer and blocks (Atomics.wait, never spinning) until it is done; returns its status. */
  post(slot: number, src: number, dst: number, len: number): number {
    if (this.maxSegments > 0) return this.postIo(slot, len, [{ addr: src, len }], [{ addr: dst, len }]);
    return this.publish(slot, src, dst, len);
  }

  private publish(slot: number, src: number, dst: number, len: number): number {
    const b = slot * (WORDS / 2);
    this.f[b + 1] = src;
    this.f[b + 2] = dst;
    this.f[b + 3] = len;
    // ORDERING: the request words are written before STATE = 1 publishes them.
    Atomics.store(this.w, slot * WORDS, POSTED);
    Atomics.notify(this.w, slot * WORDS);
    while (Atomics.load(this.w, slot * WORDS) === POSTED) Atomics.wait(this.w, slot * WORDS, POSTED, 1000);
    const status = this.w[slot * WORDS + 1];
    Atomics.store(this.w, slot * WORDS, EMPTY);
    return status;
  }

  /** Driver thread: no more posts from this slot. */
  close(slot: number): void {
    Atomics.store(this.w, slot * WORDS, CLOSED);
    Atomics.notify(this.w, slot * WORDS);
  }

  /** Device side (main thread): the next posted request of `slot`, or null once the slot is closed. */
  async take(slot: number): Promise<HandoffRequest | null> {
    for (;;) {
      const s = Atomics.load(this.w, slot * WORDS);
      if (s === CLOSED) return null;
      if (s === POSTED) {
        // ORDERING: STATE = 1 was read with Atomics.load, so the request words written before it are visible.
        const b = slot * (WORDS / 2);
        const src = this.f[b + 1];
        const dst = this.f[b + 2];
        const len = this.f[b + 3];
        if (this.maxSegments === 0) return { slot, src, dst, len, reads: [{ addr: src, len }], writes: [{ addr: dst, len }] };
        const g = this.segs(slot);
        const list = (at: number, n: number) => Array.from({ length: n }, (_, i) => ({ addr: this.f[at + 2 * i], len: this.f[at + 1 + 2 * i] }));
        return { slot, src, dst, len, reads: list(g + 2, this.f[g]), writes: list(g + 2 + 2 * this.maxSegments, this.f[g + 1]) };
      }
      await Atomics.waitAsync(this.w, slot * WORDS, s, 1000).value;
    }
  }

  /** Device side: marks the slot's request done with `status` (0 = ok) and wakes its driver. */
  complete(slot: number, status: number): void {
    this.w[slot * WORDS + 1] = status;
    // ORDERING: the status is written before STATE = 2 publishes it.
    Atomics.store(this.w, slot * WORDS, DONE);
    Atomics.notify(this.w, slot * WORDS);
  }
}
