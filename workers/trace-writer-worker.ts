/**
 * trace-writer-worker — one writer thread for the trace-ring concurrency test: claims its own
 * ring, waits for the start flag (test/worker-harness.ts protocol: word 1 READY, word 0 GO), then
 * records `events` instants whose a = tag and b = sequence number, posts what it did and exits.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { TraceRings, TRACE_KIND, type TraceRingsHandle } from '../src/trace/trace-ring.js';

export interface TraceWriterWorkerData {
  trace: TraceRingsHandle;
  tag: number;
  events: number;
  startFlag: SharedArrayBuffer;
}

export interface TraceWriterWorkerResult {
  ring: number;
  dropped: number;
}

const d = workerData as TraceWriterWorkerData;
const w = TraceRings.attach(d.trace).claim('driver', `writer ${d.tag}`);
if (!w) throw new Error(`writer ${d.tag}: no ring left`);
const flag = new Int32Array(d.startFlag);
Atomics.add(flag, 1, 1);
Atomics.notify(flag, 1);
Atomics.wait(flag, 0, 0);
for (let k = 0; k < d.events; k++) w.instant(TRACE_KIND.bounce, d.tag, k, 0, 0);
parentPort!.postMessage({ ring: w.ring, dropped: w.droppedEvents } satisfies TraceWriterWorkerResult);
