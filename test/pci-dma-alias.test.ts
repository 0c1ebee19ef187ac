/**
 * Requester IDs and the DMA alias walk (Linux's pci_for_each_dma_alias).
 */
import { describe, expect, test } from 'vitest';
import { dmaAliases, parseLspci, parseTopology, requesterId, type FunctionJson } from '../src/pci/index.js';
import { FULL_ACS, dmaError, fixtureText, host } from './pci-helpers.js';

const walk = (fns: FunctionJson[], bdf: string) =>
  dmaAliases(parseTopology(fns), bdf).map((a) => `${a.alias} via ${a.device}: ${a.reason}`);

describe('requesterId', () => {
  test('is bus << 8 | device << 3 | function', () => {
    expect(requesterId('0000:01:00.0')).toBe(0x0100);
    expect(requesterId('00:1f.3')).toBe(0x00fb);
    expect(requesterId('0001:ff:1f.7')).toBe(0xffff);
  });

  test('rejects text that is not a BDF', () => {
    expect(dmaError(() => requesterId('00:20.0')).message).toMatch(/"00:20.0" is not a PCI address/);
  });
});

describe('pci_for_each_dma_alias', () => {
  test('a device on a PCIe link has only its own requester ID', () => {
    expect(walk([host, { bdf: '00:02.0', type: 'root-port', secondary: 1 }, { bdf: '01:00.0', type: 'endpoint' }], '01:00.0')).toEqual([
      '0000:01:00.0 via 0000:01:00.0: own requester ID',
    ]);
  });

  test('behind a PCIe-to-PCI bridge the alias is (secondary bus, devfn 00.0), from the real fixture', () => {
    const t = parseLspci(fixtureText('T4a-pcie-pci-bridge-on-rootbus.lspci.txt'));
    expect(dmaAliases(t, '0000:01:02.0').map((a) => [a.alias, a.device, a.requesterId])).toEqual([
      ['0000:01:02.0', '0000:01:02.0', 0x0110],
      ['0000:01:00.0', '0000:00:02.0', 0x0100],
    ]);
  });

  test('a conventional PCI bridge takes ownership with its own requester ID', () => {
    expect(walk([host, { bdf: '00:1e.0', type: 'pci-bridge', secondary: 5 }, { bdf: '05:02.0', type: 'pci-device' }], '05:02.0')).toEqual([
      '0000:05:02.0 via 0000:05:02.0: own requester ID',
      '0000:00:1e.0 via 0000:00:1e.0: conventional PCI bridge takes ownership',
    ]);
  });

  test('a PCI-to-PCIe bridge also uses its own requester ID', () => {
    expect(
      walk([host, { bdf: '00:1e.0', type: 'pci-bridge', secondary: 5 }, { bdf: '05:00.0', type: 'pci-to-pcie-bridge', secondary: 6 }, { bdf: '06:00.0', type: 'endpoint' }], '06:00.0'),
    ).toEqual([
      '0000:06:00.0 via 0000:06:00.0: own requester ID',
      '0000:05:00.0 via 0000:05:00.0: PCI-to-PCIe bridge takes ownership',
      '0000:00:1e.0 via 0000:00:1e.0: conventional PCI bridge takes ownership',
    ]);
  });

  test('an ASMedia bridge hiding its PCIe capability aliases like a PCIe-to-PCI bridge (quirk)', () => {
    const fns = (id: string): FunctionJson[] => [
      host,
      { bdf: '00:1c.0', type: 'root-port', secondary: 1, subordinate: 2, acs: FULL_ACS },
      { bdf: '01:00.0', type: 'pci-bridge', secondary: 2, id },
      { bdf: '02:03.0', type: 'pci-device' },
    ];
    expect(walk(fns('1b21:1080'), '02:03.0')[1]).toBe('0000:02:00.0 via 0000:01:00.0: PCIe-to-PCI bridge takes ownership');
    expect(walk(fns('1b21:1081'), '02:03.0')[1]).toBe('0000:01:00.0 via 0000:01:00.0: conventional PCI bridge takes ownership');
  });

  test('a Ricoh function uses function 0 as its DMA alias (func0 quirk); explicit aliases follow', () => {
    const fns: FunctionJson[] = [
      host,
      { bdf: '00:02.0', type: 'root-port', secondary: 1 },
      { bdf: '01:00.0', type: 'endpoint', id: '1180:e832' },
      { bdf: '01:00.2', type: 'endpoint', id: '1180:e832', dmaAliases: ['01:00.5'] },
    ];
    expect(walk(fns, '01:00.2')).toEqual([
      '0000:01:00.2 via 0000:01:00.2: own requester ID',
      '0000:01:00.0 via 0000:01:00.2: DMA alias quirk',
      '0000:01:00.5 via 0000:01:00.2: DMA alias quirk',
    ]);
  });

  test('a translation-root bridge (Broadcom Vulcan) ends the walk', () => {
    const fns = (id: string): FunctionJson[] => [
      host,
      { bdf: '00:02.0', type: 'pcie-to-pci-bridge', secondary: 1, subordinate: 2 },
      { bdf: '01:00.0', type: 'pci-bridge', secondary: 2, id },
      { bdf: '02:00.0', type: 'pci-device' },
    ];
    expect(walk(fns('14e4:9000'), '02:00.0')).toHaveLength(1);
    expect(walk(fns('14e4:9001'), '02:00.0')).toHaveLength(3);
  });
});

describe('pci_real_dma_dev (VMD)', () => {
  const vmd: FunctionJson[] = [
    host,
    { bdf: '0000:00:0e.0', type: 'rc-endpoint', id: '8086:a77f', driver: 'vmd' },
    { bdf: '10000:e0:06.0', type: 'root-port', secondary: 0xe1, id: '8086:464d', acs: FULL_ACS },
    { bdf: '10000:e1:00.0', type: 'endpoint', id: '1c5c:1959' },
  ];

  test('a function in a VMD domain DMAs with the requester ID of the VMD endpoint', () => {
    expect(walk(vmd, '10000:e1:00.0')).toEqual(['0000:00:0e.0 via 0000:00:0e.0: VMD endpoint owns the domain']);
  });

  test('without a VMD endpoint in the topology the function keeps its own requester ID', () => {
    expect(walk(vmd.filter((f) => f.bdf !== '0000:00:0e.0'), '10000:e1:00.0')).toEqual(['10000:e1:00.0 via 10000:e1:00.0: own requester ID']);
  });
});
