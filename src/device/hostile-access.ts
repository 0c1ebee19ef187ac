/**
 * A hostile burst: what the hostile device model (workers/models/hostile.ts) is asked to do, and
 * the access generator both the device and a checker use, so a test can recompute every access
 * the device made from the seed alone.
 *
 * The command block lives in guest RAM (a coherent DMA buffer of the driver); the device reads it
 * by DMA, like an NVMe command's data pointer, and writes its results back into it by DMA.
 * Layout, little endian, HOSTILE_BLOCK_SIZE bytes:
 *     0 seed (u32)            4 count (u32): accesses to make in random mode
 *     8 mode (u32): 0 random, 1 list           12 pattern (u32): the byte writes store (low 8 bits)
 *    16 writePercent (u32, 0..100)             20 maxLen (u32, 1..4096)
 *    24 targets (u32, 0..8): 0 = the whole DMA-mask space      28 spares (u32, 0..8)
 *    32 list DMA address (u64)                 40 list entries (u32)   44 reserved
 *    48 targets[8]: base (u64), size (u64)     176 spares[8]: base (u64), size (u64)
 *   304 results, written by the device: attempted (u32), refused (u32), moved (u32), reserved,
 *       bytesRead (u64), bytesWritten (u64)
 * Writers: the driver (CPU) writes bytes 0..303 before it submits the descriptor; the device
 * writes 304..335 by DMA before it writes the completion, so a completion publishes them.
 * List mode: `list entries` entries of HOSTILE_LIST_ENTRY bytes at the list DMA address, read by
 * DMA: addr (u64), len (u32), flags (u32, bit 0 = write).
 *
 * Random mode, per access: an address drawn uniformly from the targets cut to the bus the DMA mask
 * gives (all of [0, 2^min(mask, 52)) when there are none) minus the spare ranges (the device's own rings and this block: a device that wrecks its own
 * queue stops reporting), a length in [1, maxLen] cut at the page end (never crossing a page)
 * and before the next spare range, a write with probability writePercent %. Targets that lie
 * wholly inside spare ranges or beyond the mask leave nothing to draw: the driver refuses the burst ('EINVAL') and
 * the device completes such a command block 'invalid'. The generator is xorshift32 on the seed.
 */
import { DmaError } from '../errors.js';

export const HOSTILE_BLOCK_SIZE = 512;
export const HOSTILE_RESULT_OFFSET = 304;
export const HOSTILE_RESULT_SIZE = 32;
export const HOSTILE_LIST_ENTRY = 16;
export const HOSTILE_MAX_RANGES = 8;
export const HOSTILE_MODE_RANDOM = 0;
export const HOSTILE_MODE_LIST = 1;

const PAGE = 4096;
const TARGETS_AT = 48;
const SPARES_AT = 176;

export interface AddressRange {
  base: number;
  size: number;
}

export interface HostileBurst {
  seed: number;
  /** Accesses in random mode (list mode: the list's length). */
  count: number;
  mode: 'random' | 'list';
  /** Byte that writes store. */
  pattern: number;
  writePercent: number;
  maxLen: number;
  /** Where random addresses fall; empty = the whole DMA-mask space. */
  targets: AddressRange[];
  /** Ranges random accesses never touch. */
  spares: AddressRange[];
  /** List mode: DMA address and entry count of the access list. */
  listAddr: number;
  listEntries: number;
}

export interface HostileResult {
  attempted: number;
  refused: number;
  moved: number;
  bytesRead: number;
  bytesWritten: number;
}

export interface HostileAccess {
  addr: number;
  len: number;
  write: boolean;
}

const u64 = (v: DataView, at: number): number => v.getUint32(at + 4, true) * 2 ** 32 + v.getUint32(at, true);
function setU64(v: DataView, at: number, n: number): void {
  const hi = Math.floor(n / 2 ** 32);
  v.setUint32(at, n - hi * 2 ** 32, true);
  v.setUint32(at + 4, hi, true);
}

/** Checks a burst as the driver helper receives it; 'EINVAL' names the field. */
export function checkBurst(b: HostileBurst, who: string): void {
  const bad = (what: string): never => {
    throw new DmaError('EINVAL', `${who}: hostile burst ${what}`);
  };
  if (!Number.isInteger(b.count) || b.count < 0 || b.count > 0xffffffff) bad(`count ${String(b.count)} must be an integer in [0, 2^32)`);
  if (!Number.isInteger(b.maxLen) || b.maxLen < 1 || b.maxLen > PAGE) bad(`maxLen ${String(b.maxLen)} must be in [1, ${PAGE}]`);
  if (!Number.isInteger(b.writePercent) || b.writePercent < 0 || b.writePercent > 100) bad(`writePercent ${String(b.writePercent)} must be in [0, 100]`);
  if (b.targets.length > HOSTILE_MAX_RANGES || b.spares.length > HOSTILE_MAX_RANGES) bad(`takes at most ${HOSTILE_MAX_RANGES} targets and ${HOSTILE_MAX_RANGES} spares`);
  for (const r of [...b.targets, ...b.spares]) {
    if (!Number.isSafeInteger(r.base) || !Number.isSafeInteger(r.size) || r.base < 0 || r.size < 1 || r.base + r.size > 2 ** 53) {
      bad(`range {base: ${String(r.base)}, size: ${String(r.size)}} is not a DMA address range`);
    }
  }
  if (b.mode === 'random' && b.targets.length > 0 && drawable(b.targets, b.spares).size.length === 0) {
    const t = b.targets.map((r) => `[0x${r.base.toString(16)}, 0x${(r.base + r.size).toString(16)})`).join(', ');
    bad(`targets ${t} lie wholly inside the spared ranges (the device's rings and command block): no address is left to draw`);
  }
}

/** The parts of `targets` outside every spare range, as parallel arrays of bases and sizes. */
function drawable(targets: readonly AddressRange[], spares: readonly AddressRange[]): { base: number[]; size: number[] } {
  const base: number[] = [];
  const size: number[] = [];
  for (const t of targets) {
    const end = t.base + t.size;
    const cut = spares
      .map((s) => [Math.max(s.base, t.base), Math.min(s.base + s.size, end)] as const)
      .filter(([a, z]) => a < z)
      .sort((x, y) => x[0] - y[0]);
    let at = t.base;
    for (const [a, z] of cut) {
      if (a > at) {
        base.push(at);
        size.push(a - at);
      }
      at = Math.max(at, z);
    }
    if (end > at) {
      base.push(at);
      size.push(end - at);
    }
  }
  return { base, size };
}

export function encodeBurst(v: DataView, at: number, b: HostileBurst): void {
  v.setUint32(at, b.seed >>> 0, true);
  v.setUint32(at + 4, b.count, true);
  v.setUint32(at + 8, b.mode === 'list' ? HOSTILE_MODE_LIST : HOSTILE_MODE_RANDOM, true);
  v.setUint32(at + 12, b.pattern & 0xff, true);
  v.setUint32(at + 16, b.writePercent, true);
  v.setUint32(at + 20, b.maxLen, true);
  v.setUint32(at + 24, b.targets.length, true);
  v.setUint32(at + 28, b.spares.length, true);
  setU64(v, at + 32, b.listAddr);
  v.setUint32(at + 40, b.listEntries, true);
  b.targets.forEach((r, i) => (setU64(v, at + TARGETS_AT + 16 * i, r.base), setU64(v, at + TARGETS_AT + 16 * i + 8, r.size)));
  b.spares.forEach((r, i) => (setU64(v, at + SPARES_AT + 16 * i, r.base), setU64(v, at + SPARES_AT + 16 * i + 8, r.size)));
  for (let i = HOSTILE_RESULT_OFFSET; i < HOSTILE_RESULT_OFFSET + HOSTILE_RESULT_SIZE; i += 4) v.setUint32(at + i, 0, true);
}

/** Decodes a command block (the device's copy of it); range counts are clamped to the table. */
export function decodeBurst(v: DataView, at: number): HostileBurst {
  const ranges = (from: number, n: number): AddressRange[] =>
    Array.from({ length: Math.min(n, HOSTILE_MAX_RANGES) }, (_, i) => ({ base: u64(v, at + from + 16 * i), size: u64(v, at + from + 16 * i + 8) }));
  return {
    seed: v.getUint32(at, true),
    count: v.getUint32(at + 4, true),
    mode: v.getUint32(at + 8, true) === HOSTILE_MODE_LIST ? 'list' : 'random',
    pattern: v.getUint32(at + 12, true) & 0xff,
    writePercent: Math.min(100, v.getUint32(at + 16, true)),
    maxLen: Math.max(1, Math.min(PAGE, v.getUint32(at + 20, true))),
    targets: ranges(TARGETS_AT, v.getUint32(at + 24, true)),
    spares: ranges(SPARES_AT, v.getUint32(at + 28, true)),
    listAddr: u64(v, at + 32),
    listEntries: v.getUint32(at + 40, true),
  };
}

/** The results as the device writes them: HOSTILE_RESULT_SIZE bytes at `at`. */
export function encodeResult(v: DataView, at: number, r: HostileResult): void {
  v.setUint32(at, r.attempted >>> 0, true);
  v.setUint32(at + 4, r.refused >>> 0, true);
  v.setUint32(at + 8, r.moved >>> 0, true);
  v.setUint32(at + 12, 0, true);
  setU64(v, at + 16, r.bytesRead);
  setU64(v, at + 24, r.bytesWritten);
}

export function decodeResult(v: DataView, at: number): HostileResult {
  return {
    attempted: v.getUint32(at, true),
    refused: v.getUint32(at + 4, true),
    moved: v.getUint32(at + 8, true),
    bytesRead: u64(v, at + 16),
    bytesWritten: u64(v, at + 24),
  };
}

export function encodeListEntry(v: DataView, at: number, a: HostileAccess): void {
  setU64(v, at, a.addr);
  v.setUint32(at + 8, a.len, true);
  v.setUint32(at + 12, a.write ? 1 : 0, true);
}

export function decodeListEntry(v: DataView, at: number, out: HostileAccess): HostileAccess {
  out.addr = u64(v, at);
  out.len = v.getUint32(at + 8, true);
  out.write = (v.getUint32(at + 12, true) & 1) !== 0;
  return out;
}

/** Random-mode accesses of a burst, in the order the device makes them. */
export class HostileAccessGenerator {
  private x: number;
  private readonly bases: number[];
  private readonly sizes: number[];
  private readonly total: number;
  private readonly spares: AddressRange[];

  constructor(
    private readonly b: HostileBurst,
    dmaMaskBits: number,
  ) {
    this.x = b.seed >>> 0 || 0x9e3779b9;
    // The bus is dmaMaskBits wide: targets are cut to what the device can drive.
    const bus = 2 ** Math.min(dmaMaskBits, 52);
    const targets = (b.targets.length > 0 ? b.targets : [{ base: 0, size: bus }])
      .filter((r) => r.base < bus)
      .map((r) => ({ base: r.base, size: Math.min(r.size, bus - r.base) }));
    // Draw only where no spare range is: rejection sampling never ends when the spares cover the targets.
    const d = drawable(targets, b.spares);
    this.bases = d.base;
    this.sizes = d.size;
    this.total = this.sizes.reduce((a, s) => a + s, 0);
    this.spares = b.spares;
  }

  /** False when the spare ranges cover every target: next() has nothing to give. */
  get drawable(): boolean {
    return this.total > 0;
  }

  /** xorshift32, as a fraction in [0, 1). */
  private rand(): number {
    let x = this.x;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.x = x >>> 0;
    return this.x / 2 ** 32;
  }

  /** Fills `out` with the next access. */
  next(out: HostileAccess): HostileAccess {
    if (this.total === 0) throw new DmaError('EINVAL', 'hostile burst: the spared ranges cover every target; no access to draw');
    // Two draws for the position: one 32-bit draw cannot reach every byte of a large range.
    let at = (this.rand() + this.rand() / 2 ** 32) * this.total;
    let i = 0;
    while (i < this.sizes.length - 1 && at >= this.sizes[i]) at -= this.sizes[i++];
    const addr = this.bases[i] + Math.min(Math.floor(at), this.sizes[i] - 1);
    const want = 1 + Math.floor(this.rand() * this.b.maxLen);
    let len = Math.min(want, PAGE - (addr % PAGE));
    // addr lies outside every spare: one that overlaps starts after it, and the access stops there.
    for (const s of this.spares) if (s.base > addr && s.base < addr + len) len = s.base - addr;
    out.addr = addr;
    out.len = len;
    out.write = this.rand() * 100 < this.b.writePercent;
    return out;
  }
}
