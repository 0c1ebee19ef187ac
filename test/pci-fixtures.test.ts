/**
 * Data-driven: every *.lspci.txt in the shared topology fixtures (booted on real Linux kernels
 * under QEMU) is parsed, grouped, and compared as a partition with the kernel's *.groups.txt.
 * A new fixture file becomes a new test without code changes.
 */
import { existsSync, readdirSync } from 'node:fs';
import { describe, expect, test } from 'vitest';
import { computeIommuGroups, parseLspci } from '../src/pci/index.js';
import { FIXTURES, fixtureText, partition, partitionFromText } from './pci-helpers.js';

const lspciFiles = readdirSync(FIXTURES)
  .filter((f) => f.endsWith('.lspci.txt'))
  .sort();

test('the fixture folder holds lspci fixtures', () => {
  expect(lspciFiles.length).toBeGreaterThan(0);
});

describe.each(lspciFiles)('%s', (file) => {
  const name = file.slice(0, -'.lspci.txt'.length);

  test('has the kernel groups next to it', () => {
    expect(existsSync(new URL(`${name}.groups.txt`, FIXTURES))).toBe(true);
  });

  test('groups partition equals the one Linux made', () => {
    const topology = parseLspci(fixtureText(file));
    const expected = partitionFromText(fixtureText(`${name}.groups.txt`));
    expect(partition(computeIommuGroups(topology))).toEqual(expected);
  });
});
