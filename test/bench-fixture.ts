/** A fixed bench result (no benchmark runs in tests): every required figure and every chart kind. */
import { judge, type Figure } from '../bench/figures.js';
import type { BenchResult } from '../bench/run.js';

const fig = (id: string, value: number, unit: string, op: '>=' | '<=', goal: number, note?: string): Figure => ({ id, value, unit, goal: { op, value: goal }, ...(note ? { note } : {}) });

export function fixedBenchResult(): BenchResult {
  return {
    machine: { node: 'v20.20.2', cpu: 'Test CPU <model> & co', cores: 2, memoryGiB: 8, platform: 'linux-x64', date: '2026-01-02T03:04:05.000Z', loadAverage: 1.25 },
    figures: [
      fig('sg64k-scattered-vs-memcpy', 2.036380596816277, '×copyWithin', '>=', 0.75, 'baseline: one contiguous 64 KiB copyWithin'),
      fig('sg64k-contiguous-vs-memcpy', 2.5034403665723817, '×copyWithin', '>=', 0.9),
      fig('misaligned-4k-gbps', 51.20000012926757, 'GB/s', '>=', 8),
      fig('iotlb-hit-ns', 5.320312496337465, 'ns', '<=', 5),
      fig('walk-ns', 11.99, 'ns', '<=', 12),
      fig('map-unmap-4k-ns', 399.031, 'ns', '<=', 80, 'a note with <script>alert(1)</script> & "quotes"'),
      fig('map-unmap-2t-scaling', 1.635, '×1 thread', '>=', 1.85),
      fig('dma-2dev-scaling', 1.9012345678901234, '×1 device', '>=', 1.85),
      fig('doorbell-sleep-us', 20.39, 'µs', '<=', 15),
      fig('doorbell-poll-us', 0.000123456, 'µs', '<=', 1),
      { id: 'bounce-breakeven-bytes', value: 120444, unit: 'B', goal: null, note: 'reported for information' },
    ].map(judge),
    series: [
      {
        kind: 'lines',
        id: 'bandwidth-vs-size',
        title: 'copy bandwidth over transfer size',
        x: { label: 'transfer size', unit: 'B', log: true },
        y: { label: 'bandwidth', unit: 'GB/s' },
        lines: [
          { name: 'device', points: [{ x: 4096, y: 0.76 }, { x: 65536, y: 7.93 }, { x: 262144, y: 15.470000000000001 }] },
          { name: 'memmove', points: [{ x: 4096, y: 68.27 }, { x: 65536, y: 121.14 }, { x: 262144, y: 128.94 }] },
        ],
      },
      {
        kind: 'lines',
        id: 'bounce-vs-iommu',
        title: 'bounce vs IOMMU',
        x: { label: 'mapping size', unit: 'B', log: true },
        y: { label: 'map+unmap', unit: 'ns', log: true },
        lines: [
          { name: 'bounce', points: [{ x: 64, y: 300 }, { x: 4096, y: 900 }, { x: 262144, y: 40000 }] },
          { name: 'IOMMU', points: [{ x: 64, y: 700 }, { x: 4096, y: 800 }, { x: 262144, y: 2000 }] },
        ],
        marks: [{ x: 2900, label: 'break-even ≈ 2.8KB; bounce cheaper below' }],
      },
      { kind: 'bars', id: 'scaling-devices', title: '2 devices vs 1', y: { label: 'throughput', unit: '×1 device' }, bars: [{ name: '1 device', value: 1 }, { name: '2 devices', value: 1.9012345678901234 }], goal: { value: 1.85, label: 'goal ≥ 1.85×' } },
    ],
  };
}
