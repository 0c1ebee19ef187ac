/**
 * Test helpers for Chrome Trace Event JSON as the DMA timeline exports it: the validity check
 * Perfetto's reader needs, and finding a named track and its events. Shared by trace.test.ts and
 * the `dmaemu run --trace` tests.
 */
import { expect } from 'vitest';
import type { ChromeTrace, ChromeTraceEvent } from '../src/index.js';

/**
 * Checks a trace is valid Trace Event JSON as Perfetto reads it: a JSON round trip keeps it,
 * every event has the fields its phase needs, every B has its E on its track, and every flow id
 * has one `s` inside a slice of its thread and one later `f` (bp "e") inside a slice of its own.
 */
export function expectValidTrace(t: ChromeTrace): void {
  const text = JSON.stringify(t);
  expect(JSON.parse(text)).toEqual(t);
  expect(Array.isArray(t.traceEvents)).toBe(true);
  expect(['ns', 'ms']).toContain(t.displayTimeUnit);
  const open = new Map<string, number>();
  const slices = new Map<string, ChromeTraceEvent[]>();
  const flows = new Map<string, { s: ChromeTraceEvent[]; f: ChromeTraceEvent[] }>();
  let lastTs = -Infinity;
  for (const e of t.traceEvents) {
    expect(typeof e.name).toBe('string');
    expect(Number.isInteger(e.pid) && Number.isInteger(e.tid)).toBe(true);
    expect(Number.isFinite(e.ts)).toBe(true);
    expect(e.ts).toBeGreaterThanOrEqual(lastTs); // sorted
    lastTs = e.ts;
    const track = `${e.pid}/${e.tid}`;
    switch (e.ph) {
      case 'M':
        expect(e.args && typeof e.args === 'object').toBe(true);
        break;
      case 'X':
        expect(Number.isFinite(e.dur) && e.dur! >= 0).toBe(true);
        if (!slices.has(track)) slices.set(track, []);
        slices.get(track)!.push(e);
        break;
      case 'B':
        open.set(track, (open.get(track) ?? 0) + 1);
        break;
      case 'E':
        expect(open.get(track) ?? 0).toBeGreaterThan(0);
        open.set(track, open.get(track)! - 1);
        break;
      case 'i':
        expect(['g', 'p', 't']).toContain(e.s);
        break;
      case 'C':
        expect(Object.values(e.args ?? {}).every((v) => typeof v === 'number' && Number.isFinite(v))).toBe(true);
        expect(Object.keys(e.args ?? {}).length).toBeGreaterThan(0);
        break;
      case 's':
      case 'f': {
        expect(typeof e.id).toBe('string');
        if (e.ph === 'f') expect(e.bp).toBe('e');
        const f = flows.get(e.id!) ?? { s: [], f: [] };
        f[e.ph].push(e);
        flows.set(e.id!, f);
        break;
      }
      default:
        throw new Error(`unexpected phase ${e.ph}`);
    }
  }
  for (const n of open.values()) expect(n).toBe(0);
  const inside = (e: ChromeTraceEvent) => (slices.get(`${e.pid}/${e.tid}`) ?? []).some((x) => x.ts <= e.ts && e.ts <= x.ts + x.dur!);
  for (const [id, f] of flows) {
    expect(f.s, id).toHaveLength(1);
    expect(f.f, id).toHaveLength(1);
    expect(f.s[0].ts).toBeLessThanOrEqual(f.f[0].ts);
    expect(inside(f.s[0]), `flow ${id} start binds to a slice`).toBe(true);
    expect(inside(f.f[0]), `flow ${id} end binds to a slice`).toBe(true);
  }
}

/** The tid of the thread track named `name`, or undefined. */
export function trackOf(t: ChromeTrace, name: string): { pid: number; tid: number } | undefined {
  const m = t.traceEvents.find((e) => e.ph === 'M' && e.name === 'thread_name' && e.args?.name === name);
  return m ? { pid: m.pid, tid: m.tid } : undefined;
}

export function eventsOn(t: ChromeTrace, track: { pid: number; tid: number }, ph: string, name?: string): ChromeTraceEvent[] {
  return t.traceEvents.filter((e) => e.pid === track.pid && e.tid === track.tid && e.ph === ph && (name === undefined || e.name === name));
}
