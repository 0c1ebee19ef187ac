/**
 * The piscina task module of driver threads: each task attaches to a machine from its
 * DriverHandle (shared memory only; nothing on the data path is a message) and works against
 * the same domains, IOVA allocators and bounce pool as every other thread.
 *
 *   mapBench: Linux's dma_map_benchmark loop — map `granulePages` pages, wait `delayNs`
 *             (dma_trans_ns), unmap — timed in batches, for `durationMs` or `iterations`.
 *   handoff:  map a source (to-device) and a destination (from-device), hand the transfer to
 *             the device side through a mailbox, wait, unmap and check the bytes arrived.
 */
import { threadId } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { attachDriver, type DriverHandle } from '../src/dma/driver-handle.js';
import { HandoffMailbox, type HandoffMailboxHandle } from '../src/dma/handoff-mailbox.js';
import type { DmaDirection } from '../src/dma/direction.js';
import type { DmaMapping } from '../src/dma/dma-api.js';
import type { Pa } from '../src/addresses.js';
import { summarize, type LatencySummary } from '../src/dma/latency.js';

export interface MapBenchTask {
  driver: DriverHandle;
  bdf: string;
  granulePages: number;
  dir: DmaDirection;
  /** Stop after this long (ms) … */
  durationMs: number;
  /** … or after this many map+unmap pairs, whichever comes first. */
  iterations: number;
  /** Busy delay between map and unmap, like dma_trans_ns (0 = none). */
  delayNs: number;
  /** Maps timed together (timer overhead is ~40 ns, so single maps are timed in batches). */
  batch: number;
  /** Pairs run first and not measured. */
  warmup: number;
}

export interface MapBenchThreadResult {
  threadId: number;
  iterations: number;
  seconds: number;
  /** Per map / per unmap, in ns (each sample is the mean over one batch). */
  map: LatencySummary;
  unmap: LatencySummary;
  /** Map+unmap pairs per second in this thread. */
  pairsPerSecond: number;
}

export function mapBench(t: MapBenchTask): MapBenchThreadResult {
  const drv = attachDriver(t.driver);
  const dev = drv.device(t.bdf);
  const size = t.granulePages * 4096;
  const bufs = Array.from({ length: t.batch }, () => drv.dma.ram.alloc(size));
  const maps: DmaMapping[] = new Array(t.batch);
  const mapNs: number[] = [];
  const unmapNs: number[] = [];
  let done = 0;
  try {
    const round = (measure: boolean): void => {
      const t0 = performance.now();
      for (let k = 0; k < t.batch; k++) maps[k] = drv.dma.mapSingle(dev, bufs[k].pa, size, t.dir);
      const t1 = performance.now();
      if (t.delayNs > 0) while ((performance.now() - t1) * 1e6 < t.delayNs);
      const t2 = performance.now();
      for (let k = 0; k < t.batch; k++) drv.dma.unmapSingle(dev, maps[k]);
      const t3 = performance.now();
      if (measure) {
        mapNs.push(((t1 - t0) * 1e6) / t.batch);
        unmapNs.push(((t3 - t2) * 1e6) / t.batch);
        done += t.batch;
      }
    };
    for (let i = 0; i < t.warmup; i += t.batch) round(false);
    const start = performance.now();
    while (done < t.iterations && performance.now() - start < t.durationMs) round(true);
    const seconds = (performance.now() - start) / 1000;
    return { threadId, iterations: done, seconds, map: summarize(mapNs), unmap: summarize(unmapNs), pairsPerSecond: done / seconds };
  } finally {
    for (const b of bufs) drv.dma.ram.free(b);
    drv.close();
  }
}

export interface HandoffTask {
  driver: DriverHandle;
  bdf: string;
  mailbox: HandoffMailboxHandle;
  slot: number;
  rounds: number;
  /** Transfer sizes cycle through these (bytes). */
  sizes: number[];
  seed: number;
  /** Place the buffers above this PA (e.g. 4 GiB, so a 32-bit device needs an IOMMU or bounce). */
  above?: number;
}

export interface HandoffResult {
  threadId: number;
  rounds: number;
  bytes: number;
  /** Transfers whose destination did not hold the source's bytes after unmap. */
  mismatches: number;
  /** Transfers the device side reported failed. */
  failed: number;
}

export function handoff(t: HandoffTask): HandoffResult {
  const drv = attachDriver(t.driver);
  const dev = drv.device(t.bdf);
  const box = HandoffMailbox.attach(t.mailbox);
  const ram = drv.dma.ram;
  let x = t.seed >>> 0 || 1;
  let mismatches = 0;
  let failed = 0;
  let bytes = 0;
  try {
    for (let r = 0; r < t.rounds; r++) {
      const len = t.sizes[r % t.sizes.length];
      const opts = t.above !== undefined ? { above: t.above } : {};
      const src = ram.alloc(len, opts);
      const dst = ram.alloc(len, opts);
      try {
        const data = new Uint8Array(len);
        for (let i = 0; i < len; i++) {
          x = (Math.imul(x, 1103515245) + 12345) >>> 0;
          data[i] = x >>> 24;
        }
        ram.write(src.pa, data);
        ram.fill(dst.pa, len, 0);
        const s = drv.dma.mapSingle(dev, src.pa, len, 'to-device');
        const d = drv.dma.mapSingle(dev, dst.pa, len, 'from-device');
        const status = box.post(t.slot, s.addr, d.addr, len);
        drv.dma.unmapSingle(dev, d); // a bounced destination is copied back here
        drv.dma.unmapSingle(dev, s);
        if (status !== 0) failed++;
        else if (!sameBytes(ram.read(dst.pa as Pa, len), data)) mismatches++;
        bytes += len;
      } finally {
        ram.free(src);
        ram.free(dst);
      }
    }
  } finally {
    box.close(t.slot);
    drv.close();
  }
  return { threadId, rounds: t.rounds, bytes, mismatches, failed };
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
