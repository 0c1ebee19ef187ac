/**
 * What the drivers' verified-I/O entry points share: a deterministic byte pattern, CPU reads and
 * writes across a mapped scatterlist's buffers, and the comparison. Plain driver-side helpers.
 */
import type { GuestRam } from '../memory/guest-ram.js';
import type { DmaSegment, DmaSgTable } from '../dma/dma-api.js';

/** The first len bytes of the segments. */
export function truncate(segments: readonly DmaSegment[], len: number): DmaSegment[] {
  const out: DmaSegment[] = [];
  for (const s of segments) {
    if (len <= 0) break;
    out.push({ addr: s.addr, len: Math.min(s.len, len) });
    len -= s.len;
  }
  return out;
}

/** The bytes a workload I/O writes: a function of the seed only. */
export function ioPattern(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  let x = (seed * 2654435761 + 0x9e3779b9) >>> 0;
  for (let i = 0; i < len; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

/** Writes bytes across the table's buffers (CPU side), in order. */
export function writeEntries(ram: GuestRam, sg: DmaSgTable, bytes: Uint8Array): void {
  let k = 0;
  for (const e of sg.entries) {
    if (k >= bytes.length) break;
    const n = Math.min(e.len, bytes.length - k);
    ram.write(e.pa, bytes.subarray(k, k + n));
    k += n;
  }
}

/** Reads the first len bytes across the table's buffers (CPU side). */
export function readEntries(ram: GuestRam, sg: DmaSgTable, len: number): Uint8Array {
  const out = new Uint8Array(len);
  let k = 0;
  for (const e of sg.entries) {
    if (k >= len) break;
    const n = Math.min(e.len, len - k);
    out.set(ram.read(e.pa, n), k);
    k += n;
  }
  return out;
}

/** Index of the first differing byte, or -1. */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}
