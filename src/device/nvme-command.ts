/**
 * The nvme model's I/O command and completion, as they travel in the device's 32-byte rings
 * (rings.ts), and the NVMe facts both sides use (NVM Command Set opcodes, status codes, PRPs).
 *
 * Where we differ from NVMe: a real submission entry is 64 bytes; ours carries the fields an
 * I/O command needs in the 32-byte descriptor:
 *   src  (u64)  PRP1 (DPTR.PRP1)          dst (u64)  PRP2 (DPTR.PRP2)
 *   len  (u32)  NLB, 0-based (CDW12 bits 15:0; more bits are an Invalid Field)
 *   flags(u32)  opcode (CDW0 bits 7:0)    id  (u32)  command identifier (CID)
 *   arg  (u32)  SLBA (CDW10; a namespace holds at most 2^32 blocks, so CDW11 is always 0)
 * One namespace (NSID 1), one I/O queue pair. Completion: the generic status is ok / fault /
 * invalid (rings.ts) and `result` is the NVMe status code (Status Field, SCT 0 generic or
 * SCT 0 with the command-specific 0x80 codes as NVMe numbers them); `bytes` is the data moved.
 *
 * PRPs (NVMe base spec, "Physical Region Page Entry and List"), memory page size 4 KiB
 * (CC.MPS = 0): PRP1 may carry an offset (dword aligned); if the transfer ends in PRP1's page
 * PRP2 is unused; if it ends in the next page PRP2 is that page; otherwise PRP2 points to a PRP
 * list (qword aligned, may start inside a page). Every list entry is a page address (offset
 * non-zero: PRP Offset Invalid); when entries remain past the last slot of a list page, that
 * slot holds the address of the next list page instead.
 */
export const NVME_CTRL_PAGE_SIZE = 4096;
/** Largest transfer of one command (MDTS = 10 with 4 KiB pages: 4 MiB). */
export const NVME_MAX_TRANSFER = 4 * 1024 * 1024;
/** NLB is a 16-bit, 0-based field. */
export const NVME_MAX_NLB = 0xffff;
export const NVME_LBA_SIZES = [512, 4096] as const;

/** NVM Command Set opcodes (Linux: nvme_cmd_flush, nvme_cmd_write, nvme_cmd_read). */
export const NVME_CMD_FLUSH = 0x00;
export const NVME_CMD_WRITE = 0x01;
export const NVME_CMD_READ = 0x02;

/** Status codes (Linux's NVME_SC_* names in comments). */
export const NVME_SC_SUCCESS = 0x00;
export const NVME_SC_INVALID_OPCODE = 0x01;
export const NVME_SC_INVALID_FIELD = 0x02;
export const NVME_SC_DATA_XFER_ERROR = 0x04;
/** NVME_SC_PRP_INVALID_OFFSET: a PRP entry with an offset where only a page address may be. */
export const NVME_SC_PRP_INVALID_OFFSET = 0x13;
export const NVME_SC_LBA_RANGE = 0x80;

const NAMES: Record<number, string> = {
  [NVME_SC_SUCCESS]: 'Successful Completion',
  [NVME_SC_INVALID_OPCODE]: 'Invalid Command Opcode',
  [NVME_SC_INVALID_FIELD]: 'Invalid Field in Command',
  [NVME_SC_DATA_XFER_ERROR]: 'Data Transfer Error',
  [NVME_SC_PRP_INVALID_OFFSET]: 'PRP Offset Invalid',
  [NVME_SC_LBA_RANGE]: 'LBA Out of Range',
};

/** The spec's name of a status code. */
export function nvmeStatusName(sc: number): string {
  return NAMES[sc] ?? `status 0x${sc.toString(16)}`;
}
