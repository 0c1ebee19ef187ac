/**
 * IOMMU groups exactly as Linux's pci_device_group() (drivers/iommu/iommu.c) forms them, probing
 * functions in BDF order as the IOMMU driver's bus walk does:
 *   1. walk the DMA aliases (pci_for_each_dma_alias, which starts at the VMD endpoint for a
 *      function in a VMD domain); if any alias device already has a group, join it; otherwise
 *      continue from the last alias device (the topmost aliasing bridge);
 *   2. walk up from there (skipping SR-IOV virtual buses) while the upstream path lacks ACS
 *      (pci_acs_path_enabled with REQ_ACS_FLAGS = SV RR CR UF): each non-isolating bridge passed
 *      becomes the candidate and its group, if any, is joined;
 *   3. get_pci_alias_group(): join a group of a function on the same bus that it aliases or that
 *      aliases it (explicit/quirk DMA aliases), recursively, with a devfn bitmap against loops;
 *   4. get_pci_function_alias_group(): if the candidate is multifunction and not ACS-isolated,
 *      join the group of a non-isolated function in the same slot (or of one of its aliases);
 *   5. otherwise allocate a new group.
 * A function that is itself an IOMMU is never probed and gets no group, and neither is an AMD root
 * complex (AMD host bridge at BB:00.0 whose slot holds the AMD IOMMU at BB:00.2): AMD firmware's
 * IVRS table leaves it out of the IOMMU's device scope, so amd_iommu never probes it (seen on every
 * AMD system we compared). Note that, like the
 * kernel, sibling downstream ports of a switch without ACS land in different groups even though
 * their subtrees can reach each other peer-to-peer (p2p.ts reports that).
 * Where we differ from Linux: probe order is BDF order (Linux's device-add order is depth-first
 * per bus; the partition is the same for bus numbers assigned top-down) and group numbers start
 * at 0 for this topology alone. Which devices the IOMMU covers comes from firmware tables (DMAR,
 * IVRS) that lspci does not show: we assume all but the IOMMU functions and the AMD root complex.
 */
import { pciAcsEnabled, pciAcsPathEnabled, type AcsPolicy } from './acs.js';
import { REQ_ACS_FLAGS } from './acs-flags.js';
import { toAcsOverride, type AcsOverride } from './acs-override.js';
import { devsAreDmaAliases, forEachDmaAlias } from './dma-alias.js';
import { treeOf, type PciFunction, type PciTree, type Topology } from './topology.js';

export interface IommuGroup {
  readonly group: number;
  /** `DDDD:BB:DD.F`, sorted, as /sys/kernel/iommu_groups/N/devices lists them. */
  readonly devices: string[];
}

export interface IommuGroupOptions {
  /** pcie_acs_override= forms: `downstream`, `multifunction`, `id:vvvv:dddd`, comma-combined. */
  readonly acsOverride?: string | AcsOverride;
}

const AMD = 0x1022;

/** An AMD root complex next to its IOMMU function: outside the IVRS device scope (no group). */
export function outsideIvrs(tree: PciTree, f: PciFunction): boolean {
  if (f.vendor !== AMD || f.type !== 'host-bridge' || f.slot !== 0 || f.fn !== 0) return false;
  return tree.slotSiblings(f).some((o) => o.fn === 2 && o.iommu && o.vendor === AMD);
}

class Grouper {
  readonly groupOf = new Map<string, number>();
  private next = 0;

  constructor(
    private readonly tree: PciTree,
    private readonly policy: AcsPolicy,
  ) {}

  private group(f: PciFunction): number | undefined {
    return this.groupOf.get(f.bdf);
  }

  private acsEnabled(f: PciFunction): boolean {
    return pciAcsEnabled(this.tree, f, REQ_ACS_FLAGS, this.policy);
  }

  probe(f: PciFunction): void {
    if (f.iommu || this.groupOf.has(f.bdf) || outsideIvrs(this.tree, f)) return;
    const g = this.pciDeviceGroup(f) ?? this.next++;
    this.groupOf.set(f.bdf, g);
  }

  private pciDeviceGroup(start: PciFunction): number | undefined {
    let last = start;
    const aliasGroup = forEachDmaAlias(this.tree, start, (dev) => {
      last = dev;
      return this.group(dev);
    });
    if (aliasGroup !== undefined) return aliasGroup;

    let pdev = last;
    for (let bus: string | undefined = this.tree.busOf(pdev); bus !== undefined && !this.tree.isRootBus(bus); bus = this.tree.parentBus(bus)) {
      const self = this.tree.self(bus);
      if (!self) continue; // a virtual bus (SR-IOV VFs) has no bridge
      if (pciAcsPathEnabled(this.tree, self, null, REQ_ACS_FLAGS, this.policy)) break;
      pdev = self;
      const g = this.group(pdev);
      if (g !== undefined) return g;
    }

    const devfns = new Set<number>();
    return this.aliasGroup(pdev, devfns) ?? this.functionAliasGroup(pdev, devfns);
  }

  /** get_pci_alias_group(). */
  private aliasGroup(pdev: PciFunction, devfns: Set<number>): number | undefined {
    if (devfns.has(pdev.devfn)) return undefined;
    devfns.add(pdev.devfn);
    const g = this.group(pdev);
    if (g !== undefined) return g;
    for (const tmp of this.tree.functionsOn(this.tree.busOf(pdev))) {
      if (tmp === pdev || !devsAreDmaAliases(pdev, tmp)) continue;
      const found = this.aliasGroup(tmp, devfns) ?? this.functionAliasGroup(tmp, devfns);
      if (found !== undefined) return found;
    }
    return undefined;
  }

  /** get_pci_function_alias_group(). */
  private functionAliasGroup(pdev: PciFunction, devfns: Set<number>): number | undefined {
    if (!pdev.multifunction || this.acsEnabled(pdev)) return undefined;
    for (const tmp of this.tree.functionsOn(this.tree.busOf(pdev))) {
      if (tmp === pdev || tmp.slot !== pdev.slot || this.acsEnabled(tmp)) continue;
      const g = this.aliasGroup(tmp, devfns);
      if (g !== undefined) return g;
    }
    return undefined;
  }
}

/** The group number of every grouped function (IOMMU functions and AMD root complexes have none). */
export function iommuGroupMap(topology: Topology, options: IommuGroupOptions = {}): Map<string, number> {
  const override = toAcsOverride(options.acsOverride);
  const grouper = new Grouper(treeOf(topology), override ? { override } : {});
  for (const f of topology.functions) grouper.probe(f);
  return grouper.groupOf;
}

/**
 * Linux's IOMMU groups for a topology: `[{ group, devices: ['0000:01:00.0', ...] }]`, groups
 * numbered in probe (BDF) order, devices sorted.
 */
export function computeIommuGroups(topology: Topology, options: IommuGroupOptions = {}): IommuGroup[] {
  const map = iommuGroupMap(topology, options);
  const groups = new Map<number, string[]>();
  for (const f of topology.functions) {
    const g = map.get(f.bdf);
    if (g === undefined) continue;
    (groups.get(g) ?? groups.set(g, []).get(g)!).push(f.bdf);
  }
  return [...groups.entries()].sort((a, b) => a[0] - b[0]).map(([group, devices]) => ({ group, devices }));
}

/** Which group each device is in, from a computeIommuGroups() result. */
export function groupIndex(groups: readonly IommuGroup[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const g of groups) for (const d of g.devices) m.set(d, g.group);
  return m;
}
