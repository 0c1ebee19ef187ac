import { describe, it, expect } from 'vitest';
import { Machine, MiB, dmaAddr } from '../src/index.js';
import { copyEngineIo } from '../src/scenario/copy-engine-io.js';
import type { IoContext } from '../src/scenario/io-model.js';

describe('copy-engine IoModel', () => {
  it('segments that cover fewer bytes than the I/O are refused with EINVAL before any descriptor is queued', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
    try {
      const dev = await m.addDevice({ bdf: '00:03.0' });
      // Only `dev` matters to the copy engine's queue.
      const q = copyEngineIo.open({ dev } as unknown as IoContext);
      const src = m.dma.mapSingle(dev, m.ram.alloc(16384).pa, 16384, 'to-device');
      const dst = m.dma.mapSingle(dev, m.ram.alloc(8192).pa, 8192, 'from-device');
      const io = { len: 16384, reads: [{ addr: src.addr, len: 16384 }], writes: [{ addr: dst.addr, len: 8192 }] };
      await expect(q.submit(io)).rejects.toMatchObject({ code: 'EINVAL', message: expect.stringMatching(/0000:00:03\.0.*fewer than its 16384 bytes/) });
      expect(dev.inFlight()).toBe(0);
      expect(dev.counters().descriptors).toBe(0);
      const ok = await q.submit({ len: 8192, reads: [{ addr: src.addr, len: 8192 }], writes: [{ addr: dmaAddr(dst.addr), len: 8192 }] });
      expect(ok).toBe('ok');
      expect(dev.counters().descriptors).toBe(1);
    } finally {
      await m.close();
    }
  });
});
