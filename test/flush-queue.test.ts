/**
 * The lazy-mode flush queue: one ring per pushing thread (lock-free push), one overflow ring for
 * threads without a slot, takeAll() empties all of them.
 */
import { describe, it, expect, afterEach } from 'vitest';
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { FlushQueue, FLUSH_QUEUE_SLOTS } from '../src/iommu/flush-queue.js';

/** takeAll() as [page, npages] pairs, sorted by page. */
function taken(q: FlushQueue): Array<[number, number]> {
  const flat = q.takeAll();
  const out: Array<[number, number]> = [];
  for (let i = 0; i < flat.length; i += 2) out.push([flat[i], flat[i + 1]]);
  return out.sort((a, b) => a[0] - b[0]);
}

const live = new Set<Worker>();
afterEach(async () => {
  await Promise.all([...live].map((w) => w.terminate()));
  live.clear();
});

describe('flush queue rings', () => {
  it('takeAll returns the ranges every attached instance pushed, and size counts them all', () => {
    const q = FlushQueue.create(8);
    const other = FlushQueue.attach(q.handle);
    expect(q.push(10, 1)).toBe(true);
    expect(other.push(20, 2)).toBe(true);
    expect(q.push(30, 4)).toBe(true);
    expect(other.size()).toBe(3);
    expect(q.holds(21)).toBe(true);
    expect(q.holds(22)).toBe(false);
    expect(taken(other)).toEqual([[10, 1], [20, 2], [30, 4]]);
    expect(q.size()).toBe(0);
  });

  it('a full ring refuses the push and takes it again after a takeAll, across many wraps', () => {
    const q = FlushQueue.create(3);
    let page = 1;
    for (let round = 0; round < 10; round++) {
      const want: Array<[number, number]> = [];
      for (let i = 0; i < 3; i++, page++) {
        expect(q.push(page, 1)).toBe(true);
        want.push([page, 1]);
      }
      expect(q.push(page, 1)).toBe(false);
      expect(taken(q)).toEqual(want);
    }
  });

  it('an instance that finds every slot taken queues through the overflow ring', () => {
    const q = FlushQueue.create(4);
    const owners = Array.from({ length: FLUSH_QUEUE_SLOTS }, (_, i) => {
      const f = FlushQueue.attach(q.handle);
      expect(f.push(100 + i, 1)).toBe(true);
      return f;
    });
    const late = FlushQueue.attach(q.handle);
    for (let i = 0; i < 4; i++) expect(late.push(500 + i, 1)).toBe(true);
    expect(late.push(600, 1)).toBe(false); // the overflow ring is full too
    expect(q.size()).toBe(FLUSH_QUEUE_SLOTS + 4);
    const pages = taken(q).map(([p]) => p);
    expect(pages).toEqual([...owners.map((_, i) => 100 + i), 500, 501, 502, 503]);
    for (const f of owners) f.release();
  });

  it('an instance on the overflow ring claims a slot ring freed meanwhile once the overflow ring fills', () => {
    const q = FlushQueue.create(2);
    const owners = Array.from({ length: FLUSH_QUEUE_SLOTS }, (_, i) => {
      const f = FlushQueue.attach(q.handle);
      expect(f.push(100 + i, 1)).toBe(true);
      return f;
    });
    const late = FlushQueue.attach(q.handle);
    expect(late.push(500, 1)).toBe(true); // overflow ring
    owners[3].release();
    expect(q.claimedRings()).toBe(FLUSH_QUEUE_SLOTS - 1);
    expect(late.push(501, 1)).toBe(true);
    expect(late.push(502, 1)).toBe(false); // overflow ring full: the caller flushes and retries
    q.takeAll();
    expect(late.push(502, 1)).toBe(true);
    expect(q.claimedRings()).toBe(FLUSH_QUEUE_SLOTS); // late took the freed ring, not the overflow one
    late.release();
    for (const f of owners) f.release();
    expect(q.claimedRings()).toBe(0);
  });

  it('a released ring keeps its ranges queued, and its next owner appends after them', () => {
    const q = FlushQueue.create(4);
    const a = FlushQueue.attach(q.handle);
    a.push(1, 1);
    a.push(2, 1);
    a.release();
    const b = FlushQueue.attach(q.handle);
    expect(b.push(3, 1)).toBe(true);
    expect(b.push(4, 1)).toBe(true);
    expect(b.push(5, 1)).toBe(false); // b owns a's ring (the first free one), which holds 1 and 2
    expect(taken(q).map(([p]) => p)).toEqual([1, 2, 3, 4]);
    expect(b.push(5, 1)).toBe(true);
  });

  it('two threads pushing and flushing at once lose and duplicate no range', async () => {
    const q = FlushQueue.create(16);
    const url = pathToFileURL(resolve('dist/src/iommu/flush-queue.js')).href;
    const N = 20000;
    const code = `
      const { workerData, parentPort } = require('node:worker_threads');
      import(${JSON.stringify(url)}).then(({ FlushQueue }) => {
        const q = FlushQueue.attach(workerData.handle);
        const got = [];
        for (let i = 0; i < ${N}; i++) {
          const page = workerData.base + i;
          while (!q.push(page, 1)) { const t = q.takeAll(); for (let k = 0; k < t.length; k += 2) got.push(t[k]); }
        }
        q.release();
        parentPort.postMessage(got);
      });`;
    const run = (base: number) =>
      new Promise<number[]>((res, rej) => {
        const w = new Worker(code, { eval: true, workerData: { handle: q.handle, base } });
        live.add(w);
        w.once('message', res);
        w.once('error', rej);
      });
    const results = await Promise.all([run(1_000_000), run(2_000_000)]);
    const all = [...results[0], ...results[1], ...taken(q).map(([p]) => p)].sort((a, b) => a - b);
    const want = [...Array.from({ length: N }, (_, i) => 1_000_000 + i), ...Array.from({ length: N }, (_, i) => 2_000_000 + i)];
    expect(all).toEqual(want);
  });
});
