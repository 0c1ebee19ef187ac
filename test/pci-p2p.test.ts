/**
 * Peer-to-peer reachability and the isolation audit: who can DMA into whose BAR without the IOMMU.
 */
import { describe, expect, test } from 'vitest';
import {
  auditIsolation,
  computeIommuGroups,
  p2pRoute,
  parseLspci,
  parseTopology,
  setAcs,
  acsMask,
  type FunctionJson,
} from '../src/pci/index.js';
import { FULL_ACS, fixtureText, host } from './pci-helpers.js';

const fixture = (name: string) => parseLspci(fixtureText(`${name}.lspci.txt`));
const RR_ONLY = acsMask(['RR']);

describe('p2pRoute', () => {
  test('siblings under switch downstream ports without ACS reach each other through the ingress port', () => {
    const r = p2pRoute(fixture('T3-switch'), '03:00.0', '04:00.0');
    expect(r?.via).toEqual({ kind: 'switch-port', port: '0000:02:00.0' });
    expect(p2pRoute(fixture('T3-switch'), '04:00.0', '03:00.0')?.via).toEqual({ kind: 'switch-port', port: '0000:02:01.0' });
  });

  test('ACS P2P Request Redirect on the ingress downstream port sends the request up to the IOMMU', () => {
    const t = setAcs(fixture('T3-switch'), { bdf: '0000:02:00.0', ctl: RR_ONLY });
    expect(p2pRoute(t, '03:00.0', '04:00.0')).toBeUndefined();
    expect(p2pRoute(t, '04:00.0', '03:00.0')).toBeDefined(); // 02:01.0 still has no RR
  });

  test('devices below different root ports cannot reach each other', () => {
    expect(p2pRoute(fixture('T7a-root-port-acs-vs-disable-acs'), '02:00.0', '01:00.0')).toBeUndefined();
  });

  test('devices on one conventional PCI bus segment reach each other over the shared bus', () => {
    expect(p2pRoute(fixture('T4a-pcie-pci-bridge-on-rootbus'), '01:01.0', '01:02.0')?.via).toEqual({ kind: 'pci-bus', bus: '0000:01' });
  });

  test('functions of a multifunction endpoint without ACS talk inside the device', () => {
    expect(p2pRoute(fixture('T5-mf-endpoint-behind-root-port'), '01:00.2', '01:00.0')?.via).toEqual({
      kind: 'multifunction',
      device: '0000:01:00',
      requester: '0000:01:00.2',
    });
  });

  test('multifunction root ports without ACS route between their subtrees', () => {
    expect(p2pRoute(fixture('T6b-mf-root-ports-acs-disabled'), '01:00.0', '03:00.0')?.via).toEqual({ kind: 'root-port', port: '0000:00:02.0' });
  });

  test('a function without a memory BAR is not a target', () => {
    const fns: FunctionJson[] = [
      host,
      { bdf: '00:02.0', type: 'root-port', secondary: 1, subordinate: 4, acs: FULL_ACS },
      { bdf: '01:00.0', type: 'upstream-port', secondary: 2, subordinate: 4 },
      { bdf: '02:00.0', type: 'downstream-port', secondary: 3 },
      { bdf: '02:01.0', type: 'downstream-port', secondary: 4 },
      { bdf: '03:00.0', type: 'endpoint', bars: [{ index: 0, size: '4K' }] },
      { bdf: '04:00.0', type: 'endpoint', bars: [{ index: 0, kind: 'io', size: 32 }] },
    ];
    const t = parseTopology(fns);
    expect(p2pRoute(t, '03:00.0', '04:00.0')).toBeUndefined();
    expect(p2pRoute(t, '04:00.0', '03:00.0')).toBeDefined();
  });

  test('naming a function that does not exist is ENOENT', () => {
    expect(() => p2pRoute(fixture('T3-switch'), '03:00.0', '09:00.0')).toThrow(/ENOENT: no PCI function 0000:09:00.0/);
  });
});

describe('auditIsolation', () => {
  test('flags the switch siblings that Linux puts in different groups, naming both ingress ports', () => {
    const t = fixture('T3-switch');
    const findings = auditIsolation(t, computeIommuGroups(t));
    expect(findings.map((f) => [f.a, f.b])).toEqual([['0000:03:00.0', '0000:04:00.0']]);
    expect(findings[0].routes.map((r) => r.via)).toEqual([
      { kind: 'switch-port', port: '0000:02:00.0' },
      { kind: 'switch-port', port: '0000:02:01.0' },
    ]);
    expect(findings[0].routes[0].description).toMatch(/switch downstream port 0000:02:00.0 without ACS P2P Request Redirect/);
  });

  test('with ACS RR on both downstream ports no pair is left', () => {
    let t = setAcs(fixture('T3-switch'), { bdf: '02:00.0', ctl: RR_ONLY });
    t = setAcs(t, { bdf: '02:01.0', ctl: RR_ONLY });
    expect(auditIsolation(t, computeIommuGroups(t))).toEqual([]);
  });

  test('is empty where the groups already cover every peer-to-peer path', () => {
    for (const name of ['T2-two-root-ports', 'T4a-pcie-pci-bridge-on-rootbus', 'T5-mf-endpoint-behind-root-port', 'T6b-mf-root-ports-acs-disabled', 'T7a-root-port-acs-vs-disable-acs']) {
      const t = fixture(name);
      expect(auditIsolation(t, computeIommuGroups(t)), name).toEqual([]);
    }
  });

  test('under pcie_acs_override=downstream the groups split and the audit names the pair and the port', () => {
    const t = fixture('T3-switch');
    const plain = computeIommuGroups(t);
    const overridden = computeIommuGroups(t, { acsOverride: 'downstream' });
    expect(overridden.length).toBeGreaterThan(plain.length);
    const findings = auditIsolation(t, overridden);
    const pair = findings.find((f) => f.a === '0000:03:00.0' && f.b === '0000:04:00.0');
    expect(pair?.routes[0].via).toEqual({ kind: 'switch-port', port: '0000:02:00.0' });
  });

  test('under pcie_acs_override=multifunction the audit names the functions and the device', () => {
    const t = fixture('T5-mf-endpoint-behind-root-port');
    expect(auditIsolation(t, computeIommuGroups(t))).toEqual([]);
    const findings = auditIsolation(t, computeIommuGroups(t, { acsOverride: 'multifunction' }));
    expect(findings.map((f) => `${f.a} ${f.b}`)).toEqual([
      '0000:01:00.0 0000:01:00.1',
      '0000:01:00.0 0000:01:00.2',
      '0000:01:00.1 0000:01:00.2',
      '0000:02:00.0 0000:02:00.3',
    ]);
    expect(findings[0].routes[0].via).toEqual({ kind: 'multifunction', device: '0000:01:00', requester: '0000:01:00.0' });
  });

  test('a conventional function beside an ACS-quirked Intel RCiEP can still reach it inside the device', () => {
    const t = fixture('T1-rootbus-integrated');
    const findings = auditIsolation(t, computeIommuGroups(t));
    expect(findings.map((f) => [f.a, f.b, f.routes.map((r) => r.from)])).toEqual([['0000:00:09.0', '0000:00:09.1', ['0000:00:09.1']]]);
  });
});
