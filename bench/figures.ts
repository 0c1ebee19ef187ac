/** A benchmark figure and its goal, as printed and as written with --json. */
import { cpus, loadavg, totalmem } from 'node:os';

export interface Figure {
  id: string;
  value: number;
  unit: string;
  /** null: reported for information (no goal, no verdict). */
  goal: { op: '>=' | '<='; value: number } | null;
  note?: string;
}

export interface FigureResult extends Figure {
  /** null when the figure has no goal. */
  met: boolean | null;
}

export function judge(f: Figure): FigureResult {
  const g = f.goal;
  return { ...f, met: g === null ? null : g.op === '>=' ? f.value >= g.value : f.value <= g.value };
}

export interface MachineInfo {
  node: string;
  cpu: string;
  cores: number;
  memoryGiB: number;
  platform: string;
  /** When the run started (ISO 8601). */
  date: string;
  /** 1-minute load average when the run started: other work on the machine makes figures noisy. */
  loadAverage: number;
}

export function machineInfo(): MachineInfo {
  const c = cpus();
  return {
    node: process.version,
    cpu: c[0]?.model ?? 'unknown',
    cores: c.length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    platform: `${process.platform}-${process.arch}`,
    date: new Date().toISOString(),
    loadAverage: Math.round(loadavg()[0] * 100) / 100,
  };
}

/** A figure's value as the table and the report print it (3 significant digits). */
export function formatValue(v: number): string {
  return v.toPrecision(3);
}

export function formatFigures(results: FigureResult[]): string {
  const rows = [
    ['figure', 'value', 'goal', 'met', 'note'],
    ...results.map((r) => [r.id, `${formatValue(r.value)} ${r.unit}`, r.goal === null ? '—' : `${r.goal.op} ${r.goal.value} ${r.unit}`, r.met === null ? 'info' : r.met ? 'met' : 'NOT MET', r.note ?? '']),
  ];
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) => r.map((x, c) => x.padEnd(w[c])).join('  ').trimEnd()).join('\n');
}
