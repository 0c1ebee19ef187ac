import { describe, it, expect } from 'vitest';
import { Machine, MiB } from '../src/index.js';
import { DmaPool } from '../src/dma/dma-pool.js';

describe('DmaPool (dma_pool)', () => {
  it('freeing a block twice is EINVAL naming the pool, device and DMA address, and the block is never handed out twice', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
    try {
      const dev = await m.addDevice({ bdf: '00:05.0' });
      const p = new DmaPool(m.dma, dev, 'prp list 256', 256);
      const a = p.alloc();
      p.release(a);
      let err: unknown = null;
      try {
        p.release(a);
      } catch (e) {
        err = e;
      }
      expect(err).toMatchObject({ code: 'EINVAL' });
      expect(String((err as Error).message)).toMatch(new RegExp(`prp list 256.*0000:00:05\\.0.*0x${a.addr.toString(16)}.*freed twice`));
      const x = p.alloc();
      const y = p.alloc();
      expect(x.addr).not.toBe(y.addr);
      expect(p.inUse()).toBe(2);
      p.release(x);
      p.release(y);
      p.destroy();
    } finally {
      await m.close();
    }
  });
});
