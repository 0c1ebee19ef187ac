/**
 * The out-of-tree `pcie_acs_override=` kernel parameter (the "ACS override patch" carried by
 * Arch/zen/Proxmox kernels): pcie_acs_override_setup() parses `downstream`, `multifunction` and
 * `id:vvvv:dddd` (comma-separated), and pcie_acs_overrides() - the last entry of the
 * pci_dev_acs_enabled quirk table - then claims ACS is enabled:
 *   - never for conventional PCI functions or functions that have an ACS capability;
 *   - for any PCIe function whose vendor:device matches an `id:` entry;
 *   - `downstream`: for every downstream port and root port;
 *   - `multifunction`: for endpoints, upstream ports, legacy and RC-integrated endpoints that are
 *     multifunction.
 * It pretends; the hardware still routes peer-to-peer as before (see p2p.ts).
 * Where we differ from Linux: the patch silently skips unknown words, bad ids and ids past its 15
 * slots (and matches word prefixes); we reject them with DmaError('EINVAL').
 */
import { DmaError } from '../errors.js';
import { isPcie, type PciFunction } from './topology.js';

export interface AcsOverride {
  readonly downstream: boolean;
  readonly multifunction: boolean;
  readonly ids: ReadonlyArray<{ readonly vendor: number; readonly device: number }>;
}

/** The patch's table has 16 slots but refuses a new id once 15 are used. */
export const ACS_OVERRIDE_MAX_IDS = 15;

export const NO_ACS_OVERRIDE: AcsOverride = { downstream: false, multifunction: false, ids: [] };

/** Parses `downstream,multifunction,id:8086:1234` (any subset, any order). */
export function parseAcsOverride(text: string): AcsOverride {
  let downstream = false;
  let multifunction = false;
  const ids: Array<{ vendor: number; device: number }> = [];
  const words = text.split(',').map((w) => w.trim());
  for (const [i, w] of words.entries()) {
    if (w === 'downstream') downstream = true;
    else if (w === 'multifunction') multifunction = true;
    else if (w.startsWith('id:')) {
      const m = /^id:([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$/.exec(w);
      if (!m)
        throw new DmaError('EINVAL', `pcie_acs_override: form ${i + 1} "${w}" is not id:vvvv:dddd (4 hex digits each)`);
      if (ids.length >= ACS_OVERRIDE_MAX_IDS)
        throw new DmaError('EINVAL', `pcie_acs_override: more than ${ACS_OVERRIDE_MAX_IDS} id: entries (the patch has no slot for "${w}")`);
      ids.push({ vendor: parseInt(m[1], 16), device: parseInt(m[2], 16) });
    } else {
      throw new DmaError(
        'EINVAL',
        `pcie_acs_override: form ${i + 1} "${w}" is not one of downstream, multifunction, id:vvvv:dddd`,
      );
    }
  }
  return { downstream, multifunction, ids };
}

/** Accepts the parameter text or an already-parsed value. */
export function toAcsOverride(v: string | AcsOverride | undefined): AcsOverride | undefined {
  if (v === undefined) return undefined;
  if (typeof v === 'string') return v.trim() === '' ? undefined : parseAcsOverride(v);
  return v;
}

export function formatAcsOverride(o: AcsOverride): string {
  const parts: string[] = [];
  if (o.downstream) parts.push('downstream');
  if (o.multifunction) parts.push('multifunction');
  for (const id of o.ids)
    parts.push(`id:${id.vendor.toString(16).padStart(4, '0')}:${id.device.toString(16).padStart(4, '0')}`);
  return parts.join(',');
}

/**
 * pcie_acs_overrides(): 1 (claim every requested flag enabled) or -1 (-ENOTTY: no opinion, fall
 * through to the standard ACS rules). The requested flags do not matter to the patch.
 */
export function pcieAcsOverrides(f: PciFunction, o: AcsOverride): number {
  if (!isPcie(f.type) || f.acs) return -1;
  if (o.ids.some((id) => id.vendor === f.vendor && id.device === f.device)) return 1;
  switch (f.type) {
    case 'downstream-port':
    case 'root-port':
      return o.downstream ? 1 : -1;
    case 'endpoint':
    case 'upstream-port':
    case 'legacy-endpoint':
    case 'rc-endpoint':
      return o.multifunction && f.multifunction ? 1 : -1;
    default:
      return -1;
  }
}
