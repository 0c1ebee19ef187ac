/**
 * Scatter-gather lists: the buffers a driver hands to dma_map_sg, and how their DMA segments are
 * laid out — the pure arithmetic of drivers/iommu/dma-iommu.c (iommu_dma_map_sg, __finalise_sg)
 * and of merging physically adjacent buffers, kept apart from the code that maps them.
 */
import { type DmaAddr, type Pa, PAGE_SIZE, dmaAddr } from '../addresses.js';
import type { DmaDirection } from './direction.js';

/** One buffer of a scatterlist (Linux: page + offset + length). */
export interface SgEntry {
  readonly pa: Pa | number;
  readonly len: number;
}

/** One DMA segment: what the device is told (sg_dma_address, sg_dma_len). */
export interface DmaSegment {
  readonly addr: DmaAddr;
  readonly len: number;
}

/** A mapped entry: where the buffer's bytes are, and the DMA address they got. */
export interface MappedSgEntry {
  readonly pa: Pa;
  readonly len: number;
  readonly addr: DmaAddr;
  readonly bounced: boolean;
}

/**
 * What dma_map_sg returns. Callers program the device with `segments` (its length is the count
 * dma_map_sg returns) and hand the whole table back to unmapSg / sync. Plain data: it can be
 * posted to another thread and unmapped there.
 */
export interface DmaSgTable {
  readonly segments: readonly DmaSegment[];
  readonly entries: readonly MappedSgEntry[];
  readonly dir: DmaDirection;
  /** Domain the IOVA range lives in (-1: not translated). */
  readonly domainId: number;
  /** The single IOVA range under an IOMMU: first page and page count (0 pages: none). */
  readonly iovaPage: number;
  readonly iovaPages: number;
}

/** Where each entry goes in the one IOVA range iommu_dma_map_sg allocates. */
export interface IommuSgLayout {
  /** Byte offset of each entry's first page in the IOVA range. */
  readonly pageOffsets: number[];
  /** The entries' offsets in their first page (iova_offset). */
  readonly inPage: number[];
  /** Bytes each entry takes in the IOVA range: its pages, plus padding up to a segment boundary. */
  readonly spans: number[];
  /** Total IOVA bytes (page multiple). */
  readonly total: number;
}

/**
 * iommu_dma_map_sg's layout: each entry occupies whole IOVA pages from its page offset on; when
 * the next entry would cross a segment boundary, the previous one is padded up to that boundary
 * (the range is size-aligned, so laying out by lengths alone is enough).
 */
export function layoutIommuSg(entries: readonly SgEntry[], boundaryMask: number): IommuSgLayout {
  const boundary = boundaryMask + 1;
  const pageOffsets: number[] = [];
  const inPage: number[] = [];
  const spans: number[] = [];
  let total = 0;
  for (let i = 0; i < entries.length; i++) {
    const off = entries[i].pa % PAGE_SIZE;
    const span = Math.ceil((entries[i].len + off) / PAGE_SIZE) * PAGE_SIZE;
    const pad = (boundary - (total % boundary)) % boundary;
    if (pad !== 0 && pad < span - 1) {
      spans[i - 1] += pad;
      total += pad;
    }
    pageOffsets.push(total);
    inPage.push(off);
    spans.push(span);
    total += span;
  }
  return { pageOffsets, inPage, spans, total };
}

/**
 * __finalise_sg: concatenates entries into DMA segments. An entry joins the segment before it
 * when that one ended on a page boundary, the entry starts at offset 0 of its page, the join is
 * not at a segment boundary, and the result stays within the device's max segment size.
 */
export function finaliseIommuSg(
  base: number,
  entries: readonly SgEntry[],
  layout: IommuSgLayout,
  maxSegmentSize: number,
  boundaryMask: number,
): DmaSegment[] {
  const boundary = boundaryMask + 1;
  const out: Array<{ addr: DmaAddr; len: number }> = [];
  let cur: { addr: DmaAddr; len: number } | null = null;
  let curLen = 0;
  for (let i = 0; i < entries.length; i++) {
    const at = base + layout.pageOffsets[i];
    const off = layout.inPage[i];
    const len = entries[i].len;
    if (cur && curLen > 0 && off === 0 && at % boundary !== 0 && maxSegmentSize - curLen >= len) {
      curLen += len;
    } else {
      cur = { addr: dmaAddr(at + off), len: 0 };
      out.push(cur);
      curLen = len;
    }
    cur.len = curLen;
    // An entry that does not fill its span (tail offset or padding) ends the segment.
    if (len + off < layout.spans[i]) curLen = 0;
  }
  return out;
}

/**
 * Segments without translation: entries whose DMA addresses follow each other merge, as the
 * block layer merges physically contiguous pages before dma_map_sg (dma-direct itself maps one
 * segment per entry), within the max segment size and never across a segment boundary.
 */
export function mergeDirectSg(mapped: readonly { addr: number; len: number }[], maxSegmentSize: number, boundaryMask: number): DmaSegment[] {
  const boundary = boundaryMask + 1;
  const out: Array<{ addr: DmaAddr; len: number }> = [];
  for (const e of mapped) {
    const last = out[out.length - 1];
    if (
      last &&
      last.addr + last.len === e.addr &&
      last.len + e.len <= maxSegmentSize &&
      Math.floor(last.addr / boundary) === Math.floor((e.addr + e.len - 1) / boundary)
    ) {
      last.len += e.len;
    } else {
      out.push({ addr: dmaAddr(e.addr), len: e.len });
    }
  }
  return out;
}
