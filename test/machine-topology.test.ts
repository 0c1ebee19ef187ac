/**
 * Machine integration of the PCI topology (machine-topology.ts): devices placed at their BDF,
 * requester IDs after aliasing, a context entry per alias, one domain per IOMMU group, faults
 * named by device, and bad placements refused.
 */
import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Machine, MiB, DmaError, parseLspci, dmaAddr, MSI_WINDOW } from '../src/index.js';
import { pattern, same, allBytes } from './support.js';

const RAM = [{ base: 0, size: 32 * MiB }];
const ACS_ALL = { cap: ['SV', 'RR', 'CR', 'UF'], ctl: ['SV', 'RR', 'CR', 'UF'] };

/** A PCIe-to-PCI bridge with two conventional devices behind it, and endpoints elsewhere. */
const bridged = {
  functions: [
    { bdf: '00:00.0', type: 'host-bridge' },
    { bdf: '00:02.0', type: 'endpoint' },
    { bdf: '00:03.0', type: 'endpoint', multifunction: true },
    { bdf: '00:03.1', type: 'endpoint' },
    { bdf: '00:1c.0', type: 'root-port', secondary: 1, acs: ACS_ALL, driver: 'pcieport' },
    { bdf: '01:00.0', type: 'pcie-to-pci-bridge', secondary: 2 },
    { bdf: '02:01.0', type: 'pci-device' },
    { bdf: '02:02.0', type: 'pci-device' },
  ],
};

async function withMachine(config: Parameters<typeof Machine.create>[0], f: (m: Machine) => Promise<void>): Promise<void> {
  const m = await Machine.create({ ram: RAM, ...config });
  try {
    await f(m);
  } finally {
    await m.close();
  }
}

describe('devices behind a PCIe-to-PCI bridge', () => {
  it('carry the bridge alias (secondary bus, 00.0) as their requester ID', async () => {
    await withMachine({ topology: bridged }, async (m) => {
      const a = await m.addDevice({ bdf: '02:01.0' });
      expect(a.requesterId).toBe(0x0200);
      expect(m.pci.placement('02:01.0')!.aliases).toEqual([0x0208, 0x0200]);
    });
  });

  it('get a context entry for every alias, all pointing at the group domain', async () => {
    await withMachine({ topology: bridged }, async (m) => {
      const a = await m.addDevice({ bdf: '02:01.0' });
      const d = m.iommu.domainOf(a)!;
      const ctx = m.iommu.unit.contexts;
      expect([ctx.domainOf(0x0208), ctx.domainOf(0x0200)]).toEqual([d.id, d.id]);
    });
  });

  it('share one domain', async () => {
    await withMachine({ topology: bridged }, async (m) => {
      const a = await m.addDevice({ bdf: '02:01.0' });
      const b = await m.addDevice({ bdf: '02:02.0' });
      expect(m.iommu.domainOf(a)).not.toBeNull();
      expect(m.iommu.domainOf(b)!.id).toBe(m.iommu.domainOf(a)!.id);
      expect(m.iommu.domainOf(a)!.attachedSlots().sort()).toEqual([a.slot, b.slot].sort());
    });
  });

  it('can use a mapping made for the other one', async () => {
    await withMachine({ topology: bridged }, async (m) => {
      const a = await m.addDevice({ bdf: '02:01.0' });
      const b = await m.addDevice({ bdf: '02:02.0' });
      const buf = m.ram.alloc(8192);
      const data = pattern(4096, 7);
      m.ram.write(buf.pa, data);
      const h = m.dma.mapSingle(a, buf.pa, 8192, 'bidirectional'); // mapped for a ...
      await b.copy({ src: h.addr, dst: dmaAddr(h.addr + 4096), len: 4096 }); // ... used by b
      expect(same(m.ram.read(buf.pa + 4096, 4096), data)).toBe(true);
      m.dma.unmapSingle(a, h);
    });
  });

  it('report a fault on their shared alias with the alias and both devices', async () => {
    await withMachine({ topology: bridged }, async (m) => {
      await m.addDevice({ bdf: '02:01.0' });
      const b = await m.addDevice({ bdf: '02:02.0' });
      await expect(b.fill({ dst: dmaAddr(0x7000_0000), len: 64, value: 1 })).rejects.toMatchObject({ code: 'EFAULT' });
      const [f, ...rest] = m.iommu.faults();
      expect(rest).toEqual([]);
      expect(f).toMatchObject({ bdf: '0000:02:00.0', devices: ['0000:02:01.0', '0000:02:02.0'], requesterId: 0x0200, addr: 0x7000_0000, access: 'write' });
    });
  });

  it('report a fault with the device when it alone uses the alias', async () => {
    await withMachine({ topology: bridged }, async (m) => {
      const a = await m.addDevice({ bdf: '02:01.0' });
      await expect(a.fill({ dst: dmaAddr(0x7000_0000), len: 64, value: 1 })).rejects.toMatchObject({ code: 'EFAULT' });
      expect(m.iommu.faults()).toMatchObject([{ bdf: '0000:02:01.0', devices: ['0000:02:01.0'], requesterId: 0x0200 }]);
    });
  });
});

describe('IOMMU groups and domains', () => {
  it('functions of a multifunction device without ACS share one domain with their own requester IDs', async () => {
    await withMachine({ topology: bridged }, async (m) => {
      const f0 = await m.addDevice({ bdf: '00:03.0' });
      const f1 = await m.addDevice({ bdf: '00:03.1' });
      expect([f0.requesterId, f1.requesterId]).toEqual([0x18, 0x19]);
      expect(m.pci.groupOf('00:03.0')).toBe(m.pci.groupOf('00:03.1'));
      expect(m.iommu.domainOf(f1)!.id).toBe(m.iommu.domainOf(f0)!.id);
    });
  });

  it('devices of different groups get different domains', async () => {
    await withMachine({ topology: bridged }, async (m) => {
      const e = await m.addDevice({ bdf: '00:02.0' });
      const f0 = await m.addDevice({ bdf: '00:03.0' });
      expect(m.pci.groupOf('00:02.0')).not.toBe(m.pci.groupOf('00:03.0'));
      expect(m.iommu.domainOf(e)!.id).not.toBe(m.iommu.domainOf(f0)!.id);
    });
  });

  it('the group domain is destroyed with the last device of the group', async () => {
    const m = await Machine.create({ ram: RAM, topology: bridged });
    let ids: number[] = [];
    try {
      const a = await m.addDevice({ bdf: '02:01.0' });
      await m.addDevice({ bdf: '02:02.0' });
      ids = [m.iommu.domainOf(a)!.id];
      expect(m.pci.liveDomains().map((d) => d.id)).toEqual(ids);
    } finally {
      await m.close();
    }
    expect(m.pci.liveDomains()).toEqual([]);
    expect(m.iommu.unit.domainTable.typeCode(ids[0])).toBe(0); // DOMAIN_FREE
  });

  it('the acsOverride splits the machine groups', async () => {
    await withMachine({ topology: bridged, acsOverride: 'multifunction' }, async (m) => {
      const f0 = await m.addDevice({ bdf: '00:03.0' });
      const f1 = await m.addDevice({ bdf: '00:03.1' });
      expect(m.pci.groupOf('00:03.0')).not.toBe(m.pci.groupOf('00:03.1'));
      expect(m.iommu.domainOf(f1)!.id).not.toBe(m.iommu.domainOf(f0)!.id);
    });
  });

  it('a topology parsed from lspci places devices behind its PCIe-to-PCI bridge on one alias', async () => {
    const text = readFileSync(resolve(__dirname, 'fixtures/topologies/Q09-pcie-pci-bridge-behind-root-port.lspci.txt'), 'utf8');
    await withMachine({ topology: parseLspci(text) }, async (m) => {
      const a = await m.addDevice({ bdf: '02:01.0' });
      const b = await m.addDevice({ bdf: '02:03.0' });
      expect([a.requesterId, b.requesterId]).toEqual([0x0200, 0x0200]);
      expect(m.iommu.domainOf(b)!.id).toBe(m.iommu.domainOf(a)!.id);
    });
  });
});

describe('placement errors', () => {
  it('refuses a BDF the topology has no function at (ENODEV, naming it)', async () => {
    await withMachine({ topology: bridged }, async (m) => {
      await expect(m.addDevice({ bdf: '05:00.0' })).rejects.toThrow(/^ENODEV: .*0000:05:00\.0/);
      expect(m.devices()).toEqual([]);
    });
  });

  it('refuses a port as a device (EINVAL, naming it and its type)', async () => {
    await withMachine({ topology: bridged }, async (m) => {
      await expect(m.addDevice({ bdf: '00:1c.0' })).rejects.toThrow(/^EINVAL: device 0000:00:1c\.0: .*a root-port/);
    });
  });

  it('refuses a PCIe-to-PCI bridge as a device', async () => {
    await withMachine({ topology: bridged }, async (m) => {
      await expect(m.addDevice({ bdf: '01:00.0' })).rejects.toThrow(/^EINVAL: device 0000:01:00\.0: .*pcie-to-pci-bridge/);
    });
  });

  it('refuses a host bridge as a device', async () => {
    await withMachine({ topology: bridged }, async (m) => {
      await expect(m.addDevice({ bdf: '00:00.0' })).rejects.toThrow(/^EINVAL: device 0000:00:00\.0: .*host-bridge/);
    });
  });

  it('frees a refused address for a later add of the same BDF once the cause is gone', async () => {
    await withMachine({ topology: bridged }, async (m) => {
      // The cause: no RAM left for the device's rings. The address was reserved (placed, its
      // group's domain created) before the start failed.
      const held = [];
      for (const size of [1 * MiB, 4096]) {
        for (;;) {
          try {
            held.push(m.ram.alloc(size));
          } catch {
            break;
          }
        }
      }
      await expect(m.addDevice({ bdf: '00:02.0' })).rejects.toBeInstanceOf(DmaError);
      expect(m.pci.placement('00:02.0')).toBeUndefined();
      expect(m.pci.liveDomains()).toEqual([]);
      for (const b of held) m.ram.free(b);
      const d = await m.addDevice({ bdf: '00:02.0' }); // the same address: not 'EEXIST'
      expect(d.bdf).toBe('0000:00:02.0');
      expect(m.pci.placement('00:02.0')).toBeDefined();
    });
  });

  it('a device refused because VFIO owns its group can be added at the same BDF once the group leaves its container', async () => {
    await withMachine({ topology: bridged }, async (m) => {
      await m.addDevice({ bdf: '02:01.0' });
      const g = m.vfio.group('02:01.0');
      g.setContainer(m.vfio.openContainer());
      await expect(m.addDevice({ bdf: '02:02.0' })).rejects.toThrow(/^EBUSY: device 0000:02:02\.0: IOMMU group \d+ is owned by VFIO/);
      g.unsetContainer();
      const b = await m.addDevice({ bdf: '02:02.0' });
      expect(m.iommu.domainOf(b)!.id).toBe(m.iommu.domainOf(m.device('02:01.0')!)!.id);
    });
  });

  it('a malformed topology fails Machine.create with the entry and field', async () => {
    await expect(Machine.create({ ram: RAM, topology: { functions: [{ bdf: '00:01.0', type: 'root-port' }] } })).rejects.toThrow(/^EINVAL: topology functions\[0\] \(0000:00:01\.0\): secondary/);
  });

  it('an acsOverride without a topology is EINVAL', async () => {
    await expect(Machine.create({ ram: RAM, acsOverride: 'downstream' })).rejects.toThrow(/^EINVAL: config\.acsOverride/);
  });
});

describe('without a topology', () => {
  it('each device is its own group with its own domain, its requester ID its BDF', async () => {
    await withMachine({}, async (m) => {
      const a = await m.addDevice({ bdf: '00:03.0' });
      const b = await m.addDevice({ bdf: '00:04.0' });
      expect([a.requesterId, b.requesterId]).toEqual([0x18, 0x20]);
      expect(m.iommu.domainOf(a)!.id).not.toBe(m.iommu.domainOf(b)!.id);
      expect(m.pci.groups()).toEqual([
        { group: 0, devices: ['0000:00:03.0'] },
        { group: 1, devices: ['0000:00:04.0'] },
      ]);
      const buf = m.ram.alloc(4096);
      const h = m.dma.mapSingle(a, buf.pa, 4096, 'from-device');
      await a.fill({ dst: h.addr, len: 4096, value: 9 });
      m.dma.unmapSingle(a, h);
      expect(allBytes(m.ram.read(buf.pa, 4096), 9)).toBe(true);
    });
  });
});

describe('reserved IOVA ranges of default DMA domains (iova_reserve_iommu_regions)', () => {
  const BAR = 0xfd20_0000;
  const withBars = {
    functions: [
      ...bridged.functions.map((f) => (f.bdf === '00:02.0' ? { ...f, bars: [{ index: 0, base: BAR, size: '64K' }, { index: 2, base: 0x1_0000_0000, size: '1M', is64: true }] } : f)),
    ],
  };

  it('the DMA API never hands out an IOVA in the MSI window, even without a topology', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 64 * MiB }] });
    try {
      const d = await m.addDevice({ bdf: '00:03.0', dmaMask: 32 });
      const size = 16 * MiB; // aligned to 16 MiB, top-down: [0xfe000000, 0xff000000) holds the window
      const buf = m.ram.alloc(size);
      const h = m.dma.mapSingle(d, buf.pa, size, 'to-device');
      try {
        expect(h.addr + size <= MSI_WINDOW.start || h.addr >= MSI_WINDOW.end).toBe(true);
      } finally {
        m.dma.unmapSingle(d, h);
      }
      const iova = m.iommu.domainOf(d)!.iova;
      expect(iova.isAllocated(MSI_WINDOW.start / 4096) && iova.isAllocated(MSI_WINDOW.end / 4096 - 1)).toBe(true);
    } finally {
      await m.close();
    }
  });

  it('lists the MSI window and every memory BAR of the topology, sorted', async () => {
    await withMachine({ topology: withBars }, async (m) => {
      expect(m.pci.reservedIova()).toEqual([
        { start: BAR, end: BAR + 0x10000, reason: 'BAR 0 of 0000:00:02.0' },
        { start: 0xfee0_0000, end: 0xfef0_0000, reason: 'the MSI window (IOMMU_RESV_MSI)' },
        { start: 0x1_0000_0000, end: 0x1_0010_0000, reason: 'BAR 2 of 0000:00:02.0' },
      ]);
    });
  });

  it('a default domain reserves every BAR page in its aperture, not counted as in use, whatever group it serves', async () => {
    await withMachine({ topology: withBars }, async (m) => {
      const d = await m.addDevice({ bdf: '00:03.0' }); // another group than the BAR's function
      const iova = m.iommu.domainOf(d)!.iova;
      for (const a of [BAR, BAR + 0xf000, MSI_WINDOW.start]) expect(iova.isAllocated(a / 4096)).toBe(true);
      expect(iova.isAllocated(BAR / 4096 + 16)).toBe(false);
      const rings = iova.pagesInUse(); // the device's rings only
      expect(rings).toBeLessThan(16);
    });
  });
});
