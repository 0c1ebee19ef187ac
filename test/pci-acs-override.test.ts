/**
 * The out-of-tree pcie_acs_override= patch: its forms, and how each splits groups on the real
 * fixtures (it pretends ACS for PCIe functions without an ACS capability).
 */
import { describe, expect, test } from 'vitest';
import { computeIommuGroups, parseAcsOverride, parseLspci, parseTopology, type FunctionJson } from '../src/pci/index.js';
import { NO_ACS_ENABLED, dmaError, fixtureText, groupWith, host, partition } from './pci-helpers.js';

const fixture = (name: string) => parseLspci(fixtureText(`${name}.lspci.txt`));

describe('parsing the forms', () => {
  test('downstream, multifunction and id:vvvv:dddd combine with commas', () => {
    expect(parseAcsOverride('downstream,multifunction,id:8086:1521,id:10DE:1B80')).toEqual({
      downstream: true,
      multifunction: true,
      ids: [
        { vendor: 0x8086, device: 0x1521 },
        { vendor: 0x10de, device: 0x1b80 },
      ],
    });
  });

  test('an unknown form is an EINVAL naming it', () => {
    const e = dmaError(() => parseAcsOverride('downstream,upstream'));
    expect(e.code).toBe('EINVAL');
    expect(e.message).toMatch(/form 2 "upstream"/);
  });

  test('a malformed id is an EINVAL naming it', () => {
    expect(dmaError(() => parseAcsOverride('id:8086')).message).toMatch(/"id:8086" is not id:vvvv:dddd/);
  });

  test('more ids than the patch has slots is an EINVAL', () => {
    const many = Array.from({ length: 16 }, (_, i) => `id:8086:${(0x1000 + i).toString(16)}`).join(',');
    expect(dmaError(() => parseAcsOverride(many)).message).toMatch(/more than 15 id: entries/);
  });
});

describe('downstream', () => {
  test('splits each switch downstream port from the device below it', () => {
    const g = computeIommuGroups(fixture('T3-switch'), { acsOverride: 'downstream' });
    expect(groupWith(g, '0000:03:00.0')).toEqual(['0000:03:00.0']);
    expect(groupWith(g, '0000:02:00.0')).toEqual(['0000:02:00.0']);
  });

  test('splits a root port without ACS from the device below it', () => {
    const g = computeIommuGroups(fixture('T7a-root-port-acs-vs-disable-acs'), { acsOverride: 'downstream' });
    expect(groupWith(g, '0000:02:00.0')).toEqual(['0000:02:00.0']);
  });

  test('splits multifunction root ports without ACS into one group per port and device', () => {
    const g = computeIommuGroups(fixture('T6b-mf-root-ports-acs-disabled'), { acsOverride: 'downstream' });
    expect(partition(g)).toEqual([
      '0000:00:00.0',
      '0000:00:02.0',
      '0000:00:02.1',
      '0000:00:02.2',
      '0000:00:1f.0 0000:00:1f.2 0000:00:1f.3',
      '0000:01:00.0',
      '0000:02:00.0',
      '0000:03:00.0',
    ]);
  });

  test('leaves ports that have an ACS capability alone, even with nothing enabled', () => {
    const fns: FunctionJson[] = [
      host,
      { bdf: '00:02.0', type: 'root-port', secondary: 1, acs: NO_ACS_ENABLED },
      { bdf: '01:00.0', type: 'endpoint' },
    ];
    const g = computeIommuGroups(parseTopology(fns), { acsOverride: 'downstream' });
    expect(groupWith(g, '0000:01:00.0')).toEqual(['0000:00:02.0', '0000:01:00.0']);
  });

  test('does not touch multifunction endpoints', () => {
    const g = computeIommuGroups(fixture('T5-mf-endpoint-behind-root-port'), { acsOverride: 'downstream' });
    expect(groupWith(g, '0000:01:00.0')).toEqual(['0000:01:00.0', '0000:01:00.1', '0000:01:00.2']);
  });
});

describe('multifunction', () => {
  test('splits the functions of a multifunction PCIe endpoint', () => {
    const g = computeIommuGroups(fixture('T5-mf-endpoint-behind-root-port'), { acsOverride: 'multifunction' });
    expect(groupWith(g, '0000:01:00.1')).toEqual(['0000:01:00.1']);
  });

  test('also separates a conventional PCI function from its now-isolated PCIe sibling', () => {
    const g = computeIommuGroups(fixture('T5-mf-endpoint-behind-root-port'), { acsOverride: 'multifunction' });
    expect(groupWith(g, '0000:02:00.3')).toEqual(['0000:02:00.3']);
  });

  test('never overrides conventional PCI: virtio functions on the root bus stay together', () => {
    const g = computeIommuGroups(fixture('T1-rootbus-integrated'), { acsOverride: 'multifunction' });
    expect(groupWith(g, '0000:00:06.0')).toEqual(['0000:00:06.0', '0000:00:06.1']);
  });

  test('does not split multifunction root ports (they are the downstream form)', () => {
    const g = computeIommuGroups(fixture('T6b-mf-root-ports-acs-disabled'), { acsOverride: 'multifunction' });
    expect(groupWith(g, '0000:00:02.0')).toHaveLength(6);
  });
});

describe('id:vvvv:dddd', () => {
  test('pretends ACS for the matching device only', () => {
    const t = fixture('T3-switch');
    const byId = computeIommuGroups(t, { acsOverride: 'id:104c:8233' });
    expect(groupWith(byId, '0000:04:00.0')).toEqual(['0000:04:00.0']);
    const other = computeIommuGroups(t, { acsOverride: 'id:104c:8232' });
    expect(groupWith(other, '0000:04:00.0')).toEqual(['0000:02:01.0', '0000:04:00.0']);
  });

  test('accepts an already-parsed override object', () => {
    const g = computeIommuGroups(fixture('T3-switch'), { acsOverride: parseAcsOverride('id:104c:8233') });
    expect(groupWith(g, '0000:03:00.0')).toEqual(['0000:03:00.0']);
  });
});
