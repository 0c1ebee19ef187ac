/** What a device driver (NvmeDriver, NicDriver) needs of its machine: a Machine is one. */
import type { DmaApi } from '../dma/dma-api.js';
import type { GuestRam } from '../memory/guest-ram.js';

export interface DriverHost {
  readonly dma: DmaApi;
  readonly ram: GuestRam;
}
