/**
 * VFIO as the machine offers it (`m.vfio`): containers, groups, device handles and the driver
 * binding that decides whether a group is viable. The pieces: container.ts (type1 IOMMU backend,
 * MAP_DMA / UNMAP_DMA), group.ts (SET_CONTAINER, GET_DEVICE_FD, UNSET_CONTAINER), vfio-device.ts
 * (device handles), dma-owner.ts (viability: who may own a group's DMA).
 * Group numbers are the machine's IOMMU group numbers (computeIommuGroups with the machine's
 * topology and acsOverride; without a topology, one group per device in the order added).
 * Once the machine is closed (m.close(), which takes every group out of its container) every
 * VFIO entry point is 'ESHUTDOWN': here, on containers (setIommu, info, mapDma, unmapDma), on
 * groups (status, setContainer, unsetContainer, device) and on device handles (device); plain
 * getters (container.groups, group.container, mappings()) still answer, with nothing in them.
 */
import { DmaError } from '../errors.js';
import { normalizeBdf } from '../pci/bdf.js';
import { checkHostOpen, type VfioHost } from './host.js';
import { VfioContainer, type VfioContainerOptions } from './container.js';
import { VfioGroup } from './group.js';
import { isVfioDriver, usesKernelDma } from './dma-owner.js';

export { VfioContainer, VFIO_IOMMU_TYPES, MSI_WINDOW, VFIO_PGSIZE } from './container.js';
export type { VfioIommuType, VfioDmaMap, VfioDmaUnmap, VfioDmaMapping, VfioContainerOptions, VfioIommuInfo } from './container.js';
export { VfioGroup, type VfioGroupStatus } from './group.js';
export { VfioDevice } from './vfio-device.js';
export { DRIVER_MANAGED_DMA, isVfioDriver, usesKernelDma } from './dma-owner.js';
export type { VfioHost } from './host.js';

export class Vfio {
  private readonly host: VfioHost;
  private readonly byNumber = new Map<number, VfioGroup>();
  private readonly opened: VfioContainer[] = [];

  /** @internal The machine creates it (m.vfio). */
  constructor(host: VfioHost) {
    this.host = host;
  }

  /** Opens /dev/vfio/vfio: a new, empty container. */
  openContainer(options: VfioContainerOptions = {}): VfioContainer {
    checkHostOpen(this.host, 'vfio: open /dev/vfio/vfio');
    const c = new VfioContainer(this.host, options);
    this.opened.push(c);
    return c;
  }

  /** The containers opened so far. */
  containers(): VfioContainer[] {
    checkHostOpen(this.host, 'vfio: containers');
    return [...this.opened];
  }

  /**
   * Opens /dev/vfio/N: the group with IOMMU group number `which`, or the group of device
   * `which` (a BDF). 'ENODEV' when there is no such group (or no IOMMU).
   */
  group(which: number | string): VfioGroup {
    checkHostOpen(this.host, `vfio: open /dev/vfio/${String(which)}`);
    if (!this.host.unit.enabled) throw new DmaError('ENODEV', `vfio: the machine has no IOMMU, so no IOMMU groups (VFIO's no-IOMMU mode is not emulated)`);
    let n: number | undefined;
    if (typeof which === 'number') n = which;
    else {
      const at = normalizeBdf(String(which));
      if (!at) throw new DmaError('EINVAL', `vfio: ${JSON.stringify(which)} is neither a group number nor a PCI address`);
      n = this.host.pci.groupOf(at);
      if (n === undefined) throw new DmaError('ENODEV', `vfio: ${at} has no IOMMU group (${this.host.pci.topology ? 'not grouped in the topology' : 'not a device of the machine'})`);
    }
    const state = Number.isSafeInteger(n) ? this.host.pci.group(n) : undefined;
    if (!state) throw new DmaError('ENODEV', `vfio: no IOMMU group ${String(n)}`);
    let g = this.byNumber.get(n);
    if (!g || g.state !== state) {
      g = new VfioGroup(this.host, state);
      this.byNumber.set(n, g);
    }
    return g;
  }

  /**
   * Binds a function to `driver` (default vfio-pci), as driver_override plus bind do. 'EBUSY' when
   * the group is owned by VFIO and the driver would use the kernel DMA API
   * (iommu_device_use_default_domain), or when a VFIO handle on the device is open.
   */
  bind(bdf: string, driver = 'vfio-pci'): void {
    checkHostOpen(this.host, `vfio: bind ${String(bdf)} to ${driver}`);
    const at = this.requireFunction(bdf);
    const n = this.host.pci.groupOf(at);
    const g = n === undefined ? undefined : this.byNumber.get(n);
    if (g?.container && usesKernelDma(driver)) {
      throw new DmaError('EBUSY', `vfio: cannot bind ${at} to ${driver}: its IOMMU group ${g.number} is owned by VFIO (${g.container}), and ${driver} uses the kernel DMA API`);
    }
    this.checkNotOpen(at, g, `rebind ${at}`);
    this.host.pci.setDriver(at, driver);
  }

  /** Unbinds a function from its driver. 'EBUSY' while a VFIO handle on it is open. */
  unbind(bdf: string): void {
    checkHostOpen(this.host, `vfio: unbind ${String(bdf)}`);
    const at = this.requireFunction(bdf);
    const n = this.host.pci.groupOf(at);
    this.checkNotOpen(at, n === undefined ? undefined : this.byNumber.get(n), `unbind ${at}`);
    this.host.pci.setDriver(at, undefined);
  }

  /** The driver `bdf` is bound to (undefined: none). */
  driverOf(bdf: string): string | undefined {
    checkHostOpen(this.host, `vfio: driver of ${String(bdf)}`);
    return this.host.pci.driverOf(this.requireFunction(bdf));
  }

  /** Closes every device handle and takes every group out of its container (machine close). */
  close(): void {
    let first: unknown = null;
    for (const g of this.byNumber.values()) {
      try {
        g.close();
      } catch (e) {
        first ??= e; // keep releasing the other groups
      }
    }
    this.opened.length = 0;
    if (first) throw first;
  }

  private checkNotOpen(at: string, g: VfioGroup | undefined, what: string): void {
    if (g && isVfioDriver(this.host.pci.driverOf(at)) && g.openDevices().some((h) => h.bdf === at)) {
      throw new DmaError('EBUSY', `vfio: cannot ${what}: a VFIO device handle on it is open`);
    }
  }

  private requireFunction(bdf: string): string {
    const at = normalizeBdf(String(bdf));
    if (!at) throw new DmaError('EINVAL', `vfio: ${JSON.stringify(bdf)} is not a PCI address`);
    const pci = this.host.pci;
    const known = pci.topology ? pci.typeOf(at) !== undefined : pci.placement(at) !== undefined;
    if (!known) throw new DmaError('ENODEV', `vfio: no PCI function ${at} ${pci.topology ? 'in the topology' : 'among the machine\'s devices'}`);
    return at;
  }
}
