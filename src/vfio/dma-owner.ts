/**
 * Who may own a group's DMA: VFIO group viability as Linux decides it since 5.19
 * (drivers/iommu/iommu.c's DMA ownership). A driver that uses the kernel DMA API counts in the
 * group's owner_cnt when it binds (iommu_device_use_default_domain(), called from
 * pci_dma_configure() unless the driver sets driver_managed_dma); iommu_group_claim_dma_owner()
 * refuses a group whose owner_cnt is not zero. So a group is viable exactly when every function
 * in it is bound to no driver or to a driver with driver_managed_dma: vfio-pci and its variant
 * drivers, pci-stub, and pcieport (the port driver does no DMA, commit "PCI: portdrv: Set
 * driver_managed_dma"). That is what "bridges excepted" means today: switch and root ports are
 * bound to pcieport, conventional bridges and host bridges to nothing.
 * Where we differ from Linux: the refusal is 'EBUSY' (the code the issue and DESIGN.md fix for
 * a non-viable group; the kernel's iommu_group_claim_dma_owner() says EPERM, and before 5.19
 * vfio_dev_viable() excepted every bridge, i.e. every non-normal header, whatever its driver).
 * Variant drivers are recognised by name: any driver whose name contains "vfio".
 */

/** Drivers that leave DMA to the group's owner (driver_managed_dma), besides the vfio ones. */
export const DRIVER_MANAGED_DMA: ReadonlySet<string> = new Set(['vfio-pci', 'pci-stub', 'pcieport']);

/** A VFIO driver: its devices can be opened through their group. */
export function isVfioDriver(driver: string | undefined): boolean {
  return driver !== undefined && /vfio/.test(driver);
}

/** True when a function bound to `driver` uses the kernel DMA API (counts in owner_cnt). */
export function usesKernelDma(driver: string | undefined): boolean {
  return driver !== undefined && !DRIVER_MANAGED_DMA.has(driver) && !isVfioDriver(driver);
}

/** The first function that makes a group not viable, with its driver; undefined when viable. */
export function viabilityProblem(members: readonly string[], driverOf: (bdf: string) => string | undefined): { bdf: string; driver: string } | undefined {
  for (const bdf of members) {
    const driver = driverOf(bdf);
    if (usesKernelDma(driver)) return { bdf, driver: driver! };
  }
  return undefined;
}
