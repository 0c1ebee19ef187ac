/**
 * A machine's trace as its user sees it (`m.trace`, null when tracing is off): the rings every
 * thread of the machine records into, and their export as Chrome Trace Event JSON. Reading needs
 * only the shared rings, so it works while the machine runs and after `m.close()` ended its
 * workers (a CLI run closes the machine, then writes the file).
 */
import { writeFile } from 'node:fs/promises';
import { TraceRings, type TraceSnapshot } from './trace-ring.js';
import { toChromeTrace, type ChromeTrace } from './trace-export.js';

export class MachineTrace {
  constructor(readonly rings: TraceRings) {}

  /** Every ring's events recorded so far (raw, for tests and tools). */
  snapshot(): TraceSnapshot {
    return this.rings.snapshot();
  }

  /** The trace as a Chrome Trace Event object ({ traceEvents, displayTimeUnit, metadata }). */
  toChromeTrace(): ChromeTrace {
    return toChromeTrace(this.rings.snapshot());
  }

  /** Writes the Chrome Trace Event JSON to `path` (open it in Perfetto or chrome://tracing). */
  async writeChromeTrace(path: string): Promise<ChromeTrace> {
    const t = this.toChromeTrace();
    await writeFile(path, JSON.stringify(t));
    return t;
  }
}
