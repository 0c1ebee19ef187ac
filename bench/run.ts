/**
 * `npm run bench`: runs the suites and prints every figure against its goal.
 * `node dist/bench/run.js --json` prints { machine, figures: [{ id, value, unit, goal, met }] }.
 */
import { coreSuite } from './core.js';
import { judge, machineInfo, formatFigures } from './figures.js';

const json = process.argv.includes('--json');
const figures = (await coreSuite()).map(judge);
if (json) {
  process.stdout.write(JSON.stringify({ machine: machineInfo(), figures }, null, 2) + '\n');
} else {
  const m = machineInfo();
  process.stdout.write(`dmaemu bench — ${m.cpu}, ${m.cores} cores, Node ${m.node}\n\n${formatFigures(figures)}\n`);
}
