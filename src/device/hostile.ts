/**
 * The driver side of the hostile device model (workers/models/hostile.ts): builds a burst's
 * command block (and access list) in coherent DMA memory, submits it, and returns what the
 * device reports. The device's own rings and the command block are spared by random bursts, so
 * every burst can report (src/device/hostile-access.ts); nothing else is.
 */
import { DmaError } from '../errors.js';
import type { DmaApi, DmaCoherent } from '../dma/dma-api.js';
import type { GuestRam } from '../memory/guest-ram.js';
import type { Device, Completion } from './device.js';
import { PAGE_SIZE, type DmaAddr, type Pa } from '../addresses.js';
import { SQE_SIZE, CQE_SIZE } from './rings.js';
import {
  HOSTILE_BLOCK_SIZE,
  HOSTILE_LIST_ENTRY,
  HOSTILE_RESULT_OFFSET,
  HostileAccessGenerator,
  checkBurst,
  decodeResult,
  encodeBurst,
  encodeListEntry,
  type AddressRange,
  type HostileAccess,
  type HostileBurst,
  type HostileResult,
} from './hostile-access.js';

export interface HostileBurstOptions {
  seed?: number;
  /** Random accesses (ignored when `list` is given). Default 1000. */
  count?: number;
  /** Where random addresses fall (DMA addresses); absent or empty = the whole DMA-mask space. */
  targets?: AddressRange[];
  /** Chosen accesses instead of random ones, read by the device from guest RAM by DMA. */
  list?: HostileAccess[];
  /** Byte written by allowed writes (default 0xa5). */
  pattern?: number;
  /** Share of writes among random accesses, in percent (default 50). */
  writePercent?: number;
  /** Longest random access in bytes (default 4096; accesses never cross a page). */
  maxLen?: number;
  /**
   * A coherent buffer of at least HOSTILE_BLOCK_SIZE bytes, allocated for `dev` by the caller and
   * kept across bursts (not freed here): the device's domain then does not change from burst to
   * burst (in lazy mode a freed block's IOVA could stay reachable through a stale IOTLB entry).
   */
  commandBlock?: DmaCoherent;
}

export interface HostileBurstResult extends HostileResult {
  completion: Completion;
  /** Where the command block was (freed again): the device wrote its counts there by DMA. */
  commandBlock: { pa: Pa; addr: DmaAddr; size: number };
  /** Where the access list was (list mode; freed again). */
  accessList: { pa: Pa; addr: DmaAddr; size: number } | null;
  /** The burst as the device received it (with the spared ranges). */
  burst: HostileBurst;
}

function pages(addr: number, len: number): AddressRange {
  const base = Math.floor(addr / PAGE_SIZE) * PAGE_SIZE;
  return { base, size: Math.ceil((addr + len) / PAGE_SIZE) * PAGE_SIZE - base };
}

/** Runs one hostile burst on `dev` (model 'hostile') and returns the device's counts. */
export async function hostileBurst(m: { dma: DmaApi; ram: GuestRam }, dev: Device, o: HostileBurstOptions = {}): Promise<HostileBurstResult> {
  if (dev.model !== 'hostile') throw new DmaError('EINVAL', `device ${dev.bdf}: a hostile burst needs model 'hostile', not '${dev.model}'`);
  if (o.commandBlock && o.commandBlock.size < HOSTILE_BLOCK_SIZE) {
    throw new DmaError('EINVAL', `device ${dev.bdf}: hostile command block of ${o.commandBlock.size} bytes is smaller than ${HOSTILE_BLOCK_SIZE}`);
  }
  const block = o.commandBlock ?? m.dma.allocCoherent(dev, HOSTILE_BLOCK_SIZE);
  const listBytes = (o.list?.length ?? 0) * HOSTILE_LIST_ENTRY;
  let list: ReturnType<DmaApi['allocCoherent']> | null = null;
  try {
    list = o.list ? m.dma.allocCoherent(dev, Math.max(listBytes, HOSTILE_LIST_ENTRY)) : null;
    const rings = dev.ringDma;
    const burst: HostileBurst = {
      seed: o.seed ?? 1,
      count: o.list ? o.list.length : (o.count ?? 1000),
      mode: o.list ? 'list' : 'random',
      pattern: o.pattern ?? 0xa5,
      writePercent: o.writePercent ?? 50,
      maxLen: o.maxLen ?? 4096,
      targets: o.targets ?? [],
      // Whole pages: the IOMMU maps the rest of each page of these buffers too.
      spares: [
        pages(rings.sq, dev.queueDepth * SQE_SIZE),
        pages(rings.cq, dev.queueDepth * CQE_SIZE),
        pages(block.addr, HOSTILE_BLOCK_SIZE),
        ...(list ? [pages(list.addr, listBytes)] : []),
      ],
      listAddr: list?.addr ?? 0,
      listEntries: o.list?.length ?? 0,
    };
    checkBurst(burst, `device ${dev.bdf}`);
    if (burst.mode === 'random' && !new HostileAccessGenerator(burst, dev.dmaMaskBits).drawable) {
      throw new DmaError('EINVAL', `device ${dev.bdf}: hostile burst targets lie beyond its ${dev.dmaMaskBits}-bit DMA mask (or in spared ranges): no address is left to draw`);
    }
    const bytes = new Uint8Array(HOSTILE_BLOCK_SIZE);
    encodeBurst(new DataView(bytes.buffer), 0, burst);
    m.ram.write(block.cpuAddr, bytes);
    if (list && o.list) {
      const lb = new Uint8Array(listBytes);
      const lv = new DataView(lb.buffer);
      o.list.forEach((a, i) => encodeListEntry(lv, i * HOSTILE_LIST_ENTRY, a));
      m.ram.write(list.cpuAddr, lb);
    }
    const completion = await dev.submit(block.addr, 0, HOSTILE_BLOCK_SIZE, 0);
    if (completion.status === 'invalid') throw new DmaError('EINVAL', `device ${dev.bdf}: hostile burst descriptor rejected`);
    const r = m.ram.read(block.cpuAddr + HOSTILE_RESULT_OFFSET, 32);
    const commandBlock = { pa: block.cpuAddr, addr: block.addr, size: HOSTILE_BLOCK_SIZE };
    const accessList = list ? { pa: list.cpuAddr, addr: list.addr, size: listBytes } : null;
    return { ...decodeResult(new DataView(r.buffer, r.byteOffset, 32), 0), completion, commandBlock, accessList, burst };
  } finally {
    if (!o.commandBlock) m.dma.freeCoherent(dev, block);
    if (list) m.dma.freeCoherent(dev, list);
  }
}
