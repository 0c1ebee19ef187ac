/**
 * The hostile devices of a stress run (workers/models/hostile.ts beside the honest copy engines),
 * and the two invariants they are checked against:
 *   hostile-isolation  no byte outside a hostile device's writable mappings changes because of it:
 *                      its guard pages (the PA pages on both sides of each of its buffers), canary
 *                      pages that nothing ever maps, and its read-only buffer keep their contents
 *                      (checked after every burst); its writable buffers hold only their fill byte
 *                      or its pattern byte; and no burst moves more accesses than the stress's own
 *                      mappings allow (a replay of the burst's generator from its seed)
 *   fault-accounting   every refused access is one fault record or one counted drop: per burst,
 *                      the device's refused count is the replay's, and the records carrying the
 *                      device's requester ID are, in order, a subsequence of the replayed refusals;
 *                      at the end refused = recorded + dropped exactly, where the ring's dropped
 *                      total is split by requester ID class: the honest devices' share is their
 *                      faulted DMAs (one each) minus their records
 * The stress drains the fault ring on the main thread (its only consumer) after every burst, while
 * the other devices keep faulting. Each hostile device's domain is fixed for the whole run: three
 * buffers (read-only, write-only, read-write), its rings and one command block kept across bursts.
 * Bursts rotate their aim: the whole DMA-mask space, its own mappings, guard pages (the IOVA pages
 * next to its mappings, and its guard and canary PAs used as DMA addresses), and the honest
 * devices' latest DMA addresses (which mean nothing in its domain).
 * Reproducible: burst seeds come from (stress seed, hostile index); the honest addresses a burst
 * aims at depend on timing.
 */
import type { Machine } from '../machine.js';
import type { Device } from '../device/device.js';
import type { DmaCoherent, DmaMapping } from '../dma/dma-api.js';
import type { Domain } from '../iommu/domain.js';
import type { RamBuffer } from '../memory/guest-ram.js';
import { hostileBurst, type HostileBurstResult } from '../device/hostile.js';
import { HOSTILE_BLOCK_SIZE, HostileAccessGenerator, type AddressRange, type HostileAccess, type HostileBurst } from '../device/hostile-access.js';
import { IOMMU_READ, IOMMU_WRITE } from '../iommu/page-table.js';
import { SQE_SIZE, CQE_SIZE } from '../device/rings.js';
import { GiB, PAGE_SIZE, iova, pa, type Pa } from '../addresses.js';
import { hex } from '../errors.js';
import { Prng } from './prng.js';
import { firstMismatch, makePattern } from './pattern.js';
import type { StressEvent } from './event-history.js';
import type { Violation } from './invariants.js';

export const HOSTILE_AIMS = ['dma-mask', 'own', 'guards', 'honest'] as const;
export type HostileAim = (typeof HOSTILE_AIMS)[number];

/**
 * Test-only breakages, to show the invariants catch them: 'map-canary' maps a canary page behind
 * the stress's back, at an IOVA guard page device 0 aims at; 'lose-fault-record' throws one
 * drained hostile fault record away, as a ring that lost one silently would.
 */
export type HostileInjection = 'map-canary' | 'lose-fault-record';
export const HOSTILE_INJECTIONS: readonly HostileInjection[] = ['map-canary', 'lose-fault-record'];

/** Byte the hostile devices' allowed writes store; their writable buffers start as FILL. */
const PATTERN = 0xa5;
const FILL = 0x00;
/** Honest DMA addresses remembered for 'honest' bursts. */
const HONEST_RING = 8;
const HONEST_SPAN = 16 * PAGE_SIZE;

export interface HostileDeviceSummary {
  bdf: string;
  dmaMask: number;
  bursts: number;
  accesses: number;
  refused: number;
  moved: number;
  faultsRecorded: number;
}

export interface HostileSummary {
  devices: number;
  accessesPerBurst: number;
  bursts: number;
  /** Accesses the devices made (each one request of at most a page). */
  accesses: number;
  refused: number;
  moved: number;
  bytesRead: number;
  bytesWritten: number;
  /** Fault records carrying a hostile device's requester ID. */
  faultsRecorded: number;
  /** Hostile refusals the full ring counted instead of recording (its dropped total minus the honest devices' share). */
  faultsDropped: number;
  /** Fault records of the honest devices the stress drained meanwhile. */
  honestFaultsRecorded: number;
  perAim: Record<HostileAim, number>;
  perDevice: HostileDeviceSummary[];
}

export function emptyHostileSummary(accessesPerBurst: number): HostileSummary {
  return {
    devices: 0,
    accessesPerBurst,
    bursts: 0,
    accesses: 0,
    refused: 0,
    moved: 0,
    bytesRead: 0,
    bytesWritten: 0,
    faultsRecorded: 0,
    faultsDropped: 0,
    honestFaultsRecorded: 0,
    perAim: Object.fromEntries(HOSTILE_AIMS.map((a) => [a, 0])) as Record<HostileAim, number>,
    perDevice: [],
  };
}

/** A range of the hostile device's domain the stress mapped, with its permissions. */
interface Window {
  addr: number;
  len: number;
  read: boolean;
  write: boolean;
}

/** RAM the stress owns, whose bytes must not change. */
interface Protected {
  pa: Pa;
  what: string;
  expect: Uint8Array;
  reported: boolean;
}

interface Hostile {
  index: number;
  dev: Device;
  domain: Domain;
  rng: Prng;
  block: DmaCoherent;
  ram: RamBuffer[];
  mappings: DmaMapping[];
  windows: Window[];
  /** Writable buffers (PA, length) that may hold FILL or PATTERN only. */
  writable: Array<{ pa: Pa; len: number; what: string; reported: boolean }>;
  /** Pages random accesses spare (its rings and command block, as hostileBurst sends them). */
  sparePages: Set<number>;
  /** Targets of 'own' and 'guards' bursts. */
  own: AddressRange[];
  guards: AddressRange[];
  /** Records with its requester ID drained since its last burst was checked. */
  pending: HostileAccess[];
  /** The injected mapping (test only), unmapped at teardown. */
  injected: number | null;
  events: StressEvent[];
  s: HostileDeviceSummary;
}

/** Adds `count` hostile devices at the PCI slots after `firstSlot` (alternately 32- and 64-bit masks). */
export async function addHostileDevices(m: Machine, count: number, firstSlot: number): Promise<Device[]> {
  const devs: Device[] = [];
  for (let i = 0; i < count; i++) {
    devs.push(await m.addDevice({ bdf: `00:${(firstSlot + i).toString(16).padStart(2, '0')}.0`, model: 'hostile', dmaMask: i % 2 === 0 ? 32 : 64 }));
  }
  return devs;
}

export class StressHostile {
  private readonly hostiles: Hostile[] = [];
  private readonly byRequester = new Map<number, Hostile>();
  private readonly protectedRam: Protected[] = [];
  private readonly honestRing: AddressRange[] = [];
  private honestAt = 0;
  private honestRecords = 0;
  private strangerRecords = 0;
  private loseRecord = false;
  private readonly overflowAtStart: number;
  private readonly sum: HostileSummary;

  private constructor(
    private readonly m: Machine,
    private readonly seed: number,
    private readonly accesses: number,
    private readonly honestRequesters: ReadonlySet<number>,
    private readonly report: (v: Violation) => void,
  ) {
    this.sum = emptyHostileSummary(accesses);
    // Whatever the ring held before the run is not the run's.
    m.iommu.unit.drainFaults();
    this.overflowAtStart = m.iommu.unit.faultRing.overflowed();
  }

  /**
   * Maps each hostile device's buffers in its own domain and fills its guard and canary pages.
   * `inject` (test only) maps device 0's first IOVA guard page onto a canary page.
   */
  static create(
    m: Machine,
    devs: Device[],
    o: { seed: number; accesses: number; honest: Device[]; inject?: HostileInjection; report: (v: Violation) => void },
  ): StressHostile {
    const h = new StressHostile(m, o.seed, o.accesses, new Set(o.honest.map((d) => d.requesterId)), o.report);
    h.sum.devices = devs.length;
    h.loseRecord = o.inject === 'lose-fault-record';
    devs.forEach((dev, i) => h.setUp(dev, i, o.inject === 'map-canary' && i === 0));
    return h;
  }

  private setUp(dev: Device, index: number, inject: boolean): void {
    const m = this.m;
    const domain = m.iommu.domainOf(dev);
    if (!domain) throw new Error(`stress: hostile device ${dev.bdf} has no IOMMU domain`);
    const mask = 2 ** Math.min(dev.dmaMaskBits, 52);
    const tag = (this.seed * 31 + index * 7919 + 1) >>> 0;
    const ram: RamBuffer[] = [];
    const alloc = (pages: number, high: boolean) => {
      const b = m.ram.alloc(pages * PAGE_SIZE, high ? { above: 4 * GiB } : { below: 4 * GiB });
      ram.push(b);
      return b;
    };
    const guard = (p: number, what: string) => {
      const bytes = makePattern((tag ^ p) >>> 0, PAGE_SIZE);
      m.ram.write(pa(p), bytes);
      this.protectedRam.push({ pa: pa(p), what: `${what} of hostile device ${dev.bdf}`, expect: new Uint8Array(bytes), reported: false });
    };
    // Each buffer sits between two guard pages; the windows are the pages in between.
    const specs = [
      { what: 'read-only buffer', pages: 3, high: false, dir: 'to-device' as const },
      { what: 'write-only buffer', pages: 2, high: true, dir: 'from-device' as const },
      { what: 'read-write buffer', pages: 2, high: false, dir: 'bidirectional' as const },
    ];
    const mappings: DmaMapping[] = [];
    const windows: Window[] = [];
    const writable: Hostile['writable'] = [];
    const paTargets: AddressRange[] = [];
    for (const sp of specs) {
      const b = alloc(sp.pages + 2, sp.high);
      const inner = pa(b.pa + PAGE_SIZE);
      const len = sp.pages * PAGE_SIZE;
      guard(b.pa, `guard page before its ${sp.what}`);
      guard(b.pa + PAGE_SIZE + len, `guard page after its ${sp.what}`);
      if (sp.dir === 'to-device') {
        const bytes = makePattern((tag + 17) >>> 0, len);
        m.ram.write(inner, bytes);
        this.protectedRam.push({ pa: inner, what: `${sp.what} of hostile device ${dev.bdf}`, expect: new Uint8Array(bytes), reported: false });
      } else {
        m.ram.fill(inner, len, FILL);
        writable.push({ pa: inner, len, what: `${sp.what} of hostile device ${dev.bdf}`, reported: false });
      }
      const map = m.dma.mapSingle(dev, inner, len, sp.dir);
      mappings.push(map);
      windows.push({ addr: map.addr, len, read: sp.dir !== 'from-device', write: sp.dir !== 'to-device' });
      paTargets.push({ base: b.pa, size: b.size });
    }
    // Canary pages nothing maps, below and above 4 GiB.
    for (const high of [false, true]) {
      const c = alloc(2, high);
      guard(c.pa, 'canary page');
      guard(c.pa + PAGE_SIZE, 'canary page');
      paTargets.push({ base: c.pa, size: c.size });
    }
    const block = m.dma.allocCoherent(dev, HOSTILE_BLOCK_SIZE);
    // IOVA guard pages: the unmapped pages right next to each window in its domain.
    const iovaGuards: number[] = [];
    for (const w of windows) {
      for (const g of [w.addr - PAGE_SIZE, w.addr + w.len]) {
        if (g >= 0 && g < mask && domain.iovaToPhys(iova(g)) === null && !iovaGuards.includes(g)) iovaGuards.push(g);
      }
    }
    let injected: number | null = null;
    if (inject && iovaGuards.length > 0) {
      injected = iovaGuards[0];
      const canary = paTargets[3].base;
      domain.map(iova(injected), pa(canary), PAGE_SIZE, IOMMU_READ | IOMMU_WRITE);
    }
    const sparePages = new Set<number>();
    const spare = (addr: number, len: number) => {
      for (let p = Math.floor(addr / PAGE_SIZE); p * PAGE_SIZE < addr + len; p++) sparePages.add(p);
    };
    spare(dev.ringDma.sq, dev.queueDepth * SQE_SIZE);
    spare(dev.ringDma.cq, dev.queueDepth * CQE_SIZE);
    spare(block.addr, HOSTILE_BLOCK_SIZE);
    const inMask = (r: AddressRange) => r.base + r.size <= mask;
    const h: Hostile = {
      index,
      dev,
      domain,
      rng: new Prng(this.seed, 0x4057_0000 + index),
      block,
      sparePages,
      ram,
      mappings,
      windows,
      writable,
      own: windows.map((w) => ({ base: w.addr, size: w.len })),
      // At most 8 ranges: the IOVA guard pages first, then the PA ranges the device may guess.
      guards: [...iovaGuards.map((g) => ({ base: g, size: PAGE_SIZE })), ...paTargets.filter((r) => inMask(r) && !allSpared(sparePages, r))].slice(0, 8),
      pending: [],
      injected,
      events: [],
      s: { bdf: dev.bdf, dmaMask: dev.dmaMaskBits, bursts: 0, accesses: 0, refused: 0, moved: 0, faultsRecorded: 0 },
    };
    this.hostiles.push(h);
    this.byRequester.set(dev.requesterId, h);
  }

  /** An honest device's DMA address (from a request the stress serves): 'honest' bursts aim there. */
  noteHonest(addr: number, len: number): void {
    const base = addr - (addr % PAGE_SIZE);
    const size = Math.min(HONEST_SPAN, Math.ceil((addr + Math.max(1, len)) / PAGE_SIZE) * PAGE_SIZE - base);
    this.honestRing[this.honestAt++ % HONEST_RING] = { base, size };
  }

  /**
   * Fires bursts on every hostile device until `stop()` is true and each has fired `minBursts`.
   * `dutyPercent` < 100: after each burst (and its check on this thread) the device rests, with a
   * timer, so that bursts take about that share of the time while the honest devices run.
   */
  async run(stop: () => boolean, minBursts: number, dutyPercent: number): Promise<void> {
    await Promise.all(this.hostiles.map((h) => this.loop(h, stop, minBursts, dutyPercent)));
  }

  private async loop(h: Hostile, stop: () => boolean, minBursts: number, dutyPercent: number): Promise<void> {
    while (!stop() || h.s.bursts < minBursts) {
      const t0 = performance.now();
      const aim = HOSTILE_AIMS[h.s.bursts % HOSTILE_AIMS.length];
      const seed = h.rng.u32() || 1;
      const r = await hostileBurst(this.m, h.dev, { seed, count: this.accesses, targets: this.targets(h, aim), pattern: PATTERN, commandBlock: h.block });
      this.check(h, r, aim);
      const rest = dutyPercent < 100 && !stop() ? (performance.now() - t0) * (100 / dutyPercent - 1) : 0;
      if (rest >= 1) await new Promise((res) => setTimeout(res, Math.min(rest, 1000)));
    }
  }

  private targets(h: Hostile, aim: HostileAim): AddressRange[] {
    const mask = 2 ** Math.min(h.dev.dmaMaskBits, 52);
    switch (aim) {
      case 'dma-mask':
        return [];
      case 'own':
        return h.own;
      case 'guards':
        return h.guards;
      case 'honest':
        // A range the generator could only redraw in (all spared) would never yield an access.
        return this.honestRing.filter((r) => r.base + r.size <= mask && !allSpared(h.sparePages, r));
    }
  }

  /** Takes every published fault record and sorts it by requester ID. */
  drain(): void {
    for (const f of this.m.iommu.unit.drainFaults()) {
      const h = this.byRequester.get(f.requesterId);
      if (h && this.loseRecord) this.loseRecord = false;
      else if (h) h.pending.push({ addr: f.addr, len: 0, write: f.access === 'write' });
      else if (this.honestRequesters.has(f.requesterId)) this.honestRecords++;
      else this.strangerRecords++;
    }
  }

  private check(h: Hostile, r: HostileBurstResult, aim: HostileAim): void {
    const s = this.sum;
    const ds = h.s;
    const burstNo = ds.bursts++;
    s.bursts++;
    s.perAim[aim]++;
    ds.accesses += r.attempted;
    ds.refused += r.refused;
    ds.moved += r.moved;
    s.accesses += r.attempted;
    s.refused += r.refused;
    s.moved += r.moved;
    s.bytesRead += r.bytesRead;
    s.bytesWritten += r.bytesWritten;
    const b = r.burst;
    const ev: StressEvent = {
      n: burstNo,
      thread: -1,
      op: burstNo,
      what: 'hostile-burst',
      note: `${h.dev.bdf} aim ${aim} burst seed ${hex(b.seed)} count ${b.count}: attempted ${r.attempted}, refused ${r.refused}, moved ${r.moved}, completion ${r.completion.status}`,
    };
    h.events.push(ev);
    if (h.events.length > 4) h.events.shift();
    const who = `hostile device ${h.dev.bdf}, burst #${burstNo} (aim ${aim}, burst seed ${hex(b.seed)}, stress seed ${this.seed})`;
    const violate = (invariant: 'hostile-isolation' | 'fault-accounting', message: string) =>
      this.report({ invariant, message: `${who}: ${message}`, thread: -1, events: [...h.events] });

    if (r.completion.status !== 'ok' || r.attempted !== b.count) {
      violate('fault-accounting', `the burst ended ${r.completion.status} after ${r.attempted} of ${b.count} accesses`);
    }
    // What the stress's own mappings allow, recomputed from the seed.
    const expected = this.replay(b, h);
    if (r.refused < expected.length) {
      violate('hostile-isolation', `${expected.length - r.refused} accesses went through that none of its mappings allows (refused ${r.refused}, the replay refuses ${expected.length})`);
    } else if (r.refused > expected.length) {
      violate('fault-accounting', `refused ${r.refused} accesses, the replay of its mappings refuses ${expected.length}`);
    }
    // Every record of this burst is in the ring or drained by now (records precede the completion).
    this.drain();
    let j = 0;
    let strays = 0;
    let firstStray: HostileAccess | null = null;
    for (const rec of h.pending) {
      let k = j;
      while (k < expected.length && (expected[k].addr !== rec.addr || expected[k].write !== rec.write)) k++;
      if (k === expected.length) {
        strays++;
        firstStray ??= rec;
      } else j = k + 1;
    }
    if (strays > 0) {
      violate('fault-accounting', `${strays} fault records are not refusals of the burst, in order (first: ${firstStray!.write ? 'write' : 'read'} at ${hex(firstStray!.addr)})`);
    }
    if (h.pending.length > r.refused) violate('fault-accounting', `${h.pending.length} fault records for ${r.refused} refused accesses`);
    ds.faultsRecorded += h.pending.length;
    s.faultsRecorded += h.pending.length;
    h.pending = [];
    this.checkRam(violate);
  }

  /** The burst's refusals as its generator and the stress's windows give them, in order. */
  private replay(b: HostileBurst, h: Hostile): HostileAccess[] {
    const g = new HostileAccessGenerator(b, h.dev.dmaMaskBits);
    const a: HostileAccess = { addr: 0, len: 0, write: false };
    const out: HostileAccess[] = [];
    for (let i = 0; i < b.count; i++) {
      g.next(a);
      const ok = h.windows.some((w) => a.addr >= w.addr && a.addr + a.len <= w.addr + w.len && (a.write ? w.write : w.read));
      if (!ok) out.push({ addr: a.addr, len: a.len, write: a.write });
    }
    return out;
  }

  /** Guard, canary and read-only pages unchanged; writable buffers hold FILL or PATTERN only. */
  private checkRam(violate: (invariant: 'hostile-isolation', message: string) => void): void {
    for (const p of this.protectedRam) {
      if (p.reported) continue;
      const now = this.m.ram.read(p.pa, p.expect.length);
      const at = firstMismatch(now, p.expect);
      if (at >= 0) {
        p.reported = true;
        violate('hostile-isolation', `the ${p.what} changed at PA ${hex(p.pa + at)}: ${hex(p.expect[at])} → ${hex(now[at])} (nothing maps it writable for the device)`);
      }
    }
    for (const h of this.hostiles) {
      for (const w of h.writable) {
        if (w.reported) continue;
        const now = this.m.ram.read(w.pa, w.len);
        const at = now.findIndex((x) => x !== FILL && x !== PATTERN);
        if (at >= 0) {
          w.reported = true;
          violate('hostile-isolation', `the ${w.what} holds ${hex(now[at])} at PA ${hex(w.pa + at)}: only ${hex(FILL)} or the pattern ${hex(PATTERN)} may be there`);
        }
      }
    }
  }

  /**
   * End of run (every device idle): the last drain and the exact accounting.
   * `honestFaults`: DMAs of the honest devices that completed with a fault (one record each).
   */
  finish(honestFaults: number): HostileSummary {
    this.drain();
    const s = this.sum;
    const fail = (message: string) => this.report({ invariant: 'fault-accounting', message: `stress seed ${this.seed}: ${message}`, thread: -1, events: [] });
    for (const h of this.hostiles) {
      if (h.pending.length > 0) fail(`${h.pending.length} fault records of hostile device ${h.dev.bdf} arrived after its last burst was checked`);
      s.faultsRecorded += h.pending.length;
      h.pending = [];
    }
    if (this.strangerRecords > 0) fail(`${this.strangerRecords} fault records carry a requester ID of no device in the run`);
    const dropped = this.m.iommu.unit.faultRing.overflowed() - this.overflowAtStart;
    const honestDropped = honestFaults - this.honestRecords;
    if (honestDropped < 0) fail(`the honest devices have ${this.honestRecords} fault records for ${honestFaults} faulted DMAs`);
    s.honestFaultsRecorded = this.honestRecords;
    s.faultsDropped = dropped - Math.max(0, honestDropped);
    if (s.refused !== s.faultsRecorded + s.faultsDropped) {
      fail(`hostile refusals ${s.refused} ≠ ${s.faultsRecorded} records + ${s.faultsDropped} dropped (the ring dropped ${dropped}, the honest devices' share ${honestDropped})`);
    }
    s.perDevice = this.hostiles.map((h) => ({ ...h.s }));
    return s;
  }

  /** Unmaps and frees what the hostile devices used (before the stress checks its leaks). */
  tearDown(): void {
    const m = this.m;
    for (const h of this.hostiles) {
      if (h.injected !== null) h.domain.unmap(iova(h.injected), PAGE_SIZE);
      for (const map of h.mappings) m.dma.unmapSingle(h.dev, map);
      m.dma.freeCoherent(h.dev, h.block);
      for (const b of h.ram) m.ram.free(b);
      h.mappings = [];
      h.ram = [];
    }
  }
}

/** Whether every page of r is one random accesses spare (the generator would redraw forever). */
function allSpared(sparePages: ReadonlySet<number>, r: AddressRange): boolean {
  for (let p = Math.floor(r.base / PAGE_SIZE); p * PAGE_SIZE < r.base + r.size; p++) if (!sparePages.has(p)) return false;
  return true;
}
