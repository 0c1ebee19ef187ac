/**
 * Byte patterns of the stress runner: each transfer's source bytes are a cheap function of its
 * tag (a 32-bit word per 4 bytes), so a destination can be checked byte for byte; poison is one
 * byte value over a freed or unmapped buffer, so any later write shows.
 */
export function makePattern(tag: number, len: number): Uint8Array {
  const words = new Uint32Array(Math.ceil(len / 4));
  let x = tag | 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x + i;
  }
  return new Uint8Array(words.buffer, 0, len);
}

/** Index of the first byte where a and b differ (-1: equal; a shorter array differs at its end). */
export function firstMismatch(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  if (a.byteOffset % 4 === 0 && b.byteOffset % 4 === 0) {
    const wa = new Uint32Array(a.buffer, a.byteOffset, n >>> 2);
    const wb = new Uint32Array(b.buffer, b.byteOffset, n >>> 2);
    let k = 0;
    while (k < wa.length && wa[k] === wb[k]) k++;
    i = k * 4;
  }
  for (; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** Index of the first byte of a that is not `value` (-1: all are). */
export function firstNot(a: Uint8Array, value: number): number {
  const v = value & 0xff;
  let i = 0;
  if (a.byteOffset % 4 === 0) {
    const w = new Uint32Array(a.buffer, a.byteOffset, a.length >>> 2);
    const vv = (v * 0x01010101) >>> 0;
    let k = 0;
    while (k < w.length && w[k] === vv) k++;
    i = k * 4;
  }
  for (; i < a.length; i++) if (a[i] !== v) return i;
  return -1;
}

/** The poison byte of a tag: never equal to the fill byte the same tag gives (tag & 0xff). */
export function poisonOf(tag: number): number {
  const p = ((tag >>> 8) & 0xff) | 0x80;
  return p === (tag & 0xff) ? p ^ 0x40 : p;
}
