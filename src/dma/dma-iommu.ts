/**
 * The IOMMU path of the DMA API (Linux's drivers/iommu/dma-iommu.c): IOVAs from the domain's
 * allocator below the device's mask, pages mapped with the direction's permissions, and unmap
 * in strict mode (wait for the invalidation) or lazy mode (the flush queue).
 *
 * Where we differ: sg padding up to a segment boundary takes IOVA space but maps nothing
 * (Linux maps the pad to the physical pages after the entry); a domain's flush queue has one
 * ring per driver thread, not per CPU (flush-queue.ts).
 */
import { DmaError, hex } from '../errors.js';
import { type Iova, type Pa, PAGE_SIZE, dmaAddr, type DmaAddr } from '../addresses.js';
import type { Domain } from '../iommu/domain.js';
import { iovaAllocationPages } from '../iommu/iova.js';
import { protOf, type DmaDirection } from './direction.js';
import { type DmaDeviceInfo, dmaLimit } from './dma-device.js';
import { layoutIommuSg, finaliseIommuSg, type SgEntry, type DmaSegment } from './scatterlist.js';

export type InvalidationMode = 'strict' | 'lazy';

/** First IOVA page and page count of the range [addr, addr + len) occupies (iova_align). */
export function iovaRange(addr: number, len: number): { page: number; npages: number } {
  const page = Math.floor(addr / PAGE_SIZE);
  return { page, npages: Math.ceil((addr + len) / PAGE_SIZE) - page };
}

/** iommu_dma_map_page: an IOVA below the mask for the pages of [pa, pa + len). */
export function iommuMapRange(domain: Domain, dev: DmaDeviceInfo, pa: Pa, len: number, dir: DmaDirection): DmaAddr {
  // The low 12 bits by integer ops: `pa % PAGE_SIZE` on a PA above 2^31 is a float fmod.
  const off = (pa >>> 0) & (PAGE_SIZE - 1);
  const npages = Math.ceil((off + len) / PAGE_SIZE);
  const page = allocIova(domain, dev, npages);
  try {
    domain.map((page * PAGE_SIZE) as Iova, (pa - off) as Pa, npages * PAGE_SIZE, protOf(dir));
  } catch (e) {
    domain.iova.free(page, npages, dev.bdf);
    throw forDevice(e, `map of ${len} bytes at PA ${hex(pa)} for device ${dev.bdf}`);
  }
  return dmaAddr(page * PAGE_SIZE + off);
}

/**
 * A page-table pool that ran dry ('ENOMEM') says which domain and IOVA; the DMA API adds the
 * device and the size asked for (the code and the cause stay). Other errors pass unchanged.
 */
function forDevice(e: unknown, what: string): unknown {
  if (!(e instanceof DmaError) || e.code !== 'ENOMEM') return e;
  return new DmaError('ENOMEM', `dma: ${what}: ${e.message.replace(/^ENOMEM: /, '')}`, { cause: e });
}

function allocIova(domain: Domain, dev: DmaDeviceInfo, npages: number): number {
  // `who` is only read on error: the BDF string as is, nothing built per call.
  return domain.iova.alloc(npages, Math.floor(dmaLimit(dev) / PAGE_SIZE), dev.bdf);
}

/**
 * iommu_dma_map_sg: one IOVA range for the whole list, each entry mapped at its place in it,
 * then the entries concatenated into as few DMA segments as the device's limits allow.
 */
export function iommuMapSg(
  domain: Domain,
  dev: DmaDeviceInfo,
  entries: readonly SgEntry[],
  dir: DmaDirection,
): { segments: DmaSegment[]; addrs: DmaAddr[]; page: number; npages: number } {
  const layout = layoutIommuSg(entries, dev.segmentBoundaryMask);
  const npages = layout.total / PAGE_SIZE;
  const page = allocIova(domain, dev, npages);
  const base = page * PAGE_SIZE;
  const prot = protOf(dir);
  // Physically contiguous neighbours that are also IOVA-contiguous go in as one run; all runs
  // are mapped as one all-or-nothing page-table operation (a failure leaves no PTE or table).
  const runs: number[] = [];
  let done = 0;
  while (done < entries.length) {
    let end = done + 1;
    const runPa = entries[done].pa - layout.inPage[done];
    let runLen = Math.ceil((entries[done].len + layout.inPage[done]) / PAGE_SIZE) * PAGE_SIZE;
    while (
      end < entries.length &&
      layout.inPage[end] === 0 &&
      runPa + runLen === entries[end].pa &&
      layout.pageOffsets[done] + runLen === layout.pageOffsets[end]
    ) {
      runLen += Math.ceil(entries[end].len / PAGE_SIZE) * PAGE_SIZE;
      end++;
    }
    runs.push(base + layout.pageOffsets[done], runPa, runLen);
    done = end;
  }
  try {
    domain.mapRuns(runs, base as Iova, npages * PAGE_SIZE, prot);
  } catch (e) {
    domain.iova.free(page, npages, dev.bdf);
    const bytes = entries.reduce((a, x) => a + x.len, 0);
    throw forDevice(e, `mapSg of ${entries.length} entries (${bytes} bytes) for device ${dev.bdf}`);
  }
  const addrs = entries.map((_, i) => dmaAddr(base + layout.pageOffsets[i] + layout.inPage[i]));
  return { segments: finaliseIommuSg(base, entries, layout, dev.maxSegmentSize, dev.segmentBoundaryMask), addrs, page, npages };
}
/**
 * Checks, before anything changes, that [page, page + npages) is exactly a range this domain's
 * allocator handed out (the same size class; a large range to the page) and that no page of
 * that range lies mapped beyond it: an unmap with a wrong address or size is then 'EINVAL' with
 * nothing cleared and nothing freed (Linux would WARN and corrupt; we refuse).
 */
export function iommuCheckRange(domain: Domain, page: number, npages: number, who: string): void {
  try {
    domain.iova.checkFree(page, npages, who);
  } catch (e) {
    const why = e instanceof Error ? e.message.replace(/^EINVAL: /, '') : String(e);
    throw new DmaError(
      'EINVAL',
      `dma: unmap of IOVA [${hex(page * PAGE_SIZE)}, ${hex((page + npages) * PAGE_SIZE)}) for device ${who} in ${domain.name}: not a range the DMA API handed out at this size (double unmap, wrong address or wrong size?): ${why}`,
      { cause: e },
    );
  }
  const block = iovaAllocationPages(npages);
  if (npages < block && domain.iovaToPhys(((page + npages) * PAGE_SIZE) as Iova) !== null) {
    throw new DmaError(
      'EINVAL',
      `dma: unmap of IOVA [${hex(page * PAGE_SIZE)}, ${hex((page + npages) * PAGE_SIZE)}) for device ${who} in ${domain.name}: the mapping goes on at ${hex((page + npages) * PAGE_SIZE)} (wrong size?)`,
    );
  }
}

/**
 * Clears the PTEs of IOVA pages [page, page + npages) of one mapped run: strict mode waits for
 * the invalidation, lazy mode leaves the IOTLB entries stale. Its first and last pages must be
 * mapped (else 'EINVAL' — a double unmap, or a wrong size — and nothing is cleared; the pages of a
 * DMA API mapping are contiguous, so that covers the run).
 */
export function iommuClear(domain: Domain, page: number, npages: number, mode: InvalidationMode, who: string): void {
  const iova = (page * PAGE_SIZE) as Iova;
  const size = npages * PAGE_SIZE;
  const first = domain.pageMapped(page);
  if (!first || !domain.pageMapped(page + npages - 1)) {
    throw new DmaError(
      'EINVAL',
      `dma: unmap of IOVA [${hex(iova)}, ${hex(iova + size)}) for device ${who} in ${domain.name}: ${first ? `${hex(iova + size - PAGE_SIZE)} is not mapped (wrong size?)` : 'nothing is mapped there (double unmap, or never mapped)'}`,
    );
  }
  const cleared = mode === 'strict' ? domain.unmap(iova, size) : domain.unmapLazy(iova, size);
  if (cleared !== size) {
    throw new DmaError('EINVAL', `dma: unmap of IOVA [${hex(iova)}, ${hex(iova + size)}) for device ${who} in ${domain.name}: only ${cleared} of ${size} bytes were mapped`);
  }
}

/** Gives cleared IOVA pages back: at once in strict mode, through the flush queue in lazy mode. */
export function iommuRelease(domain: Domain, page: number, npages: number, mode: InvalidationMode, flusher: LazyFlusher, who: string): void {
  if (mode === 'strict') domain.iova.free(page, npages, who);
  else flusher.queue(domain, page, npages);
}

/**
 * Unmaps one contiguous mapping [addr, addr + len) — a mapSingle or a coherent allocation —
 * all or nothing: checked (and, with `cpuAddr`, checked to map that memory), cleared, given back.
 */
export function iommuUnmapRange(
  domain: Domain,
  addr: number,
  len: number,
  mode: InvalidationMode,
  flusher: LazyFlusher,
  who: string,
  cpuAddr?: number,
): void {
  const { page, npages } = iovaRange(addr, len);
  iommuCheckRange(domain, page, npages, who);
  if (cpuAddr !== undefined && domain.iovaToPhys(addr as Iova) !== cpuAddr) {
    throw new DmaError('EINVAL', `dma: free of IOVA ${hex(addr)} for device ${who} in ${domain.name}: its CPU address ${hex(cpuAddr)} is not the memory mapped there`);
  }
  iommuClear(domain, page, npages, mode, who);
  iommuRelease(domain, page, npages, mode, flusher, who);
}

/**
 * Lazy mode's flush queues (Linux: queue_iova, fq_flush_timeout): unmapped IOVAs wait on their
 * domain's queue until a flush-all invalidation has been observed by every attached device, at
 * the latest `timeoutMs` after they were queued, or when a queue is full.
 */
export class LazyFlusher {
  private readonly domains = new Set<Domain>();
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly timeoutMs: number) {}

  queue(domain: Domain, page: number, npages: number): void {
    while (!domain.fq.push(page, npages)) this.flushDomain(domain);
    this.domains.add(domain);
    this.arm();
  }

  /** Ends the stale window of every domain this thread queued IOVAs on. */
  flush(): void {
    for (const d of this.domains) this.flushDomain(d);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.flush();
    this.domains.clear();
  }

  private flushDomain(domain: Domain): void {
    flushQueued(domain);
  }

  private arm(): void {
    if (this.timer || this.timeoutMs <= 0) return;
    this.timer = setInterval(() => {
      let pending = false;
      for (const d of this.domains) {
        if (d.fq.size() > 0) {
          this.flushDomain(d);
          pending = true;
        }
      }
      if (!pending && this.timer) {
        clearInterval(this.timer);
        this.timer = null;
      }
    }, this.timeoutMs);
    this.timer.unref();
  }
}

/**
 * fq_flush_iotlb + fq_ring_free for every ring of `domain` (any thread's, a dead one's too):
 * takes what is queued, publishes one flush-all, waits for it, then frees the IOVAs.
 */
export function flushQueued(domain: Domain): void {
  const ranges = domain.fq.takeAll();
  if (ranges.length === 0) return;
  // ORDERING: the flush-all is published after every queued PTE was cleared, and returns
  // only when attached devices have observed it; only then may the IOVAs be reused.
  domain.flushIotlbAll();
  for (let i = 0; i < ranges.length; i += 2) domain.iova.free(ranges[i], ranges[i + 1], domain.name);
  domain.fq.noteFlush();
}
