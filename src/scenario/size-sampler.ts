/**
 * Transfer sizes of a workload: from a list (each equally likely), a uniform or log2-uniform
 * distribution over [min, max] (log2-uniform: every power-of-two octave is equally likely, as
 * fio's and most I/O size mixes treat sizes), or weighted sizes.
 */
import type { SizeSpec } from './scenario-schema.js';
import type { Random } from './random.js';

export interface SizeSampler {
  next(rand: Random): number;
  /** The largest size it can return (buffers are this big). */
  readonly max: number;
}

export function sizeSampler(spec: SizeSpec): SizeSampler {
  if (Array.isArray(spec)) {
    return { max: Math.max(...spec), next: (r) => spec[Math.floor(r() * spec.length)] };
  }
  if ('weighted' in spec) {
    const total = spec.weighted.reduce((a, w) => a + w.weight, 0);
    return {
      max: Math.max(...spec.weighted.map((w) => w.size)),
      next: (r) => {
        let x = r() * total;
        for (const w of spec.weighted) if ((x -= w.weight) < 0) return w.size;
        return spec.weighted[spec.weighted.length - 1].size;
      },
    };
  }
  const { min, max } = spec;
  if (spec.dist === 'uniform') return { max, next: (r) => min + Math.floor(r() * (max - min + 1)) };
  const lo = Math.log2(min);
  const hi = Math.log2(max);
  return { max, next: (r) => Math.min(max, Math.max(min, Math.round(2 ** (lo + r() * (hi - lo))))) };
}
