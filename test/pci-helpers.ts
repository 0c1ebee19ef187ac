/**
 * Helpers for the pci-* tests: hand-written JSON topologies and partitions that ignore group
 * numbers (Linux's numbers depend on probe order; the partition is what must match).
 */
import { readFileSync } from 'node:fs';
import { DmaError } from '../src/errors.js';
import type { FunctionJson, IommuGroup } from '../src/pci/index.js';

export const FIXTURES = new URL('../../shared/fixtures/topologies/', import.meta.url);

/**
 * Our own topologies, made the same way (Debian 6.1 and 6.12 kernels under QEMU 7.2) by
 * scripts/qemu-groups/: same file naming as FIXTURES.
 */
export const OWN_FIXTURES = new URL('./fixtures/topologies/', import.meta.url);

export function fixtureText(name: string): string {
  return readFileSync(new URL(name, FIXTURES), 'utf8');
}

/** Groups as a sorted list of space-joined sorted device lists. */
export function partition(groups: readonly IommuGroup[]): string[] {
  return groups.map((g) => [...g.devices].sort().join(' ')).sort();
}

/** The same for a *.groups.txt file: one group per line. */
export function partitionFromText(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '')
    .map((l) => l.split(/\s+/).sort().join(' '))
    .sort();
}

/** The devices grouped with `bdf`. */
export function groupWith(groups: readonly IommuGroup[], bdf: string): string[] {
  const g = groups.find((x) => x.devices.includes(bdf));
  if (!g) throw new Error(`${bdf} is in no group`);
  return g.devices;
}

export const FULL_ACS = { cap: ['SV', 'TB', 'RR', 'CR', 'UF', 'DT'], ctl: ['SV', 'RR', 'CR', 'UF'] } as FunctionJson['acs'];
export const NO_ACS_ENABLED = { cap: ['SV', 'TB', 'RR', 'CR', 'UF', 'DT'], ctl: [] } as FunctionJson['acs'];

export const host: FunctionJson = { bdf: '00:00.0', type: 'host-bridge', id: '8086:29c0' };

/** Runs `fn`, expecting a DmaError; returns it. */
export function dmaError(fn: () => unknown): DmaError {
  try {
    fn();
  } catch (e) {
    if (e instanceof DmaError) return e;
    throw new Error(`expected a DmaError, got ${String(e)}`);
  }
  throw new Error('expected a DmaError, nothing was thrown');
}
