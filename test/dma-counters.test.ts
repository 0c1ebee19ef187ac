import { describe, it, expect } from 'vitest';
import { DmaCounters, DMA_COUNTER } from '../src/dma/dma-counters.js';

describe('DmaCounters', () => {
  it('claiming every slot leaves the counts of the first slot intact (owner words do not overlap the counts)', () => {
    const first = DmaCounters.create();
    first.claim();
    first.add(DMA_COUNTER.maps, 5);
    first.add(DMA_COUNTER.mappedBytes, 4096);
    const others = Array.from({ length: 63 }, () => DmaCounters.attach(first.handle));
    for (const c of others) c.claim();
    for (const c of others) c.add(DMA_COUNTER.unmaps, 1);
    const v = first.read();
    expect(v.maps).toBe(5);
    expect(v.mappedBytes).toBe(4096);
    expect(v.unmaps).toBe(63);
    expect(() => DmaCounters.attach(first.handle).claim()).toThrow(expect.objectContaining({ code: 'ENOSPC' }));
  });
});
