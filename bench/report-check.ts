/**
 * The render check of the HTML report: renders it in headless Chromium (Debian's `chromium`,
 * no network, a fresh profile) with --dump-dom, then compares the rendered DOM with the run's
 * JSON — every figure's data-value and printed value, every chart's points, bars and marks, the
 * embedded JSON — and checks that the page's script ran and laid every chart out. Used by
 * test/bench-report.test.ts and scripts/check-report.mjs.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { formatValue } from './figures.js';
import { verdictOf } from './report.js';
import type { BenchResult } from './run.js';

export const CHROMIUM = '/usr/bin/chromium';

export function chromiumAvailable(path = CHROMIUM): boolean {
  return existsSync(path);
}

export interface RenderOptions {
  chromium?: string;
  /** Also write a PNG screenshot of the page here. */
  screenshot?: string;
  timeoutMs?: number;
}

function runChromium(bin: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((res, rej) => {
    execFile(bin, args, { timeout: timeoutMs, maxBuffer: 64 * 2 ** 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) rej(new Error(`chromium ${args.at(-1)} failed: ${err.message}\n${stderr}`));
      else res(stdout);
    });
  });
}

/** The DOM of `htmlPath` after Chromium loaded and scripted it. */
export async function renderDom(htmlPath: string, o: RenderOptions = {}): Promise<string> {
  const bin = o.chromium ?? CHROMIUM;
  const timeoutMs = o.timeoutMs ?? 90_000;
  const profile = mkdtempSync(join(tmpdir(), 'dmaemu-chromium-'));
  const base = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-dev-shm-usage',
    `--user-data-dir=${profile}`,
  ];
  const url = pathToFileURL(resolve(htmlPath)).href;
  try {
    const dom = await runChromium(bin, [...base, '--dump-dom', url], timeoutMs);
    if (o.screenshot) await runChromium(bin, [...base, '--window-size=1200,3600', `--screenshot=${resolve(o.screenshot)}`, url], timeoutMs);
    return dom;
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
}

/** name → value of every attribute in one start tag. */
function attrs(tag: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of tag.matchAll(/([\w:-]+)="([^"]*)"/g)) out.set(m[1], m[2].replace(/&quot;/g, '"').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&'));
  return out;
}

const tags = (html: string, name: string): Array<Map<string, string>> => [...html.matchAll(new RegExp(`<${name}\\b[^>]*>`, 'g'))].map((m) => attrs(m[0]));

const same = (attr: string | undefined, v: number) => attr !== undefined && Number(attr) === v;

/** Every way the rendered DOM differs from the run's result (empty: it matches). */
export function checkReportDom(dom: string, r: BenchResult): string[] {
  const problems: string[] = [];
  if (!/<body[^>]*\bdata-rendered="yes"/.test(dom)) problems.push('the page script did not run (body has no data-rendered="yes")');

  // Figures: one row each, in order, with the JSON's value and verdict, printed as formatValue.
  const rows = [...dom.matchAll(/<tr\b[^>]*data-figure-id="[^"]*"[^>]*>([\s\S]*?)<\/tr>/g)];
  if (rows.length !== r.figures.length) problems.push(`${rows.length} figure rows, the JSON has ${r.figures.length} figures`);
  r.figures.forEach((f, i) => {
    const row = rows[i];
    if (!row) return;
    const a = attrs(row[0].slice(0, row[0].indexOf('>') + 1));
    if (a.get('data-figure-id') !== f.id) problems.push(`figure row ${i} is ${a.get('data-figure-id')}, the JSON's is ${f.id}`);
    if (!same(a.get('data-value'), f.value)) problems.push(`figure ${f.id}: data-value ${a.get('data-value')} ≠ JSON ${f.value}`);
    if (a.get('data-met') !== String(f.met)) problems.push(`figure ${f.id}: data-met ${a.get('data-met')} ≠ JSON ${f.met}`);
    const shown = /data-cell="value"[^>]*>([^<]*)</.exec(row[1])?.[1];
    if (shown !== formatValue(f.value)) problems.push(`figure ${f.id}: printed ${shown} ≠ ${formatValue(f.value)}`);
    const verdict = /class="verdict"[^>]*>([^<]*)</.exec(row[1])?.[1];
    if (verdict !== verdictOf(f)) problems.push(`figure ${f.id}: verdict ${verdict}`);
  });

  // Charts: one laid-out SVG per series with exactly its points, bars and marks.
  for (const s of r.series) {
    const m = new RegExp(`<svg\\b[^>]*data-chart="${s.id.replace(/[^\w-]/g, '.')}"[^>]*>([\\s\\S]*?)</svg>`).exec(dom);
    if (!m) {
      problems.push(`chart ${s.id}: no <svg data-chart>`);
      continue;
    }
    const width = Number(attrs(m[0].slice(0, m[0].indexOf('>') + 1)).get('data-rendered-width'));
    if (!(width > 0)) problems.push(`chart ${s.id}: not laid out (data-rendered-width ${width})`);
    if (s.kind === 'lines') {
      const circles = tags(m[1], 'circle');
      const want = s.lines.flatMap((l, li) => l.points.map((p) => ({ li, ...p })));
      if (circles.length !== want.length) problems.push(`chart ${s.id}: ${circles.length} points drawn, the JSON has ${want.length}`);
      want.forEach((p, i) => {
        const c = circles[i];
        if (c && (c.get('data-line') !== String(p.li) || !same(c.get('data-x'), p.x) || !same(c.get('data-y'), p.y))) {
          problems.push(`chart ${s.id}: point ${i} is (${c.get('data-x')}, ${c.get('data-y')}) on line ${c.get('data-line')}, the JSON's (${p.x}, ${p.y}) on line ${p.li}`);
        }
      });
      if (tags(m[1], 'path').length !== s.lines.length) problems.push(`chart ${s.id}: ${tags(m[1], 'path').length} lines drawn, the JSON has ${s.lines.length}`);
      const marks = tags(m[1], 'line').filter((l) => l.has('data-mark-x'));
      const wantMarks = s.marks ?? [];
      if (marks.length !== wantMarks.length || wantMarks.some((k, i) => !same(marks[i].get('data-mark-x'), k.x))) {
        problems.push(`chart ${s.id}: marks at ${marks.map((k) => k.get('data-mark-x')).join(',')} ≠ JSON ${wantMarks.map((k) => k.x).join(',')}`);
      }
    } else {
      const rects = tags(m[1], 'rect');
      if (rects.length !== s.bars.length) problems.push(`chart ${s.id}: ${rects.length} bars drawn, the JSON has ${s.bars.length}`);
      s.bars.forEach((b, i) => {
        const q = rects[i];
        if (q && (q.get('data-bar') !== b.name || !same(q.get('data-value'), b.value))) problems.push(`chart ${s.id}: bar ${i} is ${q.get('data-bar')}=${q.get('data-value')}, the JSON's ${b.name}=${b.value}`);
      });
      const goal = tags(m[1], 'line').find((l) => l.has('data-goal'));
      if (s.goal && !same(goal?.get('data-goal'), s.goal.value)) problems.push(`chart ${s.id}: goal line ${goal?.get('data-goal')} ≠ JSON ${s.goal.value}`);
    }
  }
  if (tags(dom, 'svg').filter((t) => t.has('data-chart')).length !== r.series.length) problems.push(`the page has a different number of charts than the JSON's ${r.series.length} series`);

  // The embedded JSON is the run's.
  const embedded = /<script[^>]*id="bench-data"[^>]*>([\s\S]*?)<\/script>/.exec(dom)?.[1];
  if (embedded === undefined) problems.push('no embedded bench-data JSON');
  else if (JSON.stringify(JSON.parse(embedded)) !== JSON.stringify(r)) problems.push('the embedded bench-data JSON differs from the run\'s');
  return problems;
}

/** Renders the report in Chromium and compares it with the run's result. */
export async function checkReport(htmlPath: string, r: BenchResult, o: RenderOptions = {}): Promise<string[]> {
  return checkReportDom(await renderDom(htmlPath, o), r);
}
