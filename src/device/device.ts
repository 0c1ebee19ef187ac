/**
 * A device as its driver sees it: a worker thread running a device model, a submission ring and
 * a completion ring in guest RAM, a control block of doorbells in shared memory.
 *
 * submit() writes a descriptor into the submission ring with the CPU, publishes SQ_TAIL and
 * rings the doorbell (a notify only if the device sleeps). Completions are reaped by a pump that
 * sleeps in Atomics.waitAsync on CQ_TAIL with DRV_WAITING raised, so a busy driver is never
 * notified. Nothing on this path is a message; comlink only starts the worker.
 */
import { PCI_MAX_SEGMENT_SIZE, PCI_SEGMENT_BOUNDARY_MASK } from '../dma/dma-device.js';
import { DmaError, hex } from '../errors.js';
import type { DmaAddr } from '../addresses.js';
import { spawnControlled, type ControlledWorker } from '../control-plane.js';
import { workerUrl } from '../worker-url.js';
import type { GuestRam } from '../memory/guest-ram.js';
import type { Domain } from '../iommu/domain.js';
import type { IotlbHandle } from '../iommu/iotlb.js';
import { FAULT_REASONS, type FaultAccess, type FaultReason } from '../iommu/fault-ring.js';
import type { IommuHandle } from '../iommu/iommu-handle.js';
import { DeviceEpochs } from '../iommu/device-epoch.js';
import {
  DeviceControl,
  type DeviceCounters,
  SQ_TAIL,
  CQ_TAIL,
  CQ_HEAD,
  DRV_WAITING,
  CQ_WAKE_AT,
  STOP,
  STATE,
  CTRL,
  STATE_RUNNING,
  STATE_FAILED,
  STATE_STOPPED,
  INJECT_THROW,
  INJECT_HANG,
  INJECT_SPIN,
  INJECT_EXIT,
} from './device-control.js';
import {
  type RingPlacement,
  SQE_SIZE,
  CQE_SIZE,
  FLAG_FILL,
  STATUS_OK,
  STATUS_FAULT,
  STATUS_INVALID,
  encodeDescriptor,
  decodeCompletion,
  ringView,
} from './rings.js';
import { MAX_TRANSFER, type P2pRouteConfig } from './dma-engine.js';
import type { ModelName, ModelOptions } from './device-model.js';
import type { TraceRingsHandle } from '../trace/trace-ring.js';
// Type-only: the worker's API shape (no runtime import of worker code).
import type { DeviceWorkerApi, DeviceWorkerConfig } from '../../workers/device-worker.js';

export type CompletionStatus = 'ok' | 'fault' | 'invalid' | 'aborted';

export interface Completion {
  id: number;
  status: CompletionStatus;
  /** Bytes the device moved (0 unless ok). */
  bytes: number;
  /** Set when status is 'fault': the first access the IOMMU refused. */
  fault?: { addr: number; access: FaultAccess; reason: FaultReason };
  /** The model's result word (NVMe status code, NIC frame checksum; 0 for the copy engine). */
  result: number;
}

/**
 * A fault a device can be made to suffer inside a transfer (workers/device-worker.ts): its model
 * throws; it hangs (sleeps holding its in-transfer epoch); it spins (a busy loop, same); its
 * worker thread terminates (exit code 70).
 */
export type InjectedFault = 'throw' | 'hang' | 'spin' | 'terminate';
const INJECT_CODES: Record<InjectedFault, number> = { throw: INJECT_THROW, hang: INJECT_HANG, spin: INJECT_SPIN, terminate: INJECT_EXIT };

export interface CopyRequest {
  src: DmaAddr;
  dst: DmaAddr;
  len: number;
}

export interface FillRequest {
  dst: DmaAddr;
  len: number;
  value: number;
}

interface Pending {
  resolve(c: Completion): void;
  reject(e: unknown): void;
}

/** A descriptor submitted while the queue was full: posted by reap() in submission order. */
interface Waiting extends Pending {
  src: number;
  dst: number;
  len: number;
  flags: number;
  arg: number;
}

/** Everything a device needs from its machine to start. */
export interface DeviceStartParams {
  bdf: string;
  requesterId: number;
  slot: number;
  model: ModelName;
  dmaMaskBits: number;
  /** The rest of the device's DMA parameters (Linux's dma_parms); PCI defaults when absent. */
  dmaParams?: { maxSegmentSize?: number; segmentBoundaryMask?: number; minAlignMask?: number };
  maxPayload: number;
  ram: GuestRam;
  iommu: IommuHandle;
  /** The domain the device's requester ID is attached to now (null when nothing translates). */
  resolveDomain: () => Domain | null;
  iotlb: IotlbHandle;
  sq: RingPlacement;
  cq: RingPlacement;
  /** Peer BAR windows the device reaches directly (pci/p2p-route.ts); none without a topology. */
  p2p?: readonly P2pRouteConfig[];
  /** The device's own memory BARs' backing, by BAR number (what peers' P2P DMA lands in). */
  bars?: ReadonlyMap<number, Uint8Array>;
  /** The machine's trace rings (absent or null: tracing off). */
  trace?: TraceRingsHandle | null;
  /** Per-model options (the nvme model's namespace media, the nic model's wire). */
  modelOptions?: ModelOptions;
}

const STOP_GRACE_MS = 2000;
const PUMP_SLICE_MS = 500;

export class Device {
  readonly bdf: string;
  readonly requesterId: number;
  readonly slot: number;
  readonly model: ModelName;
  readonly dmaMaskBits: number;
  /** dma_get_max_seg_size, dma_get_seg_boundary, dma_get_min_align_mask (for the DMA API). */
  readonly maxSegmentSize: number;
  readonly segmentBoundaryMask: number;
  readonly minAlignMask: number;
  readonly queueDepth: number;
  /** What the model was started with (e.g. the nvme namespace's media, to check what it holds). */
  readonly modelOptions: ModelOptions;
  readonly control: DeviceControl;
  /** Whether an IOMMU sits between this device and RAM. */
  readonly translated: boolean;
  private readonly resolveDomain: () => Domain | null;
  private readonly epochs: DeviceEpochs | null;
  readonly sq: RingPlacement;
  readonly cq: RingPlacement;
  readonly iotlb: IotlbHandle;
  /** The DMA addresses the device uses for its rings now (programRings() changes them). */
  private ringAddrs: { sq: number; cq: number };
  private readonly bars: ReadonlyMap<number, Uint8Array>;
  private readonly ctl: Int32Array;
  private readonly sqView: DataView;
  private readonly cqView: DataView;
  private readonly pending = new Map<number, Pending>();
  /** Descriptors waiting for a free slot, oldest first (FIFO: nothing submitted later overtakes them). */
  private readonly waiting: Waiting[] = [];
  private sqTail = 0;
  private cqHead = 0;
  private nextId = 1;
  private pumping = false;
  /** Completions the pump waits for before it is woken (setInterruptCoalescing). */
  private coalesceFrames = 1;
  private failure: DmaError | null = null;
  private closed = false;
  private closing: Promise<void> | null = null;
  private worker: ControlledWorker<DeviceWorkerApi> | null = null;
  /** The worker's exit code once it exited; ending it after a hang sets `killing`. */
  private exitCode: number | null = null;
  private killing: Promise<void> | null = null;

  private constructor(p: DeviceStartParams) {
    this.bdf = p.bdf;
    this.requesterId = p.requesterId;
    this.slot = p.slot;
    this.model = p.model;
    this.dmaMaskBits = p.dmaMaskBits;
    this.maxSegmentSize = p.dmaParams?.maxSegmentSize ?? PCI_MAX_SEGMENT_SIZE;
    this.segmentBoundaryMask = p.dmaParams?.segmentBoundaryMask ?? PCI_SEGMENT_BOUNDARY_MASK;
    this.minAlignMask = p.dmaParams?.minAlignMask ?? 0;
    this.resolveDomain = p.resolveDomain;
    this.translated = p.iommu.enabled;
    this.epochs = p.iommu.enabled ? DeviceEpochs.attach(p.iommu.epochs) : null;
    this.sq = p.sq;
    this.cq = p.cq;
    this.iotlb = p.iotlb;
    this.queueDepth = p.sq.depth;
    this.modelOptions = p.modelOptions ?? {};
    this.ringAddrs = { sq: p.sq.dma, cq: p.cq.dma };
    this.bars = p.bars ?? new Map();
    this.control = DeviceControl.create();
    this.ctl = this.control.ctl;
    this.sqView = ringView(p.ram, p.sq, SQE_SIZE);
    this.cqView = ringView(p.ram, p.cq, CQE_SIZE);
  }

  /** Spawns the device's worker and starts its model. */
  static async start(p: DeviceStartParams): Promise<Device> {
    const dev = new Device(p);
    const w = spawnControlled<DeviceWorkerApi>(workerUrl('device-worker'), `dmaemu ${p.bdf} ${p.model}`);
    dev.worker = w;
    w.worker.on('error', (e) => dev.fail(new DmaError('EIO', `device ${dev.bdf} (${dev.model}): its worker failed: ${e.message}`, { cause: e })));
    w.worker.on('exit', (code) => {
      dev.exitCode = code;
      // The thread is gone and can touch nothing more: a strict unmap must never wait for it.
      dev.epochs?.markDead(dev.slot);
      if (!dev.closed) dev.fail(new DmaError('EIO', `device ${dev.bdf} (${dev.model}): its worker exited (code ${code})`));
    });
    const cfg: DeviceWorkerConfig = {
      name: p.bdf,
      model: p.model,
      dmaMaskBits: p.dmaMaskBits,
      engine: { ram: p.ram.handle, iommu: p.iommu, requesterId: p.requesterId, slot: p.slot, iotlb: p.iotlb, maxPayload: p.maxPayload, ...(p.p2p?.length ? { p2p: p.p2p } : {}) },
      control: dev.control.handle,
      sq: { dma: p.sq.dma, depth: p.sq.depth },
      cq: { dma: p.cq.dma, depth: p.cq.depth },
      trace: p.trace ?? null,
      options: dev.modelOptions,
    };
    try {
      await w.remote.start(cfg);
    } catch (e) {
      await dev.close();
      throw new DmaError('EIO', `device ${p.bdf}: could not start model ${p.model}: ${(e as Error).message}`, { cause: e });
    }
    return dev;
  }

  /** The IOMMU domain the device is attached to now (null when nothing translates for it). */
  get domain(): Domain | null {
    return this.resolveDomain();
  }

  /** Device-issued DMA: copies len bytes from DMA address src to DMA address dst. */
  async copy(req: CopyRequest): Promise<Completion> {
    this.checkModel('copy');
    this.checkRange('copy', 'src', req?.src, req?.len);
    this.checkRange('copy', 'dst', req.dst, req.len);
    return this.expectOk('copy', await this.submit(req.src, req.dst, req.len, 0));
  }

  /** Device-issued DMA write of one byte value over [dst, dst + len). */
  async fill(req: FillRequest): Promise<Completion> {
    this.checkModel('fill');
    this.checkRange('fill', 'dst', req?.dst, req?.len);
    if (!Number.isInteger(req.value) || req.value < 0 || req.value > 255) {
      throw new DmaError('EINVAL', `device ${this.bdf}: fill value ${String(req.value)} must be a byte (0..255)`);
    }
    return this.expectOk('fill', await this.submit(req.value, req.dst, req.len, FLAG_FILL));
  }

  /**
   * Queues one raw descriptor and resolves with its completion, whatever its status (copy()
   * and fill() turn a failed completion into a DmaError). `arg` is the model's extra command
   * word (rings.ts; the nvme and nic drivers use it).
   */
  submit(src: number, dst: number, len: number, flags: number, arg = 0): Promise<Completion> {
    try {
      this.checkDescriptor(src, dst, len, flags, arg);
    } catch (e) {
      return Promise.reject(e);
    }
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new DmaError('ESHUTDOWN', `device ${this.bdf}: closed`));
    // A full queue, or older descriptors still waiting for room: queue behind them. reap() posts
    // them as slots free up, before any completion handler can submit (ring order = call order).
    if (this.pending.size >= this.queueDepth || this.waiting.length > 0) {
      return new Promise<Completion>((resolve, reject) => this.waiting.push({ src, dst, len, flags, arg, resolve, reject }));
    }
    // Not an async function: its promise would resolve with `done` two microtask hops later.
    const done = new Promise<Completion>((resolve, reject) => this.post(src, dst, len, flags, arg, { resolve, reject }));
    if (!this.pumping) void this.pump();
    return done;
  }

  /**
   * Polled submission (as blk-mq's polled I/O): queues one descriptor and busy-polls the
   * completion ring on this thread until it completes. Opt-in, for latency measurements; the
   * default submit() sleeps instead. Needs an idle queue ('EBUSY' otherwise).
   */
  submitPolled(src: number, dst: number, len: number, flags = 0, timeoutMs = 5000): Completion {
    this.checkDescriptor(src, dst, len, flags, 0);
    if (this.failure) throw this.failure;
    if (this.closed) throw new DmaError('ESHUTDOWN', `device ${this.bdf}: closed`);
    if (this.pending.size > 0) throw new DmaError('EBUSY', `device ${this.bdf}: submitPolled needs an idle queue (${this.pending.size} descriptors in flight)`);
    let result: Completion | null = null;
    this.post(src, dst, len, flags, 0, { resolve: (c) => (result = c), reject: () => undefined });
    const deadline = performance.now() + timeoutMs;
    // ORDERING: each CQ_TAIL load pairs with the device's publishing store.
    while (Atomics.load(this.ctl, CQ_TAIL) === this.cqHead) {
      if (performance.now() > deadline || Atomics.load(this.ctl, STATE) !== STATE_RUNNING) {
        // The descriptor stays pending: the device owns it until it completes (reaped later).
        void this.pump();
        throw new DmaError('EIO', `device ${this.bdf}: no completion within ${timeoutMs} ms (state ${Atomics.load(this.ctl, STATE)})`);
      }
    }
    this.reap();
    return result!;
  }

  /**
   * Test-only fault injection: the device suffers `kind` inside the transfer of the descriptor
   * submitted `after` descriptors from now (0: the next one), holding its in-transfer epoch.
   * What follows is the failure path: `error` names the device and the cause, every descriptor
   * in flight is rejected with EIO, a hung device is ended by the unmappers' watchdog
   * (iommu.deviceTimeoutMs) or by close().
   */
  injectFault(kind: InjectedFault, options: { after?: number } = {}): void {
    const code = INJECT_CODES[kind];
    const after = options.after ?? 0;
    if (code === undefined) throw new DmaError('EINVAL', `device ${this.bdf}: unknown fault ${String(kind)} (throw, hang, spin or terminate)`);
    if (!Number.isInteger(after) || after < 0 || after > 0x3fffffff) {
      throw new DmaError('EINVAL', `device ${this.bdf}: injectFault after = ${String(after)} must be a count of descriptors`);
    }
    if (this.failure) throw this.failure;
    if (this.closed) throw new DmaError('ESHUTDOWN', `device ${this.bdf}: closed`);
    this.control.inject(code, (this.sqTail + after) | 0);
  }

  /**
   * Interrupt coalescing, as NVMe's aggregation threshold or ethtool's rx-frames: the driver is
   * woken once `frames` completions are in (or all it has outstanding, if fewer; and whenever
   * the device goes idle) instead of at each one. 1, the default, wakes it at every completion.
   * Fewer wake-ups for a driver thread serving busy devices; later completions for a lone one.
   */
  setInterruptCoalescing(frames: number): void {
    if (!Number.isSafeInteger(frames) || frames < 1 || frames > this.queueDepth) {
      throw new DmaError('EINVAL', `device ${this.bdf}: interrupt coalescing of ${String(frames)} completions must be an integer in [1, ${this.queueDepth}] (its queue depth)`);
    }
    this.coalesceFrames = frames;
  }

  /** Device-side doorbell polling instead of sleeping (benchmarks; costs a core while idle). */
  setDoorbellPolling(on: boolean): void {
    this.control.setPolling(on);
  }

  /** Writes one descriptor into the submission ring, publishes it and rings the doorbell. */
  private post(src: number, dst: number, len: number, flags: number, arg: number, waiter: Pending): void {
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    this.pending.set(id, waiter);
    encodeDescriptor(this.sqView, (this.sqTail % this.queueDepth) * SQE_SIZE, { src, dst, len, flags, id, arg });
    this.sqTail = (this.sqTail + 1) | 0;
    // ORDERING: the store publishes the descriptor written above; ring() then loads DEV_SLEEPING.
    Atomics.store(this.ctl, SQ_TAIL, this.sqTail);
    this.control.ring();
  }

  /**
   * Memory BAR `n` of this device as peers see it: what their peer-to-peer DMA wrote (a live
   * view; CPU writes here are what a peer's P2P read returns). 'ENOENT' when the topology gives
   * the device no such memory BAR (no topology: no BARs).
   */
  bar(n: number): Uint8Array {
    const b = this.bars.get(n);
    if (!b) {
      const have = [...this.bars.keys()];
      throw new DmaError('ENOENT', `device ${this.bdf}: no memory BAR ${n} (${have.length ? `BARs: ${have.join(', ')}` : 'the topology gives it none'})`);
    }
    return b;
  }

  /** The ring DMA addresses the device uses now. */
  get ringDma(): { sq: number; cq: number } {
    return { ...this.ringAddrs };
  }

  /**
   * Reprograms the rings' DMA addresses (the same RAM, seen through another IOMMU domain), as a
   * driver rewrites a device's queue base registers. Only with no descriptor outstanding
   * ('EBUSY' otherwise). Used by VFIO when a group changes domain.
   */
  programRings(sqDma: number, cqDma: number): void {
    if (this.pending.size > 0) {
      throw new DmaError('EBUSY', `device ${this.bdf}: its rings cannot be reprogrammed with ${this.pending.size} descriptor(s) in flight`);
    }
    this.ringAddrs = { sq: sqDma, cq: cqDma };
    this.control.programRings(sqDma, cqDma);
  }

  /** The device's counters (bytes, transfers, IOTLB hits/misses, faults, stale accesses...). */
  counters(): DeviceCounters {
    return this.control.counters();
  }

  /** Descriptors submitted and not yet completed. */
  inFlight(): number {
    return this.pending.size;
  }

  /** Why the device failed, if it did. */
  get error(): DmaError | null {
    return this.failure;
  }

  /** Control-plane call into the worker (flags CTRL so the data loop lets the message in). */
  async info(): Promise<{ name: string; model: string; state: number; error: string | null }> {
    if (!this.worker || this.closed) throw new DmaError('ESHUTDOWN', `device ${this.bdf}: closed`);
    const p = this.worker.remote.info();
    Atomics.store(this.ctl, CTRL, 1);
    this.control.ring();
    return p;
  }

  /**
   * Stops the device (after the descriptor it is executing) and ends its worker. Descriptors
   * still outstanding are rejected with EIO.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    this.closed = true;
    const w = this.worker;
    Atomics.store(this.ctl, STOP, 1);
    this.control.ring();
    if (w) {
      const state = Atomics.load(this.ctl, STATE);
      // A worker that exited or is being ended for a hang gets no grace period.
      if (state === STATE_RUNNING && this.exitCode === null && !this.killing) {
        const r = Atomics.waitAsync(this.ctl, STATE, STATE_RUNNING, STOP_GRACE_MS);
        if (r.async) await r.value;
      }
      this.reap();
      w.release();
      await (this.killing ?? w.worker.terminate());
      this.epochs?.markDead(this.slot);
    }
    this.failAll(new DmaError('EIO', `device ${this.bdf}: closed with the descriptor still outstanding`));
  }

  private expectOk(op: string, c: Completion): Completion {
    if (c.status === 'ok') return c;
    if (c.status === 'fault' && c.fault) {
      const f = c.fault;
      const domain = this.domain;
      const why = this.translated
        ? `refused by the IOMMU (${f.reason}${domain ? `, ${domain.name}` : ''})`
        : `failed: no RAM there (${f.reason}; nothing translates for this device)`;
      throw new DmaError('EFAULT', `device ${this.bdf}: DMA ${f.access} at ${hex(f.addr)} ${why}; the ${op} was aborted and no byte moved`);
    }
    if (c.status === 'invalid') {
      throw new DmaError('EINVAL', `device ${this.bdf}: ${op} descriptor rejected by the ${this.model} (address beyond its ${this.dmaMaskBits}-bit DMA mask, or length over ${MAX_TRANSFER})`);
    }
    throw new DmaError('EIO', `device ${this.bdf}: ${op} aborted`);
  }

  /** A raw descriptor's words must fit their ring fields (rings.ts): nothing is silently cut. */
  private checkDescriptor(src: number, dst: number, len: number, flags: number, arg: number): void {
    for (const [k, v] of [['src', src], ['dst', dst]] as const) {
      if (!Number.isSafeInteger(v) || v < 0) throw new DmaError('EINVAL', `device ${this.bdf}: descriptor ${k} ${String(v)} is not a DMA address (a 64-bit field)`);
    }
    for (const [k, v] of [['len', len], ['flags', flags], ['arg', arg]] as const) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new DmaError('EINVAL', `device ${this.bdf}: descriptor ${k} ${String(v)} does not fit its 32-bit field`);
    }
  }

  /** copy() and fill() are the copy engine's commands; other models read descriptors their own way. */
  private checkModel(op: string): void {
    if (this.model !== 'copy-engine') {
      throw new DmaError('EINVAL', `device ${this.bdf}: ${op} is a copy-engine command and this device is a ${this.model} (use its driver: NvmeDriver, NicDriver)`);
    }
  }

  private checkRange(op: string, what: string, addr: unknown, len: unknown): void {
    if (typeof len !== 'number' || !Number.isSafeInteger(len) || len <= 0 || len > MAX_TRANSFER) {
      throw new DmaError('EINVAL', `device ${this.bdf}: ${op} length ${String(len)} must be an integer in [1, ${MAX_TRANSFER}]`);
    }
    if (typeof addr !== 'number' || !Number.isSafeInteger(addr) || addr < 0) {
      throw new DmaError('EINVAL', `device ${this.bdf}: ${op} ${what} ${String(addr)} is not a DMA address`);
    }
  }

  /** Takes every published completion off the completion ring. */
  private reap(): void {
    const ctl = this.ctl;
    // ORDERING: CQ_TAIL load pairs with the device's store; entries below it are complete.
    const tail = Atomics.load(ctl, CQ_TAIL);
    while (this.cqHead !== tail) {
      const c = decodeCompletion(this.cqView, (this.cqHead % this.queueDepth) * CQE_SIZE);
      this.cqHead = (this.cqHead + 1) | 0;
      const p = this.pending.get(c.id);
      if (!p) continue;
      this.pending.delete(c.id);
      const status: CompletionStatus =
        c.status === STATUS_OK ? 'ok' : c.status === STATUS_FAULT ? 'fault' : c.status === STATUS_INVALID ? 'invalid' : 'aborted';
      const out: Completion = { id: c.id, status, bytes: c.bytes, result: c.result };
      if (status === 'fault') {
        out.fault = { addr: c.faultAddr, access: c.faultWrite ? 'write' : 'read', reason: FAULT_REASONS[c.faultReason] ?? 'not-present' };
      }
      p.resolve(out);
    }
    // ORDERING: frees completion-ring slots for the device.
    Atomics.store(ctl, CQ_HEAD, this.cqHead);
    // Waiting descriptors take the freed slots, oldest first (not on a closed or failed device:
    // failAll rejects them).
    while (this.waiting.length > 0 && this.pending.size < this.queueDepth && !this.closed && !this.failure) {
      const w = this.waiting.shift()!;
      this.post(w.src, w.dst, w.len, w.flags, w.arg, w);
    }
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    const ctl = this.ctl;
    try {
      while (this.pending.size > 0 && !this.failure) {
        this.reap();
        if (this.pending.size === 0) break;
        const hungAfter = this.epochs?.hungAfter(this.slot) ?? null;
        if (hungAfter !== null) {
          this.declareHung(hungAfter);
          break;
        }
        const state = Atomics.load(ctl, STATE);
        if (state === STATE_FAILED || state === STATE_STOPPED) {
          if (state === STATE_FAILED) {
            this.fail(new DmaError('EIO', `device ${this.bdf} (${this.model}) failed: ${await this.workerError()}`));
          } else {
            this.fail(new DmaError('EIO', `device ${this.bdf} (${this.model}) stopped with descriptors outstanding`));
          }
          break;
        }
        const seen = Atomics.load(ctl, CQ_TAIL);
        if (seen !== this.cqHead) continue;
        // Interrupt coalescing: woken once this many completions are in (never more than pending).
        Atomics.store(ctl, CQ_WAKE_AT, (this.cqHead + Math.min(this.pending.size, this.coalesceFrames)) | 0);
        // ORDERING: CQ_WAKE_AT and DRV_WAITING stored before CQ_TAIL is re-read (Dekker with the device).
        Atomics.store(ctl, DRV_WAITING, 1);
        if (Atomics.load(ctl, CQ_TAIL) === seen) {
          const r = Atomics.waitAsync(ctl, CQ_TAIL, seen, PUMP_SLICE_MS);
          if (r.async) await r.value;
        }
        Atomics.store(ctl, DRV_WAITING, 0);
      }
    } finally {
      this.pumping = false;
    }
  }

  /**
   * An unmapper's watchdog declared the device hung (device-epoch.ts): fail it and end its
   * worker; once the thread is gone its slot is marked dead.
   */
  private declareHung(ms: number): void {
    this.fail(
      new DmaError(
        'EIO',
        `device ${this.bdf} (${this.model}) hung: a strict IOTLB invalidation waited ${ms} ms for it to leave its transfer (invalidation time-out, iommu.deviceTimeoutMs); its worker was terminated`,
      ),
    );
    const w = this.worker;
    if (!w || this.killing) return;
    this.killing = w.worker.terminate().then(
      () => this.epochs?.markDead(this.slot),
      () => this.epochs?.markDead(this.slot),
    );
  }

  private async workerError(): Promise<string> {
    try {
      const i = await Promise.race([this.info(), new Promise<null>((r) => setTimeout(() => r(null), 1000).unref())]);
      return i?.error ?? 'no reason given';
    } catch {
      return 'no reason given';
    }
  }

  private fail(e: DmaError): void {
    if (!this.failure && !this.closed) this.failure = e;
    this.failAll(e);
  }

  private failAll(e: DmaError): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
    // Never posted: they get the device's failure, or ESHUTDOWN once it is closed (as a submit then).
    const why = this.failure ?? new DmaError('ESHUTDOWN', `device ${this.bdf}: closed`);
    for (const w of this.waiting.splice(0)) w.reject(why);
  }
}
