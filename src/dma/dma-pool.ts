/**
 * DmaPool: Linux's dma_pool (mm/dmapool.c): small, equal blocks of coherent DMA memory carved
 * from coherent pages, for structures a driver hands devices over and over (NVMe PRP lists,
 * NIC SG tables). A block never crosses a page, as dma_pool guarantees for blocks up to a
 * page. Driver-side and single-threaded, like the driver that owns it; not a shared layout.
 */
import { DmaError, hex } from '../errors.js';
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
  /** Blocks handed out, by DMA address: release() takes back only these (dma_pool_free's checks). */
  private readonly out = new Map<number, DmaPoolBlock>();
  private readonly perPage: number;
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
    const b = this.free.pop()!;
    this.out.set(b.addr, b);
    return b;
  }

  /**
   * dma_pool_free: 'EINVAL' for a block this pool has not handed out (freed twice, from another
   * pool, or made up), as DMAPOOL_DEBUG refuses it: the free list would hand it out twice.
   */
  release(b: DmaPoolBlock): void {
    const mine = this.out.get(b?.addr);
    if (mine === undefined || mine.cpuAddr !== b.cpuAddr) {
      throw new DmaError(
        'EINVAL',
        `dma_pool ${this.name} for device ${this.dev.bdf}: free of the block at DMA address ${typeof b?.addr === 'number' ? hex(b.addr) : String(b?.addr)}, which is not a block of this pool in use (freed twice, or not from this pool)`,
      );
    }
    this.out.delete(b.addr);
    this.free.push(mine);
  }

  /** Blocks handed out and not yet freed. */
  inUse(): number {
    return this.out.size;
  }

  /** dma_pool_destroy: every page goes back ('EBUSY' while blocks are in use, as Linux warns). */
  destroy(): void {
    if (this.destroyed) return;
    if (this.out.size > 0) throw new DmaError('EBUSY', `dma_pool ${this.name} for device ${this.dev.bdf}: destroy with ${this.out.size} block(s) still in use`);
    this.destroyed = true;
    for (const p of this.pages) this.dma.freeCoherent(this.dev, p);
    this.pages.length = 0;
    this.free.length = 0;
  }
}
