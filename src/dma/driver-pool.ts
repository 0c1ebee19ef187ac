/**
 * Driver threads: a piscina pool whose tasks attach to a machine by its DriverHandle and map,
 * unmap and sync against the same domains, IOVA allocators and bounce pool as the main thread
 * (workers/driver-task.ts holds the tasks). The pool is sized once; every thread is ended by
 * close().
 */
import { Piscina } from 'piscina';
import { DmaError, DMA_ERROR_CODES, type DmaErrorCode } from '../errors.js';
import { workerUrl } from '../worker-url.js';
import type { MapBenchTask, MapBenchThreadResult, HandoffTask, HandoffResult, MapAndDieTask, ScenarioDriverTask, ScenarioDriverResult } from '../../workers/driver-task.js';

export type { MapBenchTask, MapBenchThreadResult, HandoffTask, HandoffResult, MapAndDieTask, ScenarioDriverTask, ScenarioDriverResult };

interface TaskTypes {
  mapBench: [MapBenchTask, MapBenchThreadResult];
  handoff: [HandoffTask, HandoffResult];
  /** Fault injection: the thread dies holding mappings (the task always rejects). */
  mapAndDie: [MapAndDieTask, never];
  scenarioDriver: [ScenarioDriverTask, ScenarioDriverResult];
}

export const MAX_DRIVER_THREADS = 32;

export class DriverPool {
  readonly threads: number;
  private readonly pool: Piscina;
  private closing: Promise<void> | null = null;

  /**
   * `onThreadExit` is called with a thread's id once it has ended, however (its task made it
   * exit, it crashed, the pool retired or destroyed it): pass `(id) => m.reclaimDriverThread(id)`
   * so the machine takes back the caches of a thread that died holding them.
   */
  constructor(options: { threads: number; onThreadExit?: (threadId: number, exitCode: number) => void }) {
    const { threads } = options;
    // Each thread takes one of the DMA API's 64 counter slots; the machine's own thread takes one.
    if (!Number.isInteger(threads) || threads < 1 || threads > MAX_DRIVER_THREADS) {
      throw new DmaError('EINVAL', `driver pool: threads = ${String(threads)} must be an integer in [1, ${MAX_DRIVER_THREADS}]`);
    }
    this.threads = threads;
    // One task per thread at a time: a task is a driver's whole loop, not a small job.
    this.pool = new Piscina({ filename: workerUrl('driver-task').href, minThreads: threads, maxThreads: threads, concurrentTasksPerWorker: 1, idleTimeout: 60_000 });
    const onExit = options.onThreadExit;
    if (onExit) {
      const watched = new WeakSet<object>();
      this.pool.on('workerCreate', () => {
        for (const w of this.pool.threads) {
          if (watched.has(w)) continue;
          watched.add(w);
          const id = w.threadId;
          w.once('exit', (code: number) => onExit(id, code));
        }
      });
    }
  }

  run<K extends keyof TaskTypes>(name: K, task: TaskTypes[K][0]): Promise<TaskTypes[K][1]> {
    if (this.closing) return Promise.reject(new DmaError('ESHUTDOWN', `driver pool: ${name} after close()`));
    return (this.pool.run(task, { name }) as Promise<TaskTypes[K][1]>).catch((e: unknown) => {
      // A thrown DmaError crosses the thread as a plain Error: give it its class and code back.
      const msg = e instanceof Error ? e.message : String(e);
      const code = /^([A-Z]+): /.exec(msg)?.[1];
      if (code && DMA_ERROR_CODES.includes(code as DmaErrorCode)) throw new DmaError(code as DmaErrorCode, msg.slice(code.length + 2), { cause: e });
      throw e;
    });
  }

  /** Ends every thread of the pool. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.pool.destroy();
    return this.closing;
  }
}
