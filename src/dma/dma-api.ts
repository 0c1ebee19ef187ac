/**
 * The driver-side DMA API, modeled on Linux's dma_map_single / dma_unmap_single
 * (kernel/dma/mapping.c, direct.c, drivers/iommu/dma-iommu.c).
 *
 * Per mapping, as Linux chooses:
 *   - iommu:  the device's domain translates: an IOVA below the device's DMA mask is allocated
 *             and the buffer's pages are mapped (to-device → read-only for the device,
 *             from-device → write-only, bidirectional → both, as dma_info_to_prot does)
 *   - direct: nothing translates (no IOMMU, or an identity domain) and the buffer is below the
 *             mask: the DMA address is the physical address
 * unmap in strict mode returns once no device can use the old translation; in lazy mode the
 * IOVA goes on the domain's flush queue and is reused only after a batched flush (timer, a full
 * queue, or iommu.flush()).
 * Where we differ, for now: a buffer the device cannot reach without translation is refused
 * ('ERANGE') instead of bounced — SWIOTLB is not built yet.
 */
import { DmaError, hex } from '../errors.js';
import { type DmaAddr, type Iova, type Pa, PAGE_SIZE, dmaAddr } from '../addresses.js';
import type { GuestRam } from '../memory/guest-ram.js';
import type { Domain } from '../iommu/domain.js';
import { IOMMU_READ, IOMMU_WRITE } from '../iommu/page-table.js';

export type DmaDirection = 'to-device' | 'from-device' | 'bidirectional';
export const DMA_DIRECTIONS: readonly DmaDirection[] = ['to-device', 'from-device', 'bidirectional'];
export type InvalidationMode = 'strict' | 'lazy';

/** What the DMA API needs to know of a device. */
export interface DmaDevice {
  readonly bdf: string;
  readonly dmaMaskBits: number;
  /** Its domain when an IOMMU translates for it; null when nothing does. */
  readonly domain: Domain | null;
  /** Whether an IOMMU sits between the device and RAM (then a null domain is an error). */
  readonly translated: boolean;
}

export interface DmaMapping {
  /** The address to give the device. */
  readonly addr: DmaAddr;
  readonly len: number;
  /** True when the data goes through a bounce buffer (SWIOTLB). */
  readonly bounced: boolean;
  readonly dir: DmaDirection;
}

interface MappingState {
  dev: DmaDevice;
  /** The domain the mapping lives in (unmapped there even if the device moved since). */
  domain: Domain | null;
  pa: Pa;
  iovaPage: number; // -1 for direct mappings
  npages: number;
  live: boolean;
}

/** dma_info_to_prot: what the device may do with a mapping of each direction. */
export function protOf(dir: DmaDirection): number {
  return dir === 'to-device' ? IOMMU_READ : dir === 'from-device' ? IOMMU_WRITE : IOMMU_READ | IOMMU_WRITE;
}

export class DmaApi {
  private readonly state = new WeakMap<DmaMapping, MappingState>();
  private readonly lazyDomains = new Set<Domain>();
  private timer: NodeJS.Timeout | null = null;
  private liveCount = 0;
  private closed = false;

  constructor(
    private readonly ram: GuestRam,
    readonly mode: InvalidationMode,
    /** Lazy mode: the flush queue is flushed at least this often (Linux: 10 ms). 0 = only when full or asked. */
    private readonly flushTimeoutMs = 10,
  ) {}

  /** dma_map_single: makes [pa, pa + len) reachable by `dev` for DMA in direction `dir`. */
  mapSingle(dev: DmaDevice, pa: Pa, len: number, dir: DmaDirection): DmaMapping {
    if (this.closed) throw new DmaError('ESHUTDOWN', `dma: mapSingle for device ${dev?.bdf}: the machine is closed`);
    this.check(dev, pa, len, dir);
    const domain = dev.domain;
    if (!domain && dev.translated) {
      throw new DmaError(
        'ENOENT',
        `dma: device ${dev.bdf} is behind an IOMMU but attached to no domain this machine knows (detached, or a domain made elsewhere: map through that Domain itself)`,
      );
    }
    if (domain && domain.type === 'dma') return this.mapIommu(dev, domain, pa, len, dir);
    if (domain && domain.type === 'blocked') {
      throw new DmaError('EPERM', `dma: device ${dev.bdf} is attached to a blocking ${domain.name}: no DMA mapping is possible`);
    }
    // No translation: the DMA address is the physical address, if the device can drive it.
    const limit = 2 ** dev.dmaMaskBits;
    if (pa + len > limit) {
      throw new DmaError(
        'ERANGE',
        `dma: buffer [${hex(pa)}, ${hex(pa + len)}) is beyond device ${dev.bdf}'s ${dev.dmaMaskBits}-bit DMA mask and nothing translates for it (bounce buffers are not available yet)`,
      );
    }
    const m: DmaMapping = { addr: dmaAddr(pa), len, bounced: false, dir };
    this.state.set(m, { dev, domain: null, pa, iovaPage: -1, npages: 0, live: true });
    this.liveCount++;
    return m;
  }

  /** dma_unmap_single. */
  unmapSingle(dev: DmaDevice, m: DmaMapping): void {
    const s = m && typeof m === 'object' ? this.state.get(m) : undefined;
    if (!s) throw new DmaError('EINVAL', `dma: unmap for device ${dev?.bdf}: ${describe(m)} was not returned by mapSingle`);
    if (s.dev !== dev) {
      throw new DmaError('EINVAL', `dma: unmap of ${describe(m)} on device ${dev?.bdf}, but it was mapped for device ${s.dev.bdf}`);
    }
    if (!s.live) throw new DmaError('EINVAL', `dma: double unmap of ${describe(m)} on device ${dev.bdf}`);
    if (this.closed) throw new DmaError('ESHUTDOWN', `dma: unmap of ${describe(m)} on device ${dev.bdf}: the machine is closed (its mappings went with it)`);
    const domain = s.domain;
    if (domain && s.iovaPage >= 0) {
      const iova = (s.iovaPage * PAGE_SIZE) as Iova;
      const size = s.npages * PAGE_SIZE;
      if (this.mode === 'strict') {
        domain.unmap(iova, size);
        domain.iova.free(s.iovaPage, s.npages, dev.bdf);
      } else {
        domain.unmapLazy(iova, size);
        while (!domain.fq.push(s.iovaPage, s.npages)) this.flushDomain(domain);
        this.lazyDomains.add(domain);
        this.armTimer();
      }
    }
    // Only now: a failed unmap leaves the mapping live, so it can be unmapped again.
    s.live = false;
    this.liveCount--;
  }

  /** Mappings made and not yet unmapped. */
  liveMappings(): number {
    return this.liveCount;
  }

  /**
   * Lazy mode: ends the stale window now — one flush-all invalidation per domain with queued
   * IOVAs, waited for, then those IOVAs go back to their allocators.
   */
  flush(): void {
    for (const d of this.lazyDomains) this.flushDomain(d);
  }

  /** Flushes what is queued and stops the flush timer; later maps give ESHUTDOWN. */
  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.flush();
    this.lazyDomains.clear();
    this.closed = true;
  }

  private flushDomain(domain: Domain): void {
    const ranges = domain.fq.takeAll();
    if (ranges.length === 0) return;
    // ORDERING: the flush-all is published after every queued PTE was cleared, and returns
    // only when attached devices have observed it; only then may the IOVAs be reused.
    domain.flushIotlbAll();
    for (const [page, n] of ranges) domain.iova.free(page, n, domain.name);
    domain.fq.noteFlush();
  }

  private armTimer(): void {
    if (this.timer || this.flushTimeoutMs <= 0) return;
    this.timer = setInterval(() => {
      let pending = false;
      for (const d of this.lazyDomains) {
        if (d.fq.size() > 0) {
          this.flushDomain(d);
          pending = true;
        }
      }
      if (!pending && this.timer) {
        clearInterval(this.timer);
        this.timer = null;
      }
    }, this.flushTimeoutMs);
    this.timer.unref();
  }

  private mapIommu(dev: DmaDevice, domain: Domain, pa: Pa, len: number, dir: DmaDirection): DmaMapping {
    const first = pa - (pa % PAGE_SIZE);
    const npages = Math.ceil((pa + len - first) / PAGE_SIZE);
    const limitPage = Math.floor(2 ** dev.dmaMaskBits / PAGE_SIZE);
    const iovaPage = domain.iova.alloc(npages, limitPage, `device ${dev.bdf} (${domain.name})`);
    try {
      domain.map((iovaPage * PAGE_SIZE) as Iova, first as Pa, npages * PAGE_SIZE, protOf(dir));
    } catch (e) {
      domain.iova.free(iovaPage, npages, dev.bdf);
      throw e;
    }
    const m: DmaMapping = { addr: dmaAddr(iovaPage * PAGE_SIZE + (pa - first)), len, bounced: false, dir };
    this.state.set(m, { dev, domain, pa, iovaPage, npages, live: true });
    this.liveCount++;
    return m;
  }

  private check(dev: DmaDevice, pa: Pa, len: number, dir: DmaDirection): void {
    if (!dev || typeof dev.dmaMaskBits !== 'number') throw new DmaError('EINVAL', 'dma: the first argument must be a device from machine.addDevice');
    if (!DMA_DIRECTIONS.includes(dir)) {
      throw new DmaError('EINVAL', `dma: direction ${String(dir)} for device ${dev.bdf} must be one of ${DMA_DIRECTIONS.join(', ')}`);
    }
    if (!Number.isSafeInteger(len) || len <= 0) {
      throw new DmaError('EINVAL', `dma: mapping of length ${String(len)} at PA ${hex(Number(pa))} for device ${dev.bdf}: length must be a positive integer`);
    }
    if (!Number.isSafeInteger(pa) || pa < 0) throw new DmaError('EINVAL', `dma: ${String(pa)} is not a physical address (device ${dev.bdf})`);
    if (!this.ram.isRam(pa, len)) {
      throw new DmaError('EFAULT', `dma: [${hex(pa)}, ${hex(pa + len)}) for device ${dev.bdf} is not all guest RAM (${this.ram.describe()})`);
    }
  }
}

function describe(m: unknown): string {
  if (m && typeof m === 'object' && 'addr' in m) {
    const x = m as DmaMapping;
    return `mapping ${hex(Number(x.addr))}+${x.len}`;
  }
  return String(m);
}
