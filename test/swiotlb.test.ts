import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { GiB, MiB, KiB, pa as toPa } from '../src/addresses.js';
import { DmaError } from '../src/errors.js';
import { GuestRam, type RamBuffer } from '../src/memory/guest-ram.js';
import type { AllocOptions } from '../src/memory/frame-allocator.js';
import {
  IO_TLB_SEGSIZE,
  IO_TLB_SIZE,
  SWIOTLB_MAX_MAPPING,
  Swiotlb,
  type BounceDirection,
  type SwiotlbDevice,
} from '../src/dma/swiotlb.js';
import { pattern, same } from './support.js';

// One RAM for the file: 64 MiB at 0 and 64 MiB at 4 GiB. Every test gives back what it took.
const ram = GuestRam.create();
const HIGH = 4 * GiB; // original buffers live up here, out of a 32-bit device's reach
const dev32: SwiotlbDevice = { bdf: '00:03.0', dmaMaskBits: 32 };
const pools: Swiotlb[] = [];

function pool(opts: Parameters<typeof Swiotlb.create>[1] = {}): Swiotlb {
  const p = Swiotlb.create(ram, { homeArea: 0, ...opts });
  pools.push(p);
  return p;
}

function codeOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (e instanceof DmaError) return e.code;
    throw e;
  }
  return 'no error';
}

const bufs: RamBuffer[] = [];
/** RAM for a test, given back before the next one even if the test failed. */
function take(size: number, options: AllocOptions): RamBuffer {
  const b = ram.alloc(size, options);
  bufs.push(b);
  return b;
}

function cleanup(): void {
  for (const p of pools.splice(0)) p.destroy();
  for (const b of bufs.splice(0)) ram.free(b);
}

beforeEach(() => {
  cleanup();
  expect(ram.pagesInUse()).toBe(0);
});

afterAll(cleanup);

describe('SWIOTLB pool', () => {
  it('sits in the lowest free RAM below 4 GiB (never page 0), page aligned, zeroed, and destroy gives it back', () => {
    ram.fill(0, 2 * MiB, 0xee);
    const p = pool({ size: 1 * MiB });
    expect(p.start).toBe(4096); // page 0 stays out: no bounced mapping gets DMA address 0
    expect(p.end).toBe(1 * MiB + 4096);
    expect(p.nslots).toBe(512);
    expect(ram.read(p.start, 1 * MiB).every((b) => b === 0)).toBe(true);
    expect(ram.pagesInUse()).toBe(256);
    // With low RAM already taken, the next pool goes just above it.
    const q = pool({ size: 256 * KiB });
    const qs = 1 * MiB + 4096;
    expect(q.start).toBe(qs);
    expect(q.isSwiotlbBuffer(qs)).toBe(true);
    expect(q.isSwiotlbBuffer(qs + 256 * KiB)).toBe(false);
    expect(p.isSwiotlbBuffer(qs)).toBe(false);
    p.destroy();
    q.destroy();
    pools.length = 0;
    expect(ram.pagesInUse()).toBe(0);
    q.destroy(); // idempotent
    expect(ram.pagesInUse()).toBe(0);
  });

  it('rounds like Linux: whole 256 KiB segments, a power of two of areas, at most one per segment', () => {
    const a = pool({ size: 100 * KiB, areas: 4 });
    expect([a.nslots, a.nareas, a.slotsPerArea]).toEqual([128, 1, 128]);
    const b = pool({ size: 6 * 256 * KiB, areas: 3 }); // 3 → 4 areas, 6 → 8 segments
    expect([b.nslots, b.nareas, b.slotsPerArea]).toEqual([8 * 128, 4, 256]);
    const c = pool(); // the default: 4 MiB in 4 areas
    expect([c.nslots, c.nareas, c.end - c.start]).toEqual([2048, 4, 4 * MiB]);
    expect(c.stats()).toMatchObject({ totalSlots: 2048, slotsInUse: 0, liveMappings: 0, bouncedBytes: 0 });
  });

  it('refuses a pool that does not fit below its limit, and bad options', () => {
    expect(codeOf(() => pool({ size: 1 * MiB, limit: 512 * KiB }))).toBe('ENOMEM');
    expect(codeOf(() => pool({ size: 0 }))).toBe('EINVAL');
    expect(codeOf(() => pool({ areas: 0 }))).toBe('EINVAL');
    expect(ram.pagesInUse()).toBe(0);
  });

  it('attaches from a structured-cloned handle and sees the same state', () => {
    const p = pool({ size: 512 * KiB, areas: 2 });
    const h = structuredClone(p.handle);
    const other = Swiotlb.attach(GuestRam.attach(structuredClone(ram.handle)), h, { homeArea: 1 });
    const buf = ram.alloc(8 * KiB, { above: HIGH });
    ram.write(buf.pa, pattern(8 * KiB, 1));
    const t = other.map(dev32, buf.pa, 8 * KiB, 'to-device');
    expect(other.lookup(t)?.area).toBe(1); // its home area
    expect(p.stats().slotsInUse).toBe(4);
    expect(p.lookup(t)).toMatchObject({ origAddr: buf.pa, size: 8 * KiB, dir: 'to-device' });
    expect(same(ram.read(t, 8 * KiB), pattern(8 * KiB, 1))).toBe(true);
    p.unmap(t, 8 * KiB, 'to-device');
    expect(other.stats().slotsInUse).toBe(0);
    ram.free(buf);
  });
});

describe('SWIOTLB copies', () => {
  let p: Swiotlb;
  let buf: { pa: ReturnType<typeof toPa>; size: number };
  const LEN = 10_000;
  beforeEach(() => {
    p = pool({ size: 1 * MiB, areas: 2 });
    buf = ram.alloc(64 * KiB, { above: HIGH });
  });
  afterEach(() => ram.free(buf));

  it('to-device: the data is in the slot after map; syncForDevice pushes later CPU writes', () => {
    const pa = buf.pa + 100;
    ram.write(pa, pattern(LEN, 2));
    const t = p.map(dev32, pa, LEN, 'to-device');
    expect(t).toBeLessThan(2 ** 32);
    expect(same(ram.read(t, LEN), pattern(LEN, 2))).toBe(true);
    ram.write(pa, pattern(LEN, 3)); // the CPU writes again
    expect(same(ram.read(t, LEN), pattern(LEN, 2))).toBe(true); // the slot did not see it
    p.syncForDevice(t, LEN, 'to-device');
    expect(same(ram.read(t, LEN), pattern(LEN, 3))).toBe(true);
    // syncForCpu of a to-device mapping copies nothing back
    ram.write(t, pattern(LEN, 4));
    p.syncForCpu(t, LEN, 'to-device');
    p.unmap(t, LEN, 'to-device');
    expect(same(ram.read(pa, LEN), pattern(LEN, 3))).toBe(true);
    expect(p.stats()).toMatchObject({ bouncedBytes: 2 * LEN, bytesToDevice: 2 * LEN, bytesFromDevice: 0, slotsInUse: 0 });
  });

  it('from-device: what the device writes reaches the original only on syncForCpu (partial ranges too) and unmap', () => {
    const pa = buf.pa + 4096;
    ram.write(pa, pattern(LEN, 5));
    const t = p.map(dev32, pa, LEN, 'from-device');
    // current Linux copies the original in on map for every direction (see the info-leak test)
    expect(same(ram.read(t, LEN), pattern(LEN, 5))).toBe(true);
    ram.write(t, pattern(LEN, 6)); // "the device" writes the slot
    expect(same(ram.read(pa, LEN), pattern(LEN, 5))).toBe(true);
    p.syncForCpu(t + 1000, 500, 'from-device'); // a part of it
    const now = ram.read(pa, LEN);
    expect(same(now.subarray(1000, 1500), pattern(LEN, 6).subarray(1000, 1500))).toBe(true);
    expect(same(now.subarray(0, 1000), pattern(LEN, 5).subarray(0, 1000))).toBe(true);
    expect(same(now.subarray(1500), pattern(LEN, 5).subarray(1500))).toBe(true);
    // syncForDevice of a from-device mapping copies nothing into the slot
    p.syncForDevice(t, LEN, 'from-device');
    expect(same(ram.read(t, LEN), pattern(LEN, 6))).toBe(true);
    p.unmap(t, LEN, 'from-device');
    expect(same(ram.read(pa, LEN), pattern(LEN, 6))).toBe(true);
    expect(p.stats()).toMatchObject({ bouncedBytes: LEN + 500 + LEN, bytesToDevice: LEN, bytesFromDevice: 500 + LEN });
  });

  it('bidirectional: both ways', () => {
    const pa = buf.pa;
    ram.write(pa, pattern(LEN, 7));
    const t = p.map(dev32, pa, LEN, 'bidirectional');
    expect(same(ram.read(t, LEN), pattern(LEN, 7))).toBe(true);
    ram.write(t, pattern(LEN, 8));
    p.syncForCpu(t, LEN, 'bidirectional');
    expect(same(ram.read(pa, LEN), pattern(LEN, 8))).toBe(true);
    ram.write(pa, pattern(LEN, 9));
    p.syncForDevice(t, LEN, 'bidirectional');
    expect(same(ram.read(t, LEN), pattern(LEN, 9))).toBe(true);
    ram.write(t + 10, [1, 2, 3]);
    p.unmap(t, LEN, 'bidirectional');
    const want = pattern(LEN, 9);
    want.set([1, 2, 3], 10);
    expect(same(ram.read(pa, LEN), want)).toBe(true);
    expect(p.stats().bouncedBytes).toBe(4 * LEN);
  });

  it('no info leak: a device writing part of a from-device buffer leaves the rest as the original, not the last user of the slot', () => {
    const q = pool({ size: 256 * KiB, areas: 1 });
    const secrets = ram.alloc(SWIOTLB_MAX_MAPPING, { above: HIGH });
    ram.write(secrets.pa, pattern(SWIOTLB_MAX_MAPPING, 10));
    const t0 = q.map({ bdf: '00:04.0', dmaMaskBits: 32 }, secrets.pa, SWIOTLB_MAX_MAPPING, 'to-device');
    q.unmap(t0, SWIOTLB_MAX_MAPPING, 'to-device'); // every slot still holds another device's data
    ram.free(secrets);
    const mine = pattern(4096, 11);
    ram.write(buf.pa, mine);
    const t = q.map(dev32, buf.pa, 4096, 'from-device');
    ram.write(t, [0xaa, 0xbb]); // the device writes 2 bytes only
    q.unmap(t, 4096, 'from-device');
    const got = ram.read(buf.pa, 4096);
    expect([got[0], got[1]]).toEqual([0xaa, 0xbb]);
    expect(same(got.subarray(2), mine.subarray(2))).toBe(true);
  });

  it('bounces an original that spans two RAM regions', () => {
    const two = GuestRam.create([
      { base: 0, size: 4 * MiB },
      { base: 4 * MiB, size: 4 * MiB },
    ]);
    const q = Swiotlb.create(two, { size: 256 * KiB, areas: 1 });
    const pa = 4 * MiB - 3000;
    two.write(pa, pattern(6000, 12));
    const t = q.map(dev32, pa, 6000, 'bidirectional');
    expect(same(two.read(t, 6000), pattern(6000, 12))).toBe(true);
    two.write(t, pattern(6000, 13));
    q.unmap(t, 6000, 'bidirectional');
    expect(same(two.read(pa, 6000), pattern(6000, 13))).toBe(true);
    q.destroy();
    expect(two.pagesInUse()).toBe(0);
  });
});

describe('SWIOTLB alignment', () => {
  it('keeps the bits under min_align_mask, padding with whole slots when they are ≥ 2 KiB', () => {
    const p = pool({ size: 1 * MiB, areas: 1 });
    const nvme: SwiotlbDevice = { bdf: '01:00.0', dmaMaskBits: 32, minAlignMask: 0xfff };
    const pa = HIGH + 0x12900;
    const t = p.map(nvme, pa, 100, 'to-device');
    expect(t & 0xfff).toBe(0x900);
    expect(p.lookup(t)).toMatchObject({ padSlots: 0, nslots: 1 }); // bit 11 comes from the slot choice
    // With an allocation alignment of 16 KiB the 0x900 offset is padding: one slot before the head.
    const t2 = p.map(nvme, pa, 100, 'to-device', 0x3fff);
    expect(t2 & 0xfff).toBe(0x900);
    const info = p.lookup(t2)!;
    expect(info.padSlots).toBe(1);
    expect((p.start + info.firstSlot * IO_TLB_SIZE) % (16 * KiB)).toBe(0);
    expect(info.nslots).toBe(8); // the size is rounded to the 16 KiB alignment
    expect(p.stats().slotsInUse).toBe(9);
    p.unmap(t2, 100, 'to-device');
    p.unmap(t, 100, 'to-device');
    expect(p.stats().slotsInUse).toBe(0);
  });

  it('page-aligns mappings of ≥ 4 KiB when no alignment is asked, slot-aligns smaller ones', () => {
    const p = pool({ size: 1 * MiB, areas: 1 });
    const small = p.map(dev32, HIGH + 123, 100, 'to-device'); // takes slot 0
    const big = p.map(dev32, HIGH + 123, 4096, 'to-device');
    expect(small % IO_TLB_SIZE).toBe(0);
    expect(big % 4096).toBe(0);
    expect(big).toBe(p.start + 4096); // slot 1 skipped: not page aligned
    const next = p.map(dev32, HIGH, 100, 'to-device');
    expect(next).toBe(p.start + 2 * 4096); // the search goes on after the last allocation, as Linux's area index
    for (const [t, n] of [[small, 100], [big, 4096], [next, 100]] as const) p.unmap(t, n, 'to-device');
    expect(p.maxMappingSize({ minAlignMask: 0xfff })).toBe(SWIOTLB_MAX_MAPPING - 4096);
  });

  it('never crosses the device segment boundary', () => {
    const p = pool({ size: 1 * MiB, areas: 1 });
    const d: SwiotlbDevice = { bdf: '00:05.0', dmaMaskBits: 32, segmentBoundaryMask: 0x7fff }; // 32 KiB lines
    const a = p.map(d, HIGH, 30 * KiB, 'to-device');
    const b = p.map(d, HIGH, 4 * KiB, 'to-device');
    const c = p.map(d, HIGH, 30 * KiB, 'to-device'); // would cross at 64 KiB if put right after b
    for (const [t, n] of [[a, 30 * KiB], [b, 4 * KiB], [c, 30 * KiB]] as const) {
      expect(Math.floor(t / (32 * KiB))).toBe(Math.floor((t + n - 1) / (32 * KiB)));
    }
    p.unmap(a, 30 * KiB, 'to-device');
    p.unmap(b, 4 * KiB, 'to-device');
    p.unmap(c, 30 * KiB, 'to-device');
    // PCI's default (4 GiB lines) and wider masks take any slot of a pool below 4 GiB.
    for (const mask of [0xffffffff, 2 ** 48 - 1, 2 ** 64 - 1]) {
      const t = p.map({ ...d, segmentBoundaryMask: mask }, HIGH, SWIOTLB_MAX_MAPPING, 'to-device');
      p.unmap(t, SWIOTLB_MAX_MAPPING, 'to-device');
    }
    expect(codeOf(() => p.map({ ...d, segmentBoundaryMask: 0x1000 }, HIGH, 16, 'to-device'))).toBe('EINVAL');
  });
});

describe('SWIOTLB areas', () => {
  it('a thread starts at its own area and moves on to the others only when it is full', () => {
    const p = pool({ size: 1 * MiB, areas: 4, homeArea: 2 }); // 4 areas of one segment each
    const maps: number[] = [];
    for (let i = 0; i < 4; i++) maps.push(p.map(dev32, HIGH, SWIOTLB_MAX_MAPPING, 'to-device'));
    expect(maps.map((t) => p.lookup(t)!.area)).toEqual([2, 3, 0, 1]);
    expect(p.stats().areaUsed).toEqual([128, 128, 128, 128]);
    const e = (() => {
      try {
        p.map(dev32, HIGH, 1, 'to-device');
      } catch (err) {
        return err as DmaError;
      }
      throw new Error('mapped into a full pool');
    })();
    expect(e.code).toBe('ENOSPC');
    expect(e.message).toMatch(/00:03\.0/);
    expect(e.message).toMatch(/512 of 512 slots in use/);
    expect(e.message).toMatch(/1 bytes/);
    expect(p.stats()).toMatchObject({ full: 1, slotsInUse: 512, highWater: 512, liveMappings: 4 });
    for (const t of maps) p.unmap(t, SWIOTLB_MAX_MAPPING, 'to-device');
    expect(p.stats()).toMatchObject({ slotsInUse: 0, liveMappings: 0, highWater: 512, areaUsed: [0, 0, 0, 0] });
  });
});

describe('SWIOTLB bad input', () => {
  it('gives each misuse its stable code and changes nothing', () => {
    const p = pool({ size: 512 * KiB, areas: 2 });
    const buf = take(8 * KiB, { above: HIGH });
    const t = p.map(dev32, buf.pa, 5000, 'bidirectional');
    const before = JSON.stringify(p.stats());
    const cases: Array<[string, () => unknown, RegExp]> = [
      ['EINVAL', () => p.map(dev32, buf.pa, 0, 'to-device'), /0 bytes.*00:03\.0/],
      ['EINVAL', () => p.map(dev32, buf.pa, SWIOTLB_MAX_MAPPING + 1, 'to-device'), /1 to 262144 bytes/],
      ['EINVAL', () => p.map({ ...dev32, minAlignMask: 0xfff }, HIGH + 0x7ff, SWIOTLB_MAX_MAPPING, 'to-device'), /129 slots.*max mapping size.*258048/],
      ['EINVAL', () => p.map(dev32, buf.pa, 16, 'sideways' as BounceDirection), /direction/],
      ['EINVAL', () => p.map({ ...dev32, minAlignMask: 0x1000 }, buf.pa, 16, 'to-device'), /min align mask/],
      ['EINVAL', () => p.map(dev32, p.start + 4096, 16, 'to-device'), /overlaps the bounce pool/],
      ['EFAULT', () => p.map(dev32, 200 * MiB, 16, 'to-device'), /not all guest RAM/],
      ['ERANGE', () => p.map({ bdf: '00:06.0', dmaMaskBits: 12 }, buf.pa, 8192, 'to-device'), /00:06\.0.*12-bit DMA mask/],
      ['EINVAL', () => p.unmap(t + 1, 5000, 'bidirectional'), /not the start of a mapping/],
      ['EINVAL', () => p.unmap(t, 4999, 'bidirectional'), /mapped with size 5000/],
      ['EINVAL', () => p.unmap(t, 5000, 'to-device'), /mapped bidirectional/],
      ['EINVAL', () => p.unmap(t, 5000, 'bidirectional', { bdf: '00:07.0' }), /mapped for device 0000:00:03\.0/],
      ['EINVAL', () => p.unmap(t + 4 * IO_TLB_SIZE, 16, 'bidirectional'), /no live mapping/],
      ['EINVAL', () => p.unmap(buf.pa, 16, 'bidirectional'), /not an address in the bounce pool/],
      ['EINVAL', () => p.syncForCpu(t + 4990, 11, 'bidirectional', dev32), /00:03\.0: outside the mapping/],
      ['EINVAL', () => p.syncForCpu(t, 0, 'bidirectional'), /length/],
      ['EINVAL', () => p.syncForDevice(t - 1, 2, 'bidirectional'), /./],
      ['EINVAL', () => p.origAddr(t + 5000), /outside the mapping/],
    ];
    for (const [code, f, msg] of cases) {
      let err: unknown = null;
      try {
        f();
      } catch (e) {
        err = e;
      }
      expect(err, String(f)).toBeInstanceOf(DmaError);
      expect((err as DmaError).code, (err as Error).message).toBe(code);
      expect((err as Error).message).toMatch(msg);
    }
    expect(JSON.stringify(p.stats())).toBe(before);
    expect(p.origAddr(t + 17)).toBe(buf.pa + 17);
    p.unmap(t, 5000, 'bidirectional');
    expect(codeOf(() => p.unmap(t, 5000, 'bidirectional'))).toBe('EINVAL'); // double unmap
    expect(codeOf(() => p.syncForCpu(t, 16, 'bidirectional'))).toBe('EINVAL'); // sync after unmap
    expect(p.stats().slotsInUse).toBe(0);
  });

  it('maps only slots the device reaches: ERANGE when the only free ones are beyond its mask', () => {
    take(1792 * KiB, { below: 2 * MiB }); // the pool will sit at [1.75 MiB, 2.25 MiB)
    const p = pool({ size: 512 * KiB, areas: 1 });
    expect(p.start).toBe(1792 * KiB);
    const d20: SwiotlbDevice = { bdf: '00:09.0', dmaMaskBits: 20 }; // reaches [0, 1 MiB): none of the pool
    const d21: SwiotlbDevice = { bdf: '00:08.0', dmaMaskBits: 21 }; // reaches [0, 2 MiB): the first segment
    expect(codeOf(() => p.map(d20, HIGH, 16, 'to-device'))).toBe('ERANGE');
    const a = p.map(dev32, HIGH, SWIOTLB_MAX_MAPPING, 'to-device'); // fills the first segment
    expect(a).toBe(p.start);
    const before = JSON.stringify(p.stats());
    expect(codeOf(() => p.map(d21, HIGH, 16, 'to-device'))).toBe('ERANGE'); // free slots, but beyond 2 MiB
    expect(JSON.stringify(p.stats())).toBe(before);
    p.unmap(a, SWIOTLB_MAX_MAPPING, 'to-device');
    const b = p.map(d21, HIGH, 6000, 'to-device');
    expect(b + 6000).toBeLessThanOrEqual(2 * MiB);
    p.unmap(b, 6000, 'to-device');
  });

  it('destroy drops live mappings and says how many; then every call is ESHUTDOWN', () => {
    const p = pool({ size: 256 * KiB, areas: 1 });
    const t = p.map(dev32, HIGH, 16, 'to-device');
    expect(p.destroy()).toBe(1);
    expect(p.destroy()).toBe(0);
    expect(codeOf(() => p.unmap(t, 16, 'to-device'))).toBe('ESHUTDOWN');
    expect(codeOf(() => p.map(dev32, HIGH, 16, 'to-device'))).toBe('ESHUTDOWN');
    expect(codeOf(() => p.syncForCpu(t, 16, 'to-device'))).toBe('ESHUTDOWN');
    expect(ram.pagesInUse()).toBe(0);
  });
});

// ─── property test against a reference model ────────────────────────────────────────────────

const MIN_ALIGN = [0, 0x7ff, 0xfff, 0x1fff, 0xffff];
const ALLOC_ALIGN = [0, 0, 0x7ff, 0xfff, 0x3fff];
const DIRS: BounceDirection[] = ['to-device', 'from-device', 'bidirectional'];
const ORIG_SPAN = 4 * MiB;

interface ModelMapping {
  tlb: number;
  len: number;
  dir: BounceDirection;
  first: number;
  n: number;
}

/** Linux's placement rules, written out for the model: which first slots may hold a request. */
function rules(pa: number, len: number, minAlign: number, allocAlign: number) {
  const offset = pa & minAlign & (allocAlign | (IO_TLB_SIZE - 1));
  const size = Math.ceil((len + offset) / (allocAlign + 1)) * (allocAlign + 1);
  const n = Math.ceil(size / IO_TLB_SIZE);
  const alignEff = (allocAlign || (minAlign === 0 && size >= 4096 ? 4095 : 0)) | (IO_TLB_SIZE - 1);
  const iotlbEff = minAlign & ~alignEff;
  const fits = (addr: number) => (addr & alignEff) === 0 && (addr & iotlbEff) === (pa & iotlbEff);
  return { offset, n, fits };
}

describe('SWIOTLB against a reference model', () => {
  it('live mappings never overlap or cross a segment, keep their alignment, count right, and ENOSPC only when nothing fits', () => {
    const orig = ram.alloc(ORIG_SPAN, { above: HIGH });
    ram.write(orig.pa, pattern(ORIG_SPAN, 42));
    const op = fc.oneof(
      {
        weight: 3,
        arbitrary: fc.record({
          kind: fc.constant('map' as const),
          len: fc.oneof(fc.integer({ min: 1, max: 6000 }), fc.integer({ min: 1, max: SWIOTLB_MAX_MAPPING })),
          at: fc.nat(),
          minAlign: fc.constantFrom(...MIN_ALIGN),
          allocAlign: fc.constantFrom(...ALLOC_ALIGN),
          dir: fc.constantFrom(...DIRS),
        }),
      },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('unmap' as const), pick: fc.nat() }) },
    );
    let enospcSeen = 0;
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), fc.constantFrom(1, 2, 4), (ops, areas) => {
        const p = Swiotlb.create(ram, { size: 1 * MiB, areas, homeArea: 0 });
        try {
          const owner = new Int32Array(p.nslots).fill(-1);
          const live: ModelMapping[] = [];
          let used = 0;
          let bounced = 0;
          for (const o of ops) {
            if (o.kind === 'unmap') {
              if (live.length === 0) continue;
              const [m] = live.splice(o.pick % live.length, 1);
              p.unmap(m.tlb, m.len, m.dir);
              if (m.dir !== 'to-device') bounced += m.len;
              owner.fill(-1, m.first, m.first + m.n);
              used -= m.n;
            } else {
              const pa = orig.pa + (o.at % (ORIG_SPAN - o.len + 1));
              const d: SwiotlbDevice = { bdf: '00:03.0', dmaMaskBits: 32, minAlignMask: o.minAlign };
              const r = rules(pa, o.len, o.minAlign, o.allocAlign);
              let t: number;
              try {
                t = p.map(d, pa, o.len, o.dir, o.allocAlign);
              } catch (e) {
                const code = (e as DmaError).code;
                if (r.n > IO_TLB_SEGSIZE) {
                  expect(code).toBe('EINVAL');
                  continue;
                }
                expect(code, (e as Error).message).toBe('ENOSPC');
                enospcSeen++;
                // Not silently wrong: no placement obeying the rules is free.
                for (let f = 0; f + r.n <= p.nslots; f++) {
                  if (Math.floor(f / IO_TLB_SEGSIZE) !== Math.floor((f + r.n - 1) / IO_TLB_SEGSIZE)) continue;
                  if (!r.fits(p.start + f * IO_TLB_SIZE)) continue;
                  let free = true;
                  for (let i = f; i < f + r.n && free; i++) free = owner[i] < 0;
                  expect(free, `slots ${f}..${f + r.n - 1} were free for ${o.len} bytes`).toBe(false);
                }
                continue;
              }
              expect(r.n).toBeLessThanOrEqual(IO_TLB_SEGSIZE);
              const first = (t - r.offset - p.start) / IO_TLB_SIZE;
              expect(Number.isInteger(first)).toBe(true);
              expect(r.fits(p.start + first * IO_TLB_SIZE)).toBe(true);
              expect(t & o.minAlign).toBe(pa & o.minAlign);
              if (o.allocAlign === 0 && o.minAlign === 0 && o.len >= 4096) expect(t % 4096).toBe(0);
              expect(Math.floor(first / IO_TLB_SEGSIZE)).toBe(Math.floor((first + r.n - 1) / IO_TLB_SEGSIZE));
              for (let i = first; i < first + r.n; i++) {
                expect(owner[i], `slot ${i} handed out twice`).toBe(-1);
                owner[i] = live.length;
              }
              expect(t + o.len).toBeLessThanOrEqual(p.start + (first + r.n) * IO_TLB_SIZE);
              expect(p.lookup(t)).toMatchObject({ tlbAddr: t, size: o.len, origAddr: pa, dir: o.dir, firstSlot: first, nslots: r.n });
              expect(same(ram.read(t, o.len), ram.read(pa, o.len))).toBe(true);
              bounced += o.len;
              live.push({ tlb: t, len: o.len, dir: o.dir, first, n: r.n });
              used += r.n;
            }
            const s = p.stats();
            expect(s.slotsInUse).toBe(used);
            expect(s.liveMappings).toBe(live.length);
            expect(s.bouncedBytes).toBe(bounced);
            expect(s.areaUsed.reduce((x, y) => x + y, 0)).toBe(used);
          }
          for (const m of live.splice(0)) p.unmap(m.tlb, m.len, m.dir);
          expect(p.stats()).toMatchObject({ slotsInUse: 0, liveMappings: 0, areaUsed: new Array(p.nareas).fill(0) });
          // The free runs merged back: the whole pool maps as 128-slot mappings again.
          const whole: number[] = [];
          for (let k = 0; k < p.nslots / IO_TLB_SEGSIZE; k++) whole.push(p.map(dev32, orig.pa, SWIOTLB_MAX_MAPPING, 'to-device'));
          expect(codeOf(() => p.map(dev32, orig.pa, 1, 'to-device'))).toBe('ENOSPC');
          for (const t of whole) p.unmap(t, SWIOTLB_MAX_MAPPING, 'to-device');
          expect(p.stats().slotsInUse).toBe(0);
        } finally {
          p.destroy();
        }
      }),
      { numRuns: 120 },
    );
    expect(enospcSeen).toBeGreaterThan(0); // the runs did reach a full pool
    ram.free(orig);
  });
});
