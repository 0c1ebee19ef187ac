/**
 * The device worker: one worker thread per emulated device.
 *
 * Control plane (comlink, src/control-plane.ts): start(config) and info(). Everything else is
 * shared memory: the driver rings the doorbell (SQ_TAIL), the device fetches descriptors from
 * the submission ring in guest RAM by DMA, executes them through its DmaEngine, writes
 * completions into the completion ring by DMA, publishes CQ_TAIL and notifies the driver only
 * if it waits. While idle it sleeps in Atomics.wait on SQ_TAIL; it leaves its loop briefly
 * (setImmediate) when the driver flags a pending control message (CTRL) or every IDLE_SLICE_MS,
 * so comlink messages are served without putting messages on the data path.
 *
 * Fault injection (test-only, Device.injectFault): when the descriptor index named in the control
 * block comes up, the device suffers the fault inside that transfer — after it fetched the
 * descriptor, inside its in-transfer epoch: 'throw' (the model throws: the exception unwinds,
 * the epoch is left, the worker dies with the error), 'hang' (it sleeps until its worker is
 * terminated, holding the epoch: only the unmappers' watchdog or close() end it), 'spin' (the
 * same, in a busy loop) and 'terminate' (the thread ends at once with exit code 70, the epoch
 * still held; the machine marks the slot dead when it sees the exit).
 */
import { exposeToParent } from '../src/control-plane.js';
import { DmaEngine, RunList, type DmaEngineConfig } from '../src/device/dma-engine.js';
import {
  DeviceControl,
  type DeviceControlHandle,
  SQ_TAIL,
  SQ_HEAD,
  CQ_TAIL,
  CQ_HEAD,
  DEV_SLEEPING,
  DRV_WAITING,
  CQ_WAKE_AT,
  STOP,
  STATE,
  CTRL,
  POLL,
  STATE_RUNNING,
  STATE_STOPPED,
  STATE_FAILED,
  STAT,
  INJECT,
  INJECT_THROW,
  INJECT_HANG,
  INJECT_SPIN,
  INJECT_EXIT,
} from '../src/device/device-control.js';
import {
  SQE_SIZE,
  CQE_SIZE,
  type CompletionEntry,
  type Descriptor,
  decodeDescriptor,
  encodeCompletion,
} from '../src/device/rings.js';
import { DEFERRED, MODEL_NAMES, type DeviceModel, type ModelName, type ModelOptions } from '../src/device/device-model.js';
import { MODELS } from './models/index.js';
import { TraceRings, TRACE_KIND, type TraceRingsHandle, type TraceWriter } from '../src/trace/trace-ring.js';

export interface DeviceWorkerConfig {
  name: string;
  model: ModelName;
  dmaMaskBits: number;
  engine: DmaEngineConfig;
  control: DeviceControlHandle;
  /** DMA addresses and depths of the rings, as the driver programmed them. */
  sq: { dma: number; depth: number };
  cq: { dma: number; depth: number };
  /** The machine's trace rings (null: tracing off): the device claims its own ring at start. */
  trace: TraceRingsHandle | null;
  /** Per-model options (the nvme model's media, the nic model's wire). */
  options?: ModelOptions;
}

export interface DeviceWorkerApi {
  start(config: DeviceWorkerConfig): void;
  info(): { name: string; model: string; state: number; error: string | null };
}

const IDLE_SLICE_MS = 100;
/** Exit code of an injected 'terminate' (EX_SOFTWARE). */
const EXIT_CODE_INJECTED = 70;

const STEP_OK = 0;
const STEP_STOPPED = 1;
const STEP_FAILED = 2;

class DeviceRunner {
  private readonly control: DeviceControl;
  private readonly ctl: Int32Array;
  private readonly engine: DmaEngine;
  private readonly model: DeviceModel;
  private readonly runs = new RunList();
  private readonly sqe = new Uint8Array(SQE_SIZE);
  private readonly sqeView = new DataView(this.sqe.buffer);
  private readonly cqe = new Uint8Array(CQE_SIZE);
  private readonly cqeView = new DataView(this.cqe.buffer);
  private readonly desc: Descriptor = { src: 0, dst: 0, len: 0, flags: 0, id: 0, arg: 0 };
  private readonly comp: CompletionEntry = { id: 0, status: 0, bytes: 0, faultReason: 0, faultAddr: 0, faultWrite: false, result: 0 };
  private sqHead = 0;
  private cqTail = 0;
  /** Ring DMA addresses in use, and the RING_GEN they were read at (device-control.ts). */
  private sqDma: number;
  private cqDma: number;
  private ringGen: number;
  /** This device's trace ring: a slice per descriptor (null: tracing off). */
  private readonly trace: TraceWriter | null;
  /** The model in a transfer slice's info word: the exporter reads the descriptor as it does. */
  private readonly traceModel: number;
  error: string | null = null;

  constructor(readonly cfg: DeviceWorkerConfig) {
    this.control = DeviceControl.attach(cfg.control);
    this.ctl = this.control.ctl;
    this.engine = new DmaEngine(cfg.engine);
    const factory = MODELS[cfg.model];
    if (!factory) throw new Error(`unknown device model ${cfg.model}`);
    this.model = factory({ engine: this.engine, dmaMaskBits: cfg.dmaMaskBits, queueDepth: cfg.sq.depth, options: cfg.options ?? {} });
    this.sqDma = cfg.sq.dma;
    this.cqDma = cfg.cq.dma;
    this.ringGen = this.control.ringGen();
    this.sqHead = Atomics.load(this.ctl, SQ_HEAD);
    this.cqTail = Atomics.load(this.ctl, CQ_TAIL);
    this.trace = cfg.trace ? TraceRings.attach(cfg.trace).claim('device', `${cfg.name} ${cfg.model}`, cfg.engine.requesterId) : null;
    this.engine.trace = this.trace;
    this.traceModel = Math.max(0, MODEL_NAMES.indexOf(cfg.model)) << 24;
  }

  run(): void {
    Atomics.store(this.ctl, STATE, STATE_RUNNING);
    Atomics.notify(this.ctl, STATE);
    setImmediate(this.loop);
  }

  state(): number {
    return Atomics.load(this.ctl, STATE);
  }

  /** The data loop; returns to the event loop only to let control messages in. */
  loop = (): void => {
    const ctl = this.ctl;
    try {
      for (;;) {
        if (Atomics.load(ctl, STOP) !== 0) return this.finish(STATE_STOPPED);
        if (Atomics.load(ctl, CTRL) !== 0) {
          Atomics.store(ctl, CTRL, 0);
          setImmediate(this.loop);
          return;
        }
        const tail = Atomics.load(ctl, SQ_TAIL);
        if (tail === this.sqHead) {
          if (Atomics.load(ctl, POLL) !== 0) continue; // benchmark mode: poll the doorbell
          // Going idle: a coalescing driver still waiting is woken whatever it asked for (what it
          // waits for may be deferred completions, e.g. posted RX buffers).
          if (Atomics.load(ctl, DRV_WAITING) !== 0 && ((Atomics.load(ctl, CQ_WAKE_AT) - this.cqTail) | 0) > 0) Atomics.notify(ctl, CQ_TAIL);
          // ORDERING: DEV_SLEEPING is raised before SQ_TAIL is re-read (see device-control.ts).
          Atomics.store(ctl, DEV_SLEEPING, 1);
          let r: string = 'not-equal';
          if (Atomics.load(ctl, SQ_TAIL) === tail && Atomics.load(ctl, STOP) === 0 && Atomics.load(ctl, CTRL) === 0) {
            r = Atomics.wait(ctl, SQ_TAIL, tail, IDLE_SLICE_MS);
          }
          Atomics.store(ctl, DEV_SLEEPING, 0);
          if (r === 'timed-out') {
            setImmediate(this.loop);
            return;
          }
          continue;
        }
        // New work: the driver may have reprogrammed the rings while the queue was empty.
        const g = this.control.ringGen();
        if (g !== this.ringGen) {
          this.ringGen = g;
          const r = this.control.ringDma();
          this.sqDma = r.sq;
          this.cqDma = r.cq;
        }
        // One descriptor at a time, checking STOP and CTRL between them.
        while (this.sqHead !== tail && Atomics.load(ctl, STOP) === 0 && Atomics.load(ctl, CTRL) === 0) {
          // Room for this descriptor's completion, waited for outside the transfer epoch.
          if (!this.waitForCompletionSpace()) return this.finish(STATE_STOPPED);
          const r = this.trace === null ? this.step() : this.tracedStep(this.trace);
          if (r !== STEP_OK) return this.finish(r === STEP_STOPPED ? STATE_STOPPED : STATE_FAILED);
        }
      }
    } catch (e) {
      this.error = e instanceof Error ? `${e.message}\n${e.stack ?? ''}` : String(e);
      this.finish(STATE_FAILED);
      throw e;
    }
  };

  /** One descriptor: fetch by DMA, execute, complete by DMA (its own and any deferred ones), publish. */
  private step(): number {
    const firstTail = this.cqTail;
    const r = this.execute();
    if (r === STEP_OK) this.publish(firstTail);
    return r;
  }

  /** Fetches and executes one descriptor and writes its completions (not yet published). */
  private execute(): number {
    const e = this.engine;
    const { sq } = this.cfg;
    e.begin();
    try {
      if (!e.translate(this.sqDma + (this.sqHead % sq.depth) * SQE_SIZE, SQE_SIZE, false, this.runs)) {
        this.error = `${this.cfg.name}: cannot fetch descriptor ${this.sqHead} from the submission ring at ${hexs(this.sqDma)}: DMA fault (${faultText(e)})`;
        return STEP_FAILED;
      }
      const dv = e.ram.dataView;
      if (dv !== null && this.runs.count === 1 && this.runs.bar === null) {
        decodeDescriptor(dv, this.runs.offs[0], this.desc); // in place: no copy, no allocation
      } else {
        e.readRuns(this.runs, this.sqe);
        decodeDescriptor(this.sqeView, 0, this.desc);
      }
      const injected = this.control.injected(this.sqHead);
      if (injected !== 0) this.suffer(injected);
      this.comp.result = 0;
      const r = this.writeCompletion(this.model.process(this.desc, this.comp) === DEFERRED ? null : this.comp);
      if (r !== STEP_OK) return r;
      const later = this.model.takeCompleted?.();
      if (later) {
        for (const c of later) {
          const w = this.writeCompletion(c);
          if (w !== STEP_OK) return w;
        }
      }
    } finally {
      e.end();
    }
    return STEP_OK;
  }

  /** Publishes what execute() wrote: SQ_HEAD, the completions from `firstTail` on, the counters. */
  private publish(firstTail: number): void {
    this.control.stats.set(this.engine.counts);
    this.sqHead = (this.sqHead + 1) | 0;
    const ctl = this.ctl;
    Atomics.store(ctl, SQ_HEAD, this.sqHead);
    if (this.cqTail === firstTail) return; // deferred: completes in a later step
    // ORDERING: CQ_TAIL publishes the completion entries written above; DRV_WAITING is read
    // after it (Dekker with the driver's DRV_WAITING store then CQ_TAIL load).
    Atomics.store(ctl, CQ_TAIL, this.cqTail);
    if (Atomics.load(ctl, DRV_WAITING) !== 0 && ((this.cqTail - Atomics.load(ctl, CQ_WAKE_AT)) | 0) >= 0) Atomics.notify(ctl, CQ_TAIL);
  }

  /**
   * step() with a transfer slice on the device's track for the descriptor it executed (if it got
   * that far), recorded before the completion is published: a driver that saw the completion
   * finds the slice in the ring.
   */
  private tracedStep(tr: TraceWriter): number {
    const k = this.engine.counts;
    const before = k[STAT.descriptors];
    const firstTail = this.cqTail;
    const t0 = tr.now();
    const r = this.execute();
    if (k[STAT.descriptors] !== before) {
      const d = this.desc;
      tr.slice(TRACE_KIND.transfer, t0, d.src, d.dst, d.len, (this.comp.status & 0xff) | ((d.flags & 0xffff) << 8) | this.traceModel);
    }
    if (r === STEP_OK) this.publish(firstTail);
    return r;
  }

  /** An injected fault, inside the current transfer (see the header). */
  private suffer(kind: number): void {
    const what = `${this.cfg.name}: injected fault in descriptor ${this.desc.id}`;
    if (kind === INJECT_THROW) throw new Error(`${what}: the ${this.cfg.model} model threw`);
    if (kind === INJECT_EXIT) process.exit(EXIT_CODE_INJECTED);
    if (kind === INJECT_HANG) {
      // Nobody notifies INJECT: this sleeps until the worker is terminated.
      for (;;) Atomics.wait(this.ctl, INJECT, kind);
    }
    if (kind === INJECT_SPIN) {
      let n = 0;
      for (;;) n = (n + 1) | 0;
    }
  }

  /** Writes one completion entry by DMA at the (unpublished) tail; null: nothing to write. */
  private writeCompletion(c: CompletionEntry | null): number {
    if (c === null) return STEP_OK;
    if (!this.waitForCompletionSpace()) return STEP_STOPPED;
    const e = this.engine;
    if (!e.translate(this.cqDma + (this.cqTail % this.cfg.cq.depth) * CQE_SIZE, CQE_SIZE, true, this.runs)) {
      this.error = `${this.cfg.name}: cannot write completion ${this.cqTail} to the completion ring at ${hexs(this.cqDma)}: DMA fault (${faultText(e)})`;
      return STEP_FAILED;
    }
    const dv = e.ram.dataView;
    if (dv !== null && this.runs.count === 1 && this.runs.bar === null) {
      encodeCompletion(dv, this.runs.offs[0], c);
    } else {
      encodeCompletion(this.cqeView, 0, c);
      e.writeRuns(this.runs, this.cqe);
    }
    this.cqTail = (this.cqTail + 1) | 0;
    return STEP_OK;
  }

  /**
   * The driver keeps at most `depth` descriptors outstanding and each completes once, so
   * completions not yet reaped never exceed the ring: this rarely waits.
   */
  private waitForCompletionSpace(): boolean {
    const ctl = this.ctl;
    for (;;) {
      const head = Atomics.load(ctl, CQ_HEAD);
      if (((this.cqTail - head) | 0) < this.cfg.cq.depth) return true;
      if (Atomics.load(ctl, STOP) !== 0) return false;
      Atomics.wait(ctl, CQ_HEAD, head, 10);
    }
  }

  private finish(state: number): void {
    this.control.stats.set(this.engine.counts);
    Atomics.store(this.ctl, STATE, state);
    Atomics.notify(this.ctl, STATE);
    // Wake a driver waiting for completions so it notices the state change.
    Atomics.notify(this.ctl, CQ_TAIL);
  }
}

function hexs(n: number): string {
  return '0x' + n.toString(16);
}

function faultText(e: DmaEngine): string {
  return `${['not-present', 'permission', 'out-of-range', 'no-context'][e.faultReason]} at ${hexs(e.faultAddr)}`;
}

let runner: DeviceRunner | null = null;

const api: DeviceWorkerApi = {
  start(config) {
    if (runner) throw new Error(`${config.name}: already started`);
    runner = new DeviceRunner(config);
    runner.run();
  },
  info() {
    return {
      name: runner?.cfg.name ?? '',
      model: runner?.cfg.model ?? '',
      state: runner ? runner.state() : 0,
      error: runner?.error ?? null,
    };
  },
};

exposeToParent(api);
