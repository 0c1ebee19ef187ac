/**
 * What VFIO needs from its machine: the PCI placement and group state, the IOMMU, guest RAM
 * (the stand-in for the user's address space) and the machine's devices. Not a shared layout.
 */
import type { MachinePci } from '../machine-topology.js';
import type { Iommu } from '../iommu/iommu.js';
import type { GuestRam } from '../memory/guest-ram.js';
import type { Device } from '../device/device.js';

export interface VfioHost {
  readonly pci: MachinePci;
  readonly unit: Iommu;
  readonly ram: GuestRam;
  /** The machine's device at a BDF (`DDDD:BB:DD.F`), if one was added there. */
  device(bdf: string): Device | undefined;
}
