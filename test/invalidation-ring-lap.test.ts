/**
 * Two writers sharing one slot of the 64-entry invalidation ring must not make the device accept
 * a torn entry and lose a strict invalidation for good (found in review).
 *
 * Invalidation.publish() does: reserve k; write fields; store seq k+1. Nothing stops
 * writer W2 (sequence k+64, same slot) from writing its fields while W1 (sequence k) is preempted
 * before its seq store. Interleaving (each party in its own thread here):
 *   W1: reserve k=0, fields(PAGE_W1) ................................ [preempted]
 *   device: apply from lastTail 0: loads tail = 1 ...................... [preempted]
 *   63 other unmaps publish; W2: reserve 64 (slot 0), fields(PAGE_W2) [preempted]
 *   W1: seq = 1                     (lands on W2's fields)
 *   device: seq 1 == k+1, fields = PAGE_W2, seq 1 again -> invalidates PAGE_W2; lastTail = 1
 *   W2: seq = 65                    (slot 0 is now a consistent entry 64)
 *   device, next transfer: applies 1..64 -> PAGE_W2 again; nothing mismatches, no flush-all
 * and PAGE_W1 stayed in the IOTLB although W1's strict unmap returned. The fix: the device
 * re-reads tail after an entry's fields; tail more than a ring past the entry means the slot may
 * have been lapped, and it flushes everything.
 * Only the scheduling is forced (by hooking Atomics in the paused threads); the code is the library's.
 */
import { describe, it, expect } from 'vitest';
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { Invalidation } from '../src/iommu/invalidation.js';
import { Iotlb } from '../src/iommu/iotlb.js';
import { until } from './support.js';

const invModule = pathToFileURL(resolve(__dirname, '../dist/src/iommu/invalidation.js')).href;
const iotlbModule = pathToFileURL(resolve(__dirname, '../dist/src/iommu/iotlb.js')).href;
// sig words: [0] W1 paused [1] go W1 [2] W1 done [3] R paused [4] go R [5] R done [6] W2 paused [7] go W2 [8] W2 done
const partySource = `
const { workerData: wd } = require('node:worker_threads');
Promise.all([import(${JSON.stringify(invModule)}), import(${JSON.stringify(iotlbModule)})]).then(([{ Invalidation }, { Iotlb }]) => {
  const sig = new Int32Array(wd.sig);
  const inv = Invalidation.attach(wd.inv);
  const words = inv.words;
  const realStore = Atomics.store, realLoad = Atomics.load;
  const pause = (at, go) => { realStore(sig, at, 1); Atomics.notify(sig, at); while (realLoad(sig, go) === 0) Atomics.wait(sig, go, 0, 5); };
  if (wd.role === 'W1' || wd.role === 'W2') {
    const seq = wd.role === 'W1' ? 1 : 65;
    Atomics.store = (a, i, v) => { if (a === words && i === 4 && v === seq) { Atomics.store = realStore; pause(wd.role === 'W1' ? 0 : 6, wd.role === 'W1' ? 1 : 7); } return realStore(a, i, v); };
    inv.publish(0, wd.page, 1, false);
    realStore(sig, wd.role === 'W1' ? 2 : 8, 1);
  } else {
    // R pauses after loading tail, R2 after loading the seq of slot 0 (the entry's first word).
    const at = wd.role === 'R' ? 1 : 4;
    Atomics.load = (a, i) => { const r = realLoad(a, i); if (a === words && i === at) { Atomics.load = realLoad; pause(3, 4); } return r; };
    const t = inv.apply(0, 0, Iotlb.attach(wd.iotlb));
    realStore(sig, 9, t);
    realStore(sig, 5, 1);
  }
});`;


const PAGE_W1 = 0x100;
const PAGE_W2 = 0x200;

/** One domain's invalidation ring, an IOTLB caching both writers' pages, and the parties' signals. */
function rig() {
  const inv = Invalidation.create(1);
  const iotlb = Iotlb.create(1024);
  iotlb.insert(PAGE_W1, 0, 3);
  iotlb.insert(PAGE_W2, 4096, 3);
  const sig = new Int32Array(new SharedArrayBuffer(64));
  const ws: Worker[] = [];
  const spawn = (role: string, page = 0) =>
    new Worker(partySource, { eval: true, workerData: { role, page, sig: sig.buffer, inv: inv.handle, iotlb: iotlb.handle } });
  const go = (i: number) => {
    Atomics.store(sig, i, 1);
    Atomics.notify(sig, i);
  };
  return { inv, iotlb, sig, spawn, go, ws };
}

describe('invalidation ring slot shared by writers k and k+64', () => {
  it('never loses writer k’s invalidation', async () => {
    const { inv, iotlb, sig, spawn, go, ws } = rig();
    try {
      ws.push(spawn('W1', PAGE_W1));
      await until(() => Atomics.load(sig, 0) === 1); // W1 wrote its fields, not its seq
      ws.push(spawn('R'));
      await until(() => Atomics.load(sig, 3) === 1); // the device loaded tail = 1
      for (let p = 1; p < 64; p++) inv.publish(0, 0x1000 + p, 1, false); // other unmappers
      ws.push(spawn('W2', PAGE_W2));
      await until(() => Atomics.load(sig, 6) === 1); // W2 (sequence 64, slot 0) wrote its fields
      go(1);
      await until(() => Atomics.load(sig, 2) === 1); // W1 published (its seq lands on W2's fields)
      go(4);
      await until(() => Atomics.load(sig, 5) === 1); // the device applied "entry 0"
      go(7);
      await until(() => Atomics.load(sig, 8) === 1); // W2 published
    } finally {
      await Promise.all(ws.map((w) => w.terminate()));
    }
    // The device saw the lapped slot and dropped its whole IOTLB, W1's page included.
    expect(Atomics.load(sig, 9)).toBe(65);
    expect(iotlb.find(PAGE_W1)).toBe(-1);
    expect(iotlb.find(PAGE_W2)).toBe(-1);
  });

  // 0b0c19a dropped publish()'s "seq = 0" before the fields: a writer a ring ahead now overwrites
  // a slot's fields while the slot still shows the older entry's seq. The device must not apply
  // that mix as the older entry (it would invalidate the newer entry's page and keep the older
  // one's cached after its strict unmap returned).
  //   main: publish entry 0 (PAGE_W1, seq 1)
  //   device: apply from 0: tail = 1, seq of slot 0 = 1 ............... [preempted]
  //   63 unmaps publish; W2: reserve 64 (slot 0), fields(PAGE_W2) ..... [preempted before seq]
  //   device: fields = PAGE_W2, seq still 1 -> must see the lap (tail 65) and flush everything
  it('never applies a slot being overwritten by a writer a ring ahead as the older entry', async () => {
    const { inv, iotlb, sig, spawn, go, ws } = rig();
    try {
      inv.publish(0, PAGE_W1, 1, false); // entry 0, complete
      ws.push(spawn('R2'));
      await until(() => Atomics.load(sig, 3) === 1); // the device read entry 0's seq (1)
      for (let p = 1; p < 64; p++) inv.publish(0, 0x1000 + p, 1, false);
      ws.push(spawn('W2', PAGE_W2));
      await until(() => Atomics.load(sig, 6) === 1); // W2 (sequence 64, slot 0) wrote its fields
      go(4);
      await until(() => Atomics.load(sig, 5) === 1); // the device finished apply()
      go(7);
      await until(() => Atomics.load(sig, 8) === 1);
    } finally {
      await Promise.all(ws.map((w) => w.terminate()));
    }
    expect(Atomics.load(sig, 9)).toBe(65); // it saw the lap and caught up to the tail
    expect(iotlb.find(PAGE_W1)).toBe(-1); // entry 0's page is not left cached
  });
});
