import { describe, it, expect } from 'vitest';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { Machine, MiB, GiB, dmaAddr, type MachineConfig } from '../src/index.js';
import type { Device } from '../src/device/device.js';
import { NicDriver } from '../src/device/nic.js';
import { crc32 } from '../src/device/crc32.js';
import { pattern, same, allBytes, closeAfterEach } from './support.js';
const { machines } = closeAfterEach();

const PAGE = 4096;
const small: MachineConfig = { ram: [{ base: 0, size: 16 * MiB }, { base: 4 * GiB, size: 8 * MiB }], swiotlb: { size: 1 * MiB } };
async function machine(cfg: MachineConfig = small): Promise<Machine> {
  const m = await Machine.create(cfg);
  machines.push(m);
  return m;
}

async function nic(m: Machine, dmaMask = 64): Promise<{ dev: Device; drv: NicDriver }> {
  const dev = await m.addDevice({ bdf: '00:05.0', model: 'nic', dmaMask, queueDepth: 16 });
  return { dev, drv: new NicDriver(m, dev) };
}

type Buf = { pa: number; len: number };

/** Buffers of the given lengths, each in its own page run at an odd offset, none adjacent. */
function scattered(m: Machine, lens: number[], offset = 24): Buf[] {
  return lens.map((len) => {
    const b = m.ram.alloc(Math.ceil((len + offset) / PAGE) * PAGE + PAGE);
    return { pa: b.pa + offset, len };
  });
}

function fillBufs(m: Machine, bufs: Buf[], data: Uint8Array): void {
  let k = 0;
  for (const b of bufs) {
    m.ram.write(b.pa, data.subarray(k, k + b.len));
    k += b.len;
  }
}

const crcRef = (b: Uint8Array): number => zlibCrc32(b) >>> 0;

describe('nic: TX gathers, RX scatters, the loopback wire joins them', () => {
  it('crc32 is Ethernet\'s (zlib\'s) CRC-32', () => {
    const b = pattern(10000, 1);
    expect(crc32(b)).toBe(crcRef(b));
    expect(crc32(new TextEncoder().encode('123456789'))).toBe(0xcbf43926);
  });

  it('gathers a frame from five scattered buffers: the device\'s checksum is the frame\'s', async () => {
    const m = await machine();
    const { dev, drv } = await nic(m);
    const tx = scattered(m, [100, 1500, 7, 4096, 333]);
    const frame = pattern(6036, 2);
    fillBufs(m, tx, frame);
    drv.postRx([{ pa: m.ram.alloc(2 * PAGE).pa, len: 2 * PAGE }]);
    const t = await drv.transmit(tx);
    expect(t).toEqual({ len: 6036, checksum: crcRef(frame) });
    const r = await drv.receive();
    expect(r).toMatchObject({ status: 'ok', len: 6036, checksum: crcRef(frame) });
    expect(same(r!.data, frame)).toBe(true);
    expect(dev.counters()).toMatchObject({ bytesRead: 6036, bytesWritten: 6036, transfers: 2, rxMissed: 0 });
    await drv.close();
  });

  it('scatters a received frame across three posted buffers in order, leaving the unused tail alone', async () => {
    const m = await machine({ ...small, iommu: { enabled: false } });
    const { drv } = await nic(m);
    const rx = scattered(m, [1000, 2000, 4096], 40);
    for (const b of rx) m.ram.fill(b.pa, b.len, 0xab);
    drv.postRx(rx);
    const src = m.ram.alloc(2 * PAGE);
    const frame = pattern(5000, 3);
    m.ram.write(src.pa, frame);
    await drv.transmit([{ pa: src.pa, len: 5000 }]);
    const r = await drv.receive();
    expect(r).toMatchObject({ status: 'ok', len: 5000, checksum: crcRef(frame) });
    expect(same(m.ram.read(rx[0].pa, 1000), frame.subarray(0, 1000))).toBe(true);
    expect(same(m.ram.read(rx[1].pa, 2000), frame.subarray(1000, 3000))).toBe(true);
    expect(same(m.ram.read(rx[2].pa, 2000), frame.subarray(3000, 5000))).toBe(true);
    expect(allBytes(m.ram.read(rx[2].pa + 2000, 2096), 0xab)).toBe(true);
    await drv.close();
  });

  it('loopback: frames are received in the order they were sent, each into the oldest posted buffers', async () => {
    const m = await machine();
    const { drv } = await nic(m);
    const frames = [pattern(64, 4), pattern(1514, 5), pattern(9000, 6)];
    for (let i = 0; i < 3; i++) drv.postRx(scattered(m, [PAGE, PAGE, PAGE], 0));
    for (const f of frames) {
      const b = m.ram.alloc(3 * PAGE);
      m.ram.write(b.pa, f);
      await drv.transmit([{ pa: b.pa, len: f.length }]);
    }
    for (const f of frames) {
      const r = await drv.receive();
      expect(r).toMatchObject({ status: 'ok', len: f.length, checksum: crcRef(f) });
      expect(same(r!.data, f)).toBe(true);
    }
    expect(await drv.receive()).toBeNull();
    await drv.close();
  });

  it('a frame with no RX buffer posted is dropped and counted as rxMissed; it never shows up later', async () => {
    const m = await machine();
    const { dev, drv } = await nic(m);
    const b = m.ram.alloc(PAGE);
    m.ram.write(b.pa, pattern(PAGE, 7));
    const t = await drv.transmit([{ pa: b.pa, len: 1000 }]);
    expect(t.len).toBe(1000);
    expect(dev.counters()).toMatchObject({ rxMissed: 1, bytesRead: 1000, bytesWritten: 0 });
    drv.postRx([{ pa: m.ram.alloc(PAGE).pa, len: PAGE }]);
    await drv.transmit([{ pa: b.pa, len: 200 }]);
    const r = await drv.receive();
    expect(r).toMatchObject({ status: 'ok', len: 200 }); // the second frame, not the dropped one
    expect(dev.counters().rxMissed).toBe(1);
    await drv.close();
  });

  it('a fault in a TX buffer sends nothing: the posted RX buffers wait for the next good frame', async () => {
    const m = await machine();
    const { dev, drv } = await nic(m);
    const a = m.ram.alloc(PAGE);
    const b = m.ram.alloc(PAGE);
    m.ram.write(a.pa, pattern(PAGE, 8));
    const rxBuf = m.ram.alloc(2 * PAGE);
    m.ram.fill(rxBuf.pa, 2 * PAGE, 0x5c);
    drv.postRx([{ pa: rxBuf.pa, len: 2 * PAGE }]); // mapped first, so it cannot reuse the IOVA freed below
    const ha = m.dma.mapSingle(dev, a.pa, PAGE, 'to-device');
    const hb = m.dma.mapSingle(dev, b.pa, PAGE, 'to-device');
    const gone = hb.addr;
    m.dma.unmapSingle(dev, hb);
    const c = await drv.transmitSegments([{ addr: ha.addr, len: PAGE }, { addr: gone, len: 512 }]);
    expect(c).toMatchObject({ status: 'fault', bytes: 0, fault: { addr: gone, access: 'read', reason: 'not-present' } });
    expect(m.iommu.faults()).toEqual([expect.objectContaining({ bdf: '0000:00:05.0', addr: gone, access: 'read' })]);
    expect(allBytes(m.ram.read(rxBuf.pa, 2 * PAGE), 0x5c)).toBe(true);
    expect(dev.counters()).toMatchObject({ bytesRead: 0, bytesWritten: 0, faults: 1, faultedBytes: PAGE + 512, rxMissed: 0 });
    await drv.transmitSegments([{ addr: ha.addr, len: 300 }]);
    const r = await drv.receive();
    expect(r).toMatchObject({ status: 'ok', len: 300 });
    expect(same(r!.data, pattern(PAGE, 8).subarray(0, 300))).toBe(true);
    m.dma.unmapSingle(dev, ha);
    await drv.close();
  });

  it('a frame longer than the posted buffers completes them "invalid" and writes nothing', async () => {
    const m = await machine();
    const { drv } = await nic(m);
    const rxBuf = m.ram.alloc(PAGE);
    m.ram.fill(rxBuf.pa, PAGE, 0x11);
    drv.postRx([{ pa: rxBuf.pa, len: 1000 }]);
    const src = m.ram.alloc(PAGE);
    await drv.transmit([{ pa: src.pa, len: 1001 }]);
    expect(await drv.receive()).toMatchObject({ status: 'invalid', len: 0 });
    expect(allBytes(m.ram.read(rxBuf.pa, PAGE), 0x11)).toBe(true);
    await drv.close();
  });

  it('close() takes back posted RX buffers (aborted) and leaves nothing mapped', async () => {
    const m = await machine();
    const { dev, drv } = await nic(m);
    const before = m.stats().liveMappings;
    drv.postRx([{ pa: m.ram.alloc(PAGE).pa, len: PAGE }]);
    drv.postRx([{ pa: m.ram.alloc(PAGE).pa, len: PAGE }]);
    expect(m.stats().liveMappings).toBeGreaterThan(before);
    await drv.close();
    expect(drv.rxPosted).toBe(0);
    expect(m.stats().liveMappings).toBe(before);
    expect(dev.inFlight()).toBe(0);
  });

  it('close() after the device failed still unmaps the posted RX buffers and frees the SG-table pool', async () => {
    const m = await machine();
    const { dev, drv } = await nic(m);
    const before = m.stats().liveMappings;
    drv.postRx([{ pa: m.ram.alloc(PAGE).pa, len: PAGE }]);
    drv.postRx([{ pa: m.ram.alloc(PAGE).pa, len: PAGE }]);
    dev.injectFault('throw');
    const b = m.ram.alloc(PAGE);
    await expect(drv.transmit([{ pa: b.pa, len: 100 }])).rejects.toMatchObject({ code: 'EIO' });
    expect(dev.error).not.toBeNull();
    await drv.close();
    expect(drv.rxPosted).toBe(0);
    expect(m.stats().liveMappings).toBe(before);
  });

  it('a machine closed with RX buffers still posted ends cleanly; receive() then reports the device closed', async () => {
    const m = await machine();
    const { drv } = await nic(m);
    drv.postRx([{ pa: m.ram.alloc(PAGE).pa, len: PAGE }]);
    await m.close();
    await expect(drv.receive()).rejects.toMatchObject({ code: 'EIO' });
  });

  it('RX buffers posted with more room than the largest frame receive a frame (capacity is not a frame length)', async () => {
    const m = await machine();
    const { drv } = await nic(m);
    const big = m.ram.alloc(2 * 65536);
    drv.postRx([{ pa: big.pa, len: 65536 }, { pa: big.pa + 65536, len: 65536 }]);
    const src = m.ram.alloc(PAGE);
    const frame = pattern(1000, 9);
    m.ram.write(src.pa, frame);
    await drv.transmit([{ pa: src.pa, len: 1000 }]);
    const r = await drv.receive();
    expect(r).toMatchObject({ status: 'ok', len: 1000, checksum: crcRef(frame) });
    expect(same(r!.data, frame)).toBe(true);
    await drv.close();
  });

  it('postRx keeps one ring slot for TX', async () => {
    const m = await machine();
    const { drv } = await nic(m); // queueDepth 16
    for (let i = 0; i < 15; i++) drv.postRx([{ pa: m.ram.alloc(PAGE).pa, len: 64 }]);
    expect(() => drv.postRx([{ pa: m.ram.alloc(PAGE).pa, len: 64 }])).toThrow(/one slot stays for TX/);
    const b = m.ram.alloc(PAGE);
    await drv.transmit([{ pa: b.pa, len: 64 }]); // still goes out, into the first posted buffers
    expect(await drv.receive()).toMatchObject({ status: 'ok', len: 64 });
    await drv.close();
  });
});

describe('nic and nvme: the verified-I/O entry points for workloads', () => {
  it('nic.verifiedIo over caller-mapped buffers: bounced through SWIOTLB for a 32-bit device above 4 GiB', async () => {
    const m = await machine({ ...small, iommu: { enabled: false } });
    const { drv, dev } = await nic(m, 32);
    const tx = m.dma.mapSg(dev, [{ pa: m.ram.alloc(2 * PAGE, { above: 4 * GiB }).pa, len: 6000 }], 'to-device');
    const rx = m.dma.mapSg(dev, [{ pa: m.ram.alloc(2 * PAGE, { above: 4 * GiB }).pa, len: 8192 }], 'from-device');
    expect(tx.entries[0].bounced && rx.entries[0].bounced).toBe(true);
    const io = await drv.verifiedIo({ tx, rx, len: 6000, seed: 3 });
    expect(io).toEqual({ verified: true, bytes: 12000, detail: null });
    m.dma.unmapSg(dev, tx);
    m.dma.unmapSg(dev, rx);
    expect(m.stats().bouncedBytes).toBeGreaterThanOrEqual(12000);
    await drv.close();
  });

  it('an RX buffer the IOMMU does not map: the frame is lost, the RX completes "fault", nothing written', async () => {
    const m = await machine();
    const { drv, dev } = await nic(m);
    const tx = m.dma.mapSg(dev, [{ pa: m.ram.alloc(PAGE).pa, len: PAGE }], 'to-device');
    const rxBuf = m.ram.alloc(PAGE);
    m.ram.fill(rxBuf.pa, PAGE, 0x42);
    const rx = m.dma.mapSg(dev, [{ pa: rxBuf.pa, len: PAGE }], 'from-device');
    const broken = { ...rx, segments: [{ addr: rx.segments[0].addr, len: 1024 }, { addr: dmaAddr(2 ** 40), len: 1024 }] };
    const io = await drv.verifiedIo({ tx, rx: broken, len: 2000 });
    expect(io).toEqual({ verified: false, bytes: 2000, detail: 'RX fault' });
    expect(allBytes(m.ram.read(rxBuf.pa, PAGE), 0x42)).toBe(true); // not even the first, mapped buffer
    expect(dev.counters()).toMatchObject({ bytesRead: 2000, bytesWritten: 0, faults: 1, rxMissed: 0 });
    m.dma.unmapSg(dev, tx);
    m.dma.unmapSg(dev, rx);
    await drv.close();
  });

  it('nic.verifiedIo on a device that fails mid-I/O rejects with its EIO and leaves no rejection unhandled', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      const m = await machine();
      const { drv, dev } = await nic(m);
      const tx = m.dma.mapSg(dev, [{ pa: m.ram.alloc(PAGE).pa, len: PAGE }], 'to-device');
      const rx = m.dma.mapSg(dev, [{ pa: m.ram.alloc(PAGE).pa, len: PAGE }], 'from-device');
      dev.injectFault('throw', { after: 1 }); // the TX, after the RX descriptor was posted
      await expect(drv.verifiedIo({ tx, rx, len: 512 })).rejects.toMatchObject({ code: 'EIO' });
      await new Promise((r) => setImmediate(r)); // unhandled rejections are reported once the microtask queue drains
      expect(unhandled).toEqual([]);
      m.dma.unmapSg(dev, tx);
      m.dma.unmapSg(dev, rx);
      await drv.close();
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('nic.verifiedIo reports a TX fault as not verified', async () => {
    const m = await machine();
    const { drv, dev } = await nic(m);
    const txBuf = m.ram.alloc(PAGE);
    const tx = m.dma.mapSg(dev, [{ pa: txBuf.pa, len: PAGE }], 'to-device');
    const rx = m.dma.mapSg(dev, [{ pa: m.ram.alloc(PAGE).pa, len: PAGE }], 'from-device');
    // A table whose DMA segment points where nothing is mapped (a runner's bug, or a race).
    const broken = { ...tx, segments: [{ addr: dmaAddr(2 ** 40), len: PAGE }] };
    const io = await drv.verifiedIo({ tx: broken, rx, len: 512 });
    expect(io).toEqual({ verified: false, bytes: 0, detail: 'TX fault' });
    expect(m.iommu.faults()).toEqual([expect.objectContaining({ addr: 2 ** 40, access: 'read' })]);
    expect(dev.inFlight()).toBe(0); // its RX buffers came back (aborted)
    m.dma.unmapSg(dev, tx);
    m.dma.unmapSg(dev, rx);
    await drv.close();
  });
});
