/**
 * Machine and device configuration: the schema, its defaults, and errors that name the field.
 */
import { z } from 'zod';
import { DmaError } from './errors.js';
import { isBitMask } from './addresses.js';
import { DEFAULT_RAM } from './memory/guest-ram.js';
import { MODEL_NAMES } from './device/device-model.js';
import { NVME_LBA_SIZES } from './device/nvme-command.js';

/** The nvme model's namespace. */
export const nvmeOptionsSchema = z
  .object({
    /** Logical block size: 512 or 4096 bytes. */
    lbaSize: z.union([z.literal(NVME_LBA_SIZES[0]), z.literal(NVME_LBA_SIZES[1])]).default(512),
    /** Namespace capacity in bytes (a multiple of lbaSize; at most 2^32 blocks and 1 GiB). */
    size: z.number().int().positive().max(1 << 30).default(16 * 1024 * 1024),
  })
  .strict()
  .refine((o) => o.size % o.lbaSize === 0, { message: 'size must be a multiple of lbaSize', path: ['size'] });

/** The nic model's wire. */
export const nicOptionsSchema = z
  .object({
    /** loopback: a transmitted frame is received into the next posted RX buffers. */
    wire: z.enum(['loopback']).default('loopback'),
  })
  .strict();

const pow2 = (min: number, max: number) =>
  z
    .number()
    .int()
    .min(min)
    .max(max)
    .refine((n) => (n & (n - 1)) === 0, { message: `must be a power of two in [${min}, ${max}]` });

export const machineConfigSchema = z
  .object({
    ram: z
      .array(z.object({ base: z.number().int().nonnegative(), size: z.number().int().positive() }).strict())
      .min(1)
      .default(() => DEFAULT_RAM.map((r) => ({ ...r }))),
    iommu: z
      .object({
        enabled: z.boolean().default(true),
        invalidation: z.enum(['strict', 'lazy']).default('strict'),
        /** Lazy mode: flush the flush queue at least this often, in ms (0 = only when full or asked). */
        flushTimeoutMs: z.number().nonnegative().default(10),
        flushQueueSize: z.number().int().min(1).max(65536).default(256),
        /** Page-table pages (2 KiB each) shared by all domains. */
        tables: z.number().int().min(2).max(1 << 20).default(4096),
        faultRing: z.number().int().min(1).max(1 << 20).default(4096),
        /**
         * Watchdog: a strict unmap waits at most this long (ms) for a device to leave its
         * transfer, then declares it hung (fails it, ends its worker); 0 = wait forever.
         */
        deviceTimeoutMs: z.number().int().min(0).max(0x7fffffff).default(5000),
        /**
         * Last IOVA the DMA API may hand out in a DMA domain (Linux: domain->geometry.aperture_end,
         * which iommu_dma_alloc_iova takes as a limit beside the DMA mask). Ends a page; at most
         * 4 GiB − 1 (our IOVA allocator covers 32 bits), at least two pages (page 0 is never used).
         */
        apertureEnd: z
          .number()
          .int()
          .min(2 * 4096 - 1)
          .max(2 ** 32 - 1)
          .refine((n) => (n + 1) % 4096 === 0, { message: 'must be the last byte of a page (a multiple of 4096, minus 1)' })
          .default(2 ** 32 - 1),
      })
      .strict()
      .prefault({}),
    /** The bounce-buffer pool in low RAM (Linux: swiotlb=<slabs>[,force]); size 0 = none. */
    swiotlb: z
      .object({
        size: z.number().int().nonnegative().max(1 << 30).refine((n) => n % 4096 === 0, { message: 'must be a multiple of 4096' }).default(4 * 1024 * 1024),
        /** swiotlb=force: bounce every mapping that is not translated. */
        force: z.boolean().default(false),
        /** Areas with their own lock (Linux: one per CPU); a power of two. */
        areas: pow2(1, 64).default(4),
      })
      .strict()
      .prefault({}),
    /**
     * The PCI topology devices are placed in (machine-topology.ts): a JSON topology (object or
     * text) as parseTopology takes it, lspci -vvv -nn text, or a parsed Topology. Absent: every
     * device is its own IOMMU group, its requester ID its BDF.
     */
    topology: z.unknown().optional(),
    /** pcie_acs_override= for the machine's IOMMU groups (downstream, multifunction, id:vvvv:dddd). */
    acsOverride: z.string().optional(),
    /** DMA-API debugging (CONFIG_DMA_API_DEBUG): check every unmap and sync against its mapping. */
    dmaDebug: z
      .object({
        enabled: z.boolean().default(false),
        /** Mappings it can record (Linux: dma_debug_entries). */
        entries: z.number().int().min(1).max(1 << 20).default(16384),
      })
      .strict()
      .prefault({}),
    /**
     * The DMA timeline trace (src/trace): per-thread event rings exported as Chrome Trace Event
     * JSON. Off by default; off costs one null check per transfer and per DMA API call.
     */
    trace: z
      .object({
        enabled: z.boolean().default(false),
        /** Events each thread's ring holds (48 B each); a full ring keeps its first events and counts the rest. */
        eventsPerThread: z.number().int().min(1).max(1 << 24).default(16384),
        /** Rings, i.e. threads that can record (devices, driver threads, the machine's own). */
        threads: z.number().int().min(1).max(4096).default(64),
      })
      .strict()
      .prefault({}),
  })
  .strict();

export const deviceConfigSchema = z
  .object({
    bdf: z.string(),
    model: z.enum(MODEL_NAMES).default('copy-engine'),
    /** Address bits the device can drive (Linux: dma_set_mask(dev, DMA_BIT_MASK(n))). */
    dmaMask: z.number().int().min(12).max(64).default(64),
    queueDepth: pow2(2, 4096).default(64),
    /** PCIe Max_Payload_Size. */
    maxPayload: pow2(128, 4096).default(256),
    iotlbEntries: pow2(1, 65536).default(64),
    /** dma_set_max_seg_size (PCI default 64 KiB). */
    maxSegmentSize: z.number().int().min(4096).max(2 ** 32).default(65536),
    /** dma_set_seg_boundary: 2^n - 1 (PCI default 4 GiB - 1). */
    segmentBoundaryMask: z
      .number()
      .int()
      .min(4095)
      .max(2 ** 48 - 1)
      .refine(isBitMask, { message: 'must be 2^n - 1' })
      .default(0xffffffff),
    /** dma_set_min_align_mask: low bits a bounce buffer keeps (NVMe: 4095). */
    minAlignMask: z
      .number()
      .int()
      .min(0)
      .max(0xffff)
      .refine(isBitMask, { message: 'must be 2^n - 1' })
      .default(0),
    /** model 'nvme': its namespace (defaults when absent). */
    nvme: nvmeOptionsSchema.optional(),
    /** model 'nic': its wire (defaults when absent). */
    nic: nicOptionsSchema.optional(),
  })
  .strict()
  .superRefine((d, ctx) => {
    for (const m of ['nvme', 'nic'] as const) {
      if (d[m] !== undefined && d.model !== m) ctx.addIssue({ code: 'custom', path: [m], message: `only for model '${m}' (the device's model is '${d.model}')` });
    }
  });

export type MachineConfig = z.input<typeof machineConfigSchema>;
export type ResolvedMachineConfig = z.output<typeof machineConfigSchema>;
export type DeviceConfig = z.input<typeof deviceConfigSchema>;
export type ResolvedDeviceConfig = z.output<typeof deviceConfigSchema>;

/** Parses with `schema`; the first problem becomes a DmaError('EINVAL') naming its field. */
export function parseConfig<S extends z.ZodType>(schema: S, value: unknown, root: string): z.output<S> {
  const r = schema.safeParse(value ?? {});
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const path = [root, ...issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`))].join('').replace(/\.\[/g, '[');
  const got = issue.path.reduce<unknown>((v, k) => (v && typeof v === 'object' ? (v as Record<PropertyKey, unknown>)[k as PropertyKey] : undefined), value);
  const shown = got === undefined ? '' : ` (got ${JSON.stringify(got)})`;
  throw new DmaError('EINVAL', `${path}: ${issue.message}${shown}`);
}
