/**
 * dmaemu: DMA through an IOMMU, emulated truly in parallel. The public API only.
 */
export { Machine } from './machine.js';
export type { MachineStats, MachineIommu, Fault } from './machine.js';
export type { MachineConfig, DeviceConfig } from './machine-config.js';
export { DmaError } from './errors.js';
export type { DmaErrorCode } from './errors.js';
export { pa, iova, dmaAddr, KiB, MiB, GiB, PAGE_SIZE } from './addresses.js';
export type { Pa, Iova, DmaAddr } from './addresses.js';
export type { GuestRam, RamBuffer, RamRegion, RamRegionConfig } from './memory/guest-ram.js';
export type { AllocOptions } from './memory/frame-allocator.js';
export { Device } from './device/device.js';
export type { Completion, CompletionStatus, CopyRequest, FillRequest } from './device/device.js';
export type { DeviceCounters } from './device/device-control.js';
export type { DmaApi, DmaMapping, DmaDirection, InvalidationMode } from './dma/dma-api.js';
export { Domain } from './iommu/domain.js';
export type { DomainHandle, DomainOptions } from './iommu/domain.js';
export type { DomainType } from './iommu/domain-table.js';
export type { Iommu } from './iommu/iommu.js';
export { IOMMU_READ, IOMMU_WRITE } from './iommu/page-table.js';
export type { FaultReason, FaultAccess } from './iommu/fault-ring.js';
export { computeIommuGroups, parseLspci, parseTopology, auditIsolation, requesterId, dmaAliases, parseAcsOverride } from './pci/index.js';
export type { Topology, PciFunction, PciType, IommuGroup, AcsOverride } from './pci/index.js';
