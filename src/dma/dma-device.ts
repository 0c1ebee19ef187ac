/**
 * What the DMA API knows of a device: Linux's struct device fields that dma-mapping reads —
 * dma_mask, dma_parms (max_segment_size, segment_boundary_mask, min_align_mask) — and how to
 * find the IOMMU domain that translates for it.
 *
 * `DmaDeviceInfo` is plain data (structured-cloneable), so a driver thread can rebuild the same
 * device description from it; `DmaDevice` adds the live domain lookup.
 */
import type { Domain } from '../iommu/domain.js';

export interface DmaDeviceInfo {
  readonly bdf: string;
  /** The requester ID the IOMMU sees (the device's context entry). */
  readonly requesterId: number;
  /** dma_set_mask: address bits the device can drive. Also its coherent mask (dma_set_mask_and_coherent). */
  readonly dmaMaskBits: number;
  /** dma_set_max_seg_size: longest DMA segment the device accepts in one scatter-gather entry. */
  readonly maxSegmentSize: number;
  /** dma_set_seg_boundary: a DMA segment never crosses a multiple of (mask + 1). */
  readonly segmentBoundaryMask: number;
  /** dma_set_min_align_mask: low address bits a bounce buffer must keep (e.g. NVMe's 4 KiB - 1). */
  readonly minAlignMask: number;
  /** Whether an IOMMU sits between the device and RAM (then a missing domain is an error). */
  readonly translated: boolean;
}

export interface DmaDevice extends DmaDeviceInfo {
  /** Its domain when an IOMMU translates for it; null when nothing does. */
  readonly domain: Domain | null;
}

/** pci_device_add's defaults: 64 KiB segments, no segment crossing a 4 GiB line. */
export const PCI_MAX_SEGMENT_SIZE = 65536;
export const PCI_SEGMENT_BOUNDARY_MASK = 0xffffffff;

/** The plain-data part of a device, to hand to another thread. */
export function dmaDeviceInfo(dev: DmaDeviceInfo): DmaDeviceInfo {
  const { bdf, requesterId, dmaMaskBits, maxSegmentSize, segmentBoundaryMask, minAlignMask, translated } = dev;
  return { bdf, requesterId, dmaMaskBits, maxSegmentSize, segmentBoundaryMask, minAlignMask, translated };
}

/** The first address the device cannot drive: 2^dmaMaskBits (exact up to 2^53; larger masks reach all RAM). */
export function dmaLimit(dev: DmaDeviceInfo): number {
  return dmaLimitOfBits(dev.dmaMaskBits);
}

/** 2^bits, from a table (this is on every map); masks of 53 bits and more reach every safe address. */
export function dmaLimitOfBits(bits: number): number {
  return LIMITS[bits] ?? Number.MAX_SAFE_INTEGER;
}
const LIMITS = Array.from({ length: 65 }, (_, b) => (b >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** b));
