/** Latency samples summarized as dma_map_benchmark users read them (plus percentiles). */
export interface LatencySummary {
  /** ns */
  mean: number;
  p50: number;
  p99: number;
  samples: number;
}

export function summarize(samples: readonly number[]): LatencySummary {
  if (samples.length === 0) return { mean: 0, p50: 0, p99: 0, samples: 0 };
  const sorted = Float64Array.from(samples).sort();
  // Nearest rank: the smallest sample with at least q of all samples at or below it.
  const at = (q: number): number => sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)];
  const mean = sorted.reduce((a, b) => a + b, 0) / sorted.length;
  return { mean, p50: at(0.5), p99: at(0.99), samples: sorted.length };
}
