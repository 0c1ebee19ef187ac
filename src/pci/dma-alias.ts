/**
 * Requester IDs and DMA aliases as Linux's pci_for_each_dma_alias() (drivers/pci/search.c)
 * enumerates them. It starts from pci_real_dma_dev(): a function in a VMD domain (domain above
 * ffff, which only Intel's Volume Management Device creates) issues DMA with the requester ID of
 * the VMD endpoint that owns the domain, so the walk starts there. Then: the function's own
 * requester ID, the devfns of its dma_alias_mask (explicit aliases and the DMA-alias quirks of
 * drivers/pci/quirks.c), and, walking up to the root bus (skipping SR-IOV virtual buses, which
 * have no bridge), every bridge that takes ownership of the transaction:
 *   - root, upstream and downstream ports forward the requester ID unchanged;
 *   - a PCIe-to-PCI/PCI-X bridge aliases everything behind it as (secondary bus, devfn 00.0);
 *   - a PCI/PCI-X-to-PCIe bridge and a conventional PCI bridge use their own ID (unless a quirk
 *     marks a conventional bridge as a PCIe-to-PCI bridge that hides its PCIe capability);
 *   - a bridge flagged as translation root (Broadcom Vulcan) ends the walk.
 * The last function the walk calls back with is where pci_device_group() starts looking upstream.
 * Where we differ from Linux: which VMD endpoint owns which VMD domain is not in lspci's output; we
 * pair VMD endpoints (driver "vmd", or a known VMD device id) in BDF order with VMD domains in
 * ascending order, as the vmd driver numbers each new domain one above the highest in use. The
 * Adaptec fixed-alias quirk (which needs subsystem ids) is left out; explicit aliases cover it.
 */
import { DmaError } from '../errors.js';
import { devfnOf, formatBdf, parseBdf, pciDevId } from './bdf.js';
import { isPcie, treeOf, type PciFunction, type PciTree, type Topology } from './topology.js';

/** The 16-bit requester ID (bus << 8 | devfn) of a BDF. */
export function requesterId(bdf: string): number {
  const b = parseBdf(bdf);
  if (!b) throw new DmaError('EINVAL', `requester ID: "${bdf}" is not a PCI address (expected DDDD:BB:DD.F or BB:DD.F)`);
  return pciDevId(b.bus, devfnOf(b.slot, b.fn));
}

type AliasQuirkKind = 'func0' | 'func1' | 'fixed' | 'pcie-bridge-alias' | 'xlate-root' | 'bridge-no-alias';

export interface DmaAliasQuirk {
  readonly vendor: number;
  readonly device: number;
  readonly kind: AliasQuirkKind;
  /** For 'fixed': alias devfns. */
  readonly devfns?: readonly number[];
}

const allSlots = (fns: number): number[] => {
  const out: number[] = [];
  for (let slot = 0; slot < 0x20; slot++) for (let fn = 0; fn < fns; fn++) out.push(devfnOf(slot, fn));
  return out;
};

const aq = (vendor: number, kind: AliasQuirkKind, devices: number[], devfns?: number[]): DmaAliasQuirk[] =>
  devices.map((device) => ({ vendor, device, kind, ...(devfns ? { devfns } : {}) }));

/** The DMA-alias fixups of quirks.c, as data. */
export const DMA_ALIAS_QUIRKS: readonly DmaAliasQuirk[] = [
  // Devices that DMA with function 0's requester ID (Ricoh, Glenfly).
  ...aq(0x1180, 'func0', [0xe832, 0xe476]),
  ...aq(0x6766, 'func0', [0x3d40, 0x3d41]),
  // Devices that DMA with function 1's requester ID (Marvell SATA, HighPoint, JMicron, Plextor).
  ...aq(0x1b4b, 'func1', [
    0x9120, 0x9123, 0x9125, 0x9128, 0x9130, 0x9170, 0x9172, 0x917a, 0x9182, 0x9183, 0x91a0, 0x9215, 0x9220, 0x9230,
    0x9235,
  ]),
  ...aq(0x1103, 'func1', [0x0642, 0x0645]),
  ...aq(0x197b, 'func1', [0x2393]),
  ...aq(0x1c28, 'func1', [0x0122]),
  // Intel MIC x200 NTB: alien requester IDs from its RIT-LUT.
  ...aq(0x8086, 'fixed', [0x2260, 0x2264], [devfnOf(0x10, 0), devfnOf(0x11, 0), devfnOf(0x12, 3)]),
  // Intel Visual Compute Accelerator: every slot, functions 0-4.
  ...aq(0x8086, 'fixed', [0x2954, 0x2955, 0x2956, 0x2958, 0x2959, 0x295a], allSlots(5)),
  // PLX (Broadcom) PEX NTB endpoints: proxy requester IDs may be any of the 256 devfns.
  ...aq(0x10b5, 'fixed', [0x87b0, 0x87b1], allSlots(8)),
  // PCIe-to-PCI bridges that hide their PCIe capability (ASMedia, Tundra, ITE, Intel 82801).
  ...aq(0x1b21, 'pcie-bridge-alias', [0x1080]),
  ...aq(0x10e3, 'pcie-bridge-alias', [0x8113]),
  ...aq(0x1283, 'pcie-bridge-alias', [0x8892, 0x8893]),
  ...aq(0x8086, 'pcie-bridge-alias', [0x244e]),
  // Broadcom Vulcan / Cavium ThunderX2: the IOMMU sits at this bridge, not at the root bus.
  ...aq(0x14e4, 'xlate-root', [0x9000, 0x9084]),
  // ASPEED AST1150 forwards the downstream requester ID (newer kernels than 6.12).
  ...aq(0x1a03, 'bridge-no-alias', [0x1150]),
];

/** Intel VMD endpoints (drivers/pci/controller/vmd.c); a function bound to "vmd" counts too. */
export const VMD_DEVICE_IDS: ReadonlySet<number> = new Set([
  0x201d, 0x28c0, 0x467f, 0x4c3d, 0x7d0b, 0x9a0b, 0xa77f, 0xad0b, 0xb60b,
]);

/** The first domain number the vmd driver hands out (one above the 16-bit ACPI segments). */
export const VMD_FIRST_DOMAIN = 0x10000;

const isVmdEndpoint = (f: PciFunction): boolean =>
  f.driver === 'vmd' || (f.driver === undefined && f.vendor === 0x8086 && f.device !== undefined && VMD_DEVICE_IDS.has(f.device));

const vmdOwners = new WeakMap<Topology, Map<number, PciFunction>>();

/** VMD domain -> the VMD endpoint that owns it (see the module comment). */
export function vmdDomainOwners(topology: Topology): Map<number, PciFunction> {
  let owners = vmdOwners.get(topology);
  if (owners) return owners;
  owners = new Map();
  const vmds = topology.functions.filter((f) => f.domain < VMD_FIRST_DOMAIN && isVmdEndpoint(f));
  const domains = [...new Set(topology.functions.filter((f) => f.domain >= VMD_FIRST_DOMAIN).map((f) => f.domain))].sort((a, b) => a - b);
  // Domains are handed out in probe order without gaps, so domain 10000+i belongs to the i-th VMD;
  // when some domain has no listed device the numbers still say which endpoint owns which.
  for (const d of domains) {
    const vmd = vmds[d - VMD_FIRST_DOMAIN] ?? (vmds.length === 1 ? vmds[0] : undefined);
    if (vmd) owners.set(d, vmd);
  }
  vmdOwners.set(topology, owners);
  return owners;
}

/** pci_real_dma_dev(): the VMD endpoint for a function in a VMD domain, else the function. */
export function realDmaDev(tree: PciTree, f: PciFunction): PciFunction {
  if (f.domain < VMD_FIRST_DOMAIN) return f;
  return vmdDomainOwners(tree.topology).get(f.domain) ?? f;
}

function quirksOf(f: PciFunction): DmaAliasQuirk[] {
  return DMA_ALIAS_QUIRKS.filter((q) => q.vendor === f.vendor && q.device === f.device);
}

/** The function's dma_alias_mask: explicit aliases plus quirk aliases, as devfns on its bus. */
export function aliasDevfns(f: PciFunction): number[] {
  const out = new Set<number>(f.dmaAliases);
  for (const q of quirksOf(f)) {
    if (q.kind === 'func0' && f.fn !== 0) out.add(devfnOf(f.slot, 0));
    if (q.kind === 'func1' && f.fn !== 1) out.add(devfnOf(f.slot, 1));
    if (q.kind === 'fixed') for (const d of q.devfns ?? []) out.add(d);
  }
  out.delete(f.devfn);
  return [...out].sort((a, b) => a - b);
}

/** quirk_use_pcie_bridge_dma_alias(): PCI_DEV_FLAG_PCIE_BRIDGE_ALIAS for a listed bridge. */
function hasPcieBridgeAlias(tree: PciTree, bridge: PciFunction): boolean {
  if (!quirksOf(bridge).some((q) => q.kind === 'pcie-bridge-alias')) return false;
  const bus = tree.busOf(bridge);
  if (tree.isRootBus(bus) || bridge.type !== 'pci-bridge') return false;
  const up = tree.self(bus);
  return up !== undefined && isPcie(up.type) && up.type !== 'pcie-to-pci-bridge';
}

/** pci_devs_are_dma_aliases(): one lists the other's devfn in its alias mask (same bus). */
export function devsAreDmaAliases(a: PciFunction, b: PciFunction): boolean {
  if (a.domain !== b.domain || a.bus !== b.bus) return false;
  return aliasDevfns(a).includes(b.devfn) || aliasDevfns(b).includes(a.devfn);
}

export type DmaAliasReason =
  | 'own requester ID'
  | 'VMD endpoint owns the domain'
  | 'DMA alias quirk'
  | 'PCIe-to-PCI bridge takes ownership'
  | 'PCI-to-PCIe bridge takes ownership'
  | 'conventional PCI bridge takes ownership';

/**
 * pci_for_each_dma_alias(): calls `fn(dev, requesterId, reason)` for each alias in Linux's order;
 * a defined return value stops the walk and is returned.
 */
export function forEachDmaAlias<T>(
  tree: PciTree,
  start: PciFunction,
  fn: (dev: PciFunction, requesterId: number, reason: DmaAliasReason) => T | undefined,
): T | undefined {
  const pdev = realDmaDev(tree, start);
  let ret = fn(pdev, pciDevId(pdev.bus, pdev.devfn), pdev === start ? 'own requester ID' : 'VMD endpoint owns the domain');
  if (ret !== undefined) return ret;
  for (const devfn of aliasDevfns(pdev)) {
    ret = fn(pdev, pciDevId(pdev.bus, devfn), 'DMA alias quirk');
    if (ret !== undefined) return ret;
  }
  for (let bus: string | undefined = tree.busOf(pdev); bus !== undefined && !tree.isRootBus(bus); bus = tree.parentBus(bus)) {
    const tmp = tree.self(bus);
    if (!tmp) continue; // a virtual bus (SR-IOV): no bridge to take ownership
    const flags = quirksOf(tmp);
    if (flags.some((q) => q.kind === 'xlate-root')) return ret;
    if (isPcie(tmp.type)) {
      if (tmp.type === 'pcie-to-pci-bridge' && !flags.some((q) => q.kind === 'bridge-no-alias')) {
        ret = fn(tmp, pciDevId(tmp.secondary!, 0), 'PCIe-to-PCI bridge takes ownership');
        if (ret !== undefined) return ret;
      } else if (tmp.type === 'pci-to-pcie-bridge') {
        ret = fn(tmp, pciDevId(tmp.bus, tmp.devfn), 'PCI-to-PCIe bridge takes ownership');
        if (ret !== undefined) return ret;
      }
      // root, upstream and downstream ports pass the requester ID through
    } else {
      const rid = hasPcieBridgeAlias(tree, tmp) ? pciDevId(tmp.secondary!, 0) : pciDevId(tmp.bus, tmp.devfn);
      ret = fn(tmp, rid, hasPcieBridgeAlias(tree, tmp) ? 'PCIe-to-PCI bridge takes ownership' : 'conventional PCI bridge takes ownership');
      if (ret !== undefined) return ret;
    }
  }
  return ret;
}

export interface DmaAlias {
  /** The 16-bit requester ID. */
  readonly requesterId: number;
  /** The requester ID written as a BDF, in the domain of `device` (the VMD's for a VMD child). */
  readonly alias: string;
  /** The function Linux's walk was at when it produced this alias (the device or a bridge). */
  readonly device: string;
  readonly reason: DmaAliasReason;
}

/** Every requester ID a function's DMA may carry when it reaches the IOMMU, in Linux's order. */
export function dmaAliases(topology: Topology, bdf: string): DmaAlias[] {
  const tree = treeOf(topology);
  const f = tree.require(bdf);
  const out: DmaAlias[] = [];
  forEachDmaAlias(tree, f, (dev, rid, reason) => {
    out.push({
      requesterId: rid,
      alias: formatBdf({ domain: dev.domain, bus: rid >> 8, slot: (rid >> 3) & 0x1f, fn: rid & 7 }),
      device: dev.bdf,
      reason,
    });
    return undefined;
  });
  return out;
}
