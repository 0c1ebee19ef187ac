/**
 * A start gate: threads that must begin a measured phase together each arrive once, then wait
 * until every party has (Linux's dma_map_benchmark creates all its threads first and wakes them
 * together, so no thread's measured time covers another one's start-up).
 *
 * Layout: one Int32 word, in a SharedArrayBuffer of its own: the parties arrived so far.
 * Writers: each party once, with Atomics.add. Readers: parties waiting on it with Atomics.wait
 * (never spinning). Invariant: the word only grows, to at most `parties`.
 * A party that fails before its measured phase arrives as well (so nobody waits for it), and a
 * wait is bounded, so a party that never runs cannot hold the others for more than `timeoutMs`.
 */
import { DmaError } from '../errors.js';

export interface StartGateHandle {
  readonly sab: SharedArrayBuffer;
  readonly parties: number;
}

const ARRIVED = 0;

export class StartGate {
  readonly handle: StartGateHandle;
  private readonly word: Int32Array;
  private arrived = false;

  static create(parties: number): StartGate {
    if (!Number.isInteger(parties) || parties < 1) {
      throw new DmaError('EINVAL', `start gate: parties = ${String(parties)} must be a positive integer`);
    }
    return new StartGate({ sab: new SharedArrayBuffer(4), parties });
  }

  static attach(handle: StartGateHandle): StartGate {
    return new StartGate(handle);
  }

  private constructor(handle: StartGateHandle) {
    this.handle = handle;
    this.word = new Int32Array(handle.sab, 0, 1);
  }

  /** Counts this party in (once per instance); the last one wakes the others. */
  arrive(): void {
    if (this.arrived) return;
    this.arrived = true;
    // ORDERING: the seq-cst add is what waiters load; the last arrival wakes them all.
    if (Atomics.add(this.word, ARRIVED, 1) + 1 >= this.handle.parties) Atomics.notify(this.word, ARRIVED);
  }

  /** arrive(), then sleep until every party has arrived; false when `timeoutMs` passed first. */
  arriveAndWait(timeoutMs = 10_000): boolean {
    this.arrive();
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const n = Atomics.load(this.word, ARRIVED);
      if (n >= this.handle.parties) return true;
      const left = deadline - performance.now();
      if (left <= 0) return false;
      // ORDERING: sleeps only while the count is still n; an arrival in between returns at once.
      Atomics.wait(this.word, ARRIVED, n, left);
    }
  }
}
