/**
 * The stress runner's data path between driver threads and the main thread (which owns the
 * devices' submission queues): per driver thread a request ring (driver → main: "DMA this") and a
 * completion ring (main → driver), plus a stop word and progress counters. One SharedArrayBuffer;
 * no message on the data path.
 *
 * Layout (Int32 words; thread t's block starts at word HDR + t * BLOCK):
 *   [0] STOP             main: 1 = finish the current ops and start no more (duration elapsed)
 *   block [0] REQ_TAIL   driver: requests posted (free-running)
 *   block [1] REQ_HEAD   main: requests taken
 *   block [2] CPL_TAIL   main: completions posted
 *   block [3] CPL_HEAD   driver: completions taken
 *   block [4] CLOSED     driver: 1 = no more requests from this thread
 *   block [5] OPS        driver: operations done so far (progress; Atomics.store)
 *   block [8 + 8i ..]    request slot i:    [0] id [1] device [2] flags [3] len, Float64 [2] src [3] dst
 *   block [8 + 8W + 8i]  completion slot i: [0] id [1] status [2] access (1 = write) [3] bytes, Float64 [2] fault address
 * Invariants: a thread never has more than W requests posted and not completed, so neither ring
 * overruns; REQ_TAIL − REQ_HEAD ≤ W and CPL_TAIL − CPL_HEAD ≤ W. Each ring has one writer and
 * one reader. Waiters: the main thread waits on REQ_TAIL (waitAsync), the driver on CPL_TAIL
 * (Atomics.wait, bounded); each side notifies after publishing (a notify with no waiter is cheap
 * next to the DMA it announces, so there is no sleeper flag).
 */
export const CHANNEL_STATUS = { ok: 0, fault: 1, invalid: 2, aborted: 3, error: 4 } as const;
export type ChannelStatus = keyof typeof CHANNEL_STATUS;
const STATUS_NAMES = Object.keys(CHANNEL_STATUS) as ChannelStatus[];

/** Request flag: a fill (src holds the byte value) instead of a copy. */
export const REQ_FILL = 1;

const HDR = 8;
const REQ_TAIL = 0;
const REQ_HEAD = 1;
const CPL_TAIL = 2;
const CPL_HEAD = 3;
const CLOSED = 4;
const OPS = 5;
const SLOT = 8;

export interface StressChannelHandle {
  readonly sab: SharedArrayBuffer;
  readonly threads: number;
  readonly window: number;
}

export interface ChannelRequest {
  id: number;
  device: number;
  flags: number;
  src: number;
  dst: number;
  len: number;
}

export interface ChannelCompletion {
  id: number;
  status: ChannelStatus;
  bytes: number;
  faultAddr: number;
  faultWrite: boolean;
}

export class StressChannel {
  private readonly w: Int32Array;
  private readonly f: Float64Array;
  private readonly block: number;

  static create(threads: number, window: number): StressChannel {
    const block = SLOT + 2 * window * SLOT;
    return new StressChannel({ sab: new SharedArrayBuffer((HDR + threads * block) * 4), threads, window });
  }

  static attach(h: StressChannelHandle): StressChannel {
    return new StressChannel(h);
  }

  private constructor(readonly handle: StressChannelHandle) {
    this.w = new Int32Array(handle.sab);
    this.f = new Float64Array(handle.sab);
    this.block = SLOT + 2 * handle.window * SLOT;
  }

  private base(t: number): number {
    return HDR + t * this.block;
  }

  // ---- driver side ----

  /** Driver t: posts a request (the caller keeps at most `window` outstanding). */
  post(t: number, r: ChannelRequest): void {
    const b = this.base(t);
    const tail = this.w[b + REQ_TAIL];
    const s = b + SLOT + (tail % this.handle.window) * SLOT;
    this.w[s] = r.id;
    this.w[s + 1] = r.device;
    this.w[s + 2] = r.flags;
    this.w[s + 3] = r.len;
    this.f[s / 2 + 2] = r.src;
    this.f[s / 2 + 3] = r.dst;
    // ORDERING: the slot's words are written before REQ_TAIL publishes them.
    Atomics.store(this.w, b + REQ_TAIL, tail + 1);
    Atomics.notify(this.w, b + REQ_TAIL);
  }

  /** Driver t: the next completion, waiting at most `timeoutMs` for one (null if none came). */
  takeCompletion(t: number, timeoutMs: number): ChannelCompletion | null {
    const b = this.base(t);
    const head = this.w[b + CPL_HEAD];
    // ORDERING: CPL_TAIL load pairs with the main thread's store after it wrote the slot.
    let tail = Atomics.load(this.w, b + CPL_TAIL);
    if (tail === head) {
      Atomics.wait(this.w, b + CPL_TAIL, tail, timeoutMs);
      tail = Atomics.load(this.w, b + CPL_TAIL);
      if (tail === head) return null;
    }
    const s = b + SLOT + this.handle.window * SLOT + (head % this.handle.window) * SLOT;
    const c: ChannelCompletion = {
      id: this.w[s],
      status: STATUS_NAMES[this.w[s + 1]] ?? 'error',
      faultWrite: this.w[s + 2] === 1,
      bytes: this.w[s + 3],
      faultAddr: this.f[s / 2 + 2],
    };
    Atomics.store(this.w, b + CPL_HEAD, head + 1);
    return c;
  }

  /** Driver t: no more requests. */
  close(t: number): void {
    Atomics.store(this.w, this.base(t) + CLOSED, 1);
    Atomics.notify(this.w, this.base(t) + REQ_TAIL);
  }

  setOps(t: number, n: number): void {
    Atomics.store(this.w, this.base(t) + OPS, n);
  }

  stopped(): boolean {
    return Atomics.load(this.w, 0) === 1;
  }

  // ---- main-thread side ----

  stop(): void {
    Atomics.store(this.w, 0, 1);
  }

  ops(t: number): number {
    return Atomics.load(this.w, this.base(t) + OPS);
  }

  /** Main: every request thread t posted and the main thread has not taken yet (waits when none); null once the thread closed and all were taken. */
  async takeRequests(t: number): Promise<ChannelRequest[] | null> {
    const b = this.base(t);
    for (;;) {
      const head = this.w[b + REQ_HEAD];
      // ORDERING: REQ_TAIL load pairs with the driver's store after it wrote the slots; CLOSED is
      // read BEFORE REQ_TAIL: the driver stores CLOSED after its last REQ_TAIL, so a CLOSED seen
      // here means the tail loaded next holds every request (the other order could drop some).
      const closed = Atomics.load(this.w, b + CLOSED) === 1;
      const tail = Atomics.load(this.w, b + REQ_TAIL);
      if (tail !== head) {
        const out: ChannelRequest[] = [];
        for (let i = head; i !== tail; i++) {
          const s = b + SLOT + (i % this.handle.window) * SLOT;
          out.push({ id: this.w[s], device: this.w[s + 1], flags: this.w[s + 2], len: this.w[s + 3], src: this.f[s / 2 + 2], dst: this.f[s / 2 + 3] });
        }
        Atomics.store(this.w, b + REQ_HEAD, tail);
        return out;
      }
      if (closed) return null;
      await Atomics.waitAsync(this.w, b + REQ_TAIL, tail, 1000).value;
    }
  }

  /** Main: posts the completion of one of thread t's requests and wakes the thread. */
  complete(t: number, c: ChannelCompletion): void {
    const b = this.base(t);
    const tail = this.w[b + CPL_TAIL];
    const s = b + SLOT + this.handle.window * SLOT + (tail % this.handle.window) * SLOT;
    this.w[s] = c.id;
    this.w[s + 1] = CHANNEL_STATUS[c.status];
    this.w[s + 2] = c.faultWrite ? 1 : 0;
    this.w[s + 3] = c.bytes;
    this.f[s / 2 + 2] = c.faultAddr;
    // ORDERING: the slot is written before CPL_TAIL publishes it.
    Atomics.store(this.w, b + CPL_TAIL, tail + 1);
    Atomics.notify(this.w, b + CPL_TAIL);
  }
}
