/**
 * TablePool — one SharedArrayBuffer of page-table pages (tables of 512 Int32 entries, 2 KiB),
 * shared by every page table (domain) of a machine and usable from any thread.
 *
 * Layout (N = capacity + 1 table slots; table 0 is reserved "none" and stays all zero):
 *
 *   bytes [0, N*2048)        entries: table t is Int32 words [t*512, t*512 + 512)
 *   bytes H = N*2048 ...     header (H is 8-byte aligned):
 *     BigUint64 @H           FREE_HEAD: bits 0..31 = index of the top free table (0 = empty),
 *                            bits 32..63 = ABA tag, incremented by every push and pop
 *     Int32 word H/4 + 2     MAGIC
 *     Int32 word H/4 + 3     CAPACITY (usable tables, indices 1..capacity)
 *     Int32 word H/4 + 4     IN_USE: tables not on the free stack (allocated or retired)
 *     Int32 word H/4 + 5     RETIRED_HEAD: top of the retired stack (index only, no tag)
 *     Int32 word H/4 + 6     RETIRED_COUNT
 *   then Int32 next[N]       link of a table while it is on the free or the retired stack
 *   then Int32 state[N]      FREE 0 / IN_USE 1 / RETIRED 2 / RESERVED 3 (table 0)
 *   then MAPPER_EPOCHS_BYTES the mapper epochs (mapper-epochs.ts: its own layout, writers and
 *                            invariants), the CPU side of the grace period before a retired
 *                            table is freed
 *
 * Who writes what: alloc pops FREE_HEAD (CAS) and moves state FREE→IN_USE; free moves
 * IN_USE→FREE then pushes (CAS); retire moves IN_USE→RETIRED then pushes RETIRED_HEAD (CAS);
 * reclaimRetired takes the whole retired stack with one exchange and pushes each table on the free
 * stack (or takeRetired takes it, and freeRetired pushes them after the caller's device grace
 * period). Both free retired tables only after the CPU grace period (mappers.synchronize: no
 * thread is still inside a map that began before the tables were unlinked); when it gives up on a
 * thread stuck inside a map, the tables go back on the retired stack. Any thread may call any of them. A table's entries are written only by whoever holds it
 * (alloc zeroes them with plain stores before handing it out).
 *
 * Invariants: a table index is on at most one stack, and its state word says which (transitions
 * are CASes, so a double free/retire is detected, never corrupts a stack); IN_USE = capacity −
 * (tables on the free stack), up to the one counter update a thread is in the middle of.
 *
 * Why a 64-bit head: the free stack is a Treiber stack, whose pop is exposed to ABA (a popper
 * reads head=A and next[A]=B, stalls; others pop A and B, push A back; the stale CAS would
 * install B). The tag makes that CAS fail. Packing a tag next to the index in one Int32 would
 * leave only 32 − log2(capacity) tag bits (10 for the largest pools, a wrap in ~1000 operations
 * while a thread is descheduled); the BigUint64 head keeps a full 32-bit tag at ~40 ns per
 * operation, which is off the per-page path (one table serves 512 pages). The retired stack
 * needs no tag: it is only pushed and then emptied as a whole by one exchange, and Treiber push
 * alone is ABA-safe.
 */
import { DmaError } from '../errors.js';
import { MAPPER_EPOCHS_BYTES, MAPPER_GRACE_TIMEOUT_MS, MapperEpochs } from './mapper-epochs.js';

export const TABLE_ENTRIES = 512;
export const TABLE_BYTES = TABLE_ENTRIES * 4;
/** Largest pool: table t's entries start at t << 9, which must stay below 2^31 (Int32 index math
 *  in the page-table walk), and table indices must fit the 28-bit PTE address field. */
export const MAX_TABLES = (1 << 22) - 1;

const MAGIC = 0x7470_6f6c; // 'tpol'
const H_MAGIC = 2;
const H_CAPACITY = 3;
const H_IN_USE = 4;
const H_RETIRED_HEAD = 5;
const H_RETIRED_COUNT = 6;
const HEADER_BYTES = 32;

const FREE = 0;
const IN_USE = 1;
const RETIRED = 2;
const RESERVED = 3;

const LOW32 = 0xffff_ffffn;

export interface TablePoolHandle {
  readonly sab: SharedArrayBuffer;
}

function layout(slots: number) {
  const headerOffset = slots * TABLE_BYTES;
  const nextOffset = headerOffset + HEADER_BYTES;
  const stateOffset = nextOffset + slots * 4;
  const mappersOffset = stateOffset + slots * 4;
  const totalBytes = mappersOffset + MAPPER_EPOCHS_BYTES;
  return { headerOffset, nextOffset, stateOffset, mappersOffset, totalBytes };
}

export class TablePool {
  /** Every table's entries: table t is [t * 512, t * 512 + 512). Table 0 is all zero. */
  readonly entries: Int32Array;
  /** Usable tables (indices 1..capacity). */
  readonly capacity: number;
  /** The mapper epochs: a PageTable brackets every map/unmap with enter()/exit(). */
  readonly mappers: MapperEpochs;
  private readonly sab: SharedArrayBuffer;
  private readonly head: BigUint64Array; // [0] = FREE_HEAD
  private readonly header: Int32Array; // words relative to the header start
  private readonly next: Int32Array;
  private readonly state: Int32Array;

  private constructor(sab: SharedArrayBuffer, capacity: number) {
    const slots = capacity + 1;
    const l = layout(slots);
    this.sab = sab;
    this.capacity = capacity;
    this.entries = new Int32Array(sab, 0, slots * TABLE_ENTRIES);
    this.head = new BigUint64Array(sab, l.headerOffset, 1);
    this.header = new Int32Array(sab, l.headerOffset, HEADER_BYTES / 4);
    this.next = new Int32Array(sab, l.nextOffset, slots);
    this.state = new Int32Array(sab, l.stateOffset, slots);
    this.mappers = new MapperEpochs(sab, l.mappersOffset);
  }

  /** A pool of `tables` usable tables (plus the reserved table 0), all free. */
  static create(tables: number): TablePool {
    if (!Number.isInteger(tables) || tables < 1 || tables > MAX_TABLES) {
      throw new DmaError(
        'EINVAL',
        `table pool: capacity ${tables} must be an integer from 1 to ${MAX_TABLES} tables`,
      );
    }
    const sab = new SharedArrayBuffer(layout(tables + 1).totalBytes);
    const pool = new TablePool(sab, tables);
    // Single-threaded initialisation: nobody else can see the buffer yet.
    for (let t = 1; t < tables; t++) pool.next[t] = t + 1;
    pool.next[tables] = 0;
    pool.state[0] = RESERVED;
    pool.head[0] = 1n; // tag 0, top = table 1: alloc hands out 1, 2, 3, ...
    pool.header[H_CAPACITY] = tables;
    pool.header[H_MAGIC] = MAGIC;
    return pool;
  }

  /** Attaches to a pool created in any thread. */
  static attach(handle: TablePoolHandle): TablePool {
    const sab = handle?.sab;
    if (!(sab instanceof SharedArrayBuffer)) {
      throw new DmaError('EINVAL', 'table pool: attach needs a handle { sab: SharedArrayBuffer }');
    }
    // Capacity is found from the size: totalBytes = slots * (2048 + 8) + 32 + MAPPER_EPOCHS_BYTES.
    const slots = (sab.byteLength - HEADER_BYTES - MAPPER_EPOCHS_BYTES) / (TABLE_BYTES + 8);
    if (!Number.isInteger(slots) || slots < 2) {
      throw new DmaError('EINVAL', `table pool: a ${sab.byteLength}-byte buffer is not a table pool`);
    }
    const pool = new TablePool(sab, slots - 1);
    if (Atomics.load(pool.header, H_MAGIC) !== MAGIC || pool.header[H_CAPACITY] !== slots - 1) {
      throw new DmaError('EINVAL', 'table pool: buffer has no table-pool header (bad magic)');
    }
    return pool;
  }

  /** Structured-cloneable: post it to a worker and `TablePool.attach` it there. */
  get handle(): TablePoolHandle {
    return { sab: this.sab };
  }

  /** A zeroed table, or DmaError ENOMEM when every table is in use (the pool stays usable). */
  alloc(): number {
    for (;;) {
      // ORDERING: seq_cst load of head; the CAS below validates it (tag defeats ABA).
      const h = Atomics.load(this.head, 0);
      const t = Number(h & LOW32);
      if (t === 0) {
        const retired = Atomics.load(this.header, H_RETIRED_COUNT);
        throw new DmaError(
          'ENOMEM',
          `table pool: all ${this.capacity} page-table pages (${this.capacity * 2} KiB) are in use` +
            (retired > 0 ? ` (${retired} retired, awaiting reclaimRetired)` : ''),
        );
      }
      // ORDERING: next[t] may be stale if t was popped meanwhile; then the tag has moved and the
      // CAS fails, so a stale link is never installed.
      const n = Atomics.load(this.next, t);
      const nh = (((h >> 32n) + 1n) << 32n) | BigInt(n);
      if (Atomics.compareExchange(this.head, 0, h, BigInt.asUintN(64, nh)) !== h) continue;
      // ORDERING: CAS on the state word: detects a corrupted stack (table handed out twice).
      if (Atomics.compareExchange(this.state, t, FREE, IN_USE) !== FREE) {
        throw new DmaError('EINVAL', `table pool: table ${t} was on the free stack but not free`);
      }
      // ORDERING: counter only; readers tolerate it lagging the stack by one operation.
      Atomics.add(this.header, H_IN_USE, 1);
      // Plain stores: the table is private to this thread until it is published by a seq_cst
      // CAS (the page table's install), which orders these stores before it.
      const base = t * TABLE_ENTRIES;
      this.entries.fill(0, base, base + TABLE_ENTRIES);
      return t;
    }
  }

  /** Returns an allocated table to the free stack at once (no walker may still read it). */
  free(t: number): void {
    this.checkIndex(t, 'free');
    // ORDERING: the state CAS makes a double free an error instead of a stack corruption.
    const was = Atomics.compareExchange(this.state, t, IN_USE, FREE);
    if (was !== IN_USE) throw this.stateError(t, 'free', was);
    Atomics.sub(this.header, H_IN_USE, 1); // ORDERING: counter only.
    this.pushFree(t);
  }

  /**
   * Defers the free of a table that lockless walkers may still be reading (it was unlinked from a
   * page table): it stays in use until `reclaimRetired`.
   */
  retire(t: number): void {
    this.checkIndex(t, 'retire');
    // ORDERING: state CAS, as in free.
    const was = Atomics.compareExchange(this.state, t, IN_USE, RETIRED);
    if (was !== IN_USE) throw this.stateError(t, 'retire', was);
    for (;;) {
      // ORDERING: push-only Treiber stack (emptied only by exchange): ABA cannot make this CAS
      // install a wrong link, because next[t] is exactly the head the CAS compares against.
      const h = Atomics.load(this.header, H_RETIRED_HEAD);
      Atomics.store(this.next, t, h);
      if (Atomics.compareExchange(this.header, H_RETIRED_HEAD, h, t) === h) break;
    }
    Atomics.add(this.header, H_RETIRED_COUNT, 1); // ORDERING: counter only.
  }

  /** Tables retired and not yet reclaimed. */
  retiredCount(): number {
    return Atomics.load(this.header, H_RETIRED_COUNT);
  }

  /**
   * Moves every retired table to the free stack once no other thread is still inside a map that
   * began before it was retired. The caller guarantees that no device walker can still hold any
   * of them (e.g. after an invalidation that every device has observed). Returns how many; 0 when
   * a thread stayed inside a map past `graceTimeoutMs` (the tables stay retired).
   */
  reclaimRetired(graceTimeoutMs = MAPPER_GRACE_TIMEOUT_MS): number {
    return this.freeRetired(this.takeRetired(), graceTimeoutMs);
  }

  /**
   * Takes every table retired so far off the retired stack (they stay RETIRED and counted in use):
   * the first half of a reclaim whose caller waits for a grace period before freeRetired(them).
   */
  takeRetired(): number[] {
    // ORDERING: one exchange takes the whole retired list; pushes racing with it land on the new
    // (empty) list and wait for the next reclaim. The taken links are ours alone from here on.
    let t = Atomics.exchange(this.header, H_RETIRED_HEAD, 0);
    const out: number[] = [];
    while (t !== 0) {
      out.push(t);
      t = Atomics.load(this.next, t);
    }
    return out;
  }

  /**
   * Frees tables takeRetired() returned, once no device walker can hold them (the caller's grace
   * period) and no other thread is inside a map that began before they were taken (waited for
   * here, at most `graceTimeoutMs`). Returns how many were freed: all, or none when a thread stayed
   * inside a map — then they go back on the retired stack and the stall is reported.
   * The calling thread must not be inside a map section itself (it is never waited for).
   */
  freeRetired(tables: readonly number[], graceTimeoutMs = MAPPER_GRACE_TIMEOUT_MS): number {
    if (tables.length === 0) return 0;
    const stall = this.mappers.synchronize(graceTimeoutMs);
    if (stall) {
      this.putBackRetired(tables);
      if (stall.fresh) process.emitWarning(
        `table pool: thread ${stall.threadId} (mapper slot ${stall.slot}) stayed inside a page-table map ` +
          `for over ${graceTimeoutMs} ms; ${tables.length} retired page-table page(s) stay retired ` +
          `rather than be reused under it`,
        { code: 'DMAEMU_MAPPER_STALL' },
      );
      return 0;
    }
    for (const t of tables) {
      // ORDERING: state CAS, as in free.
      const was = Atomics.compareExchange(this.state, t, RETIRED, FREE);
      if (was !== RETIRED) throw this.stateError(t, 'reclaim', was);
      Atomics.sub(this.header, H_RETIRED_COUNT, 1); // ORDERING: counters only.
      Atomics.sub(this.header, H_IN_USE, 1);
      this.pushFree(t);
    }
    return tables.length;
  }

  /** Grace periods that kept tables retired because a thread stayed inside a map. */
  mapperStalls(): number {
    return this.mappers.stalls();
  }

  /**
   * Frees the mapper slot of thread `tid`, which has ended (a thread that died inside a map is
   * no longer waited for). Returns whether it held one.
   */
  reclaimThread(tid: number): boolean {
    return this.mappers.reclaimThread(tid);
  }

  /** Pushes tables taken by takeRetired back on the retired stack (still RETIRED, still counted). */
  private putBackRetired(tables: readonly number[]): void {
    for (const t of tables) {
      for (;;) {
        // ORDERING: as retire's push (push-only between exchanges, so ABA-safe).
        const h = Atomics.load(this.header, H_RETIRED_HEAD);
        Atomics.store(this.next, t, h);
        if (Atomics.compareExchange(this.header, H_RETIRED_HEAD, h, t) === h) break;
      }
    }
  }

  /** Tables not on the free stack: allocated or retired. */
  inUse(): number {
    return Atomics.load(this.header, H_IN_USE);
  }

  private pushFree(t: number): void {
    for (;;) {
      // ORDERING: seq_cst load/CAS; the link store happens before the CAS that publishes t.
      const h = Atomics.load(this.head, 0);
      Atomics.store(this.next, t, Number(h & LOW32));
      const nh = (((h >> 32n) + 1n) << 32n) | BigInt(t);
      if (Atomics.compareExchange(this.head, 0, h, BigInt.asUintN(64, nh)) === h) return;
    }
  }

  private checkIndex(t: number, op: string): void {
    if (!Number.isInteger(t) || t < 1 || t > this.capacity) {
      throw new DmaError(
        'EINVAL',
        `table pool: ${op} of table ${t}: not a table of this pool (1..${this.capacity})`,
      );
    }
  }

  private stateError(t: number, op: string, was: number): DmaError {
    const name = ['free', 'in use', 'retired', 'reserved'][was] ?? `state ${was}`;
    return new DmaError('EINVAL', `table pool: ${op} of table ${t}, which is ${name} (double ${op}?)`);
  }
}
