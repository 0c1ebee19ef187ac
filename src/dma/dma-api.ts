/**
 * The driver-side DMA API, modeled on Linux's (kernel/dma/mapping.c): it picks, per mapping, one
 * of three paths, as Linux does —
 *   - iommu:  the device's domain translates: an IOVA below the device's DMA mask is allocated
 *             and the buffer's pages mapped with the direction's permissions (dma-iommu.ts)
 *   - direct: nothing translates and the device can drive the buffer's PAs: DMA address = PA
 *   - bounce: nothing translates and it cannot (or bouncing is forced, swiotlb=force): a SWIOTLB
 *             slot below the mask stands in for the buffer, copied by the CPU (dma-direct.ts)
 *
 * Like Linux's API it keeps no table of its own: unmap and sync take the mapping back (address,
 * length, direction) and find the rest in the shared structures — the domain's page table and
 * IOVA allocator, the SWIOTLB slot metadata. So a mapping made in one thread can be unmapped in
 * another, and every thread attaches to the same DMA API from its handle (DmaApi.attach).
 * Checks beyond what those structures give (a direct mapping unmapped twice, a wrong size or
 * direction) are DMA-API debugging's job, opt-in as CONFIG_DMA_API_DEBUG (dma-debug.ts).
 */
import { DmaError, hex } from '../errors.js';
import { type DmaAddr, type Pa, PAGE_SIZE, dmaAddr, pageUp } from '../addresses.js';
import { GuestRam, type GuestRamHandle } from '../memory/guest-ram.js';
import { Iommu } from '../iommu/iommu.js';
import type { IommuHandle } from '../iommu/iommu-handle.js';
import { Domain, type DomainHandle } from '../iommu/domain.js';
import { DMA_DIRECTIONS, type DmaDirection } from './direction.js';
import { type DmaDevice, type DmaDeviceInfo, dmaLimit } from './dma-device.js';
import { iommuMapRange, iommuMapSg, iommuCheckRange, iommuClear, iommuRelease, iommuUnmapRange, iovaRange, LazyFlusher, type InvalidationMode } from './dma-iommu.js';
import { directMap, directUnmap, directSync } from './dma-direct.js';
import { mergeDirectSg, type DmaSgTable, type MappedSgEntry, type SgEntry } from './scatterlist.js';
import { DmaCounters, DMA_COUNTER as C, type DmaCountersHandle, type DmaCounterValues } from './dma-counters.js';
import { Swiotlb, type SwiotlbHandle } from './swiotlb.js';
import { DmaDebug, type DmaDebugHandle } from './dma-debug.js';
import { TraceRings, type TraceRingsHandle } from '../trace/trace-ring.js';
import { DmaTrace } from '../trace/dma-trace.js';

export type { DmaDirection } from './direction.js';
export { DMA_DIRECTIONS, protOf } from './direction.js';
export type { InvalidationMode } from './dma-iommu.js';
export type { DmaDevice, DmaDeviceInfo } from './dma-device.js';
export type { SgEntry, DmaSegment, DmaSgTable } from './scatterlist.js';

/** What mapSingle returns; plain data, so it can be unmapped from another thread. */
export interface DmaMapping {
  /** The address to give the device. */
  readonly addr: DmaAddr;
  readonly len: number;
  readonly dir: DmaDirection;
  /** True when the data goes through a bounce buffer (SWIOTLB). */
  readonly bounced: boolean;
  /** Domain the IOVA lives in (-1: not translated); unmap goes there even if the device moved. */
  readonly domainId: number;
}

/** What allocCoherent returns: memory both the CPU (at `cpuAddr`) and the device (at `addr`) use. */
export interface DmaCoherent {
  readonly cpuAddr: Pa;
  readonly addr: DmaAddr;
  readonly size: number;
  readonly domainId: number;
}

export interface DmaApiHandle {
  readonly ram: GuestRamHandle;
  readonly iommu: IommuHandle;
  readonly swiotlb: SwiotlbHandle | null;
  readonly counters: DmaCountersHandle;
  readonly debug: DmaDebugHandle | null;
  readonly mode: InvalidationMode;
  readonly flushTimeoutMs: number;
  readonly forceBounce: boolean;
  /** The machine's trace rings (null: tracing off); each thread records into its own ring. */
  readonly trace: TraceRingsHandle | null;
}

export interface DmaApiOptions {
  mode?: InvalidationMode;
  /** Lazy mode: the flush queue is flushed at least this often (Linux: 10 ms). 0 = only when full or asked. */
  flushTimeoutMs?: number;
  swiotlb?: Swiotlb | null;
  /** swiotlb=force: bounce every mapping that is not translated. */
  forceBounce?: boolean;
  debug?: DmaDebug | null;
  /** Finds a domain by id (for mappings that remember theirs). */
  domainById?: (id: number) => Domain | undefined;
  /**
   * Who owns the device's DMA instead of the DMA API, if anyone (e.g. 'vfio-pci' while its group
   * is in a VFIO container): then DMA API calls for it are 'EBUSY'.
   */
  dmaOwner?: (dev: DmaDeviceInfo) => string | null;
  /** Domain views this DMA API attached itself (their per-thread IOVA caches go back at close). */
  ownDomains?: readonly Domain[];
  /** Trace rings to record this thread's calls in (null: tracing off, no cost but a null check). */
  trace?: TraceRings | null;
}

export interface DmaApiStats extends DmaCounterValues {
  /** Mappings, sg tables and coherent allocations made and not yet undone. */
  liveMappings: number;
  bouncedBytes: number;
  bounceSlotsInUse: number;
  bounceSlots: number;
}

export class DmaApi {
  readonly mode: InvalidationMode;
  readonly swiotlb: Swiotlb | null;
  readonly debug: DmaDebug | null;
  readonly forceBounce: boolean;
  private readonly counters: DmaCounters;
  private readonly flusher: LazyFlusher;
  private readonly domainById: (id: number) => Domain | undefined;
  private readonly flushTimeoutMs: number;
  private readonly ownDomains: readonly Domain[];
  private readonly dmaOwner: (dev: DmaDeviceInfo) => string | null;
  private readonly traceRings: TraceRings | null;
  /** This thread's trace hooks; null when tracing is off (or no ring was left for this thread). */
  private readonly trace: DmaTrace | null;
  private closed = false;

  /** The DMA API of a machine's main thread. */
  static create(ram: GuestRam, iommu: Iommu, options: DmaApiOptions = {}): DmaApi {
    return new DmaApi(ram, iommu, DmaCounters.create(), options);
  }

  /**
   * The same DMA API in another thread. `domains` are the handles of the domains the thread will
   * map in (Domain objects are per thread; the context table says which one a device uses).
   */
  static attach(handle: DmaApiHandle, domains: readonly DomainHandle[] = []): DmaApi {
    const ram = GuestRam.attach(handle.ram);
    const iommu = Iommu.attach(handle.iommu);
    const byId = new Map(domains.map((h) => [h.id, Domain.attach(h)]));
    return new DmaApi(ram, iommu, DmaCounters.attach(handle.counters), {
      mode: handle.mode,
      flushTimeoutMs: handle.flushTimeoutMs,
      forceBounce: handle.forceBounce,
      swiotlb: handle.swiotlb ? Swiotlb.attach(ram, handle.swiotlb) : null,
      debug: handle.debug ? DmaDebug.attach(handle.debug) : null,
      domainById: (id) => byId.get(id),
      ownDomains: [...byId.values()],
      trace: handle.trace ? TraceRings.attach(handle.trace) : null,
    });
  }

  private constructor(
    readonly ram: GuestRam,
    private readonly iommu: Iommu,
    counters: DmaCounters,
    options: DmaApiOptions,
  ) {
    this.mode = options.mode ?? 'strict';
    this.flushTimeoutMs = options.flushTimeoutMs ?? 10;
    this.swiotlb = options.swiotlb ?? null;
    this.forceBounce = options.forceBounce ?? false;
    this.debug = options.debug ?? null;
    this.counters = counters;
    // The counter slot first: running out of slots must fail the attach, not a map half-done.
    counters.claim();
    this.flusher = new LazyFlusher(this.flushTimeoutMs);
    this.domainById = options.domainById ?? ((id) => iommu.domain(id));
    this.ownDomains = options.ownDomains ?? [];
    this.dmaOwner = options.dmaOwner ?? (() => null);
    this.traceRings = options.trace ?? null;
    const writer = this.traceRings?.writer('driver') ?? null;
    this.trace = writer ? new DmaTrace(writer, this.swiotlb) : null;
    if (this.trace === null) {
      // Tracing off: the public entry points are the untraced bodies themselves, so the hooks
      // cost nothing at all (not even a null check or a call level V8 may decline to inline).
      this.mapSingle = this.doMapSingle;
      this.unmapSingle = this.doUnmapSingle;
      this.mapSg = this.doMapSg;
      this.unmapSg = this.doUnmapSg;
      this.allocCoherent = this.doAllocCoherent;
      this.freeCoherent = this.doFreeCoherent;
    }
  }

  get handle(): DmaApiHandle {
    return {
      ram: this.ram.handle,
      iommu: this.iommu.handle,
      swiotlb: this.swiotlb?.handle ?? null,
      counters: this.counters.handle,
      debug: this.debug?.handle ?? null,
      mode: this.mode,
      flushTimeoutMs: this.flushTimeoutMs,
      forceBounce: this.forceBounce,
      trace: this.traceRings?.handle ?? null,
    };
  }

  /**
   * A device description whose domain is looked up in the IOMMU's context table on each use
   * (for a driver thread that got the device's info as plain data).
   */
  device(info: DmaDeviceInfo): DmaDevice {
    const iommu = this.iommu;
    const byId = this.domainById;
    return {
      ...info,
      get domain(): Domain | null {
        if (!info.translated) return null;
        const id = iommu.contexts.domainOf(info.requesterId);
        return id >= 0 ? (byId(id) ?? null) : null;
      },
    };
  }

  /** dma_map_single: makes [pa, pa + len) reachable by `dev` for DMA in direction `dir`. */
  mapSingle(dev: DmaDevice, pa: Pa, len: number, dir: DmaDirection): DmaMapping {
    const tr = this.trace;
    if (tr === null) return this.doMapSingle(dev, pa, len, dir);
    const t0 = tr.now();
    const m = this.doMapSingle(dev, pa, len, dir);
    tr.mapSingle(t0, dev.requesterId, m.addr, pa, len, dir, m.bounced);
    return m;
  }

  private doMapSingle(dev: DmaDevice, pa: Pa, len: number, dir: DmaDirection): DmaMapping {
    this.checkOpen('mapSingle', dev);
    this.checkBuffer(dev, pa, len, dir);
    const domain = this.translatingDomain(dev);
    let m: DmaMapping;
    if (domain) {
      m = { addr: iommuMapRange(domain, dev, pa, len, dir), len, dir, bounced: false, domainId: domain.id };
      this.counters.add(C.iommuMaps);
    } else {
      const { addr, bounced } = directMap(this.swiotlb, this.forceBounce, dev, pa, len, dir);
      m = { addr, len, dir, bounced, domainId: -1 };
      this.counters.add(bounced ? C.bouncedMaps : C.directMaps);
    }
    this.counters.add(C.maps);
    this.counters.add(C.mappedBytes, len);
    this.debug?.map(dev, 'single', m.addr, len, pa, dir);
    return m;
  }

  /** dma_unmap_single: after it returns (strict mode), the device can no longer reach the buffer. */
  unmapSingle(dev: DmaDevice, m: DmaMapping): void {
    const tr = this.trace;
    if (tr === null) return this.doUnmapSingle(dev, m);
    const t0 = tr.now();
    this.doUnmapSingle(dev, m);
    tr.unmapSingle(t0, dev.requesterId, m.addr, m.len, m.dir, m.bounced);
  }

  private doUnmapSingle(dev: DmaDevice, m: DmaMapping): void {
    this.checkOpen('unmapSingle', dev);
    const { addr, len, dir } = this.checkMapping(dev, m, 'unmapSingle');
    this.debug?.unmap(dev, 'single', addr, len, dir);
    if (m.domainId >= 0) {
      iommuUnmapRange(this.domainOf(dev, m.domainId, addr), addr, len, this.mode, this.flusher, dev.bdf);
    } else {
      directUnmap(this.swiotlb, dev, addr, len, dir);
    }
    this.counters.add(C.unmaps);
  }

  /**
   * dma_map_sg: maps every buffer of `entries`. Under an IOMMU they get one IOVA range and as
   * few segments as the device's max segment size and segment boundary allow (page-aligned
   * scattered pages become one segment); without translation only buffers whose DMA addresses
   * follow each other merge. Program the device with `segments` only.
   */
  mapSg(dev: DmaDevice, entries: readonly SgEntry[], dir: DmaDirection): DmaSgTable {
    const tr = this.trace;
    if (tr === null) return this.doMapSg(dev, entries, dir);
    const t0 = tr.now();
    const sg = this.doMapSg(dev, entries, dir);
    tr.mapSg(t0, dev.requesterId, sg);
    return sg;
  }

  private doMapSg(dev: DmaDevice, entries: readonly SgEntry[], dir: DmaDirection): DmaSgTable {
    this.checkOpen('mapSg', dev);
    if (!Array.isArray(entries) || entries.length === 0) {
      throw new DmaError('EINVAL', `dma: mapSg for device ${dev?.bdf}: the scatterlist must be a non-empty array of { pa, len }`);
    }
    entries.forEach((e, i) => this.checkBuffer(dev, e?.pa as Pa, e?.len, dir, `entry ${i}: `));
    const domain = this.translatingDomain(dev);
    let table: DmaSgTable;
    if (domain) {
      const r = iommuMapSg(domain, dev, entries, dir);
      const mapped: MappedSgEntry[] = entries.map((e, i) => ({ pa: e.pa as Pa, len: e.len, addr: r.addrs[i], bounced: false }));
      table = { segments: r.segments, entries: mapped, dir, domainId: domain.id, iovaPage: r.page, iovaPages: r.npages };
      this.counters.add(C.iommuMaps);
    } else {
      const mapped: MappedSgEntry[] = [];
      try {
        for (const e of entries) {
          const { addr, bounced } = directMap(this.swiotlb, this.forceBounce, dev, e.pa as Pa, e.len, dir);
          mapped.push({ pa: e.pa as Pa, len: e.len, addr, bounced });
        }
      } catch (err) {
        // Linux's dma_direct_map_sg undo: the entries were never the device's, nothing to copy back.
        for (const e of mapped) directUnmap(this.swiotlb, dev, e.addr, e.len, dir, true);
        throw err;
      }
      const segments = mergeDirectSg(mapped, dev.maxSegmentSize, dev.segmentBoundaryMask);
      table = { segments, entries: mapped, dir, domainId: -1, iovaPage: 0, iovaPages: 0 };
      this.counters.add(mapped.some((e) => e.bounced) ? C.bouncedMaps : C.directMaps);
    }
    this.counters.add(C.sgMaps);
    this.counters.add(C.mappedBytes, entries.reduce((s, e) => s + e.len, 0));
    if (this.debug) for (const e of table.entries) this.debug.map(dev, 'sg', e.addr, e.len, e.pa, dir);
    this.debug?.checkSegments(dev, table.segments);
    return table;
  }

  /** dma_unmap_sg: takes back the whole table mapSg returned. */
  unmapSg(dev: DmaDevice, sg: DmaSgTable): void {
    const tr = this.trace;
    if (tr === null) return this.doUnmapSg(dev, sg);
    const t0 = tr.now();
    this.doUnmapSg(dev, sg);
    tr.unmapSg(t0, dev.requesterId, sg);
  }

  private doUnmapSg(dev: DmaDevice, sg: DmaSgTable): void {
    this.checkOpen('unmapSg', dev);
    if (!sg || typeof sg !== 'object' || !Array.isArray(sg.entries) || !DMA_DIRECTIONS.includes(sg.dir)) {
      throw new DmaError('EINVAL', `dma: unmapSg for device ${dev?.bdf}: ${String(sg)} is not a table returned by mapSg`);
    }
    if (this.debug) for (const e of sg.entries) this.debug.unmap(dev, 'sg', e.addr, e.len, sg.dir);
    if (sg.domainId >= 0) {
      const domain = this.domainOf(dev, sg.domainId, sg.entries[0]?.addr ?? dmaAddr(0));
      iommuCheckRange(domain, sg.iovaPage, sg.iovaPages, dev.bdf);
      // Each entry's pages (padding between them maps nothing), then the one IOVA range back.
      let i = 0;
      while (i < sg.entries.length) {
        let { page, npages } = iovaRange(sg.entries[i].addr, sg.entries[i].len);
        for (i++; i < sg.entries.length; i++) {
          const next = iovaRange(sg.entries[i].addr, sg.entries[i].len);
          if (next.page !== page + npages) break;
          npages += next.npages;
        }
        iommuClear(domain, page, npages, this.mode, dev.bdf);
      }
      iommuRelease(domain, sg.iovaPage, sg.iovaPages, this.mode, this.flusher, dev.bdf);
    } else {
      for (const e of sg.entries) directUnmap(this.swiotlb, dev, e.addr, e.len, sg.dir);
    }
    this.counters.add(C.sgUnmaps);
  }

  /**
   * dma_sync_single_for_cpu / dma_sync_sg_for_cpu: hands the buffer back to the CPU after the
   * device wrote it (a bounced from-device mapping is copied back now). `target` is a mapping,
   * an sg table, or a DMA address inside a mapping with `len` and `dir` (a partial sync).
   */
  syncForCpu(dev: DmaDevice, target: DmaMapping | DmaSgTable | DmaAddr, len?: number, dir?: DmaDirection): void {
    this.sync(dev, target, len, dir, true);
  }

  /** dma_sync_single_for_device / dma_sync_sg_for_device: CPU writes go to the device's copy. */
  syncForDevice(dev: DmaDevice, target: DmaMapping | DmaSgTable | DmaAddr, len?: number, dir?: DmaDirection): void {
    this.sync(dev, target, len, dir, false);
  }

  /**
   * dma_alloc_coherent: `size` bytes (rounded up to pages) the CPU and the device share without
   * syncs. Without translation they come from RAM below the device's mask; under an IOMMU from
   * anywhere, mapped bidirectionally at an IOVA below the mask.
   */
  allocCoherent(dev: DmaDevice, size: number): DmaCoherent {
    const tr = this.trace;
    if (tr === null) return this.doAllocCoherent(dev, size);
    const t0 = tr.now();
    const c = this.doAllocCoherent(dev, size);
    tr.coherent(t0, true, dev.requesterId, c.addr, c.cpuAddr, c.size);
    return c;
  }

  private doAllocCoherent(dev: DmaDevice, size: number): DmaCoherent {
    this.checkOpen('allocCoherent', dev);
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new DmaError('EINVAL', `dma: allocCoherent of ${String(size)} bytes for device ${dev?.bdf}: size must be a positive integer`);
    }
    const bytes = pageUp(size);
    const domain = this.translatingDomain(dev);
    let buf: { pa: Pa; size: number };
    try {
      buf = this.ram.alloc(bytes, domain ? {} : { below: dmaLimit(dev) });
    } catch (e) {
      if (!(e instanceof DmaError) || e.code !== 'ENOMEM') throw e;
      throw new DmaError('ENOMEM', `dma: allocCoherent of ${bytes} bytes for device ${dev.bdf}: ${e.message.replace(/^ENOMEM: /, '')}`, { cause: e });
    }
    this.ram.fill(buf.pa, bytes, 0); // dma_alloc_coherent memory is zeroed (Linux ≥ 5.0)
    let c: DmaCoherent;
    try {
      if (domain) {
        c = { cpuAddr: buf.pa, addr: iommuMapRange(domain, dev, buf.pa, bytes, 'bidirectional'), size: bytes, domainId: domain.id };
      } else {
        c = { cpuAddr: buf.pa, addr: dmaAddr(buf.pa), size: bytes, domainId: -1 };
      }
    } catch (e) {
      this.ram.free(buf);
      throw e;
    }
    this.counters.add(C.coherentAllocs);
    this.debug?.map(dev, 'coherent', c.addr, bytes, buf.pa, 'bidirectional');
    return c;
  }

  /** dma_free_coherent. */
  freeCoherent(dev: DmaDevice, c: DmaCoherent): void {
    const tr = this.trace;
    if (tr === null) return this.doFreeCoherent(dev, c);
    const t0 = tr.now();
    this.doFreeCoherent(dev, c);
    tr.coherent(t0, false, dev.requesterId, c.addr, c.cpuAddr, c.size);
  }

  private doFreeCoherent(dev: DmaDevice, c: DmaCoherent): void {
    this.checkOpen('freeCoherent', dev);
    if (
      !c ||
      typeof c !== 'object' ||
      !Number.isSafeInteger(c.size) ||
      c.size <= 0 ||
      c.size % PAGE_SIZE !== 0 ||
      !Number.isSafeInteger(c.addr) ||
      !Number.isSafeInteger(c.cpuAddr) ||
      !Number.isInteger(c.domainId)
    ) {
      throw new DmaError('EINVAL', `dma: freeCoherent for device ${dev?.bdf}: ${describe(c)} is not an allocation from allocCoherent`);
    }
    this.debug?.unmap(dev, 'coherent', c.addr, c.size, 'bidirectional', c.cpuAddr);
    if (c.domainId < 0 && (c.addr as number) !== (c.cpuAddr as number)) {
      throw new DmaError('EINVAL', `dma: freeCoherent of ${hex(c.addr)} for device ${dev.bdf}: without translation its CPU address must be ${hex(c.addr)}, not ${hex(c.cpuAddr)}`);
    }
    if (c.domainId >= 0) {
      iommuUnmapRange(this.domainOf(dev, c.domainId, c.addr), c.addr, c.size, this.mode, this.flusher, dev.bdf, c.cpuAddr);
    }
    this.ram.free({ pa: c.cpuAddr, size: c.size });
    this.counters.add(C.coherentFrees);
  }

  /**
   * What thread `tid`, which has ended, left behind in its counter slot (its own maps minus its
   * own unmaps, by kind), freeing the slot; null when it had released it.
   */
  reclaimThread(tid: number): DmaCounterValues | null {
    return this.counters.reclaimThread(tid);
  }

  /** Mappings, sg tables and coherent allocations made (by any thread) and not yet undone. */
  liveMappings(): number {
    const c = this.counters.read();
    return c.maps - c.unmaps + c.sgMaps - c.sgUnmaps + c.coherentAllocs - c.coherentFrees;
  }

  stats(): DmaApiStats {
    const c = this.counters.read();
    const s = this.swiotlb?.stats();
    return {
      ...c,
      liveMappings: c.maps - c.unmaps + c.sgMaps - c.sgUnmaps + c.coherentAllocs - c.coherentFrees,
      bouncedBytes: s?.bouncedBytes ?? 0,
      bounceSlotsInUse: s?.slotsInUse ?? 0,
      bounceSlots: s?.totalSlots ?? 0,
    };
  }

  /**
   * Lazy mode: ends the stale window now — one flush-all invalidation per domain this thread
   * queued IOVAs on, waited for, then those IOVAs go back to their allocators.
   */
  flush(): void {
    this.flusher.flush();
  }

  /** Flushes what is queued, stops the flush timer and gives this thread's slots back; later calls give ESHUTDOWN. */
  close(): void {
    if (this.closed) return;
    this.flusher.stop();
    this.counters.release();
    // The flush queues were emptied by stop(); their rings go back too (a thread that ends never
    // runs the FinalizationRegistry that would otherwise free them).
    for (const d of this.ownDomains) {
      d.iova.release();
      d.fq.release();
    }
    this.closed = true;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private sync(dev: DmaDevice, target: DmaMapping | DmaSgTable | DmaAddr, len: number | undefined, dir: DmaDirection | undefined, forCpu: boolean): void {
    const tr = this.trace;
    if (tr === null) {
      this.doSync(dev, target, len, dir, forCpu);
      return;
    }
    const t0 = tr.now();
    const ranges = this.doSync(dev, target, len, dir, forCpu);
    tr.sync(t0, forCpu, dev.requesterId, ranges[0]?.addr ?? 0, ranges.reduce((n, r) => n + r.len, 0));
  }

  /** Returns the ranges it synced (for the trace). */
  private doSync(dev: DmaDevice, target: DmaMapping | DmaSgTable | DmaAddr, len: number | undefined, dir: DmaDirection | undefined, forCpu: boolean): ReadonlyArray<{ addr: DmaAddr; len: number }> {
    const op = forCpu ? 'syncForCpu' : 'syncForDevice';
    this.checkOpen(op, dev);
    const ranges: Array<{ addr: DmaAddr; len: number; dir: DmaDirection; domainId: number }> = [];
    // A bare DMA address: -1 (untranslated) when nothing translates for the device, else -2 (translated).
    if (typeof target === 'number') {
      ranges.push({ addr: target, len: len as number, dir: dir as DmaDirection, domainId: this.translatingDomain(dev) ? -2 : -1 });
    } else if (target && typeof target === 'object' && 'entries' in target && Array.isArray(target.entries)) {
      for (const e of target.entries) ranges.push({ addr: e.addr, len: e.len, dir: dir ?? target.dir, domainId: target.domainId });
    } else {
      const m = this.checkMapping(dev, target as DmaMapping, op);
      ranges.push({ addr: m.addr, len: len ?? m.len, dir: dir ?? m.dir, domainId: (target as DmaMapping).domainId });
    }
    for (const r of ranges) {
      if (!Number.isSafeInteger(r.len) || r.len <= 0 || !DMA_DIRECTIONS.includes(r.dir)) {
        throw new DmaError('EINVAL', `dma: ${op} of ${hex(Number(r.addr))} for device ${dev.bdf}: length ${String(r.len)} and direction ${String(r.dir)} must be a positive integer and one of ${DMA_DIRECTIONS.join(', ')}`);
      }
    }
    for (const r of ranges) {
      this.debug?.sync(dev, r.addr, r.len, r.dir, forCpu);
      // Translated memory is coherent: nothing to copy. Untranslated: bounced slots copy.
      if (r.domainId === -1) directSync(this.swiotlb, dev, r.addr, r.len, r.dir, forCpu);
    }
    this.counters.add(C.syncs);
    return ranges;
  }

  /** The domain that translates for `dev`, or null when its DMA addresses are physical. */
  private translatingDomain(dev: DmaDevice): Domain | null {
    const owner = this.dmaOwner(dev);
    if (owner) {
      // Linux: a device whose group VFIO owns has vfio-pci bound; no kernel driver maps for it.
      throw new DmaError('EBUSY', `dma: device ${dev.bdf} is owned by ${owner} (its IOMMU group is in a VFIO container): map with the container's MAP_DMA, not the DMA API`);
    }
    const domain = dev.domain;
    if (!domain) {
      if (dev.translated) {
        throw new DmaError(
          'ENOENT',
          `dma: device ${dev.bdf} is behind an IOMMU but attached to no domain this thread knows (detached, or a domain made elsewhere: map through that Domain itself)`,
        );
      }
      return null;
    }
    if (domain.type === 'dma') return domain;
    if (domain.type === 'blocked') {
      throw new DmaError('EPERM', `dma: device ${dev.bdf} is attached to a blocking ${domain.name}: no DMA mapping is possible`);
    }
    return null; // identity: addresses are physical
  }

  private domainOf(dev: DmaDevice, id: number, addr: DmaAddr): Domain {
    const d = this.domainById(id);
    if (!d) {
      throw new DmaError('ENOENT', `dma: IOVA ${hex(addr)} of device ${dev.bdf} was mapped in domain ${id}, which this thread does not know (destroyed, or not handed to DmaApi.attach)`);
    }
    return d;
  }

  private checkOpen(op: string, dev: DmaDevice): void {
    if (!dev || typeof dev.dmaMaskBits !== 'number' || typeof dev.bdf !== 'string') {
      throw new DmaError('EINVAL', `dma: ${op}: the first argument must be a device from machine.addDevice (or DmaApi.device)`);
    }
    if (this.closed) throw new DmaError('ESHUTDOWN', `dma: ${op} for device ${dev.bdf}: the machine is closed (its mappings went with it)`);
  }

  private checkMapping(dev: DmaDevice, m: DmaMapping, op: string): DmaMapping {
    if (
      !m ||
      typeof m !== 'object' ||
      !Number.isSafeInteger(m.addr) ||
      !Number.isSafeInteger(m.len) ||
      m.len <= 0 ||
      !DMA_DIRECTIONS.includes(m.dir) ||
      !Number.isInteger(m.domainId)
    ) {
      throw new DmaError('EINVAL', `dma: ${op} for device ${dev.bdf}: ${describe(m)} is not a mapping returned by mapSingle`);
    }
    return m;
  }

  private checkBuffer(dev: DmaDevice, pa: Pa, len: number, dir: DmaDirection, what = ''): void {
    if (dir !== 'to-device' && dir !== 'from-device' && dir !== 'bidirectional') {
      throw new DmaError('EINVAL', `dma: direction ${String(dir)} for device ${dev.bdf} must be one of ${DMA_DIRECTIONS.join(', ')}`);
    }
    if (!Number.isSafeInteger(len) || len <= 0) {
      throw new DmaError('EINVAL', `dma: ${what}mapping of length ${String(len)} at PA ${hex(Number(pa))} for device ${dev.bdf}: length must be a positive integer`);
    }
    if (!Number.isSafeInteger(pa) || pa < 0) throw new DmaError('EINVAL', `dma: ${what}${String(pa)} is not a physical address (device ${dev.bdf})`);
    if (!this.ram.isRam(pa, len)) {
      throw new DmaError('EFAULT', `dma: ${what}[${hex(pa)}, ${hex(pa + len)}) for device ${dev.bdf} is not all guest RAM (${this.ram.describe()})`);
    }
  }
}

function describe(m: unknown): string {
  if (m && typeof m === 'object' && 'addr' in m) {
    const x = m as DmaMapping;
    return `mapping ${hex(Number(x.addr))}+${String(x.len)}`;
  }
  return String(m);
}
