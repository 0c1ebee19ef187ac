/**
 * pt-mapper — a worker that maps a list of ranges into a shared page table, for concurrency tests
 * and benchmarks.
 *
 * workerData: PtMapperData. Start protocol over `startFlag` (a SharedArrayBuffer of ≥ 2 Int32):
 *   word 1 READY: each worker adds 1 (and notifies) once attached, just before it waits;
 *   word 0 GO:    the parent sets it to 1 and notifies once READY has reached the worker count, so
 *                 every worker starts mapping at the same moment (workers Atomics.wait on it).
 * The worker then maps its ranges in order, posts one PtMapperResult and exits (no open handles).
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { Iova, Pa } from '../src/addresses.js';
import { DmaError } from '../src/errors.js';
import { TablePool, type TablePoolHandle } from '../src/iommu/table-pool.js';
import { PageTable, type PageTableHandle } from '../src/iommu/page-table.js';

export interface PtMapperRange {
  iova: number;
  pa: number;
  size: number;
  prot: number;
}

export interface PtMapperData {
  pool: TablePoolHandle;
  table: PageTableHandle;
  ranges: PtMapperRange[];
  startFlag: SharedArrayBuffer;
  /** Try every range even after a failure (codes[] then tells which failed). Default: stop. */
  keepGoing?: boolean;
}

export interface PtMapperResult {
  /** Every range was mapped. */
  ok: boolean;
  /** The first failure's message and DmaError code. */
  error?: string;
  code?: string;
  /** Per range: null = mapped, else the error code (ranges not attempted are absent). */
  codes: (string | null)[];
  /** Nanoseconds from GO to the end of the last map. */
  ns: number;
}

export const START_GO = 0;
export const START_READY = 1;

function run(data: PtMapperData): PtMapperResult {
  const pool = TablePool.attach(data.pool);
  const pt = PageTable.attach(pool, data.table);
  const flag = new Int32Array(data.startFlag);
  Atomics.add(flag, START_READY, 1);
  Atomics.notify(flag, START_READY);
  Atomics.wait(flag, START_GO, 0);
  const t0 = process.hrtime.bigint();
  const result: PtMapperResult = { ok: true, codes: [], ns: 0 };
  for (const r of data.ranges) {
    try {
      pt.map(r.iova as Iova, r.pa as Pa, r.size, r.prot);
      result.codes.push(null);
    } catch (err) {
      const code = err instanceof DmaError ? err.code : 'EIO';
      result.codes.push(code);
      if (result.ok) {
        result.ok = false;
        result.code = code;
        result.error = err instanceof Error ? err.message : String(err);
      }
      if (!data.keepGoing) break;
    }
  }
  result.ns = Number(process.hrtime.bigint() - t0);
  return result;
}

if (parentPort) {
  let result: PtMapperResult;
  try {
    result = run(workerData as PtMapperData);
  } catch (err) {
    result = {
      ok: false,
      code: err instanceof DmaError ? err.code : 'EIO',
      error: err instanceof Error ? err.message : String(err),
      codes: [],
      ns: 0,
    };
  }
  parentPort.postMessage(result);
}
