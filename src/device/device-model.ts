/**
 * What a device model implements: how one submission-queue entry becomes DMA. Models run in
 * the device's worker thread, between DmaEngine.begin() and end().
 */
import { STATUS_OK, type CompletionEntry, type Descriptor } from './rings.js';
import { STAT } from './device-control.js';
import type { DmaEngine } from './dma-engine.js';

/** process() returns this when the descriptor completes later (see DeviceModel.takeCompleted). */
export const DEFERRED = false;

export interface DeviceModel {
  /**
   * Executes descriptor `d`, filling `c` (id, status, bytes, fault fields, result). Returns
   * DEFERRED when `d` completes later (a NIC's posted RX buffers complete when a frame lands):
   * then `c` is not written to the completion ring.
   */
  process(d: Descriptor, c: CompletionEntry): void | boolean;
  /**
   * Completions of earlier DEFERRED descriptors that the last process() finished; the worker
   * writes them after that descriptor's own completion. Each deferred descriptor completes once.
   */
  takeCompleted?(): readonly CompletionEntry[];
}

/** The nvme model's namespace: its media (written only by the device worker) and LBA size. */
export interface NvmeModelOptions {
  /** Logical block size in bytes (512 or 4096). */
  lbaSize: number;
  /** The namespace's blocks, lbaSize each: the device writes them, anyone may read them. */
  media: SharedArrayBuffer;
}

/** The nic model's wire. */
export interface NicModelOptions {
  /** 'loopback': every transmitted frame is received into the next posted RX buffers. */
  wire: 'loopback';
}

/** Per-model options a device starts with (structured-cloneable: they go to the worker). */
export interface ModelOptions {
  nvme?: NvmeModelOptions;
  nic?: NicModelOptions;
}

export interface DeviceModelContext {
  engine: DmaEngine;
  /** Address bits the device can drive on the bus (its DMA mask). */
  dmaMaskBits: number;
  /** Ring depth: at most this many descriptors are outstanding at once. */
  queueDepth: number;
  options: ModelOptions;
}

export type DeviceModelFactory = (ctx: DeviceModelContext) => DeviceModel;

export const MODEL_NAMES = ['copy-engine', 'nvme', 'nic', 'hostile'] as const;
export type ModelName = (typeof MODEL_NAMES)[number];

/**
 * What every model does first with a descriptor: a fresh completion for it (ok, nothing moved,
 * no fault yet) and one more descriptor in the device's counters.
 */
export function acceptDescriptor(d: Descriptor, c: CompletionEntry, counts: Float64Array): void {
  c.id = d.id;
  c.status = STATUS_OK;
  c.bytes = 0;
  c.faultReason = 0;
  c.faultAddr = 0;
  c.faultWrite = false;
  counts[STAT.descriptors]++;
}
