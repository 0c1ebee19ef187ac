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

  test('class 0806 marks the function as an IOMMU, which gets no group (nor does the AMD root complex beside it)', () => {
    const text = [
      '00:00.0 Host bridge [0600]: Advanced Micro Devices, Inc. [AMD] Root Complex [1022:1450]',
      '00:00.2 IOMMU [0806]: Advanced Micro Devices, Inc. [AMD] I/O Memory Management Unit [1022:1451]',
      '\tCapabilities: [40] Secure device <?>',
      '00:01.0 Host bridge [0600]: Advanced Micro Devices, Inc. [AMD] PCIe Dummy Host Bridge [1022:1452]',
    ].join('\n');
    const amd = parseLspci(text);
    expect(amd.functions.find((x) => x.bdf === '0000:00:00.2')!.iommu).toBe(true);
    expect(partition(computeIommuGroups(amd))).toEqual(['0000:00:01.0']);
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

/** Lines lspci really prints that the parser has no use for: each must leave BASE's reading unchanged. */
describe.each([
  ['DeviceName', '\tDeviceName:  Onboard IGD'],
  ['Physical Slot', '\tPhysical Slot: 0-2'],
  ['NUMA node', '\tNUMA node: 0'],
  ['IOMMU group', '\tIOMMU group: 7'],
  ['Kernel modules', '\tKernel modules: e1000e, igb'],
  ['an interrupt routed to a negative IRQ', '\tInterrupt: pin A routed to IRQ -2147483648'],
  ['a null extended capability', '\tCapabilities: [100 v0] Null'],
  ['an unnamed capability id', '\tCapabilities: [50] Capability ID 0x15 [0000]'],
  ['an expansion ROM at an ignored address', '\tExpansion ROM at <ignored> [disabled]'],
  ['a BAR lspci printed without a size (unassigned)', '\tRegion 1: Memory at <unassigned> (64-bit, prefetchable) [disabled]'],
  ['an I/O BAR without a size', '\tRegion 5: I/O ports at <ignored> [disabled]'],
  ['a vital product data block', '\tCapabilities: [50] Vital Product Data\n\t\tProduct Name: NIC\n\t\tRead-only fields:\n\t\t\t[PN] Part number: 1234\n\t\tEnd'],
  [
    'an SR-IOV capability with its VF BARs (sizeless Region lines inside the capability)',
    [
      '\tCapabilities: [160 v1] Single Root I/O Virtualization (SR-IOV)',
      '\t\tIOVCap:\tMigration- 10BitTagReq- IntMsgNum 0',
      '\t\tIOVCtl:\tEnable- Migration- Interrupt- MSE- ARIHierarchy- 10BitTagReq-',
      '\t\tInitial VFs: 8, Total VFs: 8, Number of VFs: 0, Function Dependency Link: 00',
      '\t\tVF offset: 128, stride: 2, Device ID: 10ca',
      '\t\tSupported Page Size: 00000553, System Page Size: 00000001',
      '\t\tRegion 0: Memory at 00000000fe800000 (64-bit, non-prefetchable)',
      '\t\tRegion 3: Memory at 00000000fe820000 (64-bit, non-prefetchable)',
      '\t\tVF Migration: offset: 00000000, BIR: 0',
    ].join('\n'),
  ],
])('a real-world line the parser skips: %s', (_what, extra) => {
  // Inserted into the endpoint's record, right after its header line (line 14 of BASE).
  const text = [...BASE.slice(0, 14), extra, ...BASE.slice(14)].join('\n');

  test('parses, and the endpoint keeps its type, driver and BARs', () => {
    const e = parseLspci(text).functions.find((x) => x.bdf === '0000:01:00.0')!;
    expect([e.type, e.driver]).toEqual(['endpoint', 'e1000e']);
    expect(e.bars!.map((b) => b.index)).toEqual([0, 2]);
  });

  test('the groups do not change', () => {
    expect(partition(computeIommuGroups(parseLspci(text)))).toEqual(partition(computeIommuGroups(parseLspci(BASE.join('\n')))));
  });
});

describe('lspci output forms seen in real dumps', () => {
  test('a BAR without a size is left out with a note', () => {
    const t = parseLspci(edit(15, '\tRegion 0: Memory at <unassigned> (64-bit, prefetchable) [disabled]'));
    expect(t.functions.find((x) => x.bdf === '0000:01:00.0')!.bars!.map((b) => b.index)).toEqual([2]);
    expect(t.notes).toContain('line 15: 0000:01:00.0 Region 0 has no size (unassigned); left out');
  });

  test('lspci -PP: the address is the path through the bridges, the last element is the function', () => {
    const t = parseLspci(edit(14, '00:02.0/01:00.0 Ethernet controller [0200]: Intel Corporation 82574L Gigabit Network Connection [8086:10d3]'));
    expect(t.functions.map((f) => f.bdf)).toEqual(['0000:00:00.0', '0000:00:02.0', '0000:01:00.0']);
  });

  test('lspci -P: the bus of a path element comes from the parent bridge', () => {
    const t = parseLspci(edit(14, '00:02.0/00.0 Ethernet controller [0200]: Intel Corporation 82574L Gigabit Network Connection [8086:10d3]'));
    expect(t.functions.find((f) => f.type === 'endpoint')!.bdf).toBe('0000:01:00.0');
  });

  test('a -PP path that contradicts the bridge it runs through is a DmaError naming the line', () => {
    const e = errorOf(edit(14, '00:02.0/05:00.0 Ethernet controller [0200]: Intel Corporation 82574L [8086:10d3]'));
    expect(e.message).toMatch(/lspci line 14: the path 00:02.0\/05:00.0 puts bus 05 behind 0000:00:02.0, whose secondary bus is 01/);
  });

  test('a -P path through a function that is not listed is a DmaError naming the line', () => {
    expect(errorOf(edit(14, '00:03.0/00.0 Ethernet controller [0200]: Intel [8086:10d3]')).message).toMatch(/lspci line 14: the path 00:03.0\/00.0 leaves out the bus and its parent 0000:00:03.0 is not listed/);
  });

  test('Bus: primary=00 on a bridge off bus 00 is a hard-wired primary bus number (VMD root ports)', () => {
    const text = [
      '0000:00:00.0 Host bridge [0600]: Intel Corporation Device [8086:4637]',
      '',
      '10000:e0:06.0 PCI bridge [0604]: Intel Corporation Device [8086:464d] (prog-if 00 [Normal decode])',
      '\tBus: primary=00, secondary=e1, subordinate=e1, sec-latency=0',
      '\tCapabilities: [40] Express (v2) Root Port (Slot+), IntMsgNum 0',
      '',
      '10000:e1:00.0 Non-Volatile memory controller [0108]: Vendor NVMe [1c5c:1959]',
      '\tCapabilities: [c0] Express (v2) Endpoint, IntMsgNum 0',
    ].join('\n');
    const t = parseLspci(text);
    expect(t.functions.find((f) => f.bdf === '10000:e0:06.0')!.secondary).toBe(0xe1);
    expect(t.notes).toContain('line 4: 10000:e0:06.0 has its primary bus number hard-wired to 00; Linux uses its own bus e0');
  });

  test('a PCI/PCI-X-to-PCIe bridge with a slot flag (newer pciutils) is read', () => {
    const t = parseLspci(edit(7, '\tCapabilities: [54] Express (v1) PCI/PCI-X to PCI-Express Bridge (Slot-), MSI 00', BASE.filter((l) => !/ACSC|Access Control/.test(l))));
    expect(t.functions.find((f) => f.bdf === '0000:00:02.0')!.type).toBe('pci-to-pcie-bridge');
  });

  test('a function whose header lspci could not read is taken as a plain PCI device, with a note', () => {
    const text = [
      ...BASE.slice(0, 13),
      '00:1c.4 PCI bridge [0604]: Intel Corporation JHL7540 Thunderbolt 3 Bridge [8086:15ea] (rev ff) (prog-if ff)',
      '\t!!! Unknown header type 7f',
      '\tKernel driver in use: pcieport',
      '',
      ...BASE.slice(13),
    ].join('\n');
    const t = parseLspci(text);
    expect(t.functions.find((f) => f.bdf === '0000:00:1c.4')!.type).toBe('pci-device');
    expect(t.notes).toContain('line 15: 0000:00:1c.4 has a header lspci could not read; taken as a plain PCI device');
  });
});

describe('SR-IOV virtual functions in lspci text', () => {
  /** Root port with ACS, PF 01:00.0 (82576-like) with 2 of 8 VFs enabled at offset 128, stride 2. */
  const SRIOV = [
    ...BASE.slice(0, 13),
    '01:00.0 Ethernet controller [0200]: Intel Corporation 82576 Gigabit Network Connection [8086:10c9] (rev 01)',
    '\tRegion 0: Memory at fe400000 (32-bit, non-prefetchable) [size=128K]',
    '\tCapabilities: [a0] Express (v2) Endpoint, MSI 00',
    '\tCapabilities: [160 v1] Single Root I/O Virtualization (SR-IOV)',
    '\t\tInitial VFs: 8, Total VFs: 8, Number of VFs: 2, Function Dependency Link: 00',
    '\t\tVF offset: 128, stride: 2, Device ID: 10ca',
    '\t\tRegion 0: Memory at 00000000fe800000 (64-bit, non-prefetchable)',
    '\tKernel driver in use: igb',
    '',
    '01:10.0 Ethernet controller [0200]: Intel Corporation 82576 Virtual Function [8086:10ca] (rev 01)',
    '\tCapabilities: [a0] Express (v2) Endpoint, MSI 00',
    '',
    '01:10.2 Ethernet controller [0200]: Intel Corporation 82576 Virtual Function [8086:10ca] (rev 01)',
    '\tCapabilities: [a0] Express (v2) Endpoint, MSI 00',
  ];

  test('the functions at the VF routing IDs are the PF\'s virtual functions, never multifunction', () => {
    const t = parseLspci(SRIOV.join('\n'));
    const f = (bdf: string) => t.functions.find((x) => x.bdf === bdf)!;
    expect([f('0000:01:10.0').physfn, f('0000:01:10.2').physfn]).toEqual(['0000:01:00.0', '0000:01:00.0']);
    expect([f('0000:01:10.0').multifunction, f('0000:01:10.2').multifunction]).toEqual([false, false]);
    expect(f('0000:01:00.0').bars!.map((b) => [b.index, b.base])).toEqual([[0, 0xfe400000]]);
  });

  test('each VF below an ACS root port is its own group (Linux clears multifunction for VFs)', () => {
    expect(partition(computeIommuGroups(parseLspci(SRIOV.join('\n'))))).toEqual([
      '0000:00:00.0',
      '0000:00:02.0',
      '0000:01:00.0',
      '0000:01:10.0',
      '0000:01:10.2',
    ]);
  });
});

describe('a capture cut off at the end of the text', () => {
  test('a last line cut in the middle is skipped with a note, and the record it ends loses what was cut', () => {
    const t = parseLspci([...BASE.slice(0, 10), '\t\tACSCtl:\tSrcValid+ TransBlk- Req'].join('\n'));
    expect(t.functions.find((f) => f.bdf === '0000:00:02.0')!.acs).toBeUndefined();
    expect(t.notes).toEqual([
      'line 11 skipped: the capture ends in the middle of it (EINVAL: lspci line 11 (0000:00:02.0): ACSCtl: "Req" is not a Name+ or Name- flag)',
      'line 9: 0000:00:02.0 is cut off inside its ACS capability (end of text); taken as having none',
    ]);
  });

  test('a bridge cut off before its Bus: line is taken as a plain PCI device', () => {
    const t = parseLspci(BASE.slice(0, 5).join('\n'));
    expect(t.functions.find((f) => f.bdf === '0000:00:02.0')!.type).toBe('pci-device');
    expect(t.notes).toEqual(['line 4: 0000:00:02.0 is cut off before its "Bus:" line (end of text); taken as a plain PCI device']);
  });

  test('a header line cut before its ids ends the capture with a note', () => {
    const t = parseLspci([...BASE, '', '02:00.0 Ethernet controller [0200]: Intel Corp'].join('\n'));
    expect(t.functions).toHaveLength(3);
    expect(t.notes[0]).toMatch(/^line 20 skipped: the capture ends in the middle of it/);
  });

  test('a contradiction on the last line is still a DmaError naming the line', () => {
    const e = errorOf([...BASE.slice(0, 5), '\tBus: primary=05, secondary=01, subordinate=01, sec-latency=0'].join('\n'));
    expect(e.message).toMatch(/lspci line 6 .*primary=05 contradicts/);
  });

  test('an ACS capability without its detail lines (lspci -v) is a DmaError when the record is complete', () => {
    const text = BASE.filter((l) => !l.includes('ACSC')).join('\n');
    expect(errorOf(text).message).toMatch(/lspci line 9 \(0000:00:02.0\): Access Control Services capability without both ACSCap: and ACSCtl: lines \(lspci prints them with -vv or -vvv\)/);
  });
});

test('lspci -PP of one function (lspci -s) needs no listed parents: the last element carries the bus', () => {
  const t = parseLspci(['00:1c.4/07:00.0/09:00.0 System peripheral [0880]: Intel Corporation JHL7540 NHI [8086:15eb]', '\tCapabilities: [c0] Express (v2) Endpoint, MSI 00'].join('\n'));
  expect([t.functions[0].bdf, t.rootBuses]).toEqual(['0000:09:00.0', ['0000:09']]);
});
