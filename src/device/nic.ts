/**
 * The driver of the nic model (command format: nic-command.ts), shaped as a Linux netdev driver:
 * transmit() is ndo_start_xmit (map the frame's buffers with dma_map_sg, hand the device an SG
 * table, unmap when the TX completes), postRx() refills the RX ring (buffers mapped
 * DMA_FROM_DEVICE and posted ahead), receive() is the NAPI poll of one frame (the oldest posted
 * buffers complete, are unmapped, and their bytes are the frame). SG tables come from a
 * dma_pool of coherent memory.
 *
 * One ring carries TX and RX: posted RX buffers hold ring slots until a frame lands, so the
 * driver keeps one slot for TX (postRx refuses with 'EBUSY' when only one is left).
 */
import { DmaError, hex } from '../errors.js';
import type { DmaSegment, DmaSgTable, SgEntry } from '../dma/dma-api.js';
import { DmaPool, type DmaPoolBlock } from '../dma/dma-pool.js';
import type { Completion, Device } from './device.js';
import type { DriverHost } from './driver-host.js';
import { NIC_MAX_FRAME, NIC_MAX_SG, NIC_OP_RX, NIC_OP_RX_RESET, NIC_OP_TX, NIC_SG_ENTRY_SIZE, NIC_SG_TABLE_SIZE, encodeSgEntry } from './nic-command.js';
import { crc32 } from './crc32.js';
import { firstDifference, ioPattern, readEntries, truncate, writeEntries } from './io-check.js';

/** A transmitted frame. */
export interface NicTxResult {
  len: number;
  /** CRC-32 of the frame as the device gathered it. */
  checksum: number;
}

/** A received frame (or what happened to the buffers instead). */
export interface NicRxFrame {
  /** 'ok': a frame landed; 'invalid': it did not fit; 'fault': the IOMMU refused a buffer; 'aborted': reset. */
  status: Completion['status'];
  len: number;
  /** CRC-32 the device computed over the frame. */
  checksum: number;
  /** The frame's bytes as the CPU reads them from the buffers (empty unless ok). */
  data: Uint8Array;
  fault?: Completion['fault'];
}

/** What verifiedIo() reports. */
export interface NicVerifiedIo {
  verified: boolean;
  bytes: number;
  detail: string | null;
}

interface PostedRx {
  done: Promise<Completion>;
  sg: DmaSgTable;
  table: DmaPoolBlock;
}

export class NicDriver {
  private readonly tables: DmaPool;
  private readonly rx: PostedRx[] = [];
  /** RX descriptors verifiedIo() posted and has not seen complete. */
  private rawRx = 0;
  private closed = false;

  constructor(
    private readonly host: DriverHost,
    readonly dev: Device,
  ) {
    if (dev.model !== 'nic') throw new DmaError('ENODEV', `nic: device ${dev.bdf} is a ${dev.model}, not a nic`);
    this.tables = new DmaPool(host.dma, dev, 'nic sg tables', NIC_SG_TABLE_SIZE);
  }

  /** RX descriptors posted and not yet received. */
  get rxPosted(): number {
    return this.rx.length;
  }

  /** ndo_start_xmit: gathers `sgList` (guest-physical buffers) into one frame on the wire. */
  async transmit(sgList: readonly SgEntry[]): Promise<NicTxResult> {
    this.checkOpen('transmit');
    const len = this.checkFrame('transmit', sgList, NIC_MAX_FRAME);
    const sg = this.host.dma.mapSg(this.dev, sgList, 'to-device');
    try {
      const c = await this.transmitSegments(sg.segments);
      if (c.status !== 'ok') throw this.failed('transmit', c);
      return { len, checksum: c.result };
    } finally {
      this.host.dma.unmapSg(this.dev, sg);
    }
  }

  /** TX of already-mapped DMA segments; resolves with the completion whatever its status. */
  async transmitSegments(segments: readonly DmaSegment[]): Promise<Completion> {
    this.checkOpen('transmit');
    const len = this.checkSegments('transmit', segments);
    const table = this.writeTable(segments);
    try {
      return await this.dev.submit(table.addr, 0, len, NIC_OP_TX, segments.length);
    } finally {
      this.tables.release(table);
    }
  }

  /** Posts receive buffers (guest-physical) for the next frame. */
  postRx(buffers: readonly SgEntry[]): void {
    this.checkOpen('postRx');
    this.checkFrame('postRx', buffers, Number.MAX_SAFE_INTEGER);
    this.checkRoom();
    const sg = this.host.dma.mapSg(this.dev, buffers, 'from-device');
    try {
      this.postSegments(sg);
    } catch (e) {
      this.host.dma.unmapSg(this.dev, sg);
      throw e;
    }
  }

  /**
   * NAPI poll of one frame: waits for the oldest posted buffers to complete, unmaps them and
   * returns the frame. Null when no buffers are posted.
   */
  async receive(): Promise<NicRxFrame | null> {
    const p = this.rx.shift();
    if (!p) return null;
    let c: Completion;
    try {
      c = await p.done;
    } catch (e) {
      // The device failed or was closed: give the buffers back if the DMA API still can, and
      // report the device's error (a closed machine took its mappings with it).
      this.tables.release(p.table);
      try {
        this.host.dma.unmapSg(this.dev, p.sg);
      } catch (u) {
        if (!(u instanceof DmaError && u.code === 'ESHUTDOWN')) throw u; // closed: nothing left to unmap
      }
      throw e;
    }
    this.tables.release(p.table);
    this.host.dma.unmapSg(this.dev, p.sg); // syncs bounced bytes back for the CPU
    const ok = c.status === 'ok';
    const frame: NicRxFrame = {
      status: c.status,
      len: c.bytes,
      checksum: c.result,
      data: ok ? readEntries(this.host.ram, p.sg, c.bytes) : new Uint8Array(0),
    };
    if (c.fault) frame.fault = c.fault;
    return frame;
  }

  /**
   * One I/O for workloads, over buffers the caller mapped: a pattern of `len` bytes written into
   * `tx`'s buffers is transmitted, received on the loopback wire into `rx`'s buffers, and compared
   * byte for byte and by checksum. Reports verified: false with the reason instead of throwing
   * for a device status. Its RX buffers must be the next to receive: do not run it while
   * postRx() buffers wait (they would take its frame).
   */
  async verifiedIo(io: { tx: DmaSgTable; rx: DmaSgTable; len: number; seed?: number }): Promise<NicVerifiedIo> {
    this.checkOpen('verifiedIo');
    const { tx, rx, len } = io;
    const txHave = tx.entries.reduce((s, e) => s + e.len, 0);
    const rxHave = this.checkSegments('verifiedIo', rx.segments); // what the device is told
    if (!Number.isInteger(len) || len <= 0 || len > Math.min(txHave, rxHave, NIC_MAX_FRAME)) {
      throw new DmaError('EINVAL', `nic ${this.dev.bdf}: verifiedIo length ${String(len)} must be in [1, ${Math.min(txHave, rxHave, NIC_MAX_FRAME)}] (the mapped buffers, one frame)`);
    }
    this.checkLoopback('verifiedIo'); // before the buffers are written: nothing half-done
    const want = ioPattern(len, io.seed ?? 0);
    writeEntries(this.host.ram, tx, want);
    this.host.dma.syncForDevice(this.dev, tx);
    const { tx: tc, rx: rc } = await this.loopback(truncate(tx.segments, len), rx.segments, 'verifiedIo');
    if (tc.status !== 'ok') return { verified: false, bytes: 0, detail: `TX ${tc.status}` };
    if (rc.status !== 'ok') return { verified: false, bytes: len, detail: `RX ${rc.status}` };
    this.host.dma.syncForCpu(this.dev, rx);
    const sum = crc32(want);
    if (tc.result !== sum) return { verified: false, bytes: len, detail: `TX checksum ${hex(tc.result)} is not the frame's ${hex(sum)}` };
    if (rc.bytes !== len || rc.result !== sum) return { verified: false, bytes: 2 * len, detail: `RX got ${rc.bytes} bytes, checksum ${hex(rc.result)}` };
    const bad = firstDifference(readEntries(this.host.ram, rx, len), want);
    if (bad >= 0) return { verified: false, bytes: 2 * len, detail: `RX byte ${bad} differs from the frame sent` };
    return { verified: true, bytes: 2 * len, detail: null };
  }

  /**
   * One frame over DMA segments the caller mapped (and syncs): posts `rx` as the next receive
   * buffers, transmits `tx` on the loopback wire into them, and resolves with both completions
   * whatever their status (a TX that failed takes the RX buffers back: RX 'aborted'). RX and TX
   * are posted in the same turn, so frames of concurrent calls land in their own buffers as
   * long as the ring has room for both (the caller keeps at most queueDepth / 2 calls going).
   */
  async loopback(tx: readonly DmaSegment[], rx: readonly DmaSegment[], op = 'loopback'): Promise<{ tx: Completion; rx: Completion }> {
    this.checkOpen(op);
    this.checkSegments(op, tx);
    const rxHave = this.checkSegments(op, rx); // what the device is told
    this.checkLoopback(op);
    const rxTable = this.writeTable(rx);
    this.rawRx++;
    try {
      const rxDone = this.dev.submit(rxTable.addr, 0, rxHave, NIC_OP_RX, rx.length);
      rxDone.catch(() => undefined); // awaited below; a failed TX submit must not leave it unhandled
      const tc = await this.transmitSegments(tx);
      if (tc.status !== 'ok') {
        // Nothing reached the wire: give the posted buffers back.
        await this.dev.submit(0, 0, 0, NIC_OP_RX_RESET);
      }
      return { tx: tc, rx: await rxDone };
    } finally {
      this.rawRx--;
      this.tables.release(rxTable);
    }
  }

  /**
   * Takes back every posted RX buffer (the device completes them 'aborted'), then frees the pool.
   * A device that failed cannot complete them: their buffers are unmapped all the same (as a
   * netdev's teardown after a dead device) and close() does not throw for it (dev.error says why).
   */
  async close(): Promise<void> {
    if (this.closed) return;
    let firstError: unknown = null;
    if (this.rx.length > 0) {
      try {
        await this.dev.submit(0, 0, 0, NIC_OP_RX_RESET);
      } catch (e) {
        firstError = e;
      }
      while (this.rx.length > 0) {
        try {
          await this.receive(); // unmaps the buffers whether the RX completed or was rejected
        } catch (e) {
          firstError ??= e;
        }
      }
    }
    this.closed = true;
    this.tables.destroy();
    if (firstError !== null && this.dev.error === null) throw firstError;
  }

  private postSegments(sg: DmaSgTable): void {
    this.checkSegments('postRx', sg.segments);
    const len = sg.segments.reduce((s, x) => s + x.len, 0);
    const table = this.writeTable(sg.segments);
    // submit() posts synchronously (there is room), so RX and later TX keep their order.
    const done = this.dev.submit(table.addr, 0, len, NIC_OP_RX, sg.segments.length);
    // Observed by receive(); a device closed first rejects it, which must not go unhandled meanwhile.
    done.catch(() => undefined);
    this.rx.push({ done, sg, table });
  }

  private writeTable(segments: readonly DmaSegment[]): DmaPoolBlock {
    const bytes = new Uint8Array(segments.length * NIC_SG_ENTRY_SIZE);
    const v = new DataView(bytes.buffer);
    segments.forEach((s, i) => encodeSgEntry(v, i, s.addr, s.len));
    const table = this.tables.alloc();
    this.host.ram.write(table.cpuAddr, bytes); // coherent: no sync
    return table;
  }

  /** A loopback frame's RX buffers must be the next to receive, and need a ring slot. */
  private checkLoopback(op: string): void {
    if (this.rx.length > 0) throw new DmaError('EBUSY', `nic ${this.dev.bdf}: ${op} with ${this.rx.length} postRx buffer(s) waiting: they would receive its frame`);
    this.checkRoom();
  }

  /** Room for one more RX descriptor with a slot left for a TX. */
  private checkRoom(): void {
    if (this.rxInFlight() >= this.dev.queueDepth - 1) {
      throw new DmaError('EBUSY', `nic ${this.dev.bdf}: ${this.rxInFlight()} RX descriptors posted in a ring of ${this.dev.queueDepth}: one slot stays for TX`);
    }
  }

  /** RX descriptors the device holds (posted by postRx and not yet reaped). */
  private rxInFlight(): number {
    return this.rx.length + this.rawRx;
  }

  private checkFrame(op: string, list: readonly SgEntry[], max: number): number {
    if (!Array.isArray(list) || list.length === 0 || list.length > NIC_MAX_SG) {
      throw new DmaError('EINVAL', `nic ${this.dev.bdf}: ${op} needs 1..${NIC_MAX_SG} buffers { pa, len }`);
    }
    const len = list.reduce((s, b) => s + (Number.isSafeInteger(b?.len) && b.len > 0 ? b.len : NaN), 0);
    if (!(len <= max)) throw new DmaError('EINVAL', `nic ${this.dev.bdf}: ${op} of ${String(len)} bytes: buffers need positive lengths${max < Number.MAX_SAFE_INTEGER ? ` and a frame at most ${max} bytes` : ''}`);
    return len;
  }

  private checkSegments(op: string, segments: readonly DmaSegment[]): number {
    if (!Array.isArray(segments) || segments.length === 0 || segments.length > NIC_MAX_SG) {
      throw new DmaError('EINVAL', `nic ${this.dev.bdf}: ${op} needs 1..${NIC_MAX_SG} DMA segments (got ${Array.isArray(segments) ? segments.length : String(segments)})`);
    }
    return segments.reduce((s, x) => s + x.len, 0);
  }

  private checkOpen(op: string): void {
    if (this.closed) throw new DmaError('ESHUTDOWN', `nic ${this.dev.bdf}: ${op} after close`);
  }

  private failed(op: string, c: Completion): DmaError {
    if (c.status === 'fault' && c.fault) {
      return new DmaError('EFAULT', `nic ${this.dev.bdf}: ${op}: the IOMMU refused a DMA ${c.fault.access} at ${hex(c.fault.addr)} (${c.fault.reason}); the frame was not sent`, { cause: c });
    }
    return new DmaError('EINVAL', `nic ${this.dev.bdf}: ${op}: descriptor rejected by the device (${c.status})`, { cause: c });
  }
}
