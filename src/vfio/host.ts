/**
 * What VFIO needs from its machine: the PCI placement and group state, the IOMMU, guest RAM
 * (the stand-in for the user's address space), the machine's devices (added, or being added) and
 * whether the machine is closed. Not a shared layout.
 */
import { DmaError } from '../errors.js';
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
  /** True while a device at `bdf` is being added (m.addDevice has not resolved yet). */
  adding(bdf: string): boolean;
  /** True once the machine began to close: every VFIO entry point is 'ESHUTDOWN' then. */
  closed(): boolean;
}

/** 'ESHUTDOWN' for `op` once the machine is closed (its VFIO files are gone with it). */
export function checkHostOpen(host: VfioHost, op: string): void {
  if (host.closed()) throw new DmaError('ESHUTDOWN', `${op}: the machine is closed; its VFIO containers, groups and devices are gone with it`);
}
