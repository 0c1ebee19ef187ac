/**
 * The HTML bench report, generated from a fixed result (no benchmark runs here): self-contained,
 * and rendered by headless Chromium with the same numbers as the JSON.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { renderReport } from '../bench/report.js';
import { CHROMIUM, checkReportDom, chromiumAvailable, renderDom } from '../bench/report-check.js';
import { fixedBenchResult } from './bench-fixture.js';

describe('the report document', () => {
  it('references no network resource: no http(s) URL, no src/href, no url() or @import', () => {
    const html = renderReport(fixedBenchResult());
    expect(html).not.toMatch(/https?:\/\//i);
    expect(html).not.toMatch(/\s(src|href)=/i);
    expect(html).not.toMatch(/url\(|@import|@font-face/i);
  });

  it('escapes text from the run (notes, CPU model) instead of injecting it', () => {
    const html = renderReport(fixedBenchResult());
    expect(html).toContain('a note with &lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;');
    expect(html).toContain('Test CPU &lt;model&gt; &amp; co');
    expect(html.match(/<script/g)).toHaveLength(2); // the embedded JSON and the layout marker
  });
});

const skip = !chromiumAvailable() ? `${CHROMIUM} is absent (Debian package chromium): cannot render the report` : '';
describe.skipIf(skip !== '')(`the report rendered in headless Chromium${skip ? ` — skipped: ${skip}` : ''}`, () => {
  let dir = '';
  let dom = '';
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'dmaemu-report-'));
    const file = join(dir, 'report.html');
    writeFileSync(file, renderReport(fixedBenchResult()));
    dom = await renderDom(file);
  }, 120_000); // chromium's start is slow on a busy 2-core machine (renderDom bounds it at 90 s)
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('shows every figure, chart point, bar and mark with the JSON\'s numbers, laid out', () => {
    expect(dom).toContain('data-rendered="yes"');
    expect(checkReportDom(dom, fixedBenchResult())).toEqual([]);
  });

  it('the check fails when a figure value differs from the JSON', () => {
    const r = fixedBenchResult();
    r.figures[3].value = 5.32;
    // Printed with 3 digits both are 5.32: the exact data-value is what tells them apart.
    expect(checkReportDom(dom, r)).toEqual(['figure iotlb-hit-ns: data-value 5.320312496337465 ≠ JSON 5.32', "the embedded bench-data JSON differs from the run's"]);
  });

  it('the check fails when a chart point or a bar differs from the JSON', () => {
    const r = fixedBenchResult();
    const s0 = r.series[0];
    const s2 = r.series[2];
    if (s0.kind !== 'lines' || s2.kind !== 'bars') throw new Error('fixture order changed');
    s0.lines[1].points[2].y = 129;
    s2.bars[1].value = 1.9;
    const problems = checkReportDom(dom, r);
    expect(problems).toContain("chart bandwidth-vs-size: point 5 is (262144, 128.94) on line 1, the JSON's (262144, 129) on line 1");
    expect(problems).toContain(`chart scaling-devices: bar 1 is 2 devices=${fixedBenchResult().figures[7].value}, the JSON's 2 devices=1.9`);
  });

  it('the check fails when the page script did not run', () => {
    expect(checkReportDom(renderReport(fixedBenchResult()), fixedBenchResult())).toContain('the page script did not run (body has no data-rendered="yes")');
  });
});
