/**
 * The path without translation (Linux's kernel/dma/direct.c): the DMA address is the physical
 * address when the device can drive it; otherwise — or when bouncing is forced, as with
 * swiotlb=force — the data goes through a SWIOTLB slot below the mask, copied by the CPU.
 * Without a bounce pool an unreachable buffer cannot be mapped ('ERANGE').
 */
import { DmaError, hex } from '../errors.js';
import { type DmaAddr, type Pa, dmaAddr } from '../addresses.js';
import type { DmaDirection } from './direction.js';
import { type DmaDeviceInfo, dmaLimit } from './dma-device.js';
import type { Swiotlb } from './swiotlb.js';

export function directMap(
  swiotlb: Swiotlb | null,
  forceBounce: boolean,
  dev: DmaDeviceInfo,
  pa: Pa,
  len: number,
  dir: DmaDirection,
): { addr: DmaAddr; bounced: boolean } {
  if (swiotlb && pa < swiotlb.end && pa + len > swiotlb.start) {
    throw new DmaError('EINVAL', `dma: buffer [${hex(pa)}, ${hex(pa + len)}) for device ${dev.bdf} overlaps the SWIOTLB pool [${hex(swiotlb.start)}, ${hex(swiotlb.end)}): the pool is not the driver's memory`);
  }
  if (!forceBounce && pa + len <= dmaLimit(dev)) return { addr: dmaAddr(pa), bounced: false };
  if (!swiotlb) {
    throw new DmaError(
      'ERANGE',
      `dma: buffer [${hex(pa)}, ${hex(pa + len)}) is beyond device ${dev.bdf}'s ${dev.dmaMaskBits}-bit DMA mask, nothing translates for it and there is no SWIOTLB pool to bounce through`,
    );
  }
  return { addr: dmaAddr(swiotlb.map(dev, pa, len, dir)), bounced: true };
}

/**
 * dma_direct_unmap_page: a bounced mapping copies back (from-device) and frees its slots; with
 * `skipCpuSync` (DMA_ATTR_SKIP_CPU_SYNC, as dma_direct_map_sg's undo passes it) it only frees.
 */
export function directUnmap(swiotlb: Swiotlb | null, dev: DmaDeviceInfo, addr: DmaAddr, len: number, dir: DmaDirection, skipCpuSync = false): void {
  if (swiotlb && swiotlb.isSwiotlbBuffer(addr as number as Pa)) swiotlb.unmap(addr as number as Pa, len, dir, dev, skipCpuSync);
}

/** dma_direct_sync_single_for_{cpu,device}: only bounced mappings have anything to copy. */
export function directSync(swiotlb: Swiotlb | null, dev: DmaDeviceInfo, addr: DmaAddr, len: number, dir: DmaDirection, forCpu: boolean): void {
  if (!swiotlb || !swiotlb.isSwiotlbBuffer(addr as number as Pa)) return;
  if (forCpu) swiotlb.syncForCpu(addr as number as Pa, len, dir, dev);
  else swiotlb.syncForDevice(addr as number as Pa, len, dir, dev);
}
