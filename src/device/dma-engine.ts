/**
 * The DMA engine of one device: how a device's reads and writes reach guest RAM, seen from the
 * device (it runs in the device's worker thread). Not a shared layout of its own: it reads the
 * IOMMU's structures through their owning modules and copies bytes in guest RAM.
 *
 * A transfer (one descriptor's work) goes:
 *   begin()      enter the device epoch, load the context entry, apply IOTLB invalidations
 *   translate()  every page of every range the transfer will touch: IOTLB hit, or a page-table
 *                walk; a missing entry, a missing permission, an address outside the 48-bit IOVA
 *                space or outside RAM records ONE fault and aborts the transfer before any byte
 *                moves (so RAM is untouched)
 *   copy         the translated runs, page-contiguous runs merged into one copy
 *   end()        leave the epoch (a strict unmap waiting for this device may return)
 * Translation and permission checks apply per page, which is also where PCIe splits a transfer
 * into TLPs (at most max-payload bytes, never across a page); TLPs are counted, but the bytes of
 * physically contiguous pages are moved by one copy. The epoch spans the whole descriptor
 * (fetch, copy, completion), so a strict unmap waits at most one descriptor.
 *
 * Peer-to-peer: the machine gives the engine the device's P2P routing table (pci/p2p-route.ts):
 * the windows of other functions' memory BARs that switches route to directly, by the
 * untranslated address, before any request reaches the IOMMU. translate() checks it first, once
 * per range (no routes: one compare). A range inside one window becomes a single run in that
 * BAR's memory (RunList.bar); a range straddling a window edge is refused as 'out-of-range' (we
 * do not split one transfer between a peer and the IOMMU). BAR memory is a SharedArrayBuffer
 * backing the first bytes of the BAR (machine-topology.ts caps it): reads past the backing return
 * zeros and writes there are dropped, as a device ignores writes to unimplemented registers.
 */
import type { GuestRamHandle } from '../memory/guest-ram.js';
import { GuestRam } from '../memory/guest-ram.js';
import type { IommuHandle } from '../iommu/iommu-handle.js';
import { TablePool } from '../iommu/table-pool.js';
import { walkPage, PTE_READ, PTE_WRITE } from '../iommu/page-table.js';
import { ContextTable } from '../iommu/context-table.js';
import { DomainTable, DOMAIN_DMA, DOMAIN_IDENTITY } from '../iommu/domain-table.js';
import { Invalidation } from '../iommu/invalidation.js';
import { DeviceEpochs } from '../iommu/device-epoch.js';
import { FaultRing, REASON_NOT_PRESENT, REASON_PERMISSION, REASON_OUT_OF_RANGE, REASON_NO_CONTEXT } from '../iommu/fault-ring.js';
import { Iotlb, type IotlbHandle, IOTLB_READ, IOTLB_WRITE, iotlbSlot } from '../iommu/iotlb.js';
import { STAT } from './device-control.js';
import { TRACE_KIND, type TraceWriter } from '../trace/trace-ring.js';

/** One P2P route as the device worker receives it: a peer's BAR window and its memory. */
export interface P2pRouteConfig {
  /** Bus address range [base, base + size) of the peer's BAR. */
  base: number;
  size: number;
  /** The peer (`DDDD:BB:DD.F`) and BAR number, for messages. */
  target: string;
  bar: number;
  /** Backing of the BAR's first mem.byteLength bytes (shared with the machine and the peer). */
  mem: SharedArrayBuffer;
}

export interface DmaEngineConfig {
  ram: GuestRamHandle;
  iommu: IommuHandle;
  requesterId: number;
  /** Device slot in the IOMMU's epoch table. */
  slot: number;
  iotlb: IotlbHandle;
  /** PCIe Max_Payload_Size in bytes (128..4096). */
  maxPayload: number;
  /** Peer BAR windows this device reaches directly (sorted by base, not overlapping). */
  p2p?: readonly P2pRouteConfig[];
}

const PAGE = 4096;
const IOVA_LIMIT = 2 ** 48;
/** Largest single transfer a descriptor may ask for (bounds the translation scratch). */
export const MAX_TRANSFER = 64 * 1024 * 1024;
const MAX_RUNS = MAX_TRANSFER / PAGE + 2;

/** TLPs a transfer of len bytes at addr becomes: page-bounded pieces of at most mp bytes. */
export function tlpCount(addr: number, len: number, mp: number): number {
  const first = Math.min(PAGE - (addr % PAGE), len);
  let rest = len - first;
  const full = Math.floor(rest / PAGE);
  rest -= full * PAGE;
  return Math.ceil(first / mp) + full * Math.ceil(PAGE / mp) + (rest > 0 ? Math.ceil(rest / mp) : 0);
}

/** Translated pieces of one address range: RAM offsets and lengths, contiguous pieces merged. */
export class RunList {
  readonly offs = new Float64Array(MAX_RUNS);
  readonly lens = new Float64Array(MAX_RUNS);
  count = 0;
  /** Non-null: the single run is an offset into this peer BAR memory, not into RAM (P2P). */
  bar: Uint8Array | null = null;
  /** The BAR window size (the memory may back only its first bytes). */
  barSize = 0;
  reset(): void {
    this.count = 0;
    this.bar = null;
  }
  push(off: number, len: number): void {
    const n = this.count;
    // Merge with the previous piece when contiguous, but never across a 1 GiB RAM window.
    if (n > 0 && this.offs[n - 1] + this.lens[n - 1] === off && (off & 0x3fffffff) !== 0) {
      this.lens[n - 1] += len;
    } else {
      this.offs[n] = off;
      this.lens[n] = len;
      this.count = n + 1;
    }
  }
}

export class DmaEngine {
  readonly ram: GuestRam;
  readonly iotlb: Iotlb;
  readonly requesterId: number;
  readonly slot: number;
  readonly enabled: boolean;
  private readonly maxPayload: number;
  private readonly entries: Int32Array;
  private readonly contexts: ContextTable;
  private readonly domains: DomainTable;
  private readonly inval: Invalidation;
  private readonly epochs: DeviceEpochs;
  private readonly faults: FaultRing;

  // Per-transfer state.
  private domain = -1;
  private incarnation = 0;
  private domainType = 0;
  private root = 0;
  private lastGen = 0;
  private lastTail = 0;
  private inTransfer = false;
  // The IOTLB's arrays and the RAM region of the last fill, as flat fields for the miss path.
  private readonly tlbTags: Float64Array;
  private readonly tlbOffs: Float64Array;
  private readonly tlbFlags: Uint8Array;
  private regionBase = 0;
  private regionEnd = 0;
  private regionOffset = 0;

  // Peer-to-peer windows: [p2pLo[i], p2pHi[i]) routes to p2pMem[i].
  private readonly p2pCount: number;
  private readonly p2pLo: Float64Array;
  private readonly p2pHi: Float64Array;
  private readonly p2pMem: Uint8Array[];

  /** Set by translate() when it fails. */
  faultAddr = 0;
  faultReason = 0;
  faultWrite = false;

  /** Counters, flushed into the device's stats block by the owner. */
  readonly counts = new Float64Array(Object.keys(STAT).length);

  /** The device thread's trace ring (null: tracing off); IOTLB misses and faults become instants. */
  trace: TraceWriter | null = null;

  constructor(cfg: DmaEngineConfig) {
    this.ram = GuestRam.attach(cfg.ram);
    this.iotlb = Iotlb.attach(cfg.iotlb);
    this.requesterId = cfg.requesterId;
    this.slot = cfg.slot;
    this.enabled = cfg.iommu.enabled;
    this.maxPayload = cfg.maxPayload;
    this.entries = TablePool.attach(cfg.iommu.pool).entries;
    this.contexts = ContextTable.attach(cfg.iommu.contexts);
    this.domains = DomainTable.attach(cfg.iommu.domains);
    this.inval = Invalidation.attach(cfg.iommu.invalidation);
    this.epochs = DeviceEpochs.attach(cfg.iommu.epochs);
    this.faults = FaultRing.attach(cfg.iommu.faults);
    this.tlbTags = this.iotlb.tags;
    this.tlbOffs = this.iotlb.offs;
    this.tlbFlags = this.iotlb.flags;
    const routes = cfg.p2p ?? [];
    this.p2pCount = routes.length;
    this.p2pLo = Float64Array.from(routes, (r) => r.base);
    this.p2pHi = Float64Array.from(routes, (r) => r.base + r.size);
    this.p2pMem = routes.map((r) => new Uint8Array(r.mem));
    if (PTE_READ >>> 2 !== IOTLB_READ || PTE_WRITE >>> 2 !== IOTLB_WRITE) throw new Error('PTE and IOTLB permission bits disagree');
  }

  /**
   * Starts a transfer: enter the epoch, then see the current context and invalidations.
   * ORDERING: the busy mark is stored before the context and generation are loaded; after the
   * generation is acknowledged the context is read again, and the loop repeats until it is
   * stable. So a detach whose flush this device acknowledged (it cleared the context first) is
   * seen before any translation, and the device never walks a domain it was detached from.
   */
  begin(): void {
    this.inTransfer = true;
    if (!this.enabled) return;
    this.epochs.enter(this.slot, this.lastGen);
    for (;;) {
      const d = this.contexts.domainOf(this.requesterId);
      if (d !== this.domain || (d >= 0 && this.domains.incarnation(d) !== this.incarnation)) {
        this.switchContext(d);
      } else if (d >= 0) {
        const g = this.inval.gen(d);
        this.lastTail = this.inval.apply(d, this.lastTail, this.iotlb);
        if (g !== this.lastGen) {
          this.lastGen = g;
          this.epochs.advance(this.slot, g);
        }
      }
      const now = this.contexts.domainOf(this.requesterId);
      if (now === this.domain && (now < 0 || this.domains.incarnation(now) === this.incarnation)) return;
    }
  }

  /** A new context (another domain, another incarnation, or none): nothing cached belongs to it. */
  private switchContext(d: number): void {
    this.iotlb.flushAll();
    this.domain = d;
    if (d < 0) {
      this.domainType = 0;
      this.root = 0;
      return;
    }
    this.incarnation = this.domains.incarnation(d);
    this.domainType = this.domains.typeCode(d);
    this.root = this.domains.root(d);
    this.lastGen = this.inval.gen(d);
    this.lastTail = this.inval.tail(d);
    this.epochs.advance(this.slot, this.lastGen);
  }

  /** Ends a transfer: from here on a strict unmap need not wait for this device. */
  end(): void {
    if (!this.inTransfer) return;
    this.inTransfer = false;
    if (this.enabled) this.epochs.exit(this.slot, this.lastGen);
    this.counts[STAT.iotlbFlushes] = this.iotlb.flushes;
  }

  /**
   * Translates [addr, addr + len) for a read or a write into `out`. Returns true, or false after
   * recording one fault (faultAddr/faultReason/faultWrite say which). Call between begin/end.
   */
  translate(addr: number, len: number, write: boolean, out: RunList): boolean {
    out.reset();
    if (len === 0) return true;
    if (this.p2pCount !== 0) {
      const r = this.routeP2p(addr, len, write, out);
      if (r !== 0) return r === 1;
    }
    if (!this.enabled || this.domainType === DOMAIN_IDENTITY) {
      // No translation: the DMA address is the physical address.
      if (this.enabled && this.domain < 0) return this.fault(addr, write, REASON_NO_CONTEXT);
      const off = this.ram.offsetOf(addr, len);
      if (off >= 0 && this.ram.size <= 2 ** 32) {
        out.push(off, len);
        this.counts[STAT.tlps] += tlpCount(addr, len, this.maxPayload);
        return true;
      }
      return this.translateFlat(addr, len, write, out);
    }
    if (this.domain < 0) return this.fault(addr, write, REASON_NO_CONTEXT);
    if (this.domainType !== DOMAIN_DMA) return this.fault(addr, write, REASON_NOT_PRESENT);
    if (addr + len > IOVA_LIMIT || addr < 0) return this.fault(Math.max(addr, IOVA_LIMIT), write, REASON_OUT_OF_RANGE);

    const tlb = this.iotlb;
    const tags = tlb.tags;
    const offs = tlb.offs;
    const flags = tlb.flags;
    const mask = tlb.mask;
    const need = write ? IOTLB_WRITE : IOTLB_READ;
    const firstPage = Math.floor(addr / PAGE);
    const lastPage = Math.floor((addr + len - 1) / PAGE);
    const oo = out.offs;
    const ol = out.lens;
    let inPage = addr - firstPage * PAGE;
    let left = len;
    let cnt = 0;
    let runEnd = -1;
    let misses = 0;
    let stale = 0;
    for (let page = firstPage; page <= lastPage; page++) {
      const n = left < PAGE - inPage ? left : PAGE - inPage;
      let i = iotlbSlot(page, mask);
      if (tags[i] !== page) {
        misses++;
        i = this.fill(page, i);
        if (i < 0) return this.abort(page - firstPage, misses, stale, page === firstPage ? addr : page * PAGE, write, REASON_NOT_PRESENT);
      }
      const f = flags[i];
      const off = offs[i];
      if ((f & need) === 0) return this.abort(page - firstPage + 1, misses, stale, page === firstPage ? addr : page * PAGE, write, REASON_PERMISSION);
      if (off < 0) return this.abort(page - firstPage + 1, misses, stale, page === firstPage ? addr : page * PAGE, write, REASON_OUT_OF_RANGE);
      stale += (f >>> 2) & 1; // IOTLB_STALE
      const o = off + inPage;
      // Merge with the previous piece when contiguous, but never across a 1 GiB RAM window.
      if (o === runEnd && (o & 0x3fffffff) !== 0) {
        ol[cnt - 1] += n;
      } else {
        oo[cnt] = o;
        ol[cnt] = n;
        cnt++;
      }
      runEnd = o + n;
      left -= n;
      inPage = 0;
    }
    out.count = cnt;
    const c = this.counts;
    c[STAT.iotlbHits] += lastPage - firstPage + 1 - misses;
    c[STAT.iotlbMisses] += misses;
    c[STAT.staleAccesses] += stale;
    c[STAT.tlps] += tlpCount(addr, len, this.maxPayload);
    return true;
  }

  /**
   * The P2P routing check: 0 = not in any peer window (go upstream), 1 = routed to a peer (out
   * holds one run in its BAR memory), 2 = straddles a window edge (one fault recorded).
   */
  private routeP2p(addr: number, len: number, write: boolean, out: RunList): number {
    const end = addr + len;
    for (let i = 0; i < this.p2pCount; i++) {
      const lo = this.p2pLo[i];
      const hi = this.p2pHi[i];
      if (addr >= hi || end <= lo) continue;
      if (addr < lo || end > hi) {
        this.fault(addr < lo ? lo : hi, write, REASON_OUT_OF_RANGE);
        return 2;
      }
      out.bar = this.p2pMem[i];
      out.barSize = hi - lo;
      out.offs[0] = addr - lo;
      out.lens[0] = len;
      out.count = 1;
      this.counts[STAT.tlps] += tlpCount(addr, len, this.maxPayload);
      return 1;
    }
    return 0;
  }

  /** Counts bytes that went to or came from a peer's BAR. */
  private countP2p(runs: RunList): void {
    if (runs.bar === null) return;
    this.counts[STAT.p2pTransfers]++;
    this.counts[STAT.p2pBytes] += runs.lens[0];
  }

  /** IOTLB miss: walks the page table and fills entry i; returns i, or -1 when not present. */
  private fill(page: number, i: number): number {
    if (this.trace !== null) this.trace.instant(TRACE_KIND.iotlbMiss, page * PAGE, 0, 0, this.domain);
    const pte = walkPage(this.entries, this.root, page);
    if (pte === 0) return -1;
    const pa = (pte >>> 4) * PAGE;
    // The region of the last fill first: pages of one buffer share a region.
    const off = pa >= this.regionBase && pa < this.regionEnd ? this.regionOffset + (pa - this.regionBase) : this.pageOffset(pa);
    this.tlbTags[i] = page;
    this.tlbOffs[i] = off;
    this.tlbFlags[i] = (pte >>> 2) & 3; // PTE_READ/PTE_WRITE are IOTLB_READ/IOTLB_WRITE shifted by 2
    return i;
  }

  /** Counts what a failed translation looked up, then records its fault. */
  private abort(looked: number, misses: number, stale: number, addr: number, write: boolean, reason: number): false {
    const c = this.counts;
    c[STAT.iotlbHits] += looked - misses;
    c[STAT.iotlbMisses] += misses;
    c[STAT.staleAccesses] += stale;
    return this.fault(addr, write, reason);
  }

  /** RAM-buffer offset of the page at pa, or -1 when it is not RAM; remembers the region. */
  private pageOffset(pa: number): number {
    for (const x of this.ram.regions) {
      if (pa >= x.base && pa + PAGE <= x.base + x.size) {
        this.regionBase = x.base;
        this.regionEnd = x.base + x.size;
        this.regionOffset = x.offset;
        return x.offset + (pa - x.base);
      }
    }
    return -1;
  }

  /** Untranslated range that spans regions or windows: page by page. */
  private translateFlat(addr: number, len: number, write: boolean, out: RunList): boolean {
    this.counts[STAT.tlps] += tlpCount(addr, len, this.maxPayload);
    const end = addr + len;
    let a = addr;
    while (a < end) {
      const n = Math.min(PAGE - (a % PAGE), end - a);
      const off = this.ram.offsetOf(a, n);
      if (off < 0) return this.fault(a, write, REASON_OUT_OF_RANGE);
      out.push(off, n);
      a += n;
    }
    return true;
  }

  private fault(addr: number, write: boolean, reason: number): false {
    this.faultAddr = addr;
    this.faultWrite = write;
    this.faultReason = reason;
    this.counts[STAT.faults]++;
    this.faults.record(this.requesterId, addr, write, reason, this.domain);
    if (this.trace !== null) this.trace.instant(TRACE_KIND.fault, addr, this.domain, 0, reason | (write ? 0x100 : 0));
    return false;
  }

  /** Copies the bytes of `src` runs to `dst` runs (equal total lengths). */
  copyRuns(dst: RunList, src: RunList): void {
    const ram = this.ram;
    if (dst.bar !== null || src.bar !== null) {
      // Peer-to-peer on at least one side: through a local buffer (rare, not the fast path).
      let total = 0;
      for (let i = 0; i < src.count; i++) total += src.lens[i];
      const tmp = new Uint8Array(total);
      this.readRuns(src, tmp);
      this.writeRuns(dst, tmp);
      return;
    }
    if (dst.count === 1 && src.count === 1) {
      ram.copy(dst.offs[0], src.offs[0], src.lens[0]);
      return;
    }
    let di = 0;
    let si = 0;
    let dDone = 0;
    let sDone = 0;
    while (di < dst.count && si < src.count) {
      const n = Math.min(dst.lens[di] - dDone, src.lens[si] - sDone);
      ram.copy(dst.offs[di] + dDone, src.offs[si] + sDone, n);
      dDone += n;
      sDone += n;
      if (dDone === dst.lens[di]) {
        di++;
        dDone = 0;
      }
      if (sDone === src.lens[si]) {
        si++;
        sDone = 0;
      }
    }
  }

  /** Fills the runs with one byte value. */
  fillRuns(dst: RunList, value: number): void {
    if (dst.bar !== null) {
      const from = dst.offs[0];
      dst.bar.fill(value, Math.min(from, dst.bar.length), Math.min(from + dst.lens[0], dst.bar.length));
      this.countP2p(dst);
      return;
    }
    for (let i = 0; i < dst.count; i++) this.ram.fillOffset(dst.offs[i], dst.lens[i], value);
  }

  /** Copies the runs' bytes out to a local buffer (descriptor fetch). */
  readRuns(src: RunList, into: Uint8Array): void {
    if (src.bar !== null) {
      // Bytes past the BAR's backing read as zero.
      const from = src.offs[0];
      const n = src.lens[0];
      const have = Math.max(0, Math.min(n, src.bar.length - from));
      into.set(src.bar.subarray(from, from + have), 0);
      into.fill(0, have, n);
      this.countP2p(src);
      return;
    }
    let k = 0;
    for (let i = 0; i < src.count; i++) {
      into.set(this.ram.view(src.offs[i], src.lens[i]), k);
      k += src.lens[i];
    }
  }

  /** Copies a local buffer into the runs (completion write). */
  writeRuns(dst: RunList, from: Uint8Array): void {
    if (dst.bar !== null) {
      // Bytes past the BAR's backing are dropped (clamped as fillRuns does: a write that starts
      // past the backing stores nothing; TypedArray.set would throw for an offset past the end).
      const at = dst.offs[0];
      const have = Math.max(0, Math.min(dst.lens[0], dst.bar.length - at));
      if (have > 0) dst.bar.set(from.subarray(0, have), at);
      this.countP2p(dst);
      return;
    }
    let k = 0;
    for (let i = 0; i < dst.count; i++) {
      this.ram.view(dst.offs[i], dst.lens[i]).set(from.subarray(k, k + dst.lens[i]));
      k += dst.lens[i];
    }
  }
}
