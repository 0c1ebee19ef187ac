/**
 * IoModel: the device side of a workload — how one I/O over buffers the driver mapped is turned
 * into work for a device model and how its completion reads. The workload (workload.ts) owns the
 * driver side (buffers, mapping strategy, verification); an IoModel only submits. So another
 * device model (a NIC's TX/RX rings, an NVMe queue with PRP lists) plugs in with an adapter that
 * implements `submit`, registered in io-models.ts.
 *
 * One I/O moves `len` bytes: the device reads them from `reads` and writes them to `writes`
 * (DMA addresses, as dma_map_* returned them, already cut to `len`). For a one-sided workload
 * (to-device or from-device) the far side is a coherent buffer the workload allocated for the
 * device ("device memory"), so every I/O has both sides and its data can be verified.
 * Runs on the thread that owns the device's queues (the main thread).
 */
import type { Device } from '../device/device.js';
import type { DmaSegment } from '../dma/scatterlist.js';

export interface IoRequest {
  readonly len: number;
  /** Segments the device reads, in order; their lengths add up to len. */
  readonly reads: readonly DmaSegment[];
  /** Segments the device writes, in order; their lengths add up to len. */
  readonly writes: readonly DmaSegment[];
}

/** 'ok', or why the device did not complete the I/O (the first failed descriptor's status). */
export type IoStatus = 'ok' | 'fault' | 'invalid' | 'aborted';

export interface IoModel {
  /** The device model name it drives (machine-config's `model`). */
  readonly model: string;
  submit(dev: Device, io: IoRequest): Promise<IoStatus>;
}

/** Numeric form of an IoStatus, for the handoff mailbox (0 = ok). */
export const IO_STATUS_CODES: readonly IoStatus[] = ['ok', 'fault', 'invalid', 'aborted'];
