/**
 * What a device model implements: how one submission-queue entry becomes DMA. Models run in
 * the device's worker thread, between DmaEngine.begin() and end().
 */
import type { CompletionEntry, Descriptor } from './rings.js';
import type { DmaEngine } from './dma-engine.js';

export interface DeviceModel {
  /** Executes descriptor `d`, filling `c` (id, status, bytes, fault fields). */
  process(d: Descriptor, c: CompletionEntry): void;
}

export interface DeviceModelContext {
  engine: DmaEngine;
  /** Address bits the device can drive on the bus (its DMA mask). */
  dmaMaskBits: number;
}

export type DeviceModelFactory = (ctx: DeviceModelContext) => DeviceModel;

export const MODEL_NAMES = ['copy-engine', 'hostile'] as const;
export type ModelName = (typeof MODEL_NAMES)[number];
