/**
 * Byte sizes as scenario files write them: a number of bytes, or text such as "4 KiB", "64MiB",
 * "4 GiB", "512" (binary units; K/M/G/T alone mean KiB/MiB/GiB/TiB, as Linux's memparse); and
 * sizes printed back the same way.
 */
import { z } from 'zod';

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, kib: 2 ** 10, m: 2 ** 20, mib: 2 ** 20, g: 2 ** 30, gib: 2 ** 30, t: 2 ** 40, tib: 2 ** 40 };

/** Bytes in `text`, or undefined when it is not a size. */
export function parseByteSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  if (!m) return undefined;
  const unit = UNITS[m[2].toLowerCase()];
  if (unit === undefined) return undefined;
  const n = Number(m[1]) * unit;
  return Number.isSafeInteger(n) ? n : undefined;
}

/** A zod schema for a byte size (number or text) → bytes. */
export const byteSize = z.union([z.number(), z.string()]).transform((v, ctx): number => {
  const n = typeof v === 'number' ? v : parseByteSize(v);
  if (n === undefined || !Number.isSafeInteger(n) || n < 0) {
    ctx.addIssue({ code: 'custom', message: `must be a byte count: a non-negative integer or text like "4 KiB", "64 MiB", "4 GiB"` });
    return z.NEVER;
  }
  return n;
});

/** A byte count as the summary prints it ("4 GiB", "12.1 MiB", "512 B"). */
export function fmtBytes(n: number): string {
  if (n >= 2 ** 30 && n % 2 ** 30 === 0) return `${n / 2 ** 30} GiB`;
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : n >= 2 ** 20 ? `${(n / 2 ** 20).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;
}
