/**
 * The driver side of a workload on one device: its buffers, how it maps them, the data it
 * writes and checks. It runs wherever the driver runs — the main thread, or a driver thread of
 * a piscina pool (workers/driver-task.ts `scenarioDriver`) — and never touches the device: it
 * prepares an I/O (an IoRequest of DMA segments), somebody submits it through the device's
 * IoModel, and it finishes the I/O with the status (unmap or sync for the CPU, then verify).
 *
 * Each of `lanes` I/Os in flight has its own buffers. By direction:
 *   to-device      the device reads a host buffer into device memory
 *   from-device    the device writes a host buffer from device memory
 *   bidirectional  the device copies a to-device host buffer into a from-device host buffer
 * "Device memory" is a coherent allocation (dma_alloc_coherent) per lane, the far end of a
 * one-sided I/O; the CPU fills or checks it directly.
 * Data: a seeded random pattern; I/O n uses it from offset n mod 251, so a destination that
 * still holds an earlier I/O's bytes does not pass, and the destination is cleared first.
 */
import type { DmaApi, DmaCoherent } from '../dma/dma-api.js';
import type { DmaDevice } from '../dma/dma-device.js';
import type { GuestRam } from '../memory/guest-ram.js';
import type { SgEntry } from '../dma/scatterlist.js';
import type { IoRequest, IoStatus } from './io-model.js';
import { allocHostBuffers, type HostBuffer, type HostBufferSet } from './host-buffer.js';
import { createBufferMapper, prefix, type BufferMapper, type MapperStats } from './buffer-mapper.js';
import { sizeSampler, type SizeSampler } from './size-sampler.js';
import { seededRandom, type Random } from './random.js';
import type { Workload } from './scenario-schema.js';

const PATTERN_SHIFTS = 251;

/** What a workload's driver side counted (summed over its threads by the runner). */
export interface WorkloadResult {
  transfers: number;
  bytes: number;
  verified: number;
  mismatches: number;
  /** I/Os the device did not complete ok (fault, invalid, aborted). */
  failed: number;
  bouncedBytes: number;
  mapUs: number[];
  unmapUs: number[];
}

export interface WorkloadEnv {
  dma: DmaApi;
  dev: DmaDevice;
  ram: GuestRam;
}

/** Plain data a driver thread gets to run its share of a workload. */
export interface WorkloadDriverSpec {
  workload: Workload;
  lanes: number;
  seed: number;
  verify: boolean;
  /** I/O sizes are multiples of this (the device's block size; 1 when absent). */
  sizeAlign?: number;
}

interface Lane {
  src: HostBuffer | DmaCoherent;
  dst: HostBuffer | DmaCoherent;
  len: number;
  shift: number;
}

const isHost = (b: HostBuffer | DmaCoherent): b is HostBuffer => 'pieces' in b;

export class WorkloadDriver {
  private readonly sampler: SizeSampler;
  private readonly rand: Random;
  private readonly pattern: Uint8Array;
  private readonly sets: HostBufferSet[] = [];
  private readonly coherent: DmaCoherent[] = [];
  private readonly lanes: Lane[] = [];
  private readonly mapper: BufferMapper;
  private readonly stats: MapperStats = { mapUs: [], unmapUs: [], bouncedBytes: 0 };
  private readonly out = { transfers: 0, bytes: 0, verified: 0, mismatches: 0, failed: 0 };
  private closed = false;

  constructor(
    private readonly env: WorkloadEnv,
    private readonly spec: WorkloadDriverSpec,
  ) {
    const w = spec.workload;
    this.sampler = sizeSampler(w.sizes, spec.sizeAlign ?? 1);
    this.rand = seededRandom(spec.seed);
    this.pattern = new Uint8Array(this.sampler.max + PATTERN_SHIFTS);
    for (let i = 0; i < this.pattern.length; i++) this.pattern[i] = Math.floor(this.rand() * 256);
    const pool = w.mapping === 'pool';
    try {
      const hosts = (dir: HostBuffer['dir']) => {
        const set = allocHostBuffers(env.ram, w.buffers, this.sampler.max, spec.lanes, dir, this.rand, pool);
        this.sets.push(set);
        return set.buffers;
      };
      const device = () =>
        Array.from({ length: spec.lanes }, () => {
          const c = env.dma.allocCoherent(env.dev, this.sampler.max);
          this.coherent.push(c);
          return c;
        });
      const src: ReadonlyArray<HostBuffer | DmaCoherent> = w.direction === 'from-device' ? device() : hosts('to-device');
      const dst: ReadonlyArray<HostBuffer | DmaCoherent> = w.direction === 'to-device' ? device() : hosts('from-device');
      for (let i = 0; i < spec.lanes; i++) this.lanes.push({ src: src[i], dst: dst[i], len: 0, shift: 0 });
      this.mapper = createBufferMapper(w.mapping, { dma: env.dma, dev: env.dev, stats: this.stats }, this.sets.flatMap((s) => (s.arena ? [s.arena] : [])));
    } catch (e) {
      this.release();
      throw e;
    }
  }

  /** Picks the next I/O's size, writes its data, maps (or syncs) and gives what the device must do. */
  prepare(lane: number, n: number): IoRequest {
    const l = this.lanes[lane];
    const len = this.sampler.next(this.rand);
    l.len = len;
    l.shift = n % PATTERN_SHIFTS;
    if (this.spec.verify) {
      this.write(l.src, this.pattern.subarray(l.shift, l.shift + len));
      this.clear(l.dst, len);
    }
    const reads = this.begin(l.src, len);
    try {
      return { len, reads, writes: this.begin(l.dst, len) };
    } catch (e) {
      if (isHost(l.src)) this.mapper.end(l.src, len);
      throw e;
    }
  }

  /** Completes lane's I/O: unmap (or sync for the CPU), then check the destination. */
  finish(lane: number, status: IoStatus): void {
    const l = this.lanes[lane];
    if (isHost(l.src)) this.mapper.end(l.src, l.len);
    if (isHost(l.dst)) this.mapper.end(l.dst, l.len);
    this.out.transfers++;
    if (status !== 'ok') {
      this.out.failed++;
      return;
    }
    this.out.bytes += l.len;
    if (!this.spec.verify) return;
    if (this.holds(l.dst, this.pattern.subarray(l.shift, l.shift + l.len))) this.out.verified++;
    else this.out.mismatches++;
  }

  /** Unmaps and frees everything; what it counted. */
  close(): WorkloadResult {
    if (!this.closed) {
      this.closed = true;
      try {
        this.mapper.close();
      } finally {
        this.release();
      }
    }
    return { ...this.out, bouncedBytes: this.stats.bouncedBytes, mapUs: this.stats.mapUs, unmapUs: this.stats.unmapUs };
  }

  private release(): void {
    for (const c of this.coherent.splice(0)) this.env.dma.freeCoherent(this.env.dev, c);
    for (const s of this.sets.splice(0)) s.free();
  }

  private begin(b: HostBuffer | DmaCoherent, len: number) {
    return isHost(b) ? this.mapper.begin(b, len) : [{ addr: b.addr, len }];
  }

  private piecesOf(b: HostBuffer | DmaCoherent, len: number): SgEntry[] {
    return isHost(b) ? prefix(b.pieces, len) : [{ pa: b.cpuAddr, len }];
  }

  private write(b: HostBuffer | DmaCoherent, data: Uint8Array): void {
    let off = 0;
    for (const p of this.piecesOf(b, data.length)) {
      this.env.ram.write(p.pa, data.subarray(off, off + p.len));
      off += p.len;
    }
  }

  private clear(b: HostBuffer | DmaCoherent, len: number): void {
    for (const p of this.piecesOf(b, len)) this.env.ram.fill(p.pa, p.len, 0);
  }

  private holds(b: HostBuffer | DmaCoherent, want: Uint8Array): boolean {
    let off = 0;
    for (const p of this.piecesOf(b, want.length)) {
      const got = this.env.ram.read(p.pa, p.len);
      for (let i = 0; i < p.len; i++) if (got[i] !== want[off + i]) return false;
      off += p.len;
    }
    return true;
  }
}
