/**
 * The stress runner's event history: each driver thread logs its recent operations (map, unmap,
 * sync, DMA post and completion, poison and checks) in a small ring it owns (a plain array in that
 * thread; it travels back with the thread's result only when a violation needs it). A violation
 * then gets the shortest history that shows it: the events of the same op, of the same transfer
 * id, or touching the same page (DMA address or PA), oldest first.
 */
import { hex } from '../errors.js';

export interface StressEvent {
  /** Thread-local event number (monotonic). */
  n: number;
  thread: number;
  /** The op (StressOp.seq) the event belongs to. */
  op: number;
  what: string;
  device?: number;
  /** Transfer id (DMA post / completion). */
  id?: number;
  /** A DMA address and/or PA range the event touches. */
  addr?: number;
  pa?: number;
  len?: number;
  note?: string;
}

/** What a violation is about: an op, a transfer id, an address range. */
export interface EventKey {
  op?: number;
  id?: number;
  addr?: number;
  pa?: number;
  len?: number;
}

export const HISTORY_CAPACITY = 4096;

export class EventHistory {
  private readonly ring: StressEvent[] = [];
  private n = 0;

  constructor(
    private readonly thread: number,
    private readonly capacity = HISTORY_CAPACITY,
  ) {}

  log(e: Omit<StressEvent, 'n' | 'thread'>): StressEvent {
    const ev = e as StressEvent;
    ev.n = this.n;
    ev.thread = this.thread;
    if (this.ring.length < this.capacity) this.ring.push(ev);
    else this.ring[this.n % this.capacity] = ev;
    this.n++;
    return ev;
  }

  /** Events logged so far (including those the ring has dropped). */
  get count(): number {
    return this.n;
  }

  /** The shortest history of `key` still in the ring, oldest first. */
  about(key: EventKey): StressEvent[] {
    const pageOf = (a: number) => Math.floor(a / 4096);
    const overlaps = (base: number | undefined, len: number | undefined, at: number | undefined): boolean => {
      if (base === undefined || at === undefined) return false;
      const lo = pageOf(at);
      const hi = pageOf(at + Math.max(1, key.len ?? 1) - 1);
      const elo = pageOf(base);
      const ehi = pageOf(base + Math.max(1, len ?? 1) - 1);
      return elo <= hi && ehi >= lo;
    };
    return this.ring
      .filter(
        (e) =>
          (key.op !== undefined && e.op === key.op) ||
          (key.id !== undefined && e.id === key.id) ||
          overlaps(e.addr, e.len, key.addr) ||
          overlaps(e.pa, e.len, key.pa),
      )
      .sort((a, b) => a.n - b.n);
  }
}

export function formatEvent(e: StressEvent): string {
  const parts = [`t${e.thread}#${e.n}`, `op ${e.op}`, e.what];
  if (e.device !== undefined) parts.push(`dev${e.device}`);
  if (e.id !== undefined) parts.push(`id ${e.id}`);
  if (e.addr !== undefined) parts.push(`addr ${hex(e.addr)}`);
  if (e.pa !== undefined) parts.push(`pa ${hex(e.pa)}`);
  if (e.len !== undefined) parts.push(`len ${e.len}`);
  if (e.note) parts.push(e.note);
  return parts.join(' ');
}
