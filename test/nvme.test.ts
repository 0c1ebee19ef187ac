import { describe, it, expect } from 'vitest';
import { Machine, MiB, GiB, dmaAddr, type MachineConfig } from '../src/index.js';
import type { Device } from '../src/device/device.js';
import { NvmeDriver } from '../src/device/nvme.js';
import {
  NVME_CMD_READ,
  NVME_CMD_WRITE,
  NVME_SC_DATA_XFER_ERROR,
  NVME_SC_PRP_INVALID_OFFSET,
  NVME_SC_SUCCESS,
} from '../src/device/nvme-command.js';
import { pattern, same, allBytes, closeAfterEach } from './support.js';
const { machines } = closeAfterEach();

const PAGE = 4096;
const small: MachineConfig = { ram: [{ base: 0, size: 24 * MiB }, { base: 4 * GiB, size: 8 * MiB }], swiotlb: { size: 1 * MiB } };
async function machine(cfg: MachineConfig = small): Promise<Machine> {
  const m = await Machine.create(cfg);
  machines.push(m);
  return m;
}

async function nvme(m: Machine, opts: { lbaSize?: 512 | 4096; size?: number; dmaMask?: number } = {}): Promise<{ dev: Device; drv: NvmeDriver }> {
  const dev = await m.addDevice({ bdf: '00:04.0', model: 'nvme', dmaMask: opts.dmaMask ?? 64, nvme: { lbaSize: opts.lbaSize ?? 512, size: opts.size ?? 4 * MiB } });
  return { dev, drv: new NvmeDriver(m, dev) };
}

/** n pages, none next to another (every other page of a larger allocation). */
function scatteredPages(m: Machine, n: number, options: { above?: number } = {}): Array<{ pa: number; len: number }> {
  const big = m.ram.alloc(2 * n * PAGE, options);
  return Array.from({ length: n }, (_, i) => ({ pa: big.pa + 2 * i * PAGE, len: PAGE }));
}

function writeBuffers(m: Machine, bufs: Array<{ pa: number; len: number }>, data: Uint8Array): void {
  let k = 0;
  for (const b of bufs) {
    m.ram.write(b.pa, data.subarray(k, k + b.len));
    k += b.len;
  }
}

function readBuffers(m: Machine, bufs: Array<{ pa: number; len: number }>): Uint8Array {
  const out = new Uint8Array(bufs.reduce((s, b) => s + b.len, 0));
  let k = 0;
  for (const b of bufs) {
    out.set(m.ram.read(b.pa, b.len), k);
    k += b.len;
  }
  return out;
}

/** WRITE bufs at lba, check the media, clear, READ back into other buffers of the same shape, compare. */
async function roundTrip(m: Machine, drv: NvmeDriver, lba: number, wbufs: Array<{ pa: number; len: number }>, rbufs: Array<{ pa: number; len: number }>, seed: number): Promise<void> {
  const len = wbufs.reduce((s, b) => s + b.len, 0);
  const data = pattern(len, seed);
  writeBuffers(m, wbufs, data);
  const w = await drv.write(lba, wbufs);
  expect(w).toMatchObject({ status: 'ok', sc: NVME_SC_SUCCESS, bytes: len });
  const at = lba * drv.ns.lbaSize;
  expect(same(drv.ns.media.subarray(at, at + len), data)).toBe(true);
  for (const b of rbufs) m.ram.fill(b.pa, b.len, 0);
  const r = await drv.read(lba, rbufs);
  expect(r).toMatchObject({ status: 'ok', sc: NVME_SC_SUCCESS, bytes: len });
  expect(same(readBuffers(m, rbufs), data)).toBe(true);
  expect(drv.prpListsInUse()).toBe(0);
}

describe('nvme: PRP rules, write then read back byte for byte', () => {
  it('PRP1 only: a transfer inside one page ignores PRP2', async () => {
    const m = await machine();
    const { dev, drv } = await nvme(m);
    const a = m.ram.alloc(PAGE);
    const b = m.ram.alloc(PAGE);
    await roundTrip(m, drv, 7, [{ pa: a.pa, len: PAGE }], [{ pa: b.pa, len: PAGE }], 1);
    // Raw: PRP2 is garbage (unmapped, misaligned) and unused, so the command still succeeds.
    const h = m.dma.mapSingle(dev, b.pa, PAGE, 'from-device');
    const c = await drv.submitCommand({ opcode: NVME_CMD_READ, slba: 7, nlb: 7, prp1: h.addr, prp2: 0xdead123 });
    m.dma.unmapSingle(dev, h);
    expect(c).toMatchObject({ status: 'ok', sc: NVME_SC_SUCCESS, bytes: PAGE });
    expect(m.iommu.faults()).toEqual([]);
  });

  it('PRP1 with a page offset: 1 KiB in the middle of a page', async () => {
    const m = await machine();
    const { drv } = await nvme(m);
    const a = m.ram.alloc(PAGE);
    const b = m.ram.alloc(PAGE);
    m.ram.fill(b.pa, PAGE, 0xee);
    await roundTrip(m, drv, 3, [{ pa: a.pa + 1536, len: 1024 }], [{ pa: b.pa + 512, len: 1024 }], 2);
    // The bytes around the read buffer are untouched.
    expect(allBytes(m.ram.read(b.pa, 512), 0xee)).toBe(true);
    expect(allBytes(m.ram.read(b.pa + 1536, PAGE - 1536), 0xee)).toBe(true);
  });

  it('PRP1 + PRP2: an offset transfer that ends in the second page', async () => {
    const m = await machine();
    const { drv } = await nvme(m);
    const a = m.ram.alloc(2 * PAGE);
    const b = m.ram.alloc(2 * PAGE);
    await roundTrip(m, drv, 0, [{ pa: a.pa + 512, len: PAGE }], [{ pa: b.pa + 3072, len: PAGE }], 3);
  });

  it('PRP1 + PRP2: exactly two pages', async () => {
    const m = await machine();
    const { drv } = await nvme(m);
    const a = m.ram.alloc(2 * PAGE);
    const b = scatteredPages(m, 2);
    await roundTrip(m, drv, 100, [{ pa: a.pa, len: 2 * PAGE }], b, 4);
  });

  it('a PRP list (no IOMMU: five scattered pages stay five segments)', async () => {
    const m = await machine({ ...small, iommu: { enabled: false } });
    const { drv } = await nvme(m);
    const w = scatteredPages(m, 5);
    const r = scatteredPages(m, 5);
    const probe = m.dma.mapSg(drv.dev, w, 'to-device');
    expect(probe.segments).toHaveLength(5); // so the PRPs are PRP1 + a list of four
    m.dma.unmapSg(drv.dev, probe);
    await roundTrip(m, drv, 40, w, r, 5);
  });

  it('a chained PRP list: 600 scattered pages without an IOMMU (more than one list page)', async () => {
    const m = await machine({ ...small, iommu: { enabled: false }, swiotlb: { size: 0 } });
    const { dev, drv } = await nvme(m, { size: 8 * MiB });
    const w = scatteredPages(m, 600);
    const r = scatteredPages(m, 600);
    const before = dev.counters();
    await roundTrip(m, drv, 1000, w, r, 6);
    const after = dev.counters();
    // Data bytes only: 600 pages each way, one transfer each way.
    expect(after.bytesRead - before.bytesRead).toBe(600 * PAGE);
    expect(after.bytesWritten - before.bytesWritten).toBe(600 * PAGE);
    expect(after.transfers - before.transfers).toBe(2);
  });

  it('a PRP list page that cannot be allocated fails the I/O and gives back the list pages already taken', async () => {
    const m = await machine({ ...small, iommu: { enabled: false }, swiotlb: { size: 0 } });
    const { drv } = await nvme(m, { size: 8 * MiB });
    const w = scatteredPages(m, 600); // two chained list pages
    // Leave exactly one free page of RAM: the first list page fits, the second does not.
    let last: { pa: number; size: number } | null = null;
    for (const size of [1 * MiB, 64 * 1024, PAGE]) {
      for (;;) {
        try {
          last = m.ram.alloc(size);
        } catch {
          break;
        }
      }
    }
    m.ram.free(last!); // a page: the last loop's
    await expect(drv.write(0, w)).rejects.toMatchObject({ code: 'ENOMEM' });
    expect(drv.prpListsInUse()).toBe(0);
    expect(() => drv.close()).not.toThrow();
  });

  it('under a strict IOMMU mapSg merges scattered pages into one segment, and the PRPs follow it', async () => {
    const m = await machine();
    const { dev, drv } = await nvme(m, { dmaMask: 32 });
    const bufs = scatteredPages(m, 8, { above: 4 * GiB });
    const sg = m.dma.mapSg(dev, bufs, 'bidirectional');
    expect(sg.segments).toHaveLength(1);
    expect(sg.segments[0].len).toBe(8 * PAGE);
    const io = await drv.verifiedIo({ sg, len: 8 * PAGE, lba: 64, seed: 7 });
    m.dma.unmapSg(dev, sg);
    expect(io).toEqual({ verified: true, bytes: 16 * PAGE, detail: null });
    expect(m.stats().bouncedBytes).toBe(0);
  });

  it('verifiedIo through SWIOTLB: a 32-bit device, no IOMMU, buffers above 4 GiB keep their offsets', async () => {
    const m = await machine({ ...small, iommu: { enabled: false } });
    const { dev, drv } = await nvme(m, { dmaMask: 32 });
    const hi = m.ram.alloc(3 * PAGE, { above: 4 * GiB });
    const sg = m.dma.mapSg(dev, [{ pa: hi.pa + 512, len: 2 * PAGE }], 'bidirectional');
    expect(sg.entries[0].bounced).toBe(true);
    expect(sg.segments[0].addr % PAGE).toBe(512); // min_align_mask 4095, as nvme sets it
    const io = await drv.verifiedIo({ sg, len: 2 * PAGE, lba: 9, seed: 1 });
    m.dma.unmapSg(dev, sg);
    expect(io).toEqual({ verified: true, bytes: 4 * PAGE, detail: null });
    expect(m.stats().bouncedBytes).toBeGreaterThanOrEqual(4 * PAGE);
  });

  it('4 KiB blocks: NLB is 0-based and SLBA counts 4 KiB blocks', async () => {
    const m = await machine();
    const { drv } = await nvme(m, { lbaSize: 4096 });
    const a = m.ram.alloc(2 * PAGE);
    const data = pattern(2 * PAGE, 8);
    m.ram.write(a.pa, data);
    await drv.write(3, [{ pa: a.pa, len: 2 * PAGE }]);
    expect(same(drv.ns.media.subarray(3 * 4096, 5 * 4096), data)).toBe(true);
    expect(allBytes(drv.ns.media.subarray(0, 3 * 4096), 0)).toBe(true);
    await expect(drv.write(0, [{ pa: a.pa, len: 512 }])).rejects.toMatchObject({ code: 'EINVAL' }); // not a whole block
  });
});

describe('nvme: bad commands change nothing', () => {
  it('a PRP list entry with a page offset is PRP Offset Invalid, and the media stays as it was', async () => {
    const m = await machine();
    const { dev, drv } = await nvme(m);
    const data = m.ram.alloc(3 * PAGE);
    m.ram.write(data.pa, pattern(3 * PAGE, 9));
    const h = m.dma.mapSingle(dev, data.pa, 3 * PAGE, 'to-device');
    const list = m.dma.allocCoherent(dev, PAGE);
    const v = new DataView(new ArrayBuffer(16));
    v.setUint32(0, h.addr + PAGE + 512, true); // offset inside the page: not allowed after PRP1
    v.setUint32(8, h.addr + 2 * PAGE, true);
    m.ram.write(list.cpuAddr, new Uint8Array(v.buffer));
    const c = await drv.submitCommand({ opcode: NVME_CMD_WRITE, slba: 0, nlb: 3 * 8 - 1, prp1: h.addr, prp2: list.addr });
    expect(c).toMatchObject({ status: 'invalid', sc: NVME_SC_PRP_INVALID_OFFSET, statusName: 'PRP Offset Invalid', bytes: 0 });
    // PRP2 as the second page (a two-page transfer) must not carry an offset either.
    const c2 = await drv.submitCommand({ opcode: NVME_CMD_WRITE, slba: 0, nlb: 15, prp1: h.addr, prp2: h.addr + PAGE + 8 });
    expect(c2).toMatchObject({ status: 'invalid', sc: NVME_SC_PRP_INVALID_OFFSET });
    expect(allBytes(drv.ns.media.subarray(0, 3 * PAGE), 0)).toBe(true);
    m.dma.unmapSingle(dev, h);
    m.dma.freeCoherent(dev, list);
  });

  it('an LBA range past the namespace is LBA Out of Range (ERANGE), nothing written', async () => {
    const m = await machine();
    const { dev, drv } = await nvme(m, { size: 1 * MiB });
    expect(drv.ns.blocks).toBe(2048);
    const a = m.ram.alloc(2 * PAGE);
    m.ram.write(a.pa, pattern(2 * PAGE, 10));
    const mapped = m.stats().liveMappings;
    const err = await drv.write(2047, [{ pa: a.pa, len: 1024 }]).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERANGE' });
    expect(String((err as Error).message)).toMatch(/LBA Out of Range.*0x80/);
    expect(allBytes(drv.ns.media, 0)).toBe(true);
    expect(dev.counters().bytesRead).toBe(0);
    expect(m.stats().liveMappings).toBe(mapped); // the driver unmapped its buffers after the error
  });

  it('a PRP list page the IOMMU does not map: fault completion, Data Transfer Error, media untouched', async () => {
    const m = await machine();
    const { dev, drv } = await nvme(m);
    const data = m.ram.alloc(4 * PAGE);
    m.ram.write(data.pa, pattern(4 * PAGE, 11));
    const h = m.dma.mapSingle(dev, data.pa, 4 * PAGE, 'to-device');
    const gone = m.dma.allocCoherent(dev, PAGE);
    const listAddr = gone.addr;
    m.dma.freeCoherent(dev, gone); // strict: the list's IOVA is unmapped now
    const c = await drv.submitCommand({ opcode: NVME_CMD_WRITE, slba: 8, nlb: 4 * 8 - 1, prp1: h.addr, prp2: listAddr });
    expect(c).toMatchObject({ status: 'fault', sc: NVME_SC_DATA_XFER_ERROR, bytes: 0, fault: { addr: listAddr, access: 'read', reason: 'not-present' } });
    expect(allBytes(drv.ns.media, 0)).toBe(true);
    expect(m.iommu.faults()).toEqual([expect.objectContaining({ bdf: '0000:00:04.0', addr: listAddr, access: 'read' })]);
    expect(dev.counters()).toMatchObject({ bytesRead: 0, faults: 1, faultedBytes: 4 * PAGE });
    m.dma.unmapSingle(dev, h);
  });

  it('a read into a to-device (read-only) page faults before any byte lands in RAM', async () => {
    const m = await machine();
    const { dev, drv } = await nvme(m);
    const src = m.ram.alloc(2 * PAGE);
    m.ram.write(src.pa, pattern(2 * PAGE, 12));
    await drv.write(0, [{ pa: src.pa, len: 2 * PAGE }]);
    const dst = m.ram.alloc(2 * PAGE);
    m.ram.fill(dst.pa, 2 * PAGE, 0x77);
    const rw = m.dma.mapSingle(dev, dst.pa, PAGE, 'from-device');
    const ro = m.dma.mapSingle(dev, dst.pa + PAGE, PAGE, 'to-device');
    const c = await drv.submitCommand({ opcode: NVME_CMD_READ, slba: 0, nlb: 15, prp1: rw.addr, prp2: ro.addr });
    expect(c).toMatchObject({ status: 'fault', sc: NVME_SC_DATA_XFER_ERROR, fault: { addr: ro.addr, access: 'write', reason: 'permission' } });
    expect(allBytes(m.ram.read(dst.pa, 2 * PAGE), 0x77)).toBe(true); // not even the first, writable page
    m.dma.unmapSingle(dev, rw);
    m.dma.unmapSingle(dev, ro);
  });

  it('buffers that break the PRP page rule are refused before anything is mapped', async () => {
    const m = await machine();
    const { drv } = await nvme(m);
    const a = m.ram.alloc(2 * PAGE);
    const b = m.ram.alloc(2 * PAGE);
    const mapped = m.stats().liveMappings;
    await expect(drv.write(0, [{ pa: a.pa, len: 1024 }, { pa: b.pa, len: 1024 }])).rejects.toThrow(/buffer 0 ends at PA .* inside a page/);
    expect(m.stats().liveMappings).toBe(mapped);
  });
});

describe('nvme: machine config and counters', () => {
  it('namespace options are validated and name their field', async () => {
    const m = await machine();
    await expect(m.addDevice({ bdf: '00:05.0', model: 'nvme', nvme: { lbaSize: 1024 as 512, size: MiB } })).rejects.toThrow(/device\.nvme\.lbaSize/);
    await expect(m.addDevice({ bdf: '00:05.0', model: 'nvme', nvme: { lbaSize: 4096, size: 5000 } })).rejects.toThrow(/device\.nvme\.size: size must be a multiple of lbaSize/);
    await expect(m.addDevice({ bdf: '00:05.0', nvme: { lbaSize: 512, size: MiB } })).rejects.toThrow(/device\.nvme: only for model 'nvme'/);
  });

  it('m.stats() adds up: data bytes each way, one transfer per command, one descriptor per command', async () => {
    const m = await machine();
    const { dev, drv } = await nvme(m);
    const a = m.ram.alloc(16 * PAGE);
    for (let i = 0; i < 4; i++) await drv.write(i * 64, [{ pa: a.pa, len: (i + 1) * PAGE }]);
    for (let i = 0; i < 3; i++) await drv.read(i * 64, [{ pa: a.pa, len: 2 * PAGE }]);
    await drv.flush();
    const s = m.stats();
    expect(s.devices[dev.bdf]).toMatchObject({ bytesRead: 10 * PAGE, bytesWritten: 6 * PAGE, transfers: 7, descriptors: 8, faults: 0 });
    expect(s.bytes).toBe(16 * PAGE);
    expect(s.descriptors).toBe(8);
    drv.close();
  });

  it('copy() on an nvme device is refused: it is a copy-engine command', async () => {
    const m = await machine();
    const { dev } = await nvme(m);
    await expect(dev.copy({ src: dmaAddr(0), dst: dmaAddr(4096), len: 512 })).rejects.toMatchObject({ code: 'EINVAL' });
  });
});
