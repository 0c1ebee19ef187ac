/**
 * The HTML report of one bench run (`dmaemu bench --report FILE`): one self-contained file, no
 * network, no external fonts — inline CSS, charts as inline SVG drawn here, the run's JSON
 * embedded. It shows the machine, the figures table (met / not met) and one chart per series
 * (bandwidth vs size against the memcpy lines, bounce vs IOMMU with the crossing marked,
 * scaling bars against their goal).
 *
 * Hooks for checkers (bench/report-check.ts), all in the DOM:
 *   <tr data-figure-id data-value data-met>   one row per figure; data-value is String(value),
 *                                             which Number() reads back exactly; the value cell
 *                                             (data-cell="value") prints formatValue(value)
 *   <svg data-chart="series id">              one per series; its points are
 *   <circle data-line data-x data-y>           (lines) and <rect data-bar data-value> (bars)
 *   <script id="bench-data" type="application/json">   the BenchResult itself
 *   body[data-rendered="yes"], svg[data-rendered-width]   set by the page's one inline script
 *                                             once the browser has laid the charts out
 */
import { formatValue, type FigureResult, type MachineInfo } from './figures.js';
import type { BenchResult } from './run.js';
import type { Axis, BarSeries, LineSeries, Series } from './series.js';

const W = 680;
const H = 340;
const M = { l: 70, r: 20, t: 20, b: 50 };
const COLORS = ['#1f5fbf', '#c8372d', '#2f8f3a', '#8a4fbf', '#b8860b'];

export function escapeHtml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Byte sizes as 64 B, 4 KiB, 1 MiB; other units as 3 significant digits. */
function tickLabel(v: number, unit: string): string {
  if (unit === 'B') {
    if (v >= 2 ** 20 && v % 2 ** 20 === 0) return `${v / 2 ** 20} MiB`;
    if (v >= 1024 && v % 1024 === 0) return `${v / 1024} KiB`;
    return `${Math.round(v)} B`;
  }
  return `${Number(v.toPrecision(3))}`;
}

interface Scale {
  map(v: number): number;
  ticks: number[];
}

/** A scale from the data range onto [a, b] (pixels), linear from 0 or log. */
function scale(values: number[], axis: Axis, a: number, b: number, isX: boolean): Scale {
  const pos = values.filter((v) => v > 0 && Number.isFinite(v));
  if (axis.log && pos.length > 0) {
    const base = axis.unit === 'B' || isX ? 2 : 10;
    const lo = Math.floor(Math.log(Math.min(...pos)) / Math.log(base));
    const hi = Math.max(lo + 1, Math.ceil(Math.log(Math.max(...pos)) / Math.log(base)));
    const map = (v: number) => a + ((Math.log(Math.max(v, base ** lo)) / Math.log(base) - lo) / (hi - lo)) * (b - a);
    const step = Math.max(1, Math.ceil((hi - lo) / 8));
    const ticks: number[] = [];
    for (let e = lo; e <= hi; e += step) ticks.push(base ** e);
    return { map, ticks };
  }
  const max = Math.max(1e-9, ...values.filter(Number.isFinite));
  const raw = max / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) ?? raw;
  const top = Math.ceil(max / step) * step;
  const ticks: number[] = [];
  for (let v = 0; v <= top + step / 2; v += step) ticks.push(Number(v.toPrecision(6)));
  return { map: (v: number) => a + (v / top) * (b - a), ticks };
}

const f1 = (n: number) => n.toFixed(1);

function axes(x: Scale | null, y: Scale, xAxis: Axis | null, yAxis: Axis): string {
  const out: string[] = [];
  const x0 = M.l;
  const x1 = W - M.r;
  const y0 = H - M.b;
  for (const t of y.ticks) {
    const py = y.map(t);
    out.push(`<line class="grid" x1="${x0}" x2="${x1}" y1="${f1(py)}" y2="${f1(py)}"/>`);
    out.push(`<text class="tick" x="${x0 - 6}" y="${f1(py + 4)}" text-anchor="end">${escapeHtml(tickLabel(t, yAxis.unit))}</text>`);
  }
  if (x && xAxis) {
    for (const t of x.ticks) {
      const px = x.map(t);
      out.push(`<line class="grid" x1="${f1(px)}" x2="${f1(px)}" y1="${M.t}" y2="${y0}"/>`);
      out.push(`<text class="tick" x="${f1(px)}" y="${y0 + 16}" text-anchor="middle">${escapeHtml(tickLabel(t, xAxis.unit))}</text>`);
    }
    out.push(`<text class="axis" x="${(x0 + x1) / 2}" y="${H - 10}" text-anchor="middle">${escapeHtml(`${xAxis.label} (${xAxis.unit}${xAxis.log ? ', log scale' : ''})`)}</text>`);
  }
  out.push(`<line class="frame" x1="${x0}" x2="${x0}" y1="${M.t}" y2="${y0}"/><line class="frame" x1="${x0}" x2="${x1}" y1="${y0}" y2="${y0}"/>`);
  out.push(
    `<text class="axis" transform="translate(16 ${(M.t + y0) / 2}) rotate(-90)" text-anchor="middle">${escapeHtml(`${yAxis.label} (${yAxis.unit}${yAxis.log ? ', log scale' : ''})`)}</text>`,
  );
  return out.join('');
}

function legend(names: string[]): string {
  return `<ul class="legend">${names.map((n, i) => `<li><span class="swatch" style="background:${COLORS[i % COLORS.length]}"></span>${escapeHtml(n)}</li>`).join('')}</ul>`;
}

function lineChart(s: LineSeries): string {
  const xs = s.lines.flatMap((l) => l.points.map((p) => p.x)).concat((s.marks ?? []).map((m) => m.x));
  const ys = s.lines.flatMap((l) => l.points.map((p) => p.y));
  const x = scale(xs, s.x, M.l, W - M.r, true);
  const y = scale(ys, s.y, H - M.b, M.t, false);
  const body: string[] = [axes(x, y, s.x, s.y)];
  s.lines.forEach((l, i) => {
    const c = COLORS[i % COLORS.length];
    const d = l.points.map((p, j) => `${j ? 'L' : 'M'}${f1(x.map(p.x))} ${f1(y.map(p.y))}`).join(' ');
    body.push(`<path class="line" data-line="${i}" d="${d}" stroke="${c}"/>`);
    for (const p of l.points) {
      body.push(
        `<circle data-line="${i}" data-x="${p.x}" data-y="${p.y}" cx="${f1(x.map(p.x))}" cy="${f1(y.map(p.y))}" r="3.5" fill="${c}"><title>${escapeHtml(`${l.name}: ${tickLabel(p.x, s.x.unit)} → ${formatValue(p.y)} ${s.y.unit}`)}</title></circle>`,
      );
    }
  });
  for (const m of s.marks ?? []) {
    const px = f1(x.map(m.x));
    body.push(`<line class="mark" data-mark-x="${m.x}" x1="${px}" x2="${px}" y1="${M.t}" y2="${H - M.b}"/>`);
    body.push(`<text class="mark-label" x="${px}" y="${M.t + 12}" text-anchor="${x.map(m.x) > W / 2 ? 'end' : 'start'}" dx="${x.map(m.x) > W / 2 ? -4 : 4}">${escapeHtml(m.label)}</text>`);
  }
  return svg(s, body.join('')) + legend(s.lines.map((l) => l.name));
}

function barChart(s: BarSeries): string {
  const vals = s.bars.map((b) => b.value).concat(s.goal ? [s.goal.value] : []);
  const y = scale(vals, s.y, H - M.b, M.t, false);
  const body: string[] = [axes(null, y, null, s.y)];
  const slot = (W - M.l - M.r) / s.bars.length;
  s.bars.forEach((b, i) => {
    const bx = M.l + i * slot + slot * 0.2;
    const top = y.map(b.value);
    body.push(
      `<rect data-bar="${escapeHtml(b.name)}" data-value="${b.value}" x="${f1(bx)}" y="${f1(top)}" width="${f1(slot * 0.6)}" height="${f1(H - M.b - top)}" fill="${COLORS[i % COLORS.length]}"><title>${escapeHtml(`${b.name}: ${formatValue(b.value)} ${s.y.unit}`)}</title></rect>`,
    );
    body.push(`<text class="bar-value" x="${f1(bx + slot * 0.3)}" y="${f1(top - 6)}" text-anchor="middle">${escapeHtml(formatValue(b.value))}</text>`);
    body.push(`<text class="tick" x="${f1(bx + slot * 0.3)}" y="${H - M.b + 18}" text-anchor="middle">${escapeHtml(b.name)}</text>`);
  });
  if (s.goal) {
    const py = f1(y.map(s.goal.value));
    body.push(`<line class="goal" data-goal="${s.goal.value}" x1="${M.l}" x2="${W - M.r}" y1="${py}" y2="${py}"/>`);
    body.push(`<text class="mark-label" x="${W - M.r - 4}" y="${f1(y.map(s.goal.value) - 6)}" text-anchor="end">${escapeHtml(s.goal.label)}</text>`);
  }
  return svg(s, body.join(''));
}

function svg(s: Series, inner: string): string {
  return `<svg data-chart="${escapeHtml(s.id)}" data-kind="${s.kind}" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${escapeHtml(s.title)}">${inner}</svg>`;
}

function chart(s: Series): string {
  return `<section class="chart"><h3>${escapeHtml(s.title)}</h3>${s.kind === 'lines' ? lineChart(s) : barChart(s)}${s.note ? `<p class="note">${escapeHtml(s.note)}</p>` : ''}</section>`;
}

/** What the report prints in a figure's "met" column. */
export function verdictOf(f: FigureResult): string {
  return f.met === null ? 'for information' : f.met ? 'met' : 'not met';
}

function figureRow(f: FigureResult): string {
  return (
    `<tr data-figure-id="${escapeHtml(f.id)}" data-value="${f.value}" data-met="${f.met}" class="${f.met === null ? 'info' : f.met ? 'met' : 'notmet'}">` +
    `<td><code>${escapeHtml(f.id)}</code></td><td class="num" data-cell="value">${escapeHtml(formatValue(f.value))}</td><td>${escapeHtml(f.unit)}</td>` +
    `<td class="num">${escapeHtml(f.goal === null ? '—' : `${f.goal.op === '>=' ? '≥' : '≤'} ${f.goal.value}`)}</td><td class="verdict">${verdictOf(f)}</td>` +
    `<td class="note">${escapeHtml(f.note ?? '')}</td></tr>`
  );
}

function machineTable(m: MachineInfo): string {
  const rows: Array<[string, string]> = [
    ['CPU', m.cpu],
    ['cores', String(m.cores)],
    ['memory', `${m.memoryGiB} GiB`],
    ['platform', m.platform],
    ['Node.js', m.node],
    ['started', m.date],
    ['load average (1 min) at start', String(m.loadAverage)],
  ];
  return `<table class="machine">${rows.map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td data-machine="${escapeHtml(k)}">${escapeHtml(v)}</td></tr>`).join('')}</table>`;
}

/** JSON safe inside a <script> element. */
function scriptJson(v: unknown): string {
  return JSON.stringify(v).replace(/</g, '\\u003c').replace(/\u2028/g, '\\u2028').replace(/\u2029/g, '\\u2029');
}

const CSS = `
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}h3{font-size:15px;margin:0 0 6px}
table{border-collapse:collapse}.figures td:nth-child(-n+5){white-space:nowrap}td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
.machine th{font-weight:600;color:#555}.num{text-align:right;font-variant-numeric:tabular-nums}
tr.met .verdict{color:#1c7a2c;font-weight:600}tr.notmet .verdict{color:#b3261e;font-weight:600}
td.note,p.note{color:#666;font-size:12px}.summary{font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:24px}.chart{flex:1 1 640px}
svg{background:#fff;border:1px solid #ddd}svg text{font-size:11px;fill:#333}svg .axis{font-size:12px}
svg .grid{stroke:#eee}svg .frame{stroke:#888}svg .line{fill:none;stroke-width:2}
svg .mark,svg .goal{stroke:#444;stroke-dasharray:5 4}svg .mark-label{font-size:11px;fill:#444}svg .bar-value{font-weight:600}
.legend{list-style:none;padding:0;margin:6px 0;display:flex;flex-wrap:wrap;gap:14px;font-size:12px}
.swatch{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-1px}
`;

/** Marks the page as laid out, with each chart's rendered width (the render check reads these). */
const SCRIPT = `for(const s of document.querySelectorAll('svg[data-chart]')){s.setAttribute('data-rendered-width',String(Math.round(s.getBBox().width)))}document.body.setAttribute('data-rendered','yes')`;

/** The report as one HTML document. */
export function renderReport(r: BenchResult): string {
  const met = r.figures.filter((f) => f.met === true).length;
  const judged = r.figures.filter((f) => f.met !== null).length;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>dmaemu bench report</title><style>${CSS}</style></head>
<body>
<h1>dmaemu bench report</h1>
<h2>Machine</h2>
${machineTable(r.machine)}
<h2>Figures</h2>
<p class="summary" data-summary-met="${met}" data-summary-total="${judged}">${met} of ${judged} figures with a goal meet it.</p>
<table class="figures"><thead><tr><th>figure</th><th>value</th><th>unit</th><th>goal</th><th>met</th><th>note</th></tr></thead>
<tbody>${r.figures.map(figureRow).join('\n')}</tbody></table>
<h2>Charts</h2>
<div class="charts">${r.series.map(chart).join('\n')}</div>
${r.series.length === 0 ? '<p class="note">No chart: the suites run measured no series.</p>' : ''}
<script type="application/json" id="bench-data">${scriptJson(r)}</script>
<script>${SCRIPT}</script>
</body></html>
`;
}
