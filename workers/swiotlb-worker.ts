/**
 * swiotlb-worker — a driver thread that maps and unmaps bounce buffers in a shared SWIOTLB pool,
 * for the concurrency tests: every slot it gets is filled with its own tag byte (as a device
 * would write it) and checked intact just before unmap, so a slot handed to two mappings at once
 * (of either thread) shows up as corruption.
 *
 * workerData: SwiotlbWorkerData. Start protocol over `startFlag` (a SharedArrayBuffer of ≥ 2 Int32):
 *   word 1 READY: each worker adds 1 (and notifies) once attached, just before it waits;
 *   word 0 GO:    the parent sets it to 1 and notifies; workers Atomics.wait on it (no spinning).
 * The worker runs its iterations, unmaps what it still holds, posts one SwiotlbWorkerResult and
 * exits (no open handles).
 */
import { parentPort, threadId, workerData } from 'node:worker_threads';
import { DmaError } from '../src/errors.js';
import { GuestRam, type GuestRamHandle } from '../src/memory/guest-ram.js';
import { Swiotlb, type SwiotlbHandle, type BounceDirection } from '../src/dma/swiotlb.js';

export interface SwiotlbWorkerData {
  ram: GuestRamHandle;
  swiotlb: SwiotlbHandle;
  /** This worker's original buffers live in [origBase, origBase + origSize) (no other worker's). */
  origBase: number;
  origSize: number;
  bdf: string;
  seed: number;
  iterations: number;
  /** Mappings held at once at most. */
  maxLive: number;
  /** Largest mapping length. */
  maxLen: number;
  /** Area searched first (default: by threadId). */
  homeArea?: number;
  /** This worker fills its slots with bytes tagBase .. tagBase + 63 (give each worker its own range). */
  tagBase: number;
  startFlag: SharedArrayBuffer;
}

export interface SwiotlbWorkerResult {
  ok: boolean;
  error?: string;
  code?: string;
  maps: number;
  unmaps: number;
  syncs: number;
  /** Maps refused with ENOSPC (then the worker unmaps one of its own, if any, and goes on). */
  enospc: number;
  /** Bytes this worker made the pool copy (map + sync + unmap copies). */
  bounced: number;
  /** Slot bytes found intact before unmap. */
  checked: number;
  /** The area this thread searched first, and the thread's id (the default home is threadId modulo the areas). */
  homeArea?: number;
  threadId?: number;
}

export const START_GO = 0;
export const START_READY = 1;

interface Live {
  tlb: number;
  pa: number;
  len: number;
  dir: BounceDirection;
  /** The byte "the device" filled the slot with: unique among this thread's live mappings and
   * never used by the other thread (workers are told apart by `tagBase`). */
  tag: number;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

function allBytes(a: Uint8Array, v: number): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== v) return false;
  return true;
}

function run(data: SwiotlbWorkerData): SwiotlbWorkerResult {
  const ram = GuestRam.attach(data.ram);
  const tlb = Swiotlb.attach(ram, data.swiotlb, { homeArea: data.homeArea });
  const dev = { bdf: data.bdf, dmaMaskBits: 32 };
  const res: SwiotlbWorkerResult = { ok: true, maps: 0, unmaps: 0, syncs: 0, enospc: 0, bounced: 0, checked: 0, homeArea: tlb.homeArea, threadId };
  let rnd = data.seed >>> 0 || 1;
  const next = (n: number): number => {
    rnd ^= rnd << 13;
    rnd ^= rnd >>> 17;
    rnd ^= rnd << 5;
    return (rnd >>> 0) % n;
  };
  const live: Live[] = [];
  let tagNext = 0;
  const freeTag = (): number => {
    for (;;) {
      const t = data.tagBase + (tagNext++ % 64);
      if (!live.some((m) => m.tag === t)) return t;
    }
  };

  const fail = (msg: string): never => {
    throw new Error(`${data.bdf}: ${msg}`);
  };
  const unmapOne = (k: number): void => {
    const [m] = live.splice(k, 1);
    if (!allBytes(ram.read(m.tlb, m.len), m.tag)) fail(`slot ${m.tlb.toString(16)}+${m.len} was changed by someone else before unmap`);
    res.checked += m.len;
    tlb.unmap(m.tlb, m.len, m.dir, dev);
    res.unmaps++;
    if (m.dir !== 'to-device') {
      res.bounced += m.len;
      if (!allBytes(ram.read(m.pa, m.len), m.tag)) fail(`unmap of ${m.tlb.toString(16)} did not copy the slot back to ${m.pa.toString(16)}`);
    }
  };

  const flag = new Int32Array(data.startFlag);
  Atomics.add(flag, START_READY, 1);
  Atomics.notify(flag, START_READY);
  Atomics.wait(flag, START_GO, 0);

  const dirs: BounceDirection[] = ['to-device', 'from-device', 'bidirectional'];
  for (let i = 0; i < data.iterations; i++) {
    if (live.length >= data.maxLive || (live.length > 0 && next(3) === 0)) {
      unmapOne(next(live.length));
      continue;
    }
    const len = 1 + next(next(4) === 0 ? data.maxLen : Math.min(8192, data.maxLen));
    const pa = data.origBase + next(data.origSize - len + 1);
    const dir = dirs[next(3)];
    let addr: number;
    try {
      addr = tlb.map(dev, pa, len, dir);
    } catch (err) {
      if (err instanceof DmaError && err.code === 'ENOSPC') {
        // Full (maybe of the other thread's mappings): give one of ours back, or just go on.
        res.enospc++;
        if (live.length > 0) unmapOne(next(live.length));
        continue;
      }
      throw err;
    }
    res.maps++;
    res.bounced += len;
    // Map copied the original in (every direction); then "the device" writes its own pattern.
    if (!sameBytes(ram.read(addr, len), ram.read(pa, len))) fail(`map of ${pa.toString(16)}+${len} did not copy the original into ${addr.toString(16)}`);
    const tag = freeTag();
    ram.fill(addr, len, tag);
    const m: Live = { tlb: addr, pa, len, dir, tag };
    live.push(m);
    if (dir !== 'to-device' && next(4) === 0) {
      // A partial syncForCpu: those bytes reach the original now.
      const off = next(len);
      const n = 1 + next(len - off);
      tlb.syncForCpu(addr + off, n, dir, dev);
      res.syncs++;
      res.bounced += n;
      if (!sameBytes(ram.read(pa + off, n), ram.read(addr + off, n))) fail(`syncForCpu of ${(addr + off).toString(16)}+${n} did not reach the original`);
    }
  }
  while (live.length > 0) unmapOne(live.length - 1);
  return res;
}

if (parentPort) {
  let result: SwiotlbWorkerResult;
  try {
    result = run(workerData as SwiotlbWorkerData);
  } catch (err) {
    result = {
      ok: false,
      code: err instanceof DmaError ? err.code : 'EIO',
      error: err instanceof Error ? err.message : String(err),
      maps: 0,
      unmaps: 0,
      syncs: 0,
      enospc: 0,
      bounced: 0,
      checked: 0,
    };
  }
  parentPort.postMessage(result);
}
