/**
 * Chrome Trace Event JSON from a trace snapshot (trace-ring.ts), as Perfetto and chrome://tracing
 * open it: { traceEvents, displayTimeUnit, metadata }.
 *
 *   pid 1 "dmaemu drivers": a thread track per driver thread (the machine's thread, piscina
 *         threads): X slices for map/unmap/sync/coherent calls, `i` instants for bounces, and
 *         the process's `C` counters "swiotlb slots in use" and "mapped pages".
 *   pid 2 "dmaemu devices": a thread track per device, named by BDF and model: an X slice per
 *         descriptor (cat "transfer"; named as its model reads it: copy/fill, nvme read/write,
 *         nic tx / rx post), `i` instants for IOTLB misses and faults.
 *   Flows (`s` → `f`, cat "flow"): from a map slice to each transfer slice that used an address
 *         of it. The `s` sits inside the map slice (binds to it), the `f` inside the transfer
 *         slice with bp "e" (binds to the enclosing slice). Which map a transfer used is found
 *         here, not on the data path: the latest map (single or sg segment) of the same
 *         requester ID that contains the address and began before the transfer did. The flow
 *         id is a hex string: the DMA page number (addr >> 12) in the high 36 bits, a sequence
 *         number of the map/transfer pair in the low 28 — so ids of flows never collide.
 * Events are sorted by ts (metadata first; at equal ts a slice before the flow events bound to
 * it). Rings that overflowed keep their first events (trace-ring.ts); the export stays valid
 * JSON and says how many events were dropped, per thread and in all, in `metadata`.
 */
import { TRACE_KIND, type TraceEvent, type TraceSnapshot, type TraceRingSnapshot } from './trace-ring.js';
import { unpackMapInfo } from './dma-trace.js';
import { FAULT_REASONS } from '../iommu/fault-ring.js';
import { formatBdf } from '../pci/bdf.js';
import { MODEL_NAMES } from '../device/device-model.js';
import { NVME_CMD_FLUSH, NVME_CMD_READ, NVME_CMD_WRITE } from '../device/nvme-command.js';
import { NIC_OP_RX, NIC_OP_RX_RESET, NIC_OP_TX } from '../device/nic-command.js';

export interface ChromeTraceEvent {
  name: string;
  ph: 'X' | 'B' | 'E' | 'i' | 'C' | 's' | 'f' | 'M';
  ts: number;
  pid: number;
  tid: number;
  cat?: string;
  dur?: number;
  s?: 'g' | 'p' | 't';
  id?: string;
  bp?: 'e';
  args?: Record<string, unknown>;
}

export interface ChromeTrace {
  traceEvents: ChromeTraceEvent[];
  displayTimeUnit: 'ns' | 'ms';
  metadata: {
    'dmaemu-trace': 1;
    /** Wall-clock time (ISO) of ts 0. */
    startTime: string;
    eventsPerThread: number;
    /** Events refused because a thread's ring was full, in all and by thread name. */
    droppedEvents: number;
    droppedByThread: Record<string, number>;
    /** Threads that found no free ring (they recorded nothing). */
    threadsWithoutRing: number;
    flows: number;
  };
}

export const PID_DRIVERS = 1;
export const PID_DEVICES = 2;

const STATUS_NAMES = ['ok', 'fault', 'invalid', 'aborted'];
const SLICE_NAMES: Record<number, string> = {
  [TRACE_KIND.mapSingle]: 'map_single',
  [TRACE_KIND.unmapSingle]: 'unmap_single',
  [TRACE_KIND.mapSg]: 'map_sg',
  [TRACE_KIND.unmapSg]: 'unmap_sg',
  [TRACE_KIND.syncForCpu]: 'sync_for_cpu',
  [TRACE_KIND.syncForDevice]: 'sync_for_device',
  [TRACE_KIND.allocCoherent]: 'alloc_coherent',
  [TRACE_KIND.freeCoherent]: 'free_coherent',
};
/** Order at equal ts: metadata, slices, then instants, counters and flows. */
const PH_RANK: Record<ChromeTraceEvent['ph'], number> = { M: 0, B: 1, X: 1, E: 2, i: 3, C: 3, s: 4, f: 4 };

const hex = (n: number): string => '0x' + n.toString(16);

interface MapRange {
  ts: number;
  /** Middle of the map slice: where its flows start. */
  mid: number;
  tid: number;
  start: number;
  end: number;
}

export function toChromeTrace(snap: TraceSnapshot): ChromeTrace {
  const out: ChromeTraceEvent[] = [];
  const droppedByThread: Record<string, number> = {};
  let dropped = 0;
  out.push({ name: 'process_name', ph: 'M', ts: 0, pid: PID_DRIVERS, tid: 0, args: { name: 'dmaemu drivers' } });
  out.push({ name: 'process_sort_index', ph: 'M', ts: 0, pid: PID_DRIVERS, tid: 0, args: { sort_index: 1 } });
  out.push({ name: 'process_name', ph: 'M', ts: 0, pid: PID_DEVICES, tid: 0, args: { name: 'dmaemu devices' } });
  out.push({ name: 'process_sort_index', ph: 'M', ts: 0, pid: PID_DEVICES, tid: 0, args: { sort_index: 2 } });

  // Maps by requester ID, in time order, for the flows.
  const maps = new Map<number, MapRange[]>();
  for (const ring of snap.rings) {
    const pid = ring.role === 'device' ? PID_DEVICES : PID_DRIVERS;
    const tid = ring.index + 1;
    out.push({ name: 'thread_name', ph: 'M', ts: 0, pid, tid, args: { name: ring.name } });
    out.push({ name: 'thread_sort_index', ph: 'M', ts: 0, pid, tid, args: { sort_index: tid } });
    if (ring.dropped > 0) {
      droppedByThread[ring.name] = (droppedByThread[ring.name] ?? 0) + ring.dropped;
      dropped += ring.dropped;
    }
    if (ring.role === 'driver') driverEvents(ring, tid, out, maps);
    else deviceEvents(ring, tid, out);
  }
  for (const list of maps.values()) list.sort((x, y) => x.ts - y.ts);
  const flows = flowEvents(snap.rings, maps, out);

  // Stable sort: by ts, then metadata, slices, the rest (so a flow follows the slice it binds to).
  const order = out.map((e, i) => ({ e, i }));
  order.sort((x, y) => x.e.ts - y.e.ts || PH_RANK[x.e.ph] - PH_RANK[y.e.ph] || x.i - y.i);
  return {
    traceEvents: order.map((x) => x.e),
    displayTimeUnit: 'ns',
    metadata: {
      'dmaemu-trace': 1,
      startTime: new Date(snap.baseMs).toISOString(),
      eventsPerThread: snap.capacity,
      droppedEvents: dropped,
      droppedByThread,
      threadsWithoutRing: snap.unringed,
      flows,
    },
  };
}

function driverEvents(ring: TraceRingSnapshot, tid: number, out: ChromeTraceEvent[], maps: Map<number, MapRange[]>): void {
  const pid = PID_DRIVERS;
  const ev = ring.events;
  for (let k = 0; k < ev.length; k++) {
    const e = ev[k];
    switch (e.kind) {
      case TRACE_KIND.mapSingle:
      case TRACE_KIND.unmapSingle:
      case TRACE_KIND.allocCoherent:
      case TRACE_KIND.freeCoherent: {
        const i = unpackMapInfo(e.info);
        const args: Record<string, unknown> = { device: requester(i.requesterId), addr: hex(e.a), len: e.c, dir: i.dir };
        if (e.kind === TRACE_KIND.mapSingle || e.kind === TRACE_KIND.allocCoherent) args.pa = hex(e.b);
        if (e.kind === TRACE_KIND.mapSingle || e.kind === TRACE_KIND.unmapSingle) args.bounced = i.bounced;
        out.push(slice(SLICE_NAMES[e.kind], 'dma-api', e, pid, tid, args));
        if (e.kind === TRACE_KIND.mapSingle) addMap(maps, i.requesterId, e, tid, e.a, e.c);
        break;
      }
      case TRACE_KIND.mapSg:
      case TRACE_KIND.unmapSg: {
        const i = unpackMapInfo(e.info);
        const segments: string[] = [];
        // The map's segments follow it in the ring (as many as the ring had room for).
        for (let s = k + 1; s < ev.length && ev[s].kind === TRACE_KIND.sgSegment; s++) {
          segments.push(`${hex(ev[s].a)}+${ev[s].c}`);
          if (e.kind === TRACE_KIND.mapSg) addMap(maps, i.requesterId, e, tid, ev[s].a, ev[s].c);
        }
        const args: Record<string, unknown> = { device: requester(i.requesterId), addr: hex(e.a), nents: e.b, len: e.c, dir: i.dir, bounced: i.bounced };
        if (segments.length > 0) args.segments = segments;
        out.push(slice(SLICE_NAMES[e.kind], 'dma-api', e, pid, tid, args));
        break;
      }
      case TRACE_KIND.syncForCpu:
      case TRACE_KIND.syncForDevice:
        out.push(slice(SLICE_NAMES[e.kind], 'dma-api', e, pid, tid, { device: requester(e.info), addr: hex(e.a), len: e.c }));
        break;
      case TRACE_KIND.bounce: {
        const i = unpackMapInfo(e.info);
        out.push({ name: 'bounce', cat: 'swiotlb', ph: 'i', s: 't', ts: e.ts, pid, tid, args: { device: requester(i.requesterId), slot: hex(e.a), pa: hex(e.b), len: e.c, dir: i.dir } });
        break;
      }
      case TRACE_KIND.counters:
        out.push({ name: 'swiotlb slots in use', ph: 'C', ts: e.ts, pid, tid, args: { slots: e.dur } });
        out.push({ name: 'mapped pages', ph: 'C', ts: e.ts, pid, tid, args: { pages: e.b } });
        break;
      default:
        break; // sgSegment: part of the map_sg before it
    }
  }
}

/** A device's descriptor as its model reads it (the transfer's info word names the model). */
function transferOf(e: TraceEvent): { name: string; args: Record<string, unknown>; used: number[] } {
  const status = STATUS_NAMES[e.info & 0xff] ?? String(e.info & 0xff);
  const op = (e.info >>> 8) & 0xffff;
  switch (MODEL_NAMES[(e.info >>> 24) & 0x7f]) {
    case 'nvme': // src PRP1 (data), dst PRP2 (data or a PRP list), len NLB (0-based): nvme-command.ts
      return { name: `nvme ${NVME_OPS[op] ?? `opcode ${hex(op)}`}`, args: { prp1: hex(e.a), prp2: hex(e.b), nlb: e.c, status }, used: [e.a] };
    case 'nic': // src the SG table, len the frame or RX capacity: nic-command.ts
      return { name: `nic ${NIC_OPS[op] ?? `opcode ${op}`}`, args: { sgTable: hex(e.a), len: e.c, status }, used: [] };
    case 'hostile': // src the command block: hostile-access.ts
      return { name: 'hostile burst', args: { commandBlock: hex(e.a), status }, used: [] };
    default: {
      const fill = (op & 1) !== 0; // the copy engine's FILL flag (rings.ts)
      return fill
        ? { name: 'fill', args: { dst: hex(e.b), len: e.c, value: e.a & 0xff, status }, used: e.c > 0 ? [e.b] : [] }
        : { name: 'copy', args: { src: hex(e.a), dst: hex(e.b), len: e.c, status }, used: e.c > 0 ? [e.a, e.b] : [] };
    }
  }
}
const NVME_OPS: Record<number, string> = { [NVME_CMD_FLUSH]: 'flush', [NVME_CMD_WRITE]: 'write', [NVME_CMD_READ]: 'read' };
const NIC_OPS: Record<number, string> = { [NIC_OP_TX]: 'tx', [NIC_OP_RX]: 'rx post', [NIC_OP_RX_RESET]: 'rx reset' };

function deviceEvents(ring: TraceRingSnapshot, tid: number, out: ChromeTraceEvent[]): void {
  const pid = PID_DEVICES;
  for (const e of ring.events) {
    if (e.kind === TRACE_KIND.transfer) {
      const x = transferOf(e);
      out.push(slice(x.name, 'transfer', e, pid, tid, x.args));
    } else if (e.kind === TRACE_KIND.iotlbMiss) {
      out.push({ name: 'iotlb miss', cat: 'iommu', ph: 'i', s: 't', ts: e.ts, pid, tid, args: { page: hex(e.a), domain: e.info } });
    } else if (e.kind === TRACE_KIND.fault) {
      out.push({
        name: 'fault',
        cat: 'iommu',
        ph: 'i',
        s: 't',
        ts: e.ts,
        pid,
        tid,
        args: { addr: hex(e.a), access: (e.info & 0x100) !== 0 ? 'write' : 'read', reason: FAULT_REASONS[e.info & 0xff] ?? String(e.info & 0xff), domain: e.b },
      });
    }
  }
}

function slice(name: string, cat: string, e: TraceEvent, pid: number, tid: number, args: Record<string, unknown>): ChromeTraceEvent {
  return { name, cat, ph: 'X', ts: e.ts, dur: e.dur, pid, tid, args };
}

function addMap(maps: Map<number, MapRange[]>, requesterId: number, e: TraceEvent, tid: number, addr: number, len: number): void {
  let list = maps.get(requesterId);
  if (!list) maps.set(requesterId, (list = []));
  list.push({ ts: e.ts, mid: e.ts + e.dur / 2, tid, start: addr, end: addr + len });
}

/** The latest map of `list` (sorted by ts) that began before `ts` and contains addr. */
function mapOf(list: MapRange[] | undefined, ts: number, addr: number): MapRange | null {
  if (!list) return null;
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (list[mid].ts <= ts) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo - 1; i >= 0; i--) if (addr >= list[i].start && addr < list[i].end) return list[i];
  return null;
}

function flowEvents(rings: TraceRingSnapshot[], maps: Map<number, MapRange[]>, out: ChromeTraceEvent[]): number {
  let seq = 0;
  for (const ring of rings) {
    if (ring.role !== 'device') continue;
    const list = maps.get(ring.requesterId);
    const tid = ring.index + 1;
    for (const e of ring.events) {
      if (e.kind !== TRACE_KIND.transfer) continue;
      for (const addr of transferOf(e).used) {
        const m = mapOf(list, e.ts, addr);
        if (!m) continue;
        seq++;
        const id = ((BigInt(Math.floor(addr / 4096)) << 28n) | BigInt(seq & 0xfffffff)).toString(16);
        out.push({ name: 'dma', cat: 'flow', ph: 's', id, ts: m.mid, pid: PID_DRIVERS, tid: m.tid });
        out.push({ name: 'dma', cat: 'flow', ph: 'f', bp: 'e', id, ts: e.ts + e.dur / 2, pid: PID_DEVICES, tid, args: { addr: hex(addr) } });
      }
    }
  }
  return seq;
}

/** A requester ID as a PCI address (bus:device.function; aliases name the alias). */
function requester(id: number): string {
  return formatBdf({ domain: 0, bus: (id >>> 8) & 0xff, slot: (id >>> 3) & 0x1f, fn: id & 7 });
}
