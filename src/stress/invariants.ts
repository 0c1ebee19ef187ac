/**
 * The stress runner's invariants, by name, and the violation record a check produces.
 *   data             every completed transfer's bytes are exactly what was written (patterns,
 *                    checked after sync/unmap); a faulted DMA left its target untouched
 *   completion-once  every submitted transfer completes exactly once (ids): no completion for an
 *                    id not in flight, none missing at the end, main-thread and driver counts agree
 *   strict-unmap     after a strict unmap returns no device access lands on the page (its poison
 *                    is intact when checked before the page is freed); in lazy mode the same after
 *                    a flush; strict mode counts no stale IOTLB access
 *   expected-faults  the deliberately illegal DMAs fault (lazy: or hit a stale entry), legal ones
 *                    never fault, and no descriptor is rejected as invalid
 *   no-leak          at the end: live mappings, IOVA pages (after flushCaches), bounce slots and RAM
 *                    pages are back to their baselines, page-table pages after close too
 *   counters         bytes submitted = bytes completed + bytes faulted, per device and in total,
 *                    as the drivers, the main thread and the devices' counters see them
 *   hostile-isolation  no byte outside a hostile device's writable mappings changes because of it
 *                      (its guard, canary and read-only pages; stress-hostile.ts)
 *   fault-accounting   every access a hostile device made that the IOMMU refused is one fault
 *                      record or one counted drop, kept apart from the honest devices' by
 *                      requester ID (stress-hostile.ts)
 */
import type { StressEvent } from './event-history.js';

export const INVARIANTS = ['data', 'completion-once', 'strict-unmap', 'expected-faults', 'no-leak', 'counters', 'hostile-isolation', 'fault-accounting'] as const;
export type InvariantName = (typeof INVARIANTS)[number];

export interface Violation {
  invariant: InvariantName;
  message: string;
  /** Driver thread (-1: found by the main thread). */
  thread: number;
  /** The shortest event history that shows it (empty for end-of-run checks). */
  events: StressEvent[];
}

export function emptyInvariantCounts(): Record<InvariantName, number> {
  return Object.fromEntries(INVARIANTS.map((n) => [n, 0])) as Record<InvariantName, number>;
}
