/**
 * Peer-to-peer DMA in the machine: a device's DMA to an address in a sibling's BAR is routed by
 * the switch (device/dma-engine.ts with the table of pci/p2p-route.ts) — directly to the peer
 * when the ingress downstream port does not redirect it, otherwise up to the IOMMU, which
 * translates or faults. With the ACS override the groups split but the switch still routes
 * peer-to-peer, and the isolation audit names the pair.
 */
import { describe, it, expect } from 'vitest';
import { Machine, MiB, dmaAddr, p2pRoutingTable, parseTopology } from '../src/index.js';
import { pattern, same, allBytes } from './support.js';

const RAM = [{ base: 0, size: 32 * MiB }];
const BAR3 = 0xe000_0000;
const BAR4 = 0xe010_0000;

/** A switch below a root port without ACS; `dspAcs` on the downstream port of 03:00.0. */
function switchTopology(dspAcs?: string[]) {
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

async function twoDevices(config: Parameters<typeof Machine.create>[0], f: (m: Machine, d3: Awaited<ReturnType<Machine['addDevice']>>, d4: Awaited<ReturnType<Machine['addDevice']>>) => Promise<void>) {
  const m = await Machine.create({ ram: RAM, ...config });
  try {
    const d3 = await m.addDevice({ bdf: '03:00.0', dmaMask: 32 });
    const d4 = await m.addDevice({ bdf: '04:00.0', dmaMask: 32 });
    await f(m, d3, d4);
  } finally {
    await m.close();
  }
}

describe('peer-to-peer DMA through a switch', () => {
  it('reaches the sibling BAR directly when the downstream port has no ACS', async () => {
    await twoDevices({ topology: switchTopology() }, async (m, d3, d4) => {
      const src = m.ram.alloc(4096);
      const data = pattern(4096, 3);
      m.ram.write(src.pa, data);
      const h = m.dma.mapSingle(d3, src.pa, 4096, 'to-device');
      await d3.copy({ src: h.addr, dst: dmaAddr(BAR4 + 0x100), len: 4096 }); // no IOMMU mapping at BAR4
      m.dma.unmapSingle(d3, h);
      expect(same(d4.bar(0).subarray(0x100, 0x1100), data)).toBe(true);
      expect(m.iommu.faults()).toEqual([]);
    });
  });

  it('counts the peer-to-peer transfer in the device counters and the machine stats', async () => {
    await twoDevices({ topology: switchTopology() }, async (m, d3) => {
      await d3.fill({ dst: dmaAddr(BAR4), len: 512, value: 0x77 });
      const s = m.stats();
      expect({ transfers: s.p2pTransfers, bytes: s.p2pBytes }).toEqual({ transfers: 1, bytes: 512 });
      expect(s.devices['0000:03:00.0']).toMatchObject({ p2pTransfers: 1, p2pBytes: 512 });
    });
  });

  it('reads what the CPU put in the sibling BAR', async () => {
    await twoDevices({ topology: switchTopology() }, async (m, d3, d4) => {
      d4.bar(0).fill(0x42, 0, 4096);
      const dst = m.ram.alloc(4096);
      const h = m.dma.mapSingle(d3, dst.pa, 4096, 'from-device');
      await d3.copy({ src: dmaAddr(BAR4), dst: h.addr, len: 4096 });
      m.dma.unmapSingle(d3, h);
      expect(allBytes(m.ram.read(dst.pa, 4096), 0x42)).toBe(true);
    });
  });

  it('is redirected to the IOMMU and faults when the downstream port has ACS RR: nothing reaches the BAR', async () => {
    await twoDevices({ topology: switchTopology(['SV', 'RR', 'CR', 'UF']) }, async (m, d3, d4) => {
      await expect(d3.fill({ dst: dmaAddr(BAR4), len: 512, value: 0x77 })).rejects.toMatchObject({ code: 'EFAULT' });
      expect(m.iommu.faults()).toMatchObject([{ bdf: '0000:03:00.0', addr: BAR4, access: 'write', reason: 'not-present' }]);
      expect(allBytes(d4.bar(0), 0)).toBe(true);
      expect(m.stats().p2pTransfers).toBe(0);
    });
  });

  it('a transfer straddling the BAR edge is refused and moves nothing', async () => {
    await twoDevices({ topology: switchTopology() }, async (_m, d3, d4) => {
      await expect(d3.fill({ dst: dmaAddr(BAR4 + 0x10000 - 256), len: 512, value: 1 })).rejects.toMatchObject({ code: 'EFAULT' });
      expect(allBytes(d4.bar(0), 0)).toBe(true);
    });
  });
});

describe('the ACS override', () => {
  it('splits the siblings into two groups with two domains', async () => {
    await twoDevices({ topology: switchTopology() }, async (m, d3, d4) => {
      expect(m.pci.groupOf('03:00.0')).toBe(m.pci.groupOf('04:00.0'));
      expect(m.iommu.domainOf(d3)!.id).toBe(m.iommu.domainOf(d4)!.id);
    });
    await twoDevices({ topology: switchTopology(), acsOverride: 'downstream' }, async (m, d3, d4) => {
      expect(m.pci.groupOf('03:00.0')).not.toBe(m.pci.groupOf('04:00.0'));
      expect(m.iommu.domainOf(d3)!.id).not.toBe(m.iommu.domainOf(d4)!.id);
    });
  });

  it('the audit names the pair and the port, and the P2P DMA still reaches the peer', async () => {
    await twoDevices({ topology: switchTopology(), acsOverride: 'downstream' }, async (m, d3, d4) => {
      const findings = m.pci.audit();
      expect(findings).toHaveLength(1);
      expect(findings[0]).toMatchObject({ a: '0000:03:00.0', b: '0000:04:00.0' });
      expect(findings[0].routes.map((r) => [r.from, r.to, r.via])).toEqual([
        ['0000:03:00.0', '0000:04:00.0', { kind: 'switch-port', port: '0000:02:00.0' }],
        ['0000:04:00.0', '0000:03:00.0', { kind: 'switch-port', port: '0000:02:01.0' }],
      ]);
      await d3.fill({ dst: dmaAddr(BAR4), len: 256, value: 0x99 }); // into another group's device
      expect(allBytes(d4.bar(0).subarray(0, 256), 0x99)).toBe(true);
      expect(m.iommu.faults()).toEqual([]);
    });
  });
});

describe('peer-to-peer inside a multifunction device', () => {
  const mf = (acs?: string[]) => ({
    functions: [
      { bdf: '00:00.0', type: 'host-bridge' },
      { bdf: '00:01.0', type: 'root-port', secondary: 1, acs: { cap: ['SV', 'RR', 'CR', 'UF'], ctl: ['SV', 'RR', 'CR', 'UF'] } },
      { bdf: '01:00.0', type: 'endpoint', multifunction: true, bars: [{ index: 0, base: BAR3, size: '16K' }], ...(acs ? { acs: { cap: acs, ctl: acs } } : {}) },
      { bdf: '01:00.1', type: 'endpoint', bars: [{ index: 2, base: BAR4, size: '16K' }], ...(acs ? { acs: { cap: acs, ctl: acs } } : {}) },
    ],
  });

  it('a function without ACS reaches its sibling function BAR inside the device', async () => {
    const m = await Machine.create({ ram: RAM, topology: mf() });
    try {
      const f0 = await m.addDevice({ bdf: '01:00.0' });
      const f1 = await m.addDevice({ bdf: '01:00.1' });
      await f0.fill({ dst: dmaAddr(BAR4 + 64), len: 64, value: 5 });
      expect(allBytes(f1.bar(2).subarray(64, 128), 5)).toBe(true);
    } finally {
      await m.close();
    }
  });

  it('with ACS RR on the functions the request goes to the IOMMU and faults', async () => {
    const m = await Machine.create({ ram: RAM, topology: mf(['SV', 'RR', 'CR', 'UF']) });
    try {
      const f0 = await m.addDevice({ bdf: '01:00.0' });
      const f1 = await m.addDevice({ bdf: '01:00.1' });
      await expect(f0.fill({ dst: dmaAddr(BAR4 + 64), len: 64, value: 5 })).rejects.toMatchObject({ code: 'EFAULT' });
      expect(allBytes(f1.bar(2), 0)).toBe(true);
    } finally {
      await m.close();
    }
  });
});

describe('p2pRoutingTable', () => {
  it('lists the sibling BAR window with the port that lets it through', () => {
    expect(p2pRoutingTable(parseTopology(switchTopology()), '03:00.0')).toMatchObject([
      { base: BAR4, size: 0x10000, target: '0000:04:00.0', bar: 0, via: { kind: 'switch-port', port: '0000:02:00.0' } },
    ]);
  });

  it('is empty when the ingress downstream port redirects', () => {
    expect(p2pRoutingTable(parseTopology(switchTopology(['SV', 'RR', 'CR', 'UF'])), '03:00.0')).toEqual([]);
  });

  it('lists the way back through the other downstream port', () => {
    expect(p2pRoutingTable(parseTopology(switchTopology()), '04:00.0')).toMatchObject([
      { base: BAR3, target: '0000:03:00.0', via: { kind: 'switch-port', port: '0000:02:01.0' } },
    ]);
  });
});

describe('the DMA API and peer BARs', () => {
  /** The switch of switchTopology with 04:00.0's 64 KiB BAR high in the 32-bit IOVA space. */
  const HIGH_BAR = 0xfd20_0000;
  const highBar = {
    functions: switchTopology().functions.map((f) => (f.bdf === '04:00.0' ? { ...f, bars: [{ index: 0, base: HIGH_BAR, size: '64K' }] } : f)),
  };

  it("a device's DMA to its own DMA-API mapping reaches RAM, never the peer BAR that IOVA range would overlap", async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 64 * MiB }], topology: highBar });
    try {
      const d3 = await m.addDevice({ bdf: '03:00.0', dmaMask: 32 });
      const d4 = await m.addDevice({ bdf: '04:00.0', dmaMask: 32 });
      const size = 16 * MiB; // exact size, aligned to 16 MiB, top-down: [0xfd000000, 0xfe000000) once the MSI window is out
      const buf = m.ram.alloc(size);
      m.ram.fill(buf.pa, size, 0);
      const h = m.dma.mapSingle(d3, buf.pa, size, 'from-device');
      try {
        expect(h.addr + size <= HIGH_BAR || h.addr >= HIGH_BAR + 0x10000).toBe(true);
        await d3.fill({ dst: h.addr, len: size, value: 0x6b });
      } finally {
        m.dma.unmapSingle(d3, h);
      }
      expect(allBytes(m.ram.read(buf.pa, size), 0x6b)).toBe(true);
      expect(allBytes(d4.bar(0), 0)).toBe(true);
      expect(m.stats().p2pTransfers).toBe(0);
      expect(m.iommu.faults()).toEqual([]);
    } finally {
      await m.close();
    }
  });
});

describe('peer BAR memory past its backing', () => {
  /** 04:00.0 has a 1 MiB BAR: the machine backs its first 64 KiB (BAR_BACKING_MAX). */
  const bigBar = {
    functions: switchTopology().functions.map((f) => (f.bdf === '04:00.0' ? { ...f, bars: [{ index: 0, base: BAR4, size: '1M' }] } : f)),
  };

  it('a P2P write wholly past the backing is dropped and the device keeps working', async () => {
    await twoDevices({ topology: bigBar }, async (m, d3, d4) => {
      expect(d4.bar(0).length).toBe(0x10000);
      const src = m.ram.alloc(4096);
      m.ram.write(src.pa, pattern(4096, 9));
      const h = m.dma.mapSingle(d3, src.pa, 4096, 'to-device');
      try {
        await d3.copy({ src: h.addr, dst: dmaAddr(BAR4 + 0x20000), len: 4096 }); // used to kill the worker ("offset is out of bounds")
        expect(allBytes(d4.bar(0), 0)).toBe(true);
        expect(m.stats().p2pBytes).toBe(4096);
        const data = pattern(256, 4); // the device still works: a write inside the backing lands
        m.ram.write(src.pa, data);
        await d3.copy({ src: h.addr, dst: dmaAddr(BAR4 + 0x100), len: 256 });
        expect(same(d4.bar(0).subarray(0x100, 0x200), data)).toBe(true);
      } finally {
        m.dma.unmapSingle(d3, h);
      }
    });
  }, 20_000);

  it('a P2P read wholly past the backing returns zeros', async () => {
    await twoDevices({ topology: bigBar }, async (m, d3) => {
      const dst = m.ram.alloc(4096);
      m.ram.fill(dst.pa, 4096, 0xee);
      const h = m.dma.mapSingle(d3, dst.pa, 4096, 'from-device');
      try {
        await d3.copy({ src: dmaAddr(BAR4 + 0x40000), dst: h.addr, len: 4096 });
      } finally {
        m.dma.unmapSingle(d3, h);
      }
      expect(allBytes(m.ram.read(dst.pa, 4096), 0)).toBe(true);
    });
  }, 20_000);
});
