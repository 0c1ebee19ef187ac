/**
 * `dmaemu run --trace out.json`: the trace configuration a run gets (one ring per device, per
 * driver thread and the machine's own thread, `events` each) and the file written after the run
 * from the closed machine's rings, with a line saying where, how many events and how many a
 * full ring dropped.
 */
import { DmaError } from '../errors.js';
import type { MachineConfig } from '../machine-config.js';
import type { MachineTrace } from '../trace/machine-trace.js';
import type { Scenario } from '../scenario/scenario-schema.js';

/** Events each thread's ring holds by default with --trace (48 B each: 3 MiB per thread). */
export const RUN_TRACE_EVENTS = 65536;
/** Rings beyond devices and driver threads (the machine's thread, spares). */
const SPARE_RINGS = 4;

export function runTraceConfig(s: Scenario, events = RUN_TRACE_EVENTS): Pick<MachineConfig, 'trace'> {
  if (!Number.isSafeInteger(events) || events < 1 || events > 1 << 24) throw new DmaError('EINVAL', `run: --trace-events ${String(events)} must be an integer in [1, ${1 << 24}]`);
  const driverThreads = s.workloads.reduce((a, w) => a + (w.driverThreads > 1 ? w.driverThreads : 0), 0);
  return { trace: { enabled: true, eventsPerThread: events, threads: s.devices.length + driverThreads + SPARE_RINGS } };
}

/** Writes the Chrome trace to `path`; the line to print. */
export async function writeRunTrace(trace: MachineTrace | null, path: string): Promise<string> {
  if (!trace) throw new DmaError('EINVAL', `run: --trace ${path}: the machine ran without tracing`);
  const t = await trace.writeChromeTrace(path);
  const d = t.metadata.droppedEvents;
  return `trace: wrote ${t.traceEvents.length} events to ${path} (${d} dropped${d > 0 ? `: a thread's ring of ${t.metadata.eventsPerThread} was full; raise --trace-events` : ''}); open it in https://ui.perfetto.dev`;
}
