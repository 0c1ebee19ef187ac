/**
 * parseTopology (JSON): what it accepts, and malformed input named by entry index, BDF and field.
 */
import { describe, expect, test } from 'vitest';
import { acsNames, computeIommuGroups, parseTopology, type FunctionJson } from '../src/pci/index.js';
import { FULL_ACS, dmaError, host, partition } from './pci-helpers.js';

const ok: FunctionJson[] = [
  host,
  { bdf: '0000:00:02.0', type: 'root-port', secondary: '0x01', subordinate: 2, acs: FULL_ACS, id: '1b36:000C', class: '0604', driver: 'pcieport' },
  { bdf: '01:00.0', type: 'pcie-to-pci-bridge', secondary: '02' },
  {
    bdf: '02:03.0',
    type: 'pci-device',
    id: '8086:100e',
    bars: [
      { index: 0, base: '0xfe640000', size: '128K' },
      { index: 1, kind: 'io', base: 49152, size: 64 },
      { index: 2, base: 4294967296, size: '0x4000', is64: true, prefetchable: true },
    ],
  },
];

const errorOf = (input: unknown) => dmaError(() => parseTopology(input));
const withEntry = (i: number, patch: Record<string, unknown>) => ok.map((f, j) => (j === i ? { ...f, ...patch } : f));

describe('valid JSON', () => {
  test('a full entry is read: hex bus numbers, ids, class, BARs with sizes, ACS names', () => {
    const t = parseTopology(JSON.stringify({ functions: ok }));
    const rp = t.functions[1];
    expect([rp.bdf, rp.secondary, rp.subordinate, rp.vendor, rp.device, rp.classCode, rp.driver]).toEqual(['0000:00:02.0', 1, 2, 0x1b36, 0x000c, 0x0604, 'pcieport']);
    expect([acsNames(rp.acs!.cap), acsNames(rp.acs!.ctl)]).toEqual([
      ['SV', 'TB', 'RR', 'CR', 'UF', 'DT'],
      ['SV', 'RR', 'CR', 'UF'],
    ]);
    expect(t.functions[3].bars).toEqual([
      { index: 0, kind: 'memory', base: 0xfe640000, size: 0x20000, is64: false, prefetchable: false },
      { index: 1, kind: 'io', base: 0xc000, size: 64, is64: false, prefetchable: false },
      { index: 2, kind: 'memory', base: 2 ** 32, size: 0x4000, is64: true, prefetchable: true },
    ]);
  });

  test('a bare array of functions is accepted and grouped', () => {
    expect(partition(computeIommuGroups(parseTopology(ok)))).toEqual(['0000:00:00.0', '0000:00:02.0', '0000:01:00.0 0000:02:03.0']);
  });

  test('the subordinate bus is computed when not given', () => {
    const t = parseTopology([host, { bdf: '00:02.0', type: 'root-port', secondary: 1 }, { bdf: '01:00.0', type: 'upstream-port', secondary: 2 }, { bdf: '02:00.0', type: 'downstream-port', secondary: 5 }]);
    expect(t.functions[1].subordinate).toBe(5);
  });

  test('a declared root bus may hold devices no bridge leads to', () => {
    const t = parseTopology({ functions: [host, { bdf: '80:00.0', type: 'host-bridge' }], rootBuses: ['0000:80'] });
    expect(t.rootBuses).toEqual(['0000:00', '0000:80']);
  });
});

describe('malformed JSON is a DmaError naming the entry and field', () => {
  test('text that is not JSON names the line and column', () => {
    const e = errorOf('{\n  "functions": [\n    { "bdf": "00:00.0", }\n  ]\n}');
    expect(e.code).toBe('EINVAL');
    expect(e.message).toMatch(/topology JSON line 3 column \d+/);
  });

  test('an unknown field', () => {
    expect(errorOf(withEntry(2, { secondry: 2 })).message).toMatch(/functions\[2\] \(01:00.0\): unknown field "secondry"/);
  });

  test('an unknown type', () => {
    expect(errorOf(withEntry(3, { type: 'gpu' })).message).toMatch(/functions\[3\] \(02:03.0\): type: type is one of host-bridge, root-port/);
  });

  test('an unknown ACS flag names its position', () => {
    expect(errorOf(withEntry(1, { acs: { cap: ['SV'], ctl: ['SV', 'XX'] } })).message).toMatch(/functions\[1\] \(0000:00:02.0\): acs.ctl\[1\]: ACS flags are SV TB RR CR UF EC DT/);
  });

  test('an enabled ACS control the capability does not implement', () => {
    expect(errorOf(withEntry(1, { acs: { cap: ['SV', 'RR'], ctl: ['SV', 'RR', 'UF'] } })).message).toMatch(
      /functions\[1\] \(0000:00:02.0\): acs.ctl: UF enabled but the capability does not implement it/,
    );
  });

  test('ACS on a conventional PCI function', () => {
    expect(errorOf(withEntry(3, { acs: { cap: [], ctl: [] } })).message).toMatch(/functions\[3\] \(0000:02:03.0\): acs: a pci-device is conventional PCI/);
  });

  test('bad BDF syntax', () => {
    expect(errorOf(withEntry(3, { bdf: '02:3.0' })).message).toMatch(/functions\[3\]: bdf: "02:3.0" is not a PCI address/);
  });

  test('a device number above 1f', () => {
    expect(errorOf(withEntry(3, { bdf: '02:20.0' })).message).toMatch(/functions\[3\]: bdf: "02:20.0" is not a PCI address/);
  });

  test('a duplicate BDF names both entries', () => {
    expect(errorOf(withEntry(3, { bdf: '0000:01:00.0' })).message).toMatch(/functions\[3\] \(0000:01:00.0\): bdf: 0000:01:00.0 appears twice \(also functions\[2\]\)/);
  });

  test('a device on a bus no bridge leads to', () => {
    expect(errorOf(withEntry(3, { bdf: '07:03.0' })).message).toMatch(/functions\[3\] \(0000:07:03.0\): bus: no bridge leads to bus 0000:07/);
  });

  test('a bridge whose secondary bus collides with another bridge', () => {
    const fns = [...ok, { bdf: '00:03.0', type: 'root-port', secondary: 2 }];
    expect(errorOf(fns).message).toMatch(/functions\[2\] \(0000:01:00.0\): secondary: bus 0000:02 is already the secondary bus of 0000:00:03.0 \(functions\[4\]\)/);
  });

  test('sibling bridges with overlapping bus ranges', () => {
    const fns = [...ok, { bdf: '00:03.0', type: 'root-port', secondary: 3, subordinate: 4 }, { bdf: '00:04.0', type: 'root-port', secondary: 4 }];
    expect(errorOf(fns).message).toMatch(/functions\[5\] \(0000:00:04.0\): secondary: bus range 04-04 collides with 03-04 of 0000:00:03.0/);
  });

  test('a declared subordinate below a bus behind the bridge', () => {
    expect(errorOf(withEntry(1, { subordinate: 1 })).message).toMatch(/functions\[1\] \(0000:00:02.0\): subordinate: bus 01 is below bus 02/);
  });

  test('a bridge whose secondary bus is not above its own bus', () => {
    expect(errorOf(withEntry(2, { secondary: 1 })).message).toMatch(/functions\[2\] \(0000:01:00.0\): secondary: bus 01 must be above the bridge's own bus 01/);
  });

  test('a bridge without a secondary bus', () => {
    expect(errorOf(withEntry(2, { secondary: undefined })).message).toMatch(/functions\[2\] \(0000:01:00.0\): secondary: a pcie-to-pci-bridge is a bridge and needs/);
  });

  test('a secondary bus on a non-bridge', () => {
    expect(errorOf(withEntry(3, { secondary: 9 })).message).toMatch(/functions\[3\] \(0000:02:03.0\): secondary: a pci-device is not a bridge/);
  });

  test('a bus number out of range', () => {
    expect(errorOf(withEntry(2, { secondary: 256 })).message).toMatch(/functions\[2\] \(01:00.0\): secondary: a bus number is 0..255/);
  });

  test('a DMA alias on another bus', () => {
    expect(errorOf(withEntry(3, { dmaAliases: ['01:00.0'] })).message).toMatch(/functions\[3\] \(0000:02:03.0\): dmaAliases\[0\]: "01:00.0" is not DD.F or a BDF on bus 0000:02/);
  });

  test('function 0 declared single-function while another function of its slot exists', () => {
    const fns = [...withEntry(3, { multifunction: false }), { bdf: '02:03.1', type: 'pci-device' }];
    expect(errorOf(fns).message).toMatch(/functions\[3\] \(0000:02:03.0\): multifunction: false, but 0000:02:03.1 exists/);
  });

  test('a BAR size that is not a size', () => {
    expect(errorOf(withEntry(3, { bars: [{ index: 0, size: 'big' }] })).message).toMatch(/functions\[3\] \(02:03.0\): bars\[0\].size: a BAR size must be/);
  });

  test('a 64-bit BAR overlapping the next BAR', () => {
    expect(errorOf(withEntry(3, { bars: [{ index: 0, size: 16, is64: true }, { index: 1, size: 16 }] })).message).toMatch(/bars \(BAR 1\): overlaps BAR 0/);
  });

  test('a bad vendor:device id', () => {
    expect(errorOf(withEntry(3, { id: '8086-100e' })).message).toMatch(/functions\[3\] \(02:03.0\): id: id is "vvvv:dddd"/);
  });

  test('an empty function list', () => {
    expect(errorOf({ functions: [] }).message).toMatch(/topology functions: a topology needs at least one function/);
  });

  test('a top-level value that is not a topology', () => {
    expect(errorOf(42).message).toMatch(/topology top level: Invalid input: expected object/);
  });
});
