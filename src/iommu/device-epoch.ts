/**
 * Device epochs: the RCU-like marks by which a strict unmap knows that no device can still use
 * an old translation.
 *
 * Layout (Int32 words, 4 per device slot):
 *   [4d + 0] seen     (gen << 1) | busy: the invalidation generation of its domain the device
 *                     had processed when it last started a transfer, and whether it is inside one
 *   [4d + 1] waiters  unmappers sleeping on `seen` (so a device notifies only when somebody waits)
 *   [4d + 2] state    0 = free slot, 1 = alive, 2 = dead (never waited for), 3 = hung (declared
 *                     by an unmapper's watchdog; never waited for again; its owner then fails
 *                     the device, terminates its worker and marks it dead)
 *   [4d + 3] timeout  ms an unmapper waits for this device before declaring it hung (0 = forever)
 * Writers: `seen` only by the device itself; `waiters` by unmappers (add/sub); `state` by the
 * machine, except alive → hung, which an unmapper's watchdog makes with compareExchange (so one
 * unmapper declares it, and never over a dead or freed slot); `timeout` by the machine at claim.
 * Generations are 30-bit counters compared modulo 2^30.
 *
 * Watchdog (Linux reports an IOTLB invalidation that does not complete as a hardware error,
 * VT-d's Invalidation Time-out Error): a strict unmap never waits forever for a device that
 * stopped making progress inside a transfer. Past `timeout` it marks the slot hung and returns.
 * That is only safe because a hung device never moves another byte: the machine terminates its
 * worker (device.ts), and the injected hang (device-worker.ts) sleeps until then.
 *
 * Protocol (device): store seen = (old << 1) | 1 BEFORE loading the domain's generation, process
 * invalidations, store seen = (gen << 1) | 1, do the transfer, store seen = gen << 1.
 * Protocol (unmapper): clear the PTEs, publish the invalidation, move the generation to G, then
 * for each attached device wait until seen is idle or carries a generation ≥ G.
 * Why it holds: Atomics are sequentially consistent. If the unmapper reads an idle `seen`, the
 * device's next busy store comes later in the total order, so its generation load sees G. If it
 * reads busy with a generation ≥ G, the device processed the invalidation before translating.
 * `seen` carries the generation of the device's current domain; a device still carrying another
 * domain's (or incarnation's) generation has not translated through this domain yet in this
 * transfer, and when it switches it drops its IOTLB and re-reads its context after advancing
 * (dma-engine.ts begin()), so it walks only tables whose PTEs are already cleared.
 */
import { DmaError } from '../errors.js';

export interface DeviceEpochsHandle {
  readonly sab: SharedArrayBuffer;
}

const WORDS = 4;
const SEEN = 0;
const WAITERS = 1;
const STATE = 2;
const TIMEOUT = 3;
export const GEN_MASK = 0x3fffffff;
const STATE_ALIVE = 1;
const STATE_DEAD = 2;
const STATE_HUNG = 3;
/** How long an unmapper sleeps before re-checking a device's state (a dead device is skipped). */
const WAIT_SLICE_MS = 20;

/** a ≥ b for generations modulo 2^30. */
export function genAtLeast(a: number, b: number): boolean {
  return ((a - b) & GEN_MASK) < 0x20000000;
}

export class DeviceEpochs {
  readonly handle: DeviceEpochsHandle;
  readonly slots: number;
  readonly words: Int32Array;

  static create(slots: number): DeviceEpochs {
    return new DeviceEpochs({ sab: new SharedArrayBuffer(slots * WORDS * 4) });
  }

  static attach(handle: DeviceEpochsHandle): DeviceEpochs {
    return new DeviceEpochs(handle);
  }

  private constructor(handle: DeviceEpochsHandle) {
    this.handle = handle;
    this.words = new Int32Array(handle.sab);
    this.slots = this.words.length / WORDS;
  }

  /** Claims a free device slot; unmappers wait at most `timeoutMs` for it (0 = forever). */
  claim(timeoutMs = 0): number {
    if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > 0x7fffffff) {
      throw new DmaError('EINVAL', `iommu.deviceTimeoutMs = ${String(timeoutMs)}: must be an integer number of ms in [0, 2^31)`);
    }
    for (let d = 0; d < this.slots; d++) {
      // ORDERING: compareExchange makes exactly one claimer the owner of the slot.
      if (Atomics.compareExchange(this.words, d * WORDS + STATE, 0, STATE_ALIVE) === 0) {
        Atomics.store(this.words, d * WORDS + SEEN, 0);
        Atomics.store(this.words, d * WORDS + TIMEOUT, timeoutMs);
        return d;
      }
    }
    throw new DmaError('ENOSPC', `iommu: all ${this.slots} device slots are in use`);
  }

  release(d: number): void {
    this.markDead(d);
    Atomics.store(this.words, d * WORDS + STATE, 0);
  }

  /** A dead device is never waited for: its in-transfer mark is dropped and waiters are woken. */
  markDead(d: number): void {
    Atomics.store(this.words, d * WORDS + STATE, STATE_DEAD);
    Atomics.store(this.words, d * WORDS + SEEN, 0);
    Atomics.notify(this.words, d * WORDS + SEEN);
  }

  /** The watchdog's timeout (ms) when an unmapper declared device d hung; null otherwise. */
  hungAfter(d: number): number | null {
    return Atomics.load(this.words, d * WORDS + STATE) === STATE_HUNG ? Atomics.load(this.words, d * WORDS + TIMEOUT) : null;
  }

  isBusy(d: number): boolean {
    return (Atomics.load(this.words, d * WORDS + SEEN) & 1) === 1;
  }

  // ---- device side -------------------------------------------------------------------------

  /** Marks device d inside a transfer, still carrying its previous generation. */
  enter(d: number, gen: number): void {
    // ORDERING: must precede the device's load of the domain generation (see protocol above).
    Atomics.store(this.words, d * WORDS + SEEN, ((gen & GEN_MASK) << 1) | 1);
  }

  /** Records that device d, inside its transfer, has processed invalidations up to gen. */
  advance(d: number, gen: number): void {
    // ORDERING: published after the IOTLB was cleaned; an unmapper reading it may return.
    Atomics.store(this.words, d * WORDS + SEEN, ((gen & GEN_MASK) << 1) | 1);
  }

  /** Marks device d outside any transfer, and wakes an unmapper waiting for that. */
  exit(d: number, gen: number): void {
    const i = d * WORDS;
    // ORDERING: the idle store comes after every access of the transfer; the waiters load
    // after it pairs with the unmapper's waiters add before its wait (Dekker: one sees the other).
    Atomics.store(this.words, i + SEEN, (gen & GEN_MASK) << 1);
    if (Atomics.load(this.words, i + WAITERS) !== 0) Atomics.notify(this.words, i + SEEN);
  }

  // ---- unmapper side -----------------------------------------------------------------------

  /**
   * Returns once device d is outside any transfer or has processed generation `gen`.
   * Sleeps (Atomics.wait), never spins; re-checks every few ms so a dead device is skipped.
   */
  waitFor(d: number, gen: number): void {
    const i = d * WORDS;
    const w = this.words;
    let since = -1;
    for (;;) {
      const s = Atomics.load(w, i + SEEN);
      if ((s & 1) === 0 || genAtLeast(s >>> 1, gen)) return;
      if (Atomics.load(w, i + STATE) !== STATE_ALIVE) return;
      const limit = Atomics.load(w, i + TIMEOUT);
      if (limit > 0) {
        const now = performance.now();
        if (since < 0) since = now;
        else if (now - since >= limit) {
          // ORDERING: alive → hung by compareExchange: never over a slot marked dead or freed
          // meanwhile; waking `seen` lets other unmappers see the new state at once.
          Atomics.compareExchange(w, i + STATE, STATE_ALIVE, STATE_HUNG);
          Atomics.notify(w, i + SEEN);
          return;
        }
      }
      // ORDERING: waiters is raised before sleeping on `seen` == s; if the device already moved
      // on, Atomics.wait returns at once ("not-equal").
      Atomics.add(w, i + WAITERS, 1);
      Atomics.wait(w, i + SEEN, s, WAIT_SLICE_MS);
      Atomics.sub(w, i + WAITERS, 1);
    }
  }
}
