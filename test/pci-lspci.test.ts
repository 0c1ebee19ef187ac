/**
 * parseLspci: what it reads from `lspci -vvv -nn`, and malformed input named by line.
 */
import { describe, expect, test } from 'vitest';
import { acsNames, computeIommuGroups, parseLspci } from '../src/pci/index.js';
import { dmaError, fixtureText, partition } from './pci-helpers.js';

const BASE = [
  '00:00.0 Host bridge [0600]: Intel Corporation 82G33/G31/P35/P31 Express DRAM Controller [8086:29c0]',
  '\tSubsystem: Red Hat, Inc. QEMU Virtual Machine [1af4:1100]',
  '',
  '00:02.0 PCI bridge [0604]: Red Hat, Inc. QEMU PCIe Root port [1b36:000c] (prog-if 00 [Normal decode])',
  '\tRegion 0: Memory at fe600000 (32-bit, non-prefetchable) [size=4K]',
  '\tBus: primary=00, secondary=01, subordinate=01, sec-latency=0',
  '\tCapabilities: [54] Express (v2) Root Port (Slot+), MSI 00',
  '\t\tDevCap:\tMaxPayload 128 bytes, PhantFunc 0',
  '\tCapabilities: [148 v1] Access Control Services',
  '\t\tACSCap:\tSrcValid+ TransBlk+ ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans+',
  '\t\tACSCtl:\tSrcValid+ TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-',
  '\tKernel driver in use: pcieport',
  '',
  '01:00.0 Ethernet controller [0200]: Intel Corporation 82574L Gigabit Network Connection [8086:10d3]',
  '\tRegion 0: Memory at fe440000 (32-bit, non-prefetchable) [size=128K]',
  '\tRegion 2: I/O ports at c000 [size=32]',
  '\tCapabilities: [e0] Express (v1) Endpoint, MSI 00',
  '\tKernel driver in use: e1000e',
];

/** BASE with line `n` (1-based) replaced (or removed when `text` is null). */
function edit(n: number, text: string | null, lines = BASE): string {
  const out = [...lines];
  if (text === null) out.splice(n - 1, 1);
  else out[n - 1] = text;
  return out.join('\n');
}

const errorOf = (text: string) => dmaError(() => parseLspci(text));

describe('reading lspci -vvv -nn', () => {
  const t = parseLspci(BASE.join('\n'));
  const f = (bdf: string) => t.functions.find((x) => x.bdf === bdf)!;

  test('types come from the Express capability, or class 0600 for a host bridge', () => {
    expect(t.functions.map((x) => [x.bdf, x.type])).toEqual([
      ['0000:00:00.0', 'host-bridge'],
      ['0000:00:02.0', 'root-port'],
      ['0000:01:00.0', 'endpoint'],
    ]);
  });

  test('a bridge gets its secondary and subordinate bus from the Bus: line', () => {
    expect([f('0000:00:02.0').secondary, f('0000:00:02.0').subordinate]).toEqual([1, 1]);
  });

  test('ACSCap and ACSCtl become the capability and control bits', () => {
    const acs = f('0000:00:02.0').acs!;
    expect([acsNames(acs.cap), acsNames(acs.ctl)]).toEqual([
      ['SV', 'TB', 'RR', 'CR', 'UF', 'DT'],
      ['SV', 'RR', 'CR', 'UF'],
    ]);
    expect(f('0000:01:00.0').acs).toBeUndefined();
  });

  test('ids, class, driver and BARs are read', () => {
    const e = f('0000:01:00.0');
    expect([e.vendor, e.device, e.classCode, e.driver]).toEqual([0x8086, 0x10d3, 0x0200, 'e1000e']);
    expect(e.bars).toEqual([
      { index: 0, kind: 'memory', base: 0xfe440000, size: 128 * 1024, is64: false, prefetchable: false },
      { index: 2, kind: 'io', base: 0xc000, size: 32, is64: false, prefetchable: false },
    ]);
  });

  test('a 64-bit prefetchable BAR from a fixture', () => {
    const t3 = parseLspci(fixtureText('T3-switch.lspci.txt'));
    expect(t3.functions.find((x) => x.bdf === '0000:04:00.0')!.bars).toContainEqual({
      index: 4,
      kind: 'memory',
      base: 0xfe800000,
      size: 16 * 1024,
      is64: true,
      prefetchable: true,
    });
  });

  test('functions without an Express capability are conventional: PCI bridge with a Bus: line, else PCI device', () => {
    const t4 = parseLspci(fixtureText('T4a-pcie-pci-bridge-on-rootbus.lspci.txt'));
    const type = (bdf: string) => t4.functions.find((x) => x.bdf === bdf)!.type;
    expect([type('0000:00:02.0'), type('0000:01:01.0'), type('0000:00:1f.0')]).toEqual(['pcie-to-pci-bridge', 'pci-device', 'pci-device']);
    const conv = parseLspci(
      edit(7, null, BASE.map((l) => l.replace('Access Control Services', 'Vendor Specific Information')).filter((l) => !l.includes('ACSC'))),
    );
    expect(conv.functions.find((x) => x.bdf === '0000:00:02.0')!.type).toBe('pci-bridge');
  });

  test('function 0 is multifunction when a sibling is listed; higher functions always are', () => {
    const t1 = parseLspci(fixtureText('T1-rootbus-integrated.lspci.txt'));
    const mf = (bdf: string) => t1.functions.find((x) => x.bdf === bdf)!.multifunction;
    expect([mf('0000:00:04.0'), mf('0000:00:05.0'), mf('0000:00:05.1')]).toEqual([false, true, true]);
  });

  test('class 0806 marks the function as an IOMMU, which gets no group', () => {
    const text = [
      '00:00.0 Host bridge [0600]: Advanced Micro Devices, Inc. [AMD] Root Complex [1022:1450]',
      '00:00.2 IOMMU [0806]: Advanced Micro Devices, Inc. [AMD] I/O Memory Management Unit [1022:1451]',
      '\tCapabilities: [40] Secure device <?>',
    ].join('\n');
    const amd = parseLspci(text);
    expect(amd.functions.find((x) => x.bdf === '0000:00:00.2')!.iommu).toBe(true);
    expect(partition(computeIommuGroups(amd))).toEqual(['0000:00:00.0']);
  });

  test('the vendor:device ids are the last [vvvv:dddd] on the line, even after bracketed names', () => {
    const amd = parseLspci('00:00.2 IOMMU [0806]: Advanced Micro Devices, Inc. [AMD] Family 17h IOMMU [1022:1451] (rev 01)');
    expect([amd.functions[0].vendor, amd.functions[0].device]).toEqual([0x1022, 0x1451]);
  });

  test('a domain prefix (lspci -D) is accepted', () => {
    expect(parseLspci('0001:00:00.0 Host bridge [0600]: X [8086:29c0]').functions[0].bdf).toBe('0001:00:00.0');
  });

  test('a trailing line that is not lspci output is skipped with a note', () => {
    const t1 = parseLspci(fixtureText('T1-rootbus-integrated.lspci.txt'));
    expect(t1.notes).toEqual(['line 295 skipped (not lspci output): UPTIME_AT_END 4.28']);
  });

  test('buses no bridge leads to are root buses', () => {
    expect(t.rootBuses).toEqual(['0000:00']);
  });
});

describe('malformed lspci text is a DmaError naming the line', () => {
  test('an ACSCtl flag that is not Name+ or Name-', () => {
    const e = errorOf(edit(11, '\t\tACSCtl:\tSrcValid* TransBlk- ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl- DirectTrans-'));
    expect(e.code).toBe('EINVAL');
    expect(e.message).toMatch(/lspci line 11 \(0000:00:02.0\): ACSCtl: "SrcValid\*"/);
  });

  test('an ACSCap line missing a flag', () => {
    expect(errorOf(edit(10, '\t\tACSCap:\tSrcValid+ TransBlk+ ReqRedir+ CmpltRedir+ UpstreamFwd+ EgressCtrl-')).message).toMatch(
      /lspci line 10 .*ACSCap: missing DirectTrans/,
    );
  });

  test('an ACS capability without its ACSCtl line', () => {
    expect(errorOf(edit(11, null)).message).toMatch(/lspci line 9 .*without both ACSCap: and ACSCtl:/);
  });

  test('an ACSCap line outside an ACS capability', () => {
    expect(errorOf(edit(9, '\tCapabilities: [100 v2] Advanced Error Reporting')).message).toMatch(/lspci line 10 .*ACSCap outside an Access Control Services/);
  });

  test('an unknown PCI Express port type', () => {
    expect(errorOf(edit(17, '\tCapabilities: [e0] Express (v1) Frobnicator, MSI 00')).message).toMatch(/lspci line 17 \(0000:01:00.0\): unknown PCI Express port type "Frobnicator"/);
  });

  test('a Bus: line whose primary bus contradicts the address', () => {
    expect(errorOf(edit(6, '\tBus: primary=05, secondary=01, subordinate=01, sec-latency=0')).message).toMatch(/lspci line 6 .*primary=05 contradicts/);
  });

  test('a Bus: line that cannot be read', () => {
    expect(errorOf(edit(6, '\tBus: primary=00, secondary=zz')).message).toMatch(/lspci line 6 .*cannot read "Bus: primary=00, secondary=zz"/);
  });

  test('a root port without a Bus: line', () => {
    expect(errorOf(edit(6, null)).message).toMatch(/lspci line 6 \(0000:00:02.0\): a root-port is a bridge but there is no "Bus:/);
  });

  test('an endpoint with a Bus: line', () => {
    expect(errorOf(edit(16, '\tBus: primary=01, secondary=02, subordinate=02, sec-latency=0')).message).toMatch(/lspci line 16 .*an endpoint has no secondary bus/);
  });

  test('the same function listed twice', () => {
    expect(errorOf(edit(14, '00:02.0 Ethernet controller [0200]: Intel [8086:10d3]')).message).toMatch(/lspci line 14 .*listed twice \(also at line 4\)/);
  });

  test('capabilities that were not readable (lspci not run as root)', () => {
    expect(errorOf(edit(7, '\tCapabilities: <access denied>')).message).toMatch(/lspci line 7 .*run lspci -vvv as root/);
  });

  test('a device line without -nn ids', () => {
    expect(errorOf(edit(14, '01:00.0 Ethernet controller [0200]: Intel Corporation 82574L')).message).toMatch(/lspci line 14 .*run lspci with -nn/);
  });

  test('a device line without -nn class code', () => {
    expect(errorOf(edit(14, '01:00.0 Ethernet controller: Intel Corporation 82574L [8086:10d3]')).message).toMatch(/lspci line 14 .*no class code/);
  });

  test('a device line with a malformed address', () => {
    expect(errorOf(edit(14, '01:00.9 Ethernet controller [0200]: Intel [8086:10d3]')).message).toMatch(/lspci line 14: "01:00.9 Ethernet/);
  });

  test('an indented line before any device', () => {
    expect(errorOf(['\tRegion 0: Memory at fe600000 (32-bit, non-prefetchable) [size=4K]', ...BASE].join('\n')).message).toMatch(/lspci line 1: indented line outside a device record/);
  });

  test('a BAR line that cannot be read', () => {
    expect(errorOf(edit(15, '\tRegion 0: Memory at fe440000 [size=lots]')).message).toMatch(/lspci line 15 .*size "lots"/);
  });

  test('two bridges claiming the same secondary bus (cross-check names the later line)', () => {
    const lines = [
      ...BASE.slice(0, 13),
      '00:03.0 PCI bridge [0604]: Red Hat, Inc. QEMU PCIe Root port [1b36:000c]',
      '\tBus: primary=00, secondary=01, subordinate=01, sec-latency=0',
      '\tCapabilities: [54] Express (v2) Root Port (Slot+), MSI 00',
      '',
      ...BASE.slice(13),
    ];
    expect(errorOf(lines.join('\n')).message).toMatch(/lspci line 14 \(0000:00:03.0\): secondary: bus 0000:01 is already the secondary bus of 0000:00:02.0 \(lspci line 4\)/);
  });

  test('text without any device', () => {
    expect(errorOf('hello\nworld\n').message).toMatch(/no PCI functions found/);
  });
});
