/**
 * Device.setInterruptCoalescing (NVMe's aggregation threshold, ethtool's rx-frames): the driver's
 * completion pump is woken once that many completions are in, never waits for more than it has
 * outstanding, and is woken when the device goes idle with less, so no completion is held back.
 */
import { describe, it, expect } from 'vitest';
import { Machine, MiB, dmaAddr, NicDriver } from '../src/index.js';
import { closeAfterEach } from './support.js';
const { machines } = closeAfterEach();


async function machine() {
  const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
  machines.push(m);
  return m;
}

describe('interrupt coalescing', () => {
  it('refuses a threshold outside [1, queue depth] with EINVAL naming the device', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0', queueDepth: 8 });
    for (const bad of [0, 9, 1.5, Number.NaN]) {
      expect(() => dev.setInterruptCoalescing(bad)).toThrow(expect.objectContaining({ code: 'EINVAL', message: expect.stringMatching(/0000:00:03\.0.*\[1, 8\]/) }));
    }
  });

  it('a lone descriptor completes although the threshold is higher than what is outstanding', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0', queueDepth: 16 });
    dev.setInterruptCoalescing(16);
    const buf = m.ram.alloc(8192);
    const h = m.dma.mapSingle(dev, buf.pa, 8192, 'bidirectional');
    for (let i = 0; i < 3; i++) {
      expect(await dev.fill({ dst: h.addr, len: 8192, value: 7 + i })).toMatchObject({ status: 'ok' });
      expect(m.ram.read(buf.pa, 8192).every((b) => b === 7 + i)).toBe(true);
    }
    m.dma.unmapSingle(dev, h);
  });

  it('batches larger and smaller than the threshold all complete, in order, with their data', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:03.0', queueDepth: 16 });
    dev.setInterruptCoalescing(5);
    const buf = m.ram.alloc(64 * 4096);
    const h = m.dma.mapSingle(dev, buf.pa, 64 * 4096, 'bidirectional');
    for (const n of [1, 4, 5, 13, 40]) {
      const done = await Promise.all(Array.from({ length: n }, (_, i) => dev.fill({ dst: dmaAddr(h.addr + i * 4096), len: 4096, value: (n + i) & 255 })));
      expect(done.map((c) => c.status)).toEqual(Array(n).fill('ok'));
      expect(done.map((c) => c.id)).toEqual([...done.map((c) => c.id)].sort((a, b) => a - b));
      for (let i = 0; i < n; i++) expect(m.ram.read(buf.pa + i * 4096, 4096).every((b) => b === ((n + i) & 255))).toBe(true);
    }
    m.dma.unmapSingle(dev, h);
  });

  it('a NIC whose RX completions wait for a frame still gets TX and RX through with coalescing on', async () => {
    const m = await machine();
    const dev = await m.addDevice({ bdf: '00:05.0', model: 'nic', queueDepth: 16 });
    dev.setInterruptCoalescing(8);
    const nic = new NicDriver(m, dev);
    try {
      const tx = m.dma.mapSg(dev, [{ pa: m.ram.alloc(8192).pa, len: 6000 }], 'to-device');
      const rx = m.dma.mapSg(dev, [{ pa: m.ram.alloc(8192).pa, len: 8192 }], 'from-device');
      expect(await nic.verifiedIo({ tx, rx, len: 6000, seed: 5 })).toEqual({ verified: true, bytes: 12000, detail: null });
      m.dma.unmapSg(dev, tx);
      m.dma.unmapSg(dev, rx);
    } finally {
      await nic.close();
    }
  });
});
