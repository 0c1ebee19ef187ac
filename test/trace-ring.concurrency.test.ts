import { describe, it, expect, afterEach } from 'vitest';
import type { Worker } from 'node:worker_threads';
import { setImmediate as tick } from 'node:timers/promises';
import { TraceRings, TRACE_KIND, type TraceSnapshot } from '../src/trace/trace-ring.js';
import { toChromeTrace } from '../src/trace/trace-export.js';
import { runWorkersTogether } from './worker-harness.js';
import type { TraceWriterWorkerResult } from '../workers/trace-writer-worker.js';

const live = new Set<Worker>();
afterEach(async () => {
  await Promise.all([...live].map((w) => w.terminate()));
  live.clear();
});

/** Every ring of a writer holds that writer's events 0, 1, 2, ... in order, with time never going back. */
function expectPrefixes(s: TraceSnapshot, tags: Map<string, number>): void {
  for (const r of s.rings) {
    const tag = tags.get(r.name);
    if (tag === undefined) continue;
    let ts = -Infinity;
    r.events.forEach((e, k) => {
      if (e.kind !== TRACE_KIND.bounce || e.a !== tag || e.b !== k) throw new Error(`ring ${r.name}: event ${k} is ${JSON.stringify(e)}`);
      if (e.ts < ts) throw new Error(`ring ${r.name}: event ${k} goes back in time`);
      ts = e.ts;
    });
  }
}

describe('trace rings (concurrency)', () => {
  it('keeps two writer threads in their own rings, whole events only, while the main thread reads', async () => {
    const capacity = 20000;
    const rings = TraceRings.create({ rings: 4, eventsPerRing: capacity });
    const jobs = [
      { tag: 7, events: 15000 },
      { tag: 9, events: 26000 }, // overflows: keeps its first 20000, drops 6000
    ];
    const tags = new Map(jobs.map((j) => [`writer ${j.tag}`, j.tag]));
    let done = false;
    const run = runWorkersTogether<TraceWriterWorkerResult>('trace-writer-worker', jobs.map((j) => ({ trace: rings.handle, ...j })), live).finally(() => (done = true));
    let reads = 0;
    while (!done) {
      expectPrefixes(rings.snapshot(), tags); // mid-run: every published event is complete
      reads++;
      await tick();
    }
    const results = await run;
    expect(reads).toBeGreaterThan(0);
    expect(new Set(results.map((r) => r.ring)).size).toBe(2);
    expect(results.map((r) => r.dropped)).toEqual([0, 6000]);
    const s = rings.snapshot();
    expectPrefixes(s, tags);
    const byName = new Map(s.rings.map((r) => [r.name, r]));
    expect(byName.get('writer 7')!.events).toHaveLength(15000);
    expect(byName.get('writer 9')!.events).toHaveLength(capacity);
    expect(byName.get('writer 9')!.dropped).toBe(6000);
    const t = toChromeTrace(s);
    expect(t.metadata.droppedEvents).toBe(6000);
    expect(t.metadata.droppedByThread).toEqual({ 'writer 9': 6000 });
    expect(JSON.parse(JSON.stringify(t))).toEqual(t);
  });

  it('hands each claim its own ring and counts threads that found none', () => {
    const rings = TraceRings.create({ rings: 2, eventsPerRing: 4 });
    const a = rings.claim('driver', 'a');
    const b = rings.claim('device', 'b', 0x18);
    expect(a!.ring).not.toBe(b!.ring);
    expect(rings.claim('driver', 'c')).toBeNull();
    const s = rings.snapshot();
    expect(s.unringed).toBe(1);
    expect(s.rings.map((r) => [r.name, r.role, r.requesterId])).toEqual([
      ['a', 'driver', -1],
      ['b', 'device', 0x18],
    ]);
    expect(toChromeTrace(s).metadata.threadsWithoutRing).toBe(1);
  });

  it('refuses a trace larger than its memory bound with EINVAL naming the sizes', () => {
    expect(() => TraceRings.create({ rings: 4096, eventsPerRing: 1 << 20 })).toThrow(/EINVAL: trace: 4096 threads × 1048576 events/);
  });
});
