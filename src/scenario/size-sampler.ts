/**
 * Transfer sizes of a workload: from a list (each equally likely), a uniform or log2-uniform
 * distribution over [min, max] (log2-uniform: every power-of-two octave is equally likely, as
 * fio's and most I/O size mixes treat sizes), or weighted sizes. With `align` (a device whose
 * I/Os are whole blocks, e.g. NVMe's LBA size), a distribution's draws are rounded down to a
 * multiple of it (min and max are multiples: the scenario schema checks the sizes given).
 */
import type { SizeSpec } from './scenario-schema.js';
import type { Random } from './random.js';

export interface SizeSampler {
  next(rand: Random): number;
  /** The largest size it can return (buffers are this big). */
  readonly max: number;
}

export function sizeSampler(spec: SizeSpec, align = 1): SizeSampler {
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
  const aligned = (n: number) => Math.max(min, n - (n % align));
  if (spec.dist === 'uniform') return { max, next: (r) => aligned(min + Math.floor(r() * (max - min + 1))) };
  const lo = Math.log2(min);
  const hi = Math.log2(max);
  return { max, next: (r) => aligned(Math.min(max, Math.max(min, Math.round(2 ** (lo + r() * (hi - lo)))))) };
}

/** Every size the spec names, with its field under `sizes` (for checks that name the field). */
export function namedSizes(spec: SizeSpec): Array<{ path: Array<string | number>; size: number }> {
  if (Array.isArray(spec)) return spec.map((size, i) => ({ path: ['sizes', i], size }));
  if ('weighted' in spec) return spec.weighted.map((w, i) => ({ path: ['sizes', 'weighted', i, 'size'], size: w.size }));
  return [
    { path: ['sizes', 'min'], size: spec.min },
    { path: ['sizes', 'max'], size: spec.max },
  ];
}
