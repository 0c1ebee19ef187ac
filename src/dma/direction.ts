/**
 * DMA directions (Linux's enum dma_data_direction) and what each lets the device do.
 */
import { IOMMU_READ, IOMMU_WRITE } from '../iommu/page-table.js';

export type DmaDirection = 'to-device' | 'from-device' | 'bidirectional';
export const DMA_DIRECTIONS: readonly DmaDirection[] = ['to-device', 'from-device', 'bidirectional'];

/** dma_info_to_prot: to-device → the device may only read, from-device → only write. */
export function protOf(dir: DmaDirection): number {
  return dir === 'to-device' ? IOMMU_READ : dir === 'from-device' ? IOMMU_WRITE : IOMMU_READ | IOMMU_WRITE;
}

/** Whether data moves CPU → device in this direction (copied into a bounce buffer on map and syncForDevice). */
export const toDevice = (dir: DmaDirection): boolean => dir !== 'from-device';
/** Whether data moves device → CPU (copied back on syncForCpu and unmap). */
export const fromDevice = (dir: DmaDirection): boolean => dir !== 'to-device';
