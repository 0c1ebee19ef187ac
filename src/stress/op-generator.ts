/**
 * The stress runner's operation generator: per driver thread, an endless stream of stress ops
 * drawn from its own PRNG stream (seed, thread index). The *sequence* of ops a thread issues is a
 * pure function of (seed, thread index, mode, device count, thread count); how the threads'
 * sequences interleave in time, which IOVAs and PAs they get, and whether a racing unmap beats
 * its DMA are not (they depend on scheduling).
 *
 * Legal ops (each maps, lets the device DMA, syncs, unmaps and verifies):
 *   copy           mapSingle a patterned source and a destination, DMA copy, unmap, verify
 *   copy-sg        mapSingle a source, mapSg a destination of 2..4 buffers, one DMA per segment
 *   coherent-fill  allocCoherent, DMA fill, check through the CPU address, freeCoherent
 *   sync-reuse     a bidirectional buffer: DMA fill, syncForCpu, CPU writes, syncForDevice, DMA
 *                  copy out of it to a from-device buffer, unmap, verify both
 * Deliberately illegal ops (their faults are expected and counted, not violations):
 *   dma-unmapped            DMA to an address nothing maps (IOVA page 0, or a PA hole when off)
 *   dma-to-device-mapping   DMA write into a to-device mapping (permission fault; IOMMU only)
 *   use-after-unmap         DMA, unmap, poison the buffer, DMA to the old address again
 *                           (strict: must fault; lazy: may hit the stale IOTLB entry)
 *   unmap-in-flight         unmap while the DMA is queued or running (a racing driver bug)
 * The last two need the IOVA not to be handed to anyone else meanwhile: they run alone
 * (`exclusive`: the thread drains its window first) and only on devices the thread owns.
 */
import type { DmaDirection } from '../dma/direction.js';
import { Prng } from './prng.js';

export const STRESS_OP_KINDS = [
  'copy',
  'copy-sg',
  'coherent-fill',
  'sync-reuse',
  'dma-unmapped',
  'dma-to-device-mapping',
  'use-after-unmap',
  'unmap-in-flight',
] as const;
export type StressOpKind = (typeof STRESS_OP_KINDS)[number];

export type StressMode = 'strict' | 'lazy' | 'off';

/** Largest transfer an op moves (and largest buffer it maps). */
export const MAX_OP_BYTES = 256 * 1024;

export interface StressOp {
  /** Index in the thread's stream (0, 1, 2, ...). */
  seq: number;
  kind: StressOpKind;
  /** Global device index. */
  device: number;
  /** Bytes the op's DMA moves. */
  len: number;
  /** Sub-page offsets of the source and destination buffers. */
  srcOffset: number;
  dstOffset: number;
  /** Buffers above 4 GiB (a 32-bit device then needs the IOMMU or SWIOTLB). */
  high: boolean;
  srcDir: DmaDirection;
  dstDir: DmaDirection;
  /** copy-sg: the destination buffers' lengths (they sum to len). */
  sg: number[];
  /** Issue the optional syncForDevice/syncForCpu calls. */
  syncs: boolean;
  /** Pattern tag (and fill byte, low 8 bits). */
  tag: number;
  /** Run with nothing else of this thread in flight. */
  exclusive: boolean;
}

export interface OpStreamParams {
  seed: number;
  thread: number;
  threads: number;
  devices: number;
  mode: StressMode;
}

/**
 * The devices a thread drives: with at least as many devices as threads, thread t owns the
 * devices d with d mod T = t (nobody else maps for them); with fewer, threads share device
 * t mod K and own none (so the exclusive illegal ops are not generated for them).
 */
export function devicesOfThread(thread: number, threads: number, devices: number): { devices: number[]; owned: boolean } {
  if (devices >= threads) {
    const ds: number[] = [];
    for (let d = thread; d < devices; d += threads) ds.push(d);
    return { devices: ds, owned: true };
  }
  return { devices: [thread % devices], owned: false };
}

// Weights per 1000 ops; the illegal ones are ~6 % together.
const WEIGHTS: ReadonlyArray<[StressOpKind, number]> = [
  ['copy', 420],
  ['copy-sg', 180],
  ['coherent-fill', 130],
  ['sync-reuse', 210],
  ['dma-unmapped', 20],
  ['dma-to-device-mapping', 15],
  ['use-after-unmap', 15],
  ['unmap-in-flight', 10],
];
const TOTAL = WEIGHTS.reduce((a, [, w]) => a + w, 0);

export class OpStream {
  private readonly rng: Prng;
  private readonly devs: number[];
  private readonly owned: boolean;
  private seq = 0;

  constructor(readonly params: OpStreamParams) {
    this.rng = new Prng(params.seed, params.thread);
    const d = devicesOfThread(params.thread, params.threads, params.devices);
    this.devs = d.devices;
    this.owned = d.owned;
  }

  next(): StressOp {
    const r = this.rng;
    let kind = this.drawKind();
    const translated = this.params.mode !== 'off';
    // What this mode or ownership cannot do becomes its nearest legal-to-generate neighbour.
    if (kind === 'dma-to-device-mapping' && !translated) kind = 'dma-unmapped';
    if ((kind === 'use-after-unmap' || kind === 'unmap-in-flight') && (!translated || !this.owned)) kind = 'dma-unmapped';
    const len = r.logUniform(1, MAX_OP_BYTES);
    const op: StressOp = {
      seq: this.seq++,
      kind,
      device: r.pick(this.devs),
      len,
      srcOffset: r.chance(0.5) ? 0 : r.int(4096),
      dstOffset: r.chance(0.5) ? 0 : r.int(4096),
      high: r.chance(0.5),
      srcDir: r.chance(0.75) ? 'to-device' : 'bidirectional',
      dstDir: r.chance(0.75) ? 'from-device' : 'bidirectional',
      sg: [],
      syncs: r.chance(0.5),
      tag: r.u32(),
      exclusive: kind === 'use-after-unmap' || kind === 'unmap-in-flight',
    };
    if (kind === 'copy-sg') op.sg = splitLen(r, Math.max(len, 2), 2 + r.int(3));
    if (kind === 'copy-sg') op.len = op.sg.reduce((a, b) => a + b, 0);
    return op;
  }

  private drawKind(): StressOpKind {
    let x = this.rng.int(TOTAL);
    for (const [k, w] of WEIGHTS) {
      if (x < w) return k;
      x -= w;
    }
    return 'copy';
  }
}

/** The first `count` ops of a thread's stream. */
export function generateOps(params: OpStreamParams, count: number): StressOp[] {
  const s = new OpStream(params);
  return Array.from({ length: count }, () => s.next());
}

/** Splits len into at most `parts` positive lengths (fewer when len is smaller). */
function splitLen(r: Prng, len: number, parts: number): number[] {
  const n = Math.min(parts, len);
  const cuts = new Set<number>();
  while (cuts.size < n - 1) cuts.add(1 + r.int(len - 1));
  const sorted = [...cuts].sort((a, b) => a - b);
  const out: number[] = [];
  let prev = 0;
  for (const c of [...sorted, len]) {
    out.push(c - prev);
    prev = c;
  }
  return out;
}

/**
 * The operations (DMA API calls and DMA requests) an op is planned to issue when all goes as
 * expected; a pure function of the op, so an `--ops` budget counted with it stops every thread
 * at the same point of its sequence whatever the timing (copy-sg counts one DMA per entry, the
 * IOMMU may merge them into fewer).
 */
export function plannedOperations(op: StressOp, mode: StressMode): number {
  const syncs = op.syncs ? 1 : 0;
  switch (op.kind) {
    case 'copy':
      return 5 + 2 * syncs;
    case 'copy-sg':
      return 4 + op.sg.length + syncs;
    case 'coherent-fill':
      return 3;
    case 'sync-reuse':
      return 8 + syncs;
    case 'dma-unmapped':
      return 1;
    case 'dma-to-device-mapping':
      return 3;
    case 'use-after-unmap':
      return mode === 'lazy' ? 6 : 4;
    case 'unmap-in-flight':
      return 3;
  }
}

/** A compact, address-free description of an op (what the per-thread op logs compare). */
export function describeOp(op: StressOp): string {
  const sg = op.sg.length ? ` sg=[${op.sg.join(',')}]` : '';
  return `#${op.seq} ${op.kind} dev${op.device} len=${op.len} off=${op.srcOffset}/${op.dstOffset}${op.high ? ' high' : ''} ${op.srcDir}->${op.dstDir}${sg}${op.syncs ? ' sync' : ''}`;
}
