/**
 * The summary of a scenario run as `dmaemu run` prints it: a header, one row per device, totals.
 * `transfers` are the workload's I/Os; `cmds` the descriptors the device executed for them (an
 * NVMe write-and-read-back is two, a NIC frame an RX and a TX).
 */
import type { ScenarioSummary } from './runner.js';
import { fmtBytes } from './byte-size.js';

const us = (p: { p50: number; p99: number; samples: number }): string => (p.samples === 0 ? '-' : `${p.p50.toFixed(1)}/${p.p99.toFixed(1)}`);

export function formatScenarioSummary(s: ScenarioSummary): string {
  const rows: string[][] = [
    ['device', 'model', 'mask', 'buffers', 'dir', 'mapping', 'thr', 'transfers', 'cmds', 'bytes', 'GB/s', 'map µs p50/p99', 'unmap µs p50/p99', 'IOTLB hits', 'bounced', 'faults', 'stale', 'verified'],
    ...s.devices.map((d) => [
      d.bdf,
      d.model,
      `${d.dmaMask}-bit`,
      d.buffers,
      d.direction,
      d.mapping,
      String(d.driverThreads),
      String(d.transfers),
      String(d.descriptors),
      fmtBytes(d.bytes),
      d.gbps.toFixed(2),
      us(d.mapUs),
      us(d.unmapUs),
      `${(d.iotlbHitRate * 100).toFixed(1)}%`,
      fmtBytes(d.bouncedBytes),
      String(d.faults),
      String(d.staleAccesses),
      !s.verify ? 'off' : d.mismatches === 0 && d.failed === 0 ? `${d.verified} ok` : `${d.mismatches} BAD, ${d.failed} failed`,
    ]),
  ];
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const table = rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c])).join('  ').trimEnd()).join('\n');
  return [
    `dmaemu run — ${s.scenario}${s.description ? `: ${s.description}` : ''}`,
    `IOMMU: ${s.mode === 'off' ? 'off (DMA addresses are physical)' : `on, ${s.mode} invalidation`}`,
    '',
    table,
    '',
    `total ${s.transfers} transfers, ${fmtBytes(s.bytes)} in ${s.seconds.toFixed(2)} s = ${s.gbps.toFixed(2)} GB/s; faults ${s.faults}; stale accesses ${s.staleAccesses}; CPU copies through bounce buffers ${fmtBytes(s.bouncedBytes)}`,
    `DMA API: ${s.dma.maps + s.dma.sgMaps} maps (${s.dma.sgMaps} sg), ${s.dma.unmaps + s.dma.sgUnmaps} unmaps, ${s.dma.syncs} syncs; invalidations ${s.invalidations.strict} strict, ${s.invalidations.lazy} lazy`,
    `leaked: ${s.leaks.liveMappings} mappings, ${s.leaks.ramPages} RAM pages, ${s.leaks.bounceSlots} bounce slots`,
  ].join('\n');
}
