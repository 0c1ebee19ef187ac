#!/usr/bin/env node
// Boots each topology of a topology file on real Debian kernels under QEMU (q35, emulated Intel
// IOMMU, intel_iommu=on iommu=nopt), writes NAME.lspci.txt / NAME.groups.txt / NAME.source.txt as
// the shared fixtures have them, and compares the kernel's groups with dmaemu's
// computeIommuGroups() on the captured lspci text. A developer tool: see README.md beside it.
//
//   node scripts/qemu-groups/qemu-groups.mjs [options] [TOPOLOGY_FILE | FIXTURE.source.txt ...]
//     --out DIR        where the three files per topology go (default: /tmp/qemu-groups/out)
//     --kernel PATH    a vmlinuz to boot (repeatable; default: every /boot/vmlinuz-*)
//     --only REGEX     boot only the topologies whose name matches
//     --jobs N         boots at once (default: the number of CPUs)
//     --compare-only   boot nothing: compare every *.lspci.txt in --out with its *.groups.txt
//
// With no topology argument it reads topologies.txt beside this script. A *.source.txt given as
// an argument is booted again as it is (the first line's QEMU arguments, the kernel arguments line).
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, '../..');
const WORK = join(tmpdir(), 'qemu-groups');
const BASE_APPEND = 'intel_iommu=on iommu=nopt';
const TIMEOUT_S = 240;

function parseArgs(argv) {
  const o = { out: join(WORK, 'out'), kernels: [], only: null, jobs: availableParallelism(), compareOnly: false, files: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--out') o.out = resolve(val());
    else if (a === '--kernel') o.kernels.push(resolve(val()));
    else if (a === '--only') o.only = new RegExp(val());
    else if (a === '--jobs') o.jobs = Math.max(1, Number(val()));
    else if (a === '--compare-only') o.compareOnly = true;
    else if (a === '-h' || a === '--help') {
      console.log(readFileSync(fileURLToPath(import.meta.url), 'utf8').split("\n").slice(6, 15).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
      process.exit(0);
    } else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else o.files.push(resolve(a));
  }
  if (o.files.length === 0) o.files.push(join(HERE, 'topologies.txt'));
  if (o.kernels.length === 0)
    o.kernels = readdirSync('/boot')
      .filter((f) => f.startsWith('vmlinuz-'))
      .sort()
      .map((f) => join('/boot', f));
  return o;
}

/**
 * A topology file: blocks that start with `[NAME]`; each following line is QEMU arguments
 * (joined with spaces), except `kernel: ARGS` (extra kernel arguments). `#` starts a comment.
 */
export function parseTopologyFile(text) {
  const out = [];
  let cur = null;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*$/, '').trim();
    if (line === '') continue;
    const m = /^\[([A-Za-z0-9._-]+)\]$/.exec(line);
    if (m) {
      cur = { name: m[1], args: [], append: '' };
      out.push(cur);
    } else if (!cur) throw new Error(`"${line}": QEMU arguments before the first [NAME]`);
    else if (line.startsWith('kernel:')) cur.append = `${cur.append} ${line.slice(7).trim()}`.trim();
    else cur.args.push(line);
  }
  return out.map((t) => ({ name: t.name, qemu: t.args.join(' '), append: t.append }));
}

/** A fixture's NAME.source.txt as a topology. */
function parseSourceFile(file) {
  const lines = readFileSync(file, 'utf8').split('\n');
  const qemu = lines[0].replace(/^qemu-system-x86_64\s+/, '').replace(/-machine q35\s*/, '');
  const k = lines.find((l) => l.startsWith('kernel arguments:')) ?? '';
  const append = k.slice('kernel arguments:'.length).trim().replace(BASE_APPEND, '').trim();
  return { name: basename(file).replace(/\.source\.txt$/, ''), qemu, append };
}

/** Splits QEMU arguments as a shell would for the simple words topology files use. */
const words = (s) => s.split(/\s+/).filter((w) => w !== '');

function run(cmd, args, timeoutS) {
  return new Promise((res) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutS * 1000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      res({ code, signal, out });
    });
  });
}

/** The initramfs for a kernel (its release names the modules packed for `qg.sriov`). */
function ensureInitramfs(kernel) {
  const release = basename(kernel).replace(/^vmlinuz-/, '');
  const img = join(WORK, `initramfs-${release}.cpio.gz`);
  const script = join(HERE, 'build-initramfs.sh');
  if (!existsSync(img) || statSync(img).mtimeMs < statSync(script).mtimeMs) {
    mkdirSync(WORK, { recursive: true });
    return run('sh', [script, img, release], 120).then((r) => {
      if (r.code !== 0) throw new Error(`build-initramfs.sh failed:\n${r.out}`);
      return img;
    });
  }
  return Promise.resolve(img);
}

/** One boot: returns { kernel, lspci, groups (lines "N 0000:bb:dd.f"), seconds } or throws. */
async function boot(topo, kernel, initrd) {
  const dir = join(WORK, 'runs', `${topo.name}.${basename(kernel)}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const con = join(dir, 'console.log');
  const data = join(dir, 'data.log');
  const append = `console=ttyS0 ${BASE_APPEND} ${topo.append} quiet panic=-1`.replace(/\s+/g, ' ');
  const args = [
    '-nodefaults', '-machine', 'q35', '-accel', 'tcg', '-m', '512', '-smp', '1',
    '-display', 'none', '-no-reboot',
    '-serial', `file:${con}`, '-serial', `file:${data}`,
    '-kernel', kernel, '-initrd', initrd, '-append', append,
    ...words(topo.qemu),
  ];
  writeFileSync(join(dir, 'cmdline'), ['qemu-system-x86_64', ...args].map((a) => (/\s/.test(a) ? `'${a}'` : a)).join(' ') + '\n');
  const t0 = Date.now();
  const r = await run('qemu-system-x86_64', args, TIMEOUT_S);
  const seconds = (Date.now() - t0) / 1000;
  const text = existsSync(data) ? readFileSync(data, 'utf8').replace(/\r/g, '') : '';
  const section = (tag) => {
    const m = new RegExp(`@@QG-${tag}-BEGIN\\n([\\s\\S]*?)@@QG-${tag}-END`).exec(text);
    return m ? m[1] : null;
  };
  const lspci = section('LSPCI');
  const groups = section('GROUPS');
  if (r.code !== 0 || lspci === null || groups === null || !text.includes('@@QG-DONE')) {
    const tail = existsSync(con) ? readFileSync(con, 'utf8').split('\n').slice(-15).join('\n') : '';
    throw new Error(`${topo.name} on ${basename(kernel)}: qemu exit ${r.code ?? r.signal}\n${r.out.trim()}\n${tail}`);
  }
  const release = /@@QG-KERNEL (\S+)/.exec(text)?.[1] ?? basename(kernel);
  const sriov = section('SRIOV');
  if (sriov !== null) writeFileSync(join(dir, 'sriov.log'), sriov);
  return { release, lspci, groups, seconds, sriov };
}

/** lspci text as the fixtures keep it: no IOMMU group lines, no lspci warnings. */
const cleanLspci = (t) =>
  t
    .split('\n')
    .filter((l) => !/^\s+IOMMU group:/.test(l) && !/^lspci: /.test(l))
    .join('\n')
    .replace(/\n*$/, '\n');

/** "N/devices/0000:..." lines -> one line per group, devices sorted, groups by first device. */
function groupsText(raw) {
  const by = new Map();
  for (const l of raw.split('\n')) {
    const m = /^(\d+)\/devices\/(\S+)$/.exec(l.trim());
    if (m) (by.get(m[1]) ?? by.set(m[1], []).get(m[1])).push(m[2]);
  }
  const lines = [...by.values()].map((d) => d.sort().join(' ')).sort();
  return { text: lines.join('\n') + '\n', devices: lines.reduce((n, l) => n + l.split(' ').length, 0), count: lines.length };
}

async function pool(items, n, fn) {
  const results = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        results[i] = await fn(items[i], i);
      }
    }),
  );
  return results;
}

async function loadDmaemu() {
  const index = join(REPO, 'dist/src/pci/index.js');
  if (!existsSync(index)) throw new Error(`${index} missing: run "npx tsc -p tsconfig.json" in ${REPO} first`);
  return import(index);
}

const partitionOf = (text) =>
  text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '')
    .map((l) => l.split(/\s+/).sort().join(' '))
    .sort();

/** Compares dmaemu's groups with the kernel's for NAME in DIR; returns null or a description. */
export function compareOne(pci, dir, name) {
  const lspci = readFileSync(join(dir, `${name}.lspci.txt`), 'utf8');
  const kernel = partitionOf(readFileSync(join(dir, `${name}.groups.txt`), 'utf8'));
  let ours;
  try {
    ours = pci.computeIommuGroups(pci.parseLspci(lspci)).map((g) => [...g.devices].sort().join(' ')).sort();
  } catch (e) {
    return `dmaemu threw: ${e.message}`;
  }
  if (JSON.stringify(ours) === JSON.stringify(kernel)) return null;
  const onlyK = kernel.filter((g) => !ours.includes(g));
  const onlyO = ours.filter((g) => !kernel.includes(g));
  return `kernel groups not ours:\n    ${onlyK.join('\n    ')}\n  our groups not the kernel's:\n    ${onlyO.join('\n    ')}`;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  mkdirSync(o.out, { recursive: true });
  const pci = await loadDmaemu();
  let names;
  if (o.compareOnly) {
    names = readdirSync(o.out)
      .filter((f) => f.endsWith('.lspci.txt'))
      .map((f) => f.slice(0, -'.lspci.txt'.length))
      .filter((n) => !o.only || o.only.test(n))
      .sort();
  } else {
    const topos = o.files
      .flatMap((f) => (f.endsWith('.source.txt') ? [parseSourceFile(f)] : parseTopologyFile(readFileSync(f, 'utf8'))))
      .filter((t) => !o.only || o.only.test(t.name));
    const initrds = new Map();
    for (const k of o.kernels) initrds.set(k, await ensureInitramfs(k));
    console.log(`${topos.length} topologies x ${o.kernels.length} kernels (${o.kernels.map((k) => basename(k)).join(', ')}), ${o.jobs} at once`);
    const jobs = topos.flatMap((t) => o.kernels.map((k) => ({ t, k })));
    const results = await pool(jobs, o.jobs, async ({ t, k }) => {
      try {
        const b = await boot(t, k, initrds.get(k));
        console.log(`  booted ${t.name} on ${b.release} in ${b.seconds.toFixed(1)} s`);
        return b;
      } catch (e) {
        console.log(`  FAILED ${e.message}`);
        return null;
      }
    });
    names = [];
    topos.forEach((t, ti) => {
      const boots = o.kernels.map((_, ki) => results[ti * o.kernels.length + ki]).filter((b) => b);
      if (boots.length === 0) return;
      const g = boots.map((b) => groupsText(b.groups));
      const disagree = g.some((x) => x.text !== g[0].text);
      if (disagree) console.log(`  NOTE ${t.name}: the kernels made different groups; writing the first kernel's (${boots[0].release})`);
      const source = [
        `qemu-system-x86_64 -machine q35 ${t.qemu}`,
        `kernel arguments: ${`${BASE_APPEND} ${t.append}`.trim()}`,
        ...boots.map((b, i) => `kernel ${b.release}: ${g[i].devices} devices in ${g[i].count} groups`),
      ].join('\n');
      writeFileSync(join(o.out, `${t.name}.lspci.txt`), cleanLspci(boots[0].lspci));
      writeFileSync(join(o.out, `${t.name}.groups.txt`), g[0].text);
      writeFileSync(join(o.out, `${t.name}.source.txt`), source + '\n');
      names.push(t.name);
    });
  }
  let bad = 0;
  for (const n of names) {
    const d = compareOne(pci, o.out, n);
    if (d) bad++;
    console.log(d ? `MISMATCH ${n}\n  ${d}` : `match    ${n}`);
  }
  console.log(`${names.length - bad} match, ${bad} mismatch (files in ${o.out})`);
  process.exitCode = bad ? 1 : 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    console.error(e.message);
    process.exit(2);
  });
}
