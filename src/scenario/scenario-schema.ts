/**
 * A scenario for `dmaemu run`: the machine (RAM regions, IOMMU mode, SWIOTLB, PCI topology), its
 * devices and one workload per device. The zod schema and the types it gives; parseScenario
 * reports the first problem as a DmaError naming the field, e.g.
 * `scenario.workloads[1].sizes.max: …`.
 *
 * Sizes are bytes or text ("64 KiB"). A workload's sizes are a list (picked uniformly), a
 * distribution `{ dist: 'uniform' | 'log2-uniform', min, max }` or `{ weighted: [{ size, weight }] }`.
 * `topology` is inline JSON, or a path (resolved against the scenario file by scenario-file.ts).
 */
import { z } from 'zod';
import { parseConfig, nvmeOptionsSchema, nicOptionsSchema } from '../machine-config.js';
import { normalizeBdf } from '../pci/bdf.js';
import { DmaError } from '../errors.js';
import { MAX_DRIVER_THREADS } from '../dma/driver-pool.js';
import { byteSize } from './byte-size.js';
import { IO_MODELS, ioModelNames } from './io-models.js';

/** Largest transfer a workload may ask for (each in-flight I/O keeps buffers this big). */
export const MAX_IO_SIZE = 16 * 2 ** 20;

const ioSize = byteSize.refine((n) => n >= 1 && n <= MAX_IO_SIZE, { message: `must be between 1 byte and ${MAX_IO_SIZE / 2 ** 20} MiB` });

const bdf = z.string().refine((s) => normalizeBdf(s) !== undefined, { message: 'must be a PCI address (BB:DD.F or DDDD:BB:DD.F)' });

const sizeDistribution = z
  .object({ dist: z.enum(['uniform', 'log2-uniform']), min: ioSize, max: ioSize })
  .strict()
  .refine((d) => d.min <= d.max, { message: 'must not be below min', path: ['max'] });

const weightedSizes = z
  .object({ weighted: z.array(z.object({ size: ioSize, weight: z.number().positive() }).strict()).min(1) })
  .strict();

/** The three forms of `sizes`, told apart by shape so that errors point inside the one meant. */
const sizes = z.unknown().transform((v, ctx) => {
  const form = Array.isArray(v) ? z.array(ioSize).min(1) : v && typeof v === 'object' && 'weighted' in v ? weightedSizes : v && typeof v === 'object' ? sizeDistribution : null;
  if (!form) {
    ctx.addIssue({ code: 'custom', message: 'must be a list of sizes, { dist: "uniform" | "log2-uniform", min, max } or { weighted: [{ size, weight }] }' });
    return z.NEVER;
  }
  const r = form.safeParse(v);
  if (!r.success) {
    for (const issue of r.error.issues) ctx.addIssue({ ...issue, code: 'custom', path: issue.path } as never);
    return z.NEVER;
  }
  return r.data as SizeSpec;
});

export type SizeSpec = number[] | { dist: 'uniform' | 'log2-uniform'; min: number; max: number } | { weighted: Array<{ size: number; weight: number }> };

export const WORKLOAD_DIRECTIONS = ['to-device', 'from-device', 'bidirectional'] as const;
export type WorkloadDirection = (typeof WORKLOAD_DIRECTIONS)[number];
export const MAPPING_STRATEGIES = ['per-transfer', 'cached', 'pool'] as const;
export type MappingStrategy = (typeof MAPPING_STRATEGIES)[number];

const workload = z
  .object({
    /** BDF of one of the scenario's devices. */
    device: bdf,
    sizes,
    buffers: z
      .object({
        /** contiguous: one block per buffer; scattered: single pages spread through RAM (mapped with mapSg). */
        layout: z.enum(['contiguous', 'scattered']).default('contiguous'),
        /** Place buffers at or above this PA (e.g. "4 GiB" for a 32-bit device's high buffers) … */
        above: byteSize.optional(),
        /** … or ending at or below it. */
        below: byteSize.optional(),
      })
      .strict()
      .prefault({}),
    /** bidirectional: a copy through the device from a to-device buffer into a from-device buffer. */
    direction: z.enum(WORKLOAD_DIRECTIONS).default('bidirectional'),
    /** per-transfer: map/unmap around each I/O; cached: mappings kept and reused, unmapped at the end; pool: one mapping made at start, buffers carved from it. */
    mapping: z.enum(MAPPING_STRATEGIES).default('per-transfer'),
    /** I/Os to run (default 1000 when durationMs is absent) … */
    count: z.number().int().min(1).optional(),
    /** … or run for this long. */
    durationMs: z.number().positive().optional(),
    /** I/Os in flight at once (each has its own buffers); with driver threads, one per thread. */
    inFlight: z.number().int().min(1).max(256).default(8),
    /** 1: the main thread maps, submits and verifies; > 1: that many piscina driver threads map, unmap and verify while the main thread submits. */
    driverThreads: z.number().int().min(1).max(MAX_DRIVER_THREADS).default(1),
  })
  .strict()
  .superRefine((w, ctx) => {
    if (w.count !== undefined && w.durationMs !== undefined) ctx.addIssue({ code: 'custom', path: ['durationMs'], message: 'give count or durationMs, not both' });
  });

const device = z
  .object({
    bdf,
    model: z.string().default('copy-engine').refine((m) => m in IO_MODELS, { message: `must be a device model with a workload adapter (${ioModelNames().join(', ')})` }),
    dmaMask: z.number().int().min(12).max(64).default(64),
    queueDepth: z.number().int().min(2).max(4096).refine((n) => (n & (n - 1)) === 0, { message: 'must be a power of two' }).default(64),
    /** model 'nvme': its namespace (Machine.addDevice's `nvme`); size as bytes or text. */
    nvme: z.object({ lbaSize: z.number().optional(), size: byteSize.optional() }).strict().pipe(nvmeOptionsSchema).optional(),
    /** model 'nic': its wire (Machine.addDevice's `nic`). */
    nic: nicOptionsSchema.optional(),
  })
  .strict()
  .superRefine((d, ctx) => {
    for (const m of ['nvme', 'nic'] as const) {
      if (d[m] !== undefined && d.model !== m) ctx.addIssue({ code: 'custom', path: [m], message: `only for model '${m}' (the device's model is '${d.model}')` });
    }
  });

export const scenarioSchema = z
  .object({
    name: z.string().default('scenario'),
    description: z.string().optional(),
    seed: z.number().int().min(0).default(1),
    verify: z.boolean().default(true),
    ram: z.array(z.object({ base: byteSize, size: byteSize }).strict()).min(1).optional(),
    iommu: z
      .object({
        mode: z.enum(['off', 'strict', 'lazy']).default('strict'),
        /** Lazy mode: flush the flush queue at least this often (ms). */
        flushTimeoutMs: z.number().nonnegative().optional(),
      })
      .strict()
      .prefault({}),
    swiotlb: z.object({ size: byteSize, force: z.boolean().default(false) }).strict().prefault({ size: 8 * 2 ** 20 }),
    /** Inline topology JSON, or the path of a JSON or lspci -vvv -nn file. */
    topology: z.union([z.string(), z.record(z.string(), z.unknown())]).optional(),
    acsOverride: z.string().optional(),
    devices: z.array(device).min(1),
    workloads: z.array(workload).min(1),
  })
  .strict()
  .superRefine((s, ctx) => {
    const seen = new Map<string, number>();
    s.devices.forEach((d, i) => {
      const key = normalizeBdf(d.bdf)!;
      if (seen.has(key)) ctx.addIssue({ code: 'custom', path: ['devices', i, 'bdf'], message: `${key} is already devices[${seen.get(key)}]` });
      seen.set(key, i);
    });
    const used = new Map<string, number>();
    let threads = 0;
    s.workloads.forEach((w, i) => {
      const key = normalizeBdf(w.device)!;
      if (!seen.has(key)) ctx.addIssue({ code: 'custom', path: ['workloads', i, 'device'], message: `no device ${key} among devices (${[...seen.keys()].join(', ')})` });
      else if (used.has(key)) ctx.addIssue({ code: 'custom', path: ['workloads', i, 'device'], message: `device ${key} already runs workloads[${used.get(key)}] (one workload per device)` });
      used.set(key, i);
      if (w.driverThreads > 1) threads += w.driverThreads;
      const di = seen.get(key);
      if (di === undefined) return;
      const d = s.devices[di];
      for (const issue of IO_MODELS[d.model]?.check?.(d, w) ?? []) {
        ctx.addIssue({ code: 'custom', path: issue.on === 'device' ? ['devices', di, ...issue.path] : ['workloads', i, ...issue.path], message: issue.message });
      }
    });
    if (threads > MAX_DRIVER_THREADS) ctx.addIssue({ code: 'custom', path: ['workloads'], message: `${threads} driver threads in all; at most ${MAX_DRIVER_THREADS}` });
  });

export type ScenarioInput = z.input<typeof scenarioSchema>;
export type Scenario = z.output<typeof scenarioSchema>;
export type Workload = Scenario['workloads'][number];
export type ScenarioDevice = Scenario['devices'][number];
export type IommuMode = Scenario['iommu']['mode'];

/** Validates a scenario value; the first problem is a DmaError('EINVAL') naming its field. */
export function parseScenario(value: unknown): Scenario {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new DmaError('EINVAL', `scenario: must be a JSON object with devices and workloads (got ${Array.isArray(value) ? 'an array' : JSON.stringify(value)})`);
  }
  return parseConfig(scenarioSchema, value, 'scenario');
}
