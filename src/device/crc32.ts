/**
 * CRC-32 as Ethernet's frame check sequence computes it (IEEE 802.3: polynomial 0x04C11DB7,
 * reflected, initial value and final xor 0xFFFFFFFF; zlib's crc32). The nic model puts it in
 * its completions so a test can check what the device gathered or scattered.
 */
const TABLE = (() => {
  const t = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  return t;
})();

/** CRC-32 of bytes[0, len) (as an unsigned 32-bit number). */
export function crc32(bytes: Uint8Array, len = bytes.length): number {
  let c = -1;
  for (let i = 0; i < len; i++) c = TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}
