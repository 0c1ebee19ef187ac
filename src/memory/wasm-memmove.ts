/**
 * memmove and memset for guest RAM through WebAssembly's bulk-memory instructions.
 *
 * Copies inside a SharedArrayBuffer through copyWithin/set run as relaxed word-by-word copies
 * (~25 GB/s, ~3 GB/s when misaligned); wasm's memory.copy on a shared WebAssembly.Memory is a
 * real memmove (~110 GB/s in cache here, any alignment). So guest RAM that fits a 32-bit wasm
 * memory (≤ 4 GiB) is a shared WebAssembly.Memory, whose buffer is the RAM SharedArrayBuffer,
 * and every thread instantiates this tiny module over it.
 *
 * The module, hand-assembled (no toolchain needed):
 *   (module
 *     (import "e" "m" (memory 0 65536 shared))
 *     (func (export "copy") (param $dst i32) (param $src i32) (param $len i32)
 *       (memory.copy (local.get $dst) (local.get $src) (local.get $len)))
 *     (func (export "fill") (param $dst i32) (param $val i32) (param $len i32)
 *       (memory.fill (local.get $dst) (local.get $val) (local.get $len))))
 * Offsets above 2^31 arrive as negative i32 and are read back as unsigned by wasm.
 */
// prettier-ignore
const MODULE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
  0x01, 0x07, 0x01, 0x60, 0x03, 0x7f, 0x7f, 0x7f, 0x00, // type 0: (i32 i32 i32) -> ()
  0x02, 0x0b, 0x01, 0x01, 0x65, 0x01, 0x6d, 0x02, 0x03, 0x00, 0x80, 0x80, 0x04, // import e.m: shared memory, max 65536 pages
  0x03, 0x03, 0x02, 0x00, 0x00, // two functions of type 0
  0x07, 0x0f, 0x02, 0x04, 0x63, 0x6f, 0x70, 0x79, 0x00, 0x00, 0x04, 0x66, 0x69, 0x6c, 0x6c, 0x00, 0x01, // exports copy, fill
  0x0a, 0x1a, 0x02, // code: two bodies
  0x0c, 0x00, 0x20, 0x00, 0x20, 0x01, 0x20, 0x02, 0xfc, 0x0a, 0x00, 0x00, 0x0b, // memory.copy
  0x0b, 0x00, 0x20, 0x00, 0x20, 0x01, 0x20, 0x02, 0xfc, 0x0b, 0x00, 0x0b, // memory.fill
]);

/** The largest guest RAM a 32-bit wasm memory holds. */
export const WASM_MEMORY_MAX_BYTES = 2 ** 32;
const WASM_PAGE = 65536;

export interface Memmove {
  /** memmove within the memory, by byte offsets. */
  copy(dst: number, src: number, len: number): void;
  /** memset within the memory. */
  fill(dst: number, value: number, len: number): void;
}

let compiled: WebAssembly.Module | null = null;

/** A shared wasm memory of at least `bytes` bytes (rounded up to 64 KiB pages). */
export function createSharedMemory(bytes: number): WebAssembly.Memory {
  const pages = Math.ceil(bytes / WASM_PAGE);
  return new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
}

/** This thread's memmove over `memory`. */
export function memmoveFor(memory: WebAssembly.Memory): Memmove {
  compiled ??= new WebAssembly.Module(MODULE);
  const exports = new WebAssembly.Instance(compiled, { e: { m: memory } }).exports as unknown as Memmove;
  return { copy: exports.copy, fill: exports.fill };
}
