/**
 * A bitmap of pages inside an Int32Array of shared memory, with a count of set bits beside it.
 * Used by the page-frame and IOVA allocators, each of which owns its buffer's layout and says
 * where the bitmap and the count live.
 *
 * Writers hold the owner's mutex; the count is updated with Atomics.add so lock-free readers see
 * whole values. Invariant: the count equals the number of set bits.
 */
export class PageBitmap {
  constructor(
    readonly words: Int32Array,
    /** Index of the bitmap's first word. */
    private readonly base: number,
    /** Index of the set-bit count. */
    private readonly countAt: number,
  ) {}

  has(p: number): boolean {
    return (this.words[this.base + (p >>> 5)] & (1 << (p & 31))) !== 0;
  }

  /** The 32-bit word holding page p (for scans that skip whole free words). */
  word(p: number): number {
    return this.words[this.base + (p >>> 5)];
  }

  /** Sets or clears pages [first, first + n); the caller holds the owner's mutex. */
  setRange(first: number, n: number, on: boolean): void {
    const w = this.words;
    for (let p = first; p < first + n; p++) {
      const i = this.base + (p >>> 5);
      w[i] = on ? w[i] | (1 << (p & 31)) : w[i] & ~(1 << (p & 31));
    }
    // ORDERING: written under the owner's mutex; Atomics.add lets lock-free readers see whole values.
    Atomics.add(w, this.countAt, on ? n : -n);
  }

  count(): number {
    return Atomics.load(this.words, this.countAt);
  }
}
