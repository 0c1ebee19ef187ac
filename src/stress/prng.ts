/**
 * The stress runner's seeded PRNG: xoshiro128** (Blackman & Vigna), its 128-bit state seeded by
 * splitmix32 from (seed, stream), so every driver thread draws its own stream and a run's
 * operation sequence per thread is a pure function of the seed. Not cryptographic.
 */
export class Prng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number, stream = 0) {
    // splitmix32 over seed and stream: four well-mixed, never all-zero words.
    let x = (Math.imul(seed >>> 0, 0x9e3779b9) ^ Math.imul((stream + 1) >>> 0, 0x85ebca6b) ^ Math.floor(seed / 2 ** 32)) >>> 0;
    const next = (): number => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
      z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
      return (z ^ (z >>> 15)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next() || 1;
  }

  /** The next 32 random bits, as an unsigned integer. */
  u32(): number {
    const r = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return r;
  }

  /** A uniform integer in [0, n) (n ≤ 2^32). */
  int(n: number): number {
    return Math.floor((this.u32() / 2 ** 32) * n);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }

  /** An integer in [lo, hi], log-uniformly distributed (small sizes as often as large ones per octave). */
  logUniform(lo: number, hi: number): number {
    const l = Math.log(lo);
    const v = Math.floor(Math.exp(l + (this.u32() / 2 ** 32) * (Math.log(hi + 1) - l)));
    return Math.min(hi, Math.max(lo, v));
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}
