/**
 * The multithreaded-driver benchmark, as Linux's dma_map_benchmark (kernel/dma/map_benchmark.c):
 * `threads` driver threads map and unmap `granulePages` pages for one device in a loop, with an
 * optional delay between map and unmap (dma_trans_ns), all against the device's one domain and
 * the machine's one bounce pool. Returns per-thread map and unmap latency and throughput.
 */
import { DmaError } from '../errors.js';
import { DMA_DIRECTIONS, type DmaDirection } from './direction.js';
import { DriverPool, type MapBenchThreadResult } from './driver-pool.js';
import type { DriverHandle } from './driver-handle.js';
import { StartGate } from './start-gate.js';

export interface MapBenchmarkOptions {
  /** BDF of the device to map for. */
  device: string;
  threads?: number;
  /** Pages per mapping (dma_map_benchmark's granule). */
  granulePages?: number;
  dir?: DmaDirection;
  /** Measured time per thread, ms. */
  durationMs?: number;
  /** Map+unmap pairs per thread at most. */
  iterations?: number;
  /** Busy delay between map and unmap, ns. */
  delayNs?: number;
  /** Maps timed together. */
  batch?: number;
  /** Unmeasured pairs per thread first. */
  warmup?: number;
  /** Run on this pool (kept open) instead of a pool made and ended for the call. */
  pool?: DriverPool;
}

export interface MapBenchmarkResult {
  threads: MapBenchThreadResult[];
  /**
   * Map+unmap pairs per second, all threads together: every pair over the wall time from the
   * first thread's start to the last one's end (threads that did not overlap do not add up).
   */
  pairsPerSecond: number;
  /** Mean of the threads' mean latencies, ns. */
  mapMeanNs: number;
  unmapMeanNs: number;
}

export async function mapBenchmark(machine: { driverHandle(): DriverHandle }, options: MapBenchmarkOptions): Promise<MapBenchmarkResult> {
  const o = {
    threads: 1,
    granulePages: 1,
    dir: 'bidirectional' as DmaDirection,
    durationMs: 1000,
    iterations: Number.MAX_SAFE_INTEGER,
    delayNs: 0,
    batch: 16,
    warmup: 2048,
    ...options,
  };
  const ints: Array<[string, number, number, number]> = [
    ['granulePages', o.granulePages, 1, 1024],
    ['batch', o.batch, 1, 4096],
    ['warmup', o.warmup, 0, 1e9],
    ['delayNs', o.delayNs, 0, 1e9],
  ];
  for (const [k, v, min, max] of ints) {
    if (!Number.isInteger(v) || v < min || v > max) throw new DmaError('EINVAL', `mapBenchmark.${k} = ${String(v)}: must be an integer in [${min}, ${max}]`);
  }
  if (!(o.durationMs > 0) || !(o.iterations > 0)) throw new DmaError('EINVAL', 'mapBenchmark: durationMs and iterations must be positive');
  if (!DMA_DIRECTIONS.includes(o.dir)) throw new DmaError('EINVAL', `mapBenchmark.dir = ${String(o.dir)}: must be one of ${DMA_DIRECTIONS.join(', ')}`);
  if (o.pool && o.threads > o.pool.threads) {
    throw new DmaError('EINVAL', `mapBenchmark: threads = ${o.threads} but the pool has ${o.pool.threads} thread(s): they would not run at once`);
  }
  const driver = machine.driverHandle();
  const pool = o.pool ?? new DriverPool({ threads: o.threads });
  try {
    // All threads warm up, then start measuring together: otherwise the wall time from the first
    // start covers the others' dispatch and warm-up (tens of ms on a busy machine) as if they mapped.
    const startGate = StartGate.create(o.threads).handle;
    const task = { driver, bdf: o.device, granulePages: o.granulePages, dir: o.dir, durationMs: o.durationMs, iterations: o.iterations, delayNs: o.delayNs, batch: o.batch, warmup: o.warmup, startGate };
    const threads = await Promise.all(Array.from({ length: o.threads }, () => pool.run('mapBench', task)));
    const mean = (f: (t: MapBenchThreadResult) => number): number => threads.reduce((a, t) => a + f(t), 0) / threads.length;
    return {
      threads,
      pairsPerSecond: threads.reduce((a, t) => a + t.iterations, 0) / ((Math.max(...threads.map((t) => t.endedAt)) - Math.min(...threads.map((t) => t.startedAt))) / 1000),
      mapMeanNs: mean((t) => t.map.mean),
      unmapMeanNs: mean((t) => t.unmap.mean),
    };
  } finally {
    if (!o.pool) await pool.close();
  }
}
