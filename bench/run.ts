/**
 * Running the benchmark suites: the suites map and one run of them, as `dmaemu bench` and
 * `npm run bench` print it (src/cli/bench-command.ts) or write it as JSON and an HTML report.
 * A suite returns its figures, or its figures and chart series; each suite module is loaded only
 * when it runs (the CLI loads this map for every command, and tinybench is a dev dependency).
 */
import { DmaError } from '../src/errors.js';
import { judge, machineInfo, type Figure, type FigureResult, type MachineInfo } from './figures.js';
import type { Series } from './series.js';

export type SuiteOutput = Figure[] | { figures: Figure[]; series?: Series[] };

/** Suite name → the suite. One line per suite. */
export const suites: Record<string, () => Promise<SuiteOutput>> = {
  core: async () => (await import('./core.js')).coreSuite(),
  dma: async () => (await import('./dma.js')).dmaSuite(),
  devices: async () => (await import('./devices.js')).devicesSuite(),
  trace: async () => (await import('./trace.js')).traceSuite(),
};

/** The figure ids the issue asks a full run for (checked after a run of every suite). */
export const REQUIRED_FIGURE_IDS = [
  'sg64k-scattered-vs-memcpy',
  'sg64k-contiguous-vs-memcpy',
  'misaligned-4k-gbps',
  'iotlb-hit-ns',
  'walk-ns',
  'map-unmap-4k-ns',
  'map-unmap-2t-scaling',
  'dma-2dev-scaling',
  'doorbell-sleep-us',
  'doorbell-poll-us',
  'bounce-breakeven-bytes',
] as const;

/** What --json prints and the report draws: { machine, figures } as the issue says, plus series. */
export interface BenchResult {
  machine: MachineInfo;
  figures: FigureResult[];
  series: Series[];
}

export interface RunBenchOptions {
  /** One suite by name; every suite when absent. */
  suite?: string;
  /** Called before each suite starts. */
  progress?: (suite: string) => void;
}

/** Runs the suites one after the other (never two at once: they would measure each other). */
export async function runBench(options: RunBenchOptions = {}): Promise<BenchResult> {
  const names = Object.keys(suites);
  if (options.suite !== undefined && !names.includes(options.suite)) {
    throw new DmaError('EINVAL', `bench: no suite ${JSON.stringify(options.suite)}; suites: ${names.join(', ')}`);
  }
  const machine = machineInfo();
  const figures: FigureResult[] = [];
  const series: Series[] = [];
  for (const name of names) {
    if (options.suite !== undefined && options.suite !== name) continue;
    options.progress?.(name);
    const out = await suites[name]();
    const f = Array.isArray(out) ? out : out.figures;
    figures.push(...f.map(judge));
    if (!Array.isArray(out)) series.push(...(out.series ?? []));
  }
  return { machine, figures, series };
}

/** Required ids a run of every suite did not produce (empty when all are there). */
export function missingFigures(result: BenchResult): string[] {
  const have = new Set(result.figures.map((f) => f.id));
  return REQUIRED_FIGURE_IDS.filter((id) => !have.has(id));
}
