/**
 * The context table: which domain each requester ID is attached to (VT-d's root/context
 * entries, flattened to one word per 16-bit requester ID).
 *
 * Layout: Int32Array of 65536 words, indexed by requester ID (bus << 8 | devfn), then one word:
 *   [rid]   0 = no context entry (DMA from that ID faults with reason 'no-context')
 *           n = attached to domain n - 1
 *   [65536] futex mutex serializing attach/detach (the context entry and the domain's attached
 *           set change together), as Linux's group mutex does
 * Writers: whoever attaches, detaches or replaces (driver side, any thread), with the mutex held
 * and Atomics.store. Readers: devices, once per transfer, with Atomics.load (no lock).
 * A replace (Iommu.replaceDomain) is one store from domain a + 1 to domain b + 1: the entry is
 * never 0 in between, so no transfer meets 'no-context' while a device changes domain.
 */
export interface ContextTableHandle {
  readonly sab: SharedArrayBuffer;
}

import { FutexMutex } from '../shared/futex-mutex.js';

export const REQUESTER_IDS = 65536;

export class ContextTable {
  readonly handle: ContextTableHandle;
  readonly words: Int32Array;
  /** Held around every attach/detach. */
  readonly mutex: FutexMutex;

  static create(): ContextTable {
    return new ContextTable({ sab: new SharedArrayBuffer((REQUESTER_IDS + 1) * 4) });
  }

  static attach(handle: ContextTableHandle): ContextTable {
    return new ContextTable(handle);
  }

  private constructor(handle: ContextTableHandle) {
    this.handle = handle;
    this.words = new Int32Array(handle.sab);
    this.mutex = new FutexMutex(this.words, REQUESTER_IDS);
  }

  /** Domain id of a requester ID, or -1. */
  domainOf(requesterId: number): number {
    // ORDERING: pairs with set(); a device sees a new context from its next transfer on.
    return Atomics.load(this.words, requesterId) - 1;
  }

  set(requesterId: number, domain: number): void {
    // ORDERING: seq-cst store, ordered after the domain's page table was built.
    Atomics.store(this.words, requesterId, domain + 1);
  }

  clear(requesterId: number): void {
    Atomics.store(this.words, requesterId, 0);
  }
}
