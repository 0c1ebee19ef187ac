/**
 * The piscina task module of driver threads: each task attaches to a machine from its
 * DriverHandle (shared memory only; nothing on the data path is a message) and works against
 * the same domains, IOVA allocators and bounce pool as every other thread.
 *
 *   mapBench: Linux's dma_map_benchmark loop — map `granulePages` pages, wait `delayNs`
 *             (dma_trans_ns), unmap — timed in batches, for `durationMs` or `iterations`.
 *   handoff:  map a source (to-device) and a destination (from-device), hand the transfer to
 *             the device side through a mailbox, wait, unmap and check the bytes arrived.
 *   mapAndDie: fault injection — a driver thread that dies holding mappings: it maps `keep`
 *             buffers and leaves them mapped, maps and unmaps `churn` more (so its IOVA
 *             magazines hold cached ranges), reports them in `out`, then ends its thread
 *             (exit code 3) without unmapping or closing anything.
 *   scenarioDriver: one driver thread's share of a scenario workload (src/scenario/workload.ts):
 *             prepare an I/O (map or sync), hand its segments to the device side through the
 *             mailbox, finish it (unmap or sync, verify), for a count or a duration.
 */
import { threadId } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { attachDriver, type DriverHandle } from '../src/dma/driver-handle.js';
import { HandoffMailbox, type HandoffMailboxHandle } from '../src/dma/handoff-mailbox.js';
import type { DmaDirection } from '../src/dma/direction.js';
import type { DmaMapping } from '../src/dma/dma-api.js';
import type { Pa } from '../src/addresses.js';
import { summarize, type LatencySummary } from '../src/dma/latency.js';
import { StartGate, type StartGateHandle } from '../src/dma/start-gate.js';
import { WorkloadDriver, type WorkloadDriverSpec, type WorkloadResult } from '../src/scenario/workload.js';
import { IO_STATUS_CODES } from '../src/scenario/io-model.js';

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
  /** Maps timed together (timer overhead is ~40 ns, so single maps are timed in batches; 1 when delayNs > 0). */
  batch: number;
  /** Pairs run first and not measured. */
  warmup: number;
  /** Threads of one run start measuring together, after all have warmed up (none: at once). */
  startGate?: StartGateHandle;
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
  /** Wall-clock start and end of the measured loop (ms since the epoch, sub-ms precision). */
  startedAt: number;
  endedAt: number;
}

export function mapBench(t: MapBenchTask): MapBenchThreadResult {
  const gate = t.startGate ? StartGate.attach(t.startGate) : null;
  let drv: ReturnType<typeof attachDriver>;
  try {
    drv = attachDriver(t.driver);
  } catch (e) {
    gate?.arrive(); // nobody waits for a thread that cannot run
    throw e;
  }
  const size = t.granulePages * 4096;
  // dma_map_benchmark delays between each map and its unmap: with a delay, one pair per batch.
  const batch = t.delayNs > 0 ? 1 : t.batch;
  const bufs: Array<{ pa: Pa; size: number }> = [];
  const maps: DmaMapping[] = [];
  const mapNs: number[] = [];
  const unmapNs: number[] = [];
  let done = 0;
  try {
    const dev = drv.device(t.bdf);
    for (let k = 0; k < batch; k++) bufs.push(drv.dma.ram.alloc(size));
    const round = (measure: boolean): void => {
      const t0 = performance.now();
      try {
        for (let k = 0; k < batch; k++) maps.push(drv.dma.mapSingle(dev, bufs[k].pa, size, t.dir));
      } catch (e) {
        for (const m of maps.splice(0)) drv.dma.unmapSingle(dev, m); // nothing of a failed batch stays mapped
        throw e;
      }
      const t1 = performance.now();
      if (t.delayNs > 0) while ((performance.now() - t1) * 1e6 < t.delayNs);
      const t2 = performance.now();
      for (const m of maps.splice(0)) drv.dma.unmapSingle(dev, m);
      const t3 = performance.now();
      if (measure) {
        mapNs.push(((t1 - t0) * 1e6) / batch);
        unmapNs.push(((t3 - t2) * 1e6) / batch);
        done += batch;
      }
    };
    for (let i = 0; i < t.warmup; i += batch) round(false);
    gate?.arriveAndWait();
    const start = performance.now();
    const startedAt = performance.timeOrigin + start;
    while (done < t.iterations && performance.now() - start < t.durationMs) round(true);
    const end = performance.now();
    const seconds = (end - start) / 1000;
    return {
      threadId,
      iterations: done,
      seconds,
      startedAt,
      endedAt: performance.timeOrigin + end,
      map: summarize(mapNs),
      unmap: summarize(unmapNs),
      pairsPerSecond: done / seconds,
    };
  } finally {
    gate?.arrive(); // a thread that failed before measuring arrives too (no-op after arriveAndWait)
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
  const box = HandoffMailbox.attach(t.mailbox);
  let drv: ReturnType<typeof attachDriver>;
  let dev: ReturnType<ReturnType<typeof attachDriver>['device']>;
  try {
    drv = attachDriver(t.driver);
    dev = drv.device(t.bdf);
  } catch (e) {
    box.close(t.slot); // the device side must not wait for transfers that will never come
    throw e;
  }
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
      try {
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
          let status: number;
          try {
            const d = drv.dma.mapSingle(dev, dst.pa, len, 'from-device');
            try {
              status = box.post(t.slot, s.addr, d.addr, len);
            } finally {
              drv.dma.unmapSingle(dev, d); // a bounced destination is copied back here
            }
          } finally {
            drv.dma.unmapSingle(dev, s);
          }
          if (status !== 0) failed++;
          else if (!sameBytes(ram.read(dst.pa as Pa, len), data)) mismatches++;
          bytes += len;
        } finally {
          ram.free(dst);
        }
      } finally {
        ram.free(src);
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

export interface MapAndDieTask {
  driver: DriverHandle;
  bdf: string;
  /** Buffers left mapped (from-device, `pages` pages each). */
  keep: number;
  pages: number;
  /** Map+unmap pairs made first, of 1..4 pages. */
  churn: number;
  /**
   * Where the thread reports before it dies (Float64): [0] threadId, [1] count, then per kept
   * mapping its DMA address, length and domain id. Written with plain stores before the exit.
   */
  out: SharedArrayBuffer;
}

export function mapAndDie(t: MapAndDieTask): never {
  const drv = attachDriver(t.driver);
  const dev = drv.device(t.bdf);
  const ram = drv.dma.ram;
  for (let i = 0; i < t.churn; i++) {
    const n = 1 + (i % 4);
    const b = ram.alloc(n * 4096);
    drv.dma.unmapSingle(dev, drv.dma.mapSingle(dev, b.pa, n * 4096, 'to-device'));
    ram.free(b);
  }
  const out = new Float64Array(t.out);
  for (let i = 0; i < t.keep; i++) {
    const b = ram.alloc(t.pages * 4096);
    const h = drv.dma.mapSingle(dev, b.pa, t.pages * 4096, 'from-device');
    out.set([h.addr, h.len, h.domainId, b.pa], 2 + 4 * i);
  }
  out[0] = threadId;
  out[1] = t.keep;
  process.exit(3);
}

export interface ScenarioDriverTask {
  driver: DriverHandle;
  bdf: string;
  /** A mailbox made with maxSegments for the workload's largest buffer. */
  mailbox: HandoffMailboxHandle;
  slot: number;
  /** The workload, with lanes = 1 (one I/O in flight per driver thread). */
  spec: WorkloadDriverSpec;
  /** Run this many I/Os … */
  count?: number;
  /** … or for this long (ms). */
  durationMs?: number;
}

export interface ScenarioDriverResult extends WorkloadResult {
  threadId: number;
}

export function scenarioDriver(t: ScenarioDriverTask): ScenarioDriverResult {
  const box = HandoffMailbox.attach(t.mailbox);
  let drv: ReturnType<typeof attachDriver> | null = null;
  let wd: WorkloadDriver | null = null;
  try {
    drv = attachDriver(t.driver);
    wd = new WorkloadDriver({ dma: drv.dma, dev: drv.device(t.bdf), ram: drv.dma.ram }, t.spec);
    const start = performance.now();
    for (let n = 0; t.count !== undefined ? n < t.count : performance.now() - start < (t.durationMs ?? 0); n++) {
      const io = wd.prepare(0, n);
      let status: number;
      try {
        status = box.postIo(t.slot, io.len, io.reads, io.writes);
      } catch (e) {
        wd.finish(0, 'aborted'); // unmaps what prepare mapped
        throw e;
      }
      wd.finish(0, IO_STATUS_CODES[status] ?? 'aborted');
    }
    return { threadId, ...wd.close() };
  } finally {
    box.close(t.slot); // the device side stops waiting for this thread
    try {
      wd?.close();
    } finally {
      drv?.close();
    }
  }
}
