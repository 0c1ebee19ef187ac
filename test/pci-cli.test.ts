/**
 * The `groups` CLI: its formatting functions (no process spawned) and the commander command.
 */
import { Command, CommanderError } from 'commander';
import { describe, expect, test } from 'vitest';
import { detectSource, registerGroupsCommand, runGroups } from '../src/cli/groups.js';
import { dmaError, fixtureText, host } from './pci-helpers.js';

const T3 = fixtureText('T3-switch.lspci.txt');
const T4A = fixtureText('T4a-pcie-pci-bridge-on-rootbus.lspci.txt');

/** The device lines under each `IOMMU Group N:` header, keyed by N. */
function blocks(stdout: string): Map<number, string[]> {
  const out = new Map<number, string[]>();
  let cur: string[] | undefined;
  for (const line of stdout.split('\n')) {
    const h = /^IOMMU Group (\d+):$/.exec(line);
    if (h) out.set(Number(h[1]), (cur = []));
    else if (/^ {4}\S/.test(line) && cur) cur.push(line.trim());
    else cur = undefined;
  }
  return out;
}

describe('text output', () => {
  test('prints IOMMU Group N: then one line per device: BDF, type, [vvvv:dddd], driver', () => {
    const g = blocks(runGroups(T3).stdout);
    expect(g.get(4)).toEqual(['0000:02:00.0 downstream-port [104c:8233] pcieport', '0000:03:00.0 endpoint [8086:10d3] (no driver)']);
    expect(g.get(0)).toEqual(['0000:00:00.0 host-bridge [8086:29c0] (no driver)']);
    expect(g.size).toBe(6);
  });

  test('a JSON topology is detected by content and unknown ids print as ????', () => {
    const json = JSON.stringify([host, { bdf: '00:03.0', type: 'rc-endpoint', driver: 'vfio-pci' }]);
    expect(detectSource(`  \n${json}`)).toBe('json');
    expect(detectSource(T3)).toBe('lspci');
    expect(blocks(runGroups(json).stdout).get(1)).toEqual(['0000:00:03.0 rc-endpoint [????:????] vfio-pci']);
  });

  test('functions that are IOMMUs are listed apart, without a group', () => {
    const json = JSON.stringify([host, { bdf: '00:00.2', type: 'pci-device', id: '1022:1451', iommu: true }]);
    expect(runGroups(json).stdout).toMatch(/No IOMMU group \(the function is an IOMMU\):\n {4}0000:00:00.2 pci-device \[1022:1451\] \(no driver\)\n$/);
  });

  test('--acs-override changes the groups and says it only pretends', () => {
    const out = runGroups(T3, { acsOverride: 'downstream' }).stdout;
    expect(out.split('\n')[0]).toBe('With pcie_acs_override=downstream (it pretends ACS; the hardware still routes peer-to-peer)');
    expect([...blocks(out).values()]).toContainEqual(['0000:03:00.0 endpoint [8086:10d3] (no driver)']);
  });

  test('--audit names the pair and the port', () => {
    const out = runGroups(T3, { audit: true }).stdout;
    expect(out).toContain('    0000:03:00.0 (group 4) <-> 0000:04:00.0 (group 5)\n');
    expect(out).toContain('        0000:03:00.0 -> 0000:04:00.0 through switch downstream port 0000:02:00.0 without ACS P2P Request Redirect\n');
  });

  test('--audit says so when nothing crosses a group boundary', () => {
    expect(runGroups(fixtureText('T2-two-root-ports.lspci.txt'), { audit: true }).stdout).toMatch(/Peer-to-peer audit: no path between different groups bypasses the IOMMU\.\n$/);
  });

  test('notes about skipped lines go to stderr, not stdout', () => {
    const out = runGroups(T3);
    expect(out.stderr).toBe('note: line 365 skipped (not lspci output): UPTIME_AT_END 4.53\n');
    expect(out.stdout).not.toContain('UPTIME');
  });
});

describe('what-if', () => {
  test('--set enabling ACS on a downstream port splits its group and prints the diff', () => {
    const out = runGroups(T3, { set: ['02:00.0.acs=SV,RR,CR,UF'] }).stdout;
    expect(out).toContain('What-if:\n    set ACS control of 0000:02:00.0 to SV,RR,CR,UF (capability SV,TB,RR,CR,UF,DT)\n');
    expect(out).toContain('Difference against before (6 groups before, 7 after, 5 unchanged):\n  - 0000:02:00.0 0000:03:00.0\n  + 0000:02:00.0\n  + 0000:03:00.0\n');
  });

  test('--set with too few flags changes nothing and says so', () => {
    const out = runGroups(T3, { set: ['02:00.0.acs=RR'] }).stdout;
    expect(out).toContain('(6 groups before, 6 after, 6 unchanged):\n    (no group changed)\n');
  });

  test('--set ...=absent removes a capability and merges groups', () => {
    const out = runGroups(fixtureText('T2-two-root-ports.lspci.txt'), { set: ['00:02.0.acs=absent'] }).stdout;
    expect(out).toContain('  + 0000:00:02.0 0000:01:00.0\n');
  });

  test('--move takes a device out from behind a PCIe-to-PCI bridge onto the root bus', () => {
    const out = runGroups(T4A, { move: ['01:01.0=00'] }).stdout;
    expect(out).toContain('    move 0000:01:01.0 to 0000:00:01.0\n');
    expect(out).toContain('  - 0000:00:02.0 0000:01:01.0 0000:01:02.0\n  + 0000:00:01.0\n  + 0000:00:02.0 0000:01:02.0\n');
  });

  test('--move onto an occupied address is EEXIST', () => {
    const e = dmaError(() => runGroups(T4A, { move: ['01:02.0=00'] }));
    expect(e.code).toBe('EEXIST');
    expect(e.message).toMatch(/--move 0000:01:02.0: 0000:00:02.0 is already taken/);
  });

  test('--move onto a bus no bridge leads to is EINVAL from the topology check', () => {
    expect(dmaError(() => runGroups(T4A, { move: ['01:02.0=0000:07'] })).message).toMatch(/\(0000:07:02.0\): bus: no bridge leads to bus 0000:07/);
  });

  test('a malformed --move is an EINVAL naming it', () => {
    expect(dmaError(() => runGroups(T4A, { move: ['01:02.0=00:02'] })).message).toMatch(/--move "01:02.0=00:02": expected BDF=BUS/);
  });

  test('a malformed --set is an EINVAL naming it', () => {
    expect(dmaError(() => runGroups(T3, { set: ['02:00.0.acs=RR,XX'] })).message).toMatch(/--set "02:00.0.acs=RR,XX": unknown ACS flag XX/);
    expect(dmaError(() => runGroups(T3, { set: ['02:00.0=RR'] })).message).toMatch(/expected BDF.acs=FLAGS/);
  });
});

describe('--json', () => {
  test('has source, acsOverride, groups like computeIommuGroups and a device map', () => {
    const doc = JSON.parse(runGroups(T3, { json: true, acsOverride: 'downstream' }).stdout);
    expect(Object.keys(doc)).toEqual(['source', 'acsOverride', 'groups', 'devices']);
    expect(doc.source).toBe('lspci');
    expect(doc.acsOverride).toBe('downstream');
    expect(doc.groups[0]).toEqual({ group: 0, devices: ['0000:00:00.0'] });
    expect(doc.devices['0000:02:00.0']).toEqual({ type: 'downstream-port', id: '104c:8233', class: '0604', driver: 'pcieport', group: doc.groups.find((g: { devices: string[] }) => g.devices.includes('0000:02:00.0')).group });
  });

  test('adds audit and whatIf when asked', () => {
    const doc = JSON.parse(runGroups(T3, { json: true, audit: true, set: ['02:01.0.acs=SV,RR,CR,UF'] }).stdout);
    expect(doc.whatIf.changes).toEqual(['set ACS control of 0000:02:01.0 to SV,RR,CR,UF (capability SV,TB,RR,CR,UF,DT)']);
    expect(doc.whatIf.removed.map((g: { devices: string[] }) => g.devices)).toEqual([['0000:02:01.0', '0000:04:00.0']]);
    expect(doc.audit[0]).toMatchObject({ a: '0000:03:00.0', b: '0000:04:00.0' });
  });
});

describe('the commander command', () => {
  function run(args: string[], files: Record<string, string>) {
    const program = new Command().exitOverride().configureOutput({ writeErr: () => {} });
    const out: string[] = [];
    const err: string[] = [];
    registerGroupsCommand(program, {
      readFile: (p) => {
        if (!(p in files)) throw Object.assign(new Error(`ENOENT: ${p}`), { code: 'ENOENT' });
        return files[p];
      },
      stdout: (s) => out.push(s),
      stderr: (s) => err.push(s),
    });
    let error: CommanderError | undefined;
    try {
      program.parse(['node', 'dmaemu', ...args]);
    } catch (e) {
      if (!(e instanceof CommanderError)) throw e;
      error = e;
    }
    return { out: out.join(''), err: err.join(''), error };
  }

  test('groups <file> with repeatable --set and --acs-override=<forms> prints the groups', () => {
    const r = run(['groups', 't3.txt', '--acs-override=multifunction', '--set', '02:00.0.acs=SV,RR,CR,UF', '--set', '02:01.0.acs=SV,RR,CR,UF'], { 't3.txt': T3 });
    expect(r.error).toBeUndefined();
    expect(r.out).toContain('With pcie_acs_override=multifunction');
    expect(r.out).toContain('Difference against before (6 groups before, 8 after, 4 unchanged):');
  });

  test('a missing file is a clear error with exit code 1', () => {
    const r = run(['groups', 'nope.json'], {});
    expect(r.error?.exitCode).toBe(1);
    expect(r.error?.message).toBe('dmaemu groups: cannot read nope.json: no such file');
  });

  test('a malformed file is an error naming the file and the line', () => {
    const r = run(['groups', 'bad.txt'], { 'bad.txt': T3.replace('ACSCtl:\tSrcValid+', 'ACSCtl:\tSrcValid?') });
    expect(r.error?.exitCode).toBe(1);
    expect(r.error?.message).toMatch(/^dmaemu groups: bad.txt: EINVAL: lspci line 75 \(0000:00:02.0\): ACSCtl: "SrcValid\?"/);
  });
});
