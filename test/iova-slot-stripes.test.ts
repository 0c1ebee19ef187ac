/**
 * Each thread's slot takes cached-size ranges from its own part of the IOVA space first, so two
 * driver threads do not interleave their IOVAs page by page (sharing the cache lines of the state
 * bytes and of the page table's leaves).
 */
import { describe, it, expect } from 'vitest';
import { IovaAllocator } from '../src/iommu/iova.js';

const AP = 2 ** 20; // the default 4 GiB aperture, in pages
const SLOTS = 16;

describe('IOVA slot stripes', () => {
  it('a second slot takes its first range below its own stripe start, not next to the first slot', () => {
    const a = IovaAllocator.create(AP, { cpuSlots: SLOTS });
    const b = IovaAllocator.attach(a.handle); // claims slot 1 on its first call
    const pa = a.alloc(1, AP);
    const pb = b.alloc(1, AP);
    expect(pa).toBe(AP - 1); // slot 0: the highest free page, as before
    expect(pb).toBe(AP - AP / SLOTS - 1);
    const more = Array.from({ length: 16 }, () => b.alloc(1, AP));
    // All of b's pages stay in its stripe, 64 pages (one line of state bytes) away from a's at least.
    for (const p of [pb, ...more]) expect(Math.floor(p / 64)).not.toBe(Math.floor(pa / 64));
    expect(Math.max(...more)).toBeLessThan(AP - AP / SLOTS);
  });

  it('a stripe that starts above the limit falls back to the highest free range below the limit', () => {
    const a = IovaAllocator.create(AP, { cpuSlots: SLOTS });
    const b = IovaAllocator.attach(a.handle);
    expect(a.alloc(1, 1024)).toBe(1023);
    expect(b.alloc(1, 1024)).toBe(1022);
  });

  it('a full stripe falls back to the shared search and still honours the limit', () => {
    const ap = 64;
    const a = IovaAllocator.create(ap, { cpuSlots: 2 });
    const b = IovaAllocator.attach(a.handle);
    a.alloc(1, ap); // a holds slot 0, b gets slot 1 (stripe below page 32)
    const got = Array.from({ length: 31 }, () => b.alloc(1, ap));
    expect(new Set(got).size).toBe(31);
    expect(got.every((p) => p >= 1 && p < 32)).toBe(true); // pages 1..31: b's stripe, then full
    const next = b.alloc(1, ap); // nothing left below 32: the shared search above it
    expect(next).toBeGreaterThanOrEqual(32);
    expect(next).toBeLessThan(ap - 1);
    expect(a.pagesInUse()).toBe(33);
  });
});
