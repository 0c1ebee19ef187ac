/** Helpers shared by the machine tests. */
import { afterEach } from 'vitest';
import type { Machine, DriverPool } from '../src/index.js';

/**
 * Arrays a test file pushes its machines and driver pools into; after each test every pool, then
 * every machine, is closed and the arrays are emptied (so no worker outlives its test).
 */
export function closeAfterEach(): { machines: Machine[]; pools: DriverPool[] } {
  const machines: Machine[] = [];
  const pools: DriverPool[] = [];
  afterEach(async () => {
    await Promise.all(pools.splice(0).map((p) => p.close()));
    await Promise.all(machines.splice(0).map((m) => m.close()));
  });
  return { machines, pools };
}
export function pattern(len: number, seed: number): Uint8Array {
  const out = new Uint8Array(len);
  let x = seed * 2654435761 + 1;
  for (let i = 0; i < len; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

export function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

export function allBytes(a: Uint8Array, v: number): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== v) return false;
  return true;
}

/** Waits (without spinning) until f() holds; throws after about 5 s. */
export async function until(f: () => boolean): Promise<void> {
  for (let i = 0; i < 5000 && !f(); i++) await new Promise((r) => setTimeout(r, 1));
  if (!f()) throw new Error('timed out');
}
