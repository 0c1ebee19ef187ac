import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { GuestRam } from '../src/memory/guest-ram.js';
import { DmaError } from '../src/errors.js';
import { GiB, MiB, PAGE_SIZE } from '../src/addresses.js';

const ram2 = () =>
  GuestRam.create([
    { base: 0, size: 4 * MiB },
    { base: 4 * GiB, size: 4 * MiB },
  ]);

describe('guest RAM', () => {
  it('reads back what was written in each region', () => {
    const ram = ram2();
    ram.write(0x1000, [1, 2, 3]);
    ram.write(4 * GiB + 0x2000, [9, 8]);
    expect([...ram.read(0x1000, 3)]).toEqual([1, 2, 3]);
    expect([...ram.read(4 * GiB + 0x2000, 2)]).toEqual([9, 8]);
  });

  it('refuses a read outside every region with EFAULT naming the address', () => {
    const ram = ram2();
    expect(() => ram.read(4 * MiB, 1)).toThrow(DmaError);
    try {
      ram.read(4 * MiB - 2, 4);
    } catch (e) {
      expect((e as DmaError).code).toBe('EFAULT');
      expect((e as DmaError).message).toContain('0x00400000');
    }
  });

  it('refuses a write straddling the end of a region and leaves RAM unchanged', () => {
    const ram = ram2();
    expect(() => ram.write(4 * MiB - 2, [1, 2, 3, 4])).toThrow(/EFAULT/);
    expect([...ram.read(4 * MiB - 2, 2)]).toEqual([0, 0]);
  });

  it('rejects overlapping, unaligned and empty regions', () => {
    expect(() => GuestRam.create([{ base: 0, size: 8192 }, { base: 4096, size: 4096 }])).toThrow(/overlaps/);
    expect(() => GuestRam.create([{ base: 100, size: 4096 }])).toThrow(/EINVAL.*4 KiB/);
    expect(() => GuestRam.create([{ base: 0, size: 0 }])).toThrow(/empty/);
    expect(() => GuestRam.create([])).toThrow(/EINVAL/);
  });

  it('maps physical addresses to buffer offsets region by region', () => {
    const ram = ram2();
    expect(ram.offsetOf(4 * GiB, 4096)).toBe(4 * MiB);
    expect(ram.offsetOf(4 * MiB - 4096, 8192)).toBe(-1);
    expect(ram.isRam(4 * GiB + 4 * MiB, 1)).toBe(false);
  });
});

describe('page-frame allocator', () => {
  it('honours below and above limits', () => {
    const ram = ram2();
    const lo = ram.alloc(8192, { below: 4 * GiB });
    const hi = ram.alloc(8192, { above: 4 * GiB });
    expect(lo.pa + lo.size).toBeLessThanOrEqual(4 * GiB);
    expect(hi.pa).toBeGreaterThanOrEqual(4 * GiB);
  });

  it('serves unconstrained requests from the highest region first', () => {
    const ram = ram2();
    expect(ram.alloc(4096).pa).toBeGreaterThanOrEqual(4 * GiB);
  });

  it('aligns to the requested power of two', () => {
    const ram = ram2();
    ram.alloc(4096, { below: 4 * GiB });
    const b = ram.alloc(4096, { below: 4 * GiB, align: 64 * 1024 });
    expect(b.pa % (64 * 1024)).toBe(0);
  });

  it('gives ENOMEM when nothing fits and stays usable', () => {
    const ram = ram2();
    expect(() => ram.alloc(5 * MiB)).toThrow(expect.objectContaining({ code: 'ENOMEM' }));
    expect(ram.alloc(4 * MiB).size).toBe(4 * MiB);
  });

  it('refuses a double free without changing anything', () => {
    const ram = ram2();
    const b = ram.alloc(8192);
    ram.free(b);
    expect(() => ram.free(b)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(ram.pagesInUse()).toBe(0);
  });

  it('rejects bad sizes, alignments and limits with EINVAL', () => {
    const ram = ram2();
    for (const [size, opt] of [
      [0, {}],
      [-1, {}],
      [1.5, {}],
      [4096, { align: 3000 }],
      [4096, { align: 2048 }],
      [4096, { below: -1 }],
    ] as const) {
      expect(() => ram.alloc(size, opt)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    }
  });

  it('never hands out overlapping buffers and keeps count (model check)', () => {
    const op = fc.oneof(
      fc.record({ kind: fc.constant('alloc' as const), pages: fc.integer({ min: 1, max: 300 }), where: fc.constantFrom('any', 'low', 'high'), align: fc.constantFrom(1, 2, 16) }),
      fc.record({ kind: fc.constant('free' as const), pick: fc.nat() }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const ram = ram2();
        const live: { pa: number; size: number }[] = [];
        for (const o of ops) {
          if (o.kind === 'alloc') {
            const opts = o.where === 'low' ? { below: 4 * GiB } : o.where === 'high' ? { above: 4 * GiB } : {};
            try {
              const b = ram.alloc(o.pages * PAGE_SIZE, { ...opts, align: o.align * PAGE_SIZE });
              for (const x of live) expect(b.pa + b.size <= x.pa || x.pa + x.size <= b.pa).toBe(true);
              expect(b.pa % (o.align * PAGE_SIZE)).toBe(0);
              if (o.where === 'low') expect(b.pa + b.size).toBeLessThanOrEqual(4 * GiB);
              if (o.where === 'high') expect(b.pa).toBeGreaterThanOrEqual(4 * GiB);
              live.push(b);
            } catch (e) {
              expect((e as DmaError).code).toBe('ENOMEM');
            }
          } else if (live.length > 0) {
            const [b] = live.splice(o.pick % live.length, 1);
            ram.free(b as never);
          }
          expect(ram.pagesInUse()).toBe(live.reduce((a, b) => a + Math.ceil(b.size / PAGE_SIZE), 0));
        }
      }),
      { numRuns: 60 },
    );
  });
});

describe('RAM copies', () => {
  const ref = (buf: Uint8Array, dst: number, src: number, len: number) => {
    const tmp = buf.slice(src, src + len);
    buf.set(tmp, dst);
  };

  for (const backing of ['wasm', 'sab'] as const) {
    it(`copies like memmove at every relative alignment, overlapping or not (${backing} backing)`, () => {
      const ram = GuestRam.create([{ base: 0, size: 2 * MiB }], { backing });
      expect(ram.handle.memory !== null).toBe(backing === 'wasm');
      fc.assert(
        fc.property(fc.nat({ max: 1 << 20 }), fc.nat({ max: 1 << 20 }), fc.integer({ min: 1, max: 600 * 1024 }), fc.nat(), (src, dst, len, seed) => {
          const init = new Uint8Array(2 * MiB);
          for (let i = 0; i < init.length; i += 97) init[i] = (i * 31 + seed) & 255;
          ram.write(0, init);
          const model = init.slice();
          ram.copy(dst, src, len);
          ref(model, dst, src, len);
          const got = ram.read(0, 2 * MiB);
          expect(Buffer.compare(Buffer.from(got), Buffer.from(model))).toBe(0);
        }),
        { numRuns: 40 },
      );
    });

    it(`fills by buffer offset (${backing} backing)`, () => {
      const ram = GuestRam.create([{ base: 0, size: 1 * MiB }], { backing });
      ram.fillOffset(4093, 10, 0xab);
      expect([...ram.read(4092, 12)]).toEqual([0, ...new Array(10).fill(0xab), 0]);
    });
  }

  it('copies across the 1 GiB windows of RAM larger than 4 GiB', () => {
    // 5 GiB of shared memory: the host only commits the pages that are touched.
    const ram = GuestRam.create([{ base: 0, size: 5 * GiB }]);
    const src = 4 * GiB + 1 * GiB - 4096; // last page of the last window ...
    const dst = 1 * GiB - 100; // ... to a range straddling windows 0 and 1
    const bytes = new Uint8Array(4096).map((_, i) => (i * 13 + 5) & 255);
    ram.write(src, bytes);
    ram.copy(ram.offsetOf(dst, 4096), ram.offsetOf(src, 4096), 4096);
    expect(Buffer.from(ram.read(dst, 4096)).equals(Buffer.from(bytes))).toBe(true);
    ram.copy(ram.offsetOf(dst + 3, 4096), ram.offsetOf(dst, 4096), 4096); // misaligned and overlapping
    expect(Buffer.from(ram.read(dst + 3, 4096)).equals(Buffer.from(bytes))).toBe(true);
  });
});
