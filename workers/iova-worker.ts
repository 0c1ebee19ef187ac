/**
 * iova-worker — a driver-like thread that allocates and frees IOVA ranges in a shared allocator,
 * for the allocator's concurrency tests.
 *
 * workerData: IovaWorkerData. Start protocol over `startFlag` (≥ 2 Int32), as pt-mapper's:
 *   word 1 READY: each worker adds 1 (and notifies) once attached, just before it waits;
 *   word 0 GO:    the parent sets it to 1 and notifies; workers Atomics.wait on it.
 * Overlap check: `owners` holds one Int32 per IOVA page. After alloc the worker claims every page
 * of the range with compareExchange 0 → id; before free it puts them back id → 0. A claim that
 * finds another id is an overlap. At the end the worker frees what it still holds, calls
 * release(), posts one IovaWorkerResult and exits (no open handles).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { DmaError } from '../src/errors.js';
import { IovaAllocator, type IovaAllocatorHandle } from '../src/iommu/iova.js';

export interface IovaWorkerData {
  iova: IovaAllocatorHandle;
  owners: SharedArrayBuffer;
  /** Nonzero, distinct per worker. */
  id: number;
  ops: number;
  seed: number;
  /** Request sizes (pages) and limits (pages, exclusive) to draw from. */
  sizes: number[];
  limits: number[];
  /** Most ranges held at once. */
  maxLive: number;
  startFlag: SharedArrayBuffer;
}

export interface IovaWorkerResult {
  ok: boolean;
  error?: string;
  allocs: number;
  frees: number;
  enospc: number;
}

export const START_GO = 0;
export const START_READY = 1;

function run(d: IovaWorkerData): IovaWorkerResult {
  const a = IovaAllocator.attach(d.iova);
  const owners = new Int32Array(d.owners);
  const flag = new Int32Array(d.startFlag);
  let x = d.seed >>> 0 || 1;
  const rnd = (n: number) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % n;
  };
  const res: IovaWorkerResult = { ok: true, allocs: 0, frees: 0, enospc: 0 };
  const live: Array<[number, number, number]> = []; // first page, requested, reserved
  const who = `worker ${d.id}`;

  const release = (j: number) => {
    const [p, n, size] = live[j];
    live[j] = live[live.length - 1];
    live.pop();
    for (let q = p; q < p + size; q++) {
      if (Atomics.compareExchange(owners, q, d.id, 0) !== d.id) throw new Error(`${who}: page ${q} of its range [${p}, +${size}) was taken by worker ${owners[q]}`);
    }
    a.free(p, n, who);
    res.frees++;
  };

  Atomics.add(flag, START_READY, 1);
  Atomics.notify(flag, START_READY);
  Atomics.wait(flag, START_GO, 0);

  for (let i = 0; i < d.ops; i++) {
    if (live.length < d.maxLive && (live.length === 0 || rnd(2) === 0)) {
      const n = d.sizes[rnd(d.sizes.length)];
      const limit = d.limits[rnd(d.limits.length)];
      let p: number;
      try {
        p = a.alloc(n, limit, who);
      } catch (e) {
        if (e instanceof DmaError && e.code === 'ENOSPC') {
          res.enospc++;
          continue;
        }
        throw e;
      }
      const size = n < 32 ? 2 ** Math.ceil(Math.log2(n)) : n;
      if (p < 1 || p + size > Math.min(limit, a.aperturePages)) throw new Error(`${who}: [${p}, +${size}) is not below the limit ${limit}`);
      for (let q = p; q < p + size; q++) {
        const other = Atomics.compareExchange(owners, q, 0, d.id);
        if (other !== 0) throw new Error(`${who}: got [${p}, +${size}) but page ${q} belongs to worker ${other}: overlap`);
      }
      live.push([p, n, size]);
      res.allocs++;
    } else {
      release(rnd(live.length));
    }
  }
  while (live.length > 0) release(live.length - 1);
  a.release();
  return res;
}

if (parentPort) {
  let result: IovaWorkerResult;
  try {
    result = run(workerData as IovaWorkerData);
  } catch (err) {
    result = { ok: false, error: err instanceof Error ? err.message : String(err), allocs: 0, frees: 0, enospc: 0 };
  }
  parentPort.postMessage(result);
}
