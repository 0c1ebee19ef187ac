/**
 * What-if edits of a topology and the difference they make to its IOMMU groups: enable a set of
 * ACS controls on a function (as `setpci` on the ACS control register would), or move a function
 * to another bus (as re-slotting a card would). Each edit returns a new, re-validated topology.
 * The group diff compares partitions (group numbers are probe-order accidents, as in Linux).
 * Where we differ from Linux: setting ACS bits on a function without the capability pretends the
 * hardware had one (implementing the bits QEMU's root port implements: SV TB RR CR UF DT, plus
 * whatever was asked for).
 */
import { DmaError } from '../errors.js';
import { ACS_BITS, acsMask, formatAcs, isAcsFlagName, type AcsFlagName } from './acs-flags.js';
import { busKey, formatBdf, normalizeBdf, parseBusKey } from './bdf.js';
import type { IommuGroup } from './iommu-group.js';
import { withArticle, buildTopology, isPcie, specOf, treeOf, type Topology } from './topology.js';

/** The capability a function gets when ACS control bits are set on one that had none. */
export const DEFAULT_ACS_CAP = acsMask(['SV', 'TB', 'RR', 'CR', 'UF', 'DT']);

export interface AcsSetting {
  readonly bdf: string;
  /** Control bits to enable, or 'absent' to remove the capability. */
  readonly ctl: number | 'absent';
}

export interface Move {
  readonly bdf: string;
  readonly domain: number;
  readonly bus: number;
}

/** Parses `BDF.acs=RR,CR` (also `=none`, `=absent`). */
export function parseAcsSetting(spec: string): AcsSetting {
  const eq = spec.indexOf('=');
  const left = eq < 0 ? spec : spec.slice(0, eq);
  if (eq < 0 || !left.endsWith('.acs'))
    throw new DmaError('EINVAL', `--set "${spec}": expected BDF.acs=FLAGS (FLAGS: SV,TB,RR,CR,UF,EC,DT, none or absent)`);
  const bdf = normalizeBdf(left.slice(0, -'.acs'.length));
  if (!bdf) throw new DmaError('EINVAL', `--set "${spec}": "${left.slice(0, -4)}" is not a PCI address`);
  const value = spec.slice(eq + 1).trim();
  if (value === 'absent') return { bdf, ctl: 'absent' };
  if (value === 'none' || value === '') return { bdf, ctl: 0 };
  const names = value.split(',').map((s) => s.trim().toUpperCase());
  const bad = names.filter((n) => !isAcsFlagName(n));
  if (bad.length) throw new DmaError('EINVAL', `--set "${spec}": unknown ACS flag ${bad.join(', ')} (known: ${Object.keys(ACS_BITS).join(' ')})`);
  return { bdf, ctl: acsMask(names as AcsFlagName[]) };
}

/** Parses `BDF=BUS` (BUS as `BB` or `DDDD:BB`). */
export function parseMove(spec: string): Move {
  const eq = spec.indexOf('=');
  const bdf = eq < 0 ? undefined : normalizeBdf(spec.slice(0, eq));
  const to = eq < 0 ? undefined : parseBusKey(spec.slice(eq + 1));
  if (!bdf || !to) throw new DmaError('EINVAL', `--move "${spec}": expected BDF=BUS, e.g. 03:00.0=05 or 0000:03:00.0=0000:05`);
  return { bdf, domain: to.domain, bus: to.bus };
}

/** Sets the ACS control register of one function (the capability is implied). */
export function setAcs(topology: Topology, s: AcsSetting): Topology {
  const f = treeOf(topology).require(s.bdf);
  if (!isPcie(f.type)) throw new DmaError('EINVAL', `--set ${f.bdf}.acs: ${withArticle(f.type)} is conventional PCI and cannot have ACS`);
  const specs = topology.functions.map((g) => {
    if (g !== f) return specOf(g);
    const spec = specOf(g);
    if (s.ctl === 'absent') {
      delete spec.acs;
    } else {
      const cap = (g.acs?.cap ?? DEFAULT_ACS_CAP) | s.ctl;
      spec.acs = { cap, ctl: s.ctl };
    }
    return spec;
  });
  return rebuild(topology, specs);
}

/** Moves one function to another bus, keeping its device and function numbers. */
export function moveFunction(topology: Topology, m: Move): Topology {
  const f = treeOf(topology).require(m.bdf);
  const to = formatBdf({ domain: m.domain, bus: m.bus, slot: f.slot, fn: f.fn });
  if (to !== f.bdf && treeOf(topology).get(to)) throw new DmaError('EEXIST', `--move ${f.bdf}: ${to} is already taken`);
  const specs = topology.functions.map((g) => (g === f ? { ...specOf(g), bdf: to } : specOf(g)));
  return rebuild(topology, specs);
}

function rebuild(topology: Topology, specs: ReturnType<typeof specOf>[]): Topology {
  // Keep the root buses of the original; a move onto a bus no bridge leads to fails validation.
  return buildTopology(specs, { rootBuses: topology.rootBuses, notes: topology.notes });
}

export function describeAcsSetting(topology: Topology, s: AcsSetting): string {
  if (s.ctl === 'absent') return `remove the ACS capability of ${s.bdf}`;
  const f = treeOf(topology).get(s.bdf);
  const cap = (f?.acs?.cap ?? DEFAULT_ACS_CAP) | s.ctl;
  return `set ACS control of ${s.bdf} to ${formatAcs(s.ctl)} (capability ${formatAcs(cap)})`;
}

export function describeMove(topology: Topology, m: Move): string {
  const f = treeOf(topology).get(m.bdf);
  const to = f ? formatBdf({ domain: m.domain, bus: m.bus, slot: f.slot, fn: f.fn }) : busKey(m.domain, m.bus);
  return `move ${m.bdf} to ${to}`;
}

export interface GroupDiff {
  /** Groups of "before" (under their names before the edit) whose device set no longer exists. */
  readonly removed: IommuGroup[];
  /** Groups of "after" whose device set did not exist before. */
  readonly added: IommuGroup[];
  readonly unchanged: number;
}

/** Compares two partitions; `renames` maps a moved device's old BDF to its new one. */
export function diffGroups(
  before: readonly IommuGroup[],
  after: readonly IommuGroup[],
  renames: ReadonlyMap<string, string> = new Map(),
): GroupDiff {
  const key = (devices: readonly string[]) => [...devices].sort().join(' ');
  const beforeKey = (g: IommuGroup) => key(g.devices.map((d) => renames.get(d) ?? d));
  const afterKeys = new Set(after.map((g) => key(g.devices)));
  const beforeKeys = new Set(before.map(beforeKey));
  return {
    removed: before.filter((g) => !afterKeys.has(beforeKey(g))).map((g) => ({ group: g.group, devices: [...g.devices] })),
    added: after.filter((g) => !beforeKeys.has(key(g.devices))).map((g) => ({ group: g.group, devices: [...g.devices] })),
    unchanged: after.filter((g) => beforeKeys.has(key(g.devices))).length,
  };
}
