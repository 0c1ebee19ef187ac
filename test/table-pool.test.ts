import { Worker } from 'node:worker_threads';
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { DmaError } from '../src/errors.js';
import { TABLE_ENTRIES, TablePool } from '../src/iommu/table-pool.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (err instanceof DmaError) return err.code;
    throw err;
  }
  return undefined;
}

describe('TablePool', () => {
  it('hands out tables 1..capacity, zeroed, and never table 0', () => {
    const pool = TablePool.create(4);
    expect(pool.capacity).toBe(4);
    expect(pool.entries.length).toBe(5 * TABLE_ENTRIES);
    const got = [pool.alloc(), pool.alloc(), pool.alloc(), pool.alloc()];
    expect(got.sort()).toEqual([1, 2, 3, 4]);
    expect(pool.inUse()).toBe(4);
  });

  it('alloc returns a zeroed table even after the table was dirtied and freed', () => {
    const pool = TablePool.create(1);
    const t = pool.alloc();
    pool.entries.fill(-1, t * TABLE_ENTRIES, (t + 1) * TABLE_ENTRIES);
    pool.free(t);
    const u = pool.alloc();
    expect(u).toBe(t);
    expect(pool.entries.subarray(u * TABLE_ENTRIES, (u + 1) * TABLE_ENTRIES).every((v) => v === 0)).toBe(true);
  });

  it('exhaustion is ENOMEM naming the pool size, and the pool stays usable', () => {
    const pool = TablePool.create(2);
    const a = pool.alloc();
    pool.alloc();
    let err: unknown;
    try {
      pool.alloc();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DmaError);
    expect((err as DmaError).code).toBe('ENOMEM');
    expect((err as DmaError).message).toContain('all 2 page-table pages');
    expect(pool.inUse()).toBe(2);
    pool.free(a);
    expect(pool.alloc()).toBe(a);
  });

  it('double free, free of a retired table and out-of-range indices are EINVAL', () => {
    const pool = TablePool.create(3);
    const a = pool.alloc();
    pool.free(a);
    expect(codeOf(() => pool.free(a))).toBe('EINVAL');
    const b = pool.alloc();
    pool.retire(b);
    expect(codeOf(() => pool.free(b))).toBe('EINVAL');
    expect(codeOf(() => pool.retire(b))).toBe('EINVAL');
    expect(codeOf(() => pool.free(0))).toBe('EINVAL');
    expect(codeOf(() => pool.free(4))).toBe('EINVAL');
    expect(codeOf(() => pool.free(1.5))).toBe('EINVAL');
    expect(pool.inUse()).toBe(1);
  });

  it('retired tables stay in use until reclaimRetired moves them to the free stack', () => {
    const pool = TablePool.create(2);
    const a = pool.alloc();
    const b = pool.alloc();
    pool.retire(a);
    pool.retire(b);
    expect(pool.retiredCount()).toBe(2);
    expect(pool.inUse()).toBe(2);
    expect(codeOf(() => pool.alloc())).toBe('ENOMEM');
    expect(pool.reclaimRetired()).toBe(2);
    expect(pool.retiredCount()).toBe(0);
    expect(pool.inUse()).toBe(0);
    expect([pool.alloc(), pool.alloc()].sort()).toEqual([a, b].sort());
  });

  it('attach from the handle sees the same stacks and counters', () => {
    const pool = TablePool.create(8);
    const t = pool.alloc();
    const other = TablePool.attach(structuredClone(pool.handle));
    expect(other.capacity).toBe(8);
    expect(other.inUse()).toBe(1);
    const u = other.alloc();
    expect(u).not.toBe(t);
    other.free(t);
    expect(pool.inUse()).toBe(1);
  });

  it('rejects a bad capacity and a buffer that is not a pool', () => {
    expect(codeOf(() => TablePool.create(0))).toBe('EINVAL');
    expect(codeOf(() => TablePool.create(2 ** 22))).toBe('EINVAL');
    expect(codeOf(() => TablePool.attach({ sab: new SharedArrayBuffer(2056 * 3 + 32) }))).toBe('EINVAL');
    expect(codeOf(() => TablePool.attach({ sab: new SharedArrayBuffer(100) }))).toBe('EINVAL');
  });

  it('property: alloc/free/retire/reclaim never hand out a table twice and inUse matches the model', () => {
    const op = fc.oneof(
      fc.constant({ kind: 'alloc' as const }),
      fc.record({ kind: fc.constant('free' as const), pick: fc.nat() }),
      fc.record({ kind: fc.constant('retire' as const), pick: fc.nat() }),
      fc.constant({ kind: 'reclaim' as const }),
    );
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 12 }), fc.array(op, { maxLength: 80 }), (capacity, ops) => {
        const pool = TablePool.create(capacity);
        const held = new Set<number>();
        const retired = new Set<number>();
        for (const o of ops) {
          if (o.kind === 'alloc') {
            if (held.size + retired.size === capacity) {
              expect(codeOf(() => pool.alloc())).toBe('ENOMEM');
            } else {
              const t = pool.alloc();
              expect(t).toBeGreaterThanOrEqual(1);
              expect(t).toBeLessThanOrEqual(capacity);
              expect(held.has(t) || retired.has(t)).toBe(false);
              const base = t * TABLE_ENTRIES;
              expect(pool.entries.subarray(base, base + TABLE_ENTRIES).every((v) => v === 0)).toBe(true);
              pool.entries.fill(t, base, base + TABLE_ENTRIES); // dirty it: the next owner must get zeros
              held.add(t);
            }
          } else if (o.kind === 'free' || o.kind === 'retire') {
            if (held.size === 0) continue;
            const t = [...held][o.pick % held.size];
            held.delete(t);
            if (o.kind === 'free') pool.free(t);
            else {
              pool.retire(t);
              retired.add(t);
            }
          } else {
            expect(pool.reclaimRetired()).toBe(retired.size);
            retired.clear();
          }
          expect(pool.inUse()).toBe(held.size + retired.size);
          expect(pool.retiredCount()).toBe(retired.size);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('two threads hammering alloc/free/retire/reclaim never share a table and leak none', async () => {
    const poolUrl = new URL('../dist/src/iommu/table-pool.js', import.meta.url);
    expect(existsSync(poolUrl), 'run `npx tsc -p tsconfig.json` first').toBe(true);
    const pool = TablePool.create(16);
    const start = new Int32Array(new SharedArrayBuffer(8));
    // Each thread stamps its id into every word of a table it holds and checks the stamp before
    // giving the table back: a table handed out twice at once would show the other thread's id.
    const src = `
      const { workerData, parentPort } = require('node:worker_threads');
      import(workerData.url).then(({ TablePool }) => {
        const pool = TablePool.attach(workerData.pool);
        const flag = new Int32Array(workerData.start);
        Atomics.add(flag, 1, 1); Atomics.notify(flag, 1);
        Atomics.wait(flag, 0, 0);
        const me = workerData.id, held = [];
        let bad = 0, enomem = 0, ops = 0;
        let seed = me * 7919 + 1;
        const rnd = () => (seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff);
        const check = (t) => { const b = t * 512; for (let i = 0; i < 512; i += 61) if (pool.entries[b + i] !== me) bad++; };
        for (let k = 0; k < 40000; k++) {
          const r = rnd() % 8;
          if (r < 4 || held.length === 0) {
            try {
              const t = pool.alloc(); ops++;
              const b = t * 512;
              for (let i = 0; i < 512; i += 61) if (pool.entries[b + i] !== 0) bad++;
              pool.entries.fill(me, b, b + 512); held.push(t);
            } catch (e) { if (e.code === 'ENOMEM') { enomem++; pool.reclaimRetired(); } else throw e; }
          } else if (r < 7) {
            const t = held.splice(rnd() % held.length, 1)[0]; check(t); pool.free(t); ops++;
          } else {
            const t = held.splice(rnd() % held.length, 1)[0]; check(t); pool.retire(t); ops++;
            if (rnd() % 4 === 0) pool.reclaimRetired();
          }
        }
        for (const t of held) { check(t); pool.free(t); }
        parentPort.postMessage({ bad, enomem, ops });
      });`;
    const workers = [1, 2].map(
      (id) =>
        new Worker(src, {
          eval: true,
          workerData: { url: poolUrl.href, pool: pool.handle, start: start.buffer, id },
        }),
    );
    try {
      const results = workers.map(
        (w) =>
          new Promise<{ bad: number; enomem: number; ops: number }>((resolve, reject) => {
            w.once('message', resolve);
            w.once('error', reject);
          }),
      );
      while (Atomics.load(start, 1) < 2) {
        const r = Atomics.waitAsync(start, 1, Atomics.load(start, 1), 5000);
        if (r.async) await r.value;
      }
      Atomics.store(start, 0, 1);
      Atomics.notify(start, 0);
      const out = await Promise.all(results);
      for (const r of out) {
        expect(r.bad).toBe(0);
        // Every iteration is one operation or one ENOMEM (how many of each depends on the interleaving).
        expect(r.ops + r.enomem).toBe(40000);
        expect(r.ops).toBeGreaterThan(0);
      }
      pool.reclaimRetired();
      expect(pool.inUse()).toBe(0);
      const all = new Set<number>();
      for (let i = 0; i < 16; i++) all.add(pool.alloc());
      expect(all.size).toBe(16);
      expect(codeOf(() => pool.alloc())).toBe('ENOMEM');
    } finally {
      await Promise.all(workers.map((w) => w.terminate()));
    }
  });
});
