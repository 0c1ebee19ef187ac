import { describe, it, expect } from 'vitest';
import { Prng } from '../src/stress/prng.js';
import { generateOps, devicesOfThread, MAX_OP_BYTES, type OpStreamParams } from '../src/stress/op-generator.js';

const params = (p: Partial<OpStreamParams> = {}): OpStreamParams => ({ seed: 42, thread: 0, threads: 2, devices: 2, mode: 'strict', ...p });

describe('stress PRNG (xoshiro128**)', () => {
  it('gives the same stream for the same seed and stream index', () => {
    const a = new Prng(7, 1);
    const b = new Prng(7, 1);
    const xs = Array.from({ length: 100 }, () => a.u32());
    expect(Array.from({ length: 100 }, () => b.u32())).toEqual(xs);
  });

  it('gives different streams for different stream indices of one seed', () => {
    const a = new Prng(7, 0);
    const b = new Prng(7, 1);
    expect(Array.from({ length: 8 }, () => a.u32())).not.toEqual(Array.from({ length: 8 }, () => b.u32()));
  });

  it('keeps int(n) within [0, n) and logUniform within its bounds', () => {
    const r = new Prng(3);
    for (let i = 0; i < 10_000; i++) {
      const k = r.int(10);
      expect(k >= 0 && k < 10).toBe(true);
      const s = r.logUniform(1, MAX_OP_BYTES);
      expect(s >= 1 && s <= MAX_OP_BYTES).toBe(true);
    }
  });
});

describe('stress op generator', () => {
  it('generates the same op sequence for the same seed and thread', () => {
    expect(generateOps(params(), 500)).toEqual(generateOps(params(), 500));
  });

  it('generates different sequences for another seed or another thread', () => {
    const base = generateOps(params(), 50);
    expect(generateOps(params({ seed: 43 }), 50)).not.toEqual(base);
    expect(generateOps(params({ thread: 1 }), 50)).not.toEqual(base);
  });

  it('mixes every op kind, sizes up to 256 KiB, sub-page offsets and both buffer placements', () => {
    const ops = generateOps(params(), 5000);
    const kinds = new Set(ops.map((o) => o.kind));
    expect(kinds.size).toBe(8);
    expect(Math.max(...ops.map((o) => o.len))).toBeGreaterThan(128 * 1024);
    expect(Math.max(...ops.map((o) => o.len))).toBeLessThanOrEqual(MAX_OP_BYTES);
    expect(Math.min(...ops.map((o) => o.len))).toBeLessThan(64);
    expect(ops.some((o) => o.srcOffset % 4096 !== 0)).toBe(true);
    expect(ops.some((o) => o.high) && ops.some((o) => !o.high)).toBe(true);
    expect(new Set(ops.map((o) => o.dstDir))).toEqual(new Set(['from-device', 'bidirectional']));
  });

  it('makes the deliberately illegal ops a few percent of the mix', () => {
    const ops = generateOps(params(), 20_000);
    const illegal = ops.filter((o) => ['dma-unmapped', 'dma-to-device-mapping', 'use-after-unmap', 'unmap-in-flight'].includes(o.kind)).length;
    expect(illegal / ops.length).toBeGreaterThan(0.03);
    expect(illegal / ops.length).toBeLessThan(0.1);
  });

  it('splits a copy-sg destination into 2 to 4 entries that sum to its length', () => {
    for (const o of generateOps(params(), 3000).filter((x) => x.kind === 'copy-sg')) {
      expect(o.sg.reduce((a, b) => a + b, 0)).toBe(o.len);
      expect(o.sg.length).toBeGreaterThanOrEqual(Math.min(2, o.len));
      expect(o.sg.length).toBeLessThanOrEqual(4);
      for (const n of o.sg) expect(n).toBeGreaterThan(0);
    }
  });

  it('generates no IOMMU-only illegal op without an IOMMU', () => {
    const kinds = new Set(generateOps(params({ mode: 'off' }), 5000).map((o) => o.kind));
    expect(kinds.has('dma-to-device-mapping') || kinds.has('use-after-unmap') || kinds.has('unmap-in-flight')).toBe(false);
    expect(kinds.has('dma-unmapped')).toBe(true);
  });

  it('generates no exclusive op for a thread that shares its device with another thread', () => {
    const ops = generateOps(params({ threads: 2, devices: 1 }), 5000);
    expect(ops.some((o) => o.exclusive)).toBe(false);
    expect(new Set(ops.map((o) => o.device))).toEqual(new Set([0]));
  });

  it('gives each thread its own devices when there are enough', () => {
    expect(devicesOfThread(0, 2, 4)).toEqual({ devices: [0, 2], owned: true });
    expect(devicesOfThread(1, 2, 4)).toEqual({ devices: [1, 3], owned: true });
    expect(devicesOfThread(2, 3, 2)).toEqual({ devices: [0], owned: false });
  });
});
