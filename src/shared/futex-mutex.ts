/**
 * A mutex over one Int32 word of shared memory (Drepper's futex mutex, "Futexes are tricky").
 *
 * Layout: one Int32 word. 0 = unlocked, 1 = locked, 2 = locked and somebody may be waiting.
 * Writers: any thread, only through lock()/unlock(). Invariant: only the holder moves the word
 * from 1/2 to 0. Waiters sleep in Atomics.wait (Node allows it on the main thread too); nobody
 * spins. Used on the driver side only (allocators, flush queues), never on a device's data path.
 */
export class FutexMutex {
  constructor(
    private readonly words: Int32Array,
    private readonly index: number,
  ) {}

  lock(): void {
    const w = this.words;
    const i = this.index;
    // ORDERING: compareExchange is seq-cst; acquiring the word orders the critical section after it.
    let c = Atomics.compareExchange(w, i, 0, 1);
    if (c === 0) return;
    do {
      // Mark contended before sleeping so the holder's unlock knows to notify.
      if (c === 2 || Atomics.compareExchange(w, i, 1, 2) !== 0) Atomics.wait(w, i, 2);
      c = Atomics.compareExchange(w, i, 0, 2);
    } while (c !== 0);
  }

  tryLock(): boolean {
    return Atomics.compareExchange(this.words, this.index, 0, 1) === 0;
  }

  unlock(): void {
    // ORDERING: the seq-cst sub publishes every write of the critical section before the word
    // reads 0; a contended word (was 2) is reset and one sleeper is woken.
    if (Atomics.sub(this.words, this.index, 1) !== 1) {
      Atomics.store(this.words, this.index, 0);
      Atomics.notify(this.words, this.index, 1);
    }
  }

  with<T>(fn: () => T): T {
    this.lock();
    try {
      return fn();
    } finally {
      this.unlock();
    }
  }
}
