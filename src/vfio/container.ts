/**
 * A VFIO container (/dev/vfio/vfio) with the type1 IOMMU backend (vfio_iommu_type1.c): one IOMMU
 * domain shared by every group in it, and the user's DMA mappings (MAP_DMA / UNMAP_DMA).
 *
 * Life cycle, as in Linux: a container starts unprivileged; a group joins with
 * VfioGroup.setContainer(); only then may setIommu('type1v2') (VFIO_SET_IOMMU) run, which creates
 * the domain and moves every group in the container into it (each group's context entries switch
 * in one step, Iommu.replaceDomain). Groups joining later move in at once. When the last group
 * leaves, the domain and all its mappings go, and the container is unset again.
 *
 * MAP_DMA follows vfio_dma_do_map(), in its order: a value that does not fit → EINVAL; neither
 * read nor write → EINVAL; no IOMMU set → EINVAL; size 0, or size/iova/vaddr not aligned to the
 * smallest page size (4 KiB) → EINVAL; iova or vaddr range that wraps → EINVAL; overlap with an
 * existing mapping → EEXIST; dma_entry_limit mappings reached → ENOSPC; a range outside the
 * domain's aperture or inside a reserved region → EINVAL; vaddr not backed by memory (pinning
 * fails) → EFAULT. `vaddr` is a guest-physical address: our stand-in for the user's virtual
 * address, "pinned" as it is.
 * UNMAP_DMA follows vfio_dma_do_unmap(): `all` with an iova or size → EINVAL; iova or size not
 * page aligned, size 0 or wrapping → EINVAL; type1v2: a range that would split a mapping at either
 * end → EINVAL; otherwise every mapping inside the range goes and the bytes unmapped are returned
 * (0 when nothing was mapped there). type1 (v1) keeps v1's quirks: an unmap that starts inside a
 * mapping unmaps nothing further, one that covers a mapping's first IOVA unmaps all of it.
 * Unmaps are strict: they return once no device can use the old translation.
 *
 * The machine's own device rings: a device keeps its descriptor and completion rings in guest
 * RAM and fetches them by DMA. When its group moves into the container's domain, the machine maps
 * the rings there inside the x86 MSI window [0xfee00000, 0xfef00000), which VFIO reports as
 * reserved (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE leaves it out, MAP_DMA there is EINVAL), and
 * reprograms the device's ring addresses (Device.programRings); both are undone when the group
 * leaves. So the user's IOVA space is entirely the user's: unlike a default DMA domain (see
 * machine-topology.ts) the container's domain reserves no IOVA range, not even peers' BARs;
 * what MAP_DMA refuses is exactly what info().iovaRanges leaves out.
 * Once the machine is closed, setIommu, info, mapDma and unmapDma are 'ESHUTDOWN'.
 * Where we differ from Linux: one domain per container (Linux may need several when IOMMUs
 * differ); no dirty tracking, no vaddr updates (VFIO_DMA_MAP_FLAG_VADDR), no locked-memory limit.
 */
import { DmaError, hex } from '../errors.js';
import { iova as toIova, pa as toPa } from '../addresses.js';
import type { Domain } from '../iommu/domain.js';
import { IOMMU_READ, IOMMU_WRITE } from '../iommu/page-table.js';
import { SQE_SIZE, CQE_SIZE } from '../device/rings.js';
import type { Device } from '../device/device.js';
import type { GroupState } from '../machine-topology.js';
import { checkHostOpen, type VfioHost } from './host.js';
import type { VfioGroup } from './group.js';

export type VfioIommuType = 'type1' | 'type1v2';
export const VFIO_IOMMU_TYPES: readonly VfioIommuType[] = ['type1', 'type1v2'];

export interface VfioDmaMap {
  /** Where the memory is: a guest-physical address (our stand-in for the user's vaddr). */
  vaddr: number;
  iova: number;
  size: number;
  /** VFIO_DMA_MAP_FLAG_READ: the device may read. */
  read?: boolean;
  /** VFIO_DMA_MAP_FLAG_WRITE: the device may write. */
  write?: boolean;
}

export type VfioDmaUnmap = { iova: number; size: number } | { all: true };

export interface VfioDmaMapping {
  readonly iova: number;
  readonly size: number;
  readonly vaddr: number;
  readonly read: boolean;
  readonly write: boolean;
}

export interface VfioContainerOptions {
  /** vfio_iommu_type1's dma_entry_limit module parameter (default 65535). */
  dmaEntryLimit?: number;
}

/** VFIO_IOMMU_GET_INFO. */
export interface VfioIommuInfo {
  /** Supported page sizes (a bitmap, as iova_pgsizes). */
  readonly pgsizes: number;
  /** Usable IOVA ranges, inclusive ends (VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE). */
  readonly iovaRanges: ReadonlyArray<{ start: number; end: number }>;
  /** Mappings still allowed (VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL). */
  readonly dmaAvail: number;
}

export const VFIO_PGSIZE = 4096;
/** The domain's aperture: 48-bit IOVAs. */
export const VFIO_APERTURE_END = 2 ** 48;
/** The x86 MSI window, reserved in every domain (where the machine keeps device rings). */
export const MSI_WINDOW = { start: 0xfee00000, end: 0xfef00000 } as const;
const WINDOW_PAGES = (MSI_WINDOW.end - MSI_WINDOW.start) / VFIO_PGSIZE;
const DEFAULT_DMA_ENTRY_LIMIT = 65535;

interface RingWindow {
  readonly sq: number;
  readonly cq: number;
  /** Window pages used: [first page index, count]. */
  readonly pieces: ReadonlyArray<readonly [number, number]>;
}

let nextContainerId = 0;

export class VfioContainer {
  readonly id: number;
  private readonly host: VfioHost;
  private readonly dmaEntryLimit: number;
  private readonly members: VfioGroup[] = [];
  private type: VfioIommuType | null = null;
  private dom: Domain | null = null;
  /** The user's mappings, sorted by iova, not overlapping. */
  private readonly dmas: VfioDmaMapping[] = [];
  private readonly rings = new Map<Device, RingWindow>();
  private readonly windowUsed = new Uint8Array(WINDOW_PAGES);

  /** @internal Use Vfio.openContainer(). */
  constructor(host: VfioHost, options: VfioContainerOptions = {}) {
    this.id = nextContainerId++;
    this.host = host;
    const limit = options.dmaEntryLimit ?? DEFAULT_DMA_ENTRY_LIMIT;
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > 0xffffffff) {
      throw new DmaError('EINVAL', `vfio: dmaEntryLimit ${String(limit)} must be an integer in [1, 4294967295]`);
    }
    this.dmaEntryLimit = limit;
  }

  toString(): string {
    return `VFIO container ${this.id}`;
  }

  /** The groups in the container. */
  get groups(): readonly VfioGroup[] {
    return [...this.members];
  }

  /** The IOMMU backend set with setIommu(), or null. */
  get iommu(): VfioIommuType | null {
    return this.type;
  }

  /** The container's IOMMU domain (null until setIommu()). */
  get domain(): Domain | null {
    return this.dom;
  }

  /** The user's DMA mappings, by IOVA. */
  mappings(): VfioDmaMapping[] {
    return this.dmas.map((d) => ({ ...d }));
  }

  /**
   * VFIO_SET_IOMMU: picks the IOMMU backend and creates the container's domain; every group
   * already in the container moves into it. Needs at least one group ('EINVAL', as Linux: only a
   * group makes the container privileged) and may run once ('EINVAL' again). An unknown type is
   * 'ENODEV' (no backend supports that extension).
   */
  setIommu(type: VfioIommuType = 'type1v2'): void {
    checkHostOpen(this.host, `VFIO_SET_IOMMU on ${this}`);
    if (!VFIO_IOMMU_TYPES.includes(type)) {
      throw new DmaError('ENODEV', `VFIO_SET_IOMMU on ${this}: no IOMMU backend supports ${JSON.stringify(type)} (supported: ${VFIO_IOMMU_TYPES.join(', ')})`);
    }
    if (this.members.length === 0) {
      throw new DmaError('EINVAL', `VFIO_SET_IOMMU on ${this}: the container has no group yet; set a group's container first (only a group makes a container privileged)`);
    }
    if (this.type) throw new DmaError('EINVAL', `VFIO_SET_IOMMU on ${this}: the IOMMU is already set (${this.type})`);
    const domain = this.host.pci.createDomain('dma');
    this.dom = domain;
    const done: VfioGroup[] = [];
    try {
      for (const g of this.members) {
        this.enterDomain(g.state);
        done.push(g);
      }
    } catch (e) {
      for (const g of done.reverse()) this.leaveDomain(g.state, g.blockingDomain());
      this.dom = null;
      this.host.pci.destroyDomain(domain);
      throw e;
    }
    this.type = type;
  }

  /** VFIO_IOMMU_GET_INFO. */
  info(): VfioIommuInfo {
    checkHostOpen(this.host, `VFIO_IOMMU_GET_INFO on ${this}`);
    this.requireIommu('VFIO_IOMMU_GET_INFO');
    return {
      pgsizes: VFIO_PGSIZE | (2 * 1024 * 1024) | 2 ** 30,
      iovaRanges: [
        { start: 0, end: MSI_WINDOW.start - 1 },
        { start: MSI_WINDOW.end, end: VFIO_APERTURE_END - 1 },
      ],
      dmaAvail: this.dmaEntryLimit - this.dmas.length,
    };
  }

  /** VFIO_IOMMU_MAP_DMA: maps [iova, iova + size) to the memory at vaddr for every device in it. */
  mapDma(map: VfioDmaMap): void {
    const op = 'VFIO_IOMMU_MAP_DMA';
    const where = `${op} on ${this}: iova ${fmt(map?.iova)} size ${fmt(map?.size)} vaddr ${fmt(map?.vaddr)}`;
    checkHostOpen(this.host, where);
    for (const k of ['vaddr', 'iova', 'size'] as const) {
      const v = map?.[k];
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
        throw new DmaError('EINVAL', `${where}: ${k} ${String(v)} does not fit a u64 we can hold (a non-negative integer below 2^53)`);
      }
    }
    const { vaddr, iova, size } = map;
    const prot = (map.read ? IOMMU_READ : 0) | (map.write ? IOMMU_WRITE : 0);
    if (prot === 0) throw new DmaError('EINVAL', `${where}: neither VFIO_DMA_MAP_FLAG_READ nor VFIO_DMA_MAP_FLAG_WRITE is set; a mapping needs a permission`);
    const domain = this.requireIommu(op);
    if (size === 0) throw new DmaError('EINVAL', `${where}: size 0 maps nothing`);
    if (size % VFIO_PGSIZE !== 0 || iova % VFIO_PGSIZE !== 0 || vaddr % VFIO_PGSIZE !== 0) {
      throw new DmaError('EINVAL', `${where}: size, iova and vaddr must be multiples of the smallest IOMMU page size (${hex(VFIO_PGSIZE)})`);
    }
    if (iova + size > Number.MAX_SAFE_INTEGER || vaddr + size > Number.MAX_SAFE_INTEGER) {
      throw new DmaError('EINVAL', `${where}: the range wraps`);
    }
    const clash = this.dmas.find((d) => d.iova < iova + size && iova < d.iova + d.size);
    if (clash) {
      throw new DmaError('EEXIST', `${where}: overlaps the mapping at iova [${hex(clash.iova)}, ${hex(clash.iova + clash.size)}); unmap it first (VFIO never maps over a mapping)`);
    }
    if (this.dmas.length >= this.dmaEntryLimit) {
      throw new DmaError('ENOSPC', `${where}: the container already holds ${this.dmas.length} mappings, vfio_iommu_type1's dma_entry_limit`);
    }
    if (iova + size > VFIO_APERTURE_END) {
      throw new DmaError('EINVAL', `${where}: beyond the domain's aperture [0, ${hex(VFIO_APERTURE_END)})`);
    }
    if (iova < MSI_WINDOW.end && MSI_WINDOW.start < iova + size) {
      throw new DmaError('EINVAL', `${where}: overlaps the reserved MSI window [${hex(MSI_WINDOW.start)}, ${hex(MSI_WINDOW.end)}), which is not a valid IOVA range (see info().iovaRanges)`);
    }
    if (!this.host.ram.isRam(vaddr, size)) {
      throw new DmaError('EFAULT', `${where}: [${hex(vaddr)}, ${hex(vaddr + size)}) is not all guest RAM, so it cannot be pinned`);
    }
    domain.map(toIova(iova), toPa(vaddr), size, prot);
    const m: VfioDmaMapping = { iova, size, vaddr, read: !!map.read, write: !!map.write };
    const at = this.dmas.findIndex((d) => d.iova > iova);
    this.dmas.splice(at < 0 ? this.dmas.length : at, 0, m);
  }

  /**
   * VFIO_IOMMU_UNMAP_DMA: removes the mappings in [iova, iova + size), or all of them; returns the
   * bytes unmapped. Strict: when it returns no device can reach the old pages.
   */
  unmapDma(unmap: VfioDmaUnmap): number {
    const op = 'VFIO_IOMMU_UNMAP_DMA';
    checkHostOpen(this.host, `${op} on ${this}`);
    const u = unmap as { iova?: unknown; size?: unknown; all?: unknown };
    if (u && u.all !== undefined && u.all !== true && u.all !== false) {
      throw new DmaError('EINVAL', `${op} on ${this}: all must be true or absent`);
    }
    const all = u?.all === true;
    const where = all ? `${op} on ${this} (all)` : `${op} on ${this}: iova ${fmt(u?.iova)} size ${fmt(u?.size)}`;
    if (all) {
      if ((u.iova !== undefined && u.iova !== 0) || (u.size !== undefined && u.size !== 0)) {
        throw new DmaError('EINVAL', `${where}: VFIO_DMA_UNMAP_FLAG_ALL takes no iova or size (got iova ${fmt(u.iova)}, size ${fmt(u.size)})`);
      }
    } else {
      for (const k of ['iova', 'size'] as const) {
        const v = u?.[k];
        if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
          throw new DmaError('EINVAL', `${where}: ${k} ${String(v)} does not fit a u64 we can hold (a non-negative integer below 2^53)`);
        }
      }
    }
    const domain = this.requireIommu(op);
    let iova = 0;
    let size = Number.MAX_SAFE_INTEGER;
    if (!all) {
      iova = u.iova as number;
      size = u.size as number;
      if (iova % VFIO_PGSIZE !== 0) throw new DmaError('EINVAL', `${where}: iova is not aligned to the smallest IOMMU page size (${hex(VFIO_PGSIZE)})`);
      if (size === 0 || size % VFIO_PGSIZE !== 0) throw new DmaError('EINVAL', `${where}: size must be a non-zero multiple of ${hex(VFIO_PGSIZE)}`);
      if (iova + size > Number.MAX_SAFE_INTEGER) throw new DmaError('EINVAL', `${where}: the range wraps`);
      if (this.type === 'type1v2') {
        const first = this.dmas.find((d) => d.iova <= iova && iova < d.iova + d.size);
        if (first && first.iova !== iova) {
          throw new DmaError('EINVAL', `${where}: would split the mapping [${hex(first.iova)}, ${hex(first.iova + first.size)}) at its start (type1v2 unmaps whole mappings only)`);
        }
        const last = this.dmas.find((d) => d.iova <= iova + size - 1 && iova + size - 1 < d.iova + d.size);
        if (last && last.iova + last.size !== iova + size) {
          throw new DmaError('EINVAL', `${where}: would split the mapping [${hex(last.iova)}, ${hex(last.iova + last.size)}) at its end (type1v2 unmaps whole mappings only)`);
        }
      }
    }
    let unmapped = 0;
    for (let i = 0; i < this.dmas.length; ) {
      const d = this.dmas[i];
      if (d.iova >= iova + size) break;
      if (d.iova + d.size <= iova) {
        i++;
        continue;
      }
      // v1: a request that starts inside a mapping unmaps nothing from there on.
      if (this.type === 'type1' && iova > d.iova) break;
      domain.unmap(toIova(d.iova), d.size);
      this.dmas.splice(i, 1);
      unmapped += d.size;
    }
    return unmapped;
  }

  private requireIommu(op: string): Domain {
    if (!this.type || !this.dom) {
      throw new DmaError('EINVAL', `${op} on ${this}: no IOMMU is set (VFIO_GROUP_SET_CONTAINER a group, then VFIO_SET_IOMMU)`);
    }
    return this.dom;
  }

  // ---- groups (called by VfioGroup) ---------------------------------------------------------

  /** @internal A group joins (its DMA ownership already claimed). */
  addGroup(g: VfioGroup): void {
    if (this.type) this.enterDomain(g.state);
    this.members.push(g);
  }

  /**
   * @internal A group leaves, back to its blocking domain. The last group takes the domain and
   * every mapping with it (vfio_iommu_type1's detach of the last group), and unsets the IOMMU.
   */
  removeGroup(g: VfioGroup, blocking: Domain): void {
    if (this.type) this.leaveDomain(g.state, blocking);
    this.members.splice(this.members.indexOf(g), 1);
    if (this.members.length === 0 && this.dom) {
      const d = this.dom;
      for (const m of this.dmas) d.unmap(toIova(m.iova), m.size);
      this.dmas.length = 0;
      this.dom = null;
      this.type = null;
      this.host.pci.destroyDomain(d);
    }
  }

  /** The machine's devices of a group, started and attached. */
  private devicesOf(gs: GroupState): Device[] {
    return [...gs.placed.values()]
      .filter((e) => e.slot >= 0)
      .map((e) => this.host.device(e.placement.bdf))
      .filter((d): d is Device => d !== undefined);
  }

  /** Moves a group into the container's domain: rings mapped, contexts replaced, rings reprogrammed. */
  private enterDomain(gs: GroupState): void {
    const devs = this.devicesOf(gs);
    for (const d of devs) {
      if (d.inFlight() > 0) throw new DmaError('EBUSY', `${this}: device ${d.bdf} of IOMMU group ${gs.number} has ${d.inFlight()} descriptor(s) in flight; it cannot change domain now`);
    }
    const mapped: Device[] = [];
    try {
      for (const d of devs) {
        this.rings.set(d, this.mapRings(d));
        mapped.push(d);
      }
    } catch (e) {
      for (const d of mapped) this.unmapRings(d);
      throw e;
    }
    this.host.pci.replaceGroupDomain(gs, this.dom!);
    for (const d of devs) {
      const w = this.rings.get(d)!;
      d.programRings(w.sq, w.cq);
    }
  }

  /** Moves a group out to `to` (its blocking domain): rings back, contexts replaced, rings unmapped. */
  private leaveDomain(gs: GroupState, to: Domain): void {
    const devs = this.devicesOf(gs);
    for (const d of devs) {
      if (d.inFlight() > 0) throw new DmaError('EBUSY', `${this}: device ${d.bdf} of IOMMU group ${gs.number} has ${d.inFlight()} descriptor(s) in flight; it cannot change domain now`);
    }
    for (const d of devs) d.programRings(d.sq.dma, d.cq.dma);
    this.host.pci.replaceGroupDomain(gs, to);
    for (const d of devs) this.unmapRings(d);
  }

  private mapRings(dev: Device): RingWindow {
    const domain = this.dom!;
    const pieces: Array<[number, number]> = [];
    const place = (pa: number, len: number, prot: number): number => {
      const first = pa - (pa % VFIO_PGSIZE);
      const n = Math.ceil((pa + len - first) / VFIO_PGSIZE);
      const at = this.allocWindow(n, dev.bdf);
      try {
        domain.map(toIova(MSI_WINDOW.start + at * VFIO_PGSIZE), toPa(first), n * VFIO_PGSIZE, prot);
      } catch (e) {
        this.windowUsed.fill(0, at, at + n);
        throw e;
      }
      pieces.push([at, n]);
      return MSI_WINDOW.start + at * VFIO_PGSIZE + (pa - first);
    };
    try {
      const sq = place(dev.sq.pa, dev.sq.depth * SQE_SIZE, IOMMU_READ);
      const cq = place(dev.cq.pa, dev.cq.depth * CQE_SIZE, IOMMU_WRITE);
      return { sq, cq, pieces };
    } catch (e) {
      this.releasePieces(pieces);
      throw e;
    }
  }

  private unmapRings(dev: Device): void {
    const w = this.rings.get(dev);
    if (!w) return;
    this.rings.delete(dev);
    this.releasePieces(w.pieces);
  }

  private releasePieces(pieces: ReadonlyArray<readonly [number, number]>): void {
    for (const [at, n] of pieces) {
      this.dom!.unmap(toIova(MSI_WINDOW.start + at * VFIO_PGSIZE), n * VFIO_PGSIZE);
      this.windowUsed.fill(0, at, at + n);
    }
  }

  /** First fit in the reserved window; 'ENOSPC' when the rings of the devices do not fit. */
  private allocWindow(n: number, bdf: string): number {
    let run = 0;
    for (let i = 0; i < WINDOW_PAGES; i++) {
      run = this.windowUsed[i] ? 0 : run + 1;
      if (run === n) {
        const at = i - n + 1;
        this.windowUsed.fill(1, at, at + n);
        return at;
      }
    }
    throw new DmaError('ENOSPC', `${this}: no room for device ${bdf}'s rings (${n} pages) in the reserved window [${hex(MSI_WINDOW.start)}, ${hex(MSI_WINDOW.end)})`);
  }
}

function fmt(v: unknown): string {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? hex(v) : String(v);
}
