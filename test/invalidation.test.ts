import { describe, it, expect } from 'vitest';
import { Invalidation, INVALIDATION_RING } from '../src/iommu/invalidation.js';
import { Iotlb, IOTLB_READ, IOTLB_STALE } from '../src/iommu/iotlb.js';
import { DeviceEpochs, genAtLeast } from '../src/iommu/device-epoch.js';

function filled(pages: number[]): Iotlb {
  const t = Iotlb.create(64);
  for (const p of pages) t.insert(p, p * 4096, IOTLB_READ);
  return t;
}

describe('IOTLB invalidation queue', () => {
  it('drops exactly the invalidated pages on a strict entry', () => {
    const inv = Invalidation.create(2);
    const tlb = filled([10, 11, 12, 13]);
    const tail0 = inv.tail(0);
    inv.publish(0, 11, 2, false);
    inv.apply(0, tail0, tlb);
    expect([10, 11, 12, 13].map((p) => tlb.find(p) >= 0)).toEqual([true, false, false, true]);
  });

  it('marks lazily unmapped pages stale but keeps them cached', () => {
    const inv = Invalidation.create(1);
    const tlb = filled([5, 6]);
    inv.publish(0, 6, 1, true);
    inv.apply(0, 0, tlb);
    const i = tlb.find(6);
    expect(i).toBeGreaterThanOrEqual(0);
    expect(tlb.flags[i] & IOTLB_STALE).toBe(IOTLB_STALE);
    expect(tlb.flags[tlb.find(5)] & IOTLB_STALE).toBe(0);
  });

  it('moves the generation only for strict invalidations', () => {
    const inv = Invalidation.create(1);
    expect(inv.publish(0, 1, 1, true)).toBe(-1);
    expect(inv.gen(0)).toBe(0);
    expect(inv.publish(0, 1, 1, false)).toBe(1);
    expect(inv.gen(0)).toBe(1);
  });

  it('flushes the whole IOTLB when the device fell more than a ring behind', () => {
    const inv = Invalidation.create(1);
    const tlb = filled([1, 2, 3]);
    for (let i = 0; i <= INVALIDATION_RING; i++) inv.publish(0, 100 + i, 1, false);
    const flushes = tlb.flushes;
    inv.apply(0, 0, tlb);
    expect(tlb.occupancy()).toBe(0);
    expect(tlb.flushes).toBe(flushes + 1);
  });

  it('keeps domains apart', () => {
    const inv = Invalidation.create(2);
    const tlb = filled([7]);
    inv.publish(1, 7, 1, false);
    inv.apply(0, 0, tlb);
    expect(tlb.find(7)).toBeGreaterThanOrEqual(0);
  });
});

describe('device epochs', () => {
  it('compares generations across the 30-bit wrap', () => {
    expect(genAtLeast(5, 3)).toBe(true);
    expect(genAtLeast(3, 5)).toBe(false);
    expect(genAtLeast(1, 0x3fffffff)).toBe(true);
  });

  it('does not wait for an idle device', () => {
    const e = DeviceEpochs.create(4);
    const d = e.claim();
    e.enter(d, 0);
    e.exit(d, 0);
    e.waitFor(d, 1); // would block forever if it waited
    expect(e.isBusy(d)).toBe(false);
  });

  it('does not wait for a busy device that already saw the generation', () => {
    const e = DeviceEpochs.create(4);
    const d = e.claim();
    e.enter(d, 0);
    e.advance(d, 3);
    e.waitFor(d, 3);
    expect(e.isBusy(d)).toBe(true);
  });

  it('never waits for a device marked dead', () => {
    const e = DeviceEpochs.create(4);
    const d = e.claim();
    e.enter(d, 0);
    e.markDead(d);
    e.waitFor(d, 1);
    expect(e.isBusy(d)).toBe(false);
  });

  it('gives ENOSPC when every device slot is taken', () => {
    const e = DeviceEpochs.create(2);
    e.claim();
    e.claim();
    expect(() => e.claim()).toThrow(/ENOSPC/);
  });
});
