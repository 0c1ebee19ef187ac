/**
 * IOMMU groups on hand-written topologies, one Linux rule per test (pci_device_group and its
 * helpers, pci_acs_enabled, the quirk table).
 */
import { describe, expect, test } from 'vitest';
import { computeIommuGroups, parseTopology, type FunctionJson } from '../src/pci/index.js';
import { FULL_ACS, NO_ACS_ENABLED, dmaError, groupWith, host, partition } from './pci-helpers.js';

const groups = (fns: FunctionJson[]) => computeIommuGroups(parseTopology(fns));

/** Root port 00:02.0 (given ACS) -> switch 01:00.0 -> downstream ports 02:00.0, 02:01.0 -> endpoints 03:00.0, 04:00.0. */
function switchTopology(dspAcs: FunctionJson['acs'] | undefined): FunctionJson[] {
  return [
    host,
    { bdf: '00:02.0', type: 'root-port', secondary: 1, subordinate: 4, acs: FULL_ACS, id: '1b36:000c' },
    { bdf: '01:00.0', type: 'upstream-port', secondary: 2, subordinate: 4, id: '104c:8232' },
    { bdf: '02:00.0', type: 'downstream-port', secondary: 3, id: '104c:8233', ...(dspAcs ? { acs: dspAcs } : {}) },
    { bdf: '02:01.0', type: 'downstream-port', secondary: 4, id: '104c:8233', ...(dspAcs ? { acs: dspAcs } : {}) },
    { bdf: '03:00.0', type: 'endpoint', id: '1af4:1041' },
    { bdf: '04:00.0', type: 'endpoint', id: '1af4:1041' },
  ];
}

describe('DMA aliases', () => {
  test('devices behind a PCIe-to-PCI bridge share the bridge group (alias secondary bus, devfn 0)', () => {
    const g = groups([
      host,
      { bdf: '00:02.0', type: 'root-port', secondary: 1, subordinate: 2, acs: FULL_ACS },
      { bdf: '01:00.0', type: 'pcie-to-pci-bridge', secondary: 2 },
      { bdf: '02:01.0', type: 'pci-device' },
      { bdf: '02:02.0', type: 'pci-device' },
    ]);
    expect(partition(g)).toEqual(['0000:00:00.0', '0000:00:02.0', '0000:01:00.0 0000:02:01.0 0000:02:02.0']);
  });

  test('devices behind a conventional PCI bridge join that bridge (it uses its own requester ID)', () => {
    const g = groups([
      host,
      { bdf: '00:1e.0', type: 'pci-bridge', secondary: 5 },
      { bdf: '05:00.0', type: 'pci-device' },
      { bdf: '05:01.0', type: 'pci-device' },
    ]);
    expect(groupWith(g, '0000:05:01.0')).toEqual(['0000:00:1e.0', '0000:05:00.0', '0000:05:01.0']);
  });

  test('an explicit DMA alias puts the two functions in one group', () => {
    const g = groups([
      host,
      { bdf: '00:03.0', type: 'rc-endpoint', id: '1af4:1000', dmaAliases: ['04.0'] },
      { bdf: '00:04.0', type: 'rc-endpoint', id: '1af4:1000' },
      { bdf: '00:05.0', type: 'rc-endpoint', id: '1af4:1000' },
    ]);
    expect(groupWith(g, '0000:00:04.0')).toEqual(['0000:00:03.0', '0000:00:04.0']);
    expect(groupWith(g, '0000:00:05.0')).toEqual(['0000:00:05.0']);
  });

  test('the func1 DMA alias quirk (Marvell 88SE9123) joins function 0 to function 1 despite ACS', () => {
    const mfAcs = { cap: ['RR', 'CR'], ctl: ['RR', 'CR'] } as FunctionJson['acs'];
    const topo = (id: string): FunctionJson[] => [
      host,
      { bdf: '00:02.0', type: 'root-port', secondary: 1, acs: FULL_ACS },
      { bdf: '01:00.0', type: 'endpoint', id, acs: mfAcs },
      { bdf: '01:00.1', type: 'endpoint', id: '1b4b:91a0', acs: mfAcs },
    ];
    expect(groupWith(groups(topo('1b4b:9123')), '0000:01:00.0')).toEqual(['0000:01:00.0', '0000:01:00.1']);
    expect(groupWith(groups(topo('1b4b:9999')), '0000:01:00.0')).toEqual(['0000:01:00.0']);
  });
});

describe('switch downstream ports', () => {
  test('without ACS each downstream port groups with its own subtree and sibling subtrees stay apart', () => {
    expect(partition(groups(switchTopology(undefined)))).toEqual([
      '0000:00:00.0',
      '0000:00:02.0',
      '0000:01:00.0',
      '0000:02:00.0 0000:03:00.0',
      '0000:02:01.0 0000:04:00.0',
    ]);
  });

  test('with ACS SV RR CR UF enabled every function has its own group', () => {
    expect(groups(switchTopology(FULL_ACS))).toHaveLength(7);
  });

  test('an ACS capability with every control bit clear does not isolate', () => {
    expect(groupWith(groups(switchTopology(NO_ACS_ENABLED)), '0000:03:00.0')).toEqual(['0000:02:00.0', '0000:03:00.0']);
  });

  test('a flag the capability does not implement counts as enabled (cap without UF, ctl SV RR CR)', () => {
    const acs = { cap: ['SV', 'RR', 'CR'], ctl: ['SV', 'RR', 'CR'] } as FunctionJson['acs'];
    expect(groupWith(groups(switchTopology(acs)), '0000:03:00.0')).toEqual(['0000:03:00.0']);
  });

  test('an ACS capability implementing nothing isolates, an absent one does not', () => {
    const empty = { cap: [], ctl: [] } as FunctionJson['acs'];
    expect(groupWith(groups(switchTopology(empty)), '0000:03:00.0')).toEqual(['0000:03:00.0']);
    expect(groupWith(groups(switchTopology(undefined)), '0000:03:00.0')).toEqual(['0000:02:00.0', '0000:03:00.0']);
  });

  test('Egress Control must be implemented when asked for (pci_acs_flags_enabled keeps EC)', async () => {
    const { pciAcsEnabled, treeOf } = await import('../src/pci/index.js');
    const t = parseTopology(switchTopology({ cap: ['SV', 'RR', 'CR', 'UF'], ctl: ['SV', 'RR', 'CR', 'UF'] } as FunctionJson['acs']));
    const dsp = treeOf(t).require('02:00.0');
    expect(pciAcsEnabled(treeOf(t), dsp, 0x1c | 0x01)).toBe(true);
    expect(pciAcsEnabled(treeOf(t), dsp, 0x20)).toBe(false);
  });

  test('a root port without ACS above the switch pulls the whole hierarchy into its group', () => {
    const fns = switchTopology(FULL_ACS).map((f) => (f.bdf === '00:02.0' ? { ...f, acs: undefined } : f));
    expect(groupWith(groups(fns), '0000:04:00.0')).toHaveLength(6);
  });
});

describe('multifunction', () => {
  const mfEndpoint = (acs: FunctionJson['acs'] | undefined, id = '1af4:1041'): FunctionJson[] => [
    host,
    { bdf: '00:02.0', type: 'root-port', secondary: 1, acs: FULL_ACS },
    { bdf: '01:00.0', type: 'endpoint', id, ...(acs ? { acs } : {}) },
    { bdf: '01:00.1', type: 'endpoint', id, ...(acs ? { acs } : {}) },
    { bdf: '01:00.2', type: 'endpoint', id, ...(acs ? { acs } : {}) },
  ];

  test('a multifunction endpoint without ACS is one group', () => {
    expect(partition(groups(mfEndpoint(undefined)))).toContain('0000:01:00.0 0000:01:00.1 0000:01:00.2');
  });

  test('a multifunction endpoint with ACS RR CR (the only bits it implements) splits into functions', () => {
    const acs = { cap: ['RR', 'CR'], ctl: ['RR', 'CR'] } as FunctionJson['acs'];
    expect(groupWith(groups(mfEndpoint(acs)), '0000:01:00.1')).toEqual(['0000:01:00.1']);
  });

  test('functions above 0 are multifunction even when their header says not', () => {
    const fns = mfEndpoint(undefined).map((f) => (f.bdf === '01:00.1' ? { ...f, multifunction: false } : f));
    expect(groupWith(groups(fns), '0000:01:00.1')).toHaveLength(3);
  });

  test('a single-function endpoint needs no ACS of its own', () => {
    const g = groups([host, { bdf: '00:02.0', type: 'root-port', secondary: 1, acs: FULL_ACS }, { bdf: '01:00.0', type: 'endpoint' }]);
    expect(groupWith(g, '0000:01:00.0')).toEqual(['0000:01:00.0']);
  });

  test('conventional PCI functions of one device share a group; separate devices on the root bus do not', () => {
    const g = groups([
      host,
      { bdf: '00:03.0', type: 'pci-device' },
      { bdf: '00:06.0', type: 'pci-device' },
      { bdf: '00:06.1', type: 'pci-device' },
    ]);
    expect(partition(g)).toEqual(['0000:00:00.0', '0000:00:03.0', '0000:00:06.0 0000:00:06.1']);
  });
});

describe('root ports', () => {
  const mfRootPorts = (acs: FunctionJson['acs'] | undefined): FunctionJson[] => [
    host,
    { bdf: '00:02.0', type: 'root-port', secondary: 1, id: '1b36:000c', ...(acs ? { acs } : {}) },
    { bdf: '00:02.1', type: 'root-port', secondary: 2, id: '1b36:000c', ...(acs ? { acs } : {}) },
    { bdf: '01:00.0', type: 'endpoint' },
    { bdf: '02:00.0', type: 'endpoint' },
  ];

  test('root ports that are functions of one slot without ACS share one group with their subtrees', () => {
    expect(partition(groups(mfRootPorts(undefined)))).toEqual(['0000:00:00.0', '0000:00:02.0 0000:00:02.1 0000:01:00.0 0000:02:00.0']);
  });

  test('root ports that are functions of one slot with ACS are separate groups', () => {
    expect(groups(mfRootPorts(FULL_ACS))).toHaveLength(5);
  });

  test('a single-function root port without ACS groups with the devices below it only', () => {
    const g = groups([
      host,
      { bdf: '00:02.0', type: 'root-port', secondary: 1, acs: FULL_ACS },
      { bdf: '00:03.0', type: 'root-port', secondary: 2 },
      { bdf: '01:00.0', type: 'endpoint' },
      { bdf: '02:00.0', type: 'endpoint' },
    ]);
    expect(partition(g)).toEqual(['0000:00:00.0', '0000:00:02.0', '0000:00:03.0 0000:02:00.0', '0000:01:00.0']);
  });
});

describe('IOMMU functions and numbering', () => {
  test('a function that is itself an IOMMU gets no group', () => {
    const g = groups([
      { bdf: '00:00.0', type: 'host-bridge', id: '1022:1450' },
      { bdf: '00:00.2', type: 'pci-device', id: '1022:1451', iommu: true },
      { bdf: '00:01.0', type: 'host-bridge', id: '1022:1452' },
    ]);
    expect(g.flatMap((x) => x.devices)).not.toContain('0000:00:00.2');
    expect(partition(g)).toEqual(['0000:00:01.0']);
  });

  test('the AMD root complex beside the AMD IOMMU is outside the IVRS scope; other host bridges are grouped', () => {
    const hb = (id: string, iommu: boolean): FunctionJson[] => [
      { bdf: '00:00.0', type: 'host-bridge', id },
      ...(iommu ? [{ bdf: '00:00.2', type: 'pci-device', id: '1022:1481', iommu: true } as FunctionJson] : []),
      { bdf: '00:01.0', type: 'host-bridge', id: '1022:1482' },
    ];
    expect(partition(groups(hb('1022:1480', true)))).toEqual(['0000:00:01.0']);
    expect(partition(groups(hb('1022:1480', false)))).toEqual(['0000:00:00.0', '0000:00:01.0']);
    expect(partition(groups(hb('8086:29c0', true)))).toEqual(['0000:00:00.0', '0000:00:01.0']);
  });

  test('groups are numbered in probe (BDF) order from 0 and list DDDD:BB:DD.F devices', () => {
    const g = groups(switchTopology(undefined));
    expect(g.map((x) => x.group)).toEqual([0, 1, 2, 3, 4]);
    expect(g[3].devices).toEqual(['0000:02:00.0', '0000:03:00.0']);
  });

  test('functions in another PCI domain are grouped on their own root bus', () => {
    const g = groups([host, { bdf: '0001:00:00.0', type: 'host-bridge' }, { bdf: '0001:00:01.0', type: 'rc-endpoint' }]);
    expect(partition(g)).toEqual(['0000:00:00.0', '0001:00:00.0', '0001:00:01.0']);
  });
});

describe('ACS quirk table', () => {
  const rciepPair = (id: string): FunctionJson[] => [
    host,
    { bdf: '00:05.0', type: 'rc-endpoint', id },
    { bdf: '00:05.1', type: 'rc-endpoint', id },
  ];

  test('Intel root-complex integrated endpoints are isolated without ACS (rciep quirk)', () => {
    expect(partition(groups(rciepPair('8086:10d3')))).toEqual(['0000:00:00.0', '0000:00:05.0', '0000:00:05.1']);
  });

  test('the same multifunction RCiEP from another vendor shares one group', () => {
    expect(partition(groups(rciepPair('1af4:10d3')))).toEqual(['0000:00:00.0', '0000:00:05.0 0000:00:05.1']);
  });

  test('a listed Intel PCH root port without ACS capability isolates its subtree (intel-pch quirk)', () => {
    const pch = (device: string): FunctionJson[] => [
      host,
      { bdf: '00:1c.0', type: 'root-port', secondary: 1, id: `8086:${device}` },
      { bdf: '01:00.0', type: 'endpoint' },
    ];
    expect(groupWith(groups(pch('1c10')), '0000:01:00.0')).toEqual(['0000:01:00.0']);
    expect(groupWith(groups(pch('1c0f')), '0000:01:00.0')).toEqual(['0000:00:1c.0', '0000:01:00.0']);
  });

  test('a vendor-verified multifunction NIC (Intel I350, mf-endpoint quirk) splits into functions', () => {
    const g = groups([
      host,
      { bdf: '00:02.0', type: 'root-port', secondary: 1, acs: FULL_ACS },
      { bdf: '01:00.0', type: 'endpoint', id: '8086:1521' },
      { bdf: '01:00.1', type: 'endpoint', id: '8086:1521' },
    ]);
    expect(groupWith(g, '0000:01:00.1')).toEqual(['0000:01:00.1']);
  });

  test('a Zhaoxin port outside the listed ids counts as not isolated even with ACS enabled', () => {
    const zx = (device: string): FunctionJson[] => [
      host,
      { bdf: '00:02.0', type: 'root-port', secondary: 1, id: `1d17:${device}`, acs: FULL_ACS },
      { bdf: '01:00.0', type: 'endpoint' },
    ];
    expect(groupWith(groups(zx('0800')), '0000:01:00.0')).toEqual(['0000:00:02.0', '0000:01:00.0']);
    expect(groupWith(groups(zx('0715')), '0000:01:00.0')).toEqual(['0000:01:00.0']);
  });
});

describe('Intel Sunrise/Union Point PCH root ports (intel-spt-pch quirk)', () => {
  // lspci reads their ACSCtl where these root ports keep nothing: it shows every control clear.
  const asLspciShowsIt = { cap: ['SV', 'TB', 'RR', 'CR'], ctl: [] } as FunctionJson['acs'];
  const pch = (device: string): FunctionJson[] => [
    host,
    { bdf: '00:1c.0', type: 'root-port', secondary: 1, id: `8086:${device}`, acs: asLspciShowsIt },
    { bdf: '00:1c.4', type: 'root-port', secondary: 2, id: `8086:${device}`, acs: asLspciShowsIt },
    { bdf: '01:00.0', type: 'endpoint' },
    { bdf: '02:00.0', type: 'endpoint' },
  ];

  test('are isolated whatever ACSCtl lspci printed: Linux enables SV RR CR UF in their real control register', () => {
    expect(partition(groups(pch('a110')))).toEqual(['0000:00:00.0', '0000:00:1c.0', '0000:00:1c.4', '0000:01:00.0', '0000:02:00.0']);
  });

  test('another root port showing the same bits is not isolated and shares its slot\'s group', () => {
    expect(partition(groups(pch('a2ff')))).toEqual(['0000:00:00.0', '0000:00:1c.0 0000:00:1c.4 0000:01:00.0 0000:02:00.0']);
  });
});

describe('VMD domains (pci_real_dma_dev)', () => {
  const vmdTopology = (vmd: FunctionJson): FunctionJson[] => [
    host,
    vmd,
    { bdf: '10000:e0:01.0', type: 'pci-device', id: '8086:09ab' },
    { bdf: '10000:e0:06.0', type: 'root-port', secondary: 0xe1, id: '8086:464d', acs: FULL_ACS },
    { bdf: '10000:e1:00.0', type: 'endpoint', id: '1c5c:1959' },
  ];

  test('every function of the VMD domain joins the group of the VMD endpoint', () => {
    const g = groups(vmdTopology({ bdf: '00:0e.0', type: 'rc-endpoint', id: '8086:a77f', driver: 'vmd' }));
    expect(partition(g)).toEqual(['0000:00:00.0', '0000:00:0e.0 10000:e0:01.0 10000:e0:06.0 10000:e1:00.0']);
  });

  test('a known VMD device id without a driver line counts as the VMD endpoint too', () => {
    const g = groups(vmdTopology({ bdf: '00:0e.0', type: 'rc-endpoint', id: '8086:9a0b' }));
    expect(groupWith(g, '0000:00:0e.0')).toHaveLength(4);
  });

  test('with two VMD endpoints, domain 10000 belongs to the first and 10001 to the second (BDF order)', () => {
    const g = groups([
      host,
      { bdf: '00:05.5', type: 'rc-endpoint', id: '8086:28c0', driver: 'vmd' },
      { bdf: '00:06.5', type: 'rc-endpoint', id: '8086:28c0', driver: 'vmd' },
      { bdf: '10000:00:00.0', type: 'endpoint', id: '144d:a808' },
      { bdf: '10001:00:00.0', type: 'endpoint', id: '144d:a808' },
    ]);
    expect(partition(g)).toEqual(['0000:00:00.0', '0000:00:05.5 10000:00:00.0', '0000:00:06.5 10001:00:00.0']);
  });
});

describe('SR-IOV virtual functions', () => {
  const sriov = (rootAcs: FunctionJson['acs'] | undefined, vfBus = 1): FunctionJson[] => [
    host,
    { bdf: '00:02.0', type: 'root-port', secondary: 1, subordinate: 2, ...(rootAcs ? { acs: rootAcs } : {}) },
    { bdf: '01:00.0', type: 'endpoint', id: '8086:10c9' },
    { bdf: `0${vfBus}:10.0`, type: 'endpoint', id: '8086:10ca', physfn: '01:00.0' },
    { bdf: `0${vfBus}:10.2`, type: 'endpoint', id: '8086:10ca', physfn: '01:00.0' },
  ];

  test('VFs sharing a slot are not multifunction: each has its own group below an ACS root port', () => {
    expect(groups(sriov(FULL_ACS))).toHaveLength(5);
    expect(parseTopology(sriov(FULL_ACS)).functions.filter((f) => f.physfn).map((f) => f.multifunction)).toEqual([false, false]);
  });

  test('VFs on a bus no bridge leads to sit on a virtual bus whose parent is the PF\'s bus', () => {
    const t = parseTopology(sriov(FULL_ACS, 2));
    expect(t.rootBuses).toEqual(['0000:00']);
    expect(groups(sriov(FULL_ACS, 2))).toHaveLength(5);
  });

  test('the upstream walk crosses the virtual bus: below a root port without ACS the VFs join its group', () => {
    expect(groupWith(groups(sriov(undefined, 2)), '0000:02:10.2')).toEqual([
      '0000:00:02.0',
      '0000:01:00.0',
      '0000:02:10.0',
      '0000:02:10.2',
    ]);
  });

  test('a VF naming a function that is not there is a DmaError naming the entry and field', () => {
    const fns = sriov(FULL_ACS).map((f) => (f.physfn ? { ...f, physfn: '01:00.1' } : f));
    expect(dmaError(() => parseTopology(fns)).message).toMatch(/functions\[3\] \(0000:01:10.0\): physfn: 0000:01:00.1 is not in the topology/);
  });
});

describe('port types as set_pcie_port_type() corrects them', () => {
  test('a downstream port right below a root port acts as an upstream port (single function: no ACS needed)', () => {
    const t = parseTopology([
      host,
      { bdf: '00:02.0', type: 'root-port', secondary: 1, subordinate: 2, acs: FULL_ACS },
      { bdf: '01:00.0', type: 'downstream-port', secondary: 2, id: '104c:8233' },
      { bdf: '02:00.0', type: 'endpoint' },
    ]);
    const port = t.functions.find((f) => f.bdf === '0000:01:00.0')!;
    expect([port.type, port.reportedType]).toEqual(['upstream-port', 'downstream-port']);
    expect(t.notes).toEqual([
      '0000:01:00.0 claims to be a downstream port but sits below a root-port (0000:00:02.0): Linux treats it as an upstream port',
    ]);
    expect(partition(computeIommuGroups(t))).toEqual(['0000:00:00.0', '0000:00:02.0', '0000:01:00.0', '0000:02:00.0']);
  });
});

describe('DMA alias quirks', () => {
  test('a PLX NTB endpoint aliases every devfn of its bus, so the whole bus shares its group', () => {
    const ntb = (id: string): FunctionJson[] => [
      host,
      { bdf: '00:02.0', type: 'root-port', secondary: 1, acs: FULL_ACS },
      { bdf: '00:03.0', type: 'root-port', secondary: 2, acs: FULL_ACS },
      { bdf: '01:00.0', type: 'endpoint', id: '10b5:8725' },
      { bdf: '01:00.1', type: 'endpoint', id, acs: FULL_ACS },
      { bdf: '02:00.0', type: 'endpoint', id: '8086:10d3' },
    ];
    expect(groupWith(groups(ntb('10b5:87b0')), '0000:01:00.0')).toEqual(['0000:01:00.0', '0000:01:00.1']);
    expect(groupWith(groups(ntb('10b5:87b0')), '0000:02:00.0')).toEqual(['0000:02:00.0']);
    expect(groupWith(groups(ntb('10b5:8725')), '0000:01:00.0')).toEqual(['0000:01:00.0']);
  });
});

describe('port types as set_pcie_port_type() corrects them: chains', () => {
  test('below a corrected port, the next downstream port keeps its type (its parent now faces upstream)', () => {
    const t = parseTopology([
      host,
      { bdf: '00:02.0', type: 'root-port', secondary: 1, subordinate: 3, acs: FULL_ACS },
      { bdf: '01:00.0', type: 'downstream-port', secondary: 2, subordinate: 3 },
      { bdf: '02:00.0', type: 'downstream-port', secondary: 3 },
      { bdf: '03:00.0', type: 'endpoint' },
    ]);
    expect(t.functions.map((f) => f.type)).toEqual(['host-bridge', 'root-port', 'upstream-port', 'downstream-port', 'endpoint']);
    expect(groupWith(computeIommuGroups(t), '0000:03:00.0')).toEqual(['0000:02:00.0', '0000:03:00.0']);
  });
});
