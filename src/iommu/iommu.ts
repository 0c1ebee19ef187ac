/**
 * The IOMMU: owns the page-table pool, the context table (requester ID → domain), the domain
 * table, the invalidation queues, the device epochs and the fault ring, all in shared memory.
 * Created once per machine on the main thread; every other thread attaches by its handle.
 *
 * enabled: false models a machine without an IOMMU (or with it off): devices' DMA addresses are
 * physical addresses and no context entry is consulted.
 */
import { DmaError } from '../errors.js';
import { TablePool } from './table-pool.js';
import { ContextTable } from './context-table.js';
import { DomainTable, MAX_DEVICE_SLOTS, type DomainType } from './domain-table.js';
import { Invalidation } from './invalidation.js';
import { DeviceEpochs } from './device-epoch.js';
import { FaultRing, type FaultRecord } from './fault-ring.js';
import { Domain, type DomainOptions } from './domain.js';
import type { IommuHandle } from './iommu-handle.js';

export interface IommuOptions {
  enabled?: boolean;
  /** Page-table pages (2 KiB each) shared by all domains. */
  tables?: number;
  /** Domain slots. */
  domains?: number;
  /** Fault ring records. */
  faultRing?: number;
}

export class Iommu {
  readonly handle: IommuHandle;
  readonly enabled: boolean;
  readonly pool: TablePool;
  readonly contexts: ContextTable;
  readonly domainTable: DomainTable;
  readonly epochs: DeviceEpochs;
  readonly faultRing: FaultRing;
  private readonly invalidation: Invalidation;
  private readonly live = new Map<number, Domain>();

  static create(options: IommuOptions = {}): Iommu {
    const { enabled = true, tables = 4096, domains = 256, faultRing = 4096 } = options;
    for (const [k, v, max] of [['tables', tables, 1 << 20], ['domains', domains, 4096]] as const) {
      if (!Number.isSafeInteger(v) || v < 2 || v > max) {
        throw new DmaError('EINVAL', `iommu.${k} = ${String(v)}: must be an integer in [2, ${max}]`);
      }
    }
    return new Iommu({
      enabled,
      pool: TablePool.create(tables).handle,
      contexts: ContextTable.create().handle,
      domains: DomainTable.create(domains).handle,
      invalidation: Invalidation.create(domains).handle,
      epochs: DeviceEpochs.create(MAX_DEVICE_SLOTS).handle,
      faults: FaultRing.create(faultRing).handle,
    });
  }

  static attach(handle: IommuHandle): Iommu {
    return new Iommu(handle);
  }

  private constructor(handle: IommuHandle) {
    this.handle = handle;
    this.enabled = handle.enabled;
    this.pool = TablePool.attach(handle.pool);
    this.contexts = ContextTable.attach(handle.contexts);
    this.domainTable = DomainTable.attach(handle.domains);
    this.epochs = DeviceEpochs.attach(handle.epochs);
    this.faultRing = FaultRing.attach(handle.faults);
    this.invalidation = Invalidation.attach(handle.invalidation);
  }

  createDomain(type: DomainType = 'dma', options: DomainOptions = {}): Domain {
    const d = Domain.create(this.handle, type, options);
    this.live.set(d.id, d);
    return d;
  }

  /** A domain created through this Iommu object, by id. */
  domain(id: number): Domain | undefined {
    return this.live.get(id);
  }

  /** The domain requester ID `rid` is attached to, if this Iommu object created it. */
  domainOfRequester(rid: number): Domain | null {
    const id = this.contexts.domainOf(rid);
    return id >= 0 ? (this.live.get(id) ?? null) : null;
  }

  /**
   * Points requester ID `rid` (device slot `slot`) at `domain`; a previous domain is left first.
   * Serialized with every other attach/detach, from any thread.
   */
  attachDevice(rid: number, slot: number, domain: Domain): void {
    this.contexts.mutex.with(() => {
      const old = this.contexts.domainOf(rid);
      if (old !== domain.id && old >= 0) this.detachLocked(rid, slot, old);
      // The slot joins the attached set even when the ID already points here (an alias of a
      // device already attached): a strict unmap must wait for every device that can use it.
      this.domainTable.attachDevice(domain.id, slot);
      this.contexts.set(rid, domain.id);
    });
  }

  /**
   * Removes the context entry; returns once the device can no longer translate through the old
   * domain: the context is cleared first, then a flush-all of the old domain is published and
   * waited for (a device re-reads its context after acknowledging it, see dma-engine.ts).
   * Works by domain id, for domains created anywhere.
   */
  detachDevice(rid: number, slot: number): void {
    this.contexts.mutex.with(() => {
      const old = this.contexts.domainOf(rid);
      if (old >= 0) this.detachLocked(rid, slot, old);
    });
  }

  /**
   * Moves requester ID(s) `rid` (used by device slot(s) `slot`) from their domain to `domain` in
   * one step, as Linux's iommu_group_replace_domain(): there is no moment without a context
   * entry, so a device's transfer sees either the old domain or the new one, never
   * 'no-context'. Several IDs and slots (an IOMMU group: every alias of every device) move
   * together, under one hold of the context mutex:
   *   1. every slot joins the new domain's attached set (a strict unmap there waits for it);
   *   2. every context entry switches with one store each;
   *   3. the old domain keeps its strict guarantee: a flush-all of each old domain is published
   *      and waited for, as detach does, then the slots leave its attached set.
   * So when this returns no device can still translate through an old domain. Returns the old
   * domain ids (empty when no ID had a context: then this is a plain attach).
   */
  replaceDomain(rid: number | readonly number[], slot: number | readonly number[], domain: Domain): number[] {
    const rids = typeof rid === 'number' ? [rid] : rid;
    const slots = typeof slot === 'number' ? [slot] : slot;
    return this.contexts.mutex.with(() => {
      const olds = new Set<number>();
      for (const s of slots) this.domainTable.attachDevice(domain.id, s);
      for (const r of rids) {
        const old = this.contexts.domainOf(r);
        if (old === domain.id) continue;
        if (old >= 0) olds.add(old);
        // ORDERING: one seq-cst store switches the entry; a device's begin() loads it after its
        // busy mark and re-reads it after acknowledging the flush below (dma-engine.ts).
        this.contexts.set(r, domain.id);
      }
      for (const old of olds) this.leaveLocked(slots, old);
      return [...olds];
    });
  }

  /**
   * Takes device slot `slot` out of `domain`'s attached set without touching any context entry
   * (another device still uses the requester ID: an alias). Waits, like detach, until the device
   * can no longer translate through the domain.
   */
  releaseSlot(slot: number, domain: Domain): void {
    this.contexts.mutex.with(() => this.leaveLocked([slot], domain.id));
  }

  private leaveLocked(slots: readonly number[], old: number): void {
    // ORDERING: the flush-all is published after the context entries changed; waitFor returns
    // once each device is idle or has acknowledged it (and then re-read its context).
    const gen = this.invalidation.publish(old, 0, 0, false);
    for (const s of slots) this.epochs.waitFor(s, gen);
    for (const s of slots) this.domainTable.detachDevice(old, s);
  }

  private detachLocked(rid: number, slot: number, old: number): void {
    this.contexts.clear(rid);
    const gen = this.invalidation.publish(old, 0, 0, false);
    this.epochs.waitFor(slot, gen);
    this.domainTable.detachDevice(old, slot);
  }

  destroyDomain(domain: Domain): void {
    domain.destroy();
    this.live.delete(domain.id);
  }

  /** Drains the fault ring. */
  drainFaults(): FaultRecord[] {
    return this.faultRing.drain();
  }
}
