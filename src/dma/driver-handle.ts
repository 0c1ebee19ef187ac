/**
 * What a driver thread needs to map for a machine's devices: the DMA API's handle and, per
 * device, its DMA parameters and the handle of the domain it is attached to. Plain,
 * structured-cloneable data; `attachDriver` turns it back into a working DMA API in that thread.
 */
import type { DomainHandle } from '../iommu/domain.js';
import { DmaError } from '../errors.js';
import { normalizeBdf } from '../pci/bdf.js';
import { DmaApi, type DmaApiHandle } from './dma-api.js';
import type { DmaDevice, DmaDeviceInfo } from './dma-device.js';

export interface DriverHandle {
  readonly dma: DmaApiHandle;
  readonly devices: ReadonlyArray<{ readonly info: DmaDeviceInfo; readonly domain: DomainHandle | null }>;
}

export interface AttachedDriver {
  readonly dma: DmaApi;
  /** A machine device by BDF ('0000:00:03.0' or '00:03.0'). */
  device(bdf: string): DmaDevice;
  /** Flushes this thread's lazy queues and gives back its counter and IOVA cache slots. */
  close(): void;
}

export function attachDriver(h: DriverHandle): AttachedDriver {
  const domains = h.devices.flatMap((d) => (d.domain ? [d.domain] : []));
  const dma = DmaApi.attach(h.dma, domains);
  const devices = new Map(h.devices.map((d) => [d.info.bdf, dma.device(d.info)]));
  return {
    dma,
    device(bdf: string): DmaDevice {
      const dev = devices.get(normalizeBdf(bdf) ?? bdf);
      if (!dev) throw new DmaError('ENODEV', `driver: no device ${bdf} on this machine (it has ${[...devices.keys()].join(', ') || 'none'})`);
      return dev;
    },
    close: () => dma.close(),
  };
}
