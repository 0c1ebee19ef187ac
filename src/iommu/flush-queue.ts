/**
 * The flush queue of lazy invalidation (Linux's iova flush queue, iommu.strict=0): IOVA ranges
 * whose PTEs are cleared but whose IOTLB entries may still be cached. They go back to the IOVA
 * allocator only after a flush-all invalidation that every device has observed.
 *
 * As Linux's per-CPU fq, the queue is a set of rings, one per driver thread ("CPU" = a slot a
 * FlushQueue instance claims on its first push, as the IOVA allocator's slots), plus one shared
 * overflow ring for threads that found no free slot. A slot ring has one producer (its owner) and
 * one consumer at a time (whoever flushes, with the mutex held), so a push is two plain stores and
 * one Atomics.store: no lock, no read-modify-write on the unmap path.
 *
 * Layout (Int32 words of its own SharedArrayBuffer):
 *   [0] futex mutex (flushers; pushers into the overflow ring)   [1] capacity per ring
 *   [2] flushes done   [3] slot rings (the overflow ring is ring number `slots`)
 *   [4 + r * (4 + 2 * capacity)] ring r: [0] OWNER (0 = free, else threadId + 1)  [1] HEAD
 *     [2] TAIL  [3] unused  [4 + 2i] entry i: first IOVA page, npages
 * HEAD and TAIL run over [0, 2 * capacity) (a mirrored ring: entries = TAIL - HEAD mod 2·capacity,
 * entry index = position mod capacity), so they never overflow whatever the capacity.
 * Who writes what: TAIL and the entries of a slot ring: its owner only (entries with plain stores,
 * then TAIL with Atomics.store). TAIL and entries of the overflow ring: pushers, mutex held. HEAD
 * of every ring: flushers, mutex held (Atomics.store after the entries were copied out). OWNER:
 * claimed with compareExchange 0→threadId+1, freed by the owner's release(), or by
 * reclaimThread() once that thread has ended (its entries stay queued for the next flush).
 * Invariants: every queued range (HEAD ≤ i < TAIL) is allocated in the IOVA allocator and mapped
 * nowhere; its PTEs were cleared before its TAIL store, so a flush-all published after a flusher's
 * TAIL load covers it.
 * Where we differ from Linux: a full ring flushes every ring of the domain (Linux's fq_full flush
 * also frees only the full CPU's entries); rings are per claimed slot, not per CPU.
 */
import { threadId } from 'node:worker_threads';
import { FutexMutex } from '../shared/futex-mutex.js';

export interface FlushQueueHandle {
  readonly sab: SharedArrayBuffer;
}

const LOCK = 0;
const CAPACITY = 1;
const FLUSHES = 2;
const SLOTS = 3;
const RINGS = 4;
const OWNER = 0;
const HEAD = 1;
const TAIL = 2;
const ENTRIES = 4;
export const DEFAULT_FLUSH_QUEUE_SIZE = 256;
/** Slot rings per domain (driver threads that push without the mutex). */
export const FLUSH_QUEUE_SLOTS = 16;

/** Releases the slot of an instance that was garbage-collected without release() (same thread). */
const orphanedSlots = new FinalizationRegistry<FlushQueue>((twin) => twin.release());

export class FlushQueue {
  readonly handle: FlushQueueHandle;
  /** Ranges one ring holds; a push into a full ring returns false. */
  readonly capacity: number;
  private readonly w: Int32Array;
  private readonly mutex: FutexMutex;
  private readonly slots: number;
  private readonly stride: number;
  /** Word index of this instance's ring (-1: not claimed yet; -2: none was free, use the overflow
   *  ring until it is full, then try to claim again). */
  private ring = -1;
  /** This instance's TAIL (it is the only writer) and the last HEAD it read. */
  private tail = 0;
  private head = 0;

  static create(capacity = DEFAULT_FLUSH_QUEUE_SIZE): FlushQueue {
    const slots = FLUSH_QUEUE_SLOTS;
    const sab = new SharedArrayBuffer((RINGS + (slots + 1) * (ENTRIES + 2 * capacity)) * 4);
    const w = new Int32Array(sab);
    w[CAPACITY] = capacity;
    w[SLOTS] = slots;
    return new FlushQueue({ sab });
  }

  static attach(handle: FlushQueueHandle): FlushQueue {
    return new FlushQueue(handle);
  }

  private constructor(handle: FlushQueueHandle) {
    this.handle = handle;
    this.w = new Int32Array(handle.sab);
    this.capacity = this.w[CAPACITY];
    this.slots = this.w[SLOTS];
    this.stride = ENTRIES + 2 * this.capacity;
    this.mutex = new FutexMutex(this.w, LOCK);
  }

  /** Queues a range; returns false when this thread's ring is full (the caller flushes, then retries). */
  push(page: number, npages: number): boolean {
    let r = this.ring;
    if (r === -1) r = this.claim();
    if (r === -2) return this.pushOverflow(page, npages);
    const w = this.w;
    const cap = this.capacity;
    const t = this.tail;
    if (used(t, this.head, cap) >= cap) {
      // ORDERING: reads the HEAD a flusher stored after copying entries out; slots before it are free.
      this.head = Atomics.load(w, r + HEAD);
      if (used(t, this.head, cap) >= cap) return false;
    }
    const e = r + ENTRIES + 2 * (t < cap ? t : t - cap);
    w[e] = page;
    w[e + 1] = npages;
    const next = t + 1 === 2 * cap ? 0 : t + 1;
    this.tail = next;
    // ORDERING: publishes the entry (and the PTE clear before it) to a flusher's TAIL load.
    Atomics.store(w, r + TAIL, next);
    return true;
  }

  /** Empties every ring, returning the ranges as a flat list: page, npages, page, npages, … */
  takeAll(): number[] {
    const out: number[] = [];
    const w = this.w;
    const cap = this.capacity;
    this.mutex.lock();
    try {
      for (let i = 0; i <= this.slots; i++) {
        const r = this.ringAt(i);
        // ORDERING: the TAIL load sees every entry its owner published before it.
        const t = Atomics.load(w, r + TAIL);
        let h = w[r + HEAD];
        while (h !== t) {
          const e = r + ENTRIES + 2 * (h < cap ? h : h - cap);
          out.push(w[e], w[e + 1]);
          h = h + 1 === 2 * cap ? 0 : h + 1;
        }
        // ORDERING: HEAD moves only after the entries were copied: the owner overwrites copied slots only.
        Atomics.store(w, r + HEAD, t);
      }
    } finally {
      this.mutex.unlock();
    }
    return out;
  }

  /** Whether page lies in a queued range. */
  holds(page: number): boolean {
    const w = this.w;
    const cap = this.capacity;
    return this.mutex.with(() => {
      for (let i = 0; i <= this.slots; i++) {
        const r = this.ringAt(i);
        const t = Atomics.load(w, r + TAIL);
        for (let h = w[r + HEAD]; h !== t; h = h + 1 === 2 * cap ? 0 : h + 1) {
          const e = r + ENTRIES + 2 * (h < cap ? h : h - cap);
          if (page >= w[e] && page < w[e] + w[e + 1]) return true;
        }
      }
      return false;
    });
  }

  /** Ranges queued in all rings. */
  size(): number {
    let n = 0;
    // ORDERING: a recent count is all a reader (the flush timer) needs.
    for (let i = 0; i <= this.slots; i++) {
      const r = this.ringAt(i);
      n += used(Atomics.load(this.w, r + TAIL), Atomics.load(this.w, r + HEAD), this.capacity);
    }
    return n;
  }

  noteFlush(): void {
    Atomics.add(this.w, FLUSHES, 1);
  }

  flushes(): number {
    return Atomics.load(this.w, FLUSHES);
  }

  /** Gives this thread's ring back (its queued ranges stay queued until the next flush). */
  release(): void {
    if (this.ring < 0) return;
    orphanedSlots.unregister(this);
    // ORDERING: publishes this owner's last TAIL store before the slot reads free.
    Atomics.store(this.w, this.ring + OWNER, 0);
    this.ring = -1;
  }

  /** Slot rings claimed by some thread now (for tests and diagnostics). */
  claimedRings(): number {
    let n = 0;
    // ORDERING: a snapshot is all a reader needs.
    for (let i = 0; i < this.slots; i++) if (Atomics.load(this.w, this.ringAt(i) + OWNER) !== 0) n++;
    return n;
  }

  /**
   * Frees the rings of thread `tid`, which has ended (never for a live thread): a FinalizationRegistry
   * callback never runs for a thread that is gone. Their ranges stay queued for the next takeAll.
   * Returns how many rings it freed.
   */
  reclaimThread(tid: number): number {
    let n = 0;
    for (let i = 0; i < this.slots; i++) {
      // ORDERING: the dead owner stores nothing more; the CAS frees its slot exactly once, and a
      // later claimer's compareExchange reads the 0 after the owner's last TAIL store.
      if (Atomics.compareExchange(this.w, this.ringAt(i) + OWNER, tid + 1, 0) === tid + 1) n++;
    }
    return n;
  }

  private ringAt(i: number): number {
    return RINGS + i * this.stride;
  }

  private claim(): number {
    const w = this.w;
    for (let i = 0; i < this.slots; i++) {
      const r = this.ringAt(i);
      // ORDERING: the compareExchange reads the 0 a previous owner stored after its last TAIL store.
      if (Atomics.load(w, r + OWNER) === 0 && Atomics.compareExchange(w, r + OWNER, 0, threadId + 1) === 0) {
        this.ring = r;
        this.tail = Atomics.load(w, r + TAIL);
        this.head = Atomics.load(w, r + HEAD);
        const twin = Object.create(FlushQueue.prototype) as FlushQueue;
        Object.assign(twin, { w, ring: r, slots: this.slots, stride: this.stride, capacity: this.capacity });
        orphanedSlots.register(this, twin, this);
        return r;
      }
    }
    this.ring = -2;
    return -2;
  }

  private pushOverflow(page: number, npages: number): boolean {
    const w = this.w;
    const cap = this.capacity;
    const r = this.ringAt(this.slots);
    this.mutex.lock();
    try {
      const t = w[r + TAIL];
      if (used(t, w[r + HEAD], cap) >= cap) {
        this.ring = -1; // after the caller's flush, look for a slot ring again: one may be free now
        return false;
      }
      const e = r + ENTRIES + 2 * (t < cap ? t : t - cap);
      w[e] = page;
      w[e + 1] = npages;
      Atomics.store(w, r + TAIL, t + 1 === 2 * cap ? 0 : t + 1);
      return true;
    } finally {
      this.mutex.unlock();
    }
  }
}

/** Entries between head and tail of a mirrored ring of `cap` entries. */
function used(tail: number, head: number, cap: number): number {
  const d = tail - head;
  return d >= 0 ? d : d + 2 * cap;
}
