/** Measuring helpers shared by the bench suites. */
import { Bench } from 'tinybench';

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Median time per call of each function, in ns, from one tinybench run of `ms` per task. */
export async function timeNs(fns: Record<string, () => void>, ms: number): Promise<Record<string, number>> {
  const b = new Bench({ time: ms, warmupTime: Math.min(100, ms) });
  for (const [name, fn] of Object.entries(fns)) b.add(name, fn);
  await b.run();
  const out: Record<string, number> = {};
  for (const t of b.tasks) {
    const r = t.result as { latency?: { p50: number } } | undefined;
    if (!r?.latency) throw new Error(`bench task ${t.name} did not complete`);
    out[t.name] = r.latency.p50 * 1e6; // ms → ns
  }
  return out;
}
