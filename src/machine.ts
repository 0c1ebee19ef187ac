/**
 * The Machine: guest RAM, an IOMMU, devices in worker threads and the DMA API, wired together.
 * The public entry point of the library (DESIGN.md's "Public API").
 */
import { DmaError } from './errors.js';
import type { Pa } from './addresses.js';
import { GuestRam } from './memory/guest-ram.js';
import { Iommu } from './iommu/iommu.js';
import type { Domain } from './iommu/domain.js';
import type { FaultAccess, FaultReason } from './iommu/fault-ring.js';
import { Iotlb } from './iommu/iotlb.js';
import { Device } from './device/device.js';
import type { DeviceCounters } from './device/device-control.js';
import { SQE_SIZE, CQE_SIZE, type RingPlacement } from './device/rings.js';
import { DmaApi, type DmaDevice, type DmaMapping, type InvalidationMode } from './dma/dma-api.js';
import { parseBdf, formatBdf, pciDevId, devfnOf, formatDevfn, slotOfDevfn, fnOfDevfn } from './pci/bdf.js';
import {
  machineConfigSchema,
  deviceConfigSchema,
  parseConfig,
  type MachineConfig,
  type DeviceConfig,
  type ResolvedMachineConfig,
  type ResolvedDeviceConfig,
} from './machine-config.js';

export interface Fault {
  bdf: string;
  requesterId: number;
  addr: number;
  access: FaultAccess;
  reason: FaultReason;
  /** Domain id the device was attached to (-1: none). */
  domain: number;
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
  ramPagesInUse: number;
  pageTablePages: number;
  devices: Record<string, DeviceCounters>;
}

/** The IOMMU as a machine user sees it. */
export interface MachineIommu {
  readonly enabled: boolean;
  readonly invalidation: InvalidationMode;
  /** Drains the fault ring: every refused DMA since the last call, oldest first. */
  faults(): Fault[];
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
  ringBufs: { sq: { pa: Pa; size: number }; cq: { pa: Pa; size: number } };
  ringMaps: DmaMapping[];
  /** The default DMA domain the machine created for the device (destroyed at close). */
  ownDomain: Domain | null;
}

export class Machine {
  readonly ram: GuestRam;
  readonly dma: DmaApi;
  readonly iommu: MachineIommu;
  readonly config: ResolvedMachineConfig;
  private readonly unit: Iommu;
  private readonly records = new Map<string, DeviceRecord>();
  /** Devices being started, by BDF (their address is taken). */
  private readonly adding = new Map<string, Promise<Device>>();
  private readonly addingRid = new Map<string, number>();
  private closing: Promise<void> | null = null;
  private flushes = 0;

  static async create(config: MachineConfig = {}): Promise<Machine> {
    return new Machine(parseConfig(machineConfigSchema, config, 'config'));
  }

  private constructor(cfg: ResolvedMachineConfig) {
    this.config = cfg;
    this.ram = GuestRam.create(cfg.ram);
    this.unit = Iommu.create({ enabled: cfg.iommu.enabled, tables: cfg.iommu.tables, faultRing: cfg.iommu.faultRing });
    this.dma = new DmaApi(this.ram, cfg.iommu.invalidation, cfg.iommu.flushTimeoutMs);
    const unit = this.unit;
    const dma = this.dma;
    const records = this.records;
    this.iommu = {
      enabled: cfg.iommu.enabled,
      invalidation: cfg.iommu.invalidation,
      unit,
      faults: () => {
        const byRid = new Map([...records.values()].map((r) => [r.dev.requesterId, r.dev.bdf]));
        return unit.drainFaults().map((f) => ({ bdf: byRid.get(f.requesterId) ?? ridToBdf(f.requesterId), ...f }));
      },
      flush: () => dma.flush(),
      domainOf: (dev: Device) => unit.domainOfRequester(dev.requesterId),
    };
  }

  /** Adds a device at `bdf` running `model` in its own worker thread. */
  async addDevice(config: DeviceConfig): Promise<Device> {
    this.checkOpen('addDevice');
    const cfg = parseConfig(deviceConfigSchema, config, 'device');
    const b = parseBdf(cfg.bdf);
    if (!b) throw new DmaError('EINVAL', `device.bdf: ${JSON.stringify(cfg.bdf)} is not a PCI address (BB:DD.F or DDDD:BB:DD.F)`);
    const bdf = formatBdf(b);
    // Reserved before the first await, so two adds of one address cannot both proceed.
    if (this.records.has(bdf) || this.adding.has(bdf)) throw new DmaError('EEXIST', `device ${bdf}: a device is already present at that address`);
    const requesterId = pciDevId(b.bus, devfnOf(b.slot, b.fn));
    const clash = [...this.records.values()].map((r) => r.dev).find((d) => d.requesterId === requesterId)?.bdf ?? [...this.addingRid.entries()].find(([, r]) => r === requesterId)?.[0];
    if (clash !== undefined) {
      // Where we differ: one context table serves every PCI segment, so the 16-bit requester ID
      // must be unique across segments (Linux has an IOMMU, and context tables, per segment).
      throw new DmaError('EEXIST', `device ${bdf}: requester ID ${formatRid(requesterId)} is already used by device ${clash}; this machine's IOMMU tells devices apart by requester ID only`);
    }
    this.addingRid.set(bdf, requesterId);
    const started = this.startDevice(bdf, requesterId, cfg);
    this.adding.set(bdf, started);
    try {
      return await started;
    } finally {
      this.adding.delete(bdf);
      this.addingRid.delete(bdf);
    }
  }

  private async startDevice(bdf: string, requesterId: number, cfg: ResolvedDeviceConfig): Promise<Device> {
    const unit = this.unit;
    const slot = unit.epochs.claim();
    let domain: Domain | null = null;
    const undo: Array<() => void> = [() => unit.epochs.release(slot)];
    try {
      if (unit.enabled) {
        // The default DMA domain of its (single-device) IOMMU group.
        const d = unit.createDomain('dma', { flushQueueSize: this.config.iommu.flushQueueSize });
        domain = d;
        undo.push(() => unit.destroyDomain(d));
        unit.attachDevice(requesterId, slot, d);
        undo.push(() => unit.detachDevice(requesterId, slot));
      }
      const resolveDomain = () => unit.domainOfRequester(requesterId);
      const dmaDev: DmaDevice = {
        bdf,
        dmaMaskBits: cfg.dmaMask,
        translated: unit.enabled,
        get domain() {
          return resolveDomain();
        },
      };
      // The rings, as a driver allocates them: reachable RAM, mapped for the device.
      const below = Math.min(2 ** cfg.dmaMask, Number.MAX_SAFE_INTEGER);
      const sqBuf = this.ram.alloc(cfg.queueDepth * SQE_SIZE, { below });
      undo.push(() => this.ram.free(sqBuf));
      const cqBuf = this.ram.alloc(cfg.queueDepth * CQE_SIZE, { below });
      undo.push(() => this.ram.free(cqBuf));
      const sqMap = this.dma.mapSingle(dmaDev, sqBuf.pa, sqBuf.size, 'to-device');
      undo.push(() => this.dma.unmapSingle(dmaDev, sqMap));
      const cqMap = this.dma.mapSingle(dmaDev, cqBuf.pa, cqBuf.size, 'from-device');
      undo.push(() => this.dma.unmapSingle(dmaDev, cqMap));
      const sq: RingPlacement = { pa: sqBuf.pa, dma: sqMap.addr, depth: cfg.queueDepth };
      const cq: RingPlacement = { pa: cqBuf.pa, dma: cqMap.addr, depth: cfg.queueDepth };
      const dev = await Device.start({
        bdf,
        requesterId,
        slot,
        model: cfg.model,
        dmaMaskBits: cfg.dmaMask,
        maxPayload: cfg.maxPayload,
        ram: this.ram,
        iommu: unit.handle,
        resolveDomain,
        iotlb: Iotlb.create(cfg.iotlbEntries).handle,
        sq,
        cq,
      });
      if (this.closing) {
        // close() began while the worker started: it waits for this add, which takes itself back.
        await dev.close();
        throw new DmaError('ESHUTDOWN', `machine.addDevice: the machine was closed while device ${bdf} was starting`);
      }
      this.records.set(bdf, { dev, dmaDev, ringBufs: { sq: sqBuf, cq: cqBuf }, ringMaps: [sqMap, cqMap], ownDomain: domain });
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
    const sum = (k: keyof DeviceCounters): number => Object.values(devices).reduce((a, c) => a + c[k], 0);
    let strict = 0;
    let lazy = 0;
    let flushes = this.flushes;
    for (const r of this.records.values()) {
      devices[r.dev.bdf] = r.dev.counters();
      const d = r.ownDomain;
      if (d) {
        const c = d.invalidationCounts();
        strict += c.strict;
        lazy += c.lazy;
        flushes += d.fq.flushes();
      }
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
      liveMappings: this.dma.liveMappings(),
      ramPagesInUse: this.ram.pagesInUse(),
      pageTablePages: this.unit.pool.inUse(),
      devices,
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
    for (const r of recs) for (const m of r.ringMaps) this.dma.unmapSingle(r.dmaDev, m);
    this.dma.close(); // flushes lazy queues and stops the flush timer
    for (const r of recs) {
      this.ram.free(r.ringBufs.sq);
      this.ram.free(r.ringBufs.cq);
      this.unit.detachDevice(r.dev.requesterId, r.dev.slot);
      const d = r.ownDomain;
      if (d) {
        this.flushes += d.fq.flushes();
        if (d.attachedSlots().length === 0) this.unit.destroyDomain(d);
      }
      this.unit.epochs.release(r.dev.slot);
    }
    this.records.clear();
  }

  private checkOpen(op: string): void {
    if (this.closing) throw new DmaError('ESHUTDOWN', `machine.${op}: the machine is closed`);
  }
}

/** A requester ID as `BB:DD.F` (no PCI domain: the ID has none). */
function formatRid(rid: number): string {
  return `${(rid >>> 8).toString(16).padStart(2, '0')}:${formatDevfn(rid & 0xff)}`;
}

function ridToBdf(rid: number): string {
  return formatBdf({ domain: 0, bus: rid >>> 8, slot: slotOfDevfn(rid & 0xff), fn: fnOfDevfn(rid & 0xff) });
}
