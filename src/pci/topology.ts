/**
 * The PCI topology model: one entry per PCI function, the bridges that lead from root buses to
 * every other bus, and the per-function facts Linux's IOMMU grouping reads (PCIe port type, ACS
 * capability/control, multifunction, vendor:device ids, explicit DMA aliases, "is an IOMMU").
 * buildTopology() validates a list of function specs the way the PCI core would have to see them
 * (unique BDFs, every bus reached by exactly one bridge, a root bus or - for SR-IOV virtual
 * functions - a virtual bus, bus ranges nested) and derives what Linux derives:
 *   - `multifunction`: pci_scan_slot marks every function above 0 multifunction, function 0
 *     follows its header bit; a virtual function never is (pci_iov_add_virtfn clears it);
 *   - virtual buses: VFs whose routing ID lands on a bus no bridge leads to sit on a bus with
 *     bus->self == NULL whose parent is their PF's bus (virtfn_add_bus);
 *   - root buses: bus 00 of each domain, and in a VMD domain (number above ffff, made by the vmd
 *     driver) its lowest bus no bridge leads to (VMD root buses start at 00, 80 or e0);
 *   - port types as set_pcie_port_type() corrects them: a "downstream port" whose upstream bridge
 *     is itself a downstream-facing port (root or downstream port, PCI/PCI-X-to-PCIe bridge) acts,
 *     and is treated, as an upstream port (the type lspci printed stays in `reportedType`).
 * Where we differ from Linux: the opposite correction (an "upstream port" below an upstream port)
 * is not applied, because kernels before 6.13 store the corrected type in the wrong bits and
 * end up with an endpoint; such a port keeps its reported type.
 */
import { DmaError } from '../errors.js';
import {
  busKey,
  compareBdf,
  devfnOf,
  formatBdf,
  formatDevfn,
  parseBdf,
  parseBusKey,
  slotKey,
  type Bdf,
} from './bdf.js';
import { formatAcs } from './acs-flags.js';

export const PCI_TYPES = [
  'host-bridge',
  'root-port',
  'upstream-port',
  'downstream-port',
  'endpoint',
  'legacy-endpoint',
  'rc-endpoint',
  'rc-event-collector',
  'pcie-to-pci-bridge',
  'pci-to-pcie-bridge',
  'pci-bridge',
  'pci-device',
] as const;
export type PciType = (typeof PCI_TYPES)[number];

/** Functions with a type-1 header: they have a secondary bus. */
export const BRIDGE_TYPES: ReadonlySet<PciType> = new Set<PciType>([
  'root-port',
  'upstream-port',
  'downstream-port',
  'pcie-to-pci-bridge',
  'pci-to-pcie-bridge',
  'pci-bridge',
]);

/** PCIe ports (switch and root ports): bridges whose secondary side is a PCIe link. */
export const PORT_TYPES: ReadonlySet<PciType> = new Set<PciType>(['root-port', 'upstream-port', 'downstream-port']);

/** pci_is_pcie(): the function has a PCI Express capability. */
export function isPcie(type: PciType): boolean {
  return type !== 'host-bridge' && type !== 'pci-bridge' && type !== 'pci-device';
}

export const isBridge = (type: PciType): boolean => BRIDGE_TYPES.has(type);

/** `a root-port`, `an endpoint`, `an rc-endpoint`: for messages. */
export function withArticle(type: string): string {
  return `${/^([aeiou]|rc-)/.test(type) ? 'an' : 'a'} ${type}`;
}

export interface Bar {
  readonly index: number; // BAR number 0..5
  readonly kind: 'memory' | 'io';
  readonly base?: number; // undefined: unassigned
  readonly size: number;
  readonly is64: boolean;
  readonly prefetchable: boolean;
}

/** The ACS extended capability: which features it implements (cap) and which are enabled (ctl). */
export interface AcsCapability {
  readonly cap: number;
  readonly ctl: number;
}

/** What a topology source (JSON or lspci) says about one function, before validation. */
export interface FunctionSpec {
  bdf: string;
  type: PciType;
  secondary?: number;
  subordinate?: number;
  /** undefined: no ACS capability at all (distinct from a capability with every bit clear). */
  acs?: AcsCapability;
  /** The header's multifunction bit; undefined: infer from the other functions of the slot. */
  multifunction?: boolean;
  vendor?: number;
  device?: number;
  classCode?: number;
  bars?: readonly Bar[];
  driver?: string;
  /** Explicit DMA aliases (quirks): `DD.F` or a BDF on the function's own bus. */
  dmaAliases?: readonly string[];
  /** The function is itself an IOMMU: the IOMMU never puts it in a group. */
  iommu?: boolean;
  name?: string;
  /** Where the entry came from, for messages: `functions[3]` or `lspci line 102`. */
  origin: string;
  /** For an SR-IOV virtual function: the BDF of its physical function. */
  physfn?: string;
}

export interface PciFunction extends Bdf {
  readonly bdf: string; // DDDD:BB:DD.F
  readonly devfn: number;
  /** As Linux uses it (after set_pcie_port_type's correction). */
  readonly type: PciType;
  /** The type the source gave, when Linux corrects it (see the module comment). */
  readonly reportedType?: PciType;
  readonly secondary?: number;
  /** For bridges: the highest bus number below (declared, or computed from the tree). */
  readonly subordinate?: number;
  readonly acs?: AcsCapability;
  /** As Linux sees it: functions above 0 always; function 0 from its header bit. */
  readonly multifunction: boolean;
  /** The header bit as given (undefined when it was inferred). */
  readonly headerMultifunction?: boolean;
  readonly vendor?: number;
  readonly device?: number;
  readonly classCode?: number;
  readonly bars?: readonly Bar[];
  readonly driver?: string;
  /** Explicit alias devfns on the function's own bus (Linux's dma_alias_mask, before quirks). */
  readonly dmaAliases: readonly number[];
  readonly iommu: boolean;
  readonly name?: string;
  readonly origin: string;
  /** For an SR-IOV virtual function: its physical function (`DDDD:BB:DD.F`). */
  readonly physfn?: string;
}

export interface Topology {
  /** In probe order: domain, bus, devfn. */
  readonly functions: readonly PciFunction[];
  /** `DDDD:BB` of every root bus. */
  readonly rootBuses: readonly string[];
  /** Things the parser skipped or inferred, for the user to see. */
  readonly notes: readonly string[];
}

export interface BuildOptions {
  /**
   * Root buses (`DDDD:BB`); 'infer' makes every bus no bridge leads to a root bus (lspci). Bus 00
   * of each domain, and the lowest bridgeless bus of a VMD domain (above ffff), are root buses
   * without being named.
   */
  rootBuses?: readonly string[] | 'infer';
  notes?: readonly string[];
}

const fail = (origin: string, bdf: string | undefined, field: string, problem: string): never => {
  throw new DmaError('EINVAL', `topology ${origin}${bdf ? ` (${bdf})` : ''}: ${field}: ${problem}`);
};

const hex2 = (n: number): string => n.toString(16).padStart(2, '0');

/**
 * Validates function specs and returns the topology in probe order. Every problem is a
 * DmaError('EINVAL') naming the entry (origin and BDF), the field and the rule.
 */
export function buildTopology(specs: readonly FunctionSpec[], options: BuildOptions = {}): Topology {
  interface Work {
    spec: FunctionSpec;
    b: Bdf;
    bdf: string;
  }
  const works: Work[] = [];
  const seen = new Map<string, Work>();
  for (const spec of specs) {
    const b = parseBdf(spec.bdf);
    if (!b) fail(spec.origin, undefined, 'bdf', `"${spec.bdf}" is not a PCI address (expected DDDD:BB:DD.F or BB:DD.F)`);
    const bdf = formatBdf(b!);
    const prev = seen.get(bdf);
    if (prev) fail(spec.origin, bdf, 'bdf', `${bdf} appears twice (also ${prev.spec.origin})`);
    const w = { spec, b: b!, bdf };
    seen.set(bdf, w);
    works.push(w);
  }
  works.sort((x, y) => compareBdf(x.b, y.b));

  // Virtual functions: the PF must exist, be another function, and share the domain.
  const physfnOf = new Map<string, Work>();
  for (const w of works) {
    if (w.spec.physfn === undefined) continue;
    const pb = parseBdf(w.spec.physfn);
    if (!pb) fail(w.spec.origin, w.bdf, 'physfn', `"${w.spec.physfn}" is not a PCI address`);
    if (pb!.domain !== w.b.domain) fail(w.spec.origin, w.bdf, 'physfn', `${formatBdf(pb!)} is in another PCI domain`);
    const pf = seen.get(formatBdf(pb!));
    if (!pf) fail(w.spec.origin, w.bdf, 'physfn', `${formatBdf(pb!)} is not in the topology`);
    if (pf === w || pf!.spec.physfn !== undefined)
      fail(w.spec.origin, w.bdf, 'physfn', `${pf!.bdf} cannot be the physical function (it is ${pf === w ? 'the function itself' : 'a virtual function'})`);
    if (isBridge(w.spec.type)) fail(w.spec.origin, w.bdf, 'physfn', `a virtual function cannot be ${withArticle(w.spec.type)}`);
    physfnOf.set(w.bdf, pf!);
  }

  // Per-entry rules.
  for (const { spec, b, bdf } of works) {
    const bridge = isBridge(spec.type);
    if (bridge && spec.secondary === undefined)
      fail(spec.origin, bdf, 'secondary', `${withArticle(spec.type)} is a bridge and needs its secondary bus number`);
    if (!bridge && spec.secondary !== undefined)
      fail(spec.origin, bdf, 'secondary', `${withArticle(spec.type)} is not a bridge and has no secondary bus`);
    if (!bridge && spec.subordinate !== undefined)
      fail(spec.origin, bdf, 'subordinate', `${withArticle(spec.type)} is not a bridge and has no subordinate bus`);
    if (bridge) {
      const sec = spec.secondary!;
      if (!Number.isInteger(sec) || sec < 0 || sec > 255) fail(spec.origin, bdf, 'secondary', `bus ${sec} is not 0..255`);
      if (sec <= b.bus)
        fail(spec.origin, bdf, 'secondary', `bus ${hex2(sec)} must be above the bridge's own bus ${hex2(b.bus)}`);
      if (spec.subordinate !== undefined && (spec.subordinate < sec || spec.subordinate > 255))
        fail(spec.origin, bdf, 'subordinate', `bus ${hex2(spec.subordinate)} must be in ${hex2(sec)}..ff`);
    }
    if (spec.acs) {
      if (!isPcie(spec.type))
        fail(spec.origin, bdf, 'acs', `${withArticle(spec.type)} is conventional PCI: it has no extended capabilities, so no ACS`);
      const extra = spec.acs.ctl & ~spec.acs.cap;
      if (extra)
        fail(spec.origin, bdf, 'acs.ctl', `${formatAcs(extra)} enabled but the capability does not implement it (cap ${formatAcs(spec.acs.cap)})`);
    }
    if (spec.bars) {
      const used = new Map<number, Bar>();
      for (const bar of spec.bars) {
        const slots = bar.is64 ? [bar.index, bar.index + 1] : [bar.index];
        if (bar.index < 0 || bar.index > 5 || (bar.is64 && bar.index > 4))
          fail(spec.origin, bdf, `bars (BAR ${bar.index})`, `BAR index must be 0..5 (a 64-bit BAR also takes the next one)`);
        for (const s of slots)
          if (used.has(s)) fail(spec.origin, bdf, `bars (BAR ${bar.index})`, `overlaps BAR ${used.get(s)!.index}`);
        for (const s of slots) used.set(s, bar);
      }
    }
  }

  // Buses: which bridge leads to which bus, and which buses are root buses.
  const bridgeTo = new Map<string, Work>();
  for (const w of works) {
    if (!isBridge(w.spec.type)) continue;
    const key = busKey(w.b.domain, w.spec.secondary!);
    const other = bridgeTo.get(key);
    if (other)
      fail(w.spec.origin, w.bdf, 'secondary', `bus ${key} is already the secondary bus of ${other.bdf} (${other.spec.origin})`);
    bridgeTo.set(key, w);
  }
  const onBusWorks = new Map<string, Work[]>();
  for (const w of works) {
    const key = busKey(w.b.domain, w.b.bus);
    (onBusWorks.get(key) ?? onBusWorks.set(key, []).get(key)!).push(w);
  }
  const roots = new Set<string>();
  if (options.rootBuses === 'infer') {
    for (const w of works) {
      const key = busKey(w.b.domain, w.b.bus);
      if (!bridgeTo.has(key)) roots.add(key);
    }
  } else {
    for (const r of options.rootBuses ?? []) {
      const p = parseBusKey(r);
      if (!p) fail('rootBuses', undefined, 'rootBuses', `"${r}" is not a bus (expected DDDD:BB)`);
      roots.add(busKey(p!.domain, p!.bus));
    }
    // Bus 00 of every domain is a root bus unless a bridge leads to it. A VMD domain (above
    // ffff) starts at the bus the VMD's bus restriction gives it (00, 80 or e0): there the lowest
    // bus no bridge leads to is the root bus, unless rootBuses names one in that domain.
    for (const w of works) {
      const key = busKey(w.b.domain, 0);
      if (!bridgeTo.has(key)) roots.add(key);
    }
    const vmdDomains = new Set(works.filter((w) => w.b.domain > 0xffff).map((w) => w.b.domain));
    for (const d of vmdDomains) {
      if ([...roots].some((r) => parseBusKey(r)!.domain === d && onBusWorks.has(r))) continue;
      const buses = works.filter((w) => w.b.domain === d && !bridgeTo.has(busKey(d, w.b.bus))).map((w) => w.b.bus);
      if (buses.length) roots.add(busKey(d, Math.min(...buses)));
    }
  }
  // A bus that only VFs of PFs on other buses sit on, and that no bridge leads to, is a virtual bus.
  const virtualParent = new Map<string, string>(); // virtual bus -> parent bus (the PF's)
  const explicitRoots = new Set(options.rootBuses === 'infer' ? [] : (options.rootBuses ?? []).map((r) => {
    const p = parseBusKey(r);
    return p ? busKey(p.domain, p.bus) : r;
  }));
  for (const [key, list] of onBusWorks) {
    if (bridgeTo.has(key) || explicitRoots.has(key)) continue;
    const pfs = list.map((w) => physfnOf.get(w.bdf));
    if (pfs.every((pf) => pf !== undefined && busKey(pf.b.domain, pf.b.bus) !== key)) {
      const parents = new Set(pfs.map((pf) => busKey(pf!.b.domain, pf!.b.bus)));
      if (parents.size > 1)
        fail(list[0].spec.origin, list[0].bdf, 'physfn', `virtual functions on bus ${key} belong to physical functions on different buses (${[...parents].join(', ')})`);
      virtualParent.set(key, [...parents][0]);
      roots.delete(key);
    }
  }
  for (const [key, w] of bridgeTo)
    if (roots.has(key)) fail(w.spec.origin, w.bdf, 'secondary', `bus ${key} is a root bus; a bridge cannot lead to it`);
  for (const w of works) {
    const key = busKey(w.b.domain, w.b.bus);
    if (!roots.has(key) && !bridgeTo.has(key) && !virtualParent.has(key))
      fail(w.spec.origin, w.bdf, 'bus', `no bridge leads to bus ${key} and it is not a root bus`);
  }
  // A virtual bus number must lie in the range of the bridge above its PF (Linux sizes it so).
  for (const [key, parent] of virtualParent) {
    const up = bridgeTo.get(parent);
    const { bus } = parseBusKey(key)!;
    if (up && up.spec.subordinate !== undefined && (bus < up.spec.secondary! || bus > up.spec.subordinate)) {
      const w = onBusWorks.get(key)![0];
      fail(w.spec.origin, w.bdf, 'bus', `virtual bus ${key} lies outside ${hex2(up.spec.secondary!)}-${hex2(up.spec.subordinate)} of ${up.bdf}, the bridge above its physical function`);
    }
  }

  // Subordinate ranges: computed bottom-up (higher buses first) and checked for nesting.
  const subordinate = new Map<string, number>(); // bdf -> effective subordinate
  const bridgesDesc = works.filter((w) => isBridge(w.spec.type)).sort((x, y) => y.spec.secondary! - x.spec.secondary!);
  for (const w of bridgesDesc) {
    let sub = w.spec.secondary!;
    for (const c of works) {
      if (c.b.domain !== w.b.domain || c.b.bus !== w.spec.secondary || !isBridge(c.spec.type)) continue;
      sub = Math.max(sub, subordinate.get(c.bdf)!);
    }
    if (w.spec.subordinate !== undefined) {
      if (w.spec.subordinate < sub)
        fail(w.spec.origin, w.bdf, 'subordinate', `bus ${hex2(w.spec.subordinate)} is below bus ${hex2(sub)} that lies behind this bridge`);
      sub = w.spec.subordinate;
    }
    subordinate.set(w.bdf, sub);
  }
  // Sibling bridges on one bus must not claim overlapping bus ranges.
  const byBus = new Map<string, Work[]>();
  for (const w of works) {
    const key = busKey(w.b.domain, w.b.bus);
    (byBus.get(key) ?? byBus.set(key, []).get(key)!).push(w);
  }
  for (const list of byBus.values()) {
    const bridges = list.filter((w) => isBridge(w.spec.type));
    for (let i = 0; i < bridges.length; i++)
      for (let j = i + 1; j < bridges.length; j++) {
        const a = bridges[i];
        const c = bridges[j];
        const [aLo, aHi] = [a.spec.secondary!, subordinate.get(a.bdf)!];
        const [cLo, cHi] = [c.spec.secondary!, subordinate.get(c.bdf)!];
        if (aLo <= cHi && cLo <= aHi)
          fail(c.spec.origin, c.bdf, 'secondary', `bus range ${hex2(cLo)}-${hex2(cHi)} collides with ${hex2(aLo)}-${hex2(aHi)} of ${a.bdf}`);
      }
  }
  // A bridge's range must contain every bus behind it (a bus number outside the parent's range
  // would be unreachable by type-1 configuration routing).
  for (const w of bridgesDesc) {
    const parent = bridgeTo.get(busKey(w.b.domain, w.b.bus));
    if (!parent) continue;
    const pLo = parent.spec.secondary!;
    const pHi = subordinate.get(parent.bdf)!;
    const hi = subordinate.get(w.bdf)!;
    if (w.spec.secondary! < pLo || hi > pHi)
      fail(w.spec.origin, w.bdf, 'secondary', `bus range ${hex2(w.spec.secondary!)}-${hex2(hi)} lies outside ${hex2(pLo)}-${hex2(pHi)} of the parent bridge ${parent.bdf}`);
  }

  // Slots: function 0's header bit decides whether functions 1-7 are scanned at all.
  const slotFns = new Map<string, Work[]>();
  for (const w of works) {
    const key = slotKey(w.b.domain, w.b.bus, w.b.slot);
    (slotFns.get(key) ?? slotFns.set(key, []).get(key)!).push(w);
  }
  // set_pcie_port_type(): a downstream port below a downstream-facing port acts as an upstream port.
  // Parents come first in BDF order, so a parent's own correction is already known.
  const corrected = new Map<string, PciType>();
  const extraNotes: string[] = [];
  for (const w of works) {
    if (w.spec.type !== 'downstream-port') continue;
    const up = bridgeTo.get(busKey(w.b.domain, w.b.bus));
    const upType = up && (corrected.get(up.bdf) ?? up.spec.type);
    if (up && (upType === 'root-port' || upType === 'downstream-port' || upType === 'pci-to-pcie-bridge')) {
      corrected.set(w.bdf, 'upstream-port');
      extraNotes.push(`${w.bdf} claims to be a downstream port but sits below ${withArticle(up.spec.type)} (${up.bdf}): Linux treats it as an upstream port`);
    }
  }

  const functions: PciFunction[] = works.map((w) => {
    const { spec, b, bdf } = w;
    const pf = physfnOf.get(bdf);
    // VFs are not found by pci_scan_slot: they neither need function 0's multifunction bit nor set it.
    const siblings = slotFns.get(slotKey(b.domain, b.bus, b.slot))!.filter((o) => o !== w && !physfnOf.has(o.bdf));
    if (!pf && b.fn === 0 && spec.multifunction === false && siblings.length > 0)
      fail(spec.origin, bdf, 'multifunction', `false, but ${siblings[0].bdf} exists in the same slot: Linux scans functions 1-7 only when function 0's header says multifunction`);
    if (pf && spec.multifunction === true)
      fail(spec.origin, bdf, 'multifunction', `true, but a virtual function is never multifunction (Linux clears the flag for VFs)`);
    const multifunction = pf ? false : b.fn > 0 ? true : (spec.multifunction ?? siblings.length > 0);
    const type = corrected.get(bdf) ?? spec.type;
    const aliases: number[] = [];
    for (const [i, a] of (spec.dmaAliases ?? []).entries()) {
      const devfn = parseAlias(a, b);
      if (devfn === undefined)
        fail(spec.origin, bdf, `dmaAliases[${i}]`, `"${a}" is not DD.F or a BDF on bus ${busKey(b.domain, b.bus)} (Linux's DMA alias mask holds devfns of the function's own bus)`);
      if (devfn === devfnOf(b.slot, b.fn)) fail(spec.origin, bdf, `dmaAliases[${i}]`, `${formatDevfn(devfn!)} is the function itself`);
      if (!aliases.includes(devfn!)) aliases.push(devfn!);
    }
    const f: PciFunction = {
      bdf,
      domain: b.domain,
      bus: b.bus,
      slot: b.slot,
      fn: b.fn,
      devfn: devfnOf(b.slot, b.fn),
      type,
      ...(type !== spec.type ? { reportedType: spec.type } : {}),
      ...(isBridge(spec.type) ? { secondary: spec.secondary, subordinate: subordinate.get(bdf) } : {}),
      ...(spec.acs ? { acs: { cap: spec.acs.cap, ctl: spec.acs.ctl } } : {}),
      multifunction,
      ...(spec.multifunction !== undefined ? { headerMultifunction: spec.multifunction } : {}),
      ...(spec.vendor !== undefined ? { vendor: spec.vendor } : {}),
      ...(spec.device !== undefined ? { device: spec.device } : {}),
      ...(spec.classCode !== undefined ? { classCode: spec.classCode } : {}),
      ...(spec.bars ? { bars: spec.bars.map((x) => ({ ...x })) } : {}),
      ...(spec.driver !== undefined ? { driver: spec.driver } : {}),
      dmaAliases: aliases,
      iommu: spec.iommu ?? false,
      ...(spec.name !== undefined ? { name: spec.name } : {}),
      origin: spec.origin,
      ...(pf ? { physfn: pf.bdf } : {}),
    };
    return f;
  });

  const notes = [...new Set([...(options.notes ?? []), ...extraNotes])];
  return { functions, rootBuses: [...roots].sort(), notes };
}

function parseAlias(text: string, own: Bdf): number | undefined {
  const short = /^([0-9a-fA-F]{2})\.([0-7])$/.exec(text.trim());
  if (short) {
    const slot = parseInt(short[1], 16);
    return slot > 0x1f ? undefined : devfnOf(slot, parseInt(short[2], 10));
  }
  const b = parseBdf(text);
  if (!b || b.domain !== own.domain || b.bus !== own.bus) return undefined;
  return devfnOf(b.slot, b.fn);
}

/** Turns a function back into a spec (for what-if edits that are then re-validated). */
export function specOf(f: PciFunction): FunctionSpec {
  return {
    bdf: f.bdf,
    type: f.reportedType ?? f.type,
    ...(f.secondary !== undefined ? { secondary: f.secondary, subordinate: f.subordinate } : {}),
    ...(f.acs ? { acs: { ...f.acs } } : {}),
    ...(f.headerMultifunction !== undefined ? { multifunction: f.headerMultifunction } : {}),
    ...(f.vendor !== undefined ? { vendor: f.vendor } : {}),
    ...(f.device !== undefined ? { device: f.device } : {}),
    ...(f.classCode !== undefined ? { classCode: f.classCode } : {}),
    ...(f.bars ? { bars: f.bars } : {}),
    ...(f.driver !== undefined ? { driver: f.driver } : {}),
    dmaAliases: f.dmaAliases.map(formatDevfn),
    iommu: f.iommu,
    ...(f.name !== undefined ? { name: f.name } : {}),
    origin: f.origin,
    ...(f.physfn !== undefined ? { physfn: f.physfn } : {}),
  };
}

/**
 * Lookups over a topology: the bridge that leads to a bus (Linux's bus->self), the parent of a bus
 * (bus->parent), the functions on a bus, root buses, subtrees. Built once per topology object and
 * cached.
 */
export class PciTree {
  readonly topology: Topology;
  private readonly byBdf = new Map<string, PciFunction>();
  private readonly onBus = new Map<string, PciFunction[]>();
  private readonly selfOf = new Map<string, PciFunction>();
  private readonly roots: ReadonlySet<string>;
  private readonly virtualParent = new Map<string, string>();

  constructor(topology: Topology) {
    this.topology = topology;
    for (const f of topology.functions) {
      this.byBdf.set(f.bdf, f);
      const key = busKey(f.domain, f.bus);
      (this.onBus.get(key) ?? this.onBus.set(key, []).get(key)!).push(f);
      if (f.secondary !== undefined) this.selfOf.set(busKey(f.domain, f.secondary), f);
    }
    this.roots = new Set(topology.rootBuses);
    for (const f of topology.functions) {
      const key = busKey(f.domain, f.bus);
      if (f.physfn === undefined || this.roots.has(key) || this.selfOf.has(key)) continue;
      const pf = this.byBdf.get(f.physfn);
      if (pf) this.virtualParent.set(key, busKey(pf.domain, pf.bus));
    }
  }

  get(bdf: string): PciFunction | undefined {
    return this.byBdf.get(bdf);
  }

  /** Looks a function up by any BDF spelling; DmaError('ENOENT') when absent or malformed. */
  require(bdf: string): PciFunction {
    const b = parseBdf(bdf);
    if (!b) throw new DmaError('EINVAL', `"${bdf}" is not a PCI address (expected DDDD:BB:DD.F or BB:DD.F)`);
    const f = this.byBdf.get(formatBdf(b));
    if (!f) throw new DmaError('ENOENT', `no PCI function ${formatBdf(b)} in the topology`);
    return f;
  }

  busOf(f: PciFunction): string {
    return busKey(f.domain, f.bus);
  }

  /** pci_is_root_bus(). */
  isRootBus(key: string): boolean {
    return this.roots.has(key);
  }

  /** bus->self: the bridge whose secondary bus this is (undefined for a root or virtual bus). */
  self(key: string): PciFunction | undefined {
    return this.selfOf.get(key);
  }

  /** bus->parent: the bus the bridge to this bus sits on, or a virtual bus's PF bus. */
  parentBus(key: string): string | undefined {
    const self = this.selfOf.get(key);
    return self ? busKey(self.domain, self.bus) : this.virtualParent.get(key);
  }

  /** A bus SR-IOV created for VFs: no bridge leads to it (bus->self == NULL). */
  isVirtualBus(key: string): boolean {
    return this.virtualParent.has(key);
  }

  functionsOn(key: string): readonly PciFunction[] {
    return this.onBus.get(key) ?? [];
  }

  /** The other functions of the same device (bus and slot). */
  slotSiblings(f: PciFunction): PciFunction[] {
    return this.functionsOn(this.busOf(f)).filter((o) => o !== f && o.slot === f.slot);
  }

  /** Everything behind a bridge (not the bridge itself); empty for a non-bridge. */
  below(f: PciFunction): PciFunction[] {
    if (f.secondary === undefined) return [];
    const out: PciFunction[] = [];
    for (const c of this.functionsOn(busKey(f.domain, f.secondary))) {
      out.push(c);
      out.push(...this.below(c));
    }
    return out;
  }
}

const trees = new WeakMap<Topology, PciTree>();

export function treeOf(topology: Topology): PciTree {
  let t = trees.get(topology);
  if (!t) {
    t = new PciTree(topology);
    trees.set(topology, t);
  }
  return t;
}

/** `[8086:10d3]`, or `[????:????]` when the ids are unknown. */
export function formatIds(f: { vendor?: number; device?: number }): string {
  const x = (n: number | undefined) => (n === undefined ? '????' : n.toString(16).padStart(4, '0'));
  return `[${x(f.vendor)}:${x(f.device)}]`;
}
