/**
 * `npm run bench`: runs the suites and prints every figure against its goal.
 * `--suite=core|dma` runs one suite. `node dist/bench/run.js --json` prints { machine, figures: [{ id, value, unit, goal, met }] }.
 */
import { coreSuite } from './core.js';
import { dmaSuite } from './dma.js';
import { judge, machineInfo, formatFigures, type Figure, type FigureResult } from './figures.js';

const json = process.argv.includes('--json');
const only = process.argv.find((a) => a.startsWith('--suite='))?.slice('--suite='.length);
const suites: Record<string, () => Promise<Figure[]>> = { core: () => coreSuite(), dma: () => dmaSuite(), trace: async () => (await import('./trace.js')).traceSuite() };
const figures: FigureResult[] = [];
for (const [name, run] of Object.entries(suites)) if (!only || only === name) figures.push(...(await run()).map(judge));
if (json) {
  process.stdout.write(JSON.stringify({ machine: machineInfo(), figures }, null, 2) + '\n');
} else {
  const m = machineInfo();
  process.stdout.write(`dmaemu bench — ${m.cpu}, ${m.cores} cores, Node ${m.node}\n\n${formatFigures(figures)}\n`);
}
