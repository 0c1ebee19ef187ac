/**
 * The public face of src/pci: topology input (JSON and lspci text), requester IDs and DMA aliases,
 * ACS, IOMMU groups as Linux's pci_device_group() forms them, and the peer-to-peer audit.
 * Where we differ from Linux: see the note in each module.
 */
export {
  PCI_TYPES,
  buildTopology,
  formatIds,
  isBridge,
  isPcie,
  treeOf,
  type AcsCapability,
  type Bar,
  type FunctionSpec,
  type PciFunction,
  type PciTree,
  type PciType,
  type Topology,
} from './topology.js';
export { parseTopology, type TopologyJson, type FunctionJson } from './schema.js';
export { parseLspci } from './lspci.js';
export { normalizeBdf, parseBdf, formatBdf, type Bdf } from './bdf.js';
export { requesterId, dmaAliases, type DmaAlias, type DmaAliasReason } from './dma-alias.js';
export {
  ACS_FLAG_NAMES,
  REQ_ACS_FLAGS,
  acsMask,
  acsNames,
  formatAcs,
  type AcsFlagName,
} from './acs-flags.js';
export { pciAcsEnabled, pciAcsPathEnabled, pciAcsVerdict, type AcsPolicy, type AcsVerdict } from './acs.js';
export { ACS_QUIRKS, type AcsQuirk } from './acs-quirks.js';
export { parseAcsOverride, formatAcsOverride, type AcsOverride } from './acs-override.js';
export {
  computeIommuGroups,
  iommuGroupMap,
  outsideIvrs,
  groupIndex,
  type IommuGroup,
  type IommuGroupOptions,
} from './iommu-group.js';
export {
  auditIsolation,
  p2pRoute,
  p2pReachable,
  describeVia,
  type IsolationFinding,
  type P2pRoute,
  type P2pVia,
} from './p2p.js';
export {
  parseAcsSetting,
  parseMove,
  setAcs,
  moveFunction,
  diffGroups,
  type AcsSetting,
  type Move,
  type GroupDiff,
} from './what-if.js';
