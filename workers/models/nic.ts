/**
 * nic: a NIC-like device (command format: src/device/nic-command.ts). TX descriptors gather an
 * SG list of buffers into one frame and put it on the wire; RX descriptors post SG lists of
 * buffers that wait, inside the device, for a frame to scatter into. The wire is loopback: a
 * transmitted frame is received into the oldest posted RX buffers (or dropped and counted as
 * rxMissed when none is posted). Frames are verifiable: both completions carry the frame's
 * CRC-32.
 *
 * Order of work (nothing half-done): validate the descriptor, fetch the SG table by DMA, validate
 * every entry, translate every buffer, then move bytes. A TX that faults sends nothing; an RX
 * delivery that faults writes nothing (the frame is lost; the RX descriptor completes 'fault').
 * Posted RX buffers are translated when a frame arrives, as a NIC DMAs then: a buffer unmapped
 * meanwhile faults. Counters: bytesRead = bytes gathered, bytesWritten = bytes scattered, one
 * transfer per gather and per scatter; SG table fetches are not data.
 */
import { acceptDescriptor, DEFERRED, type DeviceModel, type DeviceModelContext } from '../../src/device/device-model.js';
import { RunList, type DmaEngine } from '../../src/device/dma-engine.js';
import { STAT } from '../../src/device/device-control.js';
import {
  type CompletionEntry,
  type Descriptor,
  STATUS_ABORTED,
  STATUS_FAULT,
  STATUS_INVALID,
  STATUS_OK,
} from '../../src/device/rings.js';
import {
  NIC_MAX_FRAME,
  NIC_MAX_SG,
  NIC_OP_RX,
  NIC_OP_RX_RESET,
  NIC_OP_TX,
  NIC_SG_ENTRY_SIZE,
  NIC_SG_TABLE_SIZE,
  sgEntryAddr,
  sgEntryLen,
} from '../../src/device/nic-command.js';
import { crc32 } from '../../src/device/crc32.js';

/** RX buffers the device holds: the SG list of one posted RX descriptor. */
interface RxPost {
  id: number;
  count: number;
  capacity: number;
  readonly addr: Float64Array;
  readonly len: Float64Array;
}

export class NicModel implements DeviceModel {
  private readonly e: DmaEngine;
  private readonly limit: number;
  private readonly table = new Uint8Array(NIC_SG_TABLE_SIZE);
  private readonly tableView = new DataView(this.table.buffer);
  private readonly frame = new Uint8Array(NIC_MAX_FRAME);
  private readonly runs = new RunList();
  private readonly tmp = new RunList();
  private readonly txAddr = new Float64Array(NIC_MAX_SG);
  private readonly txLen = new Float64Array(NIC_MAX_SG);
  /** Posted RX descriptors, oldest first: a ring of queueDepth slots. */
  private readonly rx: RxPost[];
  private rxHead = 0;
  private rxCount = 0;
  private done: CompletionEntry[] = [];

  constructor(ctx: DeviceModelContext) {
    this.e = ctx.engine;
    this.limit = 2 ** ctx.dmaMaskBits;
    this.rx = Array.from({ length: ctx.queueDepth }, () => ({
      id: 0,
      count: 0,
      capacity: 0,
      addr: new Float64Array(NIC_MAX_SG),
      len: new Float64Array(NIC_MAX_SG),
    }));
  }

  process(d: Descriptor, c: CompletionEntry): void | boolean {
    const k = this.e.counts;
    acceptDescriptor(d, c, k);
    switch (d.flags) {
      case NIC_OP_TX:
        return this.transmit(d, c);
      case NIC_OP_RX:
        return this.post(d, c);
      case NIC_OP_RX_RESET:
        c.result = this.reset();
        return;
      default:
        c.status = STATUS_INVALID;
    }
  }

  takeCompleted(): readonly CompletionEntry[] {
    const out = this.done;
    if (out.length > 0) this.done = [];
    return out;
  }

  /**
   * Fetches and checks the SG table of `d` into `table`: false after setting c's status
   * (invalid, or fault with the fault fields).
   */
  private fetchTable(d: Descriptor, c: CompletionEntry): boolean {
    const e = this.e;
    const n = d.arg;
    const bytes = n * NIC_SG_ENTRY_SIZE;
    // A TX length is a frame (at most NIC_MAX_FRAME); an RX length is room, which may exceed one.
    const maxLen = d.flags === NIC_OP_TX ? NIC_MAX_FRAME : 0xffffffff;
    if (n < 1 || n > NIC_MAX_SG || d.len < 1 || d.len > maxLen || d.dst !== 0 || d.src % 8 !== 0 || d.src + bytes > this.limit) {
      c.status = STATUS_INVALID;
      return false;
    }
    if (!e.translate(d.src, bytes, false, this.tmp)) {
      this.faulted(c);
      return false;
    }
    e.readRuns(this.tmp, this.table.subarray(0, bytes));
    const v = this.tableView;
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const a = sgEntryAddr(v, i);
      const l = sgEntryLen(v, i);
      if (l === 0 || v.getUint32(i * NIC_SG_ENTRY_SIZE + 12, true) !== 0 || a + l > this.limit) {
        c.status = STATUS_INVALID;
        return false;
      }
      sum += l;
    }
    if (sum !== d.len) {
      c.status = STATUS_INVALID;
      return false;
    }
    return true;
  }

  private faulted(c: CompletionEntry): void {
    const e = this.e;
    c.status = STATUS_FAULT;
    c.faultReason = e.faultReason;
    c.faultAddr = e.faultAddr;
    c.faultWrite = e.faultWrite;
  }

  /** Translates buffers (addr[i], len[i]) covering the first `bytes` bytes into `runs`. */
  private translateBuffers(addr: ArrayLike<number>, len: ArrayLike<number>, bytes: number, write: boolean): boolean {
    const e = this.e;
    const runs = this.runs;
    const tmp = this.tmp;
    runs.reset();
    let left = bytes;
    for (let i = 0; left > 0; i++) {
      const n = Math.min(len[i], left);
      if (!e.translate(addr[i], n, write, tmp)) return false;
      if (tmp.bar !== null) {
        // A buffer in a peer's BAR: not supported by this model; refused like an absent page.
        return false;
      }
      for (let r = 0; r < tmp.count; r++) runs.push(tmp.offs[r], tmp.lens[r]);
      left -= n;
    }
    return true;
  }

  private transmit(d: Descriptor, c: CompletionEntry): void {
    if (!this.fetchTable(d, c)) return;
    const e = this.e;
    const k = e.counts;
    const v = this.tableView;
    const n = d.arg;
    const addr = this.txAddr;
    const len = this.txLen;
    for (let i = 0; i < n; i++) {
      addr[i] = sgEntryAddr(v, i);
      len[i] = sgEntryLen(v, i);
    }
    if (!this.translateBuffers(addr, len, d.len, false)) {
      if (this.tmp.bar !== null) c.status = STATUS_INVALID;
      else this.faulted(c);
      k[STAT.faultedBytes] += d.len;
      return;
    }
    const frame = this.frame.subarray(0, d.len);
    e.readRuns(this.runs, frame);
    k[STAT.bytesRead] += d.len;
    k[STAT.transfers] += 1;
    const fcs = crc32(frame);
    c.bytes = d.len;
    c.result = fcs;
    this.receive(frame, fcs); // the loopback wire
  }

  /** Keeps the buffers of an RX descriptor until a frame arrives; it completes then. */
  private post(d: Descriptor, c: CompletionEntry): void | boolean {
    if (!this.fetchTable(d, c)) return;
    if (this.rxCount === this.rx.length) {
      // More posted than the ring holds: the driver broke the queue depth.
      c.status = STATUS_INVALID;
      return;
    }
    const p = this.rx[(this.rxHead + this.rxCount) % this.rx.length];
    const v = this.tableView;
    p.id = d.id;
    p.count = d.arg;
    p.capacity = d.len;
    for (let i = 0; i < d.arg; i++) {
      p.addr[i] = sgEntryAddr(v, i);
      p.len[i] = sgEntryLen(v, i);
    }
    this.rxCount++;
    return DEFERRED;
  }

  /** A frame from the wire: scattered into the oldest posted RX buffers, or dropped. */
  private receive(frame: Uint8Array, fcs: number): void {
    const e = this.e;
    const k = e.counts;
    if (this.rxCount === 0) {
      k[STAT.rxMissed]++;
      return;
    }
    const p = this.rx[this.rxHead];
    this.rxHead = (this.rxHead + 1) % this.rx.length;
    this.rxCount--;
    const c: CompletionEntry = { id: p.id, status: STATUS_OK, bytes: 0, faultReason: 0, faultAddr: 0, faultWrite: false, result: 0 };
    this.done.push(c);
    if (frame.length > p.capacity) {
      c.status = STATUS_INVALID; // a length error: the frame does not fit the posted buffers
      return;
    }
    if (!this.translateBuffers(p.addr, p.len, frame.length, true)) {
      if (this.tmp.bar !== null) c.status = STATUS_INVALID;
      else this.faulted(c);
      k[STAT.faultedBytes] += frame.length;
      return;
    }
    e.writeRuns(this.runs, frame);
    k[STAT.bytesWritten] += frame.length;
    k[STAT.transfers] += 1;
    c.bytes = frame.length;
    c.result = fcs;
  }

  /** Gives every posted RX buffer back (completed 'aborted'); returns how many. */
  private reset(): number {
    const n = this.rxCount;
    for (let i = 0; i < n; i++) {
      const p = this.rx[(this.rxHead + i) % this.rx.length];
      this.done.push({ id: p.id, status: STATUS_ABORTED, bytes: 0, faultReason: 0, faultAddr: 0, faultWrite: false, result: 0 });
    }
    this.rxHead = 0;
    this.rxCount = 0;
    return n;
  }
}
