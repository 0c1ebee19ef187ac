/**
 * The Machine: guest RAM, an IOMMU, devices in worker threads and the DMA API, wired together.
 * The public entry point of the library (DESIGN.md's "Public API").
 */
import { DmaError } from './errors.js';
import { GuestRam } from './memory/guest-ram.js';
import { Iommu } from './iommu/iommu.js';
import type { Domain } from './iommu/domain.js';
import type { FaultAccess, FaultReason } from './iommu/fault-ring.js';
import { Iotlb } from './iommu/iotlb.js';
import { Device } from './device/device.js';
import type { DeviceCounters } from './device/device-control.js';
import type { ModelOptions } from './device/device-model.js';
import { SQE_SIZE, CQE_SIZE, type RingPlacement } from './device/rings.js';
import { DmaApi, type DmaApiStats, type DmaCoherent, type DmaDevice, type InvalidationMode } from './dma/dma-api.js';
import { Swiotlb } from './dma/swiotlb.js';
import { dmaDeviceInfo } from './dma/dma-device.js';
import { flushQueued } from './dma/dma-iommu.js';
import type { DriverHandle } from './dma/driver-handle.js';
import { DmaDebug } from './dma/dma-debug.js';
import { parseBdf, formatBdf } from './pci/bdf.js';
import { MachinePci, type Placement } from './machine-topology.js';
import { Vfio } from './vfio/index.js';
import { TraceRings } from './trace/trace-ring.js';
import { MachineTrace } from './trace/machine-trace.js';
import {
  machineConfigSchema,
  deviceConfigSchema,
  nvmeOptionsSchema,
  parseConfig,
  type MachineConfig,
  type DeviceConfig,
  type ResolvedMachineConfig,
  type ResolvedDeviceConfig,
} from './machine-config.js';

export interface Fault {
  /**
   * The device whose DMA carried this requester ID; for an alias several devices share (behind
   * a PCIe-to-PCI bridge) the requester ID itself as a BDF (see machine-topology.ts).
   */
  bdf: string;
  /** Every device of the machine whose DMA carries this requester ID. */
  devices: string[];
  requesterId: number;
  addr: number;
  access: FaultAccess;
  reason: FaultReason;
  /** Domain id the device was attached to (-1: none). */
  domain: number;
}

/**
 * What m.iommu.faults() returns: the records drained, oldest first, and `dropped`: records lost
 * since the previous call because the fault ring was full (as VT-d's Primary Fault Overflow or
 * SMMUv3's "event queue overflow — events lost", with a count). Every refused DMA is a record
 * here or one count in `dropped`, never neither. `dropped` is not enumerable, so the log
 * compares and prints as a plain array; m.stats().faultsDropped is the running total.
 */
export type FaultLog = Fault[] & { readonly dropped: number };

/** What m.reclaimDriverThread found and took back from a driver thread that ended. */
export interface DriverThreadReport {
  threadId: number;
  /**
   * Mappings, sg tables and coherent allocations it made and did not undo itself (net of its own
   * unmaps: one it handed to another thread to unmap counts here and there). They stay mapped
   * and valid until someone unmaps them, as Linux leaves a crashed driver's mappings.
   */
  mappingsLeft: number;
  /** IOVA pages its per-thread caches held, returned to the domains' shared space. */
  iovaPagesFreed: number;
}

export interface MachineStats {
  /** Bytes moved by devices (read + written). */
  bytes: number;
  bytesRead: number;
  bytesWritten: number;
  /** DMA transfers (a copy is one read and one write). */
  transfers: number;
  descriptors: number;
  tlps: number;
  iotlbHits: number;
  iotlbMisses: number;
  faults: number;
  /** Fault records refused because the fault ring was full (counted, never silently lost). */
  faultsDropped: number;
  staleAccesses: number;
  invalidations: { strict: number; lazy: number };
  flushes: number;
  liveMappings: number;
  /** Bytes the CPU copied into and out of SWIOTLB slots. */
  bouncedBytes: number;
  bounceSlotsInUse: number;
  /** The DMA API's own counters (maps by path, sg, coherent, syncs). */
  dma: DmaApiStats;
  ramPagesInUse: number;
  /** Page-table pages taken from the pool (iommu.tables), retired ones included. */
  pageTablePages: number;
  /** IOVA pages handed out and not given back, over every DMA domain (rcache-cached pages excluded). */
  iovaPagesInUse: number;
  /** Transfers and bytes routed peer-to-peer to another function's BAR (the IOMMU never saw them). */
  p2pTransfers: number;
  p2pBytes: number;
  devices: Record<string, DeviceCounters>;
  /** Devices that failed (worker threw, exited, or hung past iommu.deviceTimeoutMs), and why. */
  failedDevices: Record<string, string>;
  /** Driver threads that ended holding per-thread state, as reclaimDriverThread reported them. */
  deadDriverThreads: DriverThreadReport[];
}

/** The IOMMU as a machine user sees it. */
export interface MachineIommu {
  readonly enabled: boolean;
  readonly invalidation: InvalidationMode;
  /** Drains the fault ring: every refused DMA since the last call, oldest first (see FaultLog). */
  faults(): FaultLog;
  /** Drains the fault ring: every refused DMA since the last call, oldest first. */
  faults(): Fault[];
  /**
   * The fault ring's overflow (VT-d's Primary Fault Overflow), read and cleared: null when every
   * refused DMA since the last call was recorded; else a DmaError('ENOSPC') naming the ring's
   * size, how many records were dropped and the device of the last one. A full ring never stops
   * the IOMMU from refusing a DMA (dev.copy still rejects with EFAULT): only the record is lost,
   * and counted in stats().faultsDropped. Drain with faults() to make room.
   */
  faultOverflow(): DmaError | null;
  /** Lazy mode: flush the flush queues now (ends the stale window). */
  flush(): void;
  /** The domain a device is attached to (null without an IOMMU). */
  domainOf(dev: Device): Domain | null;
  /** The IOMMU itself: domains, context table, page-table pool. */
  readonly unit: Iommu;
}

interface DeviceRecord {
  dev: Device;
  dmaDev: DmaDevice;
  /** Its descriptor and completion rings (coherent DMA memory). */
  rings: DmaCoherent[];
  /** Where it sits on PCI: requester IDs, group (whose domain it shares), P2P routes. */
  placement: Placement;
}

/** What a model starts with: the nvme namespace's media (a new, zeroed SharedArrayBuffer), the nic's wire. */
function modelOptions(cfg: ResolvedDeviceConfig): ModelOptions {
  if (cfg.model === 'nvme') {
    const o = cfg.nvme ?? nvmeOptionsSchema.parse({});
    return { nvme: { lbaSize: o.lbaSize, media: new SharedArrayBuffer(o.size) } };
  }
  if (cfg.model === 'nic') return { nic: { wire: cfg.nic?.wire ?? 'loopback' } };
  return {};
}

export class Machine {
  readonly ram: GuestRam;
  readonly dma: DmaApi;
  readonly iommu: MachineIommu;
  readonly config: ResolvedMachineConfig;
  /** The DMA timeline trace (config `trace.enabled`); null when tracing is off. Readable after close(). */
  readonly trace: MachineTrace | null;
  private readonly unit: Iommu;
  private readonly records = new Map<string, DeviceRecord>();
  /** Devices being started, by BDF (their address is taken). */
  private readonly adding = new Map<string, Promise<Device>>();
  private closing: Promise<void> | null = null;
  private flushes = 0;
  private readonly deadDrivers: DriverThreadReport[] = [];
  /** The fault ring's overflow count at the last faults() call. */
  private faultsDroppedSeen = 0;
  private pciState: MachinePci | null = null;
  private vfioState: Vfio | null = null;

  static async create(config: MachineConfig = {}): Promise<Machine> {
    const m = new Machine(parseConfig(machineConfigSchema, config, 'config'));
    void m.pci; // the topology is parsed and grouped now: its errors belong to create()
    return m;
  }

  /** PCI as the machine sees it: topology, IOMMU groups, placement, BARs, the isolation audit. */
  get pci(): MachinePci {
    this.pciState ??= new MachinePci(this.unit, {
      topology: this.config.topology,
      acsOverride: this.config.acsOverride,
      flushQueueSize: this.config.iommu.flushQueueSize,
      aperturePages: (this.config.iommu.apertureEnd + 1) / 4096,
    });
    return this.pciState;
  }

  /** VFIO: containers, groups and device handles over the machine's IOMMU groups. */
  get vfio(): Vfio {
    this.vfioState ??= new Vfio({
      pci: this.pci,
      unit: this.unit,
      ram: this.ram,
      device: (bdf) => this.device(bdf),
      // A device whose add is pending has rings VFIO cannot see yet: its group must not move.
      adding: (bdf) => this.adding.has(bdf) && !this.records.has(bdf),
      closed: () => this.closing !== null,
    });
    return this.vfioState;
  }

  private constructor(cfg: ResolvedMachineConfig) {
    this.config = cfg;
    this.ram = GuestRam.create(cfg.ram);
    this.unit = Iommu.create({ enabled: cfg.iommu.enabled, tables: cfg.iommu.tables, faultRing: cfg.iommu.faultRing });
    // Linux allocates the default SWIOTLB pool early from low memory; so does the machine.
    const swiotlb = cfg.swiotlb.size > 0 ? Swiotlb.create(this.ram, { size: cfg.swiotlb.size, areas: cfg.swiotlb.areas }) : null;
    const rings = cfg.trace.enabled ? TraceRings.create({ rings: cfg.trace.threads, eventsPerRing: cfg.trace.eventsPerThread }) : null;
    this.trace = rings ? new MachineTrace(rings) : null;
    this.dma = DmaApi.create(this.ram, this.unit, {
      dmaOwner: (dev) => (this.vfioState && this.pciState?.dmaOwnedByVfio(dev.bdf) ? 'vfio-pci' : null),
      mode: cfg.iommu.invalidation,
      flushTimeoutMs: cfg.iommu.flushTimeoutMs,
      swiotlb,
      forceBounce: cfg.swiotlb.force,
      debug: cfg.dmaDebug.enabled ? DmaDebug.create({ entries: cfg.dmaDebug.entries }) : null,
      trace: rings,
    });
    const unit = this.unit;
    const dma = this.dma;
    this.iommu = {
      enabled: cfg.iommu.enabled,
      invalidation: cfg.iommu.invalidation,
      unit,
      faults: () => {
        const log = unit.drainFaults().map((f) => ({ ...this.pci.describeRequester(f.requesterId), ...f }));
        // Read after the drain: a record refused while it ran is counted now, never missed.
        const total = unit.faultRing.overflowed();
        Object.defineProperty(log, 'dropped', { value: total - this.faultsDroppedSeen, enumerable: false });
        this.faultsDroppedSeen = total;
        return log as FaultLog;
      },
      faultOverflow: () => {
        const o = unit.faultRing.takeOverflow();
        if (!o) return null;
        const who = this.pci.describeRequester(o.lastRequesterId);
        return new DmaError(
          'ENOSPC',
          `iommu: fault ring full: ${o.dropped} fault record(s) dropped since the last check (ring of ${unit.faultRing.capacity} records, config.iommu.faultRing; drain it with faults()); the last dropped was from device ${who.devices.join(', ') || who.bdf}`,
        );
      },
      flush: () => dma.flush(),
      domainOf: (dev: Device) => unit.domainOfRequester(dev.requesterId),
    };
  }

  /** Adds a device at `bdf` running `model` in its own worker thread. */
  async addDevice(config: DeviceConfig): Promise<Device> {
    this.checkOpen('addDevice');
    const cfg = parseConfig(deviceConfigSchema, config, 'device');
    // nvme_pci_alloc_dev: dma_set_min_align_mask(NVME_CTRL_PAGE_SIZE - 1), so bounced PRPs keep their offsets.
    if (cfg.model === 'nvme' && config.minAlignMask === undefined) cfg.minAlignMask = 4095;
    const b = parseBdf(cfg.bdf);
    if (!b) throw new DmaError('EINVAL', `device.bdf: ${JSON.stringify(cfg.bdf)} is not a PCI address (BB:DD.F or DDDD:BB:DD.F)`);
    const bdf = formatBdf(b);
    // Reserved before the first await, so two adds of one address cannot both proceed.
    if (this.records.has(bdf) || this.adding.has(bdf)) throw new DmaError('EEXIST', `device ${bdf}: a device is already present at that address`);
    // Its place on PCI (machine-topology.ts): requester ID after aliasing, IOMMU group, P2P
    // routes; refuses a BDF the topology has no endpoint at, or a requester ID in use.
    const placement = this.pci.place(bdf);
    const started = this.startDevice(bdf, placement.requesterId, cfg, placement);
    this.adding.set(bdf, started);
    try {
      return await started;
    } catch (e) {
      this.pci.release(placement, -1); // the reservation, if startDevice did not take it back
      throw e;
    } finally {
      this.adding.delete(bdf);
    }
  }

  private async startDevice(bdf: string, requesterId: number, cfg: ResolvedDeviceConfig, placement: Placement): Promise<Device> {
    const unit = this.unit;
    const slot = unit.epochs.claim(this.config.iommu.deviceTimeoutMs);
    const undo: Array<() => void> = [() => unit.epochs.release(slot)];
    try {
      // Every alias gets a context entry for the group's domain (created with its first device).
      this.pci.attach(placement, slot);
      undo.push(() => this.pci.release(placement, slot));
      const resolveDomain = () => unit.domainOfRequester(requesterId);
      const dmaDev: DmaDevice = {
        bdf,
        requesterId,
        dmaMaskBits: cfg.dmaMask,
        maxSegmentSize: cfg.maxSegmentSize,
        segmentBoundaryMask: cfg.segmentBoundaryMask,
        minAlignMask: cfg.minAlignMask,
        translated: unit.enabled,
        get domain() {
          return resolveDomain();
        },
      };
      // The rings, as a driver allocates them: coherent DMA memory (never bounced).
      const sqMem = this.dma.allocCoherent(dmaDev, cfg.queueDepth * SQE_SIZE);
      undo.push(() => this.dma.freeCoherent(dmaDev, sqMem));
      const cqMem = this.dma.allocCoherent(dmaDev, cfg.queueDepth * CQE_SIZE);
      undo.push(() => this.dma.freeCoherent(dmaDev, cqMem));
      const sq: RingPlacement = { pa: sqMem.cpuAddr, dma: sqMem.addr, depth: cfg.queueDepth };
      const cq: RingPlacement = { pa: cqMem.cpuAddr, dma: cqMem.addr, depth: cfg.queueDepth };
      const dev = await Device.start({
        bdf,
        requesterId,
        slot,
        model: cfg.model,
        dmaMaskBits: cfg.dmaMask,
        dmaParams: { maxSegmentSize: cfg.maxSegmentSize, segmentBoundaryMask: cfg.segmentBoundaryMask, minAlignMask: cfg.minAlignMask },
        maxPayload: cfg.maxPayload,
        ram: this.ram,
        iommu: unit.handle,
        resolveDomain,
        iotlb: Iotlb.create(cfg.iotlbEntries).handle,
        sq,
        cq,
        p2p: placement.p2p,
        bars: placement.bars,
        trace: this.trace?.rings.handle ?? null,
        modelOptions: modelOptions(cfg),
      });
      if (this.closing) {
        // close() began while the worker started: it waits for this add, which takes itself back.
        await dev.close();
        throw new DmaError('ESHUTDOWN', `machine.addDevice: the machine was closed while device ${bdf} was starting`);
      }
      this.records.set(bdf, { dev, dmaDev, rings: [sqMem, cqMem], placement });
      return dev;
    } catch (e) {
      for (const f of undo.reverse()) {
        try {
          f();
        } catch {
          // keep undoing; the first error is the one reported
        }
      }
      throw e;
    }
  }

  /**
   * What a driver thread needs to map for this machine's devices (DmaApi handle, devices' DMA
   * parameters and domains): pass it to a piscina task or a worker, then `attachDriver(handle)`.
   */
  driverHandle(): DriverHandle {
    this.checkOpen('driverHandle');
    return {
      dma: this.dma.handle,
      // Devices whose group VFIO owns are not the DMA API's to map for.
      devices: [...this.records.values()]
        .filter((r) => !this.pciState?.dmaOwnedByVfio(r.dev.bdf))
        .map((r) => ({ info: dmaDeviceInfo(r.dmaDev), domain: r.dmaDev.domain?.handle ?? null })),
    };
  }

  /**
   * A driver thread has ended (DriverPool's onThreadExit, or any worker that attached with
   * driverHandle()): take back what it held per thread — its IOVA rcache magazines in every
   * domain (Linux's free_cpu_cached_iovas when a CPU goes offline), its flush-queue rings (what
   * it had queued is flushed and its IOVAs freed) and its counter slot — and
   * report the mappings it left. Those stay mapped. Only for a thread that has really ended.
   * Returns null when the thread had released everything itself (it closed its driver).
   */
  reclaimDriverThread(threadId: number): DriverThreadReport | null {
    if (!Number.isInteger(threadId) || threadId <= 0) {
      throw new DmaError('EINVAL', `machine.reclaimDriverThread: ${String(threadId)} is not the id of a worker thread`);
    }
    if (this.closing) return null;
    const c = this.dma.reclaimThread(threadId);
    let iovaPagesFreed = 0;
    for (const d of this.pci.liveDomains()) {
      if (d.type !== 'dma') continue;
      iovaPagesFreed += d.iova.reclaimThread(threadId);
      // Its flush-queue rings: freed, and what it had queued (lazy unmaps) flushed and given back.
      if (d.fq.reclaimThread(threadId) > 0) flushQueued(d);
    }
    this.unit.pool.reclaimThread(threadId); // its page-table mapper slot (no longer waited for)
    if (!c && iovaPagesFreed === 0) return null;
    const mappingsLeft = c ? c.maps - c.unmaps + c.sgMaps - c.sgUnmaps + c.coherentAllocs - c.coherentFrees : 0;
    const r: DriverThreadReport = { threadId, mappingsLeft, iovaPagesFreed };
    this.deadDrivers.push(r);
    return r;
  }

  /** The devices, in the order they were added. */
  devices(): Device[] {
    return [...this.records.values()].map((r) => r.dev);
  }

  device(bdf: string): Device | undefined {
    const b = parseBdf(bdf);
    return b ? this.records.get(formatBdf(b))?.dev : undefined;
  }

  stats(): MachineStats {
    const devices: Record<string, DeviceCounters> = {};
    const dma = this.dma.stats();
    const sum = (k: keyof DeviceCounters): number => Object.values(devices).reduce((a, c) => a + c[k], 0);
    let strict = 0;
    let lazy = 0;
    let flushes = this.flushes + this.pci.retiredFlushes();
    let iovaPagesInUse = 0;
    for (const r of this.records.values()) devices[r.dev.bdf] = r.dev.counters();
    // Each domain once: a group's devices share theirs (and VFIO containers have their own).
    for (const d of this.pci.liveDomains()) {
      const c = d.invalidationCounts();
      strict += c.strict;
      lazy += c.lazy;
      flushes += d.fq.flushes();
      if (d.type === 'dma') iovaPagesInUse += d.iova.pagesInUse();
    }
    return {
      bytes: sum('bytesRead') + sum('bytesWritten'),
      bytesRead: sum('bytesRead'),
      bytesWritten: sum('bytesWritten'),
      transfers: sum('transfers'),
      descriptors: sum('descriptors'),
      tlps: sum('tlps'),
      iotlbHits: sum('iotlbHits'),
      iotlbMisses: sum('iotlbMisses'),
      faults: this.unit.faultRing.recorded(),
      faultsDropped: this.unit.faultRing.overflowed(),
      staleAccesses: sum('staleAccesses'),
      invalidations: { strict, lazy },
      flushes,
      liveMappings: dma.liveMappings,
      bouncedBytes: dma.bouncedBytes,
      bounceSlotsInUse: dma.bounceSlotsInUse,
      dma,
      ramPagesInUse: this.ram.pagesInUse(),
      pageTablePages: this.unit.pool.inUse(),
      iovaPagesInUse,
      p2pTransfers: sum('p2pTransfers'),
      p2pBytes: sum('p2pBytes'),
      devices,
      failedDevices: Object.fromEntries(
        [...this.records.values()].filter((r) => r.dev.error !== null).map((r) => [r.dev.bdf, r.dev.error!.message]),
      ),
      deadDriverThreads: this.deadDrivers.map((r) => ({ ...r })),
    };
  }

  /** Stops every device, ends every worker and releases what the machine mapped. Idempotent. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  get closed(): boolean {
    return this.closing !== null;
  }

  private async shutdown(): Promise<void> {
    // Adds in flight see `closing` and take themselves back; wait for them first.
    await Promise.allSettled([...this.adding.values()]);
    const recs = [...this.records.values()];
    await Promise.all(recs.map((r) => r.dev.close()));
    // VFIO lets go first: handles closed, groups out of their containers, back in default domains.
    this.vfioState?.close();
    for (const r of recs) for (const c of r.rings) this.dma.freeCoherent(r.dmaDev, c);
    // CONFIG_DMA_API_DEBUG: what the driver left mapped is reported, with where it was mapped.
    this.dma.debug?.reportLeaks();
    this.dma.close(); // flushes lazy queues and stops the flush timer
    this.dma.swiotlb?.destroy(); // the pool's RAM goes back with the rest
    for (const r of recs) {
      // Context entries go (unless a group sibling still uses the alias); the last device of a
      // group takes the group's domain with it.
      this.pci.release(r.placement, r.dev.slot);
      this.unit.epochs.release(r.dev.slot);
    }
    this.records.clear();
  }

  private checkOpen(op: string): void {
    if (this.closing) throw new DmaError('ESHUTDOWN', `machine.${op}: the machine is closed`);
  }
}

