/**
 * hostile: a device that DMAs where it should not (src/device/hostile-access.ts describes its
 * command block). One descriptor is one burst: the device reads its command block by DMA, makes
 * `count` accesses at random addresses (or the accesses of a list it reads by DMA), each one
 * request of at most a page, never crossing a page, translated and permission-checked by the
 * IOMMU exactly as any other device's DMA (dma-engine.ts): a refused access is one fault record
 * (or one counted overflow of the fault ring) and moves no byte; an allowed write stores the
 * pattern byte, an allowed read copies the bytes into the device. It then writes its counts back
 * into the command block by DMA and completes the descriptor 'ok' (refusals are the point).
 *
 * Descriptor: src = DMA address of the command block, len = HOSTILE_BLOCK_SIZE, dst and flags 0.
 * Addresses beyond the device's DMA mask lose their upper bits, as on a bus that many address
 * lines wide. Every EPOCH_BATCH accesses the device leaves and re-enters its in-transfer epoch,
 * so a strict unmap waits for a few accesses, not for the whole burst.
 */
import { acceptDescriptor, type DeviceModel, type DeviceModelContext } from '../../src/device/device-model.js';
import { RunList, type DmaEngine } from '../../src/device/dma-engine.js';
import { STAT } from '../../src/device/device-control.js';
import { type CompletionEntry, type Descriptor, STATUS_FAULT, STATUS_INVALID, STATUS_OK } from '../../src/device/rings.js';
import {
  HOSTILE_BLOCK_SIZE,
  HOSTILE_LIST_ENTRY,
  HOSTILE_RESULT_OFFSET,
  HOSTILE_RESULT_SIZE,
  HostileAccessGenerator,
  decodeBurst,
  decodeListEntry,
  encodeResult,
  type HostileAccess,
  type HostileResult,
} from '../../src/device/hostile-access.js';

const PAGE = 4096;
const EPOCH_BATCH = 64;
const LIST_CHUNK = PAGE / HOSTILE_LIST_ENTRY;

export class HostileDevice implements DeviceModel {
  private readonly e: DmaEngine;
  private readonly maskBits: number;
  private readonly runs = new RunList();
  private readonly block = new Uint8Array(HOSTILE_BLOCK_SIZE);
  private readonly blockView = new DataView(this.block.buffer);
  private readonly list = new Uint8Array(PAGE);
  private readonly listView = new DataView(this.list.buffer);
  /** Where allowed reads land in the device. */
  private readonly scratch = new Uint8Array(PAGE);
  private readonly result = new Uint8Array(HOSTILE_RESULT_SIZE);
  private readonly a: HostileAccess = { addr: 0, len: 0, write: false };

  constructor(ctx: DeviceModelContext) {
    this.e = ctx.engine;
    this.maskBits = ctx.dmaMaskBits;
  }

  process(d: Descriptor, c: CompletionEntry): void {
    const e = this.e;
    const k = e.counts;
    acceptDescriptor(d, c, k);
    if (d.len !== HOSTILE_BLOCK_SIZE || d.flags !== 0) {
      c.status = STATUS_INVALID;
      return;
    }
    if (!e.translate(d.src, HOSTILE_BLOCK_SIZE, false, this.runs)) return this.faulted(c);
    e.readRuns(this.runs, this.block);
    k[STAT.transfers]++;
    const b = decodeBurst(this.blockView, 0);
    const r: HostileResult = { attempted: 0, refused: 0, moved: 0, bytesRead: 0, bytesWritten: 0 };
    let ok = true;
    if (b.mode === 'random') {
      const gen = new HostileAccessGenerator(b, this.maskBits);
      if (!gen.drawable) {
        c.status = STATUS_INVALID; // every target is spared: nothing to draw
        return;
      }
      for (let i = 0; i < b.count; i++) this.access(gen.next(this.a), b.pattern, r);
    } else {
      for (let i = 0; i < b.listEntries && ok; i += LIST_CHUNK) {
        const n = Math.min(LIST_CHUNK, b.listEntries - i);
        // The list is read by DMA too: a refused list read ends the burst (one fault record).
        if (!e.translate(b.listAddr + i * HOSTILE_LIST_ENTRY, n * HOSTILE_LIST_ENTRY, false, this.runs)) {
          ok = false;
          break;
        }
        e.readRuns(this.runs, this.list.subarray(0, n * HOSTILE_LIST_ENTRY));
        for (let j = 0; j < n; j++) this.access(this.clamp(decodeListEntry(this.listView, j * HOSTILE_LIST_ENTRY, this.a)), b.pattern, r);
      }
    }
    // The counts go back into the command block by DMA, before the completion publishes them.
    encodeResult(new DataView(this.result.buffer), 0, r);
    if (!ok) {
      this.faulted(c);
      if (!e.translate(d.src + HOSTILE_RESULT_OFFSET, HOSTILE_RESULT_SIZE, true, this.runs)) return;
      e.writeRuns(this.runs, this.result);
      return;
    }
    if (!e.translate(d.src + HOSTILE_RESULT_OFFSET, HOSTILE_RESULT_SIZE, true, this.runs)) return this.faulted(c);
    e.writeRuns(this.runs, this.result);
    c.status = STATUS_OK;
    c.bytes = Math.min(r.bytesRead + r.bytesWritten, 0xffffffff);
  }

  /** One access: one translated request; refused = one fault record, nothing moved. */
  private access(a: HostileAccess, pattern: number, r: HostileResult): void {
    const e = this.e;
    const k = e.counts;
    if (r.attempted > 0 && r.attempted % EPOCH_BATCH === 0) {
      e.end();
      e.begin();
    }
    r.attempted++;
    if (!e.translate(a.addr, a.len, a.write, this.runs)) {
      r.refused++;
      k[STAT.faultedBytes] += a.len;
      return;
    }
    r.moved++;
    k[STAT.transfers]++;
    if (a.write) {
      e.fillRuns(this.runs, pattern);
      r.bytesWritten += a.len;
      k[STAT.bytesWritten] += a.len;
    } else {
      e.readRuns(this.runs, this.scratch.subarray(0, a.len));
      r.bytesRead += a.len;
      k[STAT.bytesRead] += a.len;
    }
  }

  /** A list entry as the bus carries it: mask-wide address, 1..page bytes, within its page. */
  private clamp(a: HostileAccess): HostileAccess {
    if (this.maskBits < 53) a.addr %= 2 ** this.maskBits;
    const room = PAGE - (a.addr % PAGE);
    a.len = Math.max(1, Math.min(a.len, room));
    return a;
  }

  private faulted(c: CompletionEntry): void {
    c.status = STATUS_FAULT;
    c.faultReason = this.e.faultReason;
    c.faultAddr = this.e.faultAddr;
    c.faultWrite = this.e.faultWrite;
  }
}
