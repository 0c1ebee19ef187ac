/**
 * Property (issue 6, resource limits): random sequences of map / mapSg / allocCoherent / unmap /
 * RAM alloc on a machine whose IOVA space, page-table pool, bounce pool and RAM are tiny never
 * leave it unusable. Every operation either succeeds or fails with ENOSPC/ENOMEM changing nothing
 * (usage and PTEs as before); after everything is freed, usage is back to the baseline and one
 * map + device DMA works. One machine per kind serves every run, so what a run leaks, the next
 * run inherits.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { Machine, MiB, GiB, KiB, DmaError, dmaAddr, pa as physAddr, type Device, type DmaMapping, type DmaSgTable, type DmaCoherent, type RamBuffer } from '../src/index.js';
import { pattern, same } from './support.js';

const PAGE = 4096;

type Cmd =
  | { op: 'map'; pages: number; off: number; dir: 'to-device' | 'from-device' | 'bidirectional' }
  | { op: 'sg'; entries: Array<{ pages: number; off: number }>; dir: 'to-device' | 'from-device' }
  | { op: 'coherent'; pages: number }
  | { op: 'ram'; pages: number }
  | { op: 'free'; pick: number };

const dirs = ['to-device', 'from-device', 'bidirectional'] as const;
function commands(maxPages: number): fc.Arbitrary<Cmd[]> {
  const cmd: fc.Arbitrary<Cmd> = fc.oneof(
    fc.record({ op: fc.constant('map' as const), pages: fc.integer({ min: 1, max: maxPages }), off: fc.integer({ min: 0, max: 255 }), dir: fc.constantFrom(...dirs) }),
    fc.record({
      op: fc.constant('sg' as const),
      entries: fc.array(fc.record({ pages: fc.integer({ min: 1, max: Math.max(1, maxPages >> 2) }), off: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 5 }),
      dir: fc.constantFrom('to-device' as const, 'from-device' as const),
    }),
    fc.record({ op: fc.constant('coherent' as const), pages: fc.integer({ min: 1, max: 64 }) }),
    fc.record({ op: fc.constant('ram' as const), pages: fc.integer({ min: 1, max: 512 }) }),
    fc.record({ op: fc.constant('free' as const), pick: fc.nat() }),
    fc.record({ op: fc.constant('free' as const), pick: fc.nat() }),
  );
  return fc.array(cmd, { minLength: 1, maxLength: 40 });
}

function usage(m: Machine) {
  const s = m.stats();
  return {
    liveMappings: s.liveMappings,
    ramPagesInUse: s.ramPagesInUse,
    retiredTables: m.iommu.unit.pool.retiredCount(),
    bounceSlotsInUse: s.bounceSlotsInUse,
    iovaPagesInUse: s.iovaPagesInUse,
  };
}

function leaves(m: Machine, dev: Device): number {
  let n = 0;
  m.iommu.domainOf(dev)?.pt?.forEachMapping(() => n++);
  return n;
}

type Held =
  | { kind: 'map'; h: DmaMapping }
  | { kind: 'sg'; sg: DmaSgTable }
  | { kind: 'coherent'; c: DmaCoherent }
  | { kind: 'ram'; b: RamBuffer };

/**
 * Runs the commands; a failing one must be a DmaError with ENOSPC or ENOMEM that changed nothing.
 * `source` is RAM the maps take their buffers from (it is never freed).
 */
function run(m: Machine, dev: Device, source: RamBuffer, cmds: Cmd[], seen: Set<string>): Held[] {
  const held: Held[] = [];
  const at = (off: number, pages: number) => physAddr(source.pa + ((off * PAGE) % Math.max(PAGE, source.size - pages * PAGE)));
  for (const c of cmds) {
    const before = usage(m);
    const ptes = leaves(m, dev);
    try {
      if (c.op === 'map') {
        const len = Math.min(c.pages * PAGE, source.size);
        held.push({ kind: 'map', h: m.dma.mapSingle(dev, at(c.off, len / PAGE), len, c.dir) });
      } else if (c.op === 'sg') {
        const entries = c.entries.map((e) => ({ pa: at(e.off, e.pages), len: Math.min(e.pages * PAGE, source.size) }));
        held.push({ kind: 'sg', sg: m.dma.mapSg(dev, entries, c.dir) });
      } else if (c.op === 'coherent') {
        held.push({ kind: 'coherent', c: m.dma.allocCoherent(dev, c.pages * PAGE) });
      } else if (c.op === 'ram') {
        held.push({ kind: 'ram', b: m.ram.alloc(c.pages * PAGE) });
      } else if (held.length > 0) {
        release(m, dev, held.splice(c.pick % held.length, 1)[0]);
      }
    } catch (e) {
      expect(e).toBeInstanceOf(DmaError);
      expect(['ENOSPC', 'ENOMEM']).toContain((e as DmaError).code);
      seen.add(resourceOf(e as DmaError));
      expect(usage(m)).toEqual(before);
      expect(leaves(m, dev)).toBe(ptes);
    }
  }
  return held;
}

/** Which pool ran out, from the error's code and message. */
function resourceOf(e: DmaError): string {
  const msg = e.message;
  const r = msg.includes('page-table page') ? 'tables' : msg.includes('iova:') ? 'iova' : msg.includes('swiotlb:') ? 'bounce' : msg.includes('ram.alloc') ? 'ram' : msg;
  return `${e.code} ${r}`;
}

function release(m: Machine, dev: Device, x: Held): void {
  if (x.kind === 'map') m.dma.unmapSingle(dev, x.h);
  else if (x.kind === 'sg') m.dma.unmapSg(dev, x.sg);
  else if (x.kind === 'coherent') m.dma.freeCoherent(dev, x.c);
  else m.ram.free(x.b);
}

/** One map and a device copy through it, checked by the CPU. */
async function dmaWorks(m: Machine, dev: Device, above?: number): Promise<void> {
  const buf = m.ram.alloc(PAGE, above !== undefined ? { above } : {});
  const data = pattern(PAGE / 2, buf.pa);
  m.ram.write(buf.pa, data);
  const h = m.dma.mapSingle(dev, buf.pa, PAGE, 'bidirectional');
  expect(await dev.copy({ src: h.addr, dst: dmaAddr(h.addr + PAGE / 2), len: PAGE / 2 })).toMatchObject({ status: 'ok' });
  m.dma.unmapSingle(dev, h);
  expect(same(m.ram.read(buf.pa + PAGE / 2, PAGE / 2), data)).toBe(true);
  m.ram.free(buf);
}

describe('random map/unmap/alloc on tiny pools never leave the machine unusable', () => {
  describe('under an IOMMU: 8 MiB of IOVA space, 2 spare page-table pages, 5 MiB of RAM', () => {
    let m: Machine;
    let dev: Device;
    let source: RamBuffer;
    let baseline: ReturnType<typeof usage>;
    beforeAll(async () => {
      m = await Machine.create({ ram: [{ base: 0, size: 5 * MiB }], swiotlb: { size: 0 }, iommu: { apertureEnd: 8 * MiB - 1, tables: 6 } });
      dev = await m.addDevice({ bdf: '00:03.0' });
      source = m.ram.alloc(3 * MiB);
      baseline = usage(m);
    });
    afterAll(async () => {
      await m?.close();
    });

    const EXPECTED = ['ENOMEM ram', 'ENOMEM tables', 'ENOSPC iova'];
    it('every failure is ENOSPC/ENOMEM with nothing changed; freed, usage is back and a DMA works', async () => {
      const seen = new Set<string>();
      await fc.assert(
        fc.asyncProperty(commands(700), async (cmds) => {
          const held = run(m, dev, source, cmds, seen);
          for (const x of held.reverse()) release(m, dev, x);
          expect(usage(m)).toEqual(baseline);
          // Tables are not freed on unmap (as Linux): every table in use is linked in the page table.
          expect(m.stats().pageTablePages).toBe(m.iommu.domainOf(dev)!.pt!.countTables());
          await dmaWorks(m, dev);
        }),
        { numRuns: 60 },
      );
      // The runs did reach the limits they are about (each is hit within a few runs).
      expect([...seen].sort()).toEqual(EXPECTED);
    });
  });

  describe('without translation: a 256 KiB bounce pool, 1 MiB of RAM below 4 GiB and 2 MiB above', () => {
    let m: Machine;
    let dev: Device;
    let source: RamBuffer;
    let baseline: ReturnType<typeof usage>;
    beforeAll(async () => {
      m = await Machine.create({
        ram: [{ base: 0, size: 1 * MiB }, { base: 4 * GiB, size: 2 * MiB }],
        iommu: { enabled: false },
        swiotlb: { size: 256 * KiB, areas: 1 },
      });
      dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
      source = m.ram.alloc(1 * MiB, { above: 4 * GiB }); // beyond the mask: every map bounces
      baseline = usage(m);
    });
    afterAll(async () => {
      await m?.close();
    });

    const EXPECTED = ['ENOMEM ram', 'ENOSPC bounce'];
    it('every failure is ENOSPC/ENOMEM with nothing changed; freed, usage is back and a bounced DMA works', async () => {
      const seen = new Set<string>();
      await fc.assert(
        fc.asyncProperty(commands(64), async (cmds) => {
          const held = run(m, dev, source, cmds, seen);
          for (const x of held.reverse()) release(m, dev, x);
          expect(usage(m)).toEqual(baseline);
          await dmaWorks(m, dev, 4 * GiB);
        }),
        { numRuns: 60 },
      );
      // The runs did reach the limits they are about (each is hit within a few runs).
      expect([...seen].sort()).toEqual(EXPECTED);
    });
  });
});
