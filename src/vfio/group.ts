/**
 * A VFIO group (/dev/vfio/N): one IOMMU group handed to user space as a whole.
 *
 * setContainer() is VFIO_GROUP_SET_CONTAINER: the group must not be in a container yet
 * ('EINVAL'), must be viable ('EBUSY' naming the device and the driver that uses the kernel DMA
 * API, see dma-owner.ts), its devices must be added ('EBUSY' while m.addDevice of one is still
 * pending: its rings are not known yet) and idle ('EBUSY'). Then VFIO claims the group's DMA
 * ownership (iommu_group_claim_dma_owner): the group's devices move, in one step per context
 * entry, from the default domain to the group's blocking domain (no DMA at all), and, once the
 * container has an IOMMU (now or at setIommu()), into the container's domain. All or nothing:
 * when any step fails ('ENOSPC' for a blocking domain, or the container's refusal) the group is
 * left as it was: in its default domain, owned by nobody.
 * A device submitting work while its group is blocked faults on its own ring fetch and fails, as
 * a real device's DMA would be blocked.
 * device(bdf) is VFIO_GROUP_GET_DEVICE_FD: needs the container's IOMMU set ('EINVAL'); the device
 * must be in the group, bound to a vfio driver and a device of the machine ('ENODEV').
 * unsetContainer() is VFIO_GROUP_UNSET_CONTAINER: 'EINVAL' without a container, 'EBUSY' while a
 * device handle is open; afterwards the group's devices are back in their default domain.
 * Once the machine is closed every call here is 'ESHUTDOWN'.
 */
import { DmaError } from '../errors.js';
import type { Domain } from '../iommu/domain.js';
import type { GroupState } from '../machine-topology.js';
import { normalizeBdf } from '../pci/bdf.js';
import { checkHostOpen, type VfioHost } from './host.js';
import { VfioContainer } from './container.js';
import { VfioDevice } from './vfio-device.js';
import { isVfioDriver, viabilityProblem } from './dma-owner.js';

export interface VfioGroupStatus {
  /** VFIO_GROUP_FLAGS_VIABLE. */
  readonly viable: boolean;
  /** VFIO_GROUP_FLAGS_CONTAINER_SET. */
  readonly containerSet: boolean;
}

export class VfioGroup {
  readonly number: number;
  /** @internal The machine's state of the IOMMU group. */
  readonly state: GroupState;
  private readonly host: VfioHost;
  private cont: VfioContainer | null = null;
  private blocking: Domain | null = null;
  private readonly open = new Set<VfioDevice>();

  /** @internal Use Vfio.group(). */
  constructor(host: VfioHost, state: GroupState) {
    this.host = host;
    this.state = state;
    this.number = state.number;
  }

  toString(): string {
    return `VFIO group ${this.number}`;
  }

  /** Every function of the IOMMU group (`DDDD:BB:DD.F`). */
  get devices(): readonly string[] {
    return this.state.members;
  }

  get container(): VfioContainer | null {
    return this.cont;
  }

  /** Viable: every function is bound to no driver or to one that leaves DMA to VFIO. */
  isViable(): boolean {
    return viabilityProblem(this.state.members, (b) => this.host.pci.driverOf(b)) === undefined;
  }

  /** VFIO_GROUP_GET_STATUS. */
  status(): VfioGroupStatus {
    checkHostOpen(this.host, `VFIO_GROUP_GET_STATUS on ${this}`);
    return { viable: this.isViable(), containerSet: this.cont !== null };
  }

  /** Open device handles. */
  openDevices(): VfioDevice[] {
    return [...this.open];
  }

  /** VFIO_GROUP_SET_CONTAINER. */
  setContainer(container: VfioContainer): void {
    const op = `VFIO_GROUP_SET_CONTAINER on ${this}`;
    checkHostOpen(this.host, op);
    if (!(container instanceof VfioContainer)) throw new DmaError('EINVAL', `${op}: not a VFIO container`);
    if (this.cont) throw new DmaError('EINVAL', `${op}: the group is already in ${this.cont}`);
    const gs = this.state;
    for (const [bdf, e] of gs.placed) {
      if (e.slot < 0 || this.host.adding(bdf)) {
        throw new DmaError('EBUSY', `${op}: device ${bdf} is still being added to the machine (await its m.addDevice first)`);
      }
      const d = this.host.device(bdf);
      if (d && d.inFlight() > 0) throw new DmaError('EBUSY', `${op}: device ${bdf} has ${d.inFlight()} descriptor(s) in flight`);
    }
    const bad = viabilityProblem(gs.members, (b) => this.host.pci.driverOf(b));
    if (bad) {
      throw new DmaError(
        'EBUSY',
        `${op}: the group is not viable: device ${bad.bdf} is bound to driver ${bad.driver}, which uses the kernel DMA API (bind it to vfio-pci or unbind it; every device of an IOMMU group must be, bridges bound to pcieport or to nothing are fine)`,
      );
    }
    // iommu_group_claim_dma_owner(): the group leaves its default domain for a blocking one. The
    // blocking domain comes first: if there is none to be had ('ENOSPC') nothing has changed.
    const blocking = this.host.pci.createDomain('blocked');
    gs.owner = this;
    this.blocking = blocking;
    try {
      this.host.pci.replaceGroupDomain(gs, blocking);
      container.addGroup(this);
    } catch (e) {
      this.releaseOwnership();
      throw e;
    }
    this.cont = container;
  }

  /** VFIO_GROUP_UNSET_CONTAINER: the group's devices go back to their default domain. */
  unsetContainer(): void {
    const op = `VFIO_GROUP_UNSET_CONTAINER on ${this}`;
    checkHostOpen(this.host, op);
    this.leaveContainer(op);
  }

  private leaveContainer(op: string): void {
    if (!this.cont) throw new DmaError('EINVAL', `${op}: the group is not in a container`);
    if (this.open.size > 0) {
      throw new DmaError('EBUSY', `${op}: device handle(s) still open (${[...this.open].map((h) => h.bdf).join(', ')}); close them first`);
    }
    this.cont.removeGroup(this, this.blocking!);
    this.cont = null;
    this.releaseOwnership();
  }

  /** VFIO_GROUP_GET_DEVICE_FD: a handle on a device of the group. */
  device(bdf: string): VfioDevice {
    const op = `VFIO_GROUP_GET_DEVICE_FD on ${this}`;
    checkHostOpen(this.host, op);
    if (!this.cont || !this.cont.iommu) {
      throw new DmaError('EINVAL', `${op}: the group has no container with an IOMMU set (VFIO_GROUP_SET_CONTAINER, then VFIO_SET_IOMMU)`);
    }
    const at = normalizeBdf(String(bdf));
    if (!at || !this.state.members.includes(at)) {
      throw new DmaError('ENODEV', `${op}: device ${String(bdf)} is not in IOMMU group ${this.number} (its devices: ${this.state.members.join(', ')})`);
    }
    const driver = this.host.pci.driverOf(at);
    if (!isVfioDriver(driver)) {
      throw new DmaError('ENODEV', `${op}: device ${at} is bound to ${driver ?? 'no driver'}, not to vfio-pci (bind it: m.vfio.bind('${at}'))`);
    }
    const dev = this.host.device(at);
    if (!dev) throw new DmaError('ENODEV', `${op}: ${at} is not a device of the machine (m.addDevice({ bdf: '${at}' }))`);
    const h = new VfioDevice(this, dev);
    this.open.add(h);
    return h;
  }

  /** @internal */
  releaseDevice(h: VfioDevice): void {
    this.open.delete(h);
  }

  /** @internal 'ESHUTDOWN' once the machine is closed (for device handles). */
  checkOpen(op: string): void {
    checkHostOpen(this.host, op);
  }

  /** @internal The group's blocking domain while VFIO owns it. */
  blockingDomain(): Domain {
    return this.blocking!;
  }

  /** Closes every handle and leaves the container (machine shutdown). */
  close(): void {
    for (const h of [...this.open]) h.close();
    if (this.cont) this.leaveContainer(`VFIO_GROUP_UNSET_CONTAINER on ${this} (machine close)`);
  }

  /** iommu_group_release_dma_owner(): back to the default domain. */
  private releaseOwnership(): void {
    const gs = this.state;
    const pci = this.host.pci;
    if (gs.placed.size > 0 || gs.defaultDomain) pci.replaceGroupDomain(gs, pci.defaultDomainOf(gs));
    else gs.current = null;
    if (this.blocking) pci.destroyDomain(this.blocking);
    this.blocking = null;
    gs.owner = null;
    pci.trimGroup(gs);
  }
}
