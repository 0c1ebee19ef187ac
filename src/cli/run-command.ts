/**
 * `dmaemu run [scenario.json]`: runs a scenario file, or the built-in default scenario
 * (src/scenario/default-scenario.ts) without one, and prints the summary table (or JSON).
 * Flags override the file; `--trace out.json` also writes the run's DMA timeline (run-trace.ts). Exit status: 1 when any transfer failed verification or did not
 * complete; a bad or unreadable file is a `dmaemu: …` message and status 2 (bin/dmaemu.ts).
 */
import { Command, Option } from 'commander';
import { DmaError } from '../errors.js';
import { DEFAULT_SCENARIO } from '../scenario/default-scenario.js';
import { loadScenarioFile, resolveScenario } from '../scenario/scenario-file.js';
import { applyOverrides, type ScenarioOverrides } from '../scenario/scenario-overrides.js';
import { runScenario } from '../scenario/runner.js';
import { ProgressLine } from '../scenario/progress.js';
import { formatScenarioSummary } from '../scenario/summary-table.js';
import type { IommuMode } from '../scenario/scenario-schema.js';
import type { Machine } from '../machine.js';
import { RUN_TRACE_EVENTS, runTraceConfig, writeRunTrace } from './run-trace.js';

interface RunFlags {
  mode?: IommuMode;
  transfers?: number;
  duration?: number;
  seed?: number;
  verify: boolean;
  json?: boolean;
  trace?: string;
  traceEvents?: number;
}

const number = (flag: string) => (v: string): number => {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new DmaError('EINVAL', `run: ${flag} ${JSON.stringify(v)} is not a number`);
  return n;
};

export function registerRunCommand(program: Command): Command {
  return program
    .command('run')
    .description(
      'run a scenario (a JSON file: RAM, IOMMU mode, SWIOTLB, topology, devices, workloads; see scenarios/) or, without one, the built-in default ' +
        '(two copy engines, one 32-bit device with buffers above 4 GiB, strict IOMMU, mixed sizes), verify every transfer and print a summary per device',
    )
    .argument('[scenario.json]', 'scenario file (default: the built-in default scenario)')
    .addOption(new Option('--mode <mode>', 'IOMMU mode, overriding the file: off (no translation; SWIOTLB bounces what a device cannot reach), strict or lazy invalidation').choices(['off', 'strict', 'lazy']))
    .option('--transfers <n>', 'transfers per workload (device), overriding the file\'s count or duration', number('--transfers'))
    .option('--duration <seconds>', 'run each workload for this many seconds instead of a count', number('--duration'))
    .option('--seed <n>', 'seed of transfer sizes, buffer placement and data', number('--seed'))
    .option('--no-verify', 'do not check every transfer\'s data (faster; mismatches are then not detected)')
    .option('--json', 'print the summary as JSON on stdout (no progress line)')
    .option('--trace <out.json>', 'record the DMA timeline and write it as Chrome Trace Event JSON (open in Perfetto): a track per device and driver thread, a slice per transfer and DMA API call')
    .option('--trace-events <n>', `events each thread's trace ring keeps (default ${RUN_TRACE_EVENTS}; later ones are dropped and counted)`, number('--trace-events'))
    .action(async (file: string | undefined, o: RunFlags) => {
      const base = file !== undefined ? loadScenarioFile(file) : resolveScenario(DEFAULT_SCENARIO, process.cwd(), 'built-in default scenario');
      const overrides: ScenarioOverrides = {
        ...(o.mode !== undefined ? { mode: o.mode } : {}),
        ...(o.transfers !== undefined ? { transfers: o.transfers } : {}),
        ...(o.duration !== undefined ? { durationS: o.duration } : {}),
        ...(o.seed !== undefined ? { seed: o.seed } : {}),
        // commander sets verify = true unless --no-verify: only the flag overrides the file.
        ...(o.verify === false ? { verify: false } : {}),
      };
      const scenario = applyOverrides(base, overrides);
      if (o.traceEvents !== undefined && o.trace === undefined) throw new DmaError('EINVAL', 'run: --trace-events needs --trace <out.json>');
      const machine = o.trace !== undefined ? runTraceConfig(scenario, o.traceEvents) : {};
      const line = new ProgressLine(process.stderr, { json: o.json });
      let summary;
      let m: Machine | null = null;
      try {
        summary = await runScenario(scenario, { onProgress: (p) => line.update(p), machine, onMachine: (x) => (m = x) });
      } finally {
        line.done();
      }
      process.stdout.write(o.json ? JSON.stringify(summary, null, 2) + '\n' : formatScenarioSummary(summary) + '\n');
      // The machine is closed by now; its trace rings still read.
      if (o.trace !== undefined) (o.json ? process.stderr : process.stdout).write((await writeRunTrace((m as Machine | null)?.trace ?? null, o.trace)) + '\n');
      if (summary.devices.some((d) => d.mismatches > 0 || d.failed > 0)) process.exitCode = 1;
    });
}
