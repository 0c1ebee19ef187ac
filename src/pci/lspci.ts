/**
 * Reads the text of `lspci -vvv -nn` (run as root; `-D`, `-k`, `-P` and `-PP` optional) into a
 * Topology. Per function it takes: the header line `BB:DD.F Class [cccc]: Name [vvvv:dddd]` (with
 * -P/-PP the address is the path through the bridges, e.g. `00:1c.4/07:00.0` or `00:1c.4/00.0`;
 * the last element names the function, the bus coming from the parent bridge when -P omits it),
 * the bridge's `Bus: primary=, secondary=, subordinate=`, the PCIe port type from
 * `Capabilities: [..] Express (vN) <type>`, the `Access Control Services` capability with its
 * `ACSCap:`/`ACSCtl:` flags, the `Single Root I/O Virtualization (SR-IOV)` capability's
 * `Number of VFs` and `VF offset/stride` (the functions at those routing IDs are the PF's virtual
 * functions), top-level `Region N:` BARs and `Kernel driver in use:`. A function without an Express
 * capability is conventional PCI: class 0600 is a host bridge, one with a `Bus:` line a PCI bridge,
 * anything else a PCI device; class 0806 (IOMMU) marks the function as an IOMMU. Function 0 counts
 * as multifunction when another (non-VF) function of its slot is listed (lspci -vvv does not print
 * the header type), functions above 0 always do, as in Linux's pci_scan_slot(). Every bus no
 * bridge leads to is taken as a root bus, unless only VFs sit on it (an SR-IOV virtual bus).
 * Lines are read by indentation: deeper lines belong to the capability above them, so the VF BARs
 * an SR-IOV capability lists (`Region N:` without a size) are not the function's BARs.
 * Tolerated as lspci really prints them: a BAR without `[size=..]` (unassigned, or no size
 * known) is left out with a note; `Bus: primary=00` on a bridge off bus 00 is a primary bus
 * number hard-wired to 0, which Linux ignores too; a function whose header lspci could not read
 * (`!!! Unknown header type`, e.g. powered off) is taken as a plain PCI device with a note; a
 * capture cut off at its end may end in a half line (skipped with a note when it reads like the
 * start of a valid line) and its last record may lack its `Bus:` line (then taken as a plain PCI
 * device) or its ACS detail lines (then taken as without ACS), each with a note.
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

const HEADER_RE = /^((?:[0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7](?:\/(?:[0-9a-fA-F]{2}:)?[0-9a-fA-F]{2}\.[0-7])*) (.*)$/;
const PATH_ELEMENT_RE = /^(?:([0-9a-fA-F]{2}):)?([0-9a-fA-F]{2})\.([0-7])$/;
const LOOKS_LIKE_BDF_RE = /^[0-9a-fA-F]{1,8}:[0-9a-fA-F]{1,2}[:.]/;

const EXPRESS_TYPES: ReadonlyArray<[RegExp, PciType]> = [
  [/^Endpoint$/, 'endpoint'],
  [/^Legacy Endpoint$/, 'legacy-endpoint'],
  [/^Root Port(?: \(Slot[+-]\))?$/, 'root-port'],
  [/^Upstream Port$/, 'upstream-port'],
  [/^Downstream Port(?: \(Slot[+-]\))?$/, 'downstream-port'],
  [/^PCI-Express to PCI\/PCI-X Bridge$/, 'pcie-to-pci-bridge'],
  [/^PCI\/PCI-X Bridge$/, 'pcie-to-pci-bridge'], // what old pciutils printed for type 7
  [/^PCI\/PCI-X to PCI-Express Bridge(?: \(Slot[+-]\))?$/, 'pci-to-pcie-bridge'],
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
  /** -P/-PP: the path elements as printed (the last is the function itself). */
  path?: string[];
  /** Indentation width of the record's top-level lines. */
  indent?: number;
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
  lastCap?: 'acs' | 'sriov' | 'other';
  sriov?: { line: number; numVfs?: number; offset?: number; stride?: number; vfDevice?: number };
  unknownHeader?: number;
  /** The last record, running to the end of the text: it may have been cut off. */
  truncated?: boolean;
}

const err = (line: number, bdf: string | undefined, problem: string): DmaError =>
  new DmaError('EINVAL', `lspci line ${line}${bdf ? ` (${bdf})` : ''}: ${problem}`);

/** Errors about a line that reads like a cut-off version of a valid one (tolerated at the end). */
const unfinished = new WeakSet<DmaError>();
const incomplete = (line: number, bdf: string | undefined, problem: string): DmaError => {
  const e = err(line, bdf, problem);
  unfinished.add(e);
  return e;
};

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
    if (!m) throw incomplete(line, bdf, `${what}: "${tok}" is not a Name+ or Name- flag`);
    const name = LSPCI_ACS_NAMES[m[1]];
    if (name) flags.set(name, m[2] === '+'); // newer lspci may print more flags; they do not matter here
  }
  const missing = Object.entries(LSPCI_ACS_NAMES).filter(([, n]) => !flags.has(n)).map(([l]) => l);
  if (missing.length) throw incomplete(line, bdf, `${what}: missing ${missing.join(', ')}`);
  return acsMask([...flags.entries()].filter(([, on]) => on).map(([n]) => n));
}

/** A top-level `Region N:` line; undefined when lspci printed no size (unassigned BAR). */
function parseRegion(text: string, line: number, bdf: string): Bar | undefined {
  const m =
    /^Region (\d): (?:\[virtual\] )?(Memory|I\/O ports) at (<[a-z ]+>|[0-9a-fA-F]+)(?: \((32-bit|64-bit|low-1M), (prefetchable|non-prefetchable)\))?((?: \[[^\]]*\])*)$/.exec(
      text,
    );
  if (!m) throw incomplete(line, bdf, `cannot read BAR line "${text}"`);
  const sizeText = /\[size=([^\]]+)\]/.exec(m[6] ?? '')?.[1];
  if (sizeText === undefined) return undefined;
  const size = parseSize(sizeText);
  if (size === undefined) throw incomplete(line, bdf, `BAR ${m[1]}: size "${sizeText}" is not a number with K/M/G/T`);
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

const isBridgeClass = (c: number): boolean =>
  c === CLASS_PCI_BRIDGE || c === CLASS_CARDBUS_BRIDGE || c === CLASS_SEMI_TRANSPARENT_BRIDGE;

/** Width of a line's indentation, tabs counting to the next multiple of 8. */
function indentOf(raw: string): number {
  let w = 0;
  for (const c of raw) {
    if (c === '\t') w = (Math.floor(w / 8) + 1) * 8;
    else if (c === ' ') w++;
    else break;
  }
  return w;
}

function toSpec(r: Record, notes: string[]): FunctionSpec {
  const own = parseBdf(r.bdf)!;
  let type: PciType;
  if (r.express) {
    type = r.express.type;
  } else if (r.bus) {
    type = 'pci-bridge';
  } else if (r.classCode === CLASS_HOST_BRIDGE) {
    type = 'host-bridge';
  } else if (r.unknownHeader !== undefined) {
    type = 'pci-device';
    notes.push(`line ${r.unknownHeader}: ${r.bdf} has a header lspci could not read; taken as a plain PCI device`);
  } else if (r.truncated && isBridgeClass(r.classCode)) {
    type = 'pci-device';
    notes.push(`line ${r.line}: ${r.bdf} is cut off before its "Bus:" line (end of text); taken as a plain PCI device`);
  } else if (isBridgeClass(r.classCode)) {
    throw err(r.line, r.bdf, `class ${r.classCode.toString(16).padStart(4, '0')} is a bridge but there is no "Bus: primary=.., secondary=.." line`);
  } else {
    type = 'pci-device';
  }
  const bridge = ['root-port', 'upstream-port', 'downstream-port', 'pcie-to-pci-bridge', 'pci-to-pcie-bridge', 'pci-bridge'].includes(type);
  if (bridge && !r.bus)
    throw err(r.express?.line ?? r.line, r.bdf, `${withArticle(type)} is a bridge but there is no "Bus: primary=.., secondary=.." line`);
  if (!bridge && r.bus) throw err(r.bus.line, r.bdf, `${withArticle(type)} has no secondary bus, yet lspci printed a Bus: line`);
  if (r.bus && r.bus.primary !== own.bus) {
    // pci_scan_bridge_extend(): "Primary bus is hard wired to 0" (VMD root ports, some SoCs).
    if (r.bus.primary === 0 && r.bus.secondary !== 0 && r.bus.subordinate !== 0)
      notes.push(`line ${r.bus.line}: ${r.bdf} has its primary bus number hard-wired to 00; Linux uses its own bus ${own.bus.toString(16).padStart(2, '0')}`);
    else
      throw err(r.bus.line, r.bdf, `Bus: primary=${r.bus.primary.toString(16).padStart(2, '0')} contradicts the function's own bus ${own.bus.toString(16).padStart(2, '0')}`);
  }
  let acs = r.acsCap && r.acsCtl ? { cap: r.acsCap.mask, ctl: r.acsCtl.mask } : undefined;
  if (r.acsLine !== undefined && !acs) {
    if (!r.truncated)
      throw err(r.acsLine, r.bdf, `Access Control Services capability without both ACSCap: and ACSCtl: lines (lspci prints them with -vv or -vvv)`);
    notes.push(`line ${r.acsLine}: ${r.bdf} is cut off inside its ACS capability (end of text); taken as having none`);
    acs = undefined;
  }
  return {
    bdf: r.bdf,
    type,
    ...(r.bus ? { secondary: r.bus.secondary, subordinate: r.bus.subordinate } : {}),
    ...(acs ? { acs } : {}),
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

  // The last non-blank line may be cut off mid-way (a truncated capture): if it cannot be read,
  // it is skipped with a note, and the record it ends may lack what a cut-off record lacks.
  let lastLine = lines.length - 1;
  while (lastLine >= 0 && lines[lastLine].trim() === '') lastLine--;
  const step = (i: number): void => {
    const line = i + 1;
    const raw = lines[i];
    if (raw.trim() === '') {
      cur = undefined;
      return;
    }
    if (!/^\s/.test(raw)) {
      const h = HEADER_RE.exec(raw);
      if (!h) {
        if (LOOKS_LIKE_BDF_RE.test(raw)) throw err(line, undefined, `"${raw}" is not a device line (expected BB:DD.F Class [cccc]: Name [vvvv:dddd])`);
        notes.push(`line ${line} skipped (not lspci output): ${raw.length > 60 ? raw.slice(0, 57) + '...' : raw}`);
        cur = undefined;
        return;
      }
      const path = h[1].split('/');
      const b = parseBdf(path[0]);
      if (!b) throw err(line, undefined, `"${path[0]}" is not a PCI address (device number above 1f)`);
      for (const e of path.slice(1)) {
        const m = PATH_ELEMENT_RE.exec(e)!;
        if (parseInt(m[2], 16) > 0x1f) throw err(line, undefined, `"${h[1]}" is not a PCI path (device number above 1f in "${e}")`);
      }
      const bdf = formatBdf(b);
      const cls = /^(.+?) \[([0-9a-fA-F]{4})\]: (.*)$/.exec(h[2]);
      if (!cls) throw incomplete(line, bdf, `no class code "[cccc]:" after the address; run lspci with -nn`);
      const ids = [...cls[3].matchAll(/\[([0-9a-fA-F]{4}):([0-9a-fA-F]{4})\]/g)];
      if (!ids.length) throw incomplete(line, bdf, `no vendor:device ids "[vvvv:dddd]"; run lspci with -nn`);
      const last = ids[ids.length - 1];
      cur = {
        line,
        bdf,
        ...(path.length > 1 ? { path } : {}),
        classCode: parseInt(cls[2], 16),
        vendor: parseInt(last[1], 16),
        device: parseInt(last[2], 16),
        name: `${cls[1]}: ${cls[3].slice(0, last.index).trim()}`,
        bars: [],
      };
      if (path.length === 1) {
        const dup = records.find((r) => r.path === undefined && r.bdf === bdf);
        if (dup) throw err(line, bdf, `${bdf} is listed twice (also at line ${dup.line})`);
      }
      records.push(cur);
      return;
    }
    if (!cur) throw err(line, undefined, `indented line outside a device record: "${raw.trim()}"`);
    const t = raw.trim();
    const r = cur;
    const depth = indentOf(raw);
    r.indent ??= depth;
    const top = depth <= r.indent;

    if (t.startsWith('ACSCap:') || t.startsWith('ACSCtl:')) {
      const what = t.slice(0, 6); // ACSCap or ACSCtl
      if (r.lastCap !== 'acs') throw err(line, r.bdf, `${what} outside an Access Control Services capability`);
      const mask = parseAcsLine(t.slice(7), line, r.bdf, what);
      const slot = what === 'ACSCap' ? 'acsCap' : 'acsCtl';
      if (r[slot]) throw err(line, r.bdf, `a second ${what} line (first at line ${r[slot]!.line})`);
      r[slot] = { line, mask };
      return;
    }
    if (!top) {
      if (r.lastCap === 'sriov') readSriovLine(t, r);
      return; // detail lines of a capability or register (VF BARs included)
    }
    if (t.startsWith('Capabilities:')) {
      if (t.includes('<access denied>'))
        throw err(line, r.bdf, `capabilities are not readable ("<access denied>"): run lspci -vvv as root`);
      const ex = /^Capabilities: \[[0-9a-fA-F]+(?: v\d+)?\] Express (?:\(v\d+\) )?(.*?)(?:,? (?:MSI|IntMsgNum|IRQ) [0-9a-fA-F]+)?$/.exec(t);
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
      } else if (/^Capabilities: \[[0-9a-fA-F]+(?: v\d+)?\] Single Root I\/O Virtualization \(SR-IOV\)$/.test(t)) {
        if (r.sriov) throw err(line, r.bdf, `a second SR-IOV capability (first at line ${r.sriov.line})`);
        r.sriov = { line };
        r.lastCap = 'sriov';
      } else {
        r.lastCap = 'other';
      }
      return;
    }
    r.lastCap = undefined; // a top-level line ends the capability above it
    if (t.startsWith('Bus:')) {
      const m = /^Bus: primary=([0-9a-fA-F]{2}), secondary=([0-9a-fA-F]{2}), subordinate=([0-9a-fA-F]{2})(?:, sec-latency=\d+)?$/.exec(t);
      if (!m) throw incomplete(line, r.bdf, `cannot read "${t}" (expected Bus: primary=BB, secondary=BB, subordinate=BB)`);
      if (r.bus) throw err(line, r.bdf, `a second Bus: line (first at line ${r.bus.line})`);
      r.bus = { line, primary: parseInt(m[1], 16), secondary: parseInt(m[2], 16), subordinate: parseInt(m[3], 16) };
      return;
    }
    if (/^Region \d/.test(t)) {
      const bar = parseRegion(t, line, r.bdf);
      if (bar === undefined) {
        notes.push(`line ${line}: ${r.bdf} ${t.slice(0, t.indexOf(':'))} has no size (unassigned); left out`);
        return;
      }
      const prev = r.bars.find((b) => b.index === bar.index);
      if (prev) throw err(line, r.bdf, `BAR ${bar.index} listed twice (also at line ${prev.line})`);
      r.bars.push({ ...bar, line });
      return;
    }
    if (t.startsWith('Kernel driver in use:')) {
      const name = t.slice('Kernel driver in use:'.length).trim();
      if (!name) throw err(line, r.bdf, `empty "Kernel driver in use:"`);
      if (r.driver) throw err(line, r.bdf, `a second driver "${name}" (first "${r.driver.name}" at line ${r.driver.line})`);
      r.driver = { line, name };
      return;
    }
    if (t.startsWith('!!! Unknown header type')) {
      r.unknownHeader = line;
      return;
    }
    // Everything else (status, link, slot, NUMA node, IOMMU group, modules) is not needed.
  };
  for (let i = 0; i < lines.length; i++) {
    if (i !== lastLine) {
      step(i);
      continue;
    }
    try {
      step(i);
    } catch (e) {
      if (!(e instanceof DmaError) || !unfinished.has(e)) throw e;
      notes.push(`line ${i + 1} skipped: the capture ends in the middle of it (${e.message})`);
    }
  }
  const lastRec = records[records.length - 1];
  if (lastRec && lastLine >= 0 && /^\s/.test(lines[lastLine])) lastRec.truncated = true;

  if (!records.length) throw new DmaError('EINVAL', 'lspci: no PCI functions found (expected the output of lspci -vvv -nn)');
  resolvePaths(records);
  const physfn = findVirtualFunctions(records, notes);
  const specs = records.map((r) => {
    const spec = toSpec(r, notes);
    const pf = physfn.get(r);
    return pf ? { ...spec, physfn: pf.bdf } : spec;
  });
  return buildTopology(specs, { rootBuses: 'infer', notes });
}

function readSriovLine(t: string, r: Record): void {
  const sr = r.sriov!;
  const num = /(?:^|, )Number of VFs: (\d+)/.exec(t);
  if (num) sr.numVfs = parseInt(num[1], 10);
  const off = /^VF offset: (\d+), stride: (\d+)(?:, Device ID: ([0-9a-fA-F]{4}))?/.exec(t);
  if (off) {
    sr.offset = parseInt(off[1], 10);
    sr.stride = parseInt(off[2], 10);
    if (off[3]) sr.vfDevice = parseInt(off[3], 16);
  }
}

/**
 * -P/-PP headers: the function's address is the last path element; its bus, when -P leaves it
 * out, is the secondary bus of the parent element. Each parent must be a listed bridge whose
 * secondary bus is the child's bus.
 */
function resolvePaths(records: Record[]): void {
  const byPath = new Map<string, Record>();
  for (const r of records) if (r.path) byPath.set(r.path.join('/'), r);
  const plain = new Map<string, Record>();
  for (const r of records) if (!r.path) plain.set(r.bdf, r);
  const resolving = new Set<Record>();
  const done = new Set<Record>();
  // A parent that is not listed (lspci -s) is fine while the child's element carries its bus.
  const bdfOfPath = (path: string[]): { bdf: string; rec?: Record } => {
    const key = path.join('/');
    const rec = path.length === 1 ? plain.get(formatBdf(parseBdf(path[0])!)) ?? byPath.get(key) : byPath.get(key);
    if (rec) {
      finish(rec);
      return { bdf: rec.bdf, rec };
    }
    return { bdf: path.length === 1 ? formatBdf(parseBdf(path[0])!) : key };
  };
  const finish = (r: Record): void => {
    if (!r.path || done.has(r)) return;
    if (resolving.has(r)) throw err(r.line, undefined, `the path ${r.path.join('/')} loops`);
    resolving.add(r);
    const root = parseBdf(r.path[0])!;
    const parentPath = r.path.slice(0, -1);
    const parent = bdfOfPath(parentPath);
    const m = PATH_ELEMENT_RE.exec(r.path[r.path.length - 1])!;
    const p = parent.rec;
    if (p && !p.bus) throw err(r.line, undefined, `the path ${r.path.join('/')} runs through ${p.bdf}, which has no "Bus:" line`);
    let bus: number;
    if (m[1] !== undefined) {
      bus = parseInt(m[1], 16);
      if (p?.bus && p.bus.secondary !== bus)
        throw err(r.line, undefined, `the path ${r.path.join('/')} puts bus ${m[1]} behind ${p.bdf}, whose secondary bus is ${p.bus.secondary.toString(16).padStart(2, '0')}`);
    } else {
      if (!p?.bus) throw err(r.line, undefined, `the path ${r.path.join('/')} leaves out the bus and its parent ${parent.bdf} is not listed`);
      bus = p.bus.secondary;
    }
    r.bdf = formatBdf({ domain: root.domain, bus, slot: parseInt(m[2], 16), fn: parseInt(m[3], 10) });
    resolving.delete(r);
    done.add(r);
  };
  for (const r of records) finish(r);
  const seen = new Map<string, Record>();
  for (const r of records) {
    const dup = seen.get(r.bdf);
    if (dup) throw err(r.line, r.bdf, `${r.bdf} is listed twice (also at line ${dup.line})`);
    seen.set(r.bdf, r);
  }
}

/** SR-IOV: the listed functions at a PF's VF routing IDs (PF RID + offset + i * stride). */
function findVirtualFunctions(records: Record[], notes: string[]): Map<Record, Record> {
  const byBdf = new Map(records.map((r) => [r.bdf, r]));
  const out = new Map<Record, Record>();
  for (const pf of records) {
    const sr = pf.sriov;
    if (!sr || !sr.numVfs || sr.offset === undefined || sr.stride === undefined) continue;
    const b = parseBdf(pf.bdf)!;
    const rid0 = (b.bus << 8) | (b.slot << 3) | b.fn;
    let found = 0;
    for (let i = 0; i < sr.numVfs; i++) {
      const rid = rid0 + sr.offset + i * sr.stride;
      if (rid > 0xffff) break;
      const vf = byBdf.get(formatBdf({ domain: b.domain, bus: rid >> 8, slot: (rid >> 3) & 0x1f, fn: rid & 7 }));
      if (!vf || vf === pf || out.has(vf)) continue;
      if (sr.vfDevice !== undefined && vf.device !== sr.vfDevice && vf.vendor === pf.vendor) {
        notes.push(`line ${vf.line}: ${vf.bdf} is at a VF routing ID of ${pf.bdf} but its device id is not the VF device id ${sr.vfDevice.toString(16).padStart(4, '0')}; not taken as a VF`);
        continue;
      }
      out.set(vf, pf);
      found++;
    }
    if (found) notes.push(`${pf.bdf}: ${found} of its ${sr.numVfs} SR-IOV virtual functions listed`);
  }
  return out;
}
