/**
 * The domain table: every IOMMU domain's slot — its type, its page-table root and which device
 * slots are attached to it.
 *
 * Layout (Int32 words, 8 per domain slot):
 *   [8n + 0] type      0 = free, 1 = dma (translated), 2 = identity (passthrough), 3 = blocked
 *   [8n + 1] root      page-table root (index in the table pool), 0 for identity/blocked
 *   [8n + 2] attached  bit d = device slot d is attached (slots 0..31)
 *   [8n + 3] attached  slots 32..63
 *   [8n + 4] incarnation  moves each time the slot is claimed: a device that finds the same
 *                     domain id with another incarnation is in a new domain (flushes, reloads)
 * Writers: the driver side (allocation with compareExchange on type; attach/detach with
 * Atomics.or/and). Devices read type and root after loading their context entry, which was
 * stored after the slot was filled, so plain loads see them.
 */
import { DmaError } from '../errors.js';

export type DomainType = 'dma' | 'identity' | 'blocked';
export const DOMAIN_FREE = 0;
export const DOMAIN_DMA = 1;
export const DOMAIN_IDENTITY = 2;
export const DOMAIN_BLOCKED = 3;
const TYPES: Record<DomainType, number> = { dma: DOMAIN_DMA, identity: DOMAIN_IDENTITY, blocked: DOMAIN_BLOCKED };
const NAMES: DomainType[] = ['dma', 'dma', 'identity', 'blocked'];

export interface DomainTableHandle {
  readonly sab: SharedArrayBuffer;
}

const WORDS = 8;
export const MAX_DEVICE_SLOTS = 64;

export class DomainTable {
  readonly handle: DomainTableHandle;
  readonly words: Int32Array;
  readonly slots: number;

  static create(slots: number): DomainTable {
    return new DomainTable({ sab: new SharedArrayBuffer(slots * WORDS * 4) });
  }

  static attach(handle: DomainTableHandle): DomainTable {
    return new DomainTable(handle);
  }

  private constructor(handle: DomainTableHandle) {
    this.handle = handle;
    this.words = new Int32Array(handle.sab);
    this.slots = this.words.length / WORDS;
  }

  /** Claims a free slot for a domain of `type` whose page-table root is `root`. */
  claim(type: DomainType, root: number): number {
    for (let n = 0; n < this.slots; n++) {
      // ORDERING: compareExchange from free makes one claimer the owner.
      if (Atomics.compareExchange(this.words, n * WORDS, DOMAIN_FREE, TYPES[type]) === DOMAIN_FREE) {
        Atomics.store(this.words, n * WORDS + 1, root);
        Atomics.store(this.words, n * WORDS + 2, 0);
        Atomics.store(this.words, n * WORDS + 3, 0);
        // ORDERING: a new incarnation, stored before any context entry can point here.
        Atomics.add(this.words, n * WORDS + 4, 1);
        return n;
      }
    }
    throw new DmaError('ENOSPC', `iommu: all ${this.slots} domain slots are in use`);
  }

  release(n: number): void {
    Atomics.store(this.words, n * WORDS + 1, 0);
    Atomics.store(this.words, n * WORDS, DOMAIN_FREE);
  }

  typeCode(n: number): number {
    return this.words[n * WORDS];
  }

  type(n: number): DomainType {
    return NAMES[Atomics.load(this.words, n * WORDS)];
  }

  incarnation(n: number): number {
    // ORDERING: loaded by a device right after its context entry (see dma-engine.ts begin()).
    return Atomics.load(this.words, n * WORDS + 4);
  }

  root(n: number): number {
    return this.words[n * WORDS + 1];
  }

  attachDevice(n: number, slot: number): void {
    Atomics.or(this.words, n * WORDS + 2 + (slot >>> 5), 1 << (slot & 31));
  }

  detachDevice(n: number, slot: number): void {
    Atomics.and(this.words, n * WORDS + 2 + (slot >>> 5), ~(1 << (slot & 31)));
  }

  /** Word k (0 or 1) of domain n's attached-slot mask: slot k * 32 + b is attached when bit b is set. */
  attachedMask(n: number, k: number): number {
    // ORDERING: a strict unmap reads the set after it moved the generation.
    return Atomics.load(this.words, n * WORDS + 2 + k);
  }

  /** Device slots attached to domain n. */
  attached(n: number): number[] {
    const out: number[] = [];
    for (let k = 0; k < 2; k++) {
      // ORDERING: a strict unmap reads the set after it moved the generation.
      const m = Atomics.load(this.words, n * WORDS + 2 + k);
      for (let b = 0; b < 32; b++) if (m & (1 << b)) out.push(k * 32 + b);
    }
    return out;
  }
}
