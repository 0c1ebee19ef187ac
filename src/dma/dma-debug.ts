/**
 * DMA-API debugging, opt-in like Linux's CONFIG_DMA_API_DEBUG (kernel/dma/debug.c): every
 * mapping is recorded with its device and where it was made, and each unmap, free and sync is
 * checked against the record. A broken rule becomes a report (as Linux prints a warning); the
 * call itself then goes on as it would without debugging.
 *
 * Checks (report `check` names): unmap-never-mapped, double-unmap, unmap-wrong-size,
 * unmap-wrong-dir, unmap-wrong-type (e.g. freeCoherent of a mapSingle address),
 * free-wrong-cpu-addr (freeCoherent with another CPU address), sync-outside (no
 * mapping holds the range, or it runs past the mapping's end), sync-wrong-dir, sg-segment-too-long,
 * sg-segment-boundary, leak (still mapped when the machine closes), table-full (recording stopped).
 *
 * Layout of its SharedArrayBuffer (every word written with the mutex held):
 *   Int32 header: [0] futex mutex [1] entry capacity [2] live entries [3] reports written
 *                 [4] report capacity [5] reports dropped [6] disabled (table was full)
 *   entries at ENTRIES_AT, ENTRY_BYTES each, open addressing keyed by (device, DMA address):
 *     +0 i32 state (0 never used, 1 live, 2 unmapped — kept so a second unmap can say where the
 *        first mapping came from, until the slot is reused) +4 kind +8 dir +12 device key
 *     +16 f64 addr +24 f64 len +32 f64 pa +40 bdf (16 bytes) +56 origin (ORIGIN_BYTES)
 *   reports after the entries: a ring of REPORT_BYTES records, oldest overwritten (counted dropped)
 *     +0 i32 check +4 kind +8 dir +12 mapped dir +16 f64 addr +24 f64 len +32 f64 mapped len
 *     +40 bdf (16) +56 mapping's origin (ORIGIN_BYTES) +56+ORIGIN_BYTES where the misuse happened
 * Invariant: a live entry is never overwritten; every state change happens under the mutex.
 * Where we differ from Linux: records live in shared memory so a mapping made in one thread can
 * be checked when another thread unmaps it; origins are the caller's source line, not a stack.
 */
import { fileURLToPath } from 'node:url';
import { dirname } from 'node:path';
import { DmaError, hex } from '../errors.js';
import { FutexMutex } from '../shared/futex-mutex.js';
import { DMA_DIRECTIONS, type DmaDirection } from './direction.js';
import type { DmaDeviceInfo } from './dma-device.js';
import type { DmaSegment } from './scatterlist.js';

export interface DmaDebugHandle {
  readonly sab: SharedArrayBuffer;
}

export type DmaDebugKind = 'single' | 'sg' | 'coherent';
export type DmaDebugCheck =
  | 'unmap-never-mapped'
  | 'double-unmap'
  | 'unmap-wrong-size'
  | 'unmap-wrong-dir'
  | 'unmap-wrong-type'
  | 'free-wrong-cpu-addr'
  | 'sync-outside'
  | 'sync-wrong-dir'
  | 'sg-segment-too-long'
  | 'sg-segment-boundary'
  | 'leak'
  | 'table-full';

export interface DmaDebugReport {
  readonly check: DmaDebugCheck;
  readonly bdf: string;
  readonly addr: number;
  readonly len: number;
  readonly dir: DmaDirection | null;
  readonly kind: DmaDebugKind | null;
  /** The mapping the call was checked against, when there is one. */
  readonly mapped: { len: number; dir: DmaDirection | null; origin: string } | null;
  /** Source line of the call that broke the rule (for a leak: where the mapping was made). */
  readonly at: string;
  readonly message: string;
}

const CHECKS: readonly DmaDebugCheck[] = [
  'unmap-never-mapped',
  'double-unmap',
  'unmap-wrong-size',
  'unmap-wrong-dir',
  'unmap-wrong-type',
  'free-wrong-cpu-addr',
  'sync-outside',
  'sync-wrong-dir',
  'sg-segment-too-long',
  'sg-segment-boundary',
  'leak',
  'table-full',
];
const KINDS: readonly DmaDebugKind[] = ['single', 'sg', 'coherent'];

const LOCK = 0;
const CAPACITY = 1;
const LIVE = 2;
const WRITTEN = 3;
const REPORT_CAPACITY = 4;
const DROPPED = 5;
const DISABLED = 6;
const HEADER_BYTES = 64;
const ORIGIN_BYTES = 184;
const BDF_BYTES = 16;
const ENTRY_BYTES = 56 + ORIGIN_BYTES; // 240
const REPORT_BYTES = 56 + 2 * ORIGIN_BYTES; // 424
const ENTRIES_AT = HEADER_BYTES;
const EMPTY = 0;
const IN_USE = 1;
const GONE = 2;

export const DEFAULT_DEBUG_ENTRIES = 16384;
const DEFAULT_REPORTS = 1024;

const enc = new TextEncoder();
const dec = new TextDecoder();

interface Entry {
  slot: number;
  kind: number;
  dir: number;
  len: number;
  addr: number;
  pa: number;
  origin: string;
}

export class DmaDebug {
  readonly handle: DmaDebugHandle;
  private readonly w: Int32Array;
  private readonly dv: DataView;
  private readonly bytes: Uint8Array;
  private readonly mutex: FutexMutex;
  private readonly capacity: number;
  private readonly reportsAt: number;

  static create(options: { entries?: number; reports?: number } = {}): DmaDebug {
    const entries = options.entries ?? DEFAULT_DEBUG_ENTRIES;
    const reports = options.reports ?? DEFAULT_REPORTS;
    for (const [k, v] of [['entries', entries], ['reports', reports]] as const) {
      if (!Number.isSafeInteger(v) || v < 1 || v > 1 << 20) throw new DmaError('EINVAL', `dmaDebug.${k} = ${String(v)}: must be an integer in [1, 2^20]`);
    }
    const sab = new SharedArrayBuffer(ENTRIES_AT + entries * ENTRY_BYTES + reports * REPORT_BYTES);
    const w = new Int32Array(sab, 0, HEADER_BYTES / 4);
    w[CAPACITY] = entries;
    w[REPORT_CAPACITY] = reports;
    return new DmaDebug({ sab });
  }

  static attach(handle: DmaDebugHandle): DmaDebug {
    return new DmaDebug(handle);
  }

  private constructor(handle: DmaDebugHandle) {
    this.handle = handle;
    this.w = new Int32Array(handle.sab, 0, HEADER_BYTES / 4);
    this.dv = new DataView(handle.sab);
    this.bytes = new Uint8Array(handle.sab);
    this.mutex = new FutexMutex(this.w, LOCK);
    this.capacity = this.w[CAPACITY];
    this.reportsAt = ENTRIES_AT + this.capacity * ENTRY_BYTES;
  }

  /** debug_dma_map_*: records a new mapping made by the caller of the DMA API. */
  map(dev: DmaDeviceInfo, kind: DmaDebugKind, addr: number, len: number, pa: number, dir: DmaDirection): void {
    const origin = callerLine();
    this.mutex.with(() => {
      if (this.w[DISABLED]) return;
      const key = deviceKey(dev.bdf);
      const start = this.hash(key, addr);
      for (let i = 0; i < this.capacity; i++) {
        const slot = (start + i) % this.capacity;
        const at = ENTRIES_AT + slot * ENTRY_BYTES;
        if (this.dv.getInt32(at, true) === IN_USE) continue;
        this.dv.setInt32(at, IN_USE, true);
        this.dv.setInt32(at + 4, KINDS.indexOf(kind), true);
        this.dv.setInt32(at + 8, DMA_DIRECTIONS.indexOf(dir), true);
        this.dv.setInt32(at + 12, key, true);
        this.dv.setFloat64(at + 16, addr, true);
        this.dv.setFloat64(at + 24, len, true);
        this.dv.setFloat64(at + 32, pa, true);
        this.putString(at + 40, BDF_BYTES, dev.bdf);
        this.putString(at + 56, ORIGIN_BYTES, origin);
        this.w[LIVE]++;
        return;
      }
      // Linux: "DMA-API: debugging out of memory - disabling".
      this.w[DISABLED] = 1;
      this.report('table-full', dev.bdf, addr, len, DMA_DIRECTIONS.indexOf(dir), KINDS.indexOf(kind), null, origin);
    });
  }

  /** check_unmap: the mapping must exist, for this device, with this size, direction and kind. */
  unmap(dev: DmaDeviceInfo, kind: DmaDebugKind, addr: number, len: number, dir: DmaDirection, cpuAddr?: number): void {
    const at = callerLine();
    this.mutex.with(() => {
      if (this.w[DISABLED]) return;
      const k = KINDS.indexOf(kind);
      const d = DMA_DIRECTIONS.indexOf(dir);
      const { live, gone } = this.find(deviceKey(dev.bdf), dev.bdf, addr);
      if (!live) {
        this.report(gone ? 'double-unmap' : 'unmap-never-mapped', dev.bdf, addr, len, d, k, gone, at);
        return;
      }
      if (live.len !== len) this.report('unmap-wrong-size', dev.bdf, addr, len, d, k, live, at);
      if (live.dir !== d) this.report('unmap-wrong-dir', dev.bdf, addr, len, d, k, live, at);
      if (live.kind !== k) this.report('unmap-wrong-type', dev.bdf, addr, len, d, k, live, at);
      if (cpuAddr !== undefined && live.pa !== cpuAddr) {
        this.report('free-wrong-cpu-addr', dev.bdf, addr, len, d, k, live, at, `CPU address ${hex(cpuAddr)}, allocated at ${hex(live.pa)}`);
      }
      this.dv.setInt32(ENTRIES_AT + live.slot * ENTRY_BYTES, GONE, true);
      this.w[LIVE]--;
    });
  }

  /** check_sync: the range must lie inside one mapping of the device, synced in its direction. */
  sync(dev: DmaDeviceInfo, addr: number, len: number, dir: DmaDirection, forCpu: boolean): void {
    const at = callerLine();
    this.mutex.with(() => {
      if (this.w[DISABLED]) return;
      const d = DMA_DIRECTIONS.indexOf(dir);
      const key = deviceKey(dev.bdf);
      const e = this.find(key, dev.bdf, addr).live ?? this.findContaining(key, dev.bdf, addr);
      if (!e) {
        this.report('sync-outside', dev.bdf, addr, len, d, -1, null, at, `no mapping of the device holds ${hex(addr)} (sync for ${forCpu ? 'cpu' : 'device'})`);
        return;
      }
      if (addr + len > e.addr + e.len) {
        this.report('sync-outside', dev.bdf, addr, len, d, e.kind, e, at, `[${hex(addr)}, ${hex(addr + len)}) runs past the mapping's end ${hex(e.addr + e.len)}`);
      }
      if (e.dir !== DMA_DIRECTIONS.indexOf('bidirectional') && e.dir !== d) {
        this.report('sync-wrong-dir', dev.bdf, addr, len, d, e.kind, e, at);
      }
    });
  }

  /** check_sg_segment: what the device is told must respect its max segment size and boundary. */
  checkSegments(dev: DmaDeviceInfo, segments: readonly DmaSegment[]): void {
    const boundary = dev.segmentBoundaryMask + 1;
    for (const s of segments) {
      if (s.len > dev.maxSegmentSize) this.reportLocked('sg-segment-too-long', dev.bdf, s.addr, s.len, `longer than the device's max segment size ${dev.maxSegmentSize}`);
      if (Math.floor(s.addr / boundary) !== Math.floor((s.addr + s.len - 1) / boundary)) {
        this.reportLocked('sg-segment-boundary', dev.bdf, s.addr, s.len, `crosses the device's segment boundary (mask ${hex(dev.segmentBoundaryMask)})`);
      }
    }
  }

  /** Reports every mapping still live (Linux: pending DMA allocations at driver unbind); returns how many. */
  reportLeaks(): number {
    return this.mutex.with(() => {
      let n = 0;
      for (let slot = 0; slot < this.capacity; slot++) {
        const at = ENTRIES_AT + slot * ENTRY_BYTES;
        if (this.dv.getInt32(at, true) !== IN_USE) continue;
        const e = this.entry(slot);
        this.report('leak', this.getString(at + 40, BDF_BYTES), e.addr, e.len, e.dir, e.kind, e, e.origin);
        n++;
      }
      return n;
    });
  }

  /** Mappings recorded and not yet undone. */
  liveEntries(): number {
    return Atomics.load(this.w, LIVE);
  }

  /** The reports so far, oldest first (at most the ring's capacity; see dropped()). */
  reports(): DmaDebugReport[] {
    return this.mutex.with(() => {
      const cap = this.w[REPORT_CAPACITY];
      const written = this.w[WRITTEN];
      const out: DmaDebugReport[] = [];
      for (let i = Math.max(0, written - cap); i < written; i++) out.push(this.readReport(i % cap));
      return out;
    });
  }

  /** Reports overwritten because the ring was full. */
  dropped(): number {
    return Atomics.load(this.w, DROPPED);
  }

  private hash(key: number, addr: number): number {
    return ((Math.imul(key ^ Math.floor(addr / 4096), 0x9e3779b1) ^ (addr % 4096)) >>> 0) % this.capacity;
  }

  /** The live entry at (device, addr), or else the most recently unmapped one there. */
  private find(key: number, bdf: string, addr: number): { live: Entry | null; gone: Entry | null } {
    const start = this.hash(key, addr);
    let gone: Entry | null = null;
    for (let i = 0; i < this.capacity; i++) {
      const slot = (start + i) % this.capacity;
      const at = ENTRIES_AT + slot * ENTRY_BYTES;
      const state = this.dv.getInt32(at, true);
      if (state === EMPTY) break;
      if (this.dv.getInt32(at + 12, true) !== key || this.dv.getFloat64(at + 16, true) !== addr || this.getString(at + 40, BDF_BYTES) !== bdf) continue;
      if (state === IN_USE) return { live: this.entry(slot), gone: null };
      gone ??= this.entry(slot);
    }
    return { live: null, gone };
  }

  private findContaining(key: number, bdf: string, addr: number): Entry | null {
    for (let slot = 0; slot < this.capacity; slot++) {
      const at = ENTRIES_AT + slot * ENTRY_BYTES;
      if (this.dv.getInt32(at, true) !== IN_USE || this.dv.getInt32(at + 12, true) !== key) continue;
      const a = this.dv.getFloat64(at + 16, true);
      if (addr >= a && addr < a + this.dv.getFloat64(at + 24, true) && this.getString(at + 40, BDF_BYTES) === bdf) return this.entry(slot);
    }
    return null;
  }

  private entry(slot: number): Entry {
    const at = ENTRIES_AT + slot * ENTRY_BYTES;
    return {
      slot,
      kind: this.dv.getInt32(at + 4, true),
      dir: this.dv.getInt32(at + 8, true),
      addr: this.dv.getFloat64(at + 16, true),
      len: this.dv.getFloat64(at + 24, true),
      pa: this.dv.getFloat64(at + 32, true),
      origin: this.getString(at + 56, ORIGIN_BYTES),
    };
  }

  private reportLocked(check: DmaDebugCheck, bdf: string, addr: number, len: number, note: string): void {
    const at = callerLine();
    this.mutex.with(() => this.report(check, bdf, addr, len, -1, KINDS.indexOf('sg'), null, at, note));
  }

  /** Appends a report; the mutex is held. */
  private report(check: DmaDebugCheck, bdf: string, addr: number, len: number, dir: number, kind: number, mapped: Entry | null, at: string, note = ''): void {
    const cap = this.w[REPORT_CAPACITY];
    const n = this.w[WRITTEN];
    if (n >= cap) Atomics.add(this.w, DROPPED, 1);
    const r = this.reportsAt + (n % cap) * REPORT_BYTES;
    this.dv.setInt32(r, CHECKS.indexOf(check), true);
    this.dv.setInt32(r + 4, kind, true);
    this.dv.setInt32(r + 8, dir, true);
    this.dv.setInt32(r + 12, mapped ? mapped.dir : -1, true);
    this.dv.setFloat64(r + 16, addr, true);
    this.dv.setFloat64(r + 24, len, true);
    this.dv.setFloat64(r + 32, mapped ? mapped.len : -1, true);
    this.putString(r + 40, BDF_BYTES, bdf);
    this.putString(r + 56, ORIGIN_BYTES, mapped ? mapped.origin : '');
    this.putString(r + 56 + ORIGIN_BYTES, ORIGIN_BYTES, note ? `${at}\u0001${note}` : at);
    // ORDERING: the record is complete before the count that makes readers look at it.
    Atomics.store(this.w, WRITTEN, n + 1);
  }

  private readReport(i: number): DmaDebugReport {
    const r = this.reportsAt + i * REPORT_BYTES;
    const check = CHECKS[this.dv.getInt32(r, true)];
    const kind = KINDS[this.dv.getInt32(r + 4, true)] ?? null;
    const dir = DMA_DIRECTIONS[this.dv.getInt32(r + 8, true)] ?? null;
    const mappedDir = DMA_DIRECTIONS[this.dv.getInt32(r + 12, true)] ?? null;
    const addr = this.dv.getFloat64(r + 16, true);
    const len = this.dv.getFloat64(r + 24, true);
    const mappedLen = this.dv.getFloat64(r + 32, true);
    const bdf = this.getString(r + 40, BDF_BYTES);
    const origin = this.getString(r + 56, ORIGIN_BYTES);
    const [at, note = ''] = this.getString(r + 56 + ORIGIN_BYTES, ORIGIN_BYTES).split('\u0001');
    const mapped = mappedLen >= 0 ? { len: mappedLen, dir: mappedDir, origin } : null;
    return { check, bdf, addr, len, dir, kind, mapped, at, message: describeReport(check, bdf, addr, len, dir, kind, mapped, at, note) };
  }

  private putString(at: number, max: number, s: string): void {
    const b = enc.encode(s);
    const n = Math.min(b.length, max - 1);
    // Keep the end of a long origin: the file name and line are what matter.
    this.bytes.set(b.subarray(b.length - n), at);
    this.bytes[at + n] = 0;
  }

  private getString(at: number, max: number): string {
    let n = 0;
    while (n < max && this.bytes[at + n] !== 0) n++;
    return dec.decode(this.bytes.slice(at, at + n));
  }
}

function describeReport(
  check: DmaDebugCheck,
  bdf: string,
  addr: number,
  len: number,
  dir: DmaDirection | null,
  kind: DmaDebugKind | null,
  mapped: DmaDebugReport['mapped'],
  at: string,
  note: string,
): string {
  const what = `${kind ?? 'DMA'} ${hex(addr)}+${len}${dir ? ` (${dir})` : ''}`;
  const by = mapped ? `; mapped ${mapped.len} bytes ${mapped.dir ?? ''} at ${mapped.origin || '?'}` : '';
  const rule: Record<DmaDebugCheck, string> = {
    'unmap-never-mapped': 'device driver frees DMA memory it has not allocated',
    'double-unmap': 'device driver frees DMA memory it already freed',
    'unmap-wrong-size': 'device driver frees DMA memory with a different size',
    'unmap-wrong-dir': 'device driver frees DMA memory with a different direction',
    'unmap-wrong-type': 'device driver frees DMA memory with the wrong function',
    'free-wrong-cpu-addr': 'device driver frees DMA memory with a different CPU address',
    'sync-outside': 'device driver syncs DMA memory outside a mapping',
    'sync-wrong-dir': 'device driver syncs DMA memory with a different direction',
    'sg-segment-too-long': 'mapping sg segment longer than the device supports',
    'sg-segment-boundary': 'mapping sg segment across the device\'s boundary',
    leak: 'DMA mapping still live when the machine closed',
    'table-full': 'DMA-API debugging ran out of entries and stopped recording',
  };
  return `dma-debug: device ${bdf}: ${rule[check]}: ${what}${note ? `: ${note}` : ''}${by} (at ${at})`;
}

/** FNV-1a of the device's address. */
function deviceKey(bdf: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < bdf.length; i++) h = Math.imul(h ^ bdf.charCodeAt(i), 0x01000193);
  return h | 0;
}

const LIBRARY_DIR = dirname(dirname(fileURLToPath(import.meta.url)));

/** The first stack frame outside this library: the driver code that called the DMA API. */
function callerLine(): string {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 24;
  const stack = new Error().stack ?? '';
  Error.stackTraceLimit = limit;
  for (const line of stack.split('\n').slice(1)) {
    if (line.includes(LIBRARY_DIR) || line.includes('node:internal')) continue;
    return line.trim().replace(/^at /, '');
  }
  return 'unknown';
}
