/**
 * The PCIe Access Control Services capability and control bits (PCI_ACS_SV ... PCI_ACS_DT in
 * include/uapi/linux/pci_regs.h) and the flag set Linux's IOMMU code requires for isolation
 * (REQ_ACS_FLAGS in drivers/iommu/iommu.c: SV, RR, CR, UF).
 * Where we differ from Linux: the ACS Enhanced bits (I/O request blocking etc.) are not modelled.
 */

export const PCI_ACS_SV = 0x01; // Source Validation
export const PCI_ACS_TB = 0x02; // Translation Blocking
export const PCI_ACS_RR = 0x04; // P2P Request Redirect
export const PCI_ACS_CR = 0x08; // P2P Completion Redirect
export const PCI_ACS_UF = 0x10; // Upstream Forwarding
export const PCI_ACS_EC = 0x20; // P2P Egress Control
export const PCI_ACS_DT = 0x40; // Direct Translated P2P

export const ACS_FLAG_NAMES = ['SV', 'TB', 'RR', 'CR', 'UF', 'EC', 'DT'] as const;
export type AcsFlagName = (typeof ACS_FLAG_NAMES)[number];

export const ACS_BITS: Readonly<Record<AcsFlagName, number>> = {
  SV: PCI_ACS_SV,
  TB: PCI_ACS_TB,
  RR: PCI_ACS_RR,
  CR: PCI_ACS_CR,
  UF: PCI_ACS_UF,
  EC: PCI_ACS_EC,
  DT: PCI_ACS_DT,
};

/** What pci_device_group needs from every port on the path to call a device isolated. */
export const REQ_ACS_FLAGS = PCI_ACS_SV | PCI_ACS_RR | PCI_ACS_CR | PCI_ACS_UF;

/** The names lspci prints on its ACSCap:/ACSCtl: lines, in its order. */
export const LSPCI_ACS_NAMES: Readonly<Record<string, AcsFlagName>> = {
  SrcValid: 'SV',
  TransBlk: 'TB',
  ReqRedir: 'RR',
  CmpltRedir: 'CR',
  UpstreamFwd: 'UF',
  EgressCtrl: 'EC',
  DirectTrans: 'DT',
};

export function acsMask(names: readonly AcsFlagName[]): number {
  let m = 0;
  for (const n of names) m |= ACS_BITS[n];
  return m;
}

export function acsNames(mask: number): AcsFlagName[] {
  return ACS_FLAG_NAMES.filter((n) => (mask & ACS_BITS[n]) !== 0);
}

export function isAcsFlagName(s: string): s is AcsFlagName {
  return (ACS_FLAG_NAMES as readonly string[]).includes(s);
}

/** `SV,RR,CR,UF` or `none`. */
export function formatAcs(mask: number): string {
  const n = acsNames(mask);
  return n.length ? n.join(',') : 'none';
}
