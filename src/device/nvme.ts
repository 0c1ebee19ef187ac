/**
 * The driver of the nvme model, named and shaped as Linux's drivers/nvme/host/pci.c: read and
 * write map the caller's scatterlist with dma_map_sg (nvme_map_data), build PRP1/PRP2 and PRP
 * lists (nvme_pci_setup_prps) in blocks of two dma_pools (256-byte lists for up to 32 entries,
 * page-sized lists otherwise, as prp_small_pool and prp_page_pool), submit the command, and on
 * completion unmap and free the lists (nvme_unmap_data). One namespace (NSID 1), one I/O queue:
 * the device's ring. Command format: nvme-command.ts.
 *
 * Where we differ: Linux's block layer never hands nvme a request beyond the namespace; here the
 * LBA range is the device's to check (LBA Out of Range), so tests can see it. Buffers must obey
 * NVMe's "virtual boundary" as the block layer guarantees it for nvme: every buffer but the first
 * starts on a page, every buffer but the last ends on one ('EINVAL' otherwise).
 */
import { DmaError, hex } from '../errors.js';
import type { DmaAddr } from '../addresses.js';
import type { DmaSegment, DmaSgTable, SgEntry } from '../dma/dma-api.js';
import { DmaPool, type DmaPoolBlock } from '../dma/dma-pool.js';
import type { Completion, Device } from './device.js';
import type { DriverHost } from './driver-host.js';
import { firstDifference, ioPattern, readEntries, truncate, writeEntries } from './io-check.js';
import {
  NVME_CTRL_PAGE_SIZE,
  NVME_MAX_TRANSFER,
  NVME_MAX_NLB,
  NVME_CMD_FLUSH,
  NVME_CMD_READ,
  NVME_CMD_WRITE,
  NVME_SC_SUCCESS,
  NVME_SC_LBA_RANGE,
  nvmeStatusName,
} from './nvme-command.js';

/** One namespace as the host sees it (Linux: struct nvme_ns). */
export interface NvmeNamespace {
  readonly nsid: 1;
  readonly lbaSize: number;
  /** Capacity in logical blocks. */
  readonly blocks: number;
  /** The media itself (a live view; the device is its only writer): for checks. */
  readonly media: Uint8Array;
}

/** A command as nvme-command.ts carries it; nlb is 0-based as in NVMe. */
export interface NvmeCommand {
  opcode: number;
  slba: number;
  nlb: number;
  prp1: number;
  prp2: number;
}

/** A completion with its NVMe status code and the spec's name for it. */
export interface NvmeCompletion extends Completion {
  /** The NVMe status code (nvme-command.ts). */
  sc: number;
  statusName: string;
}

/** What verifiedIo() reports. */
export interface NvmeVerifiedIo {
  verified: boolean;
  bytes: number;
  /** Where the check failed, if it did. */
  detail: string | null;
}

const SMALL_POOL_BLOCK = 256;
const SMALL_POOL_ENTRIES = SMALL_POOL_BLOCK / 8;
const LIST_ENTRIES = NVME_CTRL_PAGE_SIZE / 8;

/** The PRPs of one command and the list blocks they took. */
interface Prps {
  prp1: number;
  prp2: number;
  lists: DmaPoolBlock[];
  pool: DmaPool | null;
}

export class NvmeDriver {
  readonly ns: NvmeNamespace;
  /** Commands whose PRP2 pointed to a PRP list, and the page entries those lists held (chain pointers not counted). */
  readonly prpStats = { listCommands: 0, listEntries: 0 };
  private readonly prpPagePool: DmaPool;
  private readonly prpSmallPool: DmaPool;

  constructor(
    private readonly host: DriverHost,
    readonly dev: Device,
  ) {
    const o = dev.modelOptions.nvme;
    if (dev.model !== 'nvme' || !o) throw new DmaError('ENODEV', `nvme: device ${dev.bdf} is a ${dev.model}, not an nvme controller`);
    this.ns = { nsid: 1, lbaSize: o.lbaSize, blocks: Math.floor(o.media.byteLength / o.lbaSize), media: new Uint8Array(o.media) };
    this.prpPagePool = new DmaPool(host.dma, dev, 'prp list page', NVME_CTRL_PAGE_SIZE);
    this.prpSmallPool = new DmaPool(host.dma, dev, 'prp list 256', SMALL_POOL_BLOCK);
  }

  /** Reads blocks from `lba` into `buffers` (their total length is the transfer). */
  read(lba: number, buffers: readonly SgEntry[]): Promise<NvmeCompletion> {
    return this.rw(NVME_CMD_READ, lba, buffers);
  }

  /** Writes `buffers` to the blocks from `lba` on. */
  write(lba: number, buffers: readonly SgEntry[]): Promise<NvmeCompletion> {
    return this.rw(NVME_CMD_WRITE, lba, buffers);
  }

  /** FLUSH (the media is never volatile here; the command completes at once). */
  async flush(): Promise<NvmeCompletion> {
    return this.expectSuccess('FLUSH', 0, 0, await this.submitCommand({ opcode: NVME_CMD_FLUSH, slba: 0, nlb: 0, prp1: 0, prp2: 0 }));
  }

  /**
   * Submits one raw command and resolves with its completion whatever the status (read and
   * write throw on failure instead). For tests that need what the driver would never build.
   */
  async submitCommand(cmd: NvmeCommand): Promise<NvmeCompletion> {
    for (const k of ['opcode', 'slba', 'nlb'] as const) {
      const v = cmd?.[k];
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new DmaError('EINVAL', `nvme ${this.dev.bdf}: command ${k} ${String(v)} must be a u32`);
    }
    for (const k of ['prp1', 'prp2'] as const) {
      if (!Number.isSafeInteger(cmd[k]) || cmd[k] < 0) throw new DmaError('EINVAL', `nvme ${this.dev.bdf}: command ${k} ${String(cmd[k])} is not a DMA address`);
    }
    const c = await this.dev.submit(cmd.prp1, cmd.prp2, cmd.nlb, cmd.opcode, cmd.slba);
    return { ...c, sc: c.result, statusName: nvmeStatusName(c.result) };
  }

  /**
   * One I/O for workloads, over buffers the caller mapped ('bidirectional', e.g. by a scenario
   * runner): writes a pattern of `len` bytes from the buffers to `lba`, checks the media, clears
   * the buffers, reads the blocks back into them and compares. Never throws for a device status:
   * it reports verified: false with the reason.
   */
  async verifiedIo(io: { sg: DmaSgTable; len: number; lba?: number; seed?: number }): Promise<NvmeVerifiedIo> {
    const { sg, len } = io;
    const lba = io.lba ?? 0;
    const ram = this.host.ram;
    const dma = this.host.dma;
    if (sg?.dir !== 'bidirectional') throw new DmaError('EINVAL', `nvme ${this.dev.bdf}: verifiedIo needs a bidirectional mapping (got ${String(sg?.dir)})`);
    const have = sg.entries.reduce((s, e) => s + e.len, 0);
    if (!Number.isInteger(len) || len <= 0 || len > have) throw new DmaError('EINVAL', `nvme ${this.dev.bdf}: verifiedIo length ${String(len)} must be in [1, ${have}] (the mapped buffers)`);
    const nlb = this.blocksOf(len, 'verifiedIo');
    const want = ioPattern(len, io.seed ?? lba);
    writeEntries(ram, sg, want);
    dma.syncForDevice(this.dev, sg);
    const segs = truncate(sg.segments, len);
    const w = await this.io(NVME_CMD_WRITE, lba, nlb, segs);
    if (w.sc !== NVME_SC_SUCCESS) return { verified: false, bytes: 0, detail: `WRITE: ${w.statusName}` };
    const at = lba * this.ns.lbaSize;
    const media = this.ns.media.subarray(at, at + len);
    const bad = firstDifference(media, want);
    if (bad >= 0) return { verified: false, bytes: len, detail: `WRITE: media byte ${bad} at LBA ${lba} differs from the buffers` };
    writeEntries(ram, sg, new Uint8Array(len));
    dma.syncForDevice(this.dev, sg);
    const r = await this.io(NVME_CMD_READ, lba, nlb, segs);
    if (r.sc !== NVME_SC_SUCCESS) return { verified: false, bytes: len, detail: `READ: ${r.statusName}` };
    dma.syncForCpu(this.dev, sg);
    const back = readEntries(ram, sg, len);
    const bad2 = firstDifference(back, want);
    if (bad2 >= 0) return { verified: false, bytes: 2 * len, detail: `READ: buffer byte ${bad2} differs from what was written` };
    return { verified: true, bytes: 2 * len, detail: null };
  }

  /**
   * READ or WRITE of `len` bytes at `lba` over DMA segments the caller mapped (and syncs): the
   * PRPs are built from the segments as nvme_map_data does after dma_map_sg. Resolves with the
   * completion whatever its status (a scenario workload counts failures instead of throwing).
   */
  submitIo(op: 'read' | 'write', lba: number, segments: readonly DmaSegment[], len: number): Promise<NvmeCompletion> {
    const name = op === 'read' ? 'READ' : 'WRITE';
    if (!Number.isInteger(lba) || lba < 0 || lba > 0xffffffff) throw new DmaError('EINVAL', `nvme ${this.dev.bdf}: ${name} LBA ${String(lba)} must be a u32`);
    if (!Array.isArray(segments) || segments.length === 0) throw new DmaError('EINVAL', `nvme ${this.dev.bdf}: ${name} needs a non-empty array of DMA segments { addr, len }`);
    return this.io(op === 'read' ? NVME_CMD_READ : NVME_CMD_WRITE, lba, this.blocksOf(len, name), segments);
  }

  /** Frees the PRP-list pools ('EBUSY' while a command is outstanding). */
  close(): void {
    this.prpPagePool.destroy();
    this.prpSmallPool.destroy();
  }

  /** PRP-list blocks in use (0 when no command is outstanding). */
  prpListsInUse(): number {
    return this.prpPagePool.inUse() + this.prpSmallPool.inUse();
  }

  private async rw(opcode: number, lba: number, buffers: readonly SgEntry[]): Promise<NvmeCompletion> {
    const op = opcode === NVME_CMD_READ ? 'READ' : 'WRITE';
    if (!Array.isArray(buffers) || buffers.length === 0) throw new DmaError('EINVAL', `nvme ${this.dev.bdf}: ${op} needs a non-empty array of buffers { pa, len }`);
    if (!Number.isInteger(lba) || lba < 0 || lba > 0xffffffff) throw new DmaError('EINVAL', `nvme ${this.dev.bdf}: ${op} LBA ${String(lba)} must be a u32`);
    const len = buffers.reduce((s, b) => s + (Number.isSafeInteger(b?.len) ? b.len : NaN), 0);
    const nlb = this.blocksOf(len, op);
    checkVirtBoundary(this.dev.bdf, op, buffers.map((b) => ({ addr: Number(b.pa), len: b.len })), 'buffer', 'PA');
    const sg = this.host.dma.mapSg(this.dev, buffers, opcode === NVME_CMD_READ ? 'from-device' : 'to-device');
    try {
      return this.expectSuccess(op, lba, nlb, await this.io(opcode, lba, nlb, sg.segments));
    } finally {
      this.host.dma.unmapSg(this.dev, sg);
    }
  }

  /** NLB (0-based) for a transfer of len bytes; 'EINVAL' unless whole blocks within MDTS. */
  private blocksOf(len: number, op: string): number {
    const b = this.ns.lbaSize;
    if (!Number.isSafeInteger(len) || len <= 0 || len % b !== 0 || len > NVME_MAX_TRANSFER || len / b - 1 > NVME_MAX_NLB) {
      throw new DmaError('EINVAL', `nvme ${this.dev.bdf}: ${op} of ${String(len)} bytes: a transfer is whole ${b}-byte blocks, at most ${NVME_MAX_TRANSFER} bytes (MDTS)`);
    }
    return len / b - 1;
  }

  /** nvme_pci_setup_prps + submit + free the lists. */
  private async io(opcode: number, slba: number, nlb: number, segments: readonly DmaSegment[]): Promise<NvmeCompletion> {
    const prps = this.setupPrps(segments, (nlb + 1) * this.ns.lbaSize);
    try {
      return await this.submitCommand({ opcode, slba, nlb, prp1: prps.prp1, prp2: prps.prp2 });
    } finally {
      for (const b of prps.lists) prps.pool!.release(b);
    }
  }

  /** PRP1, PRP2 and the PRP lists for DMA segments covering `len` bytes. */
  private setupPrps(segments: readonly DmaSegment[], len: number): Prps {
    checkVirtBoundary(this.dev.bdf, 'PRP setup', segments, 'DMA segment', 'DMA address');
    const P = NVME_CTRL_PAGE_SIZE;
    const prp1 = segments[0].addr;
    const pages: number[] = []; // every page after PRP1's
    let left = len - Math.min(len, P - (prp1 % P));
    for (let i = 0; i < segments.length && left > 0; i++) {
      const s = segments[i];
      const firstPage = i === 0 ? s.addr - (s.addr % P) + P : s.addr;
      for (let a = firstPage; a < s.addr + s.len && left > 0; a += P) {
        pages.push(a);
        left -= Math.min(P, left);
      }
    }
    if (left > 0) throw new DmaError('EINVAL', `nvme ${this.dev.bdf}: the DMA segments hold fewer than the ${len} bytes of the command`);
    if (pages.length === 0) return { prp1, prp2: 0, lists: [], pool: null };
    if (pages.length === 1) return { prp1, prp2: pages[0], lists: [], pool: null };
    const small = pages.length <= SMALL_POOL_ENTRIES;
    const pool = small ? this.prpSmallPool : this.prpPagePool;
    // How many entries each list holds: a full page with more to come ends in a chain pointer.
    const counts: number[] = [];
    for (let rest = pages.length; rest > 0; ) {
      const n = rest <= LIST_ENTRIES ? rest : LIST_ENTRIES - 1;
      counts.push(n);
      rest -= n;
    }
    const lists: DmaPoolBlock[] = [];
    try {
      // A list page that cannot be had (ENOMEM) fails the I/O; the ones taken go back (nvme_free_prps).
      for (let i = 0; i < counts.length; i++) lists.push(pool.alloc());
    } catch (e) {
      for (const b of lists) pool.release(b);
      throw e;
    }
    this.prpStats.listCommands++;
    this.prpStats.listEntries += pages.length;
    let k = 0;
    counts.forEach((n, li) => {
      const chained = li < counts.length - 1;
      const bytes = new Uint8Array((n + (chained ? 1 : 0)) * 8);
      const v = new DataView(bytes.buffer);
      const put = (i: number, addr: number) => {
        v.setUint32(i * 8, addr >>> 0, true);
        v.setUint32(i * 8 + 4, Math.floor(addr / 2 ** 32), true);
      };
      for (let i = 0; i < n; i++) put(i, pages[k++]);
      if (chained) put(n, lists[li + 1].addr);
      this.host.ram.write(lists[li].cpuAddr, bytes); // coherent memory: no sync
    });
    return { prp1, prp2: lists[0].addr, lists, pool };
  }

  private expectSuccess(op: string, lba: number, nlb: number, c: NvmeCompletion): NvmeCompletion {
    if (c.status === 'ok' && c.sc === NVME_SC_SUCCESS) return c;
    const what = `nvme ${this.dev.bdf}: ${op} of ${nlb + 1} block(s) at LBA ${lba}: ${c.statusName} (status 0x${c.sc.toString(16)})`;
    if (c.status === 'fault' && c.fault) {
      throw new DmaError('EFAULT', `${what}: the IOMMU refused a DMA ${c.fault.access} at ${hex(c.fault.addr)} (${c.fault.reason}); nothing was transferred`, { cause: c });
    }
    throw new DmaError(c.sc === NVME_SC_LBA_RANGE ? 'ERANGE' : c.status === 'aborted' ? 'EIO' : 'EINVAL', `${what}; nothing was transferred`, { cause: c });
  }
}

/**
 * NVMe's virtual boundary (Linux: blk_queue_virt_boundary(NVME_CTRL_PAGE_SIZE - 1)): a PRP
 * transfer is one page run, so only the first piece may start inside a page and only the last
 * may end inside one.
 */
function checkVirtBoundary(bdf: string, op: string, pieces: ReadonlyArray<{ addr: number | DmaAddr; len: number }>, what: string, addrName: string): void {
  const P = NVME_CTRL_PAGE_SIZE;
  pieces.forEach((p, i) => {
    if (i > 0 && p.addr % P !== 0) {
      throw new DmaError('EINVAL', `nvme ${bdf}: ${op}: ${what} ${i} starts at ${addrName} ${hex(p.addr)}, inside a page: PRPs need every ${what} but the first to start on a ${P}-byte page`);
    }
    if (i < pieces.length - 1 && (p.addr + p.len) % P !== 0) {
      throw new DmaError('EINVAL', `nvme ${bdf}: ${op}: ${what} ${i} ends at ${addrName} ${hex(p.addr + p.len)}, inside a page: PRPs need every ${what} but the last to end on a ${P}-byte page`);
    }
  });
}
