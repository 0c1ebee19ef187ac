/**
 * `dmaemu stress`: the stress runner from the command line (src/stress/stress.ts). Seeded,
 * reproducible per-thread op sequences; invariants checked as it runs and at the end; a failure
 * prints the seed, the invariant, the shortest event history that shows it and the command that
 * replays the op sequences. Exit status 1 when any invariant was violated.
 */
import { Option, type Command } from 'commander';
import { stress, STRESS_DEFAULTS, type StressSummary } from '../stress/stress.js';
import { formatEvent } from '../stress/event-history.js';
import type { StressMode } from '../stress/op-generator.js';
import type { StressInjection } from '../stress/stress-driver.js';
import type { HostileInjection } from '../stress/stress-hostile.js';

interface StressCliOptions {
  seed: number;
  duration?: number;
  ops?: number;
  devices: number;
  driverThreads: number;
  mode: StressMode;
  window: number;
  json?: boolean;
  inject?: StressInjection | HostileInjection;
  hostile?: number;
  hostileAccesses: number;
  hostileBursts: number;
  hostileDuty: number;
}

const int = (v: string) => Number(v);

export function registerStressCommand(program: Command): void {
  program
    .command('stress')
    .description('randomized, seeded, reproducible map/unmap/mapSg/sync/allocCoherent mixes from driver threads with DMA from device workers; checks data, exactly-once completion, strict unmap, expected faults, leaks and counters')
    .option('--seed <n>', 'seed of the op sequences', int, STRESS_DEFAULTS.seed)
    .addOption(new Option('--duration <s>', `run this many seconds (default ${STRESS_DEFAULTS.durationS})`).argParser(Number).conflicts('ops'))
    .addOption(new Option('--ops <n>', 'run until this many operations (DMA API calls and DMA requests, all threads)').argParser(int))
    .option('--devices <k>', 'copy-engine devices (alternately 32- and 64-bit DMA masks)', int, STRESS_DEFAULTS.devices)
    .option('--driver-threads <t>', 'driver threads (piscina)', int, STRESS_DEFAULTS.driverThreads)
    .addOption(new Option('--mode <mode>', 'IOMMU invalidation, or off (no IOMMU: direct and SWIOTLB)').choices(['strict', 'lazy', 'off']).default(STRESS_DEFAULTS.mode))
    .option('--window <n>', 'ops each driver thread keeps in flight', int, STRESS_DEFAULTS.window)
    .option('--hostile <k>', `hostile devices firing wild DMA bursts beside the copy engines (default ${STRESS_DEFAULTS.hostile}; 0 in mode off, which cannot isolate them)`, int)
    .option('--hostile-accesses <n>', 'accesses per hostile burst', int, STRESS_DEFAULTS.hostileAccesses)
    .option('--hostile-bursts <n>', 'bursts each hostile device fires at least, even after the driver threads are done', int, STRESS_DEFAULTS.hostileBursts)
    .option('--hostile-duty <percent>', 'share of the time the hostile devices burst while the drivers run (they rest in between)', Number, STRESS_DEFAULTS.hostileDuty)
    .option('--json', 'print the summary as one JSON object')
    .addOption(new Option('--inject <fault>', 'test only: break an invariant on purpose, to see how a failure is reported').choices(['corrupt-byte', 'skip-unmap', 'map-canary', 'lose-fault-record']))
    .action(async (o: StressCliOptions) => {
      const tty = process.stderr.isTTY === true;
      const summary = await stress({
        seed: o.seed,
        durationS: o.ops === undefined ? (o.duration ?? STRESS_DEFAULTS.durationS) : undefined,
        ops: o.ops,
        devices: o.devices,
        driverThreads: o.driverThreads,
        mode: o.mode,
        window: o.window,
        inject: o.inject,
        hostile: o.hostile,
        hostileAccesses: o.hostileAccesses,
        hostileBursts: o.hostileBursts,
        hostileDuty: o.hostileDuty,
        // The library calls this every 250 ms: at most 4 lines a second.
        progress: tty ? (p) => process.stderr.write(`\r${p.operations} operations, ${p.seconds.toFixed(1)} s`) : undefined,
      });
      if (tty) process.stderr.write('\n');
      process.stdout.write(o.json ? JSON.stringify(summary, null, 2) + '\n' : formatStressSummary(summary) + '\n');
      if (summary.violations > 0) {
        if (o.json) process.stderr.write(formatViolations(summary) + '\n');
        process.exitCode = 1;
      }
    });
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

export function formatStressSummary(s: StressSummary): string {
  const lines = [
    `dmaemu stress — seed ${s.seed}, IOMMU ${s.mode}, ${s.devices} devices, ${s.driverThreads} driver threads, ${s.seconds.toFixed(1)} s`,
    `operations ${s.operations} (${Math.round(s.operationsPerSecond)}/s) in ${s.stressOps} stress ops; transfers ${s.transfers}`,
    `bytes ${mib(s.bytes)} completed + ${mib(s.bytesFaulted)} faulted = ${mib(s.bytesSubmitted)} submitted`,
    `faults ${s.faults} (expected ${s.expectedFaults}); stale accesses ${s.staleAccesses} (stale writes seen ${s.staleWrites}); unmap races won by the DMA ${s.racesWonByDma}; shortages ${s.resourceShortages}`,
    `hostile: ${s.hostile.devices} devices, ${s.hostile.bursts} bursts, ${s.hostile.accesses} accesses: ${s.hostile.refused} refused (${s.hostile.faultsRecorded} fault records + ${s.hostile.faultsDropped} dropped), ${s.hostile.moved} moved`,
    `ops: ${Object.entries(s.perKind).map(([k, n]) => `${k} ${n}`).join(', ')}`,
    `leaks: ${Object.entries(s.leaks).map(([k, n]) => `${k} ${n}`).join(', ')}`,
    `invariants: ${Object.entries(s.invariants).map(([k, n]) => `${k} ${n === 0 ? 'ok' : `${n} VIOLATED`}`).join(', ')}`,
    `violations ${s.violations}`,
  ];
  if (s.violations > 0) lines.push('', formatViolations(s));
  return lines.join('\n');
}

/** Seed, each violation with its shortest history, and the replay command. */
export function formatViolations(s: StressSummary): string {
  const out = [`FAILED: ${s.violations} invariant violation(s) with seed ${s.seed}`];
  for (const v of s.violationDetails) {
    out.push(`[${v.invariant}] ${v.thread >= 0 ? `driver thread ${v.thread}: ` : ''}${v.message}`);
    for (const e of v.events) out.push(`    ${formatEvent(e)}`);
  }
  out.push(`replay (same op sequences per thread; the interleaving is not replayed): ${s.replay}`);
  return out.join('\n');
}
