/**
 * DmaError: the one error type of dmaemu. `code` is stable (errno names, as Linux and VFIO
 * return them); the message names the address, the device and the rule that was broken.
 */
export const DMA_ERROR_CODES = [
  'EFAULT', // address outside RAM, or a DMA that the IOMMU refused
  'EEXIST', // mapping over an existing mapping
  'EINVAL', // malformed argument: unaligned, zero length, overflow, bad config or topology
  'ENOSPC', // an address space or pool (IOVA, fault ring, bounce slots) is full
  'ENOMEM', // RAM or page-table pages exhausted
  'EBUSY', // resource in use (VFIO group not viable, device busy)
  'ENOENT', // no such device, domain or mapping
  'ENODEV', // no such PCI function (not in the topology, not in the group)
  'EIO', // a device failed (worker died or reported an error)
  'ERANGE', // address beyond what a DMA mask or address width can express
  'ESHUTDOWN', // the machine is closed
  'EPERM', // operation not allowed in this state
] as const;
export type DmaErrorCode = (typeof DMA_ERROR_CODES)[number];

export class DmaError extends Error {
  readonly code: DmaErrorCode;
  constructor(code: DmaErrorCode, message: string, options?: { cause?: unknown }) {
    super(`${code}: ${message}`, options);
    this.name = 'DmaError';
    this.code = code;
  }
}

/** Formats an address as Linux prints it in fault and debug messages. */
export function hex(n: number): string {
  return '0x' + n.toString(16).padStart(n >= 2 ** 32 ? 12 : 8, '0');
}
