import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { IovaAllocator } from '../src/iommu/iova.js';

describe('IOVA allocator', () => {
  it('allocates top-down below the limit, never page 0', () => {
    const a = IovaAllocator.create(1024);
    expect(a.alloc(1, 1024)).toBe(1023);
    expect(a.alloc(1, 512)).toBe(511);
    const small = IovaAllocator.create(4);
    expect([small.alloc(1, 4), small.alloc(1, 4), small.alloc(1, 4)].sort()).toEqual([1, 2, 3]);
    expect(() => small.alloc(1, 4)).toThrow(/ENOSPC/);
  });

  it('aligns ranges to their size rounded up to a power of two', () => {
    const a = IovaAllocator.create(4096);
    expect(a.alloc(3, 4096) % 4).toBe(0);
    expect(a.alloc(8, 4096) % 8).toBe(0);
  });

  it('refuses a double free without changing anything', () => {
    const a = IovaAllocator.create(64);
    const p = a.alloc(2, 64);
    a.free(p, 2);
    const used = a.pagesInUse();
    expect(() => a.free(p, 2)).toThrow(/EINVAL/);
    expect(a.pagesInUse()).toBe(used);
  });

  it('never hands out overlapping ranges and honours the limit (model check)', () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant('alloc' as const), n: fc.integer({ min: 1, max: 40 }), limit: fc.integer({ min: 16, max: 512 }) }),
      fc.record({ kind: fc.constant('free' as const), pick: fc.nat() }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 80 }), (ops) => {
        const a = IovaAllocator.create(512);
        const live: Array<[number, number]> = [];
        const used = () => 1 + live.reduce((s, [, n]) => s + n, 0);
        for (const o of ops) {
          if (o.kind === 'alloc') {
            try {
              const p = a.alloc(o.n, o.limit);
              expect(p).toBeGreaterThanOrEqual(1);
              expect(p + o.n).toBeLessThanOrEqual(o.limit);
              for (const [q, m] of live) expect(p + o.n <= q || q + m <= p).toBe(true);
              live.push([p, o.n]);
            } catch (e) {
              expect((e as Error).message).toMatch(/ENOSPC/);
            }
          } else if (live.length > 0) {
            const [[p, n]] = live.splice(o.pick % live.length, 1);
            a.free(p, n);
          }
          expect(a.pagesInUse()).toBe(used());
        }
      }),
      { numRuns: 100 },
    );
  });
});
