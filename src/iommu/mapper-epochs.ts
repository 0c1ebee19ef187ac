/**
 * Mapper epochs: the CPU side of the grace period before a retired page-table page is reused
 * (RCU-like, as device-epoch.ts is for devices). A thread that maps or unmaps follows table
 * pointers it read with plain loads and then CASes entries in those tables; a table unlinked and
 * retired meanwhile must not be handed out again (zeroed, linked into another domain) until that
 * thread has left its map, or its CAS from 0 would land in the new owner's table.
 *
 * Layout (a region of the TablePool's SharedArrayBuffer, Int32 words, 4-byte aligned):
 *   [0]                  WAITERS: reclaimers sleeping in synchronize() (a mapper notifies on exit
 *                        only when it is non-zero)
 *   [1]                  STALLS: grace periods that gave up on a slot stuck inside a map
 *   [2 .. 16)            unused (keeps the owner words off WAITERS' cache line)
 *   [16 + s]             OWNER of slot s (s < 64): 0 free, else the owner's threadId + 1
 *   [80 + 16*s]          SEQ of slot s: odd while its thread is inside a map section, even outside
 *   [80 + 16*s + 1]      STUCK of slot s: 0, or 1 + the (odd) SEQ a grace period gave up on
 *   [80 + 16*s + 2]      DEPTH of slot s: sections opened inside the outermost one (plain words,
 *                        owner only; 0 when SEQ is even)
 *   (each slot's 16 words are one 64-byte line: two mappers never write one line)
 * Writers: OWNER by the claimer (CAS 0 → tid + 1) and by reclaimThread() for an ended thread;
 * SEQ and DEPTH only by its owner (enter/exit; reclaimThread for an ended one); STUCK and the
 * counters by reclaimers.
 * Invariants: one slot per thread per pool (every TablePool instance of a thread finds the slot
 * its thread already owns), so SEQ grows by one per outermost enter and per outermost exit; a
 * section opened inside another (a callback that maps, another TablePool instance of the same
 * thread) only counts DEPTH, so the outer section stays odd until its own exit.
 *
 * Protocol (mapper): enter = seq_cst store of SEQ + 1 (odd) before the walk reads any table
 * pointer; exit = seq_cst store of the next even value after its last CAS in a table.
 * Protocol (reclaimer): take the retired tables (they were unlinked before they were retired),
 * then snapshot every other thread's SEQ, and wait until each odd one has changed. Why it holds:
 * a mapper whose SEQ was even at the snapshot enters later in the seq_cst total order than the
 * unlinks, so its walk from the root cannot reach the tables; one whose SEQ changed has left the
 * section in which it might have read them. The reclaimer never waits for its own slot (a thread
 * reclaims only between map sections), so two reclaimers never wait for each other.
 * Bounded: a slot still odd after the timeout (a thread that died or is paused inside a map) is
 * recorded as STUCK, reported, and the caller keeps the tables retired; a later grace period
 * that finds the same SEQ does not wait for it again.
 *
 * Differs from Linux: the kernel frees io-pgtable pages after an IOTLB sync and relies on the
 * caller's exclusion of concurrent map/unmap on the range; here mappers of other ranges walk the
 * same upper tables without a lock, so they get an RCU read side of their own.
 */
import { threadId } from 'node:worker_threads';
import { DmaError } from '../errors.js';

export const MAPPER_SLOTS = 64;
const LINE = 16; // Int32 words per 64-byte line
const H_WAITERS = 0;
const H_STALLS = 1;
const OWNER0 = LINE;
const SEQ0 = OWNER0 + MAPPER_SLOTS;
const STUCK = 1;
const DEPTH = 2;
/** Bytes of the region. */
export const MAPPER_EPOCHS_BYTES = (SEQ0 + MAPPER_SLOTS * LINE) * 4;
/** How long a reclaim waits for a thread inside a map before it keeps the tables retired. */
export const MAPPER_GRACE_TIMEOUT_MS = 1000;
/** One sleep of a waiting reclaimer when nobody notifies it (a mapper notifies when it exits). */
const WAIT_SLICE_MS = 2;

/** A grace period that gave up: the slot still inside a map, and its owner. */
export interface MapperStall {
  readonly slot: number;
  readonly threadId: number;
  /** false when an earlier grace period already gave up on it at this same SEQ. */
  readonly fresh: boolean;
}

export class MapperEpochs {
  private readonly words: Int32Array;
  /** SEQ index of this thread's slot, or -1 until its first map section. */
  private seqAt = -1;

  constructor(sab: SharedArrayBuffer, byteOffset: number) {
    this.words = new Int32Array(sab, byteOffset, MAPPER_EPOCHS_BYTES / 4);
  }

  /** Start of a map section: from here on retired tables this thread may reach are not reused. */
  enter(): void {
    const w = this.words;
    const i = this.seqAt >= 0 ? this.seqAt : this.claim();
    const seq = w[i]; // only this thread writes it
    if ((seq & 1) !== 0) {
      w[i + DEPTH]++; // nested: the outer section's odd SEQ already covers this one
      return;
    }
    // ORDERING: seq_cst store of the odd value before the walk's first (plain) load of a table
    // pointer: a reclaimer that reads the old even value took its tables off the page table
    // before this store, so the walk cannot find them. Only this thread writes the word.
    Atomics.store(w, i, seq + 1);
  }

  /** End of a map section (after its last CAS in a table). */
  exit(): void {
    const w = this.words;
    const i = this.seqAt;
    if (w[i + DEPTH] !== 0) {
      w[i + DEPTH]--; // an inner section: the outer one goes on
      return;
    }
    // ORDERING: seq_cst store after our last CAS, so a reclaimer that sees it sees us gone; then
    // a notify only when a reclaimer sleeps (its WAITERS add is seq_cst before its re-check).
    Atomics.store(w, i, w[i] + 1);
    if (Atomics.load(w, H_WAITERS) !== 0) Atomics.notify(w, i);
  }

  /**
   * Waits until every other thread that was inside a map section when called has left it. Returns
   * null, or the first slot that stayed inside past `timeoutMs` (it is marked STUCK; the caller
   * must not reuse the tables). Never waits for this thread's own slot.
   */
  synchronize(timeoutMs: number = MAPPER_GRACE_TIMEOUT_MS): MapperStall | null {
    const w = this.words;
    const me = threadId + 1;
    const pending: number[] = [];
    for (let s = 0; s < MAPPER_SLOTS; s++) {
      const owner = Atomics.load(w, OWNER0 + s);
      if (owner === 0 || owner === me) continue;
      const at = SEQ0 + s * LINE;
      // ORDERING: seq_cst load after the take of the retired list (see the protocol).
      const seq = Atomics.load(w, at);
      if ((seq & 1) === 0) continue;
      // Already found stuck at this very SEQ by an earlier grace period: do not wait again.
      if (Atomics.load(w, at + STUCK) === seq + 1) return this.stall(s, false);
      pending.push(s, seq);
    }
    if (pending.length === 0) return null;
    const deadline = Date.now() + timeoutMs;
    // ORDERING: WAITERS is raised (seq_cst) before the re-checks below, so a mapper's exit either
    // lands before a re-check (seen) or loads WAITERS after it and notifies.
    Atomics.add(w, H_WAITERS, 1);
    try {
      for (let k = 0; k < pending.length; k += 2) {
        const at = SEQ0 + pending[k] * LINE;
        for (;;) {
          if (Atomics.load(w, at) !== pending[k + 1]) break;
          const left = deadline - Date.now();
          if (left <= 0) {
            Atomics.store(w, at + STUCK, pending[k + 1] + 1);
            Atomics.add(w, H_STALLS, 1); // ORDERING: counter only.
            return this.stall(pending[k], true);
          }
          Atomics.wait(w, at, pending[k + 1], Math.min(WAIT_SLICE_MS, left));
        }
      }
    } finally {
      Atomics.sub(w, H_WAITERS, 1);
    }
    return null;
  }

  /** Grace periods that gave up on a thread stuck inside a map. */
  stalls(): number {
    return Atomics.load(this.words, H_STALLS);
  }

  /** Reclaimers currently waiting in synchronize() (for tests and diagnostics). */
  waiting(): number {
    return Atomics.load(this.words, H_WAITERS);
  }

  /**
   * Frees the slot of thread `tid`, which has ended (never call it for a live thread): a thread
   * that died inside a map is no longer waited for. Returns whether it held one.
   */
  reclaimThread(tid: number): boolean {
    const w = this.words;
    for (let s = 0; s < MAPPER_SLOTS; s++) {
      if (Atomics.load(w, OWNER0 + s) !== tid + 1) continue;
      const at = SEQ0 + s * LINE;
      const seq = Atomics.load(w, at);
      // ORDERING: the dead owner writes nothing more; an even SEQ is stored before the slot is
      // freed, so the next owner starts outside a section.
      if ((seq & 1) !== 0) Atomics.store(w, at, seq + 1);
      Atomics.store(w, at + STUCK, 0);
      Atomics.store(w, at + DEPTH, 0);
      Atomics.store(w, OWNER0 + s, 0);
      return true;
    }
    return false;
  }

  private stall(slot: number, fresh: boolean): MapperStall {
    return { slot, threadId: Atomics.load(this.words, OWNER0 + slot) - 1, fresh };
  }

  private claim(): number {
    const w = this.words;
    const me = threadId + 1;
    let s = 0;
    // Another TablePool instance of this thread may own one already: share it (one per thread).
    while (s < MAPPER_SLOTS && Atomics.load(w, OWNER0 + s) !== me) s++;
    if (s === MAPPER_SLOTS) {
      // ORDERING: CAS on the owner word: exactly one thread takes a free slot.
      for (s = 0; s < MAPPER_SLOTS && Atomics.compareExchange(w, OWNER0 + s, 0, me) !== 0; s++);
    }
    if (s === MAPPER_SLOTS) {
      throw new DmaError(
        'ENOSPC',
        `page tables: thread ${threadId} cannot map: all ${MAPPER_SLOTS} mapper slots of the table pool are ` +
          `taken by other threads (a slot is freed by reclaimThread when its thread ends)`,
      );
    }
    this.seqAt = SEQ0 + s * LINE;
    return this.seqAt;
  }
}
