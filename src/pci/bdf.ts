/**
 * PCI addresses as Linux names them: domain:bus:device.function (`0000:01:00.0`), the devfn byte
 * (device << 3 | function) and the 16-bit requester ID (bus << 8 | devfn) that the IOMMU sees.
 * Follows the kernel's PCI_DEVFN / PCI_SLOT / PCI_FUNC / PCI_DEVID macros.
 * Where we differ from Linux: domains are limited to 8 hex digits and printed with at least 4.
 */

export interface Bdf {
  readonly domain: number;
  readonly bus: number;
  readonly slot: number;
  readonly fn: number;
}

// Strict form: optional domain (4 to 8 hex digits), then exactly BB:DD.F as lspci and sysfs print it.
const BDF_RE = /^(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$/;

/** Parses `DDDD:BB:DD.F` or `BB:DD.F` (domain 0). Returns undefined when the text is not a PCI address. */
export function parseBdf(text: string): Bdf | undefined {
  const m = BDF_RE.exec(text.trim());
  if (!m) return undefined;
  const slot = parseInt(m[3], 16);
  if (slot > 0x1f) return undefined; // a device number has 5 bits
  return {
    domain: m[1] === undefined ? 0 : parseInt(m[1], 16),
    bus: parseInt(m[2], 16),
    slot,
    fn: parseInt(m[4], 10),
  };
}

const h = (n: number, width: number): string => n.toString(16).padStart(width, '0');

export function formatBdf(b: Bdf): string {
  return `${h(b.domain, 4)}:${h(b.bus, 2)}:${h(b.slot, 2)}.${b.fn}`;
}

/** Normalizes a BDF to `DDDD:BB:DD.F`, or undefined if it is not one. */
export function normalizeBdf(text: string): string | undefined {
  const b = parseBdf(text);
  return b ? formatBdf(b) : undefined;
}

/** `DDDD:BB`: one bus segment, the key under which functions and bridges are indexed. */
export function busKey(domain: number, bus: number): string {
  return `${h(domain, 4)}:${h(bus, 2)}`;
}

/** `DDDD:BB:DD`: one PCI device (slot), i.e. all the functions of a multifunction device. */
export function slotKey(domain: number, bus: number, slot: number): string {
  return `${h(domain, 4)}:${h(bus, 2)}:${h(slot, 2)}`;
}

export const devfnOf = (slot: number, fn: number): number => ((slot & 0x1f) << 3) | (fn & 7);
export const slotOfDevfn = (devfn: number): number => (devfn >> 3) & 0x1f;
export const fnOfDevfn = (devfn: number): number => devfn & 7;

/** PCI_DEVID: the 16-bit requester ID carried in every TLP (the domain is not part of it). */
export const pciDevId = (bus: number, devfn: number): number => ((bus & 0xff) << 8) | (devfn & 0xff);

/** Prints a devfn as `DD.F`. */
export function formatDevfn(devfn: number): string {
  return `${h(slotOfDevfn(devfn), 2)}.${fnOfDevfn(devfn)}`;
}

/** Parses a bus number written in hex (`1a`, `0x1a`) as lspci and sysfs print it. */
export function parseBusNumber(text: string): number | undefined {
  const m = /^(?:0x)?([0-9a-fA-F]{1,2})$/.exec(text.trim());
  return m ? parseInt(m[1], 16) : undefined;
}

/** Parses `DDDD:BB` (or `BB`, domain 0). */
export function parseBusKey(text: string): { domain: number; bus: number } | undefined {
  const m = /^(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2})$/.exec(text.trim());
  if (!m) return undefined;
  return { domain: m[1] === undefined ? 0 : parseInt(m[1], 16), bus: parseInt(m[2], 16) };
}

/** Orders functions as the PCI core probes them on one host: domain, bus, then devfn. */
export function compareBdf(a: Bdf, b: Bdf): number {
  return a.domain - b.domain || a.bus - b.bus || devfnOf(a.slot, a.fn) - devfnOf(b.slot, b.fn);
}
