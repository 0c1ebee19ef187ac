/**
 * The copy engine as a workload's device: one I/O becomes one copy descriptor per piece where a
 * read segment and a write segment overlap (a dmaengine memcpy channel given two scatterlists,
 * as dmaengine_prep_dma_memcpy is called per contiguous chunk). All descriptors of an I/O are
 * queued at once; the I/O is ok when every one completed ok.
 */
import type { Device } from '../device/device.js';
import { MAX_TRANSFER } from '../device/dma-engine.js';
import { DmaError } from '../errors.js';
import type { IoModel, IoRequest, IoStatus } from './io-model.js';

export const copyEngineIo: IoModel = {
  model: 'copy-engine',
  open: ({ dev }) => ({ submit: (io) => submitCopies(dev, io), close: async () => undefined }),
};

async function submitCopies(dev: Device, io: IoRequest): Promise<IoStatus> {
  // Every piece is worked out before the first is queued: segments that fall short are refused
  // with nothing submitted (a descriptor left queued would DMA after the caller unmapped).
  const pieces: Array<[src: number, dst: number, len: number]> = [];
  let r = 0;
  let w = 0;
  let rOff = 0;
  let wOff = 0;
  let left = io.len;
  while (left > 0) {
    const rs = io.reads[r];
    const ws = io.writes[w];
    if (!rs || !ws) {
      throw new DmaError('EINVAL', `copy-engine I/O on device ${dev.bdf}: segments cover fewer than its ${io.len} bytes`);
    }
    const n = Math.min(rs.len - rOff, ws.len - wOff, left, MAX_TRANSFER);
    pieces.push([rs.addr + rOff, ws.addr + wOff, n]);
    left -= n;
    rOff += n;
    wOff += n;
    if (rOff === rs.len) {
      r++;
      rOff = 0;
    }
    if (wOff === ws.len) {
      w++;
      wOff = 0;
    }
  }
  const done = await Promise.all(pieces.map(([src, dst, n]) => dev.submit(src, dst, n, 0)));
  return done.find((c) => c.status !== 'ok')?.status ?? 'ok';
}
