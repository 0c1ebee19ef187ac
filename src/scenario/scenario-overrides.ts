/**
 * Command-line flags over a scenario: `--mode` sets the IOMMU mode, `--transfers N` gives every
 * workload a count of N (dropping a duration), `--duration S` gives every workload S seconds
 * (dropping a count), `--seed` and `--no-verify` replace the file's. Applied to a validated
 * scenario; a bad flag value is a DmaError naming the flag.
 */
import { DmaError } from '../errors.js';
import type { IommuMode, Scenario } from './scenario-schema.js';

export interface ScenarioOverrides {
  mode?: IommuMode;
  transfers?: number;
  durationS?: number;
  seed?: number;
  verify?: boolean;
}

export function applyOverrides(s: Scenario, o: ScenarioOverrides): Scenario {
  if (o.transfers !== undefined && o.durationS !== undefined) throw new DmaError('EINVAL', 'run: give --transfers or --duration, not both');
  if (o.transfers !== undefined && (!Number.isSafeInteger(o.transfers) || o.transfers < 1)) {
    throw new DmaError('EINVAL', `run: --transfers ${String(o.transfers)} must be a positive integer`);
  }
  if (o.durationS !== undefined && !(Number.isFinite(o.durationS) && o.durationS > 0)) {
    throw new DmaError('EINVAL', `run: --duration ${String(o.durationS)} must be a positive number of seconds`);
  }
  if (o.seed !== undefined && (!Number.isSafeInteger(o.seed) || o.seed < 0)) throw new DmaError('EINVAL', `run: --seed ${String(o.seed)} must be a non-negative integer`);
  if (o.mode !== undefined && !['off', 'strict', 'lazy'].includes(o.mode)) throw new DmaError('EINVAL', `run: --mode ${String(o.mode)} must be off, strict or lazy`);
  return {
    ...s,
    ...(o.seed !== undefined ? { seed: o.seed } : {}),
    ...(o.verify !== undefined ? { verify: o.verify } : {}),
    iommu: { ...s.iommu, ...(o.mode !== undefined ? { mode: o.mode } : {}) },
    workloads: s.workloads.map((w) => {
      if (o.transfers !== undefined) return { ...w, count: o.transfers, durationMs: undefined };
      if (o.durationS !== undefined) return { ...w, count: undefined, durationMs: o.durationS * 1000 };
      return w;
    }),
  };
}
