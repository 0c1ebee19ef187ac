#!/usr/bin/env node
// Render check of a bench report in headless Chromium (Debian's /usr/bin/chromium):
//   npm run -s build
//   node dist/bin/dmaemu.js bench --json --report report.html > report.json
//   node scripts/check-report.mjs report.html report.json [--screenshot report.png]
// Exits 0 when every figure, chart point, bar and mark in the rendered DOM equals report.json's
// and every chart was laid out; 1 with the differences otherwise; 2 on bad usage or no chromium.
import { readFileSync } from 'node:fs';
import { checkReport, chromiumAvailable, CHROMIUM } from '../dist/bench/report-check.js';

const args = process.argv.slice(2);
const shot = args.indexOf('--screenshot');
const screenshot = shot >= 0 ? args.splice(shot, 2)[1] : undefined;
if (args.length !== 2 || (shot >= 0 && !screenshot)) {
  process.stderr.write('usage: node scripts/check-report.mjs REPORT.html RESULT.json [--screenshot OUT.png]\n');
  process.exit(2);
}
if (!chromiumAvailable()) {
  process.stderr.write(`check-report: ${CHROMIUM} is absent (apt-get install chromium)\n`);
  process.exit(2);
}
const [html, json] = args;
const result = JSON.parse(readFileSync(json, 'utf8'));
const problems = await checkReport(html, result, { screenshot });
if (problems.length) {
  process.stderr.write(`check-report: ${html} differs from ${json}:\n${problems.map((p) => `  ${p}`).join('\n')}\n`);
  process.exit(1);
}
process.stdout.write(
  `check-report: ${html} renders in Chromium; its ${result.figures.length} figures and ${result.series.length} charts equal ${json}${screenshot ? `; screenshot ${screenshot}` : ''}\n`,
);
