/**
 * Typed addresses. All are plain numbers at run time (exact up to 2^53; IOVAs are 48-bit and
 * guest-physical addresses below 2^40), branded so that mixing them is a compile error:
 * a `Pa` is where bytes live in guest RAM, an `Iova` is what a translated device puts on the bus,
 * and a `DmaAddr` is what the driver hands the device (an IOVA, or a PA when nothing translates).
 */
declare const brand: unique symbol;
export type Pa = number & { readonly [brand]: 'Pa' };
export type Iova = number & { readonly [brand]: 'Iova' };
export type DmaAddr = number & { readonly [brand]: 'DmaAddr' };

export const pa = (n: number): Pa => n as Pa;
export const iova = (n: number): Iova => n as Iova;
export const dmaAddr = (n: number): DmaAddr => n as DmaAddr;

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
export const PAGE_MASK = PAGE_SIZE - 1;

/** Whether n is 2^k - 1 for some k ≥ 0 (a low-bit mask, like Linux's DMA masks and alignment masks); any safe integer. */
export function isBitMask(n: number): boolean {
  if (n >= 0 && n <= 0x7fffffff && (n | 0) === n) return (n & (n + 1)) === 0;
  return Number.isSafeInteger(n) && n >= 0 && 2 ** Math.round(Math.log2(n + 1)) === n + 1;
}

export const isPageAligned = (n: number): boolean => n % PAGE_SIZE === 0;
export const pageDown = (n: number): number => n - (n % PAGE_SIZE);
export const pageUp = (n: number): number => pageDown(n + PAGE_MASK);
