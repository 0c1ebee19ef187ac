import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { IovaAllocator, type IovaAllocatorOptions } from '../src/iommu/iova.js';
import { DmaError } from '../src/errors.js';

/** Pages alloc reserves for a request (alloc_iova_fast rounds below 32 pages up to a power of two). */
const rounded = (n: number) => (n < 32 ? 2 ** Math.ceil(Math.log2(n)) : n);

function code(f: () => unknown): string | null {
  try {
    f();
    return null;
  } catch (e) {
    expect(e).toBeInstanceOf(DmaError);
    return (e as DmaError).code;
  }
}

describe('IOVA allocator', () => {
  it('allocates top-down below the limit, never page 0', () => {
    const a = IovaAllocator.create(1024);
    expect(a.alloc(1, 1024)).toBe(1023);
    expect(a.alloc(1, 512)).toBe(511);
    const small = IovaAllocator.create(4);
    expect([small.alloc(1, 4), small.alloc(1, 4), small.alloc(1, 4)].sort()).toEqual([1, 2, 3]);
    expect(() => small.alloc(1, 4)).toThrow(/ENOSPC/);
    expect(small.pagesInUse()).toBe(3); // page 0 is reserved, not counted
  });

  it('rounds requests below 32 pages up to a power of two and aligns every range to its size', () => {
    const a = IovaAllocator.create(4096);
    const p3 = a.alloc(3, 4096);
    expect(p3 % 4).toBe(0);
    expect(a.pagesInUse()).toBe(4);
    expect(a.alloc(8, 4096) % 8).toBe(0);
    const p33 = a.alloc(33, 4096); // not cached: exact size, aligned to 64
    expect(p33 % 64).toBe(0);
    expect(a.pagesInUse()).toBe(4 + 8 + 33);
    a.free(p3, 4); // the rounded size is the same range
    expect(a.pagesInUse()).toBe(8 + 33);
  });

  it('reuses a cached range: free then alloc of the same size returns it', () => {
    const a = IovaAllocator.create(1024);
    const p = a.alloc(2, 1024);
    const q = a.alloc(2, 1024);
    a.free(p, 2);
    expect(a.pagesInUse()).toBe(2);
    expect(a.cachedPages()).toBe(2);
    expect(a.isAllocated(p)).toBe(false);
    expect(a.alloc(2, 1024)).toBe(p);
    expect(a.cachedPages()).toBe(0);
    a.free(q, 2);
    a.free(p, 2);
    expect(a.alloc(2, 1024)).toBe(p); // last freed, first reused (LIFO, like a magazine)
  });

  it('honours the limit when the cache holds only ranges above it', () => {
    const a = IovaAllocator.create(1024);
    const hi = a.alloc(4, 1024);
    expect(hi).toBe(1020);
    a.free(hi, 4);
    expect(a.cachedPages()).toBe(4);
    const lo = a.alloc(4, 1023); // the cached range would end one page above this limit
    expect(lo + 4).toBeLessThanOrEqual(1023);
    expect(a.alloc(4, 512) + 4).toBeLessThanOrEqual(512);
    expect(a.cachedPages()).toBe(4); // the cached range above the limit stays cached
    expect(a.alloc(4, 1024)).toBe(hi);
  });

  it('flushes every cache and retries when the shared space has no room (alloc_iova_fast)', () => {
    const a = IovaAllocator.create(8);
    const pages = Array.from({ length: 7 }, () => a.alloc(1, 8));
    for (const p of pages) a.free(p, 1);
    expect(a.cachedPages()).toBe(7);
    expect(a.alloc(4, 8)).toBe(4);
    expect(a.cachedPages()).toBe(0);
    expect(a.pagesInUse()).toBe(4);
    expect(a.alloc(2, 8)).toBe(2);
    expect(code(() => a.alloc(2, 8))).toBe('ENOSPC');
  });

  it('fills magazines, then the depot, then gives ranges back to the shared space', () => {
    const a = IovaAllocator.create(1024, { magazineSize: 4, depotMagazines: 2 });
    const ps = Array.from({ length: 32 }, () => a.alloc(1, 1024));
    for (const p of ps) a.free(p, 1);
    // loaded + prev (2 × 4) + depot (2 × 4); the rest went back
    expect(a.depotMagazines()).toEqual([2, 0, 0, 0, 0, 0]);
    expect(a.cachedPages()).toBe(16);
    expect(a.pagesInUse()).toBe(0);
    // the depot refills the magazines when both are empty
    const again = Array.from({ length: 16 }, () => a.alloc(1, 1024));
    expect(new Set(again).size).toBe(16);
    expect(a.cachedPages()).toBe(0);
    expect(a.depotMagazines()).toEqual([0, 0, 0, 0, 0, 0]);
    for (const p of again) a.free(p, 1);
    a.flushCaches();
    expect(a.cachedPages()).toBe(0);
    expect(a.pagesInUse()).toBe(0);
  });

  it('refuses double frees, wrong sizes and foreign addresses without changing anything', () => {
    const a = IovaAllocator.create(1024);
    const p = a.alloc(2, 1024);
    const big = a.alloc(40, 1024);
    a.free(p, 2);
    const before = [a.pagesInUse(), a.cachedPages()];
    expect(() => a.free(p, 2, 'dev 00:03.0')).toThrow(/EINVAL.*0x003fe000.*dev 00:03\.0.*double free/);
    const q = a.alloc(4, 512);
    const after = () => [a.pagesInUse(), a.cachedPages()];
    const state = after();
    expect(code(() => a.free(q, 1))).toBe('EINVAL'); // allocated as 4 pages
    expect(code(() => a.free(q, 8))).toBe('EINVAL');
    expect(code(() => a.free(q + 1, 1))).toBe('EINVAL'); // inside a range
    expect(code(() => a.free(big, 39))).toBe('EINVAL');
    expect(code(() => a.free(big, 41))).toBe('EINVAL');
    expect(code(() => a.free(big, 1))).toBe('EINVAL');
    expect(code(() => a.free(big + 32, 8))).toBe('EINVAL');
    expect(code(() => a.free(0, 1))).toBe('EINVAL');
    expect(code(() => a.free(5, 1))).toBe('EINVAL'); // never handed out
    expect(code(() => a.free(1023, 2))).toBe('EINVAL'); // past the aperture
    expect(code(() => a.free(1.5, 1))).toBe('EINVAL');
    expect(after()).toEqual(state);
    a.free(q, 3); // the requested size is fine too
    a.free(big, 40);
    expect(code(() => a.free(big, 40))).toBe('EINVAL');
    expect(a.pagesInUse()).toBe(0);
    expect(before[1]).toBe(2);
  });

  it('refuses bad arguments and names the caller and the limit when full', () => {
    const a = IovaAllocator.create(64);
    for (const [n, lim] of [[0, 64], [-1, 64], [1.5, 64], [NaN, 64], [1, 0], [1, NaN], [40, -1]]) {
      expect(code(() => a.alloc(n, lim))).toBe('EINVAL');
    }
    expect(a.pagesInUse()).toBe(0);
    a.alloc(32, 64);
    expect(() => a.alloc(32, 64, 'device 00:03.0 (domain 1)')).toThrow(
      /ENOSPC.*32-page range below 0x00040000 for device 00:03\.0 \(domain 1\) \(32 of 64 IOVA pages in use/,
    );
    expect(() => a.alloc(30, 32, 'd')).toThrow(/30-page range \(rounded to 32\) below 0x00020000 for d/);
    expect(a.pagesInUse()).toBe(32);
    expect(() => IovaAllocator.create(1)).toThrow(/EINVAL/);
    expect(() => IovaAllocator.create(64, { cpuSlots: 0 })).toThrow(/EINVAL/);
  });

  it('is one allocator from any attachment of its handle; release() gives the slot and its cache back', () => {
    const a = IovaAllocator.create(256, { cpuSlots: 1 });
    const b = IovaAllocator.attach(structuredClone(a.handle));
    const p = a.alloc(1, 256); // a claims the only slot
    a.free(p, 1);
    expect(a.cachedPages()).toBe(1);
    const q = b.alloc(1, 256); // b has no slot: the shared space (a's cache is a's)
    expect(q).not.toBe(p);
    expect(a.isAllocated(q)).toBe(true);
    b.free(q, 1); // straight back
    expect(b.cachedPages()).toBe(1);
    const r = b.alloc(2, 256);
    a.free(r, 2); // freed by another attachment than the one that allocated it
    expect(b.pagesInUse()).toBe(0);
    expect(b.cachedPages()).toBe(3);
    a.release();
    expect(a.cachedPages()).toBe(0);
    const s = b.alloc(1, 256); // now b can claim the slot
    b.free(s, 1);
    expect(b.cachedPages()).toBe(1);
    b.release();
    expect(a.cachedPages()).toBe(0);
    expect(a.pagesInUse()).toBe(0);
  });

  it('flushCaches also empties the caches of other attachments', () => {
    const a = IovaAllocator.create(512);
    const b = IovaAllocator.attach(a.handle);
    const pa = [a.alloc(1, 512), a.alloc(8, 512), a.alloc(32, 512)];
    const pb = [b.alloc(1, 512), b.alloc(4, 512)];
    a.free(pa[0], 1);
    a.free(pa[1], 8);
    b.free(pa[2], 32);
    b.free(pb[0], 1);
    b.free(pb[1], 4);
    expect(a.cachedPages()).toBe(1 + 8 + 32 + 1 + 4);
    a.flushCaches();
    expect(a.cachedPages()).toBe(0);
    // b's magazines still list the flushed ranges: b drops them and allocates correctly
    const x = b.alloc(4, 512);
    const y = b.alloc(4, 512);
    expect(x).not.toBe(y);
    expect(b.pagesInUse()).toBe(8);
    b.free(x, 4);
    b.free(y, 4);
    b.release();
    a.release();
    expect(a.pagesInUse()).toBe(0);
    expect(a.cachedPages()).toBe(0);
  });

  type Op =
    | { kind: 'alloc'; n: number; limit: number; t?: number }
    | { kind: 'free'; pick: number; t?: number }
    | { kind: 'double'; pick: number }
    | { kind: 'wrong'; pick: number }
    | { kind: 'burst'; n: number; count: number; t?: number }
    | { kind: 'flush' };

  /** Can the model place a `size`-page range aligned to `align` ending at or below `limit`? */
  function modelFits(live: Map<number, number>, aperture: number, size: number, limit: number): boolean {
    let align = 1;
    while (align < size) align *= 2;
    const used = new Uint8Array(aperture);
    used[0] = 1;
    for (const [p, n] of live) used.fill(1, p, p + n);
    for (let s = align; s + size <= Math.min(limit, aperture); s += align) {
      if (used.subarray(s, s + size).every((v) => v === 0)) return true;
    }
    return false;
  }

  /** `threads` attachments of one allocator (each claims its own slot, so its own stripe); op.t picks one. */
  function runModel(aperture: number, opts: IovaAllocatorOptions, ops: Op[], threads = 1): void {
    const a = IovaAllocator.create(aperture, opts);
    const insts = [a, ...Array.from({ length: threads - 1 }, () => IovaAllocator.attach(a.handle))];
    const pick = (t: number | undefined) => insts[(t ?? 0) % insts.length];
    const live = new Map<number, number>(); // first page → pages reserved
    const freed: Array<[number, number]> = [];
    const inUse = () => [...live.values()].reduce((s, n) => s + n, 0);
    const doAlloc = (n: number, limit: number, t?: number) => {
      const size = rounded(n);
      try {
        const p = pick(t).alloc(n, limit);
        expect(p).toBeGreaterThanOrEqual(1);
        expect(p + size).toBeLessThanOrEqual(Math.min(limit, aperture));
        for (const [q, m] of live) expect(p + size <= q || q + m <= p).toBe(true);
        live.set(p, size);
      } catch (e) {
        expect((e as DmaError).code).toBe('ENOSPC');
        expect(a.cachedPages()).toBe(0); // ENOSPC only after every cache was flushed
        expect(modelFits(live, aperture, size, limit)).toBe(false);
      }
    };
    const doFree = (p: number, t?: number) => {
      const n = live.get(p)!;
      live.delete(p);
      pick(t).free(p, n);
      freed.push([p, n]);
    };
    for (const o of ops) {
      const keys = [...live.keys()];
      if (o.kind === 'alloc') doAlloc(o.n, o.limit, o.t);
      else if (o.kind === 'burst') {
        const got: number[] = [];
        for (let i = 0; i < o.count; i++) {
          const before = live.size;
          doAlloc(o.n, aperture, o.t);
          if (live.size > before) got.push([...live.keys()].pop()!);
        }
        for (const p of got) doFree(p, o.t);
      } else if (o.kind === 'flush') {
        a.flushCaches();
        expect(a.cachedPages()).toBe(0);
      } else if (o.kind === 'free' && keys.length > 0) {
        doFree(keys[o.pick % keys.length], o.t);
      } else if (o.kind === 'double' && freed.length > 0) {
        const [p, n] = freed[o.pick % freed.length];
        if (!live.has(p)) {
          const snap = [a.pagesInUse(), a.cachedPages()];
          expect(code(() => a.free(p, n))).toBe('EINVAL');
          expect([a.pagesInUse(), a.cachedPages()]).toEqual(snap);
        }
      } else if (o.kind === 'wrong' && keys.length > 0) {
        const p = keys[o.pick % keys.length];
        const n = live.get(p)!;
        const snap = [a.pagesInUse(), a.cachedPages()];
        for (const bad of n <= 32 ? [n * 2] : [n - 1, n + 1]) expect(code(() => a.free(p, bad))).toBe('EINVAL');
        expect([a.pagesInUse(), a.cachedPages()]).toEqual(snap);
      }
      expect(a.pagesInUse()).toBe(inUse());
      expect(a.pagesInUse() + a.cachedPages()).toBeLessThan(aperture);
    }
    for (const p of [...live.keys()]) doFree(p);
    a.flushCaches();
    expect(a.pagesInUse()).toBe(0);
    expect(a.cachedPages()).toBe(0);
    for (const i of insts) i.release();
  }

  const ops = (aperture: number) =>
    fc.array(
      fc.oneof(
        {
          weight: 6,
          arbitrary: fc.record({
            kind: fc.constant('alloc' as const),
            n: fc.oneof(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: 64 })),
            // limits near the top meet the cached ranges (allocation is top-down); small limits
            // lie below the stripes of most slots (masks smaller than the stripes)
            limit: fc.oneof(
              fc.integer({ min: Math.max(1, aperture - 40), max: aperture }),
              fc.integer({ min: 16, max: aperture + 64 }),
              fc.integer({ min: 1, max: Math.max(2, aperture >> 2) }),
            ),
            t: fc.nat(),
          }),
        },
        { weight: 5, arbitrary: fc.record({ kind: fc.constant('free' as const), pick: fc.nat(), t: fc.nat() }) },
        { weight: 1, arbitrary: fc.record({ kind: fc.constant('double' as const), pick: fc.nat() }) },
        { weight: 1, arbitrary: fc.record({ kind: fc.constant('wrong' as const), pick: fc.nat() }) },
        { weight: 1, arbitrary: fc.record({ kind: fc.constant('burst' as const), n: fc.constantFrom(1, 2, 3, 8, 32), count: fc.integer({ min: 1, max: 40 }), t: fc.nat() }) },
        { weight: 1, arbitrary: fc.constant({ kind: 'flush' as const }) },
      ),
      { maxLength: 80 },
    );

  it('never hands out overlapping ranges, honours the limit and counts like the model (small magazines)', () => {
    fc.assert(
      fc.property(ops(512), (o) => runModel(512, { magazineSize: 3, depotMagazines: 2 }, o)),
      { numRuns: 150 },
    );
  });

  it('never hands out overlapping ranges, honours the limit and counts like the model (default caches)', () => {
    fc.assert(
      fc.property(ops(1024), (o) => runModel(1024, {}, o)),
      { numRuns: 100 },
    );
  });

  it('several slots, each searching its own stripe first: no overlap, the limit kept, ENOSPC only when the model has no room', () => {
    fc.assert(
      fc.property(ops(512), fc.integer({ min: 2, max: 5 }), (o, threads) =>
        runModel(512, { cpuSlots: 4, magazineSize: 3, depotMagazines: 2 }, o, threads),
      ),
      { numRuns: 150 },
    );
  });

  it('tiny spaces cut in more stripes than they have pages still allocate whenever there is room', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 2, max: 48 }).chain((ap) => fc.tuple(fc.constant(ap), fc.integer({ min: 2, max: 16 }), ops(ap))),
        ([aperture, slots, o]) => runModel(aperture, { cpuSlots: slots, magazineSize: 2, depotMagazines: 1 }, o, Math.min(slots + 1, 6)),
      ),
      { numRuns: 200 },
    );
  });
});

describe('IOVA allocator reserve (reserve_iova)', () => {
  it('never hands out a reserved page, even when the rest of the space runs out', () => {
    const a = IovaAllocator.create(64, { magazineSize: 2, depotMagazines: 1 });
    expect(a.reserve(40, 8)).toBe(8); // [40, 48): the top-down search passes over it
    const got: number[] = [];
    for (;;) {
      try {
        got.push(a.alloc(1, 64));
      } catch (e) {
        expect((e as DmaError).code).toBe('ENOSPC');
        break;
      }
    }
    expect(got.filter((p) => p >= 40 && p < 48)).toEqual([]);
    expect(got).toHaveLength(64 - 1 - 8); // every other page but page 0
    expect(code(() => a.alloc(32, 64))).toBe('ENOSPC');
  });

  it('keeps an aligned range from straddling a reserved page', () => {
    const a = IovaAllocator.create(1024);
    a.reserve(1000, 1);
    expect(a.alloc(32, 1024)).toBe(960); // the top 32-page range [992, 1024) holds page 1000
    const b = IovaAllocator.create(1024);
    b.reserve(900, 1);
    expect(b.alloc(100, 1024)).toBe(768); // exact size, aligned to 128: [896, 996) holds page 900
  });

  it('a reserved page cannot be freed (EINVAL, naming the reservation) and nothing changes', () => {
    const a = IovaAllocator.create(256);
    a.reserve(100, 4);
    for (const [p, n] of [[100, 1], [100, 4], [101, 1], [100, 40]]) expect(code(() => a.free(p, n))).toBe('EINVAL');
    expect(() => a.free(100, 1, 'dev')).toThrow(/^EINVAL: iova: free of \[0x00064000, \+1 pages\) by dev: the page is reserved/);
    expect([100, 101, 102, 103].map((p) => a.isAllocated(p))).toEqual([true, true, true, true]);
    expect(a.isAllocated(104)).toBe(false);
  });

  it('reserved pages count in neither pagesInUse nor cachedPages', () => {
    const a = IovaAllocator.create(256);
    a.reserve(128, 64);
    expect([a.pagesInUse(), a.cachedPages()]).toEqual([0, 0]);
    const p = a.alloc(2, 256);
    a.free(p, 2);
    expect([a.pagesInUse(), a.cachedPages()]).toEqual([0, 2]);
    a.flushCaches();
    expect([a.pagesInUse(), a.cachedPages()]).toEqual([0, 0]);
  });

  it('reserving again, overlapping, or past the aperture reserves only the new pages inside it', () => {
    const a = IovaAllocator.create(256);
    expect(a.reserve(10, 10)).toBe(10);
    expect(a.reserve(10, 10)).toBe(0);
    expect(a.reserve(15, 10)).toBe(5); // [20, 25) is new
    expect(a.reserve(0, 2)).toBe(1); // page 0 was reserved already
    expect(a.reserve(250, 100)).toBe(6); // clipped at the aperture
    expect(a.reserve(300, 10)).toBe(0); // wholly beyond it
    expect(a.reserve(40, 0)).toBe(0);
    expect([a.pagesInUse(), a.cachedPages()]).toEqual([0, 0]);
    expect(code(() => a.alloc(1, 256))).toBeNull();
  });

  it('takes back cached ranges in the way', () => {
    const a = IovaAllocator.create(256);
    const p = a.alloc(4, 256);
    a.free(p, 4);
    expect(a.cachedPages()).toBe(4);
    expect(a.reserve(p, 4)).toBe(4);
    expect(a.cachedPages()).toBe(0);
    expect(a.alloc(4, 256)).not.toBe(p);
  });

  it('refuses a range a caller holds (EBUSY, naming it) and reserves nothing', () => {
    const a = IovaAllocator.create(256);
    const p = a.alloc(40, 256); // LARGE, exact size
    expect(() => a.reserve(p + 39, 2, 'dom')).toThrow(new RegExp(`^EBUSY: iova: cannot reserve .* for dom: IOVA 0x${((p + 39) * 4096).toString(16).padStart(8, '0')} lies in the range at 0x${(p * 4096).toString(16).padStart(8, '0')}`));
    expect(a.isAllocated(p + 40)).toBe(false); // the free page of the request stayed free
    expect(a.pagesInUse()).toBe(40);
    a.free(p, 40);
    expect([a.pagesInUse(), a.cachedPages()]).toEqual([0, 0]);
  });

  it('refuses bad arguments (EINVAL)', () => {
    const a = IovaAllocator.create(64);
    for (const [p, n] of [[-1, 1], [1, -1], [1.5, 1], [1, NaN], [NaN, 1]]) expect(code(() => a.reserve(p, n))).toBe('EINVAL');
  });

  it('is seen by every attachment of the handle', () => {
    const a = IovaAllocator.create(64, { cpuSlots: 1 });
    a.reserve(32, 32);
    const b = IovaAllocator.attach(structuredClone(a.handle));
    expect(b.alloc(1, 64)).toBeLessThan(32);
    expect(b.isAllocated(40)).toBe(true);
  });
});
