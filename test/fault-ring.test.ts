import { describe, it, expect } from 'vitest';
import { FaultRing, REASON_PERMISSION, REASON_NOT_PRESENT } from '../src/iommu/fault-ring.js';

describe('fault ring', () => {
  it('returns records oldest first with every field', () => {
    const r = FaultRing.create(8);
    r.record(0x18, 2 ** 40 + 0x1234, true, REASON_PERMISSION, 3);
    r.record(0x20, 0x5000, false, REASON_NOT_PRESENT, 1);
    expect(r.drain()).toEqual([
      { requesterId: 0x18, addr: 2 ** 40 + 0x1234, access: 'write', reason: 'permission', domain: 3 },
      { requesterId: 0x20, addr: 0x5000, access: 'read', reason: 'not-present', domain: 1 },
    ]);
    expect(r.drain()).toEqual([]);
  });

  it('counts records refused when full instead of losing them silently', () => {
    const r = FaultRing.create(4);
    let accepted = 0;
    for (let i = 0; i < 10; i++) if (r.record(1, i * 4096, false, REASON_NOT_PRESENT, 0)) accepted++;
    expect(accepted).toBe(4);
    expect(r.overflowed()).toBe(6);
    expect(r.drain().map((f) => f.addr)).toEqual([0, 4096, 8192, 12288]);
    expect(r.record(1, 0x9000, false, REASON_NOT_PRESENT, 0)).toBe(true);
    expect(r.drain()).toHaveLength(1);
  });

  it('is usable from another thread through its handle', () => {
    const r = FaultRing.create(16);
    const other = FaultRing.attach(structuredClone(r.handle));
    other.record(7, 0x1000, true, REASON_NOT_PRESENT, 2);
    expect(r.drain()[0]).toMatchObject({ requesterId: 7, access: 'write' });
  });

  it('rejects a bad capacity', () => {
    expect(() => FaultRing.create(0)).toThrow(/EINVAL/);
  });
});
