/**
 * `stress(options)`: the stress runner as a library call. Builds a machine (K copy engines,
 * alternately 32- and 64-bit DMA masks; RAM below and above 4 GiB; SWIOTLB), starts T driver
 * threads (piscina, workers/stress-task.ts) that run seeded op streams, and serves their DMA
 * requests on the main thread, which owns the devices' queues. While it runs, each side checks
 * the invariants it sees (src/stress/invariants.ts); at the end the main thread checks the
 * counters and the leaks, and returns one summary. Beside them, hostile devices (one by default,
 * under an IOMMU) fire bursts of wild DMA for the whole run (src/stress/stress-hostile.ts).
 *
 * Reproducible: each driver thread's op sequence is a pure function of (seed, thread index,
 * mode, devices, driver threads); the interleaving of threads, the addresses they get and the
 * outcome of races are not.
 */
import { Piscina } from 'piscina';
import { Machine } from '../machine.js';
import { DmaError, DMA_ERROR_CODES, type DmaErrorCode } from '../errors.js';
import { GiB, MiB } from '../addresses.js';
import { workerUrl } from '../worker-url.js';
import type { Device } from '../device/device.js';
import type { DeviceCounters } from '../device/device-control.js';
import { MAX_DRIVER_THREADS } from '../dma/driver-pool.js';
import { STRESS_OP_KINDS, type StressMode, type StressOpKind } from './op-generator.js';
import { StressChannel, REQ_FILL, type ChannelCompletion } from './stress-channel.js';
import { emptyInvariantCounts, type InvariantName, type Violation } from './invariants.js';
import type { StressDriverTask, StressDriverResult, StressInjection } from './stress-driver.js';
import { StressHostile, addHostileDevices, emptyHostileSummary, HOSTILE_INJECTIONS, type HostileInjection, type HostileSummary } from './stress-hostile.js';

export interface StressOptions {
  seed?: number;
  /** Run this long (seconds) … */
  durationS?: number;
  /** … or until this many operations (DMA API calls and DMA requests, all threads together; counted as each op plans them, so the per-thread op sequences are the same every time). */
  ops?: number;
  devices?: number;
  driverThreads?: number;
  mode?: StressMode;
  /** Ops each driver thread keeps in flight. */
  window?: number;
  /** Return the first this-many op descriptions per thread (op logs). */
  logOps?: number;
  /** Test only: break an invariant on purpose ('corrupt-byte': one byte of a completed copy; 'skip-unmap': one unmap; 'map-canary': map a canary page where the hostile device aims; 'lose-fault-record': lose one hostile fault record). */
  inject?: StressInjection | HostileInjection;
  /** Hostile devices beside the copy engines (default 1 under an IOMMU; 0 in mode off, which cannot isolate them). */
  hostile?: number;
  /** Accesses per hostile burst. */
  hostileAccesses?: number;
  /** Bursts each hostile device fires at least, even after the driver threads are done. */
  hostileBursts?: number;
  /** Share of the time (percent) the hostile devices burst while the drivers run (they rest in between: the main thread checks every burst and serves the honest devices too). */
  hostileDuty?: number;
  /** Called about 4 times a second. */
  progress?: (p: { operations: number; seconds: number }) => void;
}

export const STRESS_DEFAULTS = { seed: 1, durationS: 10, devices: 2, driverThreads: 2, mode: 'strict' as StressMode, window: 8, hostile: 1, hostileAccesses: 4096, hostileBursts: 0, hostileDuty: 25 };
export const MAX_HOSTILE_DEVICES = 8;

export interface StressDeviceSummary {
  bdf: string;
  dmaMask: number;
  requests: number;
  bytesSubmitted: number;
  bytesCompleted: number;
  bytesFaulted: number;
  faults: number;
  staleAccesses: number;
  /** The device's own counters over the run. */
  counters: Pick<DeviceCounters, 'descriptors' | 'bytesWritten' | 'faultedBytes' | 'faults' | 'staleAccesses' | 'iotlbHits' | 'iotlbMisses'>;
}

export interface StressSummary {
  seed: number;
  mode: StressMode;
  devices: number;
  driverThreads: number;
  /** Wall-clock seconds of the run. */
  seconds: number;
  /** DMA API calls (map, unmap, mapSg, unmapSg, sync, allocCoherent, freeCoherent, flush) and DMA requests. */
  operations: number;
  operationsPerSecond: number;
  /** Stress ops (generated items; each is several operations). */
  stressOps: number;
  perKind: Record<StressOpKind, number>;
  /** Bytes the devices completed. */
  bytes: number;
  bytesSubmitted: number;
  bytesFaulted: number;
  transfers: number;
  /** DMA faults (all expected when violations is 0). */
  faults: number;
  expectedFaults: number;
  /** Stale IOTLB accesses the devices counted (lazy mode's window; 0 in strict mode). */
  staleAccesses: number;
  /** Illegal DMAs to an unmapped IOVA whose write landed through a stale entry (lazy). */
  staleWrites: number;
  racesWonByDma: number;
  resourceShortages: number;
  /** Bytes the CPU copied through SWIOTLB slots (mode off: 32-bit device, buffers above 4 GiB). */
  bouncedBytes: number;
  /** Invariant violations (0 when all held). */
  violations: number;
  invariants: Record<InvariantName, number>;
  violationDetails: Violation[];
  perDevice: StressDeviceSummary[];
  perThread: Array<{ thread: number; operations: number; stressOps: number; opLogHash: string; opLog: string[] }>;
  leaks: { liveMappings: number; iovaPages: number; bounceSlots: number; ramPages: number; pageTablePages: number };
  /** The hostile devices' bursts and their fault accounting (devices 0: none ran). */
  hostile: HostileSummary;
  /** The command that replays this run's op sequences. */
  replay: string;
}

export async function stress(options: StressOptions = {}): Promise<StressSummary> {
  const o = { ...STRESS_DEFAULTS, ...(options.mode === 'off' ? { hostile: 0 } : {}), ...stripUndefined(options) };
  check(Number.isSafeInteger(o.seed) && o.seed >= 0, `stress: seed ${String(o.seed)} must be a non-negative integer`);
  check(Number.isInteger(o.devices) && o.devices >= 1 && o.devices <= 16, `stress: devices ${String(o.devices)} must be an integer in [1, 16]`);
  check(Number.isInteger(o.driverThreads) && o.driverThreads >= 1 && o.driverThreads <= MAX_DRIVER_THREADS, `stress: driver threads ${String(o.driverThreads)} must be an integer in [1, ${MAX_DRIVER_THREADS}]`);
  check(['strict', 'lazy', 'off'].includes(o.mode), `stress: mode ${String(o.mode)} must be strict, lazy or off`);
  check(Number.isInteger(o.window) && o.window >= 1 && o.window <= 64, `stress: window ${String(o.window)} must be an integer in [1, 64]`);
  check(Number.isInteger(o.hostile) && o.hostile >= 0 && o.hostile <= MAX_HOSTILE_DEVICES, `stress: hostile devices ${String(o.hostile)} must be an integer in [0, ${MAX_HOSTILE_DEVICES}]`);
  check(o.hostile === 0 || o.mode !== 'off', `stress: ${o.hostile} hostile device(s) need an IOMMU (mode strict or lazy): with mode off a device reaches all of RAM`);
  check(Number.isInteger(o.hostileAccesses) && o.hostileAccesses >= 1 && o.hostileAccesses <= 1 << 24, `stress: hostile accesses per burst ${String(o.hostileAccesses)} must be an integer in [1, 2^24]`);
  check(Number.isInteger(o.hostileBursts) && o.hostileBursts >= 0, `stress: hostile bursts ${String(o.hostileBursts)} must be a non-negative integer`);
  check(typeof o.hostileDuty === 'number' && o.hostileDuty > 0 && o.hostileDuty <= 100, `stress: hostile duty ${String(o.hostileDuty)} % must be in (0, 100]`);
  const hostileInject = HOSTILE_INJECTIONS.find((i) => i === o.inject);
  check(hostileInject === undefined || o.hostile > 0, `stress: inject ${String(o.inject)} needs a hostile device`);
  const driverInject = hostileInject ? undefined : (o.inject as StressInjection | undefined);
  const byOps = options.ops !== undefined;
  if (byOps) check(Number.isSafeInteger(o.ops) && o.ops! >= 1, `stress: ops ${String(o.ops)} must be a positive integer`);
  else check(typeof o.durationS === 'number' && o.durationS > 0 && o.durationS <= 86400, `stress: duration ${String(o.durationS)} s must be in (0, 86400]`);

  const m = await Machine.create({
    ram: [
      { base: 0, size: 128 * MiB },
      { base: 4 * GiB, size: 128 * MiB },
    ],
    // Hostile bursts fault by the thousand: a ring that holds several bursts' worth between drains.
    iommu: o.mode === 'off' ? { enabled: false } : { enabled: true, invalidation: o.mode, ...(o.hostile > 0 ? { faultRing: 1 << 16 } : {}) },
    swiotlb: { size: 32 * MiB },
  });
  const violations: Violation[] = [];
  const counts = emptyInvariantCounts();
  const addViolation = (v: Violation) => {
    counts[v.invariant]++;
    violations.push(v);
  };
  const violate = (invariant: InvariantName, message: string) => addViolation({ invariant, message, thread: -1, events: [] });
  let pool: Piscina | null = null;
  let timer: NodeJS.Timeout | null = null;
  let ticker: NodeJS.Timeout | null = null;
  try {
    const tablesBefore = m.iommu.unit.pool.inUse();
    const devs: Device[] = [];
    for (let i = 0; i < o.devices; i++) {
      devs.push(await m.addDevice({ bdf: `00:${(3 + i).toString(16).padStart(2, '0')}.0`, dmaMask: i % 2 === 0 ? 32 : 64 }));
    }
    const hostileDevs = await addHostileDevices(m, o.hostile, 3 + o.devices);
    const domains = [...new Set([...devs, ...hostileDevs].map((d) => m.iommu.domainOf(d)).filter((d) => d !== null))];
    const iovaPages = () => domains.reduce((a, d) => (d.iova.flushCaches(), a + d.iova.pagesInUse()), 0);
    const s0 = m.stats();
    const base = { liveMappings: s0.liveMappings, bounceSlots: s0.bounceSlotsInUse, ramPages: s0.ramPagesInUse, iovaPages: iovaPages() };
    const c0 = devs.map((d) => d.counters());
    const hostile = o.hostile > 0 ? StressHostile.create(m, hostileDevs, { seed: o.seed, accesses: o.hostileAccesses, honest: devs, inject: hostileInject, report: addViolation }) : null;

    const channel = StressChannel.create(o.driverThreads, o.window);
    pool = new Piscina({ filename: workerUrl('stress-task').href, minThreads: o.driverThreads, maxThreads: o.driverThreads, concurrentTasksPerWorker: 1, idleTimeout: 60_000 });
    const driver = m.driverHandle();
    const bdfs = devs.map((d) => d.bdf);
    const maxOps = byOps ? Math.ceil(o.ops! / o.driverThreads) : 0;
    const perDev = devs.map(() => ({ requests: 0, bytesSubmitted: 0, ok: 0, faulted: 0, faults: 0 }));
    const main = { requests: 0, completions: 0 };
    const t0 = performance.now();
    const tasks = Array.from({ length: o.driverThreads }, (_, thread) => {
      const task: StressDriverTask = { driver, channel: channel.handle, thread, threads: o.driverThreads, bdfs, seed: o.seed, mode: o.mode, maxOps, window: o.window, logOps: o.logOps ?? 0, inject: driverInject };
      return runTask(pool!, task).catch((e: unknown) => {
        channel.close(thread); // its requests end here; serve() must not wait
        throw e;
      });
    });
    // The device side: take each thread's requests, submit them, post the completions back.
    const serve = async (thread: number): Promise<void> => {
      const inFlight = new Set<number>();
      const submitted: Array<Promise<void>> = [];
      for (let reqs = await channel.takeRequests(thread); reqs; reqs = await channel.takeRequests(thread)) {
        for (const r of reqs) {
          main.requests++;
          if (hostile) {
            hostile.noteHonest(r.src, r.len);
            hostile.noteHonest(r.dst, r.len);
          }
          if (inFlight.has(r.id)) violate('completion-once', `driver thread ${thread} posted transfer id ${r.id} while it was still in flight`);
          inFlight.add(r.id);
          const dev = devs[r.device];
          const pd = perDev[r.device];
          pd.requests++;
          pd.bytesSubmitted += r.len;
          const done = (c: ChannelCompletion) => {
            if (!inFlight.delete(r.id)) violate('completion-once', `transfer ${r.id} of driver thread ${thread} completed twice`);
            main.completions++;
            if (c.status === 'ok') pd.ok += c.bytes;
            else if (c.status === 'fault') {
              pd.faulted += r.len;
              pd.faults++;
            }
            channel.complete(thread, c);
          };
          submitted.push(
            dev.submit(r.src, r.dst, r.len, r.flags & REQ_FILL ? 1 : 0).then(
              (c) => done({ id: r.id, status: c.status, bytes: c.bytes, faultAddr: c.fault?.addr ?? 0, faultWrite: c.fault?.access === 'write' }),
              () => done({ id: r.id, status: 'error', bytes: 0, faultAddr: 0, faultWrite: false }),
            ),
          );
          if (submitted.length > 4096) submitted.splice(0, 2048); // settled long ago: the window bounds what is in flight
        }
      }
      await Promise.all(submitted);
      if (inFlight.size > 0) violate('completion-once', `driver thread ${thread}: transfers ${[...inFlight].slice(0, 8).join(', ')} never completed`);
    };
    const serving = Array.from({ length: o.driverThreads }, (_, t) => serve(t));
    let driversDone = false;
    const hostileRun = hostile ? hostile.run(() => driversDone, o.hostileBursts, o.hostileDuty) : Promise.resolve();
    if (!byOps) timer = setTimeout(() => channel.stop(), o.durationS * 1000);
    const progressNow = () => {
      let n = 0;
      for (let t = 0; t < o.driverThreads; t++) n += channel.ops(t);
      options.progress?.({ operations: n, seconds: (performance.now() - t0) / 1000 });
    };
    if (options.progress) ticker = setInterval(progressNow, 250);
    const settled = await Promise.allSettled(tasks);
    await Promise.all(serving);
    driversDone = true;
    const hostileSettled = (await Promise.allSettled([hostileRun]))[0];
    const seconds = (performance.now() - t0) / 1000;
    if (timer) clearTimeout(timer);
    if (ticker) clearInterval(ticker);
    progressNow();
    const failed = settled.find((s) => s.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
    if (hostileSettled.status === 'rejected') throw hostileSettled.reason;
    const results = settled.map((s) => (s as PromiseFulfilledResult<StressDriverResult>).value);

    // ---- end-of-run checks ----
    const sum = (k: keyof StressDriverResult) => results.reduce((a, r) => a + (r[k] as number), 0);
    for (const r of results) {
      for (const [k, n] of Object.entries(r.violationCounts)) counts[k as InvariantName] += n;
      violations.push(...r.violations);
    }
    const perDevice: StressDeviceSummary[] = devs.map((d, i) => {
      const c = d.counters();
      const delta = (k: keyof DeviceCounters) => c[k] - c0[i][k];
      const pd = perDev[i];
      const out: StressDeviceSummary = {
        bdf: d.bdf,
        dmaMask: d.dmaMaskBits,
        requests: pd.requests,
        bytesSubmitted: pd.bytesSubmitted,
        bytesCompleted: pd.ok,
        bytesFaulted: pd.faulted,
        faults: pd.faults,
        staleAccesses: delta('staleAccesses'),
        counters: {
          descriptors: delta('descriptors'),
          bytesWritten: delta('bytesWritten'),
          faultedBytes: delta('faultedBytes'),
          faults: delta('faults'),
          staleAccesses: delta('staleAccesses'),
          iotlbHits: delta('iotlbHits'),
          iotlbMisses: delta('iotlbMisses'),
        },
      };
      if (pd.bytesSubmitted !== pd.ok + pd.faulted) violate('counters', `device ${d.bdf}: ${pd.bytesSubmitted} bytes submitted ≠ ${pd.ok} completed + ${pd.faulted} faulted`);
      if (out.counters.bytesWritten !== pd.ok) violate('counters', `device ${d.bdf}: its counters say ${out.counters.bytesWritten} bytes written, its completions ${pd.ok}`);
      if (out.counters.faultedBytes !== pd.faulted) violate('counters', `device ${d.bdf}: its counters say ${out.counters.faultedBytes} bytes faulted, its completions ${pd.faulted}`);
      if (out.counters.descriptors !== pd.requests) violate('completion-once', `device ${d.bdf}: ${out.counters.descriptors} descriptors processed for ${pd.requests} requests`);
      if (out.counters.faults !== pd.faults) violate('expected-faults', `device ${d.bdf}: its counters say ${out.counters.faults} faults, its completions ${pd.faults}`);
      if (o.mode === 'strict' && out.staleAccesses !== 0) violate('strict-unmap', `device ${d.bdf}: ${out.staleAccesses} stale IOTLB accesses in strict mode`);
      return out;
    });
    const total = (k: 'bytesSubmitted' | 'bytesCompleted' | 'bytesFaulted') => perDevice.reduce((a, d) => a + d[k], 0);
    if (sum('bytesSubmitted') !== total('bytesSubmitted') || sum('bytesCompleted') !== total('bytesCompleted') || sum('bytesFaulted') !== total('bytesFaulted')) {
      violate('counters', `drivers count ${sum('bytesSubmitted')} submitted / ${sum('bytesCompleted')} completed / ${sum('bytesFaulted')} faulted bytes, the device side ${total('bytesSubmitted')} / ${total('bytesCompleted')} / ${total('bytesFaulted')}`);
    }
    if (sum('bytesSubmitted') !== sum('bytesCompleted') + sum('bytesFaulted')) {
      violate('counters', `drivers: ${sum('bytesSubmitted')} bytes submitted ≠ ${sum('bytesCompleted')} completed + ${sum('bytesFaulted')} faulted`);
    }
    if (sum('requests') !== main.requests || sum('completions') !== main.completions || main.requests !== main.completions) {
      violate('completion-once', `drivers posted ${sum('requests')} and took ${sum('completions')} completions; the device side took ${main.requests} and completed ${main.completions}`);
    }
    const faults = perDevice.reduce((a, d) => a + d.faults, 0);
    if (faults !== sum('expectedFaults')) violate('expected-faults', `${faults} DMAs faulted, ${sum('expectedFaults')} were expected to`);
    const hostileSummary = hostile ? hostile.finish(faults) : emptyHostileSummary(o.hostileAccesses);
    hostile?.tearDown();

    m.iommu.flush();
    const s1 = m.stats();
    const leaks = {
      liveMappings: s1.liveMappings - base.liveMappings,
      iovaPages: iovaPages() - base.iovaPages,
      bounceSlots: s1.bounceSlotsInUse - base.bounceSlots,
      ramPages: s1.ramPagesInUse - base.ramPages,
      pageTablePages: 0,
    };
    await pool.destroy();
    pool = null;
    await m.close();
    // Tables are not freed on unmap (as Linux's io-pgtable); the domains' teardown must free them all.
    leaks.pageTablePages = m.iommu.unit.pool.inUse() - tablesBefore;
    for (const [k, v] of Object.entries(leaks)) if (v !== 0) violate('no-leak', `${k}: ${v > 0 ? '+' : ''}${v} against the baseline at the end of the run`);

    const stressOps = sum('ops');
    const operations = sum('operations');
    const perKind = Object.fromEntries(STRESS_OP_KINDS.map((k) => [k, results.reduce((a, r) => a + r.perKind[k], 0)])) as Record<StressOpKind, number>;
    const nViolations = Object.values(counts).reduce((a, b) => a + b, 0);
    return {
      seed: o.seed,
      mode: o.mode,
      devices: o.devices,
      driverThreads: o.driverThreads,
      seconds,
      operations,
      operationsPerSecond: operations / seconds,
      stressOps,
      perKind,
      bytes: total('bytesCompleted'),
      bytesSubmitted: total('bytesSubmitted'),
      bytesFaulted: total('bytesFaulted'),
      transfers: main.completions,
      faults,
      expectedFaults: sum('expectedFaults'),
      staleAccesses: perDevice.reduce((a, d) => a + d.staleAccesses, 0),
      staleWrites: sum('staleWrites'),
      racesWonByDma: sum('racesWonByDma'),
      resourceShortages: sum('resourceShortages'),
      bouncedBytes: s1.bouncedBytes,
      violations: nViolations,
      invariants: counts,
      violationDetails: violations.slice(0, 50),
      perDevice,
      perThread: results.map((r) => ({ thread: r.thread, operations: r.operations, stressOps: r.ops, opLogHash: r.opLogHash, opLog: r.opLog })),
      leaks,
      hostile: hostileSummary,
      replay: `dmaemu stress --seed ${o.seed} --ops ${byOps ? o.ops : operations} --devices ${o.devices} --driver-threads ${o.driverThreads} --mode ${o.mode} --hostile ${o.hostile} --hostile-accesses ${o.hostileAccesses} --hostile-duty ${o.hostileDuty}`,
    };
  } finally {
    if (timer) clearTimeout(timer);
    if (ticker) clearInterval(ticker);
    await pool?.destroy();
    await m.close();
  }
}

function runTask(pool: Piscina, task: StressDriverTask): Promise<StressDriverResult> {
  return (pool.run(task, { name: 'stressDriver' }) as Promise<StressDriverResult>).catch((e: unknown) => {
    // A DmaError thrown in a driver thread crosses as a plain Error: give it its class and code back.
    const msg = e instanceof Error ? e.message : String(e);
    const code = /^([A-Z]+): /.exec(msg)?.[1];
    if (code && DMA_ERROR_CODES.includes(code as DmaErrorCode)) throw new DmaError(code as DmaErrorCode, msg.slice(code.length + 2), { cause: e });
    throw e;
  });
}

function check(ok: boolean, message: string): void {
  if (!ok) throw new DmaError('EINVAL', message);
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
