/**
 * The hostile device: DMA at random or chosen addresses, inside and outside its mappings, while
 * an honest device copies. The guarantee checked: not one byte outside the hostile device's
 * writable mappings changes (a full RAM snapshot), every refused access is one fault record or
 * one counted overflow, and the honest device's transfers all arrive intact.
 */
import { describe, it, expect } from 'vitest';
import { Machine, MiB, hostileBurst, HostileAccessGenerator, dmaAddr, iova, type Device, type HostileAccess, type HostileBurst } from '../src/index.js';
import { pattern, same } from './support.js';

const PAGE = 4096;
const RAM = [{ base: 0, size: 16 * MiB }];

interface Window {
  addr: number;
  len: number;
  read: boolean;
  write: boolean;
}

/** Whether the IOMMU should allow the access: its page lies in a window with that permission. */
function allowed(windows: readonly Window[], a: HostileAccess): boolean {
  return windows.some((w) => a.addr >= w.addr && a.addr + a.len <= w.addr + w.len && (a.write ? w.write : w.read));
}

/** The accesses a random burst made, recomputed from its seed, split into allowed and refused. */
function replay(b: HostileBurst, maskBits: number, windows: readonly Window[]): { refused: HostileAccess[]; allowed: number } {
  const g = new HostileAccessGenerator(b, maskBits);
  const refused: HostileAccess[] = [];
  let ok = 0;
  for (let i = 0; i < b.count; i++) {
    const a = g.next({ addr: 0, len: 0, write: false });
    if (allowed(windows, a)) ok++;
    else refused.push({ ...a });
  }
  return { refused, allowed: ok };
}

/** First offset where `after` differs from `before` outside the excluded [start, end) ranges, or -1. */
function firstChangeOutside(before: Uint8Array, after: Uint8Array, excluded: Array<[number, number]>): number {
  const ex = [...excluded].sort((a, b) => a[0] - b[0]);
  let at = 0;
  for (const [s, e] of [...ex, [before.length, before.length] as [number, number]]) {
    if (s > at && Buffer.compare(before.subarray(at, s), after.subarray(at, s)) !== 0) {
      for (let i = at; i < s; i++) if (before[i] !== after[i]) return i;
    }
    at = Math.max(at, e);
  }
  return -1;
}

async function withMachine(config: Parameters<typeof Machine.create>[0], f: (m: Machine) => Promise<void>): Promise<void> {
  const m = await Machine.create({ ram: RAM, ...config });
  try {
    await f(m);
  } finally {
    await m.close();
  }
}

describe('hostile device', () => {
  it('10^5 random accesses change no byte outside its writable mappings while an honest device copies', async () => {
    await withMachine({}, async (m) => {
      const bad = await m.addDevice({ bdf: '00:03.0', model: 'hostile', dmaMask: 32 });
      const good = await m.addDevice({ bdf: '00:04.0', model: 'copy-engine', dmaMask: 32 });
      // The hostile device's mappings: read-only, write-only and read-write, zeroed.
      const bufs = { ro: m.ram.alloc(3 * PAGE), wo: m.ram.alloc(2 * PAGE), rw: m.ram.alloc(2 * PAGE) };
      m.ram.write(bufs.ro.pa, pattern(3 * PAGE, 7));
      m.ram.fill(bufs.wo.pa, 2 * PAGE, 0);
      m.ram.fill(bufs.rw.pa, 2 * PAGE, 0);
      const ro = m.dma.mapSingle(bad, bufs.ro.pa, 3 * PAGE, 'to-device');
      const wo = m.dma.mapSingle(bad, bufs.wo.pa, 2 * PAGE, 'from-device');
      const rw = m.dma.mapSingle(bad, bufs.rw.pa, 2 * PAGE, 'bidirectional');
      const windows: Window[] = [
        { addr: ro.addr, len: 3 * PAGE, read: true, write: false },
        { addr: wo.addr, len: 2 * PAGE, read: false, write: true },
        { addr: rw.addr, len: 2 * PAGE, read: true, write: true },
      ];
      // The honest device: one source, four destinations it copies into round robin.
      const src = m.ram.alloc(16 * PAGE);
      const data = pattern(16 * PAGE, 3);
      m.ram.write(src.pa, data);
      const dsts = [0, 1, 2, 3].map(() => m.ram.alloc(4 * PAGE));
      const hs = m.dma.mapSingle(good, src.pa, 16 * PAGE, 'to-device');
      const hd = dsts.map((d) => m.dma.mapSingle(good, d.pa, 4 * PAGE, 'from-device'));

      const lo = Math.min(...windows.map((w) => w.addr)) - 16 * PAGE;
      const hi = Math.max(...windows.map((w) => w.addr + w.len)) + 16 * PAGE;
      const before = m.ram.read(0, 16 * MiB);
      let stop = false;
      let copies = 0;
      const lastOffset = [0, 0, 0, 0];
      const honest = (async () => {
        while (!stop) {
          const i = copies % 4;
          const off = (copies * 4096 + 512) % (12 * PAGE);
          await good.copy({ src: dmaAddr(hs.addr + off), dst: hd[i].addr, len: 4 * PAGE });
          lastOffset[i] = off;
          copies++;
        }
      })();
      let r1, r2;
      try {
        r1 = await hostileBurst(m, bad, { seed: 12345, count: 100_000, targets: [{ base: lo, size: hi - lo }] });
        r2 = await hostileBurst(m, bad, { seed: 777, count: 10_000 }); // the whole 32-bit DMA space
      } finally {
        stop = true;
        await honest;
      }
      const after = m.ram.read(0, 16 * MiB);

      // Counts: exactly the accesses the seed gives, refused exactly where nothing allows them.
      const e1 = replay(r1.burst, 32, windows);
      const e2 = replay(r2.burst, 32, windows);
      expect({ attempted: r1.attempted, refused: r1.refused, moved: r1.moved }).toEqual({ attempted: 100_000, refused: e1.refused.length, moved: e1.allowed });
      expect({ attempted: r2.attempted, refused: r2.refused, moved: r2.moved }).toEqual({ attempted: 10_000, refused: e2.refused.length, moved: e2.allowed });
      expect(r1.moved).toBeGreaterThan(1000); // the range is dense with mappings: many legal accesses
      expect(r1.refused).toBeGreaterThan(50_000);

      // Every refusal is a record or a counted overflow; the records are the first refusals, in order.
      const s = m.stats();
      expect(s.faults + s.faultsDropped).toBe(r1.refused + r2.refused);
      const log = m.iommu.faults();
      expect(log.length).toBe(s.faults);
      expect(log.dropped).toBe(s.faultsDropped);
      const expected = [...e1.refused, ...e2.refused].slice(0, log.length);
      expect(log.map((f) => [f.bdf, f.addr, f.access])).toEqual(expected.map((a) => ['0000:00:03.0', a.addr, a.write ? 'write' : 'read']));

      // Not one byte outside the hostile device's writable mappings (and what the honest device
      // and the drivers legitimately wrote: its destinations, the rings, the command blocks).
      const excluded: Array<[number, number]> = [
        [bufs.wo.pa, bufs.wo.pa + 2 * PAGE],
        [bufs.rw.pa, bufs.rw.pa + 2 * PAGE],
        ...dsts.map((d): [number, number] => [d.pa, d.pa + 4 * PAGE]),
        ...[bad, good].flatMap((d: Device): Array<[number, number]> => [
          [d.sq.pa, d.sq.pa + d.queueDepth * 32],
          [d.cq.pa, d.cq.pa + d.queueDepth * 32],
        ]),
        [r1.commandBlock.pa, r1.commandBlock.pa + r1.commandBlock.size],
        [r2.commandBlock.pa, r2.commandBlock.pa + r2.commandBlock.size],
      ];
      expect(firstChangeOutside(before, after, excluded)).toBe(-1);
      // Inside the writable mappings only the pattern byte was written.
      for (const b of [bufs.wo, bufs.rw]) expect(new Set(m.ram.read(b.pa, 2 * PAGE))).toEqual(new Set([0, 0xa5]));

      // The honest device: every copy completed, each destination holds its last copy.
      expect(copies).toBeGreaterThan(0);
      dsts.forEach((d, i) => {
        if (i < copies) expect(same(m.ram.read(d.pa, 4 * PAGE), data.subarray(lastOffset[i], lastOffset[i] + 4 * PAGE))).toBe(true);
      });
      expect(good.error).toBeNull();
      expect(s.devices['0000:00:04.0'].faults).toBe(0);
    });
  });

  it('makes the chosen accesses of a list it reads by DMA: one fault record per refused access', async () => {
    await withMachine({}, async (m) => {
      const bad = await m.addDevice({ bdf: '00:03.0', model: 'hostile', dmaMask: 32 });
      const other = await m.addDevice({ bdf: '00:04.0', dmaMask: 32 });
      const rob = m.ram.alloc(PAGE);
      const wob = m.ram.alloc(PAGE);
      const theirs = m.ram.alloc(64 * PAGE);
      m.ram.fill(theirs.pa, 64 * PAGE, 0x11);
      m.ram.fill(wob.pa, PAGE, 0);
      const ro = m.dma.mapSingle(bad, rob.pa, PAGE, 'to-device');
      const wo = m.dma.mapSingle(bad, wob.pa, PAGE, 'from-device');
      // Mapped in the other device's domain only (IOVAs of two domains may coincide: pick one
      // the hostile device's domain does not map).
      const tm = m.dma.mapSingle(other, theirs.pa, 64 * PAGE, 'bidirectional');
      const mine = m.iommu.domainOf(bad)!;
      const k = [...Array(64).keys()].find((i) => mine.iovaToPhys(iova(tm.addr + i * PAGE)) === null)!;
      const t = { addr: tm.addr + k * PAGE };
      const list: HostileAccess[] = [
        { addr: ro.addr + 16, len: 100, write: false }, // allowed
        { addr: ro.addr, len: 8, write: true }, // read-only: permission
        { addr: wo.addr + 64, len: 32, write: true }, // allowed
        { addr: wo.addr, len: 8, write: false }, // write-only: permission
        { addr: t.addr, len: 64, write: true }, // mapped only in the other device's domain
        { addr: 0x10, len: 4, write: false }, // never mapped
      ];
      const r = await hostileBurst(m, bad, { list, pattern: 0x5a });
      expect({ attempted: r.attempted, refused: r.refused, moved: r.moved, bytesRead: r.bytesRead, bytesWritten: r.bytesWritten }).toEqual({
        attempted: 6,
        refused: 4,
        moved: 2,
        bytesRead: 100,
        bytesWritten: 32,
      });
      const log = m.iommu.faults();
      expect(log.map((f) => [f.bdf, f.addr, f.access, f.reason])).toEqual([
        ['0000:00:03.0', ro.addr, 'write', 'permission'],
        ['0000:00:03.0', wo.addr, 'read', 'permission'],
        ['0000:00:03.0', t.addr, 'write', 'not-present'],
        ['0000:00:03.0', 0x10, 'read', 'not-present'],
      ]);
      expect(log.dropped).toBe(0);
      const w = m.ram.read(wob.pa, PAGE);
      expect([w[63], w[64], w[95], w[96]]).toEqual([0, 0x5a, 0x5a, 0]);
      expect(m.ram.read(theirs.pa, 64 * PAGE).every((b) => b === 0x11)).toBe(true);
    });
  });

  it('reports a full fault ring: records kept, the rest counted as dropped, none lost', async () => {
    await withMachine({ iommu: { faultRing: 64 } }, async (m) => {
      const bad = await m.addDevice({ bdf: '00:03.0', model: 'hostile', dmaMask: 32 });
      // An unmapped range: every access is refused.
      const r = await hostileBurst(m, bad, { seed: 9, count: 1000, targets: [{ base: 0x1000_0000, size: 0x10_0000 }] });
      expect(r.refused).toBe(1000);
      expect({ faults: m.stats().faults, dropped: m.stats().faultsDropped }).toEqual({ faults: 64, dropped: 936 });
      const log = m.iommu.faults();
      expect({ records: log.length, dropped: log.dropped }).toEqual({ records: 64, dropped: 936 });
      const again = m.iommu.faults();
      expect({ records: again.length, dropped: again.dropped }).toEqual({ records: 0, dropped: 0 });
    });
  });

  it('loses no fault record when the ring is drained while the device faults', async () => {
    await withMachine({ iommu: { faultRing: 256 } }, async (m) => {
      const bad = await m.addDevice({ bdf: '00:03.0', model: 'hostile', dmaMask: 32 });
      let records = 0;
      let dropped = 0;
      let busy = true;
      const drainer = (async () => {
        while (busy) {
          const log = m.iommu.faults();
          records += log.length;
          dropped += log.dropped;
          await new Promise((res) => setTimeout(res, 1));
        }
      })();
      let refused = 0;
      try {
        for (let i = 0; i < 5; i++) refused += (await hostileBurst(m, bad, { seed: i + 1, count: 5000, targets: [{ base: 0x2000_0000, size: 0x100_0000 }] })).refused;
      } finally {
        busy = false;
        await drainer;
      }
      const last = m.iommu.faults();
      records += last.length;
      dropped += last.dropped;
      expect(refused).toBe(25_000);
      expect(records + dropped).toBe(refused);
      expect({ records, dropped }).toEqual({ records: m.stats().faults, dropped: m.stats().faultsDropped });
    });
  });
});

describe('hostile bursts and their spared ranges', () => {
  /** Bounds a call that used to never return (the device drew forever): a rejection, never a timed assertion. */
  function bounded<T>(p: Promise<T>, ms: number): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    });
    return Promise.race([p, late]).finally(() => clearTimeout(timer));
  }

  it('targets wholly inside the device\'s own ring page are refused with EINVAL instead of hanging the device', async () => {
    await withMachine({ iommu: { deviceTimeoutMs: 0 } }, async (m) => {
      const bad = await m.addDevice({ bdf: '00:03.0', model: 'hostile', dmaMask: 32 });
      const sqPage = Math.floor(bad.ringDma.sq / PAGE) * PAGE;
      const r = bounded(hostileBurst(m, bad, { seed: 3, count: 10, targets: [{ base: sqPage, size: PAGE }] }), 10_000);
      await expect(r).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/0000:00:03\.0.*lie wholly inside the spared ranges/) });
      expect(bad.error).toBeNull();
      expect(bad.inFlight()).toBe(0);
    });
  });

  it('an access list too large to allocate fails the burst and leaves nothing allocated', async () => {
    await withMachine({}, async (m) => {
      const bad = await m.addDevice({ bdf: '00:03.0', model: 'hostile', dmaMask: 32 });
      const before = { live: m.stats().liveMappings, ram: m.stats().ramPagesInUse };
      const list = Array.from({ length: (RAM[0].size / 16) * 2 }, () => ({ addr: 0, len: 1, write: false }));
      await expect(hostileBurst(m, bad, { list })).rejects.toMatchObject({ code: 'ENOMEM' });
      expect({ live: m.stats().liveMappings, ram: m.stats().ramPagesInUse }).toEqual(before);
    });
  });

  it('a 32-bit device never puts an address at or above 4 GiB on the bus, whatever its targets', async () => {
    await withMachine({}, async (m) => {
      const bad = await m.addDevice({ bdf: '00:03.0', model: 'hostile', dmaMask: 32 });
      const r = await hostileBurst(m, bad, { seed: 11, count: 200, targets: [{ base: 2 ** 32 - 64 * PAGE, size: 128 * PAGE }] });
      expect(r.attempted).toBe(200);
      const log = m.iommu.faults();
      expect(log.length + log.dropped).toBe(r.refused);
      expect(log.filter((f) => f.addr >= 2 ** 32)).toEqual([]);
      await expect(hostileBurst(m, bad, { seed: 11, count: 10, targets: [{ base: 2 ** 33, size: PAGE }] })).rejects.toMatchObject({
        code: 'EINVAL',
        message: expect.stringMatching(/0000:00:03\.0.*32-bit DMA mask/),
      });
    });
  });

  it('a target spared but for one page: every access falls in that page, none touches a spare', () => {
    const base = 0x4000_0000;
    const b: HostileBurst = {
      seed: 5, count: 2000, mode: 'random', pattern: 1, writePercent: 50, maxLen: 4096,
      targets: [{ base, size: 2 ** 36 }],
      spares: [{ base, size: 2 ** 35 }, { base: base + 2 ** 35 + PAGE, size: 2 ** 35 - PAGE }],
      listAddr: 0, listEntries: 0,
    };
    const g = new HostileAccessGenerator(b, 64);
    const a: HostileAccess = { addr: 0, len: 0, write: false };
    for (let i = 0; i < b.count; i++) {
      g.next(a);
      expect(a.addr).toBeGreaterThanOrEqual(base + 2 ** 35);
      expect(a.addr + a.len).toBeLessThanOrEqual(base + 2 ** 35 + PAGE);
    }
  });
});

describe('hostile device and peer-to-peer', () => {
  const BAR3 = 0xe000_0000;
  const BAR4 = 0xe010_0000;
  function topology(dspAcs?: string[]) {
    return {
      functions: [
        { bdf: '00:00.0', type: 'host-bridge' },
        { bdf: '00:01.0', type: 'root-port', secondary: 1, subordinate: 4, driver: 'pcieport' },
        { bdf: '01:00.0', type: 'upstream-port', secondary: 2, subordinate: 4, driver: 'pcieport' },
        { bdf: '02:00.0', type: 'downstream-port', secondary: 3, driver: 'pcieport', ...(dspAcs ? { acs: { cap: dspAcs, ctl: dspAcs } } : {}) },
        { bdf: '02:01.0', type: 'downstream-port', secondary: 4, driver: 'pcieport' },
        { bdf: '03:00.0', type: 'endpoint', bars: [{ index: 0, base: BAR3, size: '64K' }] },
        { bdf: '04:00.0', type: 'endpoint', bars: [{ index: 0, base: BAR4, size: '64K' }] },
      ],
    };
  }
  const list: HostileAccess[] = [
    { addr: BAR4 + 0x100, len: 256, write: true },
    { addr: BAR4 + 0x2000, len: 64, write: false },
    { addr: BAR4 + 0x8000, len: 16, write: true },
  ];

  it('with ACS P2P Request Redirect at its port: every access at the peer BAR faults in the IOMMU, the BAR is untouched', async () => {
    await withMachine({ topology: topology(['SV', 'RR', 'CR', 'UF']) }, async (m) => {
      const bad = await m.addDevice({ bdf: '03:00.0', model: 'hostile', dmaMask: 32 });
      const peer = await m.addDevice({ bdf: '04:00.0', dmaMask: 32 });
      const r = await hostileBurst(m, bad, { list });
      expect({ refused: r.refused, moved: r.moved }).toEqual({ refused: 3, moved: 0 });
      expect(m.iommu.faults().map((f) => [f.bdf, f.addr])).toEqual(list.map((a) => ['0000:03:00.0', a.addr]));
      expect(peer.bar(0).every((b) => b === 0)).toBe(true);
    });
  });

  it('without ACS the switch routes it to the peer BAR: no fault, the bytes land there (the IOMMU never sees P2P)', async () => {
    await withMachine({ topology: topology() }, async (m) => {
      const bad = await m.addDevice({ bdf: '03:00.0', model: 'hostile', dmaMask: 32 });
      const peer = await m.addDevice({ bdf: '04:00.0', dmaMask: 32 });
      const ram = m.ram.read(0, 16 * MiB);
      const r = await hostileBurst(m, bad, { list, pattern: 0x3c });
      expect({ refused: r.refused, moved: r.moved }).toEqual({ refused: 0, moved: 3 });
      expect(m.iommu.faults()).toEqual([]);
      const bar = peer.bar(0);
      expect([bar[0xff], bar[0x100], bar[0x1ff], bar[0x200], bar[0x8000], bar[0x800f], bar[0x8010]]).toEqual([0, 0x3c, 0x3c, 0, 0x3c, 0x3c, 0]);
      expect(m.stats().p2pTransfers).toBe(3);
      // Guest RAM outside the rings and the command block is as it was: P2P reaches BARs, not RAM.
      const after = m.ram.read(0, 16 * MiB);
      const ex: Array<[number, number]> = [
        [r.commandBlock.pa, r.commandBlock.pa + r.commandBlock.size],
        [r.accessList!.pa, r.accessList!.pa + r.accessList!.size],
        ...[bad, peer].flatMap((d): Array<[number, number]> => [
          [d.sq.pa, d.sq.pa + d.queueDepth * 32],
          [d.cq.pa, d.cq.pa + d.queueDepth * 32],
        ]),
      ];
      expect(firstChangeOutside(ram, after, ex)).toBe(-1);
    });
  });
});
