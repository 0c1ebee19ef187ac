/**
 * `dmaemu --help` and each subcommand's help describe every option: every command is listed with
 * a description, and in each command's help every argument and option line carries one.
 */
import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';

const cli = (...args: string[]) => spawnSync(process.execPath, ['dist/bin/dmaemu.js', ...args], { encoding: 'utf8', timeout: 60_000 });

/** The entries of one section ("Options:", "Commands:", "Arguments:") of commander's help: [term, description]. */
function section(help: string, title: string): Array<[string, string]> {
  const lines = help.split('\n');
  const at = lines.indexOf(`${title}:`);
  if (at < 0) return [];
  const out: Array<[string, string]> = [];
  for (const line of lines.slice(at + 1)) {
    if (line.trim() === '') break;
    const m = /^ {2}(\S.*?)(?: {2,}(\S.*))?$/.exec(line);
    if (m) out.push([m[1], m[2] ?? '']);
    else if (out.length > 0 && /^ {3,}\S/.test(line)) out[out.length - 1][1] += ' ' + line.trim(); // wrapped description
  }
  return out;
}

const COMMANDS = ['run', 'groups', 'stress', 'bench'];

describe('dmaemu help', () => {
  it('lists every command with a description', () => {
    const r = cli('--help');
    expect(r.status).toBe(0);
    const cmds = section(r.stdout, 'Commands');
    const names = cmds.map(([term]) => term.split(' ')[0]);
    expect(names).toEqual(expect.arrayContaining([...COMMANDS, 'help']));
    for (const [term, text] of cmds) expect(text.length, `command ${term}`).toBeGreaterThan(10);
  });

  for (const cmd of COMMANDS) {
    it(`${cmd} --help gives every option and argument a description`, () => {
      const r = cli(cmd, '--help');
      expect(r.status).toBe(0);
      const options = section(r.stdout, 'Options');
      expect(options.length).toBeGreaterThan(1); // more than --help
      for (const [term, text] of [...options, ...section(r.stdout, 'Arguments')]) {
        expect(text.length, `${cmd}: ${term}`).toBeGreaterThan(5);
      }
    });
  }
});
