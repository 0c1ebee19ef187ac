/**
 * `dmaemu run`: the built-in default scenario, what `npm start` shows. Two copy engines DMA
 * through a strict IOMMU: one with a 32-bit mask whose buffers sit above 4 GiB (the IOMMU gives
 * it IOVAs below 4 GiB; with --mode off the DMA API bounces them through SWIOTLB instead), one
 * with a 64-bit mask; mixed sizes; the driver maps and unmaps every buffer per transfer, as a
 * typical driver does; every transfer's data is verified.
 */
import { Machine } from '../machine.js';
import { GiB } from '../addresses.js';
import type { Device } from '../device/device.js';
import type { InvalidationMode } from '../dma/dma-api.js';
import { DmaError } from '../errors.js';
import { summarize, type LatencySummary } from '../dma/latency.js';
import type { AllocOptions } from '../memory/frame-allocator.js';

export interface RunOptions {
  /** Transfers per device. */
  transfers: number;
  mode: InvalidationMode | 'off';
  verify: boolean;
  /** Descriptors each device keeps in flight. */
  depth: number;
  seed: number;
}

export interface DeviceSummary {
  bdf: string;
  dmaMask: number;
  buffers: string;
  transfers: number;
  bytes: number;
  gbps: number;
  mapUs: { p50: number; p99: number };
  unmapUs: { p50: number; p99: number };
  iotlbHitRate: number;
  faults: number;
  staleAccesses: number;
  verified: number;
  mismatches: number;
  /** Mappings that went through a bounce buffer. */
  bounced: number;
}

export interface RunSummary {
  scenario: string;
  mode: RunOptions['mode'];
  seconds: number;
  bytes: number;
  gbps: number;
  devices: DeviceSummary[];
  faults: number;
  invalidations: { strict: number; lazy: number };
  /** Bytes the CPU copied in and out of SWIOTLB slots. */
  bouncedBytes: number;
  leaks: { liveMappings: number; ramPages: number };
}

export const DEFAULT_RUN: RunOptions = { transfers: 2000, mode: 'strict', verify: true, depth: 8, seed: 1 };
const SIZES = [512, 4096, 16384, 65536, 262144];
const MAX = SIZES[SIZES.length - 1];

const pick = (l: LatencySummary): { p50: number; p99: number } => ({ p50: l.p50, p99: l.p99 });

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

export async function runDefaultScenario(opts: RunOptions, progress?: (done: number, total: number) => void): Promise<RunSummary> {
  if (!Number.isSafeInteger(opts.transfers) || opts.transfers < 1) {
    throw new DmaError('EINVAL', `run: --transfers ${String(opts.transfers)} must be a positive integer`);
  }
  const m = await Machine.create({
    iommu: opts.mode === 'off' ? { enabled: false } : { enabled: true, invalidation: opts.mode },
    // Room for every in-flight buffer of the 32-bit device when nothing translates for it.
    swiotlb: { size: 8 * 2 ** 20 },
  });
  try {
    const lanes = [
      {
        // With an IOMMU it gets IOVAs below 4 GiB; without one, SWIOTLB bounces these buffers.
        dev: await m.addDevice({ bdf: '00:03.0', dmaMask: 32 }),
        where: { above: 4 * GiB },
        mask: 32,
      },
      { dev: await m.addDevice({ bdf: '00:04.0', dmaMask: 64 }), where: {}, mask: 64 },
    ];
    // What the devices' own rings hold; anything above this after the run is a leak.
    const baseline = { mappings: m.dma.liveMappings(), pages: m.ram.pagesInUse() };
    const total = opts.transfers * lanes.length;
    let done = 0;
    const t0 = performance.now();
    const results = await Promise.all(
      lanes.map((lane, i) =>
        runLane(m, lane.dev, lane.where, opts, rng(opts.seed * 7919 + i), () => {
          done++;
          progress?.(done, total);
        }),
      ),
    );
    const seconds = (performance.now() - t0) / 1000;
    const stats = m.stats();
    const devices = lanes.map((lane, i): DeviceSummary => {
      const c = lane.dev.counters();
      const r = results[i];
      const lookups = c.iotlbHits + c.iotlbMisses;
      return {
        bdf: lane.dev.bdf,
        dmaMask: lane.mask,
        buffers: 'above' in lane.where ? 'above 4 GiB' : 'below' in lane.where ? 'below 4 GiB' : 'anywhere',
        transfers: r.transfers,
        bytes: r.bytes,
        gbps: r.bytes / seconds / 1e9,
        mapUs: pick(summarize(r.map)),
        unmapUs: pick(summarize(r.unmap)),
        iotlbHitRate: lookups > 0 ? c.iotlbHits / lookups : 0,
        faults: c.faults,
        staleAccesses: c.staleAccesses,
        verified: r.verified,
        mismatches: r.mismatches,
        bounced: r.bounced,
      };
    });
    const bytes = devices.reduce((a, d) => a + d.bytes, 0);
    return {
      scenario: 'default: two copy engines (32-bit mask with buffers above 4 GiB, 64-bit), mixed sizes, map/unmap per transfer',
      mode: opts.mode,
      seconds,
      bytes,
      gbps: bytes / seconds / 1e9,
      devices,
      faults: stats.faults,
      invalidations: stats.invalidations,
      bouncedBytes: stats.bouncedBytes,
      leaks: { liveMappings: stats.liveMappings - baseline.mappings, ramPages: stats.ramPagesInUse - baseline.pages },
    };
  } finally {
    await m.close();
  }
}

async function runLane(m: Machine, dev: Device, where: AllocOptions, opts: RunOptions, rand: () => number, tick: () => void) {
  const slots = Array.from({ length: opts.depth }, () => ({ src: m.ram.alloc(MAX, where), dst: m.ram.alloc(MAX, where) }));
  const out = { transfers: 0, bytes: 0, verified: 0, mismatches: 0, bounced: 0, map: [] as number[], unmap: [] as number[] };
  let next = 0;
  const worker = async (slot: (typeof slots)[number]) => {
    while (next < opts.transfers) {
      const n = next++;
      const len = SIZES[Math.floor(rand() * SIZES.length)];
      const fill = (n * 131 + 7) & 255;
      m.ram.fill(slot.src.pa, len, fill);
      let t = performance.now();
      const s = m.dma.mapSingle(dev, slot.src.pa, len, 'to-device');
      const d = m.dma.mapSingle(dev, slot.dst.pa, len, 'from-device');
      out.map.push((performance.now() - t) * 500); // µs per mapping
      out.bounced += Number(s.bounced) + Number(d.bounced);
      await dev.copy({ src: s.addr, dst: d.addr, len });
      t = performance.now();
      m.dma.unmapSingle(dev, s);
      m.dma.unmapSingle(dev, d);
      out.unmap.push((performance.now() - t) * 500);
      if (opts.verify) {
        const got = m.ram.read(slot.dst.pa, len);
        let ok = true;
        for (let i = 0; i < len; i += 1) if (got[i] !== fill) {
          ok = false;
          break;
        }
        if (ok) out.verified++;
        else out.mismatches++;
      }
      out.transfers++;
      out.bytes += len;
      tick();
    }
  };
  await Promise.all(slots.map(worker));
  for (const s of slots) {
    m.ram.free(s.src);
    m.ram.free(s.dst);
  }
  return out;
}

const fmtBytes = (n: number): string =>
  n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`;

/** The human-readable summary table. */
export function formatRunSummary(s: RunSummary): string {
  const rows: string[][] = [
    ['device', 'mask', 'buffers', 'transfers', 'bytes', 'GB/s', 'map µs p50/p99', 'unmap µs p50/p99', 'IOTLB hits', 'bounced', 'faults', 'stale', 'verified'],
    ...s.devices.map((d) => [
      d.bdf,
      `${d.dmaMask}-bit`,
      d.buffers,
      String(d.transfers),
      fmtBytes(d.bytes),
      d.gbps.toFixed(2),
      `${d.mapUs.p50.toFixed(1)}/${d.mapUs.p99.toFixed(1)}`,
      `${d.unmapUs.p50.toFixed(1)}/${d.unmapUs.p99.toFixed(1)}`,
      `${(d.iotlbHitRate * 100).toFixed(1)}%`,
      String(d.bounced),
      String(d.faults),
      String(d.staleAccesses),
      d.mismatches === 0 ? `${d.verified} ok` : `${d.mismatches} BAD`,
    ]),
  ];
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const table = rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c])).join('  ')).join('\n');
  return [
    `dmaemu run — ${s.scenario}`,
    `IOMMU: ${s.mode === 'off' ? 'off (DMA addresses are physical)' : `on, ${s.mode} invalidation`}`,
    '',
    table,
    '',
    `total ${fmtBytes(s.bytes)} in ${s.seconds.toFixed(2)} s = ${s.gbps.toFixed(2)} GB/s; faults ${s.faults}; bounced ${fmtBytes(s.bouncedBytes)}; ` +
      `invalidations ${s.invalidations.strict} strict, ${s.invalidations.lazy} lazy; ` +
      `leaked: ${s.leaks.liveMappings} mappings, ${s.leaks.ramPages} RAM pages`,
  ].join('\n');
}
