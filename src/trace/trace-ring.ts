/**
 * Trace rings: one event ring per thread (device worker, driver thread, the machine's own
 * thread), all in one SharedArrayBuffer, so any thread can record without a lock and without a
 * message, and the machine reads every ring at export time (even after its workers ended).
 *
 * Layout of the SharedArrayBuffer (only this module indexes into it):
 *   Header, Int32 words [0, 16):
 *     [0] MAGIC          0x7ace, written once by create
 *     [1] RINGS          number of rings, written once by create
 *     [2] CAPACITY       events per ring, written once by create
 *     [3] NEXT_RING      rings handed out; a thread claims ring Atomics.add(NEXT_RING, 1)
 *     [4] UNRINGED       threads that wanted a ring when none was left (Atomics.add); they record nothing
 *     [5] MAPPED_PAGES   pages of live DMA-API mappings, moved with Atomics.add by the DMA trace hooks
 *     [6] TRACE_ID       random id of this trace, written once by create (per-thread writer cache key)
 *   Float64 at byte 32:  BASE_MS, the epoch time (ms, performance.timeOrigin + performance.now())
 *                        that is time 0 of the trace, written once by create
 *   Ring descriptors at byte 64, DESC_BYTES (128) each, ring r at 64 + r * 128:
 *     Int32 [0] STATE    0 free, 1 claimed: stored (release) after the words below are written
 *     Int32 [1] HEAD     events written; only the owner stores it, Atomics.store after each event
 *     Int32 [2] DROPPED  events refused because the ring was full; only the owner, Atomics.store
 *     Int32 [3] ROLE     1 driver, 2 device          } written by the owner with plain stores
 *     Int32 [4] THREAD   worker_threads.threadId      } before STATE; never changed after
 *     Int32 [5] REQUESTER requester ID of the device (-1 for a driver)
 *     Int32 [6] NAME_LEN bytes of the name
 *     bytes [32, 128)    the thread's name, UTF-8 (at most 96 bytes)
 *   Events at byte 64 + RINGS * 128, ring r's CAPACITY events of EVENT_BYTES (48) each:
 *     Float64 [0] ts     µs since BASE_MS
 *     Float64 [1] dur    µs (slices); first counter value (counter samples)
 *     Float64 [2] a      a DMA address (transfer source, mapping, fault, IOTLB miss page)
 *     Float64 [3] b      transfer destination; PA of a mapping; second counter value
 *     Float64 [4] c      a length in bytes
 *     Int32   [10] kind  TRACE_KIND below
 *     Int32   [11] info  packed per kind (status, requester ID, direction, fault reason...)
 *
 * Writer protocol: a ring has exactly one writer, the thread that claimed it. An event is six
 * plain stores into slot HEAD, then one Atomics.store of HEAD + 1. Slots below HEAD are never
 * written again. When the ring is full the writer stops (keeps the oldest events) and counts
 * each refused event in DROPPED: so a reader that exports while threads still run never sees a
 * slot being overwritten, a slice is never half-recorded, and the start of a run is kept.
 * ORDERING: the writer's HEAD store is a release of the event's plain stores; a reader's
 * Atomics.load of HEAD acquires them, so every slot below the HEAD it read is complete. STATE
 * publishes the descriptor words the same way.
 * Rings are never given back: their events must outlive their thread (a CLI run exports after
 * close()). A thread that attaches again (a piscina thread's next task) reuses its ring through
 * a per-thread writer cache; a thread that finds no ring left records nothing and is counted.
 * Invariants: 0 ≤ HEAD ≤ CAPACITY; events of one ring are in the order their writer recorded
 * them, with non-decreasing ts for instants and slice ends (a slice is recorded when it ends).
 * Time: performance.timeOrigin + performance.now() is comparable across Node's threads (the
 * same clock), so events of different rings order correctly on one time line.
 */
import { performance } from 'node:perf_hooks';
import { isMainThread, threadId } from 'node:worker_threads';
import { DmaError } from '../errors.js';

export interface TraceRingsHandle {
  readonly sab: SharedArrayBuffer;
}

export type TraceRole = 'driver' | 'device';

/** What one event records (the `kind` word). */
export const TRACE_KIND = {
  /**
   * Device: one descriptor, a slice. a = src, b = dst, c = len (the descriptor's words, as its
   * model reads them), info = status | flags << 8 (16 bits) | model << 24 (MODEL_NAMES index).
   */
  transfer: 1,
  /** Driver slices: a = DMA address, b = PA, c = len, info = packMapInfo(). */
  mapSingle: 2,
  unmapSingle: 3,
  /** a = first segment address, b = segment count, c = total length; SG_SEGMENT events follow. */
  mapSg: 4,
  /** One segment of the mapSg just before it (not an event of its own): a = addr, c = len. */
  sgSegment: 5,
  unmapSg: 6,
  syncForCpu: 7,
  syncForDevice: 8,
  allocCoherent: 9,
  freeCoherent: 10,
  /** Device instants: a = page address that missed; a = fault address, info = reason | write << 8. */
  iotlbMiss: 11,
  fault: 12,
  /** Driver instant: a = slot address, b = PA, c = len. */
  bounce: 13,
  /** Driver counter sample: dur = bounce slots in use, b = mapped pages. */
  counters: 14,
} as const;
export type TraceKind = (typeof TRACE_KIND)[keyof typeof TRACE_KIND];

/** One decoded event, as the exporter reads it. */
export interface TraceEvent {
  kind: number;
  ts: number;
  dur: number;
  a: number;
  b: number;
  c: number;
  info: number;
}

export interface TraceRingSnapshot {
  index: number;
  role: TraceRole;
  name: string;
  threadId: number;
  /** The device's requester ID (-1 for a driver thread). */
  requesterId: number;
  events: TraceEvent[];
  dropped: number;
}

export interface TraceSnapshot {
  /** Epoch time (ms) of ts 0. */
  baseMs: number;
  capacity: number;
  rings: TraceRingSnapshot[];
  /** Threads that found no free ring and recorded nothing. */
  unringed: number;
}

const MAGIC = 0x7ace;
const H_MAGIC = 0;
const H_RINGS = 1;
const H_CAPACITY = 2;
const H_NEXT_RING = 3;
const H_UNRINGED = 4;
const H_MAPPED_PAGES = 5;
const H_TRACE_ID = 6;
const BASE_MS_BYTE = 32;
const DESC_BASE = 64;
const DESC_BYTES = 128;
const D_STATE = 0;
const D_HEAD = 1;
const D_DROPPED = 2;
const D_ROLE = 3;
const D_THREAD = 4;
const D_REQUESTER = 5;
const D_NAME_LEN = 6;
const NAME_BYTE = 32;
const NAME_MAX = DESC_BYTES - NAME_BYTE;
export const EVENT_BYTES = 48;
const EVENT_F64 = EVENT_BYTES / 8;
const ROLE_CODE: Record<TraceRole, number> = { driver: 1, device: 2 };

/** The most memory a trace may take (rings × events × 48 B). */
export const TRACE_MAX_BYTES = 1 << 30;

/** Writers this thread already holds, by trace (a thread claims one ring per trace, at its first attach). */
const writers = new Map<string, TraceWriter>();
const WRITER_CACHE = 8;

export class TraceRings {
  readonly handle: TraceRingsHandle;
  readonly rings: number;
  readonly capacity: number;
  private readonly words: Int32Array;
  private readonly baseMs: number;

  static create(options: { rings: number; eventsPerRing: number }): TraceRings {
    const { rings, eventsPerRing } = options;
    if (!Number.isSafeInteger(rings) || rings < 1 || rings > 4096) {
      throw new DmaError('EINVAL', `trace: ${String(rings)} rings (threads) must be an integer in [1, 4096]`);
    }
    if (!Number.isSafeInteger(eventsPerRing) || eventsPerRing < 1 || eventsPerRing > 1 << 24) {
      throw new DmaError('EINVAL', `trace.eventsPerThread: ${String(eventsPerRing)} must be an integer in [1, ${1 << 24}]`);
    }
    const bytes = DESC_BASE + rings * DESC_BYTES + rings * eventsPerRing * EVENT_BYTES;
    if (bytes > TRACE_MAX_BYTES) {
      throw new DmaError('EINVAL', `trace: ${rings} threads × ${eventsPerRing} events × ${EVENT_BYTES} B is more than ${TRACE_MAX_BYTES >> 20} MiB of rings`);
    }
    const sab = new SharedArrayBuffer(bytes);
    const w = new Int32Array(sab, 0, DESC_BASE / 4);
    w[H_MAGIC] = MAGIC;
    w[H_RINGS] = rings;
    w[H_CAPACITY] = eventsPerRing;
    w[H_TRACE_ID] = (Math.random() * 0x7fffffff) | 0;
    new Float64Array(sab, BASE_MS_BYTE, 1)[0] = performance.timeOrigin + performance.now();
    return new TraceRings({ sab });
  }

  static attach(handle: TraceRingsHandle): TraceRings {
    return new TraceRings(handle);
  }

  private constructor(handle: TraceRingsHandle) {
    this.handle = handle;
    this.words = new Int32Array(handle.sab, 0, DESC_BASE / 4);
    if (this.words[H_MAGIC] !== MAGIC) throw new DmaError('EINVAL', 'trace: the handle is not a trace ring buffer');
    this.rings = this.words[H_RINGS];
    this.capacity = this.words[H_CAPACITY];
    this.baseMs = new Float64Array(handle.sab, BASE_MS_BYTE, 1)[0];
  }

  /**
   * This thread's writer: its ring, claimed with one atomic on the first call in this thread
   * (later calls, e.g. a piscina thread's next task, get the same writer). Null when every ring
   * is taken: the thread is counted in UNRINGED and records nothing.
   */
  writer(role: TraceRole, name?: string, requesterId = -1): TraceWriter | null {
    const key = `${this.words[H_TRACE_ID]}:${this.baseMs}`;
    const have = writers.get(key);
    if (have) return have;
    const w = this.claim(role, name ?? defaultName(role), requesterId);
    if (w) {
      if (writers.size >= WRITER_CACHE) writers.delete(writers.keys().next().value as string);
      writers.set(key, w);
    }
    return w;
  }

  /** Claims a fresh ring for a writer that is not cached (one per device worker, or a test's own). */
  claim(role: TraceRole, name: string, requesterId = -1): TraceWriter | null {
    // ORDERING: the add hands out each ring index once; nothing else is ordered by it.
    const r = Atomics.add(this.words, H_NEXT_RING, 1);
    if (r >= this.rings) {
      Atomics.add(this.words, H_UNRINGED, 1);
      return null;
    }
    const d = this.desc(r);
    d[D_ROLE] = ROLE_CODE[role];
    d[D_THREAD] = threadId;
    d[D_REQUESTER] = requesterId;
    const bytes = new TextEncoder().encode(name);
    let n = Math.min(bytes.length, NAME_MAX);
    while (n > 0 && n < bytes.length && (bytes[n] & 0xc0) === 0x80) n--; // never cut a UTF-8 sequence
    new Uint8Array(this.handle.sab, DESC_BASE + r * DESC_BYTES + NAME_BYTE, NAME_MAX).set(bytes.subarray(0, n));
    d[D_NAME_LEN] = n;
    // ORDERING: publishes the descriptor words above to readers that load STATE.
    Atomics.store(d, D_STATE, 1);
    return new TraceWriter(this.handle.sab, r, this.capacity, this.baseMs, this.words);
  }

  /** Every claimed ring's events up to its published HEAD (consistent while writers still run). */
  snapshot(): TraceSnapshot {
    const rings: TraceRingSnapshot[] = [];
    const f = new Float64Array(this.handle.sab);
    const i32 = new Int32Array(this.handle.sab);
    const claimed = Math.min(Atomics.load(this.words, H_NEXT_RING), this.rings);
    for (let r = 0; r < claimed; r++) {
      const d = this.desc(r);
      // ORDERING: acquire of the descriptor words (a ring handed out but not yet named is skipped).
      if (Atomics.load(d, D_STATE) !== 1) continue;
      // ORDERING: acquire of every event below head.
      const head = Atomics.load(d, D_HEAD);
      const events: TraceEvent[] = new Array(head);
      const base = (this.eventsByte(r) / 8) | 0;
      for (let k = 0; k < head; k++) {
        const o = base + k * EVENT_F64;
        events[k] = { ts: f[o], dur: f[o + 1], a: f[o + 2], b: f[o + 3], c: f[o + 4], kind: i32[(o + 5) * 2], info: i32[(o + 5) * 2 + 1] };
      }
      const nameLen = d[D_NAME_LEN];
      const name = new TextDecoder().decode(new Uint8Array(this.handle.sab, DESC_BASE + r * DESC_BYTES + NAME_BYTE, nameLen).slice());
      rings.push({
        index: r,
        role: d[D_ROLE] === ROLE_CODE.device ? 'device' : 'driver',
        name,
        threadId: d[D_THREAD],
        requesterId: d[D_REQUESTER],
        events,
        dropped: Atomics.load(d, D_DROPPED),
      });
    }
    return { baseMs: this.baseMs, capacity: this.capacity, rings, unringed: Atomics.load(this.words, H_UNRINGED) };
  }

  private desc(r: number): Int32Array {
    return new Int32Array(this.handle.sab, DESC_BASE + r * DESC_BYTES, NAME_BYTE / 4);
  }

  private eventsByte(r: number): number {
    return DESC_BASE + this.rings * DESC_BYTES + r * this.capacity * EVENT_BYTES;
  }
}

function defaultName(role: TraceRole): string {
  return role === 'driver' ? (isMainThread ? 'driver (main thread)' : `driver thread ${threadId}`) : `device thread ${threadId}`;
}

/**
 * The writing end of one ring; used only by the thread that claimed it. Every record is plain
 * stores plus one Atomics.store; nothing allocates.
 */
export class TraceWriter {
  readonly ring: number;
  private readonly f: Float64Array;
  private readonly i32: Int32Array;
  private readonly d: Int32Array;
  private readonly capacity: number;
  private readonly header: Int32Array;
  /** µs from BASE_MS to this thread's performance.now() zero. */
  private readonly offsetUs: number;
  private head = 0;
  private dropped = 0;

  /** @internal Made by TraceRings.claim. */
  constructor(sab: SharedArrayBuffer, ring: number, capacity: number, baseMs: number, header: Int32Array) {
    this.ring = ring;
    const rings = header[H_RINGS];
    const byte = DESC_BASE + rings * DESC_BYTES + ring * capacity * EVENT_BYTES;
    this.f = new Float64Array(sab, byte, capacity * EVENT_F64);
    this.i32 = new Int32Array(sab, byte, capacity * EVENT_F64 * 2);
    this.d = new Int32Array(sab, DESC_BASE + ring * DESC_BYTES, NAME_BYTE / 4);
    this.capacity = capacity;
    this.header = header;
    this.offsetUs = (performance.timeOrigin - baseMs) * 1000;
  }

  /** Trace time now, in µs since the trace's time 0. */
  now(): number {
    return this.offsetUs + performance.now() * 1000;
  }

  /** A slice that began at `t0` (from now()) and ends now; returns its end (one clock read for what follows). */
  slice(kind: number, t0: number, a: number, b: number, c: number, info: number): number {
    const t1 = this.now();
    this.put(kind, t0, t1 - t0, a, b, c, info);
    return t1;
  }

  /** An instant event now. */
  instant(kind: number, a: number, b: number, c: number, info: number): void {
    this.put(kind, this.now(), 0, a, b, c, info);
  }

  /** Adds `pageDelta` to the trace's mapped-page count and records a counter sample at `ts` with it. */
  counters(ts: number, bounceSlots: number, pageDelta: number): void {
    // ORDERING: a shared counter; its value orders nothing else.
    const pages = Atomics.add(this.header, H_MAPPED_PAGES, pageDelta) + pageDelta;
    this.put(TRACE_KIND.counters, ts, bounceSlots, 0, pages, 0, 0);
  }

  /** Events this writer could not record (its ring was full). */
  get droppedEvents(): number {
    return this.dropped;
  }

  put(kind: number, ts: number, dur: number, a: number, b: number, c: number, info: number): void {
    const h = this.head;
    if (h >= this.capacity) {
      this.dropped++;
      // ORDERING: a count for readers; orders nothing else.
      Atomics.store(this.d, D_DROPPED, this.dropped);
      return;
    }
    const o = h * EVENT_F64;
    const f = this.f;
    f[o] = ts;
    f[o + 1] = dur;
    f[o + 2] = a;
    f[o + 3] = b;
    f[o + 4] = c;
    this.i32[(o + 5) * 2] = kind;
    this.i32[(o + 5) * 2 + 1] = info;
    this.head = h + 1;
    // ORDERING: release: the stores above are complete for any reader that loads this HEAD.
    Atomics.store(this.d, D_HEAD, h + 1);
  }
}
