/**
 * The built-in default scenario, what `npm start` (`dmaemu run` without a file) runs; also in
 * scenarios/default.json. Two copy engines behind a strict IOMMU: one with a 32-bit DMA mask
 * whose buffers sit above 4 GiB (the IOMMU gives it IOVAs below 4 GiB; with --mode off the DMA
 * API bounces them through SWIOTLB instead), one with a 64-bit mask; mixed sizes; the driver
 * maps and unmaps around every transfer, as most drivers do; every transfer verified.
 */
import type { ScenarioInput } from './scenario-schema.js';

export const DEFAULT_SCENARIO: ScenarioInput = {
  name: 'default',
  description: 'two copy engines (32-bit mask with buffers above 4 GiB, 64-bit), strict IOMMU, mixed sizes, map/unmap per transfer',
  seed: 1,
  iommu: { mode: 'strict' },
  // Room for every in-flight buffer of the 32-bit device when nothing translates for it.
  swiotlb: { size: '8 MiB' },
  devices: [
    { bdf: '00:03.0', model: 'copy-engine', dmaMask: 32 },
    { bdf: '00:04.0', model: 'copy-engine', dmaMask: 64 },
  ],
  workloads: [
    {
      device: '00:03.0',
      sizes: ['512', '4 KiB', '16 KiB', '64 KiB', '256 KiB'],
      buffers: { layout: 'contiguous', above: '4 GiB' },
      direction: 'bidirectional',
      mapping: 'per-transfer',
      count: 2000,
      inFlight: 8,
    },
    {
      device: '00:04.0',
      sizes: { dist: 'log2-uniform', min: '512', max: '256 KiB' },
      direction: 'bidirectional',
      mapping: 'per-transfer',
      count: 2000,
      inFlight: 8,
    },
  ],
};
