/**
 * The JSON form of a topology, validated with zod: `{ functions: [...], rootBuses?: [...] }` (or a
 * bare array of functions). One entry per PCI function:
 *   { "bdf": "0000:00:02.0", "type": "root-port", "secondary": 1, "subordinate": 1,
 *     "acs": { "cap": ["SV","TB","RR","CR","UF","DT"], "ctl": ["SV","RR","CR","UF"] },
 *     "multifunction": false, "id": "1b36:000c", "class": "0604", "driver": "pcieport",
 *     "bars": [{ "index": 0, "base": "0xfe600000", "size": "4K" }],
 *     "dmaAliases": ["00.1"], "iommu": false }
 * An SR-IOV virtual function names its physical function: `"physfn": "0000:01:00.0"`.
 * `acs` absent means the function has no ACS capability (unlike an empty cap/ctl). Bus numbers are
 * integers or hex strings ("1a", "0x1a"); BAR base/size are integers, hex strings or sizes with
 * K/M/G/T. Schema errors and the topology cross-checks (topology.ts) are DmaError('EINVAL') naming
 * the entry's index and BDF and the field.
 * Where we differ from Linux: nothing to differ from; this is our own input format.
 */
import { z } from 'zod';
import { DmaError } from '../errors.js';
import { ACS_FLAG_NAMES, acsMask } from './acs-flags.js';
import { parseBusNumber } from './bdf.js';
import { buildTopology, PCI_TYPES, type Bar, type FunctionSpec, type Topology } from './topology.js';

const BUS_MSG = 'a bus number is 0..255 or a hex string such as "1a"';
const busNumber = z.union(
  [
    z.number({ error: BUS_MSG }).int({ error: BUS_MSG }).min(0, { error: BUS_MSG }).max(255, { error: BUS_MSG }),
    z
      .string({ error: BUS_MSG })
      .regex(/^(0x)?[0-9a-fA-F]{1,2}$/, { error: BUS_MSG })
      .transform((s) => parseBusNumber(s)!),
  ],
  { error: BUS_MSG },
);

const SIZE_UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

function parseQuantity(v: number | string): number | undefined {
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? v : undefined;
  const hex = /^0x([0-9a-fA-F]+)$/.exec(v);
  if (hex) {
    const n = parseInt(hex[1], 16);
    return Number.isSafeInteger(n) ? n : undefined;
  }
  const dec = /^(\d+)([KMGT]?)$/.exec(v);
  if (dec) {
    const n = parseInt(dec[1], 10) * SIZE_UNITS[dec[2]];
    return Number.isSafeInteger(n) ? n : undefined;
  }
  return undefined;
}

const quantity = (what: string) =>
  z.union([z.number(), z.string()]).transform((v, ctx) => {
    const n = parseQuantity(v);
    if (n === undefined) {
      ctx.addIssue({ code: 'custom', message: `${what} must be a non-negative integer, "0x..." or a size like "4K" (below 2^53)` });
      return z.NEVER;
    }
    return n;
  });

const acsFlagList = z.array(z.enum(ACS_FLAG_NAMES, { error: `ACS flags are ${ACS_FLAG_NAMES.join(' ')}` }));

const barSchema = z.strictObject({
  index: z.number().int().min(0).max(5),
  kind: z.enum(['memory', 'io']).optional(),
  base: quantity('a BAR base').optional(),
  size: quantity('a BAR size'),
  is64: z.boolean().optional(),
  prefetchable: z.boolean().optional(),
});

const functionSchema = z.strictObject({
  bdf: z.string(),
  type: z.enum(PCI_TYPES, { error: `type is one of ${PCI_TYPES.join(', ')}` }),
  secondary: busNumber.optional(),
  subordinate: busNumber.optional(),
  acs: z.strictObject({ cap: acsFlagList, ctl: acsFlagList }).optional(),
  multifunction: z.boolean().optional(),
  id: z
    .string()
    .regex(/^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$/, { error: 'id is "vvvv:dddd" (hex vendor:device)' })
    .optional(),
  class: z
    .string()
    .regex(/^[0-9a-fA-F]{4}([0-9a-fA-F]{2})?$/, { error: 'class is "cccc" (hex class and subclass)' })
    .optional(),
  bars: z.array(barSchema).optional(),
  driver: z.string().min(1).optional(),
  dmaAliases: z.array(z.string()).optional(),
  iommu: z.boolean().optional(),
  name: z.string().optional(),
  physfn: z.string().optional(),
});

const topologySchema = z.strictObject({
  functions: z.array(z.unknown()).min(1, { error: 'a topology needs at least one function' }),
  rootBuses: z.array(z.string()).optional(),
  name: z.string().optional(),
  description: z.string().optional(),
});

export type TopologyJson = z.input<typeof topologySchema>;
export type FunctionJson = z.input<typeof functionSchema>;

function fieldPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out;
}

function issueText(issue: z.core.$ZodIssue): string {
  if (issue.code === 'unrecognized_keys') return `unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
  return issue.message;
}

function jsonError(text: string, e: unknown): DmaError {
  const msg = e instanceof Error ? e.message : String(e);
  const pos = /position (\d+)/.exec(msg);
  if (pos) {
    const upTo = text.slice(0, Number(pos[1]));
    const line = upTo.split('\n').length;
    const col = Number(pos[1]) - upTo.lastIndexOf('\n');
    return new DmaError('EINVAL', `topology JSON line ${line} column ${col}: ${msg}`);
  }
  return new DmaError('EINVAL', `topology is not valid JSON: ${msg}`);
}

/**
 * Parses and validates a JSON topology (the text, or an already-parsed value) and runs the
 * topology cross-checks. Throws DmaError('EINVAL') naming the entry and field.
 */
export function parseTopology(input: string | unknown): Topology {
  let value: unknown = input;
  if (typeof input === 'string') {
    try {
      value = JSON.parse(input);
    } catch (e) {
      throw jsonError(input, e);
    }
  }
  if (Array.isArray(value)) value = { functions: value };
  const top = topologySchema.safeParse(value);
  if (!top.success) {
    const i = top.error.issues[0];
    const where = i.path.length ? fieldPath(i.path) : 'top level';
    throw new DmaError('EINVAL', `topology ${where}: ${issueText(i)}`);
  }
  const specs: FunctionSpec[] = top.data.functions.map((raw, index) => {
    const bdfHint =
      raw && typeof raw === 'object' && typeof (raw as { bdf?: unknown }).bdf === 'string' ? ` (${(raw as { bdf: string }).bdf})` : '';
    const r = functionSchema.safeParse(raw);
    if (!r.success) {
      const i = r.error.issues[0];
      const more = r.error.issues.length > 1 ? ` (and ${r.error.issues.length - 1} more problem${r.error.issues.length > 2 ? 's' : ''})` : '';
      const field = i.path.length ? `${fieldPath(i.path)}: ` : '';
      throw new DmaError('EINVAL', `topology functions[${index}]${bdfHint}: ${field}${issueText(i)}${more}`);
    }
    const f = r.data;
    const [vendor, device] = f.id ? f.id.split(':').map((x) => parseInt(x, 16)) : [undefined, undefined];
    const bars: Bar[] | undefined = f.bars?.map((b) => ({
      index: b.index,
      kind: b.kind ?? 'memory',
      ...(b.base !== undefined ? { base: b.base } : {}),
      size: b.size,
      is64: b.is64 ?? false,
      prefetchable: b.prefetchable ?? false,
    }));
    return {
      bdf: f.bdf,
      type: f.type,
      ...(f.secondary !== undefined ? { secondary: f.secondary } : {}),
      ...(f.subordinate !== undefined ? { subordinate: f.subordinate } : {}),
      ...(f.acs ? { acs: { cap: acsMask(f.acs.cap), ctl: acsMask(f.acs.ctl) } } : {}),
      ...(f.multifunction !== undefined ? { multifunction: f.multifunction } : {}),
      ...(vendor !== undefined ? { vendor, device } : {}),
      ...(f.class ? { classCode: parseInt(f.class.slice(0, 4), 16) } : {}),
      ...(bars ? { bars } : {}),
      ...(f.driver !== undefined ? { driver: f.driver } : {}),
      ...(f.dmaAliases ? { dmaAliases: f.dmaAliases } : {}),
      ...(f.iommu !== undefined ? { iommu: f.iommu } : {}),
      ...(f.name !== undefined ? { name: f.name } : {}),
      ...(f.physfn !== undefined ? { physfn: f.physfn } : {}),
      origin: `functions[${index}]`,
    };
  });
  return buildTopology(specs, { ...(top.data.rootBuses ? { rootBuses: top.data.rootBuses } : {}) });
}
