/**
 * A device's control block: its doorbells, its run state and its statistics, in one
 * SharedArrayBuffer shared by the driver side and the device worker. The rings themselves live in
 * guest RAM (rings.ts); this block holds only the indices that publish them.
 *
 * Layout — Int32 words:
 *   [0] SQ_TAIL       driver: descriptors submitted (free-running)
 *   [1] SQ_HEAD       device: descriptors consumed
 *   [2] CQ_TAIL       device: completions written
 *   [3] CQ_HEAD       driver: completions consumed
 *   [4] DEV_SLEEPING  device: 1 while it sleeps on SQ_TAIL (the driver notifies only then)
 *   [5] DRV_WAITING   driver: 1 while it waits on CQ_TAIL (the device notifies only then)
 *   [6] STOP          driver: 1 = stop after the current descriptor
 *   [7] STATE         device: 0 created, 1 running, 2 stopped, 3 failed
 *   [8] CTRL          driver: a control-plane message is pending; leave the data loop briefly
 *   [9] POLL          driver: 1 = poll the doorbell instead of sleeping (benchmarks only)
 *   [10] RING_GEN     driver: moves each time the ring DMA addresses below are reprogrammed
 *   [11] CQ_WAKE_AT   driver: while DRV_WAITING, the CQ_TAIL value to be woken at (interrupt
 *                     coalescing: CQ_HEAD + 1 unless the driver asked for more completions)
 *   [12..13] SQ DMA   driver: submission ring DMA address (low, high 32 bits), plain stores
 *   [14..15] CQ DMA   driver: completion ring DMA address (low, high 32 bits), plain stores
 *   [16] INJECT       driver: a fault to inject (INJECT_* below; 0 = none), test-only
 *   [17] INJECT_AT    driver: the descriptor index (SQ_HEAD value) it fires at; stored before INJECT
 * Float64 counters from byte 128 on (STATS below), written only by the device with plain stores
 * after each descriptor (8-byte aligned stores do not tear on the hosts Node runs on); readers
 * may see a count one descriptor old.
 *
 * Ring reprogramming (as a driver writes a device's queue base registers, e.g. when VFIO hands
 * the device to another IOMMU domain): only while no descriptor is outstanding. The driver writes
 * the addresses with plain stores, then moves RING_GEN with Atomics.add, then (later) publishes
 * new work with the SQ_TAIL store. The device loads RING_GEN once per batch, after it saw SQ_TAIL
 * move, and reloads the addresses when it changed.
 * ORDERING: RING_GEN's seq-cst add orders the address stores before it; the device's load of
 * SQ_TAIL (which comes later) and then of RING_GEN sees the new generation, and so the addresses.
 *
 * ORDERING (doorbell, Dekker style): the driver stores SQ_TAIL then loads DEV_SLEEPING; the
 * device stores DEV_SLEEPING = 1 then loads SQ_TAIL before sleeping. Seq-cst Atomics mean at
 * least one of them sees the other, so a wake-up is never lost and a busy device is never
 * notified. The same pattern guards CQ_TAIL / DRV_WAITING: the driver stores CQ_WAKE_AT and
 * DRV_WAITING, then re-reads CQ_TAIL; the device stores CQ_TAIL, then reads DRV_WAITING and
 * CQ_WAKE_AT and notifies once CQ_TAIL has reached it (and, going idle, whenever the driver waits).
 */
export const SQ_TAIL = 0;
export const SQ_HEAD = 1;
export const CQ_TAIL = 2;
export const CQ_HEAD = 3;
export const DEV_SLEEPING = 4;
export const DRV_WAITING = 5;
export const STOP = 6;
export const STATE = 7;
export const CTRL = 8;
export const POLL = 9;
export const RING_GEN = 10;
export const CQ_WAKE_AT = 11;
export const INJECT = 16;
export const INJECT_AT = 17;
const RING_SQ = 12;
const RING_CQ = 14;

export const STATE_CREATED = 0;
export const STATE_RUNNING = 1;
export const STATE_STOPPED = 2;
export const STATE_FAILED = 3;

/** Faults the device can be told to suffer inside a transfer (Device.injectFault). */
export const INJECT_THROW = 1;
export const INJECT_HANG = 2;
export const INJECT_SPIN = 3;
export const INJECT_EXIT = 4;

const STATS_BYTE_OFFSET = 128;

/** The device's counters, in their order in the block. */
export const STATS = [
  'descriptors',
  'transfers',
  'bytesRead',
  'bytesWritten',
  'tlps',
  'iotlbHits',
  'iotlbMisses',
  'faults',
  'faultedBytes',
  'staleAccesses',
  'iotlbFlushes',
  /** Transfers routed peer-to-peer to another function's BAR (never seen by the IOMMU). */
  'p2pTransfers',
  'p2pBytes',
  /** nic: frames that arrived with no RX buffer posted, dropped (Linux: rx_missed_errors). */
  'rxMissed',
] as const;
export type DeviceStatName = (typeof STATS)[number];
export type DeviceCounters = Record<DeviceStatName, number>;
export const STAT: Readonly<Record<DeviceStatName, number>> = Object.fromEntries(STATS.map((n, i) => [n, i])) as Record<
  DeviceStatName,
  number
>;

export interface DeviceControlHandle {
  readonly sab: SharedArrayBuffer;
}

export class DeviceControl {
  readonly handle: DeviceControlHandle;
  readonly ctl: Int32Array;
  readonly stats: Float64Array;

  static create(): DeviceControl {
    return new DeviceControl({ sab: new SharedArrayBuffer(STATS_BYTE_OFFSET + STATS.length * 8) });
  }

  static attach(handle: DeviceControlHandle): DeviceControl {
    return new DeviceControl(handle);
  }

  private constructor(handle: DeviceControlHandle) {
    this.handle = handle;
    this.ctl = new Int32Array(handle.sab, 0, STATS_BYTE_OFFSET / 4);
    this.stats = new Float64Array(handle.sab, STATS_BYTE_OFFSET, STATS.length);
  }

  counters(): DeviceCounters {
    const out = {} as DeviceCounters;
    STATS.forEach((n, i) => (out[n] = this.stats[i]));
    return out;
  }

  state(): number {
    return Atomics.load(this.ctl, STATE);
  }

  /** Whether the device sleeps on its doorbell right now. */
  sleeping(): boolean {
    return Atomics.load(this.ctl, DEV_SLEEPING) !== 0;
  }

  setPolling(on: boolean): void {
    Atomics.store(this.ctl, POLL, on ? 1 : 0);
    this.ring();
  }

  /** Driver side: new ring DMA addresses (see the header: only with no descriptor outstanding). */
  programRings(sqDma: number, cqDma: number): void {
    const c = this.ctl;
    for (const [at, v] of [[RING_SQ, sqDma], [RING_CQ, cqDma]] as const) {
      const hi = Math.floor(v / 2 ** 32);
      c[at] = v - hi * 2 ** 32;
      c[at + 1] = hi;
    }
    // ORDERING: publishes the plain stores above to the device's RING_GEN load.
    Atomics.add(c, RING_GEN, 1);
  }

  /** Device side: the ring generation; when it moved, read the addresses with ringDma(). */
  ringGen(): number {
    // ORDERING: pairs with programRings()'s Atomics.add; the address loads come after it.
    return Atomics.load(this.ctl, RING_GEN);
  }

  ringDma(): { sq: number; cq: number } {
    const c = this.ctl;
    return { sq: (c[RING_SQ + 1] >>> 0) * 2 ** 32 + (c[RING_SQ] >>> 0), cq: (c[RING_CQ + 1] >>> 0) * 2 ** 32 + (c[RING_CQ] >>> 0) };
  }

  /** Driver side: the device suffers fault `kind` at descriptor index `at` (test-only). */
  inject(kind: number, at: number): void {
    Atomics.store(this.ctl, INJECT_AT, at | 0);
    // ORDERING: INJECT is stored after INJECT_AT; the device loads INJECT first, then INJECT_AT.
    Atomics.store(this.ctl, INJECT, kind);
  }

  /** Device side: the fault to suffer now, at descriptor index `head` (0 = none). */
  injected(head: number): number {
    const kind = Atomics.load(this.ctl, INJECT);
    if (kind === 0) return 0;
    // ORDERING: pairs with inject(): INJECT_AT was stored before the INJECT just loaded.
    return ((head - Atomics.load(this.ctl, INJECT_AT)) | 0) >= 0 ? kind : 0;
  }

  /** Rings the doorbell: wakes the device if (and only if) it sleeps. */
  ring(): void {
    // ORDERING: called after the store that publishes work (SQ_TAIL, STOP or CTRL).
    if (Atomics.load(this.ctl, DEV_SLEEPING) !== 0) Atomics.notify(this.ctl, SQ_TAIL);
  }
}
