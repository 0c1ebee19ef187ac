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
 * Invariant: STATE only moves 0 → 1 (driver), 1 → 2 (device side), 2 → 0 (driver), any → 3 (driver).
 */
export interface HandoffMailboxHandle {
  readonly sab: SharedArrayBuffer;
  readonly slots: number;
}

export interface HandoffRequest {
  slot: number;
  src: number;
  dst: number;
  len: number;
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

  static create(slots: number): HandoffMailbox {
    return new HandoffMailbox({ sab: new SharedArrayBuffer(slots * WORDS * 4), slots });
  }

  static attach(handle: HandoffMailboxHandle): HandoffMailbox {
    return new HandoffMailbox(handle);
  }

  private constructor(handle: HandoffMailboxHandle) {
    this.handle = handle;
    this.w = new Int32Array(handle.sab);
    this.f = new Float64Array(handle.sab);
  }

  /** Driver thread: posts a transfer and blocks (Atomics.wait, never spinning) until it is done; returns its status. */
  post(slot: number, src: number, dst: number, len: number): number {
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
        return { slot, src: this.f[b + 1], dst: this.f[b + 2], len: this.f[b + 3] };
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
