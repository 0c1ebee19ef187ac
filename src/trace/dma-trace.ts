/**
 * The DMA API's trace hooks: what one driver thread records in its trace ring (trace-ring.ts)
 * around map, unmap, sync and coherent calls — a slice per call on the thread's track, an
 * instant per bounced mapping, and a counter sample (bounce slots in use, mapped pages) after
 * every call that changes them, all at the clock reads of the slice (two per call). DmaApi holds one DmaTrace, or null when tracing is off; then
 * its only cost is that null check. Only calls that succeed are recorded.
 */
import type { DmaAddr, Pa } from '../addresses.js';
import type { DmaDirection } from '../dma/direction.js';
import type { Swiotlb } from '../dma/swiotlb.js';
import type { DmaSgTable } from '../dma/scatterlist.js';
import { TRACE_KIND, type TraceWriter } from './trace-ring.js';

const DIR_CODE: Record<DmaDirection, number> = { 'to-device': 1, 'from-device': 2, bidirectional: 3 };
export const DIR_NAMES = ['', 'to-device', 'from-device', 'bidirectional'] as const;

/** info word of driver events: requester ID (16 bits) | direction << 16 | bounced << 18. */
export function packMapInfo(requesterId: number, dir: DmaDirection, bounced: boolean): number {
  return (requesterId & 0xffff) | (DIR_CODE[dir] << 16) | (bounced ? 1 << 18 : 0);
}

export function unpackMapInfo(info: number): { requesterId: number; dir: string; bounced: boolean } {
  return { requesterId: info & 0xffff, dir: DIR_NAMES[(info >>> 16) & 3], bounced: (info & (1 << 18)) !== 0 };
}

/** Pages [addr, addr + len) touches. */
function pagesOf(addr: number, len: number): number {
  return Math.floor(((addr % 4096) + len + 4095) / 4096);
}

export class DmaTrace {
  constructor(
    readonly writer: TraceWriter,
    private readonly swiotlb: Swiotlb | null,
  ) {}

  now(): number {
    return this.writer.now();
  }

  mapSingle(t0: number, requesterId: number, addr: DmaAddr, pa: Pa, len: number, dir: DmaDirection, bounced: boolean): void {
    const w = this.writer;
    const t1 = w.slice(TRACE_KIND.mapSingle, t0, addr, pa, len, packMapInfo(requesterId, dir, bounced));
    if (bounced) w.put(TRACE_KIND.bounce, t1, 0, addr, pa, len, packMapInfo(requesterId, dir, true));
    this.sample(t1, pagesOf(addr, len));
  }

  unmapSingle(t0: number, requesterId: number, addr: DmaAddr, len: number, dir: DmaDirection, bounced: boolean): void {
    this.sample(this.writer.slice(TRACE_KIND.unmapSingle, t0, addr, 0, len, packMapInfo(requesterId, dir, bounced)), -pagesOf(addr, len));
  }

  mapSg(t0: number, requesterId: number, sg: DmaSgTable): void {
    const w = this.writer;
    const bounced = sg.entries.some((e) => e.bounced);
    let total = 0;
    let pages = 0;
    for (const e of sg.entries) {
      total += e.len;
      pages += pagesOf(e.addr, e.len);
    }
    const segs = sg.segments;
    const t1 = w.slice(TRACE_KIND.mapSg, t0, segs[0]?.addr ?? 0, segs.length, total, packMapInfo(requesterId, sg.dir, bounced));
    // The segments follow the slice at its start time: what the device is told to use.
    for (const s of segs) w.put(TRACE_KIND.sgSegment, t0, 0, s.addr, 0, s.len, 0);
    if (bounced) w.put(TRACE_KIND.bounce, t1, 0, segs[0]?.addr ?? 0, sg.entries[0]?.pa ?? 0, total, packMapInfo(requesterId, sg.dir, true));
    this.sample(t1, pages);
  }

  unmapSg(t0: number, requesterId: number, sg: DmaSgTable): void {
    let total = 0;
    let pages = 0;
    for (const e of sg.entries) {
      total += e.len;
      pages += pagesOf(e.addr, e.len);
    }
    const t1 = this.writer.slice(TRACE_KIND.unmapSg, t0, sg.segments[0]?.addr ?? 0, sg.segments.length, total, packMapInfo(requesterId, sg.dir, sg.entries.some((e) => e.bounced)));
    this.sample(t1, -pages);
  }

  sync(t0: number, forCpu: boolean, requesterId: number, addr: number, len: number): void {
    this.writer.slice(forCpu ? TRACE_KIND.syncForCpu : TRACE_KIND.syncForDevice, t0, addr, 0, len, requesterId & 0xffff);
  }

  coherent(t0: number, alloc: boolean, requesterId: number, addr: DmaAddr, cpuAddr: Pa, size: number): void {
    const t1 = this.writer.slice(alloc ? TRACE_KIND.allocCoherent : TRACE_KIND.freeCoherent, t0, addr, cpuAddr, size, packMapInfo(requesterId, 'bidirectional', false));
    this.sample(t1, alloc ? pagesOf(addr, size) : -pagesOf(addr, size));
  }

  /** A counter sample at `ts` (the slice's end: no second clock read). */
  private sample(ts: number, pageDelta: number): void {
    this.writer.counters(ts, this.swiotlb ? this.swiotlb.slotsInUse() : 0, pageDelta);
  }
}
