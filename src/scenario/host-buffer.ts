/**
 * A workload's host buffers: the RAM a driver DMAs to or from. Contiguous: one block per buffer.
 * Scattered: single 4 KiB pages spread through RAM (each page starts at a random place in the
 * allowed range), as user pages or a fragmented page cache give a driver — mapSg makes them one
 * segment under an IOMMU and leaves them many without one. For the `pool` strategy every buffer
 * of a role is carved from one arena (one block, or the concatenation of the buffers' pages), so
 * the arena can be mapped once.
 */
import { type Pa, PAGE_SIZE, pageUp, pageDown } from '../addresses.js';
import type { GuestRam, RamBuffer } from '../memory/guest-ram.js';
import type { AllocOptions } from '../memory/frame-allocator.js';
import type { SgEntry } from '../dma/scatterlist.js';
import { DmaError } from '../errors.js';
import type { Random } from './random.js';

export interface HostBuffer {
  /** How the device uses it: it reads a to-device buffer and writes a from-device one. */
  readonly dir: 'to-device' | 'from-device';
  /** Its bytes in order (one piece when contiguous; whole pages when scattered). */
  readonly pieces: readonly SgEntry[];
}

export interface HostBufferSet {
  readonly buffers: readonly HostBuffer[];
  /** Every buffer's pieces as one mappable range (only when asked for an arena). */
  readonly arena: HostBuffer | null;
  free(): void;
}

export interface HostBufferSpec {
  layout: 'contiguous' | 'scattered';
  above?: number;
  below?: number;
}

/** `count` buffers of `bytes` each (rounded up to pages), all with direction `dir`. */
export function allocHostBuffers(ram: GuestRam, spec: HostBufferSpec, bytes: number, count: number, dir: HostBuffer['dir'], rand: Random, arena: boolean): HostBufferSet {
  const where: AllocOptions = { ...(spec.above !== undefined ? { above: spec.above } : {}), ...(spec.below !== undefined ? { below: spec.below } : {}) };
  const size = pageUp(bytes);
  const owned: RamBuffer[] = [];
  const free = () => {
    for (const b of owned.splice(0)) ram.free(b);
  };
  try {
    if (spec.layout === 'contiguous') {
      if (arena) {
        const block = ram.alloc(size * count, where);
        owned.push(block);
        const buffers = Array.from({ length: count }, (_, i) => ({ dir, pieces: [{ pa: (block.pa + i * size) as Pa, len: size }] }));
        return { buffers, arena: { dir, pieces: [{ pa: block.pa, len: size * count }] }, free };
      }
      const buffers = Array.from({ length: count }, () => {
        const b = ram.alloc(size, where);
        owned.push(b);
        return { dir, pieces: [{ pa: b.pa, len: size }] };
      });
      return { buffers, arena: null, free };
    }
    const buffers = Array.from({ length: count }, () => {
      const pieces: SgEntry[] = [];
      for (let off = 0; off < size; off += PAGE_SIZE) {
        const p = scatteredPage(ram, where, rand);
        owned.push(p);
        pieces.push({ pa: p.pa, len: PAGE_SIZE });
      }
      return { dir, pieces };
    });
    return { buffers, arena: arena ? { dir, pieces: buffers.flatMap((b) => b.pieces) } : null, free };
  } catch (e) {
    free();
    if (e instanceof DmaError && e.code === 'ENOMEM') {
      throw new DmaError('ENOMEM', `workload buffers: ${count} × ${size} bytes (${spec.layout}${where.above !== undefined ? `, above ${where.above}` : ''}${where.below !== undefined ? `, below ${where.below}` : ''}) do not fit in guest RAM: ${e.message}`, { cause: e });
    }
    throw e;
  }
}

/** One page at a random place in the allowed part of RAM (first fit from there, else anywhere allowed). */
function scatteredPage(ram: GuestRam, where: AllocOptions, rand: Random): RamBuffer {
  const spans = ram.regions
    .map((r) => ({ lo: Math.max(r.base, where.above ?? 0), hi: Math.min(r.base + r.size, where.below ?? Infinity) }))
    .filter((s) => s.hi - s.lo >= PAGE_SIZE);
  const total = spans.reduce((a, s) => a + (s.hi - s.lo), 0);
  let x = rand() * total;
  for (const s of spans) {
    if (x < s.hi - s.lo) {
      const start = pageUp(s.lo) + pageDown(x);
      try {
        return ram.alloc(PAGE_SIZE, { ...where, above: Math.min(start, pageDown(s.hi - PAGE_SIZE)) });
      } catch (e) {
        if (!(e instanceof DmaError && e.code === 'ENOMEM')) throw e;
        break; // the top of the span is full: first fit anywhere allowed
      }
    }
    x -= s.hi - s.lo;
  }
  return ram.alloc(PAGE_SIZE, where);
}
