/**
 * Descriptor (submission) and completion rings in guest RAM, as a real device's queues: the
 * driver writes descriptors with the CPU and the device reads them by DMA; the device writes
 * completions by DMA and the driver reads them with the CPU. Indices live in device-control.ts.
 *
 * Submission entry, 32 bytes, little endian (the copy engine's format):
 *   0 src (u64)   8 dst (u64)   16 len (u32)   20 flags (u32)   24 id (u32)   28 arg (u32)
 *   flags bit 0 FILL: write the byte `src & 0xff` over dst instead of copying (a memset).
 *   arg: a model's extra command word (0 for the copy engine); the nvme and nic models give the
 *   fields their own meaning (src/device/nvme-command.ts, src/device/nic-command.ts).
 * Completion entry, 32 bytes:
 *   0 id (u32)   4 status (u32)   8 bytes moved (u32)   12 fault reason (u32)
 *   16 fault address (u64)   24 fault access (u32, 1 = write)   28 result (u32)
 *   result: a model's result word (NVMe status code, NIC frame checksum; 0 for the copy engine).
 * Completions come in the order the device finishes descriptors, matched by id: a model may
 * complete a descriptor later than the one it is executing (a NIC's posted RX buffers).
 * Entry i of a ring of `depth` entries is at ring base + (i mod depth) * 32.
 */
import type { GuestRam } from '../memory/guest-ram.js';
import type { DmaAddr, Pa } from '../addresses.js';

export const SQE_SIZE = 32;
export const CQE_SIZE = 32;
export const FLAG_FILL = 1;
export const KNOWN_FLAGS = FLAG_FILL;

export const STATUS_OK = 0;
export const STATUS_FAULT = 1;
export const STATUS_INVALID = 2;
export const STATUS_ABORTED = 3;

export interface Descriptor {
  src: number;
  dst: number;
  len: number;
  flags: number;
  id: number;
  /** The model's extra command word (offset 28). */
  arg: number;
}

export interface CompletionEntry {
  id: number;
  status: number;
  bytes: number;
  faultReason: number;
  faultAddr: number;
  faultWrite: boolean;
  /** The model's result word (offset 28). */
  result: number;
}

/** Where a ring lives: its RAM (for the CPU side) and its DMA address (for the device). */
export interface RingPlacement {
  readonly pa: Pa;
  readonly dma: DmaAddr;
  readonly depth: number;
}

const lo = (n: number): number => n >>> 0;
const hi = (n: number): number => Math.floor(n / 2 ** 32);
const u64 = (v: DataView, at: number): number => v.getUint32(at + 4, true) * 2 ** 32 + v.getUint32(at, true);

export function encodeDescriptor(v: DataView, at: number, d: Descriptor): void {
  v.setUint32(at, lo(d.src), true);
  v.setUint32(at + 4, hi(d.src), true);
  v.setUint32(at + 8, lo(d.dst), true);
  v.setUint32(at + 12, hi(d.dst), true);
  v.setUint32(at + 16, d.len, true);
  v.setUint32(at + 20, d.flags, true);
  v.setUint32(at + 24, d.id, true);
  v.setUint32(at + 28, d.arg, true);
}

export function decodeDescriptor(v: DataView, at: number, out: Descriptor): Descriptor {
  out.src = u64(v, at);
  out.dst = u64(v, at + 8);
  out.len = v.getUint32(at + 16, true);
  out.flags = v.getUint32(at + 20, true);
  out.id = v.getUint32(at + 24, true);
  out.arg = v.getUint32(at + 28, true);
  return out;
}

export function encodeCompletion(v: DataView, at: number, c: CompletionEntry): void {
  v.setUint32(at, c.id, true);
  v.setUint32(at + 4, c.status, true);
  v.setUint32(at + 8, c.bytes, true);
  v.setUint32(at + 12, c.faultReason, true);
  v.setUint32(at + 16, lo(c.faultAddr), true);
  v.setUint32(at + 20, hi(c.faultAddr), true);
  v.setUint32(at + 24, c.faultWrite ? 1 : 0, true);
  v.setUint32(at + 28, c.result, true);
}

export function decodeCompletion(v: DataView, at: number): CompletionEntry {
  return {
    id: v.getUint32(at, true),
    status: v.getUint32(at + 4, true),
    bytes: v.getUint32(at + 8, true),
    faultReason: v.getUint32(at + 12, true),
    faultAddr: u64(v, at + 16),
    faultWrite: v.getUint32(at + 24, true) === 1,
    result: v.getUint32(at + 28, true),
  };
}

/** The CPU's view of a ring in guest RAM (driver side). */
export function ringView(ram: GuestRam, ring: RingPlacement, entrySize: number): DataView {
  const bytes = ring.depth * entrySize;
  const off = ram.offsetOf(ring.pa, bytes);
  const u8 = ram.view(off, bytes);
  return new DataView(u8.buffer, u8.byteOffset, bytes);
}
