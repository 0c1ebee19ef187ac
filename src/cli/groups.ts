/**
 * `dmaemu groups <file>`: prints the IOMMU groups Linux would form for a topology (JSON, or the
 * text of `lspci -vvv -nn`, told apart by content) in the spirit of ls-iommu and
 * /sys/kernel/iommu_groups: `IOMMU Group N:` then one line per device (BDF, type, [vvvv:dddd],
 * driver). Options: --acs-override=<forms> (pcie_acs_override=), --json, --audit (peer-to-peer
 * paths that bypass the IOMMU between groups), and the what-if edits --set 'BDF.acs=RR,CR,...'
 * and --move BDF=BUS (repeatable; all --set edits apply first, then the moves), which print the
 * groups after the edit and the difference against before.
 * Formatting lives in plain functions (runGroups and the format* helpers) so tests need no process.
 * Where we differ from Linux: Linux has no what-if or audit; group numbers are ours (probe order).
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { DmaError } from '../errors.js';
import { formatBdf } from '../pci/bdf.js';
import { formatAcsOverride, parseAcsOverride, type AcsOverride } from '../pci/acs-override.js';
import { computeIommuGroups, outsideIvrs, type IommuGroup } from '../pci/iommu-group.js';
import { parseLspci } from '../pci/lspci.js';
import { auditIsolation, type IsolationFinding } from '../pci/p2p.js';
import { parseTopology } from '../pci/schema.js';
import { formatIds, treeOf, type PciFunction, type Topology } from '../pci/topology.js';
import {
  describeAcsSetting,
  describeMove,
  diffGroups,
  moveFunction,
  parseAcsSetting,
  parseMove,
  setAcs,
  type GroupDiff,
} from '../pci/what-if.js';

export interface GroupsOptions {
  acsOverride?: string;
  json?: boolean;
  audit?: boolean;
  set?: string[];
  move?: string[];
}

export interface GroupsOutput {
  stdout: string;
  /** Notes about the input (skipped lines); not errors. */
  stderr: string;
}

export type TopologySource = 'json' | 'lspci';

/** JSON when the first non-blank character opens an object or array; lspci text otherwise. */
export function detectSource(text: string): TopologySource {
  const first = text.trimStart()[0];
  return first === '{' || first === '[' ? 'json' : 'lspci';
}

export function loadTopology(text: string): { topology: Topology; source: TopologySource } {
  const source = detectSource(text);
  return { topology: source === 'json' ? parseTopology(text) : parseLspci(text), source };
}

function deviceLine(f: PciFunction): string {
  return `${f.bdf} ${f.type} ${formatIds(f)} ${f.driver ?? '(no driver)'}`;
}

/** `IOMMU Group N:` blocks, then the functions no group holds (IOMMUs, AMD root complexes). */
export function formatGroups(topology: Topology, groups: readonly IommuGroup[]): string {
  const tree = treeOf(topology);
  const out: string[] = [];
  for (const g of groups) {
    out.push(`IOMMU Group ${g.group}:`);
    for (const d of g.devices) out.push(`    ${deviceLine(tree.get(d)!)}`);
  }
  const grouped = new Set(groups.flatMap((g) => g.devices));
  const none = topology.functions.filter((f) => !grouped.has(f.bdf));
  const outside = none.filter((f) => outsideIvrs(tree, f));
  const iommus = none.filter((f) => !outside.includes(f));
  if (iommus.length) {
    out.push('No IOMMU group (the function is an IOMMU):');
    for (const f of iommus) out.push(`    ${deviceLine(f)}`);
  }
  if (outside.length) {
    out.push('No IOMMU group (AMD root complex, outside the IOMMU\'s IVRS device scope):');
    for (const f of outside) out.push(`    ${deviceLine(f)}`);
  }
  return out.join('\n') + '\n';
}

export function formatAudit(findings: readonly IsolationFinding[]): string {
  if (!findings.length) return 'Peer-to-peer audit: no path between different groups bypasses the IOMMU.\n';
  const out = [`Peer-to-peer audit: ${findings.length} pair${findings.length > 1 ? 's' : ''} in different groups can reach each other without the IOMMU:`];
  for (const f of findings) {
    out.push(`    ${f.a} (group ${f.groupA}) <-> ${f.b} (group ${f.groupB})`);
    for (const r of f.routes) out.push(`        ${r.from} -> ${r.to} ${r.description}`);
  }
  return out.join('\n') + '\n';
}

export function formatDiff(diff: GroupDiff, before: number, after: number): string {
  const out = [`Difference against before (${before} groups before, ${after} after, ${diff.unchanged} unchanged):`];
  if (!diff.removed.length && !diff.added.length) out.push('    (no group changed)');
  for (const g of diff.removed) out.push(`  - ${g.devices.join(' ')}`);
  for (const g of diff.added) out.push(`  + ${g.devices.join(' ')}`);
  return out.join('\n') + '\n';
}

interface WhatIf {
  changes: string[];
  before: IommuGroup[];
  diff: GroupDiff;
}

function applyWhatIf(topology: Topology, opts: GroupsOptions): { topology: Topology; changes: string[]; renames: Map<string, string> } {
  const changes: string[] = [];
  const renames = new Map<string, string>();
  let t = topology;
  for (const spec of opts.set ?? []) {
    const s = parseAcsSetting(spec);
    changes.push(describeAcsSetting(t, s));
    t = setAcs(t, s);
  }
  for (const spec of opts.move ?? []) {
    const m = parseMove(spec);
    changes.push(describeMove(t, m));
    const f = treeOf(t).require(m.bdf);
    const moved = moveFunction(t, m);
    const newBdf = formatBdf({ domain: m.domain, bus: m.bus, slot: f.slot, fn: f.fn });
    const original = [...renames.entries()].find(([, now]) => now === f.bdf)?.[0] ?? f.bdf;
    renames.set(original, newBdf);
    t = moved;
  }
  return { topology: t, changes, renames };
}

function jsonGroups(topology: Topology, groups: readonly IommuGroup[]) {
  const groupOf = new Map(groups.flatMap((g) => g.devices.map((d) => [d, g.group] as const)));
  const devices: Record<string, { type: string; id: string | null; class: string | null; driver: string | null; group: number | null }> = {};
  for (const f of topology.functions)
    devices[f.bdf] = {
      type: f.type,
      id: f.vendor === undefined ? null : formatIds(f).slice(1, -1),
      class: f.classCode === undefined ? null : f.classCode.toString(16).padStart(4, '0'),
      driver: f.driver ?? null,
      group: groupOf.get(f.bdf) ?? null,
    };
  return devices;
}

/** The whole `groups` command on a file's text: what it prints to stdout and stderr. */
export function runGroups(text: string, opts: GroupsOptions = {}): GroupsOutput {
  const { topology: original, source } = loadTopology(text);
  const override: AcsOverride | undefined = opts.acsOverride ? parseAcsOverride(opts.acsOverride) : undefined;
  const options = override ? { acsOverride: override } : {};
  const editing = (opts.set?.length ?? 0) + (opts.move?.length ?? 0) > 0;

  let topology = original;
  let whatIf: WhatIf | undefined;
  if (editing) {
    const before = computeIommuGroups(original, options);
    const edit = applyWhatIf(original, opts);
    topology = edit.topology;
    const after = computeIommuGroups(topology, options);
    whatIf = { changes: edit.changes, before, diff: diffGroups(before, after, edit.renames) };
  }
  const groups = computeIommuGroups(topology, options);
  const findings = opts.audit ? auditIsolation(topology, groups) : undefined;
  const stderr = topology.notes.map((n) => `note: ${n}\n`).join('');

  if (opts.json) {
    const doc = {
      source,
      acsOverride: override ? formatAcsOverride(override) : null,
      groups,
      devices: jsonGroups(topology, groups),
      ...(findings ? { audit: findings } : {}),
      ...(whatIf ? { whatIf: { changes: whatIf.changes, before: whatIf.before, removed: whatIf.diff.removed, added: whatIf.diff.added, unchanged: whatIf.diff.unchanged } } : {}),
    };
    return { stdout: JSON.stringify(doc, null, 2) + '\n', stderr };
  }

  let out = '';
  if (override) out += `With pcie_acs_override=${formatAcsOverride(override)} (it pretends ACS; the hardware still routes peer-to-peer)\n`;
  if (whatIf) out += `What-if:\n${whatIf.changes.map((c) => `    ${c}\n`).join('')}Groups after the change:\n`;
  out += formatGroups(topology, groups);
  if (whatIf) out += formatDiff(whatIf.diff, whatIf.before.length, groups.length);
  if (findings) out += formatAudit(findings);
  return { stdout: out, stderr };
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

export interface GroupsIo {
  readFile?: (path: string) => string;
  stdout?: (s: string) => void;
  stderr?: (s: string) => void;
}

/** Adds `groups <file>` to a commander program. */
export function registerGroupsCommand(program: Command, io: GroupsIo = {}): void {
  const readFile = io.readFile ?? ((p: string) => readFileSync(p, 'utf8'));
  const stdout = io.stdout ?? ((s: string) => void process.stdout.write(s));
  const stderr = io.stderr ?? ((s: string) => void process.stderr.write(s));
  program
    .command('groups')
    .description('print the IOMMU groups Linux would form for a topology (JSON or lspci -vvv -nn text)')
    .argument('<file>', 'topology: JSON, or the output of `lspci -vvv -nn` run as root')
    .option('--acs-override <forms>', 'pcie_acs_override= forms: downstream, multifunction, id:vvvv:dddd (comma-separated)')
    .option('--json', 'print JSON instead of text')
    .option('--audit', 'list devices in different groups that can still reach each other peer-to-peer')
    .option('--set <BDF.acs=FLAGS>', "what-if: set a function's ACS control bits (SV,TB,RR,CR,UF,EC,DT | none | absent); repeatable", collect, [])
    .option('--move <BDF=BUS>', 'what-if: move a function to another bus; repeatable', collect, [])
    .action((file: string, opts: GroupsOptions, cmd: Command) => {
      let text: string;
      try {
        text = readFile(file);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        cmd.error(`dmaemu groups: cannot read ${file}: ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a directory' : (e as Error).message}`, { exitCode: 1, code: 'dmaemu.groups.read' });
        return;
      }
      try {
        const out = runGroups(text, opts);
        if (out.stderr) stderr(out.stderr);
        stdout(out.stdout);
      } catch (e) {
        if (e instanceof DmaError) {
          cmd.error(`dmaemu groups: ${file}: ${e.message}`, { exitCode: 1, code: 'dmaemu.groups.input' });
          return;
        }
        throw e;
      }
    });
}
