/**
 * DmaPool: Linux's dma_pool (mm/dmapool.c): small, equal blocks of coherent DMA memory carved
 * from coherent pages, for structures a driver hands devices over and over (NVMe PRP lists,
 * NIC SG tables). A block never crosses a page, as dma_pool guarantees for blocks up to a
 * page. Driver-side and single-threaded, like the driver that owns it; not a shared layout.
 */
import { DmaError } from '../errors.js';
import { PAGE_SIZE, type DmaAddr, type Pa, dmaAddr, pa } from '../addresses.js';
import type { DmaApi, DmaCoherent, DmaDevice } from './dma-api.js';

/** One block: where the CPU writes it and the address the device reads it at. */
export interface DmaPoolBlock {
  readonly cpuAddr: Pa;
  readonly addr: DmaAddr;
}

export class DmaPool {
  private readonly pages: DmaCoherent[] = [];
  private readonly free: DmaPoolBlock[] = [];
  private readonly perPage: number;
  private used = 0;
  private destroyed = false;

  /** dma_pool_create(name, dev, size, align = size, boundary = page). */
  constructor(
    private readonly dma: DmaApi,
    private readonly dev: DmaDevice,
    readonly name: string,
    readonly size: number,
  ) {
    if (!Number.isInteger(size) || size < 8 || size > PAGE_SIZE || (size & (size - 1)) !== 0) {
      throw new DmaError('EINVAL', `dma_pool ${name} for device ${dev.bdf}: block size ${size} must be a power of two in [8, ${PAGE_SIZE}]`);
    }
    this.perPage = PAGE_SIZE / size;
  }

  /** dma_pool_alloc: a block (its contents are what the last user left; zero it if needed). */
  alloc(): DmaPoolBlock {
    if (this.destroyed) throw new DmaError('EPERM', `dma_pool ${this.name} for device ${this.dev.bdf}: alloc after destroy`);
    if (this.free.length === 0) {
      const page = this.dma.allocCoherent(this.dev, PAGE_SIZE);
      this.pages.push(page);
      for (let i = this.perPage - 1; i >= 0; i--) {
        this.free.push({ cpuAddr: pa(page.cpuAddr + i * this.size), addr: dmaAddr(page.addr + i * this.size) });
      }
    }
    this.used++;
    return this.free.pop()!;
  }

  /** dma_pool_free. */
  release(b: DmaPoolBlock): void {
    this.free.push(b);
    this.used--;
  }

  /** Blocks handed out and not yet freed. */
  inUse(): number {
    return this.used;
  }

  /** dma_pool_destroy: every page goes back ('EBUSY' while blocks are in use, as Linux warns). */
  destroy(): void {
    if (this.destroyed) return;
    if (this.used > 0) throw new DmaError('EBUSY', `dma_pool ${this.name} for device ${this.dev.bdf}: destroy with ${this.used} block(s) still in use`);
    this.destroyed = true;
    for (const p of this.pages) this.dma.freeCoherent(this.dev, p);
    this.pages.length = 0;
    this.free.length = 0;
  }
}
