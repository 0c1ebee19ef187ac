/**
 * IoModel: the device side of a workload — how one I/O over buffers the driver mapped is turned
 * into work for a device model and how its completion reads. The workload (workload.ts) owns the
 * driver side (buffers, mapping strategy, verification); an IoModel only submits. Each device
 * model (copy engine, NVMe with PRP lists, NIC with TX/RX SG rings) plugs in with an adapter
 * registered in io-models.ts: `open` gives a queue for one device (the model's driver and its
 * state, e.g. which LBAs are in flight), `check` refuses workloads the model cannot run, naming
 * the scenario field.
 *
 * One I/O moves `len` bytes: the device reads them from `reads` and writes them to `writes`
 * (DMA addresses, as dma_map_* returned them, already cut to `len`). For a one-sided workload
 * (to-device or from-device) the far side is a coherent buffer the workload allocated for the
 * device ("device memory"), so every I/O has both sides and its data can be verified.
 * Queues run on the thread that owns the device's queues (the main thread).
 */
import type { Device } from '../device/device.js';
import type { DriverHost } from '../device/driver-host.js';
import type { DmaSegment } from '../dma/scatterlist.js';
import type { ScenarioDevice, Workload } from './scenario-schema.js';

export interface IoRequest {
  readonly len: number;
  /** Segments the device reads, in order; their lengths add up to len. */
  readonly reads: readonly DmaSegment[];
  /** Segments the device writes, in order; their lengths add up to len. */
  readonly writes: readonly DmaSegment[];
}

/** 'ok', or why the device did not complete the I/O (the first failed descriptor's status). */
export type IoStatus = 'ok' | 'fault' | 'invalid' | 'aborted';

/** What a queue is opened with. */
export interface IoContext {
  /** The machine's DMA API and RAM (what a model's driver needs). */
  readonly host: DriverHost;
  readonly dev: Device;
  readonly device: ScenarioDevice;
  readonly workload: Workload;
  /** I/Os in flight on this device at most (the workload's inFlight, or its driverThreads). */
  readonly concurrency: number;
  /** Whether the workload checks data (a model may then add what makes the data checkable). */
  readonly verify: boolean;
  /** Seed of the model's own choices (e.g. LBAs). */
  readonly seed: number;
}

/** One device's queue of workload I/Os. */
export interface IoQueue {
  submit(io: IoRequest): Promise<IoStatus>;
  /** Frees what the queue holds (its driver's pools); call when no I/O is in flight. */
  close(): Promise<void>;
  /** What the model's driver counted (e.g. nvme's PRP lists), for the summary row. */
  stats?(): Record<string, number>;
}

/** A problem with a scenario for this model, on the device entry or on its workload. */
export interface IoModelIssue {
  on: 'device' | 'workload';
  /** The field under that entry, e.g. ['sizes', 1]. */
  path: ReadonlyArray<string | number>;
  message: string;
}

export interface IoModel {
  /** The device model name it drives (machine-config's `model`). */
  readonly model: string;
  /** I/O sizes must be multiples of this (nvme: the LBA size); 1 when absent. */
  sizeAlign?(device: ScenarioDevice): number;
  /** What this model cannot run of `w` on `device` (scenario-schema.ts reports the first). */
  check?(device: ScenarioDevice, w: Workload): IoModelIssue[];
  open(ctx: IoContext): IoQueue;
}

/** Numeric form of an IoStatus, for the handoff mailbox (0 = ok). */
export const IO_STATUS_CODES: readonly IoStatus[] = ['ok', 'fault', 'invalid', 'aborted'];

/** I/Os of workload `w` in flight at once on its device. */
export const concurrencyOf = (w: Pick<Workload, 'inFlight' | 'driverThreads'>): number => (w.driverThreads > 1 ? w.driverThreads : w.inFlight);
