/**
 * Reads the text of `lspci -vvv -nn` (run as root; `-D` optional) into a Topology. Per function it
 * takes: the header line `BB:DD.F Class [cccc]: Name [vvvv:dddd]`, the bridge's
 * `Bus: primary=, secondary=, subordinate=`, the PCIe port type from `Capabilities: [..] Express
 * (vN) <type>`, the `Access Control Services` capability with its `ACSCap:`/`ACSCtl:` flags,
 * `Region N:` BARs and `Kernel driver in use:`. A function without an Express capability is
 * conventional PCI: class 0600 is a host bridge, one with a `Bus:` line a PCI bridge, anything
 * else a PCI device; class 0806 (IOMMU) marks the function as an IOMMU. Function 0 counts as
 * multifunction when another function of its slot is listed (lspci -vvv does not print the header
 * type), functions above 0 always do, as in Linux's pci_scan_slot(). Every bus no bridge leads to
 * is taken as a root bus.
 * Unknown or contradictory input in what we read is a DmaError('EINVAL') naming the line; lines we
 * do not need (other capabilities, status registers) are skipped, and top-level lines that are not
 * lspci output at all (e.g. a trailing shell line) are skipped with a note.
 * Where we differ from Linux: the multifunction header bit of a lone function 0 is unknown to lspci
 * -vvv and taken as clear.
 */
import { DmaError } from '../errors.js';
import { acsMask, LSPCI_ACS_NAMES, type AcsFlagName } from './acs-flags.js';
import { formatBdf, parseBdf } from './bdf.js';
import { withArticle, buildTopology, type Bar, type FunctionSpec, type PciType, type Topology } from './topology.js';

const HEADER_RE = /^((?:[0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]) (.*)$/;
const LOOKS_LIKE_BDF_RE = /^[0-9a-fA-F]{1,8}:[0-9a-fA-F]{1,2}[:.]/;

const EXPRESS_TYPES: ReadonlyArray<[RegExp, PciType]> = [
  [/^Endpoint$/, 'endpoint'],
  [/^Legacy Endpoint$/, 'legacy-endpoint'],
  [/^Root Port(?: \(Slot[+-]\))?$/, 'root-port'],
  [/^Upstream Port$/, 'upstream-port'],
  [/^Downstream Port(?: \(Slot[+-]\))?$/, 'downstream-port'],
  [/^PCI-Express to PCI\/PCI-X Bridge$/, 'pcie-to-pci-bridge'],
  [/^PCI\/PCI-X to PCI-Express Bridge$/, 'pci-to-pcie-bridge'],
  [/^Root Complex Integrated Endpoint$/, 'rc-endpoint'],
  [/^Root Complex Event Collector$/, 'rc-event-collector'],
];

const CLASS_HOST_BRIDGE = 0x0600;
const CLASS_PCI_BRIDGE = 0x0604;
const CLASS_CARDBUS_BRIDGE = 0x0607;
const CLASS_SEMI_TRANSPARENT_BRIDGE = 0x0609;
const CLASS_IOMMU = 0x0806;

interface Record {
  line: number;
  bdf: string;
  classCode: number;
  vendor: number;
  device: number;
  name: string;
  bus?: { line: number; primary: number; secondary: number; subordinate: number };
  express?: { line: number; type: PciType };
  acsLine?: number;
  acsCap?: { line: number; mask: number };
  acsCtl?: { line: number; mask: number };
  bars: Array<Bar & { line: number }>;
  driver?: { line: number; name: string };
  lastCap?: 'acs' | 'other';
}

const err = (line: number, bdf: string | undefined, problem: string): DmaError =>
  new DmaError('EINVAL', `lspci line ${line}${bdf ? ` (${bdf})` : ''}: ${problem}`);

function parseSize(text: string): number | undefined {
  const m = /^(\d+)([KMGTP]?)$/.exec(text);
  if (!m) return undefined;
  const mult = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 }[m[2] as '' | 'K' | 'M' | 'G' | 'T' | 'P'];
  return parseInt(m[1], 10) * mult;
}

function parseAcsLine(text: string, line: number, bdf: string, what: string): number {
  const flags = new Map<AcsFlagName, boolean>();
  for (const tok of text.trim().split(/\s+/)) {
    const m = /^([A-Za-z]+)([+-])$/.exec(tok);
    if (!m) throw err(line, bdf, `${what}: "${tok}" is not a Name+ or Name- flag`);
    const name = LSPCI_ACS_NAMES[m[1]];
    if (name) flags.set(name, m[2] === '+'); // newer lspci may print more flags; they do not matter here
  }
  const missing = Object.entries(LSPCI_ACS_NAMES).filter(([, n]) => !flags.has(n)).map(([l]) => l);
  if (missing.length) throw err(line, bdf, `${what}: missing ${missing.join(', ')}`);
  return acsMask([...flags.entries()].filter(([, on]) => on).map(([n]) => n));
}

function parseRegion(text: string, line: number, bdf: string): Bar {
  const m =
    /^Region (\d): (?:\[virtual\] )?(Memory|I\/O ports) at (<[a-z ]+>|[0-9a-fA-F]+)(?: \((32-bit|64-bit|low-1M), (prefetchable|non-prefetchable)\))?((?: \[[^\]]*\])*)$/.exec(
      text,
    );
  if (!m) throw err(line, bdf, `cannot read BAR line "${text}"`);
  const sizeText = /\[size=([^\]]+)\]/.exec(m[6] ?? '')?.[1];
  if (sizeText === undefined) throw err(line, bdf, `BAR ${m[1]} has no [size=...]`);
  const size = parseSize(sizeText);
  if (size === undefined) throw err(line, bdf, `BAR ${m[1]}: size "${sizeText}" is not a number with K/M/G/T`);
  const base = m[3].startsWith('<') ? undefined : parseInt(m[3], 16);
  if (base !== undefined && !Number.isSafeInteger(base)) throw err(line, bdf, `BAR ${m[1]}: base ${m[3]} is beyond 2^53`);
  return {
    index: parseInt(m[1], 10),
    kind: m[2] === 'Memory' ? 'memory' : 'io',
    ...(base !== undefined ? { base } : {}),
    size,
    is64: m[4] === '64-bit',
    prefetchable: m[5] === 'prefetchable',
  };
}

function toSpec(r: Record): FunctionSpec {
  const own = parseBdf(r.bdf)!;
  let type: PciType;
  if (r.express) {
    type = r.express.type;
  } else if (r.bus) {
    type = 'pci-bridge';
  } else if (r.classCode === CLASS_HOST_BRIDGE) {
    type = 'host-bridge';
  } else if (
    r.classCode === CLASS_PCI_BRIDGE ||
    r.classCode === CLASS_CARDBUS_BRIDGE ||
    r.classCode === CLASS_SEMI_TRANSPARENT_BRIDGE
  ) {
    throw err(r.line, r.bdf, `class ${r.classCode.toString(16).padStart(4, '0')} is a bridge but there is no "Bus: primary=.., secondary=.." line`);
  } else {
    type = 'pci-device';
  }
  const bridge = ['root-port', 'upstream-port', 'downstream-port', 'pcie-to-pci-bridge', 'pci-to-pcie-bridge', 'pci-bridge'].includes(type);
  if (bridge && !r.bus)
    throw err(r.express?.line ?? r.line, r.bdf, `${withArticle(type)} is a bridge but there is no "Bus: primary=.., secondary=.." line`);
  if (!bridge && r.bus) throw err(r.bus.line, r.bdf, `${withArticle(type)} has no secondary bus, yet lspci printed a Bus: line`);
  if (r.bus && r.bus.primary !== own.bus)
    throw err(r.bus.line, r.bdf, `Bus: primary=${r.bus.primary.toString(16).padStart(2, '0')} contradicts the function's own bus ${own.bus.toString(16).padStart(2, '0')}`);
  if (r.acsLine !== undefined && (!r.acsCap || !r.acsCtl))
    throw err(r.acsLine, r.bdf, `Access Control Services capability without both ACSCap: and ACSCtl: lines`);
  return {
    bdf: r.bdf,
    type,
    ...(r.bus ? { secondary: r.bus.secondary, subordinate: r.bus.subordinate } : {}),
    ...(r.acsCap && r.acsCtl ? { acs: { cap: r.acsCap.mask, ctl: r.acsCtl.mask } } : {}),
    vendor: r.vendor,
    device: r.device,
    classCode: r.classCode,
    bars: r.bars.map(({ line: _line, ...bar }) => bar),
    ...(r.driver ? { driver: r.driver.name } : {}),
    iommu: r.classCode === CLASS_IOMMU,
    name: r.name,
    origin: `lspci line ${r.line}`,
  };
}

/** Parses `lspci -vvv -nn` text (see the module comment). */
export function parseLspci(text: string): Topology {
  const lines = text.split(/\r?\n/);
  const records: Record[] = [];
  const notes: string[] = [];
  let cur: Record | undefined;

  for (let i = 0; i < lines.length; i++) {
    const line = i + 1;
    const raw = lines[i];
    if (raw.trim() === '') {
      cur = undefined;
      continue;
    }
    if (!/^\s/.test(raw)) {
      const h = HEADER_RE.exec(raw);
      if (!h) {
        if (LOOKS_LIKE_BDF_RE.test(raw)) throw err(line, undefined, `"${raw}" is not a device line (expected BB:DD.F Class [cccc]: Name [vvvv:dddd])`);
        notes.push(`line ${line} skipped (not lspci output): ${raw.length > 60 ? raw.slice(0, 57) + '...' : raw}`);
        cur = undefined;
        continue;
      }
      const b = parseBdf(h[1]);
      if (!b) throw err(line, undefined, `"${h[1]}" is not a PCI address (device number above 1f)`);
      const bdf = formatBdf(b);
      const cls = /^(.+?) \[([0-9a-fA-F]{4})\]: (.*)$/.exec(h[2]);
      if (!cls) throw err(line, bdf, `no class code "[cccc]:" after the address; run lspci with -nn`);
      const ids = [...cls[3].matchAll(/\[([0-9a-fA-F]{4}):([0-9a-fA-F]{4})\]/g)];
      if (!ids.length) throw err(line, bdf, `no vendor:device ids "[vvvv:dddd]"; run lspci with -nn`);
      const last = ids[ids.length - 1];
      cur = {
        line,
        bdf,
        classCode: parseInt(cls[2], 16),
        vendor: parseInt(last[1], 16),
        device: parseInt(last[2], 16),
        name: `${cls[1]}: ${cls[3].slice(0, last.index).trim()}`,
        bars: [],
      };
      const dup = records.find((r) => r.bdf === bdf);
      if (dup) throw err(line, bdf, `${bdf} is listed twice (also at line ${dup.line})`);
      records.push(cur);
      continue;
    }
    if (!cur) throw err(line, undefined, `indented line outside a device record: "${raw.trim()}"`);
    const t = raw.trim();
    const r = cur;

    if (t.startsWith('Capabilities:')) {
      if (t.includes('<access denied>'))
        throw err(line, r.bdf, `capabilities are not readable ("<access denied>"): run lspci -vvv as root`);
      const ex = /^Capabilities: \[[0-9a-fA-F]+(?: v\d+)?\] Express (?:\(v\d+\) )?(.*?)(?:, (?:MSI|IntMsgNum) [0-9a-fA-F]+)?$/.exec(t);
      if (ex) {
        const hit = EXPRESS_TYPES.find(([re]) => re.test(ex[1]));
        if (!hit) throw err(line, r.bdf, `unknown PCI Express port type "${ex[1]}"`);
        if (r.express) throw err(line, r.bdf, `a second Express capability (first at line ${r.express.line})`);
        r.express = { line, type: hit[1] };
        r.lastCap = 'other';
      } else if (/^Capabilities: \[[0-9a-fA-F]+(?: v\d+)?\] Access Control Services$/.test(t)) {
        if (r.acsLine !== undefined) throw err(line, r.bdf, `a second Access Control Services capability (first at line ${r.acsLine})`);
        r.acsLine = line;
        r.lastCap = 'acs';
      } else {
        r.lastCap = 'other';
      }
      continue;
    }
    if (t.startsWith('ACSCap:') || t.startsWith('ACSCtl:')) {
      const what = t.slice(0, 6); // ACSCap or ACSCtl
      if (r.lastCap !== 'acs') throw err(line, r.bdf, `${what} outside an Access Control Services capability`);
      const mask = parseAcsLine(t.slice(7), line, r.bdf, what);
      const slot = what === 'ACSCap' ? 'acsCap' : 'acsCtl';
      if (r[slot]) throw err(line, r.bdf, `a second ${what} line (first at line ${r[slot]!.line})`);
      r[slot] = { line, mask };
      continue;
    }
    if (t.startsWith('Bus:')) {
      const m = /^Bus: primary=([0-9a-fA-F]{2}), secondary=([0-9a-fA-F]{2}), subordinate=([0-9a-fA-F]{2})(?:, sec-latency=\d+)?$/.exec(t);
      if (!m) throw err(line, r.bdf, `cannot read "${t}" (expected Bus: primary=BB, secondary=BB, subordinate=BB)`);
      if (r.bus) throw err(line, r.bdf, `a second Bus: line (first at line ${r.bus.line})`);
      r.bus = { line, primary: parseInt(m[1], 16), secondary: parseInt(m[2], 16), subordinate: parseInt(m[3], 16) };
      continue;
    }
    if (/^Region \d/.test(t)) {
      const bar = parseRegion(t, line, r.bdf);
      const prev = r.bars.find((b) => b.index === bar.index);
      if (prev) throw err(line, r.bdf, `BAR ${bar.index} listed twice (also at line ${prev.line})`);
      r.bars.push({ ...bar, line });
      continue;
    }
    if (t.startsWith('Kernel driver in use:')) {
      const name = t.slice('Kernel driver in use:'.length).trim();
      if (!name) throw err(line, r.bdf, `empty "Kernel driver in use:"`);
      if (r.driver) throw err(line, r.bdf, `a second driver "${name}" (first "${r.driver.name}" at line ${r.driver.line})`);
      r.driver = { line, name };
      continue;
    }
    // Everything else (status, link, other capabilities, their detail lines) is not needed.
  }

  if (!records.length) throw new DmaError('EINVAL', 'lspci: no PCI functions found (expected the output of lspci -vvv -nn)');
  const specs = records.map(toSpec);
  return buildTopology(specs, { rootBuses: 'infer', notes });
}
