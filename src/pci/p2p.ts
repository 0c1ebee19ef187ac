/**
 * Peer-to-peer reachability: can a DMA from device A to device B's memory BAR be routed to B
 * without ever reaching the root complex (and so without the IOMMU translating or checking it)?
 * Pure topology analysis, following PCIe routing and the ACS controls the hardware really has:
 *   - inside a multifunction device, a function whose P2P Request Redirect (RR) is not in effect
 *     may send to its sibling functions (and what lies behind them) internally;
 *   - on a conventional PCI bus segment (behind a PCI or PCIe-to-PCI bridge) every function sees
 *     every transaction: all devices on the segment and behind its bridges can claim it;
 *   - a request entering a switch downstream port whose RR is not in effect is routed by address
 *     to any peer port of the switch (and the subtree behind it); with RR it is redirected to the
 *     upstream port and on toward the root complex;
 *   - a request entering a root port that is one function of a multifunction root-port device
 *     without RR may be routed to the sibling ports' subtrees; otherwise reaching a root port or
 *     the root bus means reaching the root complex, where the IOMMU sits.
 * An SR-IOV virtual function on a virtual bus sends through its physical function's link.
 * "In effect" is pci_acs_enabled(dev, RR) with the device quirks (they describe hardware) but
 * without pcie_acs_override (which only pretends). auditIsolation() lists the pairs of devices in
 * different IOMMU groups that can reach each other this way, naming the port, bus or device.
 * Where we differ from Linux: Linux has no such audit; requesters and targets are DMA-capable
 * functions (not bridges, ports or host bridges), and ACS Upstream Forwarding and Egress Control
 * are not modelled (only RR decides).
 */
import { pciAcsEnabled } from './acs.js';
import { PCI_ACS_RR } from './acs-flags.js';
import { busKey, slotKey } from './bdf.js';
import { groupIndex, type IommuGroup } from './iommu-group.js';
import { PORT_TYPES, treeOf, type PciFunction, type PciTree, type Topology } from './topology.js';

export type P2pVia =
  /** Functions of one device talking inside it; `requester` lacks RR. */
  | { readonly kind: 'multifunction'; readonly device: string; readonly requester: string }
  /** A shared conventional PCI bus segment. */
  | { readonly kind: 'pci-bus'; readonly bus: string }
  /** The ingress switch downstream port without RR. */
  | { readonly kind: 'switch-port'; readonly port: string }
  /** The ingress root port, a function of a multifunction root-port device, without RR. */
  | { readonly kind: 'root-port'; readonly port: string };

export interface P2pRoute {
  readonly from: string;
  readonly to: string;
  readonly via: P2pVia;
  readonly description: string;
}

export interface IsolationFinding {
  /** The pair, a before b in BDF order. */
  readonly a: string;
  readonly b: string;
  readonly groupA: number;
  readonly groupB: number;
  /** a -> b and/or b -> a. */
  readonly routes: P2pRoute[];
}

const DMA_TYPES = new Set(['endpoint', 'legacy-endpoint', 'rc-endpoint', 'rc-event-collector', 'pci-device']);

/** A function that issues DMA. */
export const isRequester = (f: PciFunction): boolean => DMA_TYPES.has(f.type);

/** A function with (possibly) a memory BAR another device could target. */
export const isTarget = (f: PciFunction): boolean =>
  DMA_TYPES.has(f.type) && (f.bars === undefined || f.bars.some((b) => b.kind === 'memory' && b.size > 0));

export function describeVia(via: P2pVia): string {
  switch (via.kind) {
    case 'multifunction':
      return `inside multifunction device ${via.device} (${via.requester} has no ACS P2P Request Redirect)`;
    case 'pci-bus':
      return `on the shared conventional PCI bus ${via.bus}`;
    case 'switch-port':
      return `through switch downstream port ${via.port} without ACS P2P Request Redirect`;
    case 'root-port':
      return `across multifunction root port ${via.port} without ACS P2P Request Redirect`;
  }
}

function redirects(tree: PciTree, f: PciFunction): boolean {
  return pciAcsEnabled(tree, f, PCI_ACS_RR);
}

/** Every target `from` reaches peer-to-peer, with how (first way found, nearest first). */
export function p2pReachable(topology: Topology, from: string): Map<string, P2pVia> {
  const tree = treeOf(topology);
  const a = tree.require(from);
  const out = new Map<string, P2pVia>();
  if (!isRequester(a)) return out;
  const add = (fs: PciFunction[], via: P2pVia) => {
    for (const f of fs) if (f !== a && isTarget(f) && !out.has(f.bdf)) out.set(f.bdf, via);
  };
  const withBelow = (f: PciFunction) => [f, ...tree.below(f)];

  let cur = a;
  for (;;) {
    if (!PORT_TYPES.has(cur.type) && cur.multifunction && !redirects(tree, cur))
      add(tree.slotSiblings(cur).flatMap(withBelow), {
        kind: 'multifunction',
        device: slotKey(cur.domain, cur.bus, cur.slot),
        requester: cur.bdf,
      });
    let bus = tree.busOf(cur);
    while (tree.isVirtualBus(bus)) bus = tree.parentBus(bus)!; // VFs use their PF's link
    if (tree.isRootBus(bus)) break; // the root complex: the IOMMU sees it
    const up = tree.self(bus);
    if (!up) break;
    if (up.type === 'pci-bridge' || up.type === 'pcie-to-pci-bridge') {
      add(tree.functionsOn(bus).filter((f) => f !== cur).flatMap(withBelow), { kind: 'pci-bus', bus: busKey(cur.domain, cur.bus) });
    } else if (up.type === 'downstream-port') {
      if (!redirects(tree, up))
        add(tree.functionsOn(tree.busOf(up)).filter((f) => f !== up).flatMap(withBelow), { kind: 'switch-port', port: up.bdf });
    } else if (up.type === 'root-port') {
      if (up.multifunction && !redirects(tree, up))
        add(tree.slotSiblings(up).flatMap(withBelow), { kind: 'root-port', port: up.bdf });
      break; // into the root complex
    }
    cur = up; // upstream ports and PCI-to-PCIe bridges just forward upward
  }
  return out;
}

/** How `from` reaches `to` peer-to-peer, or undefined when the IOMMU sees every such request. */
export function p2pRoute(topology: Topology, from: string, to: string): P2pRoute | undefined {
  const tree = treeOf(topology);
  const a = tree.require(from);
  const b = tree.require(to);
  const via = p2pReachable(topology, a.bdf).get(b.bdf);
  return via ? { from: a.bdf, to: b.bdf, via, description: describeVia(via) } : undefined;
}

/**
 * Pairs of devices in different IOMMU groups that can still reach each other's BARs peer-to-peer,
 * each with the route(s) and the port, bus or device that lets them.
 */
export function auditIsolation(topology: Topology, groups: readonly IommuGroup[]): IsolationFinding[] {
  const groupOf = groupIndex(groups);
  const pairs = new Map<string, { a: PciFunction; b: PciFunction; routes: P2pRoute[] }>();
  const order = new Map(topology.functions.map((f, i) => [f.bdf, i]));
  for (const f of topology.functions) {
    const gf = groupOf.get(f.bdf);
    if (gf === undefined || !isRequester(f)) continue;
    for (const [to, via] of p2pReachable(topology, f.bdf)) {
      const gt = groupOf.get(to);
      if (gt === undefined || gt === gf) continue;
      const other = treeOf(topology).get(to)!;
      const [a, b] = order.get(f.bdf)! < order.get(to)! ? [f, other] : [other, f];
      const key = `${a.bdf} ${b.bdf}`;
      const entry = pairs.get(key) ?? pairs.set(key, { a, b, routes: [] }).get(key)!;
      entry.routes.push({ from: f.bdf, to, via, description: describeVia(via) });
    }
  }
  return [...pairs.values()]
    .sort((x, y) => order.get(x.a.bdf)! - order.get(y.a.bdf)! || order.get(x.b.bdf)! - order.get(y.b.bdf)!)
    .map(({ a, b, routes }) => ({ a: a.bdf, b: b.bdf, groupA: groupOf.get(a.bdf)!, groupB: groupOf.get(b.bdf)!, routes }));
}
