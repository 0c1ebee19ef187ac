/**
 * A device's peer-to-peer routing table: the bus-address windows (other functions' memory BARs)
 * that a request from this device reaches directly, without going up to the root complex and so
 * without the IOMMU translating or checking it. Pure: computed from the topology when the device
 * is added, then handed to the device's DMA engine (device/dma-engine.ts), which checks it once
 * per transfer before translation.
 *
 * Which peers are reachable, and how, is p2p.ts's p2pReachable(): inside a multifunction device
 * without ACS P2P Request Redirect, on a shared conventional PCI bus, through a switch downstream
 * port or a multifunction root port without RR. Everything else (and every address that is not
 * in a reachable peer's BAR) goes upstream to the IOMMU: translated, or faulted. Like p2p.ts,
 * RR "in effect" counts device quirks but not pcie_acs_override, which only pretends: with the
 * override the groups split but the switch still routes peer-to-peer.
 * Where we differ from PCIe: Completion Redirect, Upstream Forwarding, Egress Control and
 * Direct Translated P2P are not modelled (only RR decides, as in p2p.ts); only memory BARs with
 * an assigned base are windows; I/O BARs never are.
 */
import { DmaError, hex } from '../errors.js';
import { describeVia, p2pReachable, type P2pVia } from './p2p.js';
import { treeOf, type Topology } from './topology.js';

export interface P2pWindow {
  /** Bus address range [base, base + size). */
  readonly base: number;
  readonly size: number;
  /** The peer function (`DDDD:BB:DD.F`) and its BAR number. */
  readonly target: string;
  readonly bar: number;
  /** What lets the request through (the port, bus or device). */
  readonly via: P2pVia;
  readonly description: string;
}

/**
 * The windows device `from` reaches peer-to-peer, sorted by base. Windows of two peers that
 * overlap (a topology with clashing BAR assignments) are an error: the switch could not route
 * them either.
 */
export function p2pRoutingTable(topology: Topology, from: string): P2pWindow[] {
  const tree = treeOf(topology);
  const out: P2pWindow[] = [];
  for (const [to, via] of p2pReachable(topology, tree.require(from).bdf)) {
    const f = tree.get(to)!;
    for (const b of f.bars ?? []) {
      if (b.kind !== 'memory' || b.base === undefined || b.size <= 0) continue;
      out.push({ base: b.base, size: b.size, target: f.bdf, bar: b.index, via, description: describeVia(via) });
    }
  }
  out.sort((a, b) => a.base - b.base);
  for (let i = 1; i < out.length; i++) {
    const p = out[i - 1];
    const w = out[i];
    if (w.base < p.base + p.size) {
      throw new DmaError(
        'EINVAL',
        `topology: BAR ${w.bar} of ${w.target} [${hex(w.base)}, ${hex(w.base + w.size)}) overlaps BAR ${p.bar} of ${p.target} [${hex(p.base)}, ${hex(p.base + p.size)}); peer-to-peer routing by address needs distinct windows`,
      );
    }
  }
  return out;
}
