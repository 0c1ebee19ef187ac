/**
 * Runs a scenario: builds the machine (scenarioMachineConfig — the one place its config is made,
 * so options such as tracing pass through `machine`), adds the devices, runs every workload at
 * once, reports progress and returns a summary with one row per device. Leaks are checked at the
 * end: whatever is mapped or allocated beyond the devices' own rings is reported.
 *
 * A workload with driverThreads 1 runs on the main thread: `inFlight` lanes, each preparing an
 * I/O, submitting it through the device's IoModel and finishing it. With driverThreads > 1, that
 * many piscina threads prepare and finish I/Os (one in flight each) and hand them through a
 * HandoffMailbox to the main thread, which owns the device's queues and submits them.
 */
import { Machine } from '../machine.js';
import type { MachineConfig } from '../machine-config.js';
import type { Device } from '../device/device.js';
import type { ModelName } from '../device/device-model.js';
import { DriverPool } from '../dma/driver-pool.js';
import { HandoffMailbox } from '../dma/handoff-mailbox.js';
import { summarize } from '../dma/latency.js';
import { PAGE_SIZE } from '../addresses.js';
import { normalizeBdf } from '../pci/bdf.js';
import { IO_MODELS } from './io-models.js';
import { IO_STATUS_CODES, concurrencyOf, type IoQueue, type IoStatus } from './io-model.js';
import { WorkloadDriver, type WorkloadResult } from './workload.js';
import { sizeSampler } from './size-sampler.js';
import { fmtBytes } from './byte-size.js';
import type { Scenario, ScenarioDevice, Workload } from './scenario-schema.js';

export interface ScenarioProgress {
  transfers: number;
  bytes: number;
  faults: number;
  elapsedMs: number;
  /** How far the run is, 0..1 (the least advanced workload's share of its count or duration). */
  fraction: number;
}

export interface RunScenarioOptions {
  /** Called about every progressIntervalMs while running, and once at the end. */
  onProgress?: (p: ScenarioProgress) => void;
  progressIntervalMs?: number;
  /** More machine configuration (e.g. tracing), merged over what the scenario gives. */
  machine?: Partial<MachineConfig>;
  /** Called with the machine once it exists (it is closed when runScenario returns; `m.trace` still reads). */
  onMachine?: (m: Machine) => void;
}

export interface Percentiles {
  p50: number;
  p99: number;
  samples: number;
}

export interface DeviceRow {
  bdf: string;
  model: string;
  dmaMask: number;
  /** How its buffers are laid out and placed, e.g. "contiguous above 4 GiB". */
  buffers: string;
  direction: Workload['direction'];
  mapping: Workload['mapping'];
  driverThreads: number;
  transfers: number;
  bytes: number;
  gbps: number;
  /** µs per map / unmap call. */
  mapUs: Percentiles;
  unmapUs: Percentiles;
  iotlbHitRate: number;
  /** Bytes of this device's I/O data that went through bounce buffers (the CPU copies more: SWIOTLB copies in at map and out at unmap or sync; see ScenarioSummary.bouncedBytes). */
  bouncedBytes: number;
  faults: number;
  staleAccesses: number;
  verified: number;
  mismatches: number;
  /** I/Os the device did not complete ok. */
  failed: number;
  /** Descriptors (commands) the device executed in the run: copies, NVMe READ/WRITEs, NIC TX and RX posts — one transfer slice each in a trace. */
  descriptors: number;
  /** What the model's driver counted (nvme: prpListCommands, prpListEntries); empty for the copy engine. */
  modelStats: Record<string, number>;
}

export interface ScenarioSummary {
  scenario: string;
  description?: string;
  mode: Scenario['iommu']['mode'];
  verify: boolean;
  seconds: number;
  transfers: number;
  bytes: number;
  gbps: number;
  devices: DeviceRow[];
  faults: number;
  staleAccesses: number;
  invalidations: { strict: number; lazy: number };
  /** Bytes the CPU copied in and out of SWIOTLB slots (all devices). */
  bouncedBytes: number;
  /** The DMA API's calls over the run (all threads). */
  dma: { maps: number; unmaps: number; sgMaps: number; sgUnmaps: number; syncs: number; iommuMaps: number; bouncedMaps: number; directMaps: number };
  /** What the workloads left behind: mappings, RAM pages and bounce slots beyond the devices' rings. */
  leaks: { liveMappings: number; ramPages: number; bounceSlots: number };
}

/** The machine a scenario describes (the one place its config is built). */
export function scenarioMachineConfig(s: Scenario, extra: Partial<MachineConfig> = {}): MachineConfig {
  return {
    ...(s.ram ? { ram: s.ram } : {}),
    iommu: s.iommu.mode === 'off' ? { enabled: false } : { enabled: true, invalidation: s.iommu.mode, ...(s.iommu.flushTimeoutMs !== undefined ? { flushTimeoutMs: s.iommu.flushTimeoutMs } : {}) },
    swiotlb: { size: s.swiotlb.size, force: s.swiotlb.force },
    ...(s.topology !== undefined ? { topology: s.topology } : {}),
    ...(s.acsOverride !== undefined ? { acsOverride: s.acsOverride } : {}),
    ...extra,
  };
}

const DEFAULT_COUNT = 1000;
const countOf = (w: Workload): number | undefined => (w.durationMs !== undefined ? undefined : (w.count ?? DEFAULT_COUNT));

interface Lane {
  w: Workload;
  dev: Device;
  device: ScenarioDevice;
  queue: IoQueue;
  queueClosed: boolean;
  /** The device's descriptor count before the run. */
  descriptors0: number;
  done: number;
  bytes: number;
  seconds: number;
  result: WorkloadResult;
}

export async function runScenario(s: Scenario, options: RunScenarioOptions = {}): Promise<ScenarioSummary> {
  const m = await Machine.create(scenarioMachineConfig(s, options.machine));
  options.onMachine?.(m);
  let pool: DriverPool | null = null;
  let timer: ReturnType<typeof setInterval> | null = null;
  const lanes: Lane[] = [];
  try {
    const devs = new Map<string, { dev: Device; device: ScenarioDevice }>();
    for (const d of s.devices) {
      const dev = await m.addDevice({
        bdf: d.bdf,
        model: d.model as ModelName,
        dmaMask: d.dmaMask,
        queueDepth: d.queueDepth,
        ...(d.nvme !== undefined ? { nvme: d.nvme } : {}),
        ...(d.nic !== undefined ? { nic: d.nic } : {}),
      });
      devs.set(dev.bdf, { dev, device: d });
    }
    // What the devices' own rings hold; anything above this after the run is a leak.
    const base = m.stats();
    s.workloads.forEach((w, i) => {
      const { dev, device } = devs.get(normalizeBdf(w.device)!)!;
      const queue = IO_MODELS[device.model].open({ host: m, dev, device, workload: w, concurrency: concurrencyOf(w), verify: s.verify, seed: s.seed * 31 + i });
      lanes.push({ w, dev, device, queue, queueClosed: false, descriptors0: dev.counters().descriptors, done: 0, bytes: 0, seconds: 0, result: emptyResult() });
    });
    const threads = lanes.reduce((a, l) => a + (l.w.driverThreads > 1 ? l.w.driverThreads : 0), 0);
    if (threads > 0) pool = new DriverPool({ threads });
    const t0 = performance.now();
    const progress = (): ScenarioProgress => {
      const elapsedMs = performance.now() - t0;
      const fraction = Math.min(...lanes.map((l) => (l.w.durationMs !== undefined ? Math.min(1, elapsedMs / l.w.durationMs) : l.done / countOf(l.w)!)));
      return {
        transfers: lanes.reduce((a, l) => a + l.done, 0),
        bytes: lanes.reduce((a, l) => a + l.bytes, 0),
        faults: lanes.reduce((a, l) => a + l.dev.counters().faults, 0),
        elapsedMs,
        fraction,
      };
    };
    if (options.onProgress) {
      const cb = options.onProgress;
      timer = setInterval(() => cb(progress()), options.progressIntervalMs ?? 250);
      timer.unref();
    }
    const ran = await Promise.allSettled(
      lanes.map(async (l, i) => {
        const started = performance.now();
        const seed = s.seed * 7919 + i * 104729;
        l.result = l.w.driverThreads > 1 ? await runThreaded(m, pool!, l, seed, s.verify) : await runOnMain(m, l, seed, s.verify);
        l.seconds = (performance.now() - started) / 1000;
      }),
    );
    const bad = ran.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (bad) throw bad.reason;
    const seconds = (performance.now() - t0) / 1000;
    if (timer) clearInterval(timer);
    options.onProgress?.(progress());
    // The models' drivers give back their pools (PRP lists, SG tables) before leaks are counted.
    await closeQueues(lanes);
    const end = m.stats();
    const devices = lanes.map((l): DeviceRow => {
      const c = l.dev.counters();
      const lookups = c.iotlbHits + c.iotlbMisses;
      const r = l.result;
      const d = l.device;
      const where = [l.w.buffers.above !== undefined ? `above ${fmtBytes(l.w.buffers.above)}` : '', l.w.buffers.below !== undefined ? `below ${fmtBytes(l.w.buffers.below)}` : ''].filter(Boolean);
      return {
        bdf: l.dev.bdf,
        model: d.model,
        dmaMask: d.dmaMask,
        buffers: [l.w.buffers.layout, ...where].join(' '),
        direction: l.w.direction,
        mapping: l.w.mapping,
        driverThreads: l.w.driverThreads,
        transfers: r.transfers,
        bytes: r.bytes,
        gbps: l.seconds > 0 ? r.bytes / l.seconds / 1e9 : 0,
        mapUs: percentiles(r.mapUs),
        unmapUs: percentiles(r.unmapUs),
        iotlbHitRate: lookups > 0 ? c.iotlbHits / lookups : 0,
        bouncedBytes: r.bouncedBytes,
        faults: c.faults,
        staleAccesses: c.staleAccesses,
        verified: r.verified,
        mismatches: r.mismatches,
        failed: r.failed,
        descriptors: c.descriptors - l.descriptors0,
        modelStats: l.queue.stats?.() ?? {},
      };
    });
    const bytes = devices.reduce((a, d) => a + d.bytes, 0);
    const dd = (k: keyof typeof end.dma): number => end.dma[k] - base.dma[k];
    return {
      scenario: s.name,
      ...(s.description !== undefined ? { description: s.description } : {}),
      mode: s.iommu.mode,
      verify: s.verify,
      seconds,
      transfers: devices.reduce((a, d) => a + d.transfers, 0),
      bytes,
      gbps: bytes / seconds / 1e9,
      devices,
      faults: end.faults,
      staleAccesses: end.staleAccesses,
      invalidations: end.invalidations,
      bouncedBytes: end.bouncedBytes,
      dma: { maps: dd('maps'), unmaps: dd('unmaps'), sgMaps: dd('sgMaps'), sgUnmaps: dd('sgUnmaps'), syncs: dd('syncs'), iommuMaps: dd('iommuMaps'), bouncedMaps: dd('bouncedMaps'), directMaps: dd('directMaps') },
      leaks: { liveMappings: end.liveMappings - base.liveMappings, ramPages: end.ramPagesInUse - base.ramPagesInUse, bounceSlots: end.bounceSlotsInUse - base.bounceSlotsInUse },
    };
  } finally {
    if (timer) clearInterval(timer);
    try {
      await pool?.close();
      // A run that failed still gives the drivers' pools back before the machine closes.
      await closeQueues(lanes).catch(() => undefined); // the run's own error is the one to report
    } finally {
      await m.close();
    }
  }
}

/** Closes every lane's queue once (the first error is thrown after all were tried). */
async function closeQueues(lanes: Lane[]): Promise<void> {
  let first: unknown = null;
  for (const l of lanes) {
    if (l.queueClosed) continue;
    l.queueClosed = true;
    try {
      await l.queue.close();
    } catch (e) {
      first ??= e;
    }
  }
  if (first) throw first;
}

const sizeAlignOf = (l: Lane): number => IO_MODELS[l.device.model].sizeAlign?.(l.device) ?? 1;

function emptyResult(): WorkloadResult {
  return { transfers: 0, bytes: 0, verified: 0, mismatches: 0, failed: 0, bouncedBytes: 0, mapUs: [], unmapUs: [] };
}

/** driverThreads 1: `inFlight` lanes on the main thread share one WorkloadDriver. */
async function runOnMain(m: Machine, l: Lane, seed: number, verify: boolean): Promise<WorkloadResult> {
  const wd = new WorkloadDriver({ dma: m.dma, dev: l.dev, ram: m.ram }, { workload: l.w, lanes: l.w.inFlight, seed, verify, sizeAlign: sizeAlignOf(l) });
  const count = countOf(l.w);
  const start = performance.now();
  let next = 0;
  let stop = false;
  const more = () => !stop && (count !== undefined ? next < count : performance.now() - start < l.w.durationMs!);
  // Every lane ends before the driver closes (allSettled): nothing is unmapped under a device.
  const ended = await Promise.allSettled(
    Array.from({ length: l.w.inFlight }, async (_, lane) => {
      while (more()) {
        const n = next++;
        const io = wd.prepare(lane, n);
        let status: IoStatus;
        try {
          status = await l.queue.submit(io);
        } catch (e) {
          wd.finish(lane, 'aborted');
          throw e;
        }
        wd.finish(lane, status);
        l.done++;
        l.bytes += io.len;
      }
    }).map((p) => p.catch((e: unknown) => {
      stop = true;
      throw e;
    })),
  );
  const result = wd.close();
  const bad = ended.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (bad) throw bad.reason;
  return result;
}

/** driverThreads > 1: piscina threads prepare and finish; the main thread submits what they post. */
async function runThreaded(m: Machine, pool: DriverPool, l: Lane, seed: number, verify: boolean): Promise<WorkloadResult> {
  const n = l.w.driverThreads;
  const maxPages = Math.ceil(sizeSampler(l.w.sizes).max / PAGE_SIZE) + 1;
  const box = HandoffMailbox.create(n, { maxSegments: maxPages });
  const driver = m.driverHandle();
  const count = countOf(l.w);
  const drivers = Array.from({ length: n }, (_, slot) =>
    pool.run('scenarioDriver', {
      driver,
      bdf: l.dev.bdf,
      mailbox: box.handle,
      slot,
      spec: { workload: l.w, lanes: 1, seed: seed + slot, verify, sizeAlign: sizeAlignOf(l) },
      ...(count !== undefined ? { count: Math.floor(count / n) + (slot < count % n ? 1 : 0) } : { durationMs: l.w.durationMs }),
    }),
  );
  // A task that failed before its thread could close its slot (e.g. the thread did not start): close it here.
  for (const [slot, d] of drivers.entries()) d.catch(() => box.close(slot));
  let failure: unknown = null;
  const served = Array.from({ length: n }, async (_, slot) => {
    for (let req = await box.take(slot); req; req = await box.take(slot)) {
      let status: IoStatus = 'aborted';
      try {
        status = await l.queue.submit({ len: req.len, reads: req.reads as never, writes: req.writes as never });
      } catch (e) {
        failure ??= e;
      }
      box.complete(slot, IO_STATUS_CODES.indexOf(status));
      l.done++;
      l.bytes += req.len;
    }
  });
  const results = await Promise.allSettled(drivers);
  await Promise.all(served);
  const bad = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (bad) throw bad.reason;
  if (failure) throw failure;
  const out = emptyResult();
  for (const r of results) {
    const v = (r as PromiseFulfilledResult<WorkloadResult>).value;
    out.transfers += v.transfers;
    out.bytes += v.bytes;
    out.verified += v.verified;
    out.mismatches += v.mismatches;
    out.failed += v.failed;
    out.bouncedBytes += v.bouncedBytes;
    out.mapUs.push(...v.mapUs);
    out.unmapUs.push(...v.unmapUs);
  }
  return out;
}

function percentiles(samples: number[]): Percentiles {
  const s = summarize(samples);
  return { p50: s.p50, p99: s.p99, samples: s.samples };
}
