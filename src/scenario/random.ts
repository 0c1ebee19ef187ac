/** A seeded xorshift32 generator: the same seed gives the same sizes and data on every run. */
export type Random = () => number;

/** Uniform in [0, 1). */
export function seededRandom(seed: number): Random {
  let x = (seed >>> 0) ^ 0x9e3779b9 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}
