/**
 * Device-specific ACS as Linux's drivers/pci/quirks.c states it: the pci_dev_acs_enabled table of
 * (vendor, device, rule) entries that pci_dev_specific_acs_enabled() walks in order. The first
 * entry that matches and returns >= 0 decides (0: not isolated, 1: isolated); -1 means "no opinion"
 * and the walk goes on; when nothing decides, pci_acs_enabled() applies the standard rules.
 * The rules, written as data plus small predicates (pci_acs_ctrl_enabled(req, ena) is
 * "every requested flag is in ena"):
 *   amd-sb        multifunction device on a root bus of an AMD IOMMU system: RR and CR hold
 *   mf-endpoint   vendor-verified: no peer-to-peer between functions (SV TB RR CR UF DT hold)
 *   rciep         Intel root-complex integrated endpoints: SV RR CR UF hold (VT-d sec. 3.16)
 *   intel-pch     listed Intel PCH root ports without an ACS capability: SV RR CR UF hold
 *   intel-spt-pch Sunrise/Union Point root ports keep their ACS control register where the standard
 *                 puts nothing (lspci's ACSCtl line for them is not the real control); Linux's
 *                 enable step sets SV RR CR UF there, as far as ACSCap implements them, so the
 *                 standard cap/ctl rule runs on the given ctl plus those bits
 *   cavium, qcom, xgene, brcm, loongson, nxp, al, zhaoxin, wangxun: root ports (or NICs) that
 *                 isolate without advertising ACS
 * Where we differ from Linux: amd-sb assumes the ACPI IVRS table exists (an AMD IOMMU is present),
 * intel-pch assumes its enable step (RCBA/UPDCR/MPC writes) succeeded, intel-spt-pch assumes its
 * enable step ran (IOMMU on, no pci=disable_acs_redir) rather than reading the real dword control
 * register, which neither lspci nor our JSON carries; the override entry is acs-override.ts.
 */
import {
  PCI_ACS_CR,
  PCI_ACS_DT,
  PCI_ACS_EC,
  PCI_ACS_RR,
  PCI_ACS_SV,
  PCI_ACS_TB,
  PCI_ACS_UF,
} from './acs-flags.js';
import { isPcie, type PciFunction, type PciTree } from './topology.js';

/** PCI_ANY_ID in the table. */
export const ANY_ID = -1;

export type AcsQuirkRule = (tree: PciTree, f: PciFunction, flags: number) => number;

export interface AcsQuirk {
  readonly vendor: number; // or ANY_ID
  readonly device: number; // or ANY_ID
  readonly rule: string; // the name of the rule (as in quirks.c, without pci_quirk_ / _acs)
  readonly apply: AcsQuirkRule;
}

const NOTTY = -1;

/** pci_acs_ctrl_enabled(): 1 when every requested control is provided. */
export const acsCtrlEnabled = (req: number, ena: number): number => ((req & ena) === req ? 1 : 0);

const ISOLATED = PCI_ACS_SV | PCI_ACS_RR | PCI_ACS_CR | PCI_ACS_UF;
const inRange = (d: number | undefined, lo: number, hi: number) => d !== undefined && d >= lo && d <= hi;
const isRootPort = (f: PciFunction) => isPcie(f.type) && f.type === 'root-port';

const amdSb: AcsQuirkRule = (tree, f, flags) => {
  if (!f.multifunction || !tree.isRootBus(tree.busOf(f))) return NOTTY;
  const relevant = flags & (PCI_ACS_RR | PCI_ACS_CR | PCI_ACS_EC | PCI_ACS_DT);
  return acsCtrlEnabled(relevant, PCI_ACS_RR | PCI_ACS_CR);
};
const mfEndpoint: AcsQuirkRule = (_t, _f, flags) =>
  acsCtrlEnabled(flags, PCI_ACS_SV | PCI_ACS_TB | PCI_ACS_RR | PCI_ACS_CR | PCI_ACS_UF | PCI_ACS_DT);
const rciep: AcsQuirkRule = (_t, f, flags) => (f.type !== 'rc-endpoint' ? NOTTY : acsCtrlEnabled(flags, ISOLATED));
const isolatedRule: AcsQuirkRule = (_t, _f, flags) => acsCtrlEnabled(flags, ISOLATED);

/** Intel PCH root ports without an ACS capability (Red Hat bugzilla 1037684). */
export const INTEL_PCH_ACS_IDS: ReadonlySet<number> = new Set([
  // Ibexpeak
  ...range(0x3b42, 0x3b51),
  // Cougarpoint, Pantherpoint, Lynxpoint-H
  ...range(0x1c10, 0x1c1f),
  ...range(0x1e10, 0x1e1f),
  ...range(0x8c10, 0x8c1f),
  // Lynxpoint-LP, Wildcat
  ...range(0x9c10, 0x9c1b),
  ...range(0x9c90, 0x9c9b),
  // Patsburg (X79): even ids only
  0x1d10, 0x1d12, 0x1d14, 0x1d16, 0x1d18, 0x1d1a, 0x1d1c, 0x1d1e,
  // Wellsburg (X99)
  ...range(0x8d10, 0x8d1e),
  // Lynx Point 9 series: even ids only
  0x8c90, 0x8c92, 0x8c94, 0x8c96, 0x8c98, 0x8c9a, 0x8c9c, 0x8c9e,
]);

function range(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let i = lo; i <= hi; i++) out.push(i);
  return out;
}

const intelPch: AcsQuirkRule = (_t, f, flags) => {
  if (!isRootPort(f) || f.device === undefined || !INTEL_PCH_ACS_IDS.has(f.device)) return NOTTY;
  return acsCtrlEnabled(flags, ISOLATED);
};

const intelSptPch: AcsQuirkRule = (_t, f, flags) => {
  if (!isRootPort(f)) return NOTTY;
  const d = f.device;
  const match =
    inRange(d, 0xa110, 0xa11f) || inRange(d, 0xa167, 0xa16a) || // Sunrise Point
    inRange(d, 0xa290, 0xa29f) || inRange(d, 0xa2e7, 0xa2ee) || // Union Point
    inRange(d, 0x9d10, 0x9d1b); // 7th/8th gen mobile
  if (!match || !f.acs) return NOTTY;
  const req = flags & (f.acs.cap | PCI_ACS_EC);
  const ctl = f.acs.ctl | (f.acs.cap & ISOLATED); // what pci_quirk_enable_intel_spt_pch_acs() writes
  return acsCtrlEnabled(req, ctl);
};

const cavium: AcsQuirkRule = (_t, f, flags) => {
  if (!isRootPort(f)) return NOTTY;
  const d = f.device;
  if (!(inRange(d, 0xa000, 0xa7ff) || d === 0xaf84 || d === 0xb884)) return NOTTY;
  return acsCtrlEnabled(flags, ISOLATED);
};

const zhaoxinPorts: AcsQuirkRule = (_t, f, flags) => {
  if (!isPcie(f.type) || (f.type !== 'root-port' && f.type !== 'downstream-port')) return NOTTY;
  const d = f.device;
  if (inRange(d, 0x0710, 0x071e) || d === 0x0721 || inRange(d, 0x0723, 0x0752)) return acsCtrlEnabled(flags, ISOLATED);
  return 0; // quirks.c returns false here: other Zhaoxin ports are taken as not isolated
};

const al: AcsQuirkRule = (_t, f, flags) => {
  if (f.type !== 'root-port') return NOTTY;
  return (flags & ~ISOLATED) !== 0 ? 0 : 1;
};

const wangxunNic: AcsQuirkRule = (_t, f, flags) => {
  const d = f.device;
  if (inRange(d, 0x0100, 0x010f) || [0x1001, 0x2001, 0x5010, 0x5025, 0x5040, 0x5110, 0x5125, 0x5140].includes(d ?? -1))
    return acsCtrlEnabled(flags, ISOLATED);
  return 0; // quirks.c returns false for other Wangxun devices
};

const V = {
  ATI: 0x1002,
  AMD: 0x1022,
  SOLARFLARE: 0x1924,
  INTEL: 0x8086,
  QCOM: 0x17cb,
  HXT: 0x1dbf,
  CAVIUM: 0x177d,
  AMCC: 0x10e8,
  AMPERE: 0x1def,
  BROADCOM: 0x14e4,
  LOONGSON: 0x0014,
  AMAZON_ANNAPURNA_LABS: 0x1c36,
  ZHAOXIN: 0x1d17,
  NXP: 0x1957,
  WANGXUN: 0x8088,
} as const;

const q = (vendor: number, device: number, rule: string, apply: AcsQuirkRule): AcsQuirk => ({ vendor, device, rule, apply });
const mf = (vendor: number, ...devices: number[]) => devices.map((d) => q(vendor, d, 'mf-endpoint', mfEndpoint));

/** The table, in quirks.c's order (order matters: the first deciding entry wins). */
export const ACS_QUIRKS: readonly AcsQuirk[] = [
  ...[0x4385, 0x439c, 0x4383, 0x439d, 0x4384, 0x4399].map((d) => q(V.ATI, d, 'amd-sb', amdSb)),
  q(V.AMD, 0x780f, 'amd-sb', amdSb),
  q(V.AMD, 0x7809, 'amd-sb', amdSb),
  ...mf(V.SOLARFLARE, 0x0903, 0x0923, 0x0a03),
  ...mf(V.INTEL, 0x10c6, 0x10db, 0x10dd, 0x10e1, 0x10f1, 0x10f7, 0x10f8, 0x10f9, 0x10fa, 0x10fb, 0x10fc),
  ...mf(V.INTEL, 0x1507, 0x1514, 0x151c, 0x1529, 0x152a, 0x154d, 0x154f, 0x1551, 0x1558),
  ...mf(V.INTEL, 0x1509, 0x150e, 0x150f, 0x1510, 0x1511, 0x1516, 0x1527), // 82580
  ...mf(V.INTEL, 0x10c9, 0x10e6, 0x10e7, 0x10e8, 0x150a, 0x150d, 0x1518, 0x1526), // 82576
  ...mf(V.INTEL, 0x10a7, 0x10a9, 0x10d6), // 82575
  ...mf(V.INTEL, 0x1521, 0x1522, 0x1523, 0x1524), // I350
  ...mf(V.INTEL, 0x105e, 0x105f, 0x1060, 0x10d9), // 82571
  ...mf(V.INTEL, 0x15b7, 0x15b8), // I219
  q(V.INTEL, ANY_ID, 'rciep', rciep),
  q(V.QCOM, 0x0400, 'qcom-rp', isolatedRule),
  q(V.QCOM, 0x0401, 'qcom-rp', isolatedRule),
  q(V.QCOM, 0x0115, 'qcom-rp', isolatedRule),
  q(V.QCOM, 0x0111, 'qcom-rp', isolatedRule),
  q(V.QCOM, 0x0120, 'qcom-rp', isolatedRule),
  q(V.HXT, 0x0401, 'qcom-rp', isolatedRule),
  q(V.INTEL, ANY_ID, 'intel-pch', intelPch),
  q(V.INTEL, ANY_ID, 'intel-spt-pch', intelSptPch),
  q(0x19a2, 0x0710, 'mf-endpoint', mfEndpoint), // Emulex BE3-R
  q(0x10df, 0x0720, 'mf-endpoint', mfEndpoint), // Emulex Skyhawk-R
  q(V.CAVIUM, ANY_ID, 'cavium', cavium),
  ...mf(V.CAVIUM, 0xa026, 0xa059, 0xa060),
  q(V.AMCC, 0xe004, 'xgene', isolatedRule),
  ...[0xe005, 0xe006, 0xe007, 0xe008, 0xe009, 0xe00a, 0xe00b, 0xe00c].map((d) => q(V.AMPERE, d, 'xgene', isolatedRule)),
  ...mf(V.BROADCOM, 0x16d7, 0x1750, 0x1751, 0x1752, 0x1760, 0x1761, 0x1762, 0x1763),
  q(V.BROADCOM, 0xd714, 'brcm', isolatedRule),
  ...[0x3c09, 0x3c19, 0x3c29, 0x7a09, 0x7a19, 0x7a29, 0x7a39, 0x7a49, 0x7a59, 0x7a69].map((d) =>
    q(V.LOONGSON, d, 'loongson', isolatedRule),
  ),
  q(V.AMAZON_ANNAPURNA_LABS, 0x0031, 'al', al),
  ...mf(V.ZHAOXIN, 0x3038, 0x3104, 0x9083),
  ...[
    0x8d81, 0x8da1, 0x8d83, 0x8d80, 0x8da0, 0x8d82, 0x8d90, 0x8db0, 0x8d92, 0x8d91, 0x8db1, 0x8d93, 0x8d89, 0x8da9,
    0x8d8b, 0x8d88, 0x8da8, 0x8d8a, 0x8d98, 0x8db8, 0x8d9a, 0x8d99, 0x8db9, 0x8d9b,
  ].map((d) => q(V.NXP, d, 'nxp-rp', isolatedRule)),
  q(V.ZHAOXIN, ANY_ID, 'zhaoxin-ports', zhaoxinPorts),
  q(V.WANGXUN, ANY_ID, 'wangxun-nic', wangxunNic),
];

export interface QuirkVerdict {
  readonly result: number; // -1 no opinion, 0 not isolated, 1 isolated
  readonly rule?: string;
}

/** pci_dev_specific_acs_enabled() over the hardware quirk table (the override is separate). */
export function devSpecificAcsEnabled(tree: PciTree, f: PciFunction, flags: number): QuirkVerdict {
  if (f.vendor === undefined) return { result: -1 }; // unknown ids match nothing, not even PCI_ANY_ID
  for (const e of ACS_QUIRKS) {
    if ((e.vendor !== ANY_ID && e.vendor !== f.vendor) || (e.device !== ANY_ID && e.device !== f.device)) continue;
    const r = e.apply(tree, f, flags);
    if (r >= 0) return { result: r, rule: e.rule };
  }
  return { result: -1 };
}
