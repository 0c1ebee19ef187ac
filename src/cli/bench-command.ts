/**
 * `dmaemu bench [--suite NAME] [--json] [--report FILE]`: runs the benchmark suites (bench/run.ts)
 * and prints every figure against its goal as met / not met; --json prints
 * { machine, figures: [{ id, value, unit, goal, met }], series } instead; --report FILE also
 * writes the self-contained HTML report (bench/report.ts). `npm run bench` runs this command.
 * The suites live in bench/ (compiled to dist/bench), beside the library, not in it.
 */
import { writeFileSync } from 'node:fs';
import { Option, type Command } from 'commander';
import { missingFigures, runBench, suites } from '../../bench/run.js';
import { formatFigures } from '../../bench/figures.js';
import { renderReport } from '../../bench/report.js';

export interface BenchCommandOptions {
  suite?: string;
  json?: boolean;
  report?: string;
}

export function registerBenchCommand(program: Command): void {
  const names = Object.keys(suites);
  program
    .command('bench')
    .description('run the benchmark suites (each measures its baseline in the same run) and print every figure against its goal')
    .addOption(new Option('--suite <name>', 'run one suite only').choices(names))
    .option('--json', 'print { machine, figures: [{ id, value, unit, goal, met }], series } as JSON')
    .option('--report <file>', 'also write a self-contained HTML report (tables and charts) to <file>')
    .action(async (o: BenchCommandOptions) => {
      const t0 = performance.now();
      const result = await runBench({
        suite: o.suite,
        progress: (name) => process.stderr.write(`dmaemu bench: suite ${name} (${((performance.now() - t0) / 1000).toFixed(0)} s)\n`),
      });
      const seconds = (performance.now() - t0) / 1000;
      if (o.suite === undefined) {
        const missing = missingFigures(result);
        if (missing.length) process.stderr.write(`dmaemu bench: figures missing from the run: ${missing.join(', ')}\n`);
      }
      if (o.report) writeFileSync(o.report, renderReport(result));
      if (o.json) {
        process.stdout.write(JSON.stringify(result, null, 2) + '\n');
      } else {
        const m = result.machine;
        const met = result.figures.filter((f) => f.met === true).length;
        const judged = result.figures.filter((f) => f.met !== null).length;
        process.stdout.write(
          `dmaemu bench — ${m.cpu}, ${m.cores} cores, Node ${m.node}, load average ${m.loadAverage} at start\n\n${formatFigures(result.figures)}\n\n` +
            `${met} of ${judged} figures with a goal meet it; ${seconds.toFixed(0)} s${o.report ? `; report written to ${o.report}` : ''}\n`,
        );
      }
    });
}
