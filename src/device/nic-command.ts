/**
 * The nic model's commands and its scatter-gather tables, as they travel in the device's
 * 32-byte rings (rings.ts). The shapes are virtio-net's: a frame is a chain of buffers given by
 * 16-byte descriptors (vring_desc: addr, len, flags), transmit buffers are gathered into one
 * frame, receive buffers are posted ahead and the device scatters a received frame into them.
 *
 * Where we differ: TX and RX share the device's one submission ring (a real NIC has a TX queue
 * and an RX queue); the opcode in `flags` tells them apart, and a descriptor points to an SG
 * table in guest RAM (like VIRTQ_DESC_F_INDIRECT) instead of chaining ring slots.
 *   src  (u64)  DMA address of the SG table (entries of NIC_SG_ENTRY_SIZE, 8-byte aligned)
 *   dst  (u64)  0
 *   len  (u32)  TX: frame length = sum of the entries (at most NIC_MAX_FRAME); RX: capacity = sum
 *               of the entries (any u32: posted room may exceed the largest frame)
 *   flags(u32)  opcode: NIC_OP_TX, NIC_OP_RX (post buffers), NIC_OP_RX_RESET (give them back)
 *   arg  (u32)  number of SG table entries (1..NIC_MAX_SG)
 * SG table entry, 16 bytes: 0 addr (u64)  8 len (u32, > 0)  12 reserved (u32, 0)
 *
 * Completions: TX completes when the frame is on the wire: bytes = frame length, result =
 * CRC-32 (crc32.ts) of the gathered frame. An RX descriptor completes when a frame lands in its
 * buffers (later, out of submission order): bytes = frame length, result = CRC-32 of it; status
 * 'invalid' if the frame was longer than the buffers (nothing written), 'fault' if the IOMMU
 * refused a buffer (nothing written), 'aborted' on NIC_OP_RX_RESET. A frame arriving with no
 * RX buffer posted is dropped and counted (rxMissed, as a NIC's rx_missed_errors).
 */
export const NIC_OP_TX = 1;
export const NIC_OP_RX = 2;
export const NIC_OP_RX_RESET = 3;

export const NIC_SG_ENTRY_SIZE = 16;
/** Buffers in one frame's SG table (Linux: MAX_SKB_FRAGS is 17; we allow a few more). */
export const NIC_MAX_SG = 64;
/** Largest frame (a 64 KiB GSO frame, so tests can move more than an MTU). */
export const NIC_MAX_FRAME = 65536;
/** Bytes of one SG table of NIC_MAX_SG entries. */
export const NIC_SG_TABLE_SIZE = NIC_MAX_SG * NIC_SG_ENTRY_SIZE;

/** Writes entry i of an SG table. */
export function encodeSgEntry(v: DataView, i: number, addr: number, len: number): void {
  const at = i * NIC_SG_ENTRY_SIZE;
  v.setUint32(at, addr >>> 0, true);
  v.setUint32(at + 4, Math.floor(addr / 2 ** 32), true);
  v.setUint32(at + 8, len, true);
  v.setUint32(at + 12, 0, true);
}

/** Entry i's address. */
export function sgEntryAddr(v: DataView, i: number): number {
  const at = i * NIC_SG_ENTRY_SIZE;
  return v.getUint32(at + 4, true) * 2 ** 32 + v.getUint32(at, true);
}

/** Entry i's length. */
export function sgEntryLen(v: DataView, i: number): number {
  return v.getUint32(i * NIC_SG_ENTRY_SIZE + 8, true);
}
