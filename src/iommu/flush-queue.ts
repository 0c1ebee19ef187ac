/**
 * The flush queue of lazy invalidation (Linux's iova flush queue, iommu.strict=0): IOVA ranges
 * whose PTEs are cleared but whose IOTLB entries may still be cached. They go back to the IOVA
 * allocator only after a flush-all invalidation that every device has observed.
 *
 * Layout (Int32 words of its own SharedArrayBuffer):
 *   [0] futex mutex   [1] count   [2] capacity   [3] flushes done
 *   [4 + 2i] entry i: first IOVA page, npages
 * Writers: driver threads, with the mutex held. Invariant: every queued range is allocated in
 * the IOVA allocator and mapped nowhere.
 * Where we differ from Linux: one queue per domain, not one per CPU.
 */
import { FutexMutex } from '../shared/futex-mutex.js';

export interface FlushQueueHandle {
  readonly sab: SharedArrayBuffer;
}

const LOCK = 0;
const COUNT = 1;
const CAPACITY = 2;
const FLUSHES = 3;
const ENTRIES = 4;
export const DEFAULT_FLUSH_QUEUE_SIZE = 256;

export class FlushQueue {
  readonly handle: FlushQueueHandle;
  readonly capacity: number;
  private readonly w: Int32Array;
  private readonly mutex: FutexMutex;

  static create(capacity = DEFAULT_FLUSH_QUEUE_SIZE): FlushQueue {
    const sab = new SharedArrayBuffer((ENTRIES + 2 * capacity) * 4);
    new Int32Array(sab)[CAPACITY] = capacity;
    return new FlushQueue({ sab });
  }

  static attach(handle: FlushQueueHandle): FlushQueue {
    return new FlushQueue(handle);
  }

  private constructor(handle: FlushQueueHandle) {
    this.handle = handle;
    this.w = new Int32Array(handle.sab);
    this.capacity = this.w[CAPACITY];
    this.mutex = new FutexMutex(this.w, LOCK);
  }

  /** Queues a range; returns false when the queue is full (the caller flushes, then retries). */
  push(page: number, npages: number): boolean {
    return this.mutex.with(() => {
      const n = this.w[COUNT];
      if (n >= this.capacity) return false;
      this.w[ENTRIES + 2 * n] = page;
      this.w[ENTRIES + 2 * n + 1] = npages;
      Atomics.store(this.w, COUNT, n + 1);
      return true;
    });
  }

  /** Empties the queue, returning its ranges as [page, npages] pairs. */
  takeAll(): Array<[number, number]> {
    return this.mutex.with(() => {
      const n = this.w[COUNT];
      const out: Array<[number, number]> = [];
      for (let i = 0; i < n; i++) out.push([this.w[ENTRIES + 2 * i], this.w[ENTRIES + 2 * i + 1]]);
      Atomics.store(this.w, COUNT, 0);
      return out;
    });
  }

  /** Whether page lies in a queued range. */
  holds(page: number): boolean {
    return this.mutex.with(() => {
      for (let i = 0; i < this.w[COUNT]; i++) {
        const p = this.w[ENTRIES + 2 * i];
        if (page >= p && page < p + this.w[ENTRIES + 2 * i + 1]) return true;
      }
      return false;
    });
  }

  size(): number {
    // ORDERING: a recent count is all a reader (the flush timer) needs.
    return Atomics.load(this.w, COUNT);
  }

  noteFlush(): void {
    Atomics.add(this.w, FLUSHES, 1);
  }

  flushes(): number {
    return Atomics.load(this.w, FLUSHES);
  }
}
