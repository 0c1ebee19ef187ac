import { describe, it, expect } from 'vitest';
import { Machine, GiB, MiB, DriverPool, HandoffMailbox, mapBenchmark, dmaAddr, type MachineConfig, type ChromeTrace } from '../src/index.js';
import { pattern, closeAfterEach } from './support.js';
import { expectValidTrace, trackOf, eventsOn } from './trace-check.js';
import { NvmeDriver } from '../src/device/nvme.js';
import { NicDriver } from '../src/device/nic.js';
const { machines, pools } = closeAfterEach();

async function machine(cfg: MachineConfig): Promise<Machine> {
  const m = await Machine.create({ ram: [{ base: 0, size: 32 * MiB }, { base: 4 * GiB, size: 32 * MiB }], swiotlb: { size: 2 * MiB }, ...cfg });
  machines.push(m);
  return m;
}

describe('DMA timeline trace', () => {
  it('exports a small strict-IOMMU run as valid Trace Event JSON whose slices, misses, faults and flows equal the run', async () => {
    const m = await machine({ iommu: { invalidation: 'strict' }, trace: { enabled: true } });
    const devs = [await m.addDevice({ bdf: '00:03.0', dmaMask: 32 }), await m.addDevice({ bdf: '00:04.0' })];
    const rounds = 12;
    let flowsExpected = 0;
    for (const dev of devs) {
      for (let r = 0; r < rounds; r++) {
        const len = [4096, 512, 12288][r % 3];
        const src = m.ram.alloc(len, { above: 4 * GiB });
        const dst = m.ram.alloc(len);
        m.ram.write(src.pa, pattern(len, r));
        const s = m.dma.mapSingle(dev, src.pa, len, 'to-device');
        const d = m.dma.mapSingle(dev, dst.pa, len, 'from-device');
        await dev.copy({ src: s.addr, dst: d.addr, len });
        flowsExpected += 2;
        m.dma.unmapSingle(dev, s);
        m.dma.unmapSingle(dev, d);
        m.ram.free(src);
        m.ram.free(dst);
      }
      // An sg fill: two scattered pages, one segment under the IOMMU.
      const [p1, p2] = [m.ram.alloc(4096), m.ram.alloc(4096)];
      const sg = m.dma.mapSg(dev, [{ pa: p1.pa, len: 4096 }, { pa: p2.pa, len: 4096 }], 'from-device');
      await dev.fill({ dst: sg.segments[0].addr, len: 8192, value: 9 });
      flowsExpected += 1;
      m.dma.syncForCpu(dev, sg);
      m.dma.unmapSg(dev, sg);
    }
    // One forced fault: a copy into an IOVA nothing maps.
    const c = await devs[0].submit(0x100000, 0x7000_0000, 4096, 0);
    expect(c.status).toBe('fault');
    const stats = m.stats();
    const faults = m.iommu.faults();
    expect(faults).toHaveLength(1);
    await m.close(); // the export works from the rings alone, after the workers ended
    const t = m.trace!.toChromeTrace();
    expectValidTrace(t);
    expect(t.metadata.droppedEvents).toBe(0);

    let faultInstants = 0;
    for (const dev of devs) {
      const track = trackOf(t, `${dev.bdf} copy-engine`);
      expect(track, dev.bdf).toBeDefined();
      const k = stats.devices[dev.bdf];
      const transfers = eventsOn(t, track!, 'X').filter((e) => e.cat === 'transfer');
      expect(transfers).toHaveLength(k.descriptors);
      expect(eventsOn(t, track!, 'i', 'iotlb miss')).toHaveLength(k.iotlbMisses);
      faultInstants += eventsOn(t, track!, 'i', 'fault').length;
    }
    expect(faultInstants).toBe(stats.faults);
    const f = t.traceEvents.find((e) => e.name === 'fault')!;
    expect(f.args).toMatchObject({ addr: '0x' + faults[0].addr.toString(16), access: faults[0].access, reason: faults[0].reason });
    // Every copy's two mappings and the sg fill's one link map → DMA; the fault's address links nothing.
    expect(t.metadata.flows).toBe(flowsExpected);
    expect(t.traceEvents.filter((e) => e.ph === 's')).toHaveLength(flowsExpected);

    const main = trackOf(t, 'driver (main thread)');
    expect(main).toBeDefined();
    expect(eventsOn(t, main!, 'X', 'map_single')).toHaveLength(stats.dma.maps);
    expect(eventsOn(t, main!, 'X', 'map_sg')).toHaveLength(stats.dma.sgMaps);
    expect(eventsOn(t, main!, 'X', 'sync_for_cpu')).toHaveLength(stats.dma.syncs);
    // Mapped pages come back to 0 once close() freed the device rings.
    const pages = t.traceEvents.filter((e) => e.ph === 'C' && e.name === 'mapped pages').map((e) => e.args!.pages as number);
    expect(Math.max(...pages)).toBeGreaterThan(0);
    expect(pages[pages.length - 1]).toBe(0);
  });

  it('records one bounce instant per bounced mapping and samples the SWIOTLB slots in use (IOMMU off)', async () => {
    const m = await machine({ iommu: { enabled: false }, trace: { enabled: true } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const high = m.ram.alloc(8192, { above: 4 * GiB });
    const low = m.ram.alloc(8192, { below: 4 * GiB });
    for (let r = 0; r < 3; r++) {
      const h = m.dma.mapSingle(dev, high.pa, 8192, 'from-device');
      expect(h.bounced).toBe(true);
      const l = m.dma.mapSingle(dev, low.pa, 8192, 'to-device'); // reachable: direct, no bounce
      expect(l.bounced).toBe(false);
      await dev.copy({ src: l.addr, dst: h.addr, len: 8192 });
      m.dma.unmapSingle(dev, l);
      m.dma.unmapSingle(dev, h);
    }
    const stats = m.stats();
    const t = m.trace!.toChromeTrace();
    expectValidTrace(t);
    const bounces = t.traceEvents.filter((e) => e.ph === 'i' && e.name === 'bounce');
    expect(bounces).toHaveLength(stats.dma.bouncedMaps);
    expect(bounces).toHaveLength(3);
    const slots = t.traceEvents.filter((e) => e.ph === 'C' && e.name === 'swiotlb slots in use').map((e) => e.args!.slots as number);
    expect(Math.max(...slots)).toBe(4); // 8 KiB = four 2 KiB slots
    expect(slots[slots.length - 1]).toBe(0);
    // Flows link the direct and the bounced mapping to each copy.
    expect(t.metadata.flows).toBe(6);
  });

  it('gives a piscina driver thread that maps its own track', async () => {
    const m = await machine({ trace: { enabled: true } });
    await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const pool = new DriverPool({ threads: 1 });
    pools.push(pool);
    const r = await mapBenchmark(m, { device: '00:03.0', threads: 1, iterations: 200, warmup: 16, durationMs: 5000, pool });
    const stats = m.stats();
    const t = m.trace!.toChromeTrace();
    expectValidTrace(t);
    const track = trackOf(t, `driver thread ${r.threads[0].threadId}`);
    expect(track).toBeDefined();
    const maps = eventsOn(t, track!, 'X', 'map_single');
    expect(maps.length).toBeGreaterThanOrEqual(200);
    expect(eventsOn(t, track!, 'X', 'unmap_single')).toHaveLength(maps.length);
    // Every map of the run is on some driver track (the main thread mapped none).
    expect(t.traceEvents.filter((e) => e.ph === 'X' && e.name === 'map_single')).toHaveLength(stats.dma.maps);
  });

  it('links a map in a driver thread to the DMA on the device track with a flow (lazy IOMMU)', async () => {
    const m = await machine({ iommu: { invalidation: 'lazy' }, trace: { enabled: true } });
    const dev = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
    const pool = new DriverPool({ threads: 1 });
    pools.push(pool);
    const box = HandoffMailbox.create(1);
    const rounds = 10;
    const driver = pool.run('handoff', { driver: m.driverHandle(), bdf: dev.bdf, mailbox: box.handle, slot: 0, rounds, sizes: [4096, 8192], seed: 3, above: 4 * GiB });
    for (let req = await box.take(0); req; req = await box.take(0)) {
      const c = await dev.submit(req.src, req.dst, req.len, 0);
      box.complete(0, c.status === 'ok' ? 0 : 1);
    }
    const res = await driver;
    expect(res).toMatchObject({ rounds, mismatches: 0, failed: 0 });
    const t = m.trace!.toChromeTrace();
    expectValidTrace(t);
    const thread = trackOf(t, `driver thread ${res.threadId}`)!;
    expect(thread).toBeDefined();
    const device = trackOf(t, `${dev.bdf} copy-engine`)!;
    const starts = t.traceEvents.filter((e) => e.ph === 's');
    const ends = t.traceEvents.filter((e) => e.ph === 'f');
    expect(starts).toHaveLength(2 * rounds);
    expect(starts.every((e) => e.pid === thread.pid && e.tid === thread.tid)).toBe(true);
    expect(ends.every((e) => e.pid === device.pid && e.tid === device.tid)).toBe(true);
  });

  it('is off by default: no trace, no rings handed to driver threads', async () => {
    const m = await machine({});
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const b = m.ram.alloc(4096);
    m.dma.unmapSingle(dev, m.dma.mapSingle(dev, b.pa, 4096, 'to-device'));
    expect(m.trace).toBeNull();
    expect(m.driverHandle().dma.trace).toBeNull();
  });

  it('reports the events a full ring dropped and still exports valid JSON', async () => {
    const m = await machine({ trace: { enabled: true, eventsPerThread: 32 } });
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const b = m.ram.alloc(4096);
    const pairs = 40;
    for (let i = 0; i < pairs; i++) m.dma.unmapSingle(dev, m.dma.mapSingle(dev, b.pa, 4096, 'to-device'));
    const t = m.trace!.toChromeTrace();
    expectValidTrace(t);
    // Each pair records 4 events (2 slices, 2 counter samples); the 2 ring allocations 4 more.
    const recorded = 4 + pairs * 4;
    const main = 'driver (main thread)';
    expect(t.metadata.droppedByThread[main]).toBe(recorded - 32);
    expect(t.metadata.droppedEvents).toBe(recorded - 32);
    expect(t.traceEvents.filter((e) => e.name === 'map_single').length).toBeLessThan(pairs);
  });

  it('names the device track by BDF and model and places slices in time between map and unmap', async () => {
    const m = await machine({ trace: { enabled: true } });
    const dev = await m.addDevice({ bdf: '00:05.0' });
    const b = m.ram.alloc(8192);
    const h = m.dma.mapSingle(dev, b.pa, 8192, 'bidirectional');
    await dev.fill({ dst: dmaAddr(h.addr + 4096), len: 4096, value: 3 });
    m.dma.unmapSingle(dev, h);
    const t = m.trace!.toChromeTrace();
    const track = trackOf(t, '0000:00:05.0 copy-engine')!;
    expect(track).toBeDefined();
    const fill = eventsOn(t, track, 'X', 'fill')[0];
    const map = t.traceEvents.find((e) => e.name === 'map_single')!;
    const unmap = t.traceEvents.find((e) => e.name === 'unmap_single')!;
    expect(map.ts + map.dur!).toBeLessThanOrEqual(fill.ts);
    expect(fill.ts + fill.dur!).toBeLessThanOrEqual(unmap.ts);
    expect(fill.args).toMatchObject({ dst: '0x' + (h.addr + 4096).toString(16), len: 4096, status: 'ok' });
  });

  it('names nvme and nic descriptors by their command on the device track, never as copy-engine fills', async () => {
    const m = await machine({ trace: { enabled: true } });
    const ssd = await m.addDevice({ bdf: '00:04.0', model: 'nvme', nvme: { lbaSize: 512, size: 1 * MiB } });
    const nicDev = await m.addDevice({ bdf: '00:05.0', model: 'nic' });
    const nvme = new NvmeDriver(m, ssd);
    const nic = new NicDriver(m, nicDev);
    const b = m.ram.alloc(8192);
    await nvme.write(0, [{ pa: b.pa, len: 4096 }]);
    await nvme.read(0, [{ pa: b.pa + 4096, len: 4096 }]);
    nic.postRx([{ pa: b.pa, len: 2048 }]);
    await nic.transmit([{ pa: b.pa + 4096, len: 100 }]);
    await nic.receive();
    const t = m.trace!.toChromeTrace();
    expectValidTrace(t);
    const names = (bdf: string) => eventsOn(t, trackOf(t, bdf)!, 'X').filter((e) => e.cat === 'transfer').map((e) => e.name);
    expect(names('0000:00:04.0 nvme')).toEqual(['nvme write', 'nvme read']);
    expect(names('0000:00:05.0 nic')).toEqual(['nic rx post', 'nic tx']);
    nvme.close();
    await nic.close();
  });

  it('writes the trace file after close()', async () => {
    const { mkdtemp, readFile, rm } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const m = await machine({ trace: { enabled: true } });
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const b = m.ram.alloc(4096);
    const h = m.dma.mapSingle(dev, b.pa, 4096, 'from-device');
    await dev.fill({ dst: h.addr, len: 4096, value: 1 });
    m.dma.unmapSingle(dev, h);
    await m.close();
    const dir = await mkdtemp(join(tmpdir(), 'dmaemu-trace-'));
    try {
      const path = join(dir, 'out.json');
      await m.trace!.writeChromeTrace(path);
      const t = JSON.parse(await readFile(path, 'utf8')) as ChromeTrace;
      expectValidTrace(t);
      expect(t.traceEvents.filter((e) => e.cat === 'transfer')).toHaveLength(1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
