/**
 * The context table: which domain each requester ID is attached to (VT-d's root/context
 * entries, flattened to one word per 16-bit requester ID).
 *
 * Layout: Int32Array of 65536 words, indexed by requester ID (bus << 8 | devfn).
 *   0 = no context entry (DMA from that ID faults with reason 'no-context')
 *   n = attached to domain n - 1
 * Writers: whoever attaches or detaches (driver side, any thread), with Atomics.store.
 * Readers: devices, once per transfer, with Atomics.load.
 */
export interface ContextTableHandle {
  readonly sab: SharedArrayBuffer;
}

export const REQUESTER_IDS = 65536;

export class ContextTable {
  readonly handle: ContextTableHandle;
  readonly words: Int32Array;

  static create(): ContextTable {
    return new ContextTable({ sab: new SharedArrayBuffer(REQUESTER_IDS * 4) });
  }

  static attach(handle: ContextTableHandle): ContextTable {
    return new ContextTable(handle);
  }

  private constructor(handle: ContextTableHandle) {
    this.handle = handle;
    this.words = new Int32Array(handle.sab);
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
