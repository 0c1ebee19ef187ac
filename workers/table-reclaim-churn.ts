/**
 * table-reclaim-churn — a worker for the concurrency test of empty-table reclaim: it attaches a
 * DMA domain (an iovaManaged one) and, as the DMA API does, maps and unmaps one page at a time at
 * IOVAs it takes from the domain's allocator below `limitPage` (top-down, so in the 2 MiB span
 * just below it, or the one below that when `alternate` is set: every other round). With
 * `reclaim` set it also calls detachEmptyTables() + reclaimRetiredTables() after every round,
 * racing the other worker's maps.
 *
 * workerData: TableReclaimChurnData; start protocol as pt-mapper (startFlag: word 1 READY, word 0
 * GO). Posts one TableReclaimChurnResult and exits; its IOVA cache slot is released first.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { Iova, Pa } from '../src/addresses.js';
import { DmaError } from '../src/errors.js';
import { Domain, type DomainHandle } from '../src/iommu/domain.js';
import { IOMMU_READ, IOMMU_WRITE, SZ_4K } from '../src/iommu/page-table.js';

export interface TableReclaimChurnData {
  domain: DomainHandle;
  rounds: number;
  /** IOVAs are taken below this page. */
  limitPage: number;
  /** Odd rounds take their IOVA 512 pages (one 2 MiB span) lower. */
  alternate: boolean;
  /** Detach empty tables and reclaim retired ones after every round. */
  reclaim: boolean;
  /** PA of this worker's pages: round r maps paBase + (r % 64) * 4 KiB. */
  paBase: number;
  startFlag: SharedArrayBuffer;
}

export interface TableReclaimChurnResult {
  /** Maps that succeeded (each was checked translatable before its unmap). */
  mapped: number;
  /** Maps refused with ENOMEM (the pool ran dry at that moment): changed nothing. */
  enomem: number;
  /** Tables this worker's explicit reclaims detached. */
  detached: number;
  /** The first unexpected failure: another error code, a wrong translation, a wrong unmap count. */
  error?: string;
}

function run(data: TableReclaimChurnData): TableReclaimChurnResult {
  const domain = Domain.attach(data.domain);
  const flag = new Int32Array(data.startFlag);
  Atomics.add(flag, 1, 1);
  Atomics.notify(flag, 1);
  Atomics.wait(flag, 0, 0);
  const out: TableReclaimChurnResult = { mapped: 0, enomem: 0, detached: 0 };
  try {
    for (let r = 0; r < data.rounds; r++) {
      const limit = data.alternate && (r & 1) === 1 ? data.limitPage - 512 : data.limitPage;
      const page = domain.iova.alloc(1, limit, 'churn');
      const iova = page * SZ_4K;
      const pa = data.paBase + (r % 64) * SZ_4K;
      try {
        domain.map(iova as Iova, pa as Pa, SZ_4K, IOMMU_READ | IOMMU_WRITE);
      } catch (e) {
        domain.iova.free(page, 1, 'churn');
        if (e instanceof DmaError && e.code === 'ENOMEM') {
          out.enomem++;
          continue;
        }
        throw e;
      }
      const got = domain.iovaToPhys((iova + 0x123) as Iova);
      if (got !== pa + 0x123) throw new Error(`round ${r}: IOVA ${iova} translates to ${got}, not ${pa + 0x123}`);
      const bytes = domain.unmap(iova as Iova, SZ_4K);
      if (bytes !== SZ_4K) throw new Error(`round ${r}: unmap of IOVA ${iova} cleared ${bytes} bytes, not 4096`);
      domain.iova.free(page, 1, 'churn');
      out.mapped++;
      if (data.reclaim) {
        out.detached += domain.detachEmptyTables();
        domain.reclaimRetiredTables();
      }
    }
  } catch (e) {
    out.error = e instanceof Error ? e.message : String(e);
  } finally {
    domain.iova.release();
  }
  return out;
}

if (parentPort) {
  let result: TableReclaimChurnResult;
  try {
    result = run(workerData as TableReclaimChurnData);
  } catch (err) {
    result = { mapped: 0, enomem: 0, detached: 0, error: err instanceof Error ? err.message : String(err) };
  }
  parentPort.postMessage(result);
}
