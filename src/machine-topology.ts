/**
 * Where the machine's devices sit on PCI and what the IOMMU makes of that (the machine's `pci`):
 * placement at a BDF of the topology, the requester ID(s) the IOMMU sees, IOMMU groups and their
 * domains, BAR memory and each device's peer-to-peer routing table.
 *
 * With a topology (Machine.create({ topology })):
 *   - a device must be added at the BDF of a function that issues DMA (endpoint, legacy-endpoint,
 *     rc-endpoint, rc-event-collector, pci-device): 'ENODEV' when the topology has no function
 *     there, 'EINVAL' for a bridge, port or host bridge, or a function the IOMMU does not cover;
 *   - its requester ID is the one its DMA carries when it reaches the IOMMU: the last alias
 *     pci_for_each_dma_alias() reports (behind a PCIe-to-PCI bridge: the bridge's (secondary bus,
 *     00.0) alias); the IOMMU gets a context entry for every alias of the device, as intel-iommu's
 *     domain_context_mapping() installs one per alias;
 *   - the devices of one IOMMU group (computeIommuGroups, with the machine's acsOverride) share
 *     one domain, the group's default DMA domain: created when its first device is added,
 *     destroyed when its last one goes. VFIO moves a whole group between domains with
 *     Iommu.replaceDomain (the context entries switch in one step).
 * Reserved IOVA ranges (reservedIova()): every default DMA domain's IOVA allocator reserves them
 * when it is created, as iommu_dma_init_domain → iova_reserve_iommu_regions does, so the DMA API
 * never hands out an IOVA that does not reach the IOMMU as a translated request:
 *   - the x86 MSI window [0xfee00000, 0xfef00000) (intel_iommu_get_resv_regions' IOMMU_RESV_MSI
 *     region), always;
 *   - with a topology, every memory BAR with an assigned base (iova_reserve_pci_windows reserves
 *     the host bridge's memory windows; the topology records no bridge or host-bridge windows,
 *     and every BAR lies inside them, so its BARs are what we reserve): a device's DMA to an IOVA
 *     there would be routed peer-to-peer to the BAR (or taken for it) instead of reaching RAM.
 *   VFIO container domains reserve nothing: type1 refuses only the ranges it reports as reserved
 *   (VfioContainer.info().iovaRanges); the user chooses the IOVAs.
 * Without a topology: each device is its own group (numbered in the order devices are added)
 * with its own default domain; its requester ID is its BDF; a second device with a requester ID
 * in use is refused ('EEXIST'), as before.
 *
 * Faults: the IOMMU sees only a requester ID. A fault names the device when exactly one device's
 * DMA carries that ID; when an alias is shared (two devices behind one PCIe-to-PCI bridge), the
 * IOMMU cannot tell them apart: `bdf` is then the requester ID itself written as a BDF (as Linux
 * prints "DMAR: [DMA Write] Request device [02:00.0]") and `devices` lists every device behind it.
 *
 * BAR memory: every memory BAR with an assigned base of a function that is a device of the
 * machine, or a peer a device can reach, is backed by a SharedArrayBuffer of at most
 * BAR_BACKING_MAX bytes (the BAR's first bytes; reads past it return 0 and writes are dropped).
 * Peers' P2P DMA lands there (Device.bar(n), MachinePci.bar()). Not a shared layout of its own:
 * plain bytes, written by device workers and the CPU alike, with no ordering beyond the DMA
 * completion (a completion published after the copy, see device-control.ts).
 * Where we differ from Linux: one context table serves all PCI segments, so requester IDs of
 * different groups must differ across segments too; group numbers without a topology are ours.
 */
import { DmaError } from './errors.js';
import type { Iommu } from './iommu/iommu.js';
import type { Domain } from './iommu/domain.js';
import type { P2pRouteConfig } from './device/dma-engine.js';
import { formatBdf, parseBdf, pciDevId, devfnOf, formatDevfn } from './pci/bdf.js';
import { parseTopology } from './pci/schema.js';
import { parseLspci } from './pci/lspci.js';
import { treeOf, withArticle, type PciFunction, type Topology } from './pci/topology.js';
import { forEachDmaAlias } from './pci/dma-alias.js';
import { iommuGroupMap, computeIommuGroups, type IommuGroup } from './pci/iommu-group.js';
import { auditIsolation, isRequester, type IsolationFinding } from './pci/p2p.js';
import { p2pRoutingTable, type P2pWindow } from './pci/p2p-route.js';
import { MSI_WINDOW } from './vfio/container.js';
import { PAGE_SIZE } from './addresses.js';

/** The most bytes of one BAR the machine backs with memory. */
export const BAR_BACKING_MAX = 64 * 1024;

/** Where one device of the machine sits, as the IOMMU and the switches see it. */
export interface Placement {
  readonly bdf: string;
  /** The requester ID its DMA carries at the IOMMU (after aliasing). */
  readonly requesterId: number;
  /** Every requester ID that gets a context entry for it (pci_for_each_dma_alias order). */
  readonly aliases: readonly number[];
  /** Its IOMMU group's number. */
  readonly group: number;
  /** Peer BAR windows it reaches directly. */
  readonly routes: readonly P2pWindow[];
  /** The same, with the peers' BAR memory, for the device worker. */
  readonly p2p: readonly P2pRouteConfig[];
  /** Its own memory BARs' backing, by BAR number. */
  readonly bars: ReadonlyMap<number, Uint8Array>;
}

/** An IOVA range every default DMA domain reserves: [start, end) in bytes, and why. */
export interface ReservedIovaRange {
  readonly start: number;
  readonly end: number;
  readonly reason: string;
}

/** An IOMMU group as the machine tracks it. */
export interface GroupState {
  readonly number: number;
  /** Every function of the group (`DDDD:BB:DD.F`), whether or not it is a device of the machine. */
  readonly members: readonly string[];
  /** Devices of the machine in this group: placement and IOMMU device slot (-1 while starting). */
  readonly placed: Map<string, { placement: Placement; slot: number }>;
  /** The group's default DMA domain (null without an IOMMU or before its first device). */
  defaultDomain: Domain | null;
  /** The domain the group's context entries point at now (default, blocking, or a VFIO one). */
  current: Domain | null;
  /** Who owns the group's DMA instead of the kernel (VFIO), if anybody. */
  owner: object | null;
}

export interface MachinePciOptions {
  topology?: unknown;
  acsOverride?: string;
  flushQueueSize: number;
  /** Pages of IOVA space in each DMA domain (config.iommu.apertureEnd + 1, in pages). */
  aperturePages?: number;
}

/** What Machine.create accepts as `topology`: JSON (object or text), lspci text, or a Topology. */
export function resolveTopology(input: unknown): Topology | null {
  if (input === undefined || input === null) return null;
  if (typeof input === 'string') {
    const t = input.trimStart();
    return t.startsWith('{') || t.startsWith('[') ? parseTopology(input) : parseLspci(input);
  }
  const v = input as { functions?: unknown; rootBuses?: unknown; notes?: unknown };
  if (
    Array.isArray(v.functions) &&
    Array.isArray(v.rootBuses) &&
    Array.isArray(v.notes) &&
    v.functions.every((f) => f && typeof f === 'object' && typeof (f as { devfn?: unknown }).devfn === 'number')
  ) {
    return input as Topology; // already built (parseTopology / parseLspci / buildTopology)
  }
  return parseTopology(input);
}

/** A requester ID as `BB:DD.F` (no PCI domain: the ID has none). */
export function formatRid(rid: number): string {
  return `${(rid >>> 8).toString(16).padStart(2, '0')}:${formatDevfn(rid & 0xff)}`;
}

export class MachinePci {
  /** The topology devices are placed in (null: endpoints on bus 00, each its own group). */
  readonly topology: Topology | null;
  readonly acsOverride: string | undefined;
  private readonly unit: Iommu;
  private readonly flushQueueSize: number;
  private readonly aperturePages: number | undefined;
  private readonly groupMap: Map<string, number>;
  private readonly groupStates = new Map<number, GroupState>();
  /** Devices by BDF (reserved at add, removed at release). */
  private readonly byBdf = new Map<string, Placement>();
  private readonly barMemory = new Map<string, Map<number, SharedArrayBuffer>>();
  private readonly drivers = new Map<string, string | undefined>();
  private nextGroup = 0;
  /** Domains this machine created for groups and VFIO (for statistics), and retired counts. */
  private readonly owned = new Set<Domain>();
  private retired = 0;
  private reserved: readonly ReservedIovaRange[] | null = null;

  constructor(unit: Iommu, options: MachinePciOptions) {
    this.unit = unit;
    this.flushQueueSize = options.flushQueueSize;
    this.aperturePages = options.aperturePages;
    this.topology = resolveTopology(options.topology);
    this.acsOverride = options.acsOverride;
    if (this.acsOverride !== undefined && !this.topology) {
      throw new DmaError('EINVAL', `config.acsOverride: "${this.acsOverride}" needs a topology (config.topology) to apply to`);
    }
    this.groupMap = this.topology ? iommuGroupMap(this.topology, this.acsOverride !== undefined ? { acsOverride: this.acsOverride } : {}) : new Map();
    for (const f of this.topology?.functions ?? []) this.drivers.set(f.bdf, f.driver);
  }

  // ---- queries ------------------------------------------------------------------------------

  /**
   * The IOMMU groups, as /sys/kernel/iommu_groups lists them: with a topology, every group of
   * it; without one, one group per device of the machine.
   */
  groups(): IommuGroup[] {
    if (this.topology) return computeIommuGroups(this.topology, this.acsOverride !== undefined ? { acsOverride: this.acsOverride } : {});
    return [...this.groupStates.values()].sort((a, b) => a.number - b.number).map((g) => ({ group: g.number, devices: [...g.members] }));
  }

  /** The group number of a function (undefined: not grouped, or not a device without topology). */
  groupOf(bdf: string): number | undefined {
    const b = normalize(bdf);
    if (this.topology) return this.groupMap.get(b);
    return this.byBdf.get(b)?.group;
  }

  /** The isolation audit: pairs in different groups that still reach each other peer-to-peer. */
  audit(): IsolationFinding[] {
    return this.topology ? auditIsolation(this.topology, this.groups()) : [];
  }

  /** The machine's device at `bdf`, as placed. */
  placement(bdf: string): Placement | undefined {
    return this.byBdf.get(normalize(bdf));
  }

  /** Peer BAR windows `bdf` reaches directly (computed for any requester of the topology). */
  routes(bdf: string): P2pWindow[] {
    return this.topology ? p2pRoutingTable(this.topology, normalize(bdf)) : [];
  }

  /** The memory backing BAR `n` of function `bdf` (created on first use). */
  bar(bdf: string, n: number): Uint8Array {
    const f = this.requireFunction(bdf);
    const mem = this.barsOf(f).get(n);
    if (!mem) throw new DmaError('ENOENT', `${f.bdf}: no memory BAR ${n} with an assigned base in the topology`);
    return new Uint8Array(mem);
  }

  /** The driver a function is bound to (the topology's `driver`, or what VFIO bound). */
  driverOf(bdf: string): string | undefined {
    return this.drivers.get(normalize(bdf));
  }

  setDriver(bdf: string, driver: string | undefined): void {
    this.drivers.set(normalize(bdf), driver);
  }

  /** The group's state (number), for VFIO; undefined when there is no such group. */
  group(n: number): GroupState | undefined {
    if (!this.topology) return this.groupStates.get(n);
    let g = this.groupStates.get(n);
    if (!g) {
      const members = this.groups().find((x) => x.group === n)?.devices;
      if (!members) return undefined;
      g = { number: n, members, placed: new Map(), defaultDomain: null, current: null, owner: null };
      this.groupStates.set(n, g);
    }
    return g;
  }

  /**
   * True while VFIO owns the DMA of the group of device `bdf` (its group is in a container): the
   * kernel DMA API must not map for it then (Linux: the device is bound to vfio-pci).
   */
  dmaOwnedByVfio(bdf: string): boolean {
    // Devices carry their normalized BDF: look it up as is first (this runs on every DMA API map).
    const p = this.byBdf.get(bdf) ?? this.byBdf.get(normalize(bdf));
    return p !== undefined && this.groupStates.get(p.group)?.owner != null;
  }

  /** The type of a function of the topology (undefined without topology: an endpoint). */
  typeOf(bdf: string): PciFunction['type'] | undefined {
    return this.topology ? treeOf(this.topology).get(normalize(bdf))?.type : undefined;
  }

  /**
   * Who a requester ID in a fault record is (see the module comment): the device when one device
   * uses it; for a shared alias the ID itself as a BDF, with every device behind it.
   */
  describeRequester(rid: number): { bdf: string; devices: string[] } {
    const users = [...this.byBdf.values()].filter((p) => p.requesterId === rid).map((p) => p.bdf).sort();
    if (users.length === 1) return { bdf: users[0], devices: users };
    const domain = users.length ? parseBdf(users[0])!.domain : 0;
    return { bdf: formatBdf({ domain, bus: rid >>> 8, slot: (rid >>> 3) & 0x1f, fn: rid & 7 }), devices: users };
  }

  /**
   * The IOVA ranges every default DMA domain reserves (see the module comment), sorted by start:
   * the MSI window, and with a topology every memory BAR with an assigned base.
   */
  reservedIova(): ReservedIovaRange[] {
    if (!this.reserved) {
      const out: ReservedIovaRange[] = [{ start: MSI_WINDOW.start, end: MSI_WINDOW.end, reason: 'the MSI window (IOMMU_RESV_MSI)' }];
      for (const f of this.topology?.functions ?? []) {
        for (const b of f.bars ?? []) {
          if (b.kind === 'memory' && b.base !== undefined && b.size > 0) out.push({ start: b.base, end: b.base + b.size, reason: `BAR ${b.index} of ${f.bdf}` });
        }
      }
      out.sort((a, b) => a.start - b.start);
      this.reserved = out;
    }
    return [...this.reserved];
  }

  /** Domains the machine created (group defaults, VFIO containers, blocking domains). */
  liveDomains(): Domain[] {
    return [...this.owned];
  }

  /** Flush-queue flushes of domains already destroyed. */
  retiredFlushes(): number {
    return this.retired;
  }

  // ---- placement ----------------------------------------------------------------------------

  /**
   * Reserves `bdf` for a new device (synchronously, before its worker starts): checks the
   * address, computes requester IDs, group, routes and BARs. Undo with release(p, -1).
   */
  place(bdf: string): Placement {
    const b = parseBdf(bdf);
    if (!b) throw new DmaError('EINVAL', `device.bdf: ${JSON.stringify(bdf)} is not a PCI address (BB:DD.F or DDDD:BB:DD.F)`);
    const at = formatBdf(b);
    if (this.byBdf.has(at)) throw new DmaError('EEXIST', `device ${at}: a device is already present at that address`);
    const p = this.topology ? this.placeInTopology(at) : this.placeFlat(at, pciDevId(b.bus, devfnOf(b.slot, b.fn)));
    const g = this.group(p.group)!;
    if (g.owner) {
      throw new DmaError('EBUSY', `device ${at}: IOMMU group ${g.number} is owned by VFIO; a device cannot join it until the group leaves its container`);
    }
    g.placed.set(at, { placement: p, slot: -1 });
    this.byBdf.set(at, p);
    return p;
  }

  private placeFlat(bdf: string, requesterId: number): Placement {
    const clash = [...this.byBdf.values()].find((p) => p.aliases.includes(requesterId));
    if (clash) {
      // Where we differ: one context table serves every PCI segment, so the 16-bit requester ID
      // must be unique across segments (Linux has an IOMMU, and context tables, per segment).
      throw new DmaError('EEXIST', `device ${bdf}: requester ID ${formatRid(requesterId)} is already used by device ${clash.bdf}; this machine's IOMMU tells devices apart by requester ID only`);
    }
    const n = this.nextGroup++;
    this.groupStates.set(n, { number: n, members: [bdf], placed: new Map(), defaultDomain: null, current: null, owner: null });
    return { bdf, requesterId, aliases: [requesterId], group: n, routes: [], p2p: [], bars: new Map() };
  }

  private placeInTopology(bdf: string): Placement {
    const topology = this.topology!;
    const tree = treeOf(topology);
    const f = tree.get(bdf);
    if (!f) throw new DmaError('ENODEV', `device ${bdf}: the topology has no PCI function at ${bdf}`);
    if (!isRequester(f)) {
      throw new DmaError('EINVAL', `device ${bdf}: the topology has ${withArticle(f.type)} at ${bdf}; only endpoints (endpoint, legacy-endpoint, rc-endpoint, rc-event-collector, pci-device) can be devices that DMA`);
    }
    const group = this.groupMap.get(bdf);
    if (group === undefined) {
      throw new DmaError('EINVAL', `device ${bdf}: ${f.iommu ? 'it is an IOMMU itself' : 'it lies outside the IOMMU\'s device scope'}, so it has no IOMMU group`);
    }
    const aliases: number[] = [];
    forEachDmaAlias(tree, f, (_dev, rid) => {
      if (!aliases.includes(rid)) aliases.push(rid);
      return undefined;
    });
    let requesterId = aliases[0];
    forEachDmaAlias(tree, f, (_dev, rid) => {
      requesterId = rid; // the last one: the bridge nearest the root that takes ownership
      return undefined;
    });
    for (const p of this.byBdf.values()) {
      if (p.group === group) continue;
      const shared = p.aliases.find((r) => aliases.includes(r));
      if (shared !== undefined) {
        throw new DmaError('EEXIST', `device ${bdf}: requester ID ${formatRid(shared)} is already used by device ${p.bdf} of another IOMMU group (a PCI segment clash); this machine's IOMMU tells devices apart by requester ID only`);
      }
    }
    const routes = p2pRoutingTable(topology, bdf);
    const p2p: P2pRouteConfig[] = routes.map((w) => {
      const mem = this.barsOf(tree.get(w.target)!).get(w.bar)!;
      return { base: w.base, size: w.size, target: w.target, bar: w.bar, mem };
    });
    const bars = new Map([...this.barsOf(f)].map(([n, sab]) => [n, new Uint8Array(sab)] as const));
    return { bdf, requesterId, aliases, group, routes, p2p, bars };
  }

  /** The BAR backings of a function, created on first use. */
  private barsOf(f: PciFunction): Map<number, SharedArrayBuffer> {
    let m = this.barMemory.get(f.bdf);
    if (!m) {
      m = new Map();
      for (const b of f.bars ?? []) {
        if (b.kind === 'memory' && b.base !== undefined && b.size > 0) m.set(b.index, new SharedArrayBuffer(Math.min(b.size, BAR_BACKING_MAX)));
      }
      this.barMemory.set(f.bdf, m);
    }
    return m;
  }

  private requireFunction(bdf: string): PciFunction {
    if (!this.topology) throw new DmaError('ENODEV', `${bdf}: the machine has no topology, so no BARs`);
    const at = normalize(bdf);
    const f = treeOf(this.topology).get(at);
    if (!f) throw new DmaError('ENODEV', `the topology has no PCI function at ${at || bdf}`);
    return f;
  }

  // ---- domains ------------------------------------------------------------------------------

  /** Creates a domain the machine owns (counted in stats, destroyed with destroyDomain). */
  createDomain(type: 'dma' | 'blocked', iovaManaged = false): Domain {
    const d = this.unit.createDomain(type, { flushQueueSize: this.flushQueueSize, aperturePages: this.aperturePages, iovaManaged });
    this.owned.add(d);
    return d;
  }

  /**
   * A group's default DMA domain: a 'dma' domain whose IOVA allocator reserves reservedIova()
   * (iommu_dma_init_domain). All or nothing: a failed reservation destroys the domain again.
   */
  private createDefaultDomain(): Domain {
    const d = this.createDomain('dma', true); // the DMA API maps only IOVAs its allocator gave
    try {
      for (const r of this.reservedIova()) {
        const first = Math.floor(r.start / PAGE_SIZE);
        d.iova.reserve(first, Math.ceil(r.end / PAGE_SIZE) - first, `${d.name} (${r.reason})`);
      }
    } catch (e) {
      this.destroyDomain(d);
      throw e;
    }
    return d;
  }

  destroyDomain(d: Domain): void {
    this.retired += d.fq.flushes();
    this.owned.delete(d);
    this.unit.destroyDomain(d);
  }

  /**
   * Attaches a started device (IOMMU slot `slot`) to its group's domain: every alias gets a
   * context entry. The group's default domain is created with its first device.
   */
  attach(p: Placement, slot: number): void {
    const g = this.group(p.group)!;
    const entry = g.placed.get(p.bdf);
    if (entry) entry.slot = slot;
    if (!this.unit.enabled) return;
    if (!g.defaultDomain) {
      g.defaultDomain = this.createDefaultDomain();
      g.current = g.defaultDomain;
    }
    const d = g.current!;
    for (const rid of p.aliases) this.unit.attachDevice(rid, slot, d);
  }

  /**
   * Takes a device out (its worker is stopped or never started; slot -1 = never attached): its
   * context entries go unless another device of the group still uses them; the last device of a
   * group takes the group's domains with it.
   */
  release(p: Placement, slot: number): void {
    const g = this.group(p.group);
    if (!g || this.byBdf.get(p.bdf) !== p) return;
    g.placed.delete(p.bdf);
    this.byBdf.delete(p.bdf);
    if (this.unit.enabled && slot >= 0 && g.current) {
      const stillUsed = new Set([...g.placed.values()].flatMap((o) => o.placement.aliases));
      for (const rid of p.aliases) if (!stillUsed.has(rid)) this.unit.detachDevice(rid, slot);
      if (g.current.attachedSlots().includes(slot)) this.unit.releaseSlot(slot, g.current);
    }
    if (g.placed.size === 0 && !g.owner) {
      if (g.defaultDomain) this.destroyDomain(g.defaultDomain);
      g.defaultDomain = null;
      g.current = null;
      if (!this.topology) this.groupStates.delete(g.number);
    }
  }

  /**
   * Points every context entry of the group's devices at `domain`, in one step per entry
   * (Iommu.replaceDomain): VFIO's iommu_group_replace_domain. Returns the domain left.
   */
  replaceGroupDomain(g: GroupState, domain: Domain): Domain | null {
    const old = g.current;
    if (old === domain) return old;
    const live = [...g.placed.values()].filter((e) => e.slot >= 0);
    const rids = [...new Set(live.flatMap((e) => e.placement.aliases))];
    if (rids.length > 0) this.unit.replaceDomain(rids, live.map((e) => e.slot), domain);
    g.current = domain;
    return old;
  }

  /** The default domain of a group, created if it has none yet (VFIO returns groups to it). */
  defaultDomainOf(g: GroupState): Domain {
    if (!g.defaultDomain) g.defaultDomain = this.createDefaultDomain();
    return g.defaultDomain;
  }

  /** Drops a group's default domain when no device of the machine is in it (VFIO release). */
  trimGroup(g: GroupState): void {
    if (g.placed.size > 0 || g.owner) return;
    if (g.current && g.current !== g.defaultDomain) return;
    if (g.defaultDomain) this.destroyDomain(g.defaultDomain);
    g.defaultDomain = null;
    g.current = null;
  }
}

function normalize(bdf: string): string {
  const b = parseBdf(bdf);
  return b ? formatBdf(b) : '';
}
