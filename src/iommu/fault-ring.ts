/**
 * The IOMMU's fault ring: where devices' refused DMAs are recorded (VT-d's fault recording
 * registers, as a ring). Many producers (device workers), one consumer (whoever calls drain).
 *
 * Layout (Int32 words of its own SharedArrayBuffer):
 *   [0] head      next sequence number to claim; producers move it with compareExchange
 *   [1] tail      next sequence number to read; only the consumer writes it
 *   [2] overflow  records refused because the ring was full (never lost silently: counted)
 *   [3] capacity  number of records
 *   [4] recorded  records ever claimed (head without wrap concerns, for statistics)
 *   [5] lastDropped  requester ID of the last record refused (producers store it after counting)
 *   [6] reported  overflow already reported by takeOverflow (only the consumer writes it)
 *   [8 + 8*i ...] record i: seq, requesterId, addrLo, addrHi, flags, domain, info, reserved
 *                 flags: bit 0 = write access, bits 4..7 = reason
 * Protocol: a producer claims sequence h (head → h+1) only while h - tail < capacity, writes the
 * record's fields, then publishes it by storing seq = h+1. The consumer reads records whose seq
 * equals their sequence + 1, in order, and stops at the first unpublished one.
 * Invariant: head - tail ≤ capacity; a record's fields are read only after its seq is published.
 */
import { DmaError } from '../errors.js';

export type FaultReason = 'not-present' | 'permission' | 'out-of-range' | 'no-context';
export type FaultAccess = 'read' | 'write';

export const FAULT_REASONS: readonly FaultReason[] = ['not-present', 'permission', 'out-of-range', 'no-context'];
/** Numeric codes as stored in the ring (and in completion status words, offset by STATUS_FAULT). */
export const REASON_NOT_PRESENT = 0;
export const REASON_PERMISSION = 1;
export const REASON_OUT_OF_RANGE = 2;
export const REASON_NO_CONTEXT = 3;

export interface FaultRecord {
  requesterId: number;
  addr: number;
  access: FaultAccess;
  reason: FaultReason;
  /** Domain id the device was attached to, or -1 when it had none. */
  domain: number;
}

export interface FaultRingHandle {
  readonly sab: SharedArrayBuffer;
}

const HEAD = 0;
const TAIL = 1;
const OVERFLOW = 2;
const CAPACITY = 3;
const RECORDED = 4;
const LAST_DROPPED = 5;
const REPORTED = 6;
const RECORDS = 8;
const RECORD_WORDS = 8;

export class FaultRing {
  readonly handle: FaultRingHandle;
  readonly capacity: number;
  private readonly w: Int32Array;

  static create(capacity = 4096): FaultRing {
    if (!Number.isSafeInteger(capacity) || capacity < 1 || capacity > 1 << 20) {
      throw new DmaError('EINVAL', `iommu.faultRing: capacity ${String(capacity)} must be an integer in [1, 1048576]`);
    }
    const sab = new SharedArrayBuffer((RECORDS + capacity * RECORD_WORDS) * 4);
    new Int32Array(sab)[CAPACITY] = capacity;
    return new FaultRing({ sab });
  }

  static attach(handle: FaultRingHandle): FaultRing {
    return new FaultRing(handle);
  }

  private constructor(handle: FaultRingHandle) {
    this.handle = handle;
    this.w = new Int32Array(handle.sab);
    this.capacity = this.w[CAPACITY];
  }

  /** Records a fault; false (and the overflow counter moves) when the ring is full. */
  record(requesterId: number, addr: number, write: boolean, reason: number, domain: number): boolean {
    const w = this.w;
    let h: number;
    for (;;) {
      // ORDERING: tail is loaded after head; a stale tail only makes the ring look fuller.
      h = Atomics.load(w, HEAD);
      const t = Atomics.load(w, TAIL);
      if (((h - t) | 0) >= this.capacity) {
        Atomics.add(w, OVERFLOW, 1);
        // ORDERING: a plain "last one wins" word, read only to name a device in the report.
        Atomics.store(w, LAST_DROPPED, requesterId);
        return false;
      }
      // ORDERING: claiming h with compareExchange makes this producer the only writer of slot h.
      if (Atomics.compareExchange(w, HEAD, h, (h + 1) | 0) === h) break;
    }
    Atomics.add(w, RECORDED, 1);
    const at = RECORDS + ((h >>> 0) % this.capacity) * RECORD_WORDS;
    const hi = Math.floor(addr / 2 ** 32);
    w[at + 1] = requesterId;
    w[at + 2] = addr - hi * 2 ** 32;
    w[at + 3] = hi;
    w[at + 4] = (write ? 1 : 0) | (reason << 4);
    w[at + 5] = domain;
    // ORDERING: the seq store publishes the plain field writes above to the consumer's seq load.
    Atomics.store(w, at, (h + 1) | 0);
    return true;
  }

  /** Takes every published record, oldest first. */
  drain(): FaultRecord[] {
    const w = this.w;
    const out: FaultRecord[] = [];
    let t = Atomics.load(w, TAIL);
    for (;;) {
      const at = RECORDS + ((t >>> 0) % this.capacity) * RECORD_WORDS;
      // ORDERING: pairs with the producer's publishing seq store; fields are read after it.
      if (Atomics.load(w, at) !== ((t + 1) | 0)) break;
      const flags = w[at + 4];
      out.push({
        requesterId: w[at + 1],
        addr: (w[at + 3] >>> 0) * 2 ** 32 + (w[at + 2] >>> 0),
        access: flags & 1 ? 'write' : 'read',
        reason: FAULT_REASONS[(flags >>> 4) & 15] ?? 'not-present',
        domain: w[at + 5],
      });
      t = (t + 1) | 0;
      // ORDERING: moving tail after reading frees the slot for producers.
      Atomics.store(w, TAIL, t);
    }
    return out;
  }

  /** Records refused because the ring was full. */
  overflowed(): number {
    return Atomics.load(this.w, OVERFLOW);
  }

  /**
   * VT-d's Primary Fault Overflow, read and cleared: how many records were refused since the last
   * call and who the last one was from, or null when none was. Consumer only, like drain().
   */
  takeOverflow(): { dropped: number; lastRequesterId: number } | null {
    const w = this.w;
    // ORDERING: the overflow count is loaded before lastDropped; a producer stores lastDropped
    // after counting, so a newer ID than the count covers is possible, an older one is not.
    const total = Atomics.load(w, OVERFLOW);
    const dropped = (total - Atomics.load(w, REPORTED)) | 0;
    if (dropped === 0) return null;
    Atomics.store(w, REPORTED, total);
    return { dropped, lastRequesterId: Atomics.load(w, LAST_DROPPED) };
  }

  /** Records ever written (including those already drained). */
  recorded(): number {
    return Atomics.load(this.w, RECORDED);
  }

  pending(): number {
    return (Atomics.load(this.w, HEAD) - Atomics.load(this.w, TAIL)) | 0;
  }
}
