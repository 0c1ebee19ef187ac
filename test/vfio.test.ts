/**
 * VFIO over the machine's IOMMU groups (src/vfio): viability, containers shared by groups,
 * device handles, MAP_DMA / UNMAP_DMA with vfio_iommu_type1's rules and errno codes, and
 * leaving a container.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { Machine, MiB, GiB, dmaAddr, DmaError, type VfioContainer, type VfioGroup } from '../src/index.js';
import { allBytes } from './support.js';

const RAM = [{ base: 0, size: 32 * MiB }];
const ACS_ALL = { cap: ['SV', 'RR', 'CR', 'UF'], ctl: ['SV', 'RR', 'CR', 'UF'] };

/** Three root ports with ACS: 01:00.0 and 03:00.0 alone in their groups, 02:00.x one group. */
const topology = {
  functions: [
    { bdf: '00:00.0', type: 'host-bridge' },
    { bdf: '00:01.0', type: 'root-port', secondary: 1, acs: ACS_ALL, driver: 'pcieport' },
    { bdf: '00:02.0', type: 'root-port', secondary: 2, acs: ACS_ALL, driver: 'pcieport' },
    { bdf: '00:03.0', type: 'root-port', secondary: 3, acs: ACS_ALL, driver: 'pcieport' },
    { bdf: '01:00.0', type: 'endpoint', driver: 'vfio-pci' },
    { bdf: '02:00.0', type: 'endpoint', multifunction: true, driver: 'vfio-pci' },
    { bdf: '02:00.1', type: 'endpoint', driver: 'e1000e' },
    { bdf: '03:00.0', type: 'endpoint', driver: 'vfio-pci' },
  ],
};

const IOVA = 0x10_0000;

describe('group viability', () => {
  let m: Machine;
  beforeAll(async () => {
    m = await Machine.create({ ram: RAM, topology });
  });
  afterAll(async () => {
    await m.close();
  });

  it('a group with a device bound to a DMA-API driver is not viable', () => {
    expect(m.vfio.group('02:00.0').status()).toEqual({ viable: false, containerSet: false });
  });

  it('refuses a non-viable group with EBUSY naming the device and its driver', () => {
    const c = m.vfio.openContainer();
    expect(() => m.vfio.group('02:00.0').setContainer(c)).toThrow(/^EBUSY: .*device 0000:02:00\.1 is bound to driver e1000e/);
    expect(c.groups).toEqual([]);
  });

  it('a group becomes viable when its other device is bound to vfio-pci', () => {
    m.vfio.bind('02:00.1');
    try {
      expect(m.vfio.group('02:00.0').isViable()).toBe(true);
    } finally {
      m.vfio.bind('02:00.1', 'e1000e');
    }
  });

  it('a group whose ports are bound to pcieport is viable (the port driver leaves DMA alone)', () => {
    const n = m.pci.groups().find((g) => g.devices.includes('0000:00:01.0'))!.group;
    expect(m.vfio.group(n).isViable()).toBe(true);
  });

  it('group numbers are the machine IOMMU group numbers', () => {
    const g = m.vfio.group('01:00.0');
    expect(g.devices).toEqual(['0000:01:00.0']);
    expect(m.vfio.group(g.number)).toBe(g);
    expect(() => m.vfio.group(999)).toThrow(/^ENODEV: vfio: no IOMMU group 999/);
  });
});

describe('a viable group in a container', () => {
  it('moves its device into the container domain and DMAs through the container mappings', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    try {
      const dev = await m.addDevice({ bdf: '01:00.0' });
      const own = m.iommu.domainOf(dev)!;
      const c = m.vfio.openContainer();
      const g = m.vfio.group('01:00.0');
      g.setContainer(c);
      c.setIommu('type1v2');
      expect(g.status()).toEqual({ viable: true, containerSet: true });
      expect(m.iommu.domainOf(dev)!.id).toBe(c.domain!.id);
      expect(c.domain!.id).not.toBe(own.id);
      const buf = m.ram.alloc(8192);
      m.ram.fill(buf.pa, 8192, 0);
      c.mapDma({ vaddr: buf.pa, iova: IOVA, size: 8192, read: true, write: true });
      const h = g.device('01:00.0');
      expect(h.device === dev).toBe(true);
      await h.device.fill({ dst: dmaAddr(IOVA + 4096), len: 4096, value: 0x3c });
      expect(allBytes(m.ram.read(buf.pa + 4096, 4096), 0x3c)).toBe(true);
      h.close();
    } finally {
      await m.close();
    }
  });

  it('two groups share one container and its mappings: a device in each uses the same IOVA', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    try {
      const d1 = await m.addDevice({ bdf: '01:00.0' });
      const d3 = await m.addDevice({ bdf: '03:00.0' });
      const c = m.vfio.openContainer();
      const g1 = m.vfio.group('01:00.0');
      const g3 = m.vfio.group('03:00.0');
      expect(g1.number).not.toBe(g3.number);
      g1.setContainer(c);
      c.setIommu();
      g3.setContainer(c); // joins the existing domain
      expect(m.iommu.domainOf(d1)!.id).toBe(c.domain!.id);
      expect(m.iommu.domainOf(d3)!.id).toBe(c.domain!.id);
      const buf = m.ram.alloc(8192);
      c.mapDma({ vaddr: buf.pa, iova: IOVA, size: 8192, read: true, write: true });
      const h1 = g1.device('01:00.0');
      const h3 = g3.device('03:00.0');
      await h1.device.fill({ dst: dmaAddr(IOVA), len: 4096, value: 0x5a });
      await h3.device.copy({ src: dmaAddr(IOVA), dst: dmaAddr(IOVA + 4096), len: 4096 });
      expect(allBytes(m.ram.read(buf.pa + 4096, 4096), 0x5a)).toBe(true);
      h1.close();
      h3.close();
    } finally {
      await m.close();
    }
  });

  it('UNMAP_DMA is strict: the device faults on the IOVA afterwards', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    try {
      const dev = await m.addDevice({ bdf: '01:00.0' });
      const c = m.vfio.openContainer();
      const g = m.vfio.group('01:00.0');
      g.setContainer(c);
      c.setIommu();
      const buf = m.ram.alloc(4096);
      c.mapDma({ vaddr: buf.pa, iova: IOVA, size: 4096, write: true });
      await dev.fill({ dst: dmaAddr(IOVA), len: 64, value: 1 });
      expect(c.unmapDma({ iova: IOVA, size: 4096 })).toBe(4096);
      await expect(dev.fill({ dst: dmaAddr(IOVA), len: 64, value: 2 })).rejects.toMatchObject({ code: 'EFAULT' });
      expect(m.iommu.faults()).toMatchObject([{ bdf: '0000:01:00.0', addr: IOVA, reason: 'not-present', domain: c.domain!.id }]);
    } finally {
      await m.close();
    }
  });

  it('unsetContainer with a device handle open is EBUSY', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    try {
      await m.addDevice({ bdf: '01:00.0' });
      const c = m.vfio.openContainer();
      const g = m.vfio.group('01:00.0');
      g.setContainer(c);
      c.setIommu();
      const h = g.device('01:00.0');
      expect(() => g.unsetContainer()).toThrow(/^EBUSY: VFIO_GROUP_UNSET_CONTAINER on VFIO group \d+: device handle\(s\) still open \(0000:01:00\.0\)/);
      expect(g.container).toBe(c);
      h.close();
    } finally {
      await m.close();
    }
  });

  it('refuses DMA API mappings for a device whose group is in a container (EBUSY), and leaves it out of driver handles', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    try {
      const dev = await m.addDevice({ bdf: '01:00.0' });
      const c = m.vfio.openContainer();
      m.vfio.group('01:00.0').setContainer(c);
      c.setIommu();
      const buf = m.ram.alloc(4096);
      expect(() => m.dma.mapSingle(dev, buf.pa, 4096, 'to-device')).toThrow(/EBUSY.*0000:01:00\.0.*VFIO/);
      expect(() => m.dma.allocCoherent(dev, 4096)).toThrow(expect.objectContaining({ code: 'EBUSY' }));
      expect(m.driverHandle().devices.map((d) => d.info.bdf)).not.toContain('0000:01:00.0');
    } finally {
      await m.close();
    }
  });

  it('unsetContainer puts the devices back in their default domain, where the DMA API works again', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    try {
      const dev = await m.addDevice({ bdf: '01:00.0' });
      const own = m.iommu.domainOf(dev)!;
      const c = m.vfio.openContainer();
      const g = m.vfio.group('01:00.0');
      g.setContainer(c);
      c.setIommu();
      const vfioDomain = c.domain!;
      c.mapDma({ vaddr: m.ram.alloc(4096).pa, iova: IOVA, size: 4096, read: true });
      g.device('01:00.0').close();
      g.unsetContainer();
      expect(m.iommu.domainOf(dev)!.id).toBe(own!.id);
      expect(c.domain).toBeNull(); // the last group took the container's domain and mappings
      expect(c.mappings()).toEqual([]);
      expect(vfioDomain.attachedSlots()).toEqual([]);
      const buf = m.ram.alloc(4096);
      const h = m.dma.mapSingle(dev, buf.pa, 4096, 'from-device');
      await dev.fill({ dst: h.addr, len: 4096, value: 7 });
      m.dma.unmapSingle(dev, h);
      expect(allBytes(m.ram.read(buf.pa, 4096), 7)).toBe(true);
    } finally {
      await m.close();
    }
  });

  it('group.device refuses a device that is not in the group (ENODEV)', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    try {
      const c = m.vfio.openContainer();
      const g = m.vfio.group('01:00.0');
      g.setContainer(c);
      c.setIommu();
      expect(() => g.device('03:00.0')).toThrow(/^ENODEV: .*device 03:00\.0 is not in IOMMU group \d+ \(its devices: 0000:01:00\.0\)/);
    } finally {
      await m.close();
    }
  });

  it('group.device refuses a device not bound to vfio-pci (ENODEV)', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    try {
      m.vfio.unbind('01:00.0');
      const c = m.vfio.openContainer();
      const g = m.vfio.group('01:00.0');
      g.setContainer(c); // no driver is viable
      c.setIommu();
      expect(() => g.device('01:00.0')).toThrow(/^ENODEV: .*0000:01:00\.0 is bound to no driver, not to vfio-pci/);
    } finally {
      await m.close();
    }
  });

  it('group.device needs the container IOMMU set (EINVAL)', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    try {
      const g = m.vfio.group('01:00.0');
      g.setContainer(m.vfio.openContainer());
      expect(() => g.device('01:00.0')).toThrow(/^EINVAL: VFIO_GROUP_GET_DEVICE_FD/);
    } finally {
      await m.close();
    }
  });

  it('works without a topology once the device is bound to vfio-pci', async () => {
    const m = await Machine.create({ ram: RAM });
    try {
      const dev = await m.addDevice({ bdf: '00:05.0' });
      m.vfio.bind('00:05.0');
      const c = m.vfio.openContainer();
      const g = m.vfio.group('00:05.0');
      g.setContainer(c);
      c.setIommu();
      const buf = m.ram.alloc(4096);
      c.mapDma({ vaddr: buf.pa, iova: 2 * GiB, size: 4096, write: true });
      const h = g.device('00:05.0');
      await h.device.fill({ dst: dmaAddr(2 * GiB), len: 4096, value: 0x11 });
      expect(allBytes(m.ram.read(buf.pa, 4096), 0x11)).toBe(true);
      expect(m.iommu.domainOf(dev)!.id).toBe(c.domain!.id);
    } finally {
      await m.close();
    }
  });
});

describe('a group of two devices behind a PCIe-to-PCI bridge', () => {
  const bridged = {
    functions: [
      { bdf: '00:00.0', type: 'host-bridge' },
      { bdf: '00:1c.0', type: 'root-port', secondary: 1, acs: ACS_ALL, driver: 'pcieport' },
      { bdf: '01:00.0', type: 'pcie-to-pci-bridge', secondary: 2 },
      { bdf: '02:01.0', type: 'pci-device', driver: 'vfio-pci' },
      { bdf: '02:02.0', type: 'pci-device', driver: 'vfio-pci' },
    ],
  };

  it('moves both devices (and their shared alias) into the container and back', async () => {
    const m = await Machine.create({ ram: RAM, topology: bridged });
    try {
      const a = await m.addDevice({ bdf: '02:01.0' });
      const b = await m.addDevice({ bdf: '02:02.0' });
      const own = m.iommu.domainOf(a)!;
      const c = m.vfio.openContainer();
      const g = m.vfio.group('02:02.0');
      expect(g.devices).toEqual(['0000:01:00.0', '0000:02:01.0', '0000:02:02.0']);
      g.setContainer(c); // the bridge has no driver: viable
      c.setIommu();
      const ctx = m.iommu.unit.contexts;
      expect([0x0208, 0x0210, 0x0200].map((r) => ctx.domainOf(r))).toEqual([c.domain!.id, c.domain!.id, c.domain!.id]);
      expect(own.attachedSlots()).toEqual([]);
      const buf = m.ram.alloc(4096);
      c.mapDma({ vaddr: buf.pa, iova: IOVA, size: 4096, read: true, write: true });
      const ha = g.device('02:01.0');
      const hb = g.device('02:02.0');
      await ha.device.fill({ dst: dmaAddr(IOVA), len: 2048, value: 1 });
      await hb.device.fill({ dst: dmaAddr(IOVA + 2048), len: 2048, value: 2 });
      expect([allBytes(m.ram.read(buf.pa, 2048), 1), allBytes(m.ram.read(buf.pa + 2048, 2048), 2)]).toEqual([true, true]);
      ha.close();
      hb.close();
      g.unsetContainer();
      expect([m.iommu.domainOf(a)!.id, m.iommu.domainOf(b)!.id]).toEqual([own.id, own.id]);
      // Every alias context entry (each device's own ID and the bridge's) is back in the default domain.
      expect([0x0208, 0x0210, 0x0200].map((r) => ctx.domainOf(r))).toEqual([own.id, own.id, own.id]);
      expect(own.attachedSlots().sort()).toEqual([a.slot, b.slot].sort());
    } finally {
      await m.close();
    }
  });

  it('refuses to add a device to a group VFIO owns (EBUSY)', async () => {
    const m = await Machine.create({ ram: RAM, topology: bridged });
    try {
      await m.addDevice({ bdf: '02:01.0' });
      m.vfio.group('02:01.0').setContainer(m.vfio.openContainer());
      await expect(m.addDevice({ bdf: '02:02.0' })).rejects.toThrow(/^EBUSY: device 0000:02:02\.0: IOMMU group \d+ is owned by VFIO/);
    } finally {
      await m.close();
    }
  });
});

describe('container life cycle', () => {
  let m: Machine;
  beforeAll(async () => {
    m = await Machine.create({ ram: RAM, topology });
  });
  afterAll(async () => {
    await m.close();
  });

  it('SET_IOMMU before any group is EINVAL', () => {
    expect(() => m.vfio.openContainer().setIommu()).toThrow(/^EINVAL: VFIO_SET_IOMMU .*no group yet/);
  });

  it('MAP_DMA before SET_IOMMU is EINVAL', () => {
    const c = m.vfio.openContainer();
    expect(() => c.mapDma({ vaddr: 0, iova: 0, size: 4096, read: true })).toThrow(/^EINVAL: VFIO_IOMMU_MAP_DMA .*no IOMMU is set/);
  });

  it('an unknown IOMMU type is ENODEV', () => {
    const c = m.vfio.openContainer();
    const g = m.vfio.group('03:00.0');
    g.setContainer(c);
    try {
      expect(() => c.setIommu('spapr' as never)).toThrow(/^ENODEV: VFIO_SET_IOMMU/);
    } finally {
      g.unsetContainer();
    }
  });

  it('SET_CONTAINER twice is EINVAL', () => {
    const c = m.vfio.openContainer();
    const g = m.vfio.group('03:00.0');
    g.setContainer(c);
    try {
      expect(() => g.setContainer(m.vfio.openContainer())).toThrow(/^EINVAL: .*already in VFIO container/);
    } finally {
      g.unsetContainer();
    }
  });

  it('UNSET_CONTAINER without a container is EINVAL', () => {
    expect(() => m.vfio.group('03:00.0').unsetContainer()).toThrow(/^EINVAL: .*not in a container/);
  });
});

describe('MAP_DMA and UNMAP_DMA rules', () => {
  let m: Machine;
  let g: VfioGroup;
  let c: VfioContainer;
  let ram: number;
  beforeAll(async () => {
    m = await Machine.create({ ram: RAM, topology });
    c = m.vfio.openContainer({ dmaEntryLimit: 8 });
    g = m.vfio.group('03:00.0');
    g.setContainer(c);
    c.setIommu('type1v2');
    ram = m.ram.alloc(64 * 1024).pa;
  });
  afterAll(async () => {
    await m.close();
  });
  const map = (iova: number, size: number, extra: Record<string, unknown> = {}) => c.mapDma({ vaddr: ram, iova, size, read: true, write: true, ...extra });
  const clear = () => c.unmapDma({ all: true });

  it('an unaligned iova is EINVAL', () => {
    expect(() => map(0x1000_0800, 4096)).toThrow(/^EINVAL: VFIO_IOMMU_MAP_DMA .*iova 0x10000800.*multiples of the smallest IOMMU page size/);
  });

  it('an unaligned size is EINVAL', () => {
    expect(() => map(0x1000_0000, 100)).toThrow(/^EINVAL: .*multiples of the smallest IOMMU page size/);
  });

  it('an unaligned vaddr is EINVAL', () => {
    expect(() => map(0x1000_0000, 4096, { vaddr: ram + 8 })).toThrow(/^EINVAL: .*multiples/);
  });

  it('size 0 is EINVAL', () => {
    expect(() => map(0x1000_0000, 0)).toThrow(/^EINVAL: .*size 0/);
  });

  it('a size that does not fit is EINVAL', () => {
    expect(() => map(0x1000_0000, 2 ** 64)).toThrow(/^EINVAL: .*size .* does not fit/);
  });

  it('neither read nor write is EINVAL', () => {
    expect(() => map(0x1000_0000, 4096, { read: false, write: false })).toThrow(/^EINVAL: .*neither VFIO_DMA_MAP_FLAG_READ nor VFIO_DMA_MAP_FLAG_WRITE/);
  });

  it('a mapping over an existing one is EEXIST', () => {
    map(0x1000_0000, 8192);
    try {
      expect(() => map(0x1000_1000, 8192)).toThrow(/^EEXIST: VFIO_IOMMU_MAP_DMA .*iova 0x10001000.*overlaps the mapping at iova \[0x10000000, 0x10002000\)/);
    } finally {
      clear();
    }
  });

  it('more mappings than dma_entry_limit is ENOSPC', () => {
    try {
      for (let i = 0; i < 8; i++) map(0x2000_0000 + i * 0x1000, 4096);
      expect(c.info().dmaAvail).toBe(0);
      expect(() => map(0x3000_0000, 4096)).toThrow(/^ENOSPC: .*dma_entry_limit/);
    } finally {
      clear();
    }
  });

  it('an iova in the reserved MSI window is EINVAL', () => {
    expect(() => map(0xfee0_0000, 4096)).toThrow(/^EINVAL: .*reserved MSI window/);
  });

  it('an iova beyond the aperture is EINVAL', () => {
    expect(() => map(2 ** 48, 4096)).toThrow(/^EINVAL: .*aperture/);
  });

  it('a vaddr that is not RAM is EFAULT', () => {
    expect(() => map(0x1000_0000, 4096, { vaddr: 3 * GiB })).toThrow(/^EFAULT: .*cannot be pinned/);
  });

  it('UNMAP_DMA of nothing returns 0 bytes', () => {
    expect(c.unmapDma({ iova: 0x4000_0000, size: 0x10000 })).toBe(0);
  });

  it('UNMAP_DMA that would split a mapping at its start is EINVAL (type1v2)', () => {
    map(0x1000_0000, 0x4000);
    try {
      expect(() => c.unmapDma({ iova: 0x1000_1000, size: 0x3000 })).toThrow(/^EINVAL: VFIO_IOMMU_UNMAP_DMA .*would split the mapping \[0x10000000, 0x10004000\) at its start/);
    } finally {
      clear();
    }
  });

  it('UNMAP_DMA that would split a mapping at its end is EINVAL (type1v2)', () => {
    map(0x1000_0000, 0x4000);
    try {
      expect(() => c.unmapDma({ iova: 0x1000_0000, size: 0x2000 })).toThrow(/^EINVAL: .*would split the mapping \[0x10000000, 0x10004000\) at its end/);
      expect(c.mappings()).toHaveLength(1);
    } finally {
      clear();
    }
  });

  it('UNMAP_DMA over two whole mappings returns their bytes', () => {
    map(0x1000_0000, 0x2000);
    map(0x1000_4000, 0x1000);
    expect(c.unmapDma({ iova: 0x0f00_0000, size: 0x0200_0000 })).toBe(0x3000);
    expect(c.mappings()).toEqual([]);
  });

  it('UNMAP_DMA all returns every mapped byte', () => {
    map(0x1000_0000, 0x2000);
    map(0x5000_0000, 0x1000);
    expect(c.unmapDma({ all: true })).toBe(0x3000);
  });

  it('UNMAP_DMA all with an iova is EINVAL', () => {
    expect(() => c.unmapDma({ all: true, iova: 0x1000 } as never)).toThrow(/^EINVAL: .*takes no iova or size/);
  });

  it('UNMAP_DMA with an unaligned iova is EINVAL', () => {
    expect(() => c.unmapDma({ iova: 0x1000_0010, size: 0x1000 })).toThrow(/^EINVAL: .*iova is not aligned/);
  });

  it('UNMAP_DMA of size 0 is EINVAL', () => {
    expect(() => c.unmapDma({ iova: 0x1000_0000, size: 0 })).toThrow(/^EINVAL: .*non-zero multiple/);
  });

  it('info reports the usable IOVA ranges around the MSI window', () => {
    expect(c.info().iovaRanges).toEqual([
      { start: 0, end: 0xfedf_ffff },
      { start: 0xfef0_0000, end: 2 ** 48 - 1 },
    ]);
  });
});

describe('type1 (v1) unmap semantics', () => {
  it('an UNMAP_DMA starting inside a mapping unmaps nothing; one covering its start unmaps it whole', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    try {
      const c = m.vfio.openContainer();
      m.vfio.group('03:00.0').setContainer(c);
      c.setIommu('type1');
      const pa = m.ram.alloc(0x4000).pa;
      c.mapDma({ vaddr: pa, iova: 0x1000_0000, size: 0x4000, read: true });
      expect(c.unmapDma({ iova: 0x1000_1000, size: 0x1000 })).toBe(0);
      expect(c.unmapDma({ iova: 0x1000_0000, size: 0x1000 })).toBe(0x4000);
    } finally {
      await m.close();
    }
  });
});

describe('SET_CONTAINER with devices being added, and its failures', () => {
  it('is EBUSY, naming the device, while m.addDevice of a device of the group is pending', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    try {
      const c = m.vfio.openContainer();
      const g = m.vfio.group('01:00.0');
      const p = m.addDevice({ bdf: '01:00.0' });
      try {
        expect(() => g.setContainer(c)).toThrow(/^EBUSY: VFIO_GROUP_SET_CONTAINER on VFIO group \d+: device 0000:01:00\.0 is still being added to the machine/);
        expect(g.container).toBeNull();
      } finally {
        await p;
      }
    } finally {
      await m.close();
    }
  });

  it('moves the group once the pending add has finished, and its device DMAs through the container', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    try {
      const c = m.vfio.openContainer();
      const g = m.vfio.group('01:00.0');
      const p = m.addDevice({ bdf: '01:00.0' });
      expect(() => g.setContainer(c)).toThrow(expect.objectContaining({ code: 'EBUSY' }));
      const dev = await p;
      g.setContainer(c);
      c.setIommu();
      const buf = m.ram.alloc(4096);
      c.mapDma({ vaddr: buf.pa, iova: IOVA, size: 4096, write: true });
      await dev.fill({ dst: dmaAddr(IOVA), len: 4096, value: 0x2e });
      expect(allBytes(m.ram.read(buf.pa, 4096), 0x2e)).toBe(true);
    } finally {
      await m.close();
    }
  });

  it('failing for want of a domain slot (ENOSPC) leaves the group unowned, in its default domain', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    const table = m.iommu.unit.domainTable;
    const taken: number[] = [];
    try {
      const dev = await m.addDevice({ bdf: '01:00.0' });
      const own = m.iommu.domainOf(dev)!;
      for (;;) {
        try {
          taken.push(table.claim('blocked', 0)); // every free slot: no blocking domain can be had
        } catch {
          break;
        }
      }
      const c = m.vfio.openContainer();
      const g = m.vfio.group('01:00.0');
      expect(() => g.setContainer(c)).toThrow(/^ENOSPC: iommu: all \d+ domain slots are in use/);
      expect(g.status()).toEqual({ viable: true, containerSet: false });
      expect(c.groups).toEqual([]);
      expect(m.iommu.domainOf(dev)!.id).toBe(own.id);
      const buf = m.ram.alloc(4096);
      const h = m.dma.mapSingle(dev, buf.pa, 4096, 'from-device'); // the kernel still owns its DMA
      m.dma.unmapSingle(dev, h);
      for (const n of taken.splice(0)) table.release(n);
      g.setContainer(c); // and VFIO can claim it later
      expect(g.container).toBe(c);
    } finally {
      for (const n of taken) table.release(n);
      await m.close();
    }
  });
});

describe('VFIO after the machine is closed', () => {
  it('every VFIO entry point is ESHUTDOWN', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    await m.addDevice({ bdf: '01:00.0' });
    const c = m.vfio.openContainer();
    const g = m.vfio.group('01:00.0');
    g.setContainer(c);
    c.setIommu();
    const h = g.device('01:00.0');
    const idle = m.vfio.openContainer();
    const g3 = m.vfio.group('03:00.0');
    await m.close();
    const calls: Array<[string, () => unknown]> = [
      ['openContainer', () => m.vfio.openContainer()],
      ['containers', () => m.vfio.containers()],
      ['group', () => m.vfio.group('03:00.0')],
      ['bind', () => m.vfio.bind('03:00.0')],
      ['unbind', () => m.vfio.unbind('03:00.0')],
      ['driverOf', () => m.vfio.driverOf('03:00.0')],
      ['setIommu', () => idle.setIommu()],
      ['info', () => c.info()],
      ['mapDma', () => c.mapDma({ vaddr: 0, iova: IOVA, size: 4096, read: true })],
      ['unmapDma', () => c.unmapDma({ all: true })],
      ['setContainer', () => g3.setContainer(idle)],
      ['unsetContainer', () => g.unsetContainer()],
      ['device', () => g.device('01:00.0')],
      ['status', () => g.status()],
      ['handle.device', () => h.device],
    ];
    for (const [name, f] of calls) {
      let err: unknown = null;
      try {
        f();
      } catch (e) {
        err = e;
      }
      expect(err, name).toBeInstanceOf(DmaError);
      expect((err as DmaError).code, name).toBe('ESHUTDOWN');
      expect((err as DmaError).message, name).toMatch(/the machine is closed/);
    }
  });

  it('creates no domain: nothing is left in the IOMMU after close', async () => {
    const m = await Machine.create({ ram: RAM, topology });
    await m.addDevice({ bdf: '01:00.0' });
    const g = m.vfio.group('03:00.0');
    const c = m.vfio.openContainer();
    await m.close();
    expect(() => g.setContainer(c)).toThrow(expect.objectContaining({ code: 'ESHUTDOWN' }));
    expect(() => c.setIommu()).toThrow(expect.objectContaining({ code: 'ESHUTDOWN' }));
    expect(m.pci.liveDomains()).toEqual([]);
    const table = m.iommu.unit.domainTable;
    expect(Array.from({ length: 256 }, (_, n) => table.typeCode(n)).filter((t) => t !== 0)).toEqual([]);
  });
});

describe('VFIO container domains reserve nothing (unlike default DMA domains)', () => {
  const BAR = 0xfd20_0000;
  const withBar = {
    functions: topology.functions.map((f) => (f.bdf === '03:00.0' ? { ...f, bars: [{ index: 0, base: BAR, size: '64K' }] } : f)),
  };

  it('MAP_DMA at an IOVA inside a BAR window works: type1 refuses only what info().iovaRanges leaves out', async () => {
    const m = await Machine.create({ ram: RAM, topology: withBar });
    try {
      const dev = await m.addDevice({ bdf: '01:00.0' });
      expect(m.iommu.domainOf(dev)!.iova.isAllocated(BAR / 4096)).toBe(true); // the default domain reserves it
      const c = m.vfio.openContainer();
      const g = m.vfio.group('01:00.0');
      g.setContainer(c);
      c.setIommu();
      expect(c.info().iovaRanges).toEqual([
        { start: 0, end: 0xfedf_ffff },
        { start: 0xfef0_0000, end: 2 ** 48 - 1 },
      ]);
      expect(c.domain!.iova.isAllocated(BAR / 4096)).toBe(false);
      const buf = m.ram.alloc(4096);
      c.mapDma({ vaddr: buf.pa, iova: BAR, size: 4096, write: true });
      await dev.fill({ dst: dmaAddr(BAR), len: 4096, value: 0x19 }); // 01:00.0 has no P2P route there: translated
      expect(allBytes(m.ram.read(buf.pa, 4096), 0x19)).toBe(true);
    } finally {
      await m.close();
    }
  });
});
