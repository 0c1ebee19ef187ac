/**
 * One stress driver thread (it runs inside a piscina worker, workers/stress-task.ts): draws its
 * ops from its own OpStream, executes each as a small coroutine (a generator that maps, yields a
 * DMA request, gets the completion back, syncs, unmaps and verifies), keeps up to `window` of
 * them in flight, and checks the invariants it can see as it goes (data, completion-once,
 * strict-unmap, expected-faults, its own mappings' leaks). DMA requests travel to the main
 * thread, which owns the devices' queues, through the StressChannel (shared memory).
 *
 * Freed buffers sit poisoned in a small quarantine before their RAM goes back; the poison is
 * checked when they leave it, so a device write landing after the unmap shows up there.
 */
import { threadId } from 'node:worker_threads';
import { attachDriver, type AttachedDriver, type DriverHandle } from '../dma/driver-handle.js';
import type { DmaDevice, DmaMapping, DmaSgTable } from '../dma/dma-api.js';
import type { DmaDirection } from '../dma/direction.js';
import { DmaError, hex } from '../errors.js';
import { GiB, pa as toPa, type Pa } from '../addresses.js';
import type { RamBuffer } from '../memory/guest-ram.js';
import { OpStream, describeOp, plannedOperations, STRESS_OP_KINDS, type StressMode, type StressOp, type StressOpKind } from './op-generator.js';
import { StressChannel, REQ_FILL, type ChannelCompletion, type StressChannelHandle } from './stress-channel.js';
import { EventHistory, type EventKey, type StressEvent } from './event-history.js';
import { emptyInvariantCounts, type InvariantName, type Violation } from './invariants.js';
import { firstMismatch, firstNot, makePattern, poisonOf } from './pattern.js';

/** Test-only faults the runner can inject into itself, to show that a broken invariant is caught. */
export type StressInjection = 'corrupt-byte' | 'skip-unmap';

export interface StressDriverTask {
  driver: DriverHandle;
  channel: StressChannelHandle;
  thread: number;
  threads: number;
  /** BDFs of all devices, by global device index. */
  bdfs: string[];
  seed: number;
  mode: StressMode;
  /** Stop starting ops once their planned operations reach this (0: until the channel says stop). */
  maxOps: number;
  /** Ops in flight at once. */
  window: number;
  /** Return the descriptions of the first this-many ops. */
  logOps: number;
  inject?: StressInjection;
}

export interface StressDriverResult {
  thread: number;
  threadId: number;
  /** DMA API calls and DMA requests issued. */
  operations: number;
  /** Stress ops (generator items) run. */
  ops: number;
  perKind: Record<StressOpKind, number>;
  requests: number;
  completions: number;
  bytesSubmitted: number;
  bytesCompleted: number;
  bytesFaulted: number;
  expectedFaults: number;
  /** Lazy mode: illegal DMAs to an unmapped IOVA that hit a stale IOTLB entry (poison overwritten). */
  staleWrites: number;
  /** unmap-in-flight ops whose DMA still completed (it ran before the unmap took effect). */
  racesWonByDma: number;
  /** Maps refused for want of room (IOVA space, bounce slots, RAM); not violations. */
  resourceShortages: number;
  violationCounts: Record<InvariantName, number>;
  /** The first violations in full (with their event history). */
  violations: Violation[];
  opLog: string[];
  /** FNV-1a over every op's description: equal for equal op sequences. */
  opLogHash: string;
}

interface DmaReq {
  device: number;
  flags: number;
  src: number;
  dst: number;
  len: number;
  /** Runs right after the request is posted, before its completion is awaited. */
  afterPost?: () => void;
}

type OpRun = Generator<DmaReq, void, ChannelCompletion>;

interface Live {
  op: StressOp;
  run: OpRun;
}

const MAX_DETAILED = 20;
const QUARANTINE = 8;
const STUCK_MS = 30_000;
/** A PA no RAM region of the stress machine covers (its RAM: 0..128 MiB and 4 GiB..4 GiB + 128 MiB). */
const PA_HOLE = 2 * GiB;

export function runStressDriver(task: StressDriverTask): StressDriverResult {
  return new StressDriver(task).run();
}

class StressDriver {
  private readonly ch: StressChannel;
  private readonly drv: AttachedDriver;
  private readonly hist: EventHistory;
  private readonly devs = new Map<number, DmaDevice>();
  private readonly live = new Map<number, { l: Live; len: number }>();
  /** This thread's live mappings, each with the events that made it (a leak's history outlives the ring). */
  private readonly liveMaps = new Map<string, { op: number; addr: number; len: number; what: string; events: StressEvent[] }>();
  private readonly quarantine: Array<{ buf: RamBuffer; poison: number; op: number }> = [];
  private readonly counts = emptyInvariantCounts();
  private readonly detailed: Violation[] = [];
  private readonly r: StressDriverResult;
  private nextId = 1;
  private active = 0;
  private exclusiveRunning = false;
  private injected = false;
  private hash = 0x811c9dc5;

  constructor(private readonly t: StressDriverTask) {
    this.ch = StressChannel.attach(t.channel);
    this.hist = new EventHistory(t.thread);
    try {
      this.drv = attachDriver(t.driver);
    } catch (e) {
      this.ch.close(t.thread); // the main thread must not wait for requests that will never come
      throw e;
    }
    this.r = {
      thread: t.thread,
      threadId,
      operations: 0,
      ops: 0,
      perKind: Object.fromEntries(STRESS_OP_KINDS.map((k) => [k, 0])) as Record<StressOpKind, number>,
      requests: 0,
      completions: 0,
      bytesSubmitted: 0,
      bytesCompleted: 0,
      bytesFaulted: 0,
      expectedFaults: 0,
      staleWrites: 0,
      racesWonByDma: 0,
      resourceShortages: 0,
      violationCounts: this.counts,
      violations: this.detailed,
      opLog: [],
      opLogHash: '',
    };
  }

  run(): StressDriverResult {
    const t = this.t;
    const stream = new OpStream({ seed: t.seed, thread: t.thread, threads: t.threads, devices: t.bdfs.length, mode: t.mode });
    let pending: StressOp | null = null;
    let exhausted = false;
    let planned = 0;
    try {
      for (;;) {
        // Start ops while the window has room; an exclusive op waits until nothing else is in flight.
        while (!exhausted && !this.exclusiveRunning && this.active < t.window) {
          if (!pending) {
            if (this.ch.stopped() || (t.maxOps > 0 && planned >= t.maxOps)) {
              exhausted = true;
              break;
            }
            pending = stream.next();
            planned += plannedOperations(pending, t.mode);
            this.noteOp(pending);
          }
          if (pending.exclusive && this.active > 0) break;
          const op = pending;
          pending = null;
          this.start(op);
        }
        if (this.active === 0 && (exhausted || pending === null)) {
          if (exhausted) break;
          continue;
        }
        // An active op either waits on a request or has ended: anything else is a bug here, not a spin.
        if (this.live.size === 0) throw new Error(`stress driver ${t.thread}: ${this.active} ops active but no request in flight`);
        this.awaitCompletion();
      }
    } finally {
      this.ch.close(t.thread);
      for (const q of this.quarantine.splice(0)) this.release(q);
      for (const [key, m] of this.liveMaps) {
        this.violate('no-leak', `${m.what} ${hex(m.addr)} (+${m.len}) of op ${m.op} on device ${this.t.bdfs[Number(key.split(':')[0])]} was never unmapped`, { op: m.op, addr: m.addr, len: m.len }, m.events);
      }
      this.drv.close(); // flushes this thread's lazy queues
      this.ch.setOps(t.thread, this.r.operations);
    }
    this.r.opLogHash = (this.hash >>> 0).toString(16).padStart(8, '0');
    return this.r;
  }

  private noteOp(op: StressOp): void {
    const d = describeOp(op);
    for (let i = 0; i < d.length; i++) this.hash = Math.imul(this.hash ^ d.charCodeAt(i), 0x01000193);
    if (this.r.opLog.length < this.t.logOps) this.r.opLog.push(d);
  }

  // ---- the coroutine driver ----

  private start(op: StressOp): void {
    this.active++;
    if (op.exclusive) this.exclusiveRunning = true;
    this.r.ops++;
    this.r.perKind[op.kind]++;
    this.advance({ op, run: this.body(op) }, undefined);
  }

  private advance(l: Live, c: ChannelCompletion | undefined): void {
    let step: IteratorResult<DmaReq, void>;
    try {
      step = c === undefined ? l.run.next(undefined as unknown as ChannelCompletion) : l.run.next(c);
    } catch (e) {
      this.finish(l.op);
      if (e instanceof DmaError && (e.code === 'ENOSPC' || e.code === 'ENOMEM')) {
        this.r.resourceShortages++;
        this.hist.log({ op: l.op.seq, what: 'shortage', note: e.message });
      } else {
        this.violate('expected-faults', `op ${describeOp(l.op)} failed: ${(e as Error).message}`, { op: l.op.seq });
      }
      return;
    }
    if (step.done) {
      this.finish(l.op);
      return;
    }
    const q = step.value;
    const id = this.nextId++;
    this.live.set(id, { l, len: q.len });
    this.r.requests++;
    this.r.operations++;
    this.r.bytesSubmitted += q.len;
    this.hist.log({ op: l.op.seq, what: q.flags & REQ_FILL ? 'dma-fill' : 'dma-copy', device: q.device, id, addr: q.dst, len: q.len, note: q.flags & REQ_FILL ? `value ${q.src}` : `from ${hex(q.src)}` });
    this.ch.post(this.t.thread, { id, device: q.device, flags: q.flags, src: q.src, dst: q.dst, len: q.len });
    if (q.afterPost) q.afterPost();
  }

  private finish(op: StressOp): void {
    this.active--;
    if (op.exclusive) this.exclusiveRunning = false;
    this.ch.setOps(this.t.thread, this.r.operations);
  }

  private awaitCompletion(): void {
    const since = Date.now();
    for (;;) {
      const c = this.ch.takeCompletion(this.t.thread, 1000);
      if (c) {
        this.r.completions++;
        const w = this.live.get(c.id);
        this.hist.log({ op: w?.l.op.seq ?? -1, what: `complete ${c.status}`, id: c.id, addr: c.status === 'fault' ? c.faultAddr : undefined, len: c.bytes });
        if (!w) {
          this.violate('completion-once', `completion for transfer id ${c.id}, which is not in flight (completed twice, or never submitted)`, { id: c.id });
          continue;
        }
        this.live.delete(c.id);
        if (c.status === 'ok') this.r.bytesCompleted += c.bytes;
        else if (c.status === 'fault') this.r.bytesFaulted += w.len;
        this.advance(w.l, c);
        return;
      }
      if (Date.now() - since > STUCK_MS) {
        const ids = [...this.live.keys()];
        this.violate('completion-once', `transfers ${ids.join(', ')} were submitted and never completed (${STUCK_MS / 1000} s)`, { id: ids[0] });
        // Abandon them: run their cleanup (unmaps) so the machine can close.
        for (const { l: lv } of this.live.values()) {
          try {
            lv.run.return();
          } catch {
            // cleanup of an abandoned op: its error is not the one reported
          }
          this.finish(lv.op);
        }
        this.live.clear();
        return;
      }
    }
  }

  // ---- invariant bookkeeping ----

  private violate(invariant: InvariantName, message: string, key: EventKey, kept: StressEvent[] = []): void {
    this.counts[invariant]++;
    if (this.detailed.length >= MAX_DETAILED) return;
    const events = [...kept.filter((k) => !this.hist.about(key).includes(k)), ...this.hist.about(key)].sort((a, b) => a.n - b.n);
    this.detailed.push({ invariant, message, thread: this.t.thread, events });
  }

  private expectOk(op: StressOp, c: ChannelCompletion, len: number, what: string): boolean {
    if (c.status === 'ok' && c.bytes === len) return true;
    if (c.status === 'ok') {
      this.violate('counters', `op ${op.seq} ${what}: transfer ${c.id} completed with ${c.bytes} bytes, ${len} were submitted`, { op: op.seq, id: c.id });
    } else {
      const at = c.status === 'fault' ? ` (${c.faultWrite ? 'write' : 'read'} at ${hex(c.faultAddr)})` : '';
      this.violate('expected-faults', `op ${op.seq} ${what}: a legal DMA ended '${c.status}'${at} on device ${this.t.bdfs[op.device]}`, { op: op.seq, id: c.id, addr: c.faultAddr });
    }
    return false;
  }

  /**
   * An illegal DMA: it must fault, writing, at exactly `addr` — or, with `within` (lazy mode,
   * where the first pages may still hit stale IOTLB entries), anywhere in [addr, addr + within).
   */
  private expectFault(op: StressOp, c: ChannelCompletion, addr: number, what: string, within = 0): boolean {
    const at = within > 0 ? c.faultAddr >= addr && c.faultAddr < addr + within : c.faultAddr === addr;
    if (c.status === 'fault' && c.faultWrite && at) {
      this.r.expectedFaults++;
      return true;
    }
    const got = c.status === 'fault' ? `a ${c.faultWrite ? 'write' : 'read'} fault at ${hex(c.faultAddr)}` : `'${c.status}'`;
    this.violate('expected-faults', `op ${op.seq} ${what}: the illegal write DMA to ${hex(addr)} on device ${this.t.bdfs[op.device]} should fault there, got ${got}`, { op: op.seq, id: c.id, addr });
    return false;
  }

  private checkBytes(op: StressOp, pa: number, want: Uint8Array, what: string): void {
    const got = this.drv.dma.ram.read(pa, want.length);
    const i = firstMismatch(got, want);
    if (i >= 0) {
      this.violate('data', `op ${op.seq} ${what}: byte ${i} at PA ${hex(pa + i)} is ${byteHex(got[i])}, expected ${byteHex(want[i])} (len ${want.length})`, { op: op.seq, pa: pa + i, len: 1 });
    }
  }

  private checkFill(op: StressOp, pa: number, len: number, value: number, what: string, invariant: InvariantName = 'data'): boolean {
    const got = this.drv.dma.ram.read(pa, len);
    const i = firstNot(got, value);
    if (i >= 0) {
      this.violate(invariant, `op ${op.seq} ${what}: byte ${i} at PA ${hex(pa + i)} is ${byteHex(got[i])}, expected ${byteHex(value)} (len ${len})`, { op: op.seq, pa: pa + i, len: 1 });
      return false;
    }
    return true;
  }

  // ---- DMA API wrappers: counted, logged, tracked ----

  private dev(i: number): DmaDevice {
    let d = this.devs.get(i);
    if (!d) {
      d = this.drv.device(this.t.bdfs[i]);
      this.devs.set(i, d);
    }
    return d;
  }

  private map(op: StressOp, pa: number, len: number, dir: DmaDirection): DmaMapping {
    this.r.operations++;
    const m = this.drv.dma.mapSingle(this.dev(op.device), toPa(pa), len, dir);
    const ev = this.hist.log({ op: op.seq, what: `mapSingle ${dir}${m.bounced ? ' bounced' : ''}`, device: op.device, addr: m.addr, pa, len });
    this.liveMaps.set(`${op.device}:${m.addr}`, { op: op.seq, addr: m.addr, len, what: 'mapSingle', events: [ev] });
    return m;
  }

  private unmap(op: StressOp, m: DmaMapping): void {
    this.r.operations++;
    this.drv.dma.unmapSingle(this.dev(op.device), m);
    this.liveMaps.delete(`${op.device}:${m.addr}`);
    this.hist.log({ op: op.seq, what: 'unmapSingle', device: op.device, addr: m.addr, len: m.len });
  }

  private mapSg(op: StressOp, entries: Array<{ pa: Pa; len: number }>, dir: DmaDirection): DmaSgTable {
    this.r.operations++;
    const sg = this.drv.dma.mapSg(this.dev(op.device), entries, dir);
    const first = sg.segments[0].addr;
    const ev = this.hist.log({ op: op.seq, what: `mapSg ${dir} ${entries.length} entries -> ${sg.segments.length} segments`, device: op.device, addr: first, pa: entries[0].pa, len: op.len });
    this.liveMaps.set(`${op.device}:${first}`, { op: op.seq, addr: first, len: op.len, what: 'mapSg', events: [ev] });
    return sg;
  }

  private unmapSg(op: StressOp, sg: DmaSgTable): void {
    this.r.operations++;
    this.drv.dma.unmapSg(this.dev(op.device), sg);
    this.liveMaps.delete(`${op.device}:${sg.segments[0].addr}`);
    this.hist.log({ op: op.seq, what: 'unmapSg', device: op.device, addr: sg.segments[0].addr, len: op.len });
  }

  private sync(op: StressOp, target: DmaMapping | DmaSgTable, forCpu: boolean): void {
    this.r.operations++;
    if (forCpu) this.drv.dma.syncForCpu(this.dev(op.device), target);
    else this.drv.dma.syncForDevice(this.dev(op.device), target);
    const addr = 'segments' in target ? target.segments[0].addr : target.addr;
    this.hist.log({ op: op.seq, what: forCpu ? 'syncForCpu' : 'syncForDevice', device: op.device, addr });
  }

  /** A RAM buffer of len bytes starting `offset` bytes into its first page. */
  private alloc(op: StressOp, len: number, offset: number): { buf: RamBuffer; pa: number } {
    const buf = this.drv.dma.ram.alloc(len + offset, op.high ? { above: 4 * GiB } : { below: 4 * GiB });
    return { buf, pa: buf.pa + offset };
  }

  /** Poisons a buffer the op is done with and parks it; the oldest parked buffer's poison is checked and its RAM freed. */
  private retire(op: StressOp, buf: RamBuffer): void {
    const poison = poisonOf(op.tag);
    this.drv.dma.ram.fill(buf.pa, buf.size, poison);
    this.quarantine.push({ buf, poison, op: op.seq });
    if (this.quarantine.length > QUARANTINE) this.release(this.quarantine.shift()!);
  }

  private release(q: { buf: RamBuffer; poison: number; op: number }): void {
    const got = this.drv.dma.ram.read(q.buf.pa, q.buf.size);
    const i = firstNot(got, q.poison);
    if (i >= 0) {
      this.violate('strict-unmap', `a device wrote PA ${hex(q.buf.pa + i)} (now ${byteHex(got[i])}) after op ${q.op} had unmapped it and poisoned it with ${byteHex(q.poison)}`, { op: q.op, pa: q.buf.pa + i, len: 1 });
    }
    this.drv.dma.ram.free(q.buf);
  }

  /** Whether to inject `what` now: once per run, in thread 0 (a test-only hook). */
  private injectNow(what: StressInjection): boolean {
    if (this.t.inject !== what || this.injected || this.t.thread !== 0) return false;
    this.injected = true;
    return true;
  }

  // ---- the ops ----

  private *body(op: StressOp): OpRun {
    switch (op.kind) {
      case 'copy':
        return yield* this.copy(op);
      case 'copy-sg':
        return yield* this.copySg(op);
      case 'coherent-fill':
        return yield* this.coherentFill(op);
      case 'sync-reuse':
        return yield* this.syncReuse(op);
      case 'dma-unmapped':
        return yield* this.dmaUnmapped(op);
      case 'dma-to-device-mapping':
        return yield* this.dmaToDeviceMapping(op);
      case 'use-after-unmap':
        return yield* this.useAfterUnmap(op);
      case 'unmap-in-flight':
        return yield* this.unmapInFlight(op);
    }
  }

  /** Posts one DMA and returns its completion. */
  private *dma(op: StressOp, flags: number, src: number, dst: number, len: number, afterPost?: () => void): Generator<DmaReq, ChannelCompletion, ChannelCompletion> {
    return yield { device: op.device, flags, src, dst, len, afterPost };
  }

  private *copy(op: StressOp): OpRun {
    const ram = this.drv.dma.ram;
    const len = op.len;
    const src = this.alloc(op, len, op.srcOffset);
    const dst = this.alloc(op, len, op.dstOffset);
    const pat = makePattern(op.tag, len);
    ram.write(src.pa, pat);
    ram.fill(dst.pa, len, poisonOf(op.tag));
    let ok = false;
    const injectSkip = this.injectNow('skip-unmap');
    try {
      const sm = this.map(op, src.pa, len, op.srcDir);
      try {
        const dm = this.map(op, dst.pa, len, op.dstDir);
        try {
          if (op.syncs) this.sync(op, sm, false);
          const c = yield* this.dma(op, 0, sm.addr, dm.addr, len);
          ok = this.expectOk(op, c, len, 'copy');
          if (ok && op.syncs) {
            this.sync(op, dm, true);
            this.checkBytes(op, dst.pa, pat, 'copy (after syncForCpu)');
          }
        } finally {
          this.unmap(op, dm);
        }
      } finally {
        if (injectSkip) {
          const ev = this.hist.log({ op: op.seq, what: 'INJECTED: skipped unmapSingle', device: op.device, addr: sm.addr, len });
          this.liveMaps.get(`${op.device}:${sm.addr}`)?.events.push(ev);
        } else {
          this.unmap(op, sm);
        }
      }
      if (ok) {
        if (this.injectNow('corrupt-byte')) {
          const at = dst.pa + (len >>> 1);
          ram.write(at, [ram.read(at, 1)[0] ^ 0xff]);
          this.hist.log({ op: op.seq, what: 'INJECTED: corrupted one byte', pa: at, len: 1 });
        }
        this.checkBytes(op, dst.pa, pat, 'copy');
      }
    } finally {
      this.retire(op, src.buf);
      this.retire(op, dst.buf);
    }
  }

  private *copySg(op: StressOp): OpRun {
    const ram = this.drv.dma.ram;
    const len = op.len;
    const src = this.alloc(op, len, op.srcOffset);
    const parts = op.sg.map((n, i) => this.alloc(op, n, (op.dstOffset * (i + 1)) % 4096));
    const pat = makePattern(op.tag, len);
    ram.write(src.pa, pat);
    for (const p of parts) ram.fill(p.pa, p.buf.size - (p.pa - p.buf.pa), poisonOf(op.tag));
    let ok = true;
    try {
      const sm = this.map(op, src.pa, len, op.srcDir);
      try {
        const sg = this.mapSg(op, parts.map((p, i) => ({ pa: toPa(p.pa), len: op.sg[i] })), op.dstDir);
        try {
          let o = 0;
          for (const seg of sg.segments) {
            const c = yield* this.dma(op, 0, sm.addr + o, seg.addr, seg.len);
            ok = this.expectOk(op, c, seg.len, `copy-sg segment at +${o}`) && ok;
            o += seg.len;
          }
          if (o !== len) this.violate('data', `op ${op.seq}: mapSg segments cover ${o} bytes, the scatterlist ${len}`, { op: op.seq });
          if (op.syncs) this.sync(op, sg, true);
        } finally {
          this.unmapSg(op, sg);
        }
      } finally {
        this.unmap(op, sm);
      }
      if (ok) {
        let o = 0;
        for (let i = 0; i < parts.length; i++) {
          this.checkBytes(op, parts[i].pa, pat.subarray(o, o + op.sg[i]), `copy-sg entry ${i}`);
          o += op.sg[i];
        }
      }
    } finally {
      this.retire(op, src.buf);
      for (const p of parts) this.retire(op, p.buf);
    }
  }

  private *coherentFill(op: StressOp): OpRun {
    const dev = this.dev(op.device);
    this.r.operations++;
    const c = this.drv.dma.allocCoherent(dev, op.len);
    const ev = this.hist.log({ op: op.seq, what: 'allocCoherent', device: op.device, addr: c.addr, pa: c.cpuAddr, len: op.len });
    this.liveMaps.set(`${op.device}:${c.addr}`, { op: op.seq, addr: c.addr, len: op.len, what: 'allocCoherent', events: [ev] });
    const value = op.tag & 0xff;
    try {
      this.drv.dma.ram.fill(c.cpuAddr, op.len, value ^ 0xff);
      const done = yield* this.dma(op, REQ_FILL, value, c.addr, op.len);
      if (this.expectOk(op, done, op.len, 'coherent fill')) this.checkFill(op, c.cpuAddr, op.len, value, 'coherent fill (CPU view)');
    } finally {
      this.r.operations++;
      this.drv.dma.freeCoherent(dev, c);
      this.liveMaps.delete(`${op.device}:${c.addr}`);
      this.hist.log({ op: op.seq, what: 'freeCoherent', device: op.device, addr: c.addr, len: op.len });
    }
  }

  private *syncReuse(op: StressOp): OpRun {
    const ram = this.drv.dma.ram;
    const len = op.len;
    const b = this.alloc(op, len, op.srcOffset);
    const d = this.alloc(op, len, op.dstOffset);
    const value = op.tag & 0xff;
    ram.fill(b.pa, len, value ^ 0xff);
    ram.fill(d.pa, len, poisonOf(op.tag));
    const pat = makePattern(op.tag, len);
    let ok = false;
    try {
      const bm = this.map(op, b.pa, len, 'bidirectional');
      try {
        const dm = this.map(op, d.pa, len, op.dstDir);
        try {
          const c1 = yield* this.dma(op, REQ_FILL, value, bm.addr, len);
          if (!this.expectOk(op, c1, len, 'sync-reuse fill')) return;
          this.sync(op, bm, true);
          if (!this.checkFill(op, b.pa, len, value, 'sync-reuse (after syncForCpu)')) return;
          ram.write(b.pa, pat);
          this.sync(op, bm, false);
          const c2 = yield* this.dma(op, 0, bm.addr, dm.addr, len);
          ok = this.expectOk(op, c2, len, 'sync-reuse copy');
          if (ok && op.syncs) this.sync(op, dm, true);
        } finally {
          this.unmap(op, dm);
        }
      } finally {
        this.unmap(op, bm);
      }
      if (ok) {
        this.checkBytes(op, d.pa, pat, 'sync-reuse destination');
        this.checkBytes(op, b.pa, pat, 'sync-reuse source (bidirectional, after unmap)');
      }
    } finally {
      this.retire(op, b.buf);
      this.retire(op, d.buf);
    }
  }

  private *dmaUnmapped(op: StressOp): OpRun {
    // IOVA page 0 is never handed out; without an IOMMU, a PA no RAM region covers.
    const addr = (this.t.mode === 'off' ? PA_HOLE : 0) + (op.tag % 4096);
    const len = Math.min(op.len, 4096);
    const c = yield* this.dma(op, REQ_FILL, op.tag & 0xff, addr, len);
    this.expectFault(op, c, addr, 'dma-unmapped');
  }

  private *dmaToDeviceMapping(op: StressOp): OpRun {
    const ram = this.drv.dma.ram;
    const s = this.alloc(op, op.len, op.srcOffset);
    const pat = makePattern(op.tag, op.len);
    ram.write(s.pa, pat);
    try {
      const sm = this.map(op, s.pa, op.len, 'to-device');
      try {
        const c = yield* this.dma(op, REQ_FILL, op.tag & 0xff, sm.addr, op.len);
        this.expectFault(op, c, sm.addr, 'dma-to-device-mapping');
      } finally {
        this.unmap(op, sm);
      }
      this.checkBytes(op, s.pa, pat, 'to-device buffer after a refused device write');
    } finally {
      this.retire(op, s.buf);
    }
  }

  private *useAfterUnmap(op: StressOp): OpRun {
    const ram = this.drv.dma.ram;
    const len = op.len;
    const d = this.alloc(op, len, op.dstOffset);
    const value = op.tag & 0xff;
    const poison = poisonOf(op.tag);
    try {
      const dm = this.map(op, d.pa, len, op.dstDir === 'to-device' ? 'from-device' : op.dstDir);
      let unmapped = false;
      try {
        const c1 = yield* this.dma(op, REQ_FILL, value, dm.addr, len); // warms the IOTLB
        if (!this.expectOk(op, c1, len, 'use-after-unmap first DMA')) return;
        this.unmap(op, dm);
        unmapped = true;
      } finally {
        if (!unmapped) this.unmap(op, dm);
      }
      ram.fill(d.pa, len, poison);
      this.hist.log({ op: op.seq, what: `poison ${byteHex(poison)}`, pa: d.pa, len });
      const c2 = yield* this.dma(op, REQ_FILL, value, dm.addr, len);
      if (this.t.mode === 'lazy' && c2.status === 'ok') {
        // Lazy mode's window: the stale IOTLB entry still translated; the write landed.
        this.r.staleWrites++;
        this.hist.log({ op: op.seq, what: 'stale write (lazy)', pa: d.pa, len });
      } else if (this.expectFault(op, c2, dm.addr, 'use-after-unmap', this.t.mode === 'lazy' ? len : 0)) {
        this.checkFill(op, d.pa, len, poison, 'use-after-unmap: poison after the refused DMA', 'strict-unmap');
      }
      if (this.t.mode === 'lazy') {
        // After a flush the stale window is closed: the same DMA must fault and leave the poison.
        this.r.operations++;
        this.drv.dma.flush();
        this.hist.log({ op: op.seq, what: 'flush' });
        ram.fill(d.pa, len, poison);
        const c3 = yield* this.dma(op, REQ_FILL, value, dm.addr, len);
        if (this.expectFault(op, c3, dm.addr, 'use-after-unmap after flush')) {
          this.checkFill(op, d.pa, len, poison, 'use-after-unmap: poison after flush', 'strict-unmap');
        }
      }
    } finally {
      this.retire(op, d.buf);
    }
  }

  private *unmapInFlight(op: StressOp): OpRun {
    const ram = this.drv.dma.ram;
    const len = op.len;
    const d = this.alloc(op, len, op.dstOffset);
    const poison = poisonOf(op.tag);
    try {
      const dm = this.map(op, d.pa, len, 'from-device');
      let unmapped = false;
      try {
        const c = yield* this.dma(op, REQ_FILL, op.tag & 0xff, dm.addr, len, () => {
          // The driver bug under test: unmap while the DMA is queued or running, then poison.
          this.unmap(op, dm);
          unmapped = true;
          ram.fill(d.pa, len, poison);
          this.hist.log({ op: op.seq, what: `poison ${byteHex(poison)} (DMA still in flight)`, pa: d.pa, len });
        });
        if (c.status === 'ok') this.r.racesWonByDma++;
        else if (c.status === 'fault') this.r.expectedFaults++;
        else this.violate('expected-faults', `op ${op.seq} unmap-in-flight: DMA ended '${c.status}'`, { op: op.seq, id: c.id });
        const i = firstNot(ram.read(d.pa, len), poison);
        if (i >= 0) {
          if (this.t.mode === 'lazy') {
            this.r.staleWrites++;
            this.hist.log({ op: op.seq, what: 'stale write (lazy)', pa: d.pa + i, len: 1 });
          } else {
            this.violate('strict-unmap', `op ${op.seq}: device wrote PA ${hex(d.pa + i)} after unmapSingle(${hex(dm.addr)}) returned (strict)`, { op: op.seq, pa: d.pa + i, len: 1 });
          }
        }
      } finally {
        if (!unmapped) this.unmap(op, dm);
      }
    } finally {
      this.retire(op, d.buf);
    }
  }
}

function byteHex(b: number): string {
  return '0x' + b.toString(16).padStart(2, '0');
}
