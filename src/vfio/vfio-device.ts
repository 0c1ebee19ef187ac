/**
 * A VFIO device handle (the file descriptor VFIO_GROUP_GET_DEVICE_FD returns): the machine's
 * Device, opened through its group. While a handle is open its group cannot leave its container
 * (VFIO_GROUP_UNSET_CONTAINER is 'EBUSY'). DMA goes through `device` (copy, fill, submit) with
 * IOVAs of the container's mappings.
 */
import { DmaError } from '../errors.js';
import type { Device } from '../device/device.js';
import type { VfioGroup } from './group.js';

export class VfioDevice {
  readonly bdf: string;
  readonly group: VfioGroup;
  private dev: Device | null;

  /** @internal Use VfioGroup.device(). */
  constructor(group: VfioGroup, dev: Device) {
    this.group = group;
    this.dev = dev;
    this.bdf = dev.bdf;
  }

  /** The machine's device, for DMA. 'EINVAL' once the handle is closed, 'ESHUTDOWN' once the machine is. */
  get device(): Device {
    this.group.checkOpen(`VFIO device ${this.bdf}`);
    if (!this.dev) throw new DmaError('EINVAL', `VFIO device ${this.bdf}: the handle is closed`);
    return this.dev;
  }

  get closed(): boolean {
    return this.dev === null;
  }

  /** Closes the handle (idempotent). */
  close(): void {
    if (!this.dev) return;
    this.dev = null;
    this.group.releaseDevice(this);
  }
}
