import { describe, it, expect } from 'vitest';
import { Machine, GiB, MiB, dmaAddr, type MachineConfig, type DmaDebugCheck } from '../src/index.js';
import { closeAfterEach } from './support.js';
const { machines } = closeAfterEach();

const cfg = (enabled: boolean, extra: MachineConfig = {}): MachineConfig => ({
  ram: [{ base: 0, size: 16 * MiB }, { base: 4 * GiB, size: 16 * MiB }],
  swiotlb: { size: 1 * MiB },
  dmaDebug: { enabled },
  ...extra,
});
async function setup(enabled = true, extra: MachineConfig = {}) {
  const m = await Machine.create(cfg(enabled, extra));
  machines.push(m);
  // A 64-bit device: without an IOMMU its mappings are direct, where only debugging can see misuse.
  const dev = await m.addDevice({ bdf: '00:03.0' });
  return { m, dev, debug: m.dma.debug! };
}

const checks = (m: Machine): DmaDebugCheck[] => m.dma.debug!.reports().map((r) => r.check);
const THIS_FILE = /dma-debug\.test\.ts:\d+/;

describe('DMA-API debugging', () => {
  it('is off unless asked for, like CONFIG_DMA_API_DEBUG', async () => {
    const { m } = await setup(false);
    expect(m.dma.debug).toBeNull();
  });

  it('stays silent on correct use of every call', async () => {
    for (const enabled of [true, false]) {
      const { m, dev } = await setup(true, { iommu: { enabled } });
      const a = m.ram.alloc(8192, { above: 4 * GiB });
      const h = m.dma.mapSingle(dev, a.pa, 8192, 'from-device');
      m.dma.syncForCpu(dev, h);
      m.dma.syncForCpu(dev, dmaAddr(h.addr + 4096), 100, 'from-device'); // a partial sync inside it
      m.dma.syncForDevice(dev, h);
      m.dma.unmapSingle(dev, h);
      const sg = m.dma.mapSg(dev, [{ pa: a.pa, len: 4096 }, { pa: a.pa + 4096, len: 4096 }], 'bidirectional');
      m.dma.syncForCpu(dev, sg);
      m.dma.unmapSg(dev, sg);
      const c = m.dma.allocCoherent(dev, 4096);
      m.dma.freeCoherent(dev, c);
      await m.close();
      expect(m.dma.debug!.reports()).toEqual([]);
    }
  });

  it('reports an unmap of something never mapped, naming the device and the caller', async () => {
    const { m, dev, debug } = await setup(true, { iommu: { enabled: false } });
    expect(() => m.dma.unmapSingle(dev, { addr: dmaAddr(0x123000), len: 4096, dir: 'to-device', bounced: false, domainId: -1 })).not.toThrow();
    const [r] = debug.reports();
    expect(r).toMatchObject({ check: 'unmap-never-mapped', bdf: '0000:00:03.0', addr: 0x123000 });
    expect(r.at).toMatch(THIS_FILE);
    expect(r.message).toMatch(/0000:00:03\.0.*not allocated.*0x00123000/);
  });

  it('reports a double unmap with where the mapping was made', async () => {
    const { m, dev, debug } = await setup(true, { iommu: { enabled: false } });
    const a = m.ram.alloc(4096);
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'to-device');
    m.dma.unmapSingle(dev, h);
    m.dma.unmapSingle(dev, h);
    const [r] = debug.reports();
    expect(r.check).toBe('double-unmap');
    expect(r.mapped?.origin).toMatch(THIS_FILE);
  });

  it('reports an unmap with another size', async () => {
    const { m, dev } = await setup(true, { iommu: { enabled: false } });
    const a = m.ram.alloc(8192);
    const h = m.dma.mapSingle(dev, a.pa, 8192, 'to-device');
    m.dma.unmapSingle(dev, { ...h, len: 4096 });
    expect(checks(m)).toEqual(['unmap-wrong-size']);
    expect(m.dma.debug!.reports()[0].mapped).toMatchObject({ len: 8192, dir: 'to-device' });
  });

  it('reports an unmap with another direction', async () => {
    const { m, dev } = await setup(true, { iommu: { enabled: false } });
    const a = m.ram.alloc(4096);
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'to-device');
    m.dma.unmapSingle(dev, { ...h, dir: 'from-device' });
    expect(checks(m)).toEqual(['unmap-wrong-dir']);
  });

  it('reports freeing a streaming mapping with freeCoherent (wrong function)', async () => {
    const { m, dev } = await setup(true, { iommu: { enabled: false } });
    const a = m.ram.alloc(4096, { below: 4 * GiB });
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'bidirectional');
    m.dma.freeCoherent(dev, { cpuAddr: a.pa, addr: h.addr, size: 4096, domainId: -1 });
    expect(checks(m)).toEqual(['unmap-wrong-type']);
  });

  it('reports a sync outside any mapping', async () => {
    const { m, dev } = await setup(true, { iommu: { enabled: false } });
    m.dma.syncForCpu(dev, dmaAddr(0x200000), 64, 'from-device');
    expect(checks(m)).toEqual(['sync-outside']);
  });

  it('reports a sync running past the end of its mapping', async () => {
    const { m, dev } = await setup(true, { iommu: { enabled: false } });
    const a = m.ram.alloc(8192);
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'from-device');
    m.dma.syncForCpu(dev, dmaAddr(h.addr + 4000), 200, 'from-device');
    expect(checks(m)).toEqual(['sync-outside']);
    expect(m.dma.debug!.reports()[0].message).toMatch(/past the mapping's end/);
  });

  it('reports a sync in the wrong direction', async () => {
    const { m, dev } = await setup(true, { iommu: { enabled: false } });
    const a = m.ram.alloc(4096);
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'to-device');
    m.dma.syncForCpu(dev, h.addr, 4096, 'from-device');
    expect(checks(m)).toEqual(['sync-wrong-dir']);
  });

  it('reports each mapping still live at close(), with its device and origin', async () => {
    const { m, dev, debug } = await setup(true);
    const a = m.ram.alloc(4096);
    const b = m.ram.alloc(4096);
    m.dma.mapSingle(dev, a.pa, 4096, 'to-device');
    m.dma.mapSg(dev, [{ pa: b.pa, len: 4096 }], 'from-device');
    await m.close();
    const leaks = debug.reports().filter((r) => r.check === 'leak');
    expect(leaks.map((r) => r.kind).sort()).toEqual(['sg', 'single']);
    for (const r of leaks) {
      expect(r.bdf).toBe('0000:00:03.0');
      expect(r.mapped?.origin).toMatch(THIS_FILE);
    }
  });

  it('reports an sg segment longer than the device supports', async () => {
    const { m } = await setup(true, { iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:04.0', maxSegmentSize: 4096 });
    const a = m.ram.alloc(16384);
    const sg = m.dma.mapSg(dev, [{ pa: a.pa, len: 16384 }], 'to-device'); // one entry already too long
    expect(checks(m)).toEqual(['sg-segment-too-long']);
    m.dma.unmapSg(dev, sg);
  });

  it('reports a double unmap of a bounced mapping, which SWIOTLB then refuses (EINVAL)', async () => {
    const { m } = await setup(true, { iommu: { enabled: false } });
    const dev = await m.addDevice({ bdf: '00:04.0', dmaMask: 32 });
    const a = m.ram.alloc(4096, { above: 4 * GiB });
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'to-device');
    expect(h.bounced).toBe(true);
    m.dma.unmapSingle(dev, h);
    expect(() => m.dma.unmapSingle(dev, h)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(checks(m)).toEqual(['double-unmap']);
  });

  it('checks a mapping made through one DMA API against an unmap through another attached to the same handle (shared records)', async () => {
    const { m, dev } = await setup(true, { iommu: { enabled: false } });
    const a = m.ram.alloc(4096);
    const h = m.dma.mapSingle(dev, a.pa, 4096, 'to-device');
    const { DmaApi } = await import('../src/dma/dma-api.js');
    const other = DmaApi.attach(m.dma.handle); // as a driver thread would
    const d2 = other.device(dev);
    other.unmapSingle(d2, h);
    other.unmapSingle(d2, h);
    other.close();
    expect(checks(m)).toEqual(['double-unmap']);
  });
});
