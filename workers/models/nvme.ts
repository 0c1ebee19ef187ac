/**
 * nvme: an NVMe-like controller with one namespace (command format: src/device/nvme-command.ts).
 * READ moves blocks from the media into host memory (device DMA writes), WRITE from host memory
 * into the media (DMA reads), FLUSH has nothing to do (the media is the SharedArrayBuffer the
 * machine created; only this worker writes it, anyone may read it).
 *
 * Order of work, as a controller must (nothing half-done): check the opcode, NLB, the LBA range
 * and the transfer size; walk the PRPs, fetching PRP list pages by DMA through the IOMMU (a
 * fault there is a Data Transfer Error completion); translate every data page; only then move
 * a byte. So a bad field, a bad PRP or a fault anywhere leaves both the media and RAM untouched.
 * Counters: bytesRead/bytesWritten count data only (PRP list fetches, like descriptor fetches,
 * are not data, but their TLPs and IOTLB lookups count); one transfer per READ or WRITE.
 */
import { acceptDescriptor, type DeviceModel, type DeviceModelContext } from '../../src/device/device-model.js';
import { RunList, type DmaEngine } from '../../src/device/dma-engine.js';
import { STAT } from '../../src/device/device-control.js';
import { type CompletionEntry, type Descriptor, STATUS_FAULT, STATUS_INVALID, STATUS_OK } from '../../src/device/rings.js';
import {
  NVME_CTRL_PAGE_SIZE as PAGE,
  NVME_MAX_TRANSFER,
  NVME_MAX_NLB,
  NVME_CMD_FLUSH,
  NVME_CMD_READ,
  NVME_CMD_WRITE,
  NVME_SC_SUCCESS,
  NVME_SC_INVALID_OPCODE,
  NVME_SC_INVALID_FIELD,
  NVME_SC_DATA_XFER_ERROR,
  NVME_SC_PRP_INVALID_OFFSET,
  NVME_SC_LBA_RANGE,
} from '../../src/device/nvme-command.js';

/** walkPrps() outcome besides an NVMe status code: the list fetch faulted. */
const FAULTED = -1;
const MAX_PIECES = NVME_MAX_TRANSFER / PAGE + 1;

export class NvmeController implements DeviceModel {
  private readonly e: DmaEngine;
  private readonly limit: number;
  private readonly media: Uint8Array;
  private readonly lbaSize: number;
  private readonly blocks: number;
  /** The transfer's pieces (DMA address, length), as the PRPs give them, one per page. */
  private readonly pieceAddr = new Float64Array(MAX_PIECES);
  private readonly pieceLen = new Float64Array(MAX_PIECES);
  private pieces = 0;
  private readonly data = new RunList();
  private readonly tmp = new RunList();
  private readonly list = new Uint8Array(PAGE);
  private readonly listView = new DataView(this.list.buffer);

  constructor(ctx: DeviceModelContext) {
    const o = ctx.options.nvme;
    if (!o) throw new Error('nvme model started without its namespace (options.nvme)');
    this.e = ctx.engine;
    this.limit = 2 ** ctx.dmaMaskBits;
    this.media = new Uint8Array(o.media);
    this.lbaSize = o.lbaSize;
    this.blocks = Math.floor(o.media.byteLength / o.lbaSize);
  }

  process(d: Descriptor, c: CompletionEntry): void {
    const e = this.e;
    const k = e.counts;
    acceptDescriptor(d, c, k);
    const op = d.flags;
    if (op === NVME_CMD_FLUSH) return this.status(c, STATUS_OK, NVME_SC_SUCCESS);
    if (op !== NVME_CMD_READ && op !== NVME_CMD_WRITE) return this.status(c, STATUS_INVALID, NVME_SC_INVALID_OPCODE);
    if (d.len > NVME_MAX_NLB) return this.status(c, STATUS_INVALID, NVME_SC_INVALID_FIELD);
    const nlb = d.len + 1;
    const slba = d.arg;
    if (slba + nlb > this.blocks) return this.status(c, STATUS_INVALID, NVME_SC_LBA_RANGE);
    const bytes = nlb * this.lbaSize;
    if (bytes > NVME_MAX_TRANSFER) return this.status(c, STATUS_INVALID, NVME_SC_INVALID_FIELD);

    const sc = this.walkPrps(d.src, d.dst, bytes);
    if (sc === FAULTED) return this.fault(c, bytes);
    if (sc !== NVME_SC_SUCCESS) return this.status(c, STATUS_INVALID, sc);
    const toHost = op === NVME_CMD_READ;
    const t = this.translateData(toHost);
    if (t === FAULTED) return this.fault(c, bytes);
    if (t !== NVME_SC_SUCCESS) return this.status(c, STATUS_INVALID, t);

    const at = slba * this.lbaSize;
    if (toHost) {
      e.writeRuns(this.data, this.media.subarray(at, at + bytes));
      k[STAT.bytesWritten] += bytes;
    } else {
      e.readRuns(this.data, this.media.subarray(at, at + bytes));
      k[STAT.bytesRead] += bytes;
    }
    k[STAT.transfers] += 1;
    c.bytes = bytes;
    this.status(c, STATUS_OK, NVME_SC_SUCCESS);
  }

  private status(c: CompletionEntry, status: number, sc: number): void {
    c.status = status;
    c.result = sc;
  }

  private fault(c: CompletionEntry, bytes: number): void {
    const e = this.e;
    c.faultReason = e.faultReason;
    c.faultAddr = e.faultAddr;
    c.faultWrite = e.faultWrite;
    e.counts[STAT.faultedBytes] += bytes;
    this.status(c, STATUS_FAULT, NVME_SC_DATA_XFER_ERROR);
  }

  /** Whether [addr, addr + len) is something this device can put on the bus (its DMA mask). */
  private reachable(addr: number, len: number): boolean {
    return addr + len <= this.limit;
  }

  /**
   * Turns PRP1/PRP2 into pieces of at most one page each, fetching PRP lists by DMA. Returns
   * an NVMe status code, or FAULTED (the engine's fault fields say where).
   */
  private walkPrps(prp1: number, prp2: number, bytes: number): number {
    this.pieces = 0;
    if (prp1 % 4 !== 0) return NVME_SC_PRP_INVALID_OFFSET;
    const first = Math.min(bytes, PAGE - (prp1 % PAGE));
    if (!this.reachable(prp1, first)) return NVME_SC_INVALID_FIELD;
    this.piece(prp1, first);
    let left = bytes - first;
    if (left === 0) return NVME_SC_SUCCESS; // PRP2 unused
    if (left <= PAGE) {
      if (prp2 % PAGE !== 0) return NVME_SC_PRP_INVALID_OFFSET;
      if (!this.reachable(prp2, left)) return NVME_SC_INVALID_FIELD;
      this.piece(prp2, left);
      return NVME_SC_SUCCESS;
    }
    // PRP2 is a PRP list pointer: qword aligned, possibly inside a page.
    let ptr = prp2;
    if (ptr % 8 !== 0) return NVME_SC_PRP_INVALID_OFFSET;
    const e = this.e;
    const v = this.listView;
    for (;;) {
      const slots = (PAGE - (ptr % PAGE)) / 8;
      const need = Math.ceil(left / PAGE);
      const chained = need > slots;
      const fetch = chained ? slots : need;
      if (!this.reachable(ptr, fetch * 8)) return NVME_SC_INVALID_FIELD;
      if (!e.translate(ptr, fetch * 8, false, this.tmp)) return FAULTED;
      if (this.tmp.bar !== null) return NVME_SC_DATA_XFER_ERROR; // a PRP list in a peer's BAR (CMB): not supported
      e.readRuns(this.tmp, this.list.subarray(0, fetch * 8));
      const entries = chained ? fetch - 1 : fetch;
      for (let i = 0; i < entries; i++) {
        const ent = v.getUint32(i * 8 + 4, true) * 2 ** 32 + v.getUint32(i * 8, true);
        if (ent % PAGE !== 0) return NVME_SC_PRP_INVALID_OFFSET;
        const n = left < PAGE ? left : PAGE;
        if (!this.reachable(ent, n)) return NVME_SC_INVALID_FIELD;
        this.piece(ent, n);
        left -= n;
      }
      if (!chained) return NVME_SC_SUCCESS;
      const next = v.getUint32(entries * 8 + 4, true) * 2 ** 32 + v.getUint32(entries * 8, true);
      if (next % PAGE !== 0) return NVME_SC_PRP_INVALID_OFFSET;
      ptr = next;
    }
  }

  private piece(addr: number, len: number): void {
    this.pieceAddr[this.pieces] = addr;
    this.pieceLen[this.pieces] = len;
    this.pieces++;
  }

  /**
   * Translates every piece (runs of pieces contiguous in DMA address space at once) into
   * `data`, for a device write into host memory when `toHost`. Returns a status or FAULTED.
   */
  private translateData(toHost: boolean): number {
    const e = this.e;
    const data = this.data;
    const tmp = this.tmp;
    data.reset();
    let i = 0;
    while (i < this.pieces) {
      const start = this.pieceAddr[i];
      let len = this.pieceLen[i];
      for (i++; i < this.pieces && this.pieceAddr[i] === start + len; i++) len += this.pieceLen[i];
      if (!e.translate(start, len, toHost, tmp)) return FAULTED;
      if (tmp.bar !== null) return NVME_SC_DATA_XFER_ERROR; // data in a peer's BAR: not supported
      for (let r = 0; r < tmp.count; r++) data.push(tmp.offs[r], tmp.lens[r]);
    }
    return NVME_SC_SUCCESS;
  }
}
