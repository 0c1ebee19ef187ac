import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, writeFileSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadScenarioFile } from '../src/scenario/scenario-file.js';
import { parseScenario } from '../src/scenario/scenario-schema.js';
import { DEFAULT_SCENARIO } from '../src/scenario/default-scenario.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'dmaemu-scenario-'));
  mkdirSync(join(dir, 'topo'));
  writeFileSync(
    join(dir, 'topo', 'mf.json'),
    JSON.stringify({ functions: [{ bdf: '00:00.0', type: 'host-bridge' }, { bdf: '00:03.0', type: 'endpoint' }] }),
  );
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const write = (name: string, text: string): string => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};

describe('scenario files', () => {
  it('says which file is missing and that it does not exist', () => {
    const p = join(dir, 'nope.json');
    expect(() => loadScenarioFile(p)).toThrow(expect.objectContaining({ code: 'ENOENT', message: expect.stringContaining(`scenario file ${p}: cannot read it: no such file`) }));
  });

  it('says a directory cannot be read as a scenario', () => {
    expect(() => loadScenarioFile(dir)).toThrow(/scenario file .*: cannot read it: it is a directory/);
  });

  it('says which file is not JSON', () => {
    const p = write('broken.json', '{ "devices": [ ');
    expect(() => loadScenarioFile(p)).toThrow(new RegExp(`scenario file ${p.replace(/[.]/g, '\\.')}: not valid JSON`));
  });

  it('names the file and the field of a schema error', () => {
    const p = write('bad-field.json', JSON.stringify({ devices: [{ bdf: '00:03.0' }], workloads: [{ device: '00:03.0', sizes: [], count: 3 }] }));
    expect(() => loadScenarioFile(p)).toThrow(/scenario file .*bad-field\.json: scenario\.workloads\[0\]\.sizes: /);
  });

  it('reads a topology path relative to the scenario file', () => {
    const p = write('with-topo.json', JSON.stringify({ topology: 'topo/mf.json', devices: [{ bdf: '00:03.0' }], workloads: [{ device: '00:03.0', sizes: [4096] }] }));
    const s = loadScenarioFile(p);
    expect(typeof s.topology).toBe('string');
    expect(JSON.parse(s.topology as string).functions).toHaveLength(2);
  });

  it('names the topology file it cannot read, resolved against the scenario file', () => {
    const p = write('lost-topo.json', JSON.stringify({ topology: 'topo/missing.json', devices: [{ bdf: '00:03.0' }], workloads: [{ device: '00:03.0', sizes: [4096] }] }));
    expect(() => loadScenarioFile(p)).toThrow(new RegExp(`scenario\\.topology: topology file ${join(dir, 'topo', 'missing.json').replace(/[.]/g, '\\.')}: cannot read it: no such file`));
  });

  it('ships scenarios/default.json equal to the built-in default scenario', () => {
    expect(loadScenarioFile(join('scenarios', 'default.json'))).toEqual(parseScenario(DEFAULT_SCENARIO));
  });

  it('loads the example scenarios shipped in scenarios/', () => {
    for (const f of ['default.json', 'lazy-pool.json', 'topology.json']) {
      const s = loadScenarioFile(join('scenarios', f));
      expect(s.workloads.length).toBeGreaterThan(0);
    }
  });
});
