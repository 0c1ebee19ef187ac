/**
 * Data-driven: every *.lspci.txt in the shared topology fixtures and in our own generated ones
 * (test/fixtures/topologies, made by scripts/qemu-groups/), all booted on real Linux kernels under
 * QEMU, is parsed, grouped, and compared as a partition with the kernel's *.groups.txt.
 * A new fixture file becomes a new test without code changes.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { computeIommuGroups, parseLspci } from '../src/pci/index.js';
import { FIXTURES, OWN_FIXTURES, partition, partitionFromText } from './pci-helpers.js';

const folders = [
  { label: 'shared', dir: FIXTURES },
  { label: 'own', dir: OWN_FIXTURES },
];

const lspciFiles = folders.flatMap(({ label, dir }) =>
  readdirSync(dir)
    .filter((f) => f.endsWith('.lspci.txt'))
    .sort()
    .map((file) => ({ label, dir, file })),
);

test.each(folders)('the $label fixture folder holds lspci fixtures', ({ dir }) => {
  expect(readdirSync(dir).filter((f) => f.endsWith('.lspci.txt')).length).toBeGreaterThan(0);
});

describe.each(lspciFiles)('$label/$file', ({ dir, file }) => {
  const name = file.slice(0, -'.lspci.txt'.length);
  const text = (f: string) => readFileSync(new URL(f, dir), 'utf8');

  test('has the kernel groups next to it', () => {
    expect(existsSync(new URL(`${name}.groups.txt`, dir))).toBe(true);
  });

  test('groups partition equals the one Linux made', () => {
    const topology = parseLspci(text(file));
    const expected = partitionFromText(text(`${name}.groups.txt`));
    expect(partition(computeIommuGroups(topology))).toEqual(expected);
  });
});
