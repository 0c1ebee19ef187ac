/**
 * Reading a scenario file: JSON, validated (scenario-schema.ts), with a topology given as a path
 * read relative to the scenario file's directory. Every problem is a DmaError whose message says
 * which file, and why (cannot read, not JSON, or the field that is wrong).
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { DmaError } from '../errors.js';
import { parseScenario, type Scenario } from './scenario-schema.js';

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === 'ENOENT' ? 'no such file' : err.code === 'EACCES' ? 'permission denied' : err.code === 'EISDIR' ? 'it is a directory' : (err.message ?? String(e));
    throw new DmaError(err.code === 'ENOENT' ? 'ENOENT' : 'EINVAL', `${what} ${path}: cannot read it: ${why}`, { cause: e });
  }
}

/** A parsed scenario value whose topology path (if any) is read relative to `baseDir`. */
export function resolveScenario(value: unknown, baseDir: string, file = 'scenario'): Scenario {
  let s: Scenario;
  try {
    s = parseScenario(value);
  } catch (e) {
    if (e instanceof DmaError && file !== 'scenario') throw new DmaError(e.code, `${file}: ${e.message.replace(/^[A-Z]+: /, '')}`, { cause: e });
    throw e;
  }
  if (typeof s.topology === 'string') {
    const path = resolve(baseDir, s.topology);
    s = { ...s, topology: readText(path, `${file}: scenario.topology: topology file`) };
  }
  return s;
}

/** Reads, parses and validates the scenario file at `path`. */
export function loadScenarioFile(path: string): Scenario {
  const abs = resolve(path);
  const text = readText(abs, 'scenario file');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new DmaError('EINVAL', `scenario file ${abs}: not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  return resolveScenario(value, dirname(abs), `scenario file ${abs}`);
}
