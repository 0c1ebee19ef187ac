/**
 * copy-engine: a memory-to-memory DMA engine (like Intel I/OAT or a dmaengine memcpy channel).
 * Each descriptor copies len bytes from src to dst, both DMA addresses, or with FLAG_FILL
 * writes one byte value over dst. The whole descriptor is translated before any byte moves, so
 * a fault anywhere leaves RAM untouched.
 */
import { acceptDescriptor, type DeviceModel, type DeviceModelContext } from '../../src/device/device-model.js';
import { RunList, MAX_TRANSFER, type DmaEngine } from '../../src/device/dma-engine.js';
import { STAT } from '../../src/device/device-control.js';
import {
  type CompletionEntry,
  type Descriptor,
  FLAG_FILL,
  KNOWN_FLAGS,
  STATUS_FAULT,
  STATUS_INVALID,
  STATUS_OK,
} from '../../src/device/rings.js';

export class CopyEngine implements DeviceModel {
  private readonly e: DmaEngine;
  private readonly limit: number;
  private readonly src = new RunList();
  private readonly dst = new RunList();

  constructor(ctx: DeviceModelContext) {
    this.e = ctx.engine;
    this.limit = 2 ** ctx.dmaMaskBits;
  }

  process(d: Descriptor, c: CompletionEntry): void {
    const e = this.e;
    const k = e.counts;
    acceptDescriptor(d, c, k);
    const fill = (d.flags & FLAG_FILL) !== 0;
    if ((d.flags & ~KNOWN_FLAGS) !== 0 || d.len > MAX_TRANSFER || d.dst + d.len > this.limit || (!fill && d.src + d.len > this.limit)) {
      // Unknown flags, too long, or addresses this device cannot drive with its mask.
      c.status = STATUS_INVALID;
      return;
    }
    if ((!fill && !e.translate(d.src, d.len, false, this.src)) || !e.translate(d.dst, d.len, true, this.dst)) {
      c.status = STATUS_FAULT;
      c.faultReason = e.faultReason;
      c.faultAddr = e.faultAddr;
      c.faultWrite = e.faultWrite;
      k[STAT.faultedBytes] += d.len;
      return;
    }
    if (fill) {
      e.fillRuns(this.dst, d.src & 0xff);
      k[STAT.transfers] += 1;
    } else {
      e.copyRuns(this.dst, this.src);
      k[STAT.transfers] += 2;
      k[STAT.bytesRead] += d.len;
    }
    k[STAT.bytesWritten] += d.len;
    c.status = STATUS_OK;
    c.bytes = d.len;
  }
}
