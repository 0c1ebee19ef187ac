/** A benchmark figure and its goal, as printed and as written with --json. */
import { cpus, totalmem } from 'node:os';

export interface Figure {
  id: string;
  value: number;
  unit: string;
  goal: { op: '>=' | '<='; value: number };
  note?: string;
}

export interface FigureResult extends Figure {
  met: boolean;
}

export function judge(f: Figure): FigureResult {
  return { ...f, met: f.goal.op === '>=' ? f.value >= f.goal.value : f.value <= f.goal.value };
}

export function machineInfo() {
  const c = cpus();
  return { node: process.version, cpu: c[0]?.model ?? 'unknown', cores: c.length, memoryGiB: Math.round(totalmem() / 2 ** 30), platform: `${process.platform}-${process.arch}` };
}

export function formatFigures(results: FigureResult[]): string {
  const rows = [
    ['figure', 'value', 'goal', 'met', 'note'],
    ...results.map((r) => [r.id, `${r.value.toPrecision(3)} ${r.unit}`, `${r.goal.op} ${r.goal.value} ${r.unit}`, r.met ? 'met' : 'NOT MET', r.note ?? '']),
  ];
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((x, c) => x.padEnd(w[c])).join('  ').trimEnd()).join('\n');
}
