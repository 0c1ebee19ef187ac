/**
 * ACS as Linux's drivers/pci/pci.c judges it:
 *   pci_acs_flags_enabled(): a function with no ACS capability fails; otherwise every requested
 *     flag the capability implements must be enabled in its control register - a flag the
 *     capability does not implement counts as enabled (hard-wired), except Egress Control,
 *     which must always be both implemented and enabled when asked for;
 *   pci_acs_enabled(): device-specific quirks first (acs-quirks.ts, then the optional
 *     pcie_acs_override entry); conventional PCI never isolates; PCIe-to-PCI and PCI-to-PCIe
 *     bridges and RC event collectors never do; root and downstream ports must have the flags;
 *     endpoints, upstream ports, legacy and RC-integrated endpoints need them only when
 *     multifunction (single-function ones are isolated by construction);
 *   pci_acs_path_enabled(): every function from start up to end (or up to the root bus when end
 *     is null) must pass pci_acs_enabled(); a start on an SR-IOV virtual bus (no bridge above it)
 *     fails, as Linux's walk meets a NULL bus->self.
 * Where we differ from Linux: nothing in these rules; quirk assumptions are listed in acs-quirks.ts.
 */
import { PCI_ACS_EC } from './acs-flags.js';
import { devSpecificAcsEnabled } from './acs-quirks.js';
import { pcieAcsOverrides, type AcsOverride } from './acs-override.js';
import { withArticle, isPcie, type PciFunction, type PciTree } from './topology.js';

export interface AcsPolicy {
  /** The pcie_acs_override= forms in effect (the patch's entry ends the quirk table). */
  readonly override?: AcsOverride;
}

/** Why pci_acs_enabled() decided as it did: for messages and the audit. */
export interface AcsVerdict {
  readonly enabled: boolean;
  readonly reason: string;
}

/** pci_acs_flags_enabled(). */
export function pciAcsFlagsEnabled(f: PciFunction, flags: number): boolean {
  if (!f.acs) return false;
  const req = flags & (f.acs.cap | PCI_ACS_EC);
  return (f.acs.ctl & req) === req;
}

/** pci_acs_enabled() with the rule that decided. */
export function pciAcsVerdict(tree: PciTree, f: PciFunction, flags: number, policy: AcsPolicy = {}): AcsVerdict {
  const quirk = devSpecificAcsEnabled(tree, f, flags);
  if (quirk.result >= 0) return { enabled: quirk.result > 0, reason: `device quirk ${quirk.rule}` };
  if (policy.override && pcieAcsOverrides(f, policy.override) > 0)
    return { enabled: true, reason: 'pcie_acs_override' };
  if (!isPcie(f.type)) return { enabled: false, reason: 'conventional PCI never isolates' };
  const flagsRule = (what: string): AcsVerdict =>
    !f.acs
      ? { enabled: false, reason: `${what} without an ACS capability` }
      : pciAcsFlagsEnabled(f, flags)
        ? { enabled: true, reason: `${what} with ACS enabled` }
        : { enabled: false, reason: `${what} with ACS not enabled` };
  switch (f.type) {
    case 'pci-to-pcie-bridge':
    case 'pcie-to-pci-bridge':
    case 'rc-event-collector':
      return { enabled: false, reason: `${withArticle(f.type)} never isolates` };
    case 'downstream-port':
    case 'root-port':
      return flagsRule(f.type);
    case 'endpoint':
    case 'upstream-port':
    case 'legacy-endpoint':
    case 'rc-endpoint':
      if (!f.multifunction) return { enabled: true, reason: `single-function ${f.type}` };
      return flagsRule(`multifunction ${f.type}`);
    default:
      return { enabled: true, reason: `ACS does not apply to ${withArticle(f.type)}` };
  }
}

/** pci_acs_enabled(). */
export function pciAcsEnabled(tree: PciTree, f: PciFunction, flags: number, policy: AcsPolicy = {}): boolean {
  return pciAcsVerdict(tree, f, flags, policy).enabled;
}

/** pci_acs_path_enabled(start, end, flags): end === null walks up to the root bus. */
export function pciAcsPathEnabled(
  tree: PciTree,
  start: PciFunction,
  end: PciFunction | null,
  flags: number,
  policy: AcsPolicy = {},
): boolean {
  let parent: PciFunction | undefined = start;
  let pdev: PciFunction;
  do {
    pdev = parent!;
    if (!pciAcsEnabled(tree, pdev, flags, policy)) return false;
    const bus = tree.busOf(pdev);
    if (tree.isRootBus(bus)) return end === null;
    parent = tree.self(bus);
    if (!parent) return false; // a virtual bus: Linux asks pci_acs_enabled(NULL), which says no
  } while (pdev !== end);
  return true;
}
