import { describe, it, expect } from 'vitest';
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { Machine, MiB, dmaAddr } from '../src/index.js';
import { pattern, same } from './support.js';

const domainModule = pathToFileURL(resolve(__dirname, '../dist/src/iommu/domain.js')).href;
// A driver thread: attaches to the domain by its handle, maps on request, unmaps on request.
const driverSource = `
const { parentPort, workerData } = require('node:worker_threads');
import(${JSON.stringify(domainModule)}).then(({ Domain }) => {
  const d = Domain.attach(workerData.domain);
  parentPort.on('message', (msg) => {
    try {
      if (msg.op === 'map') d.map(msg.iova, msg.pa, msg.size, 3);
      if (msg.op === 'unmap') parentPort.postMessage({ ok: true, bytes: d.unmap(msg.iova, msg.size) });
      else parentPort.postMessage({ ok: true, phys: d.iovaToPhys(msg.iova) });
    } catch (e) { parentPort.postMessage({ ok: false, code: e.code, message: e.message }); }
  });
  parentPort.postMessage({ ready: true });
});`;

function ask(w: Worker, msg: object): Promise<{ ok: boolean; bytes?: number; phys?: number; code?: string }> {
  return new Promise((res) => {
    w.once('message', res);
    w.postMessage(msg);
  });
}

describe('domain handles', () => {
  it('let another thread map and strictly unmap what a device DMAs through', async () => {
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
    try {
      const dev = await m.addDevice({ bdf: '00:03.0' });
      const domain = m.iommu.domainOf(dev)!;
      const a = m.ram.alloc(8192);
      m.ram.write(a.pa, pattern(4096, 9));
      const w = new Worker(driverSource, { eval: true, workerData: { domain: domain.handle } });
      try {
        await new Promise((r) => w.once('message', r));
        const IOVA = 0x40000000;
        expect(await ask(w, { op: 'map', iova: IOVA, pa: a.pa, size: 8192 })).toMatchObject({ ok: true, phys: a.pa });
        expect(domain.iovaToPhys(IOVA as never)).toBe(a.pa); // the main thread sees the worker's PTEs
        await dev.copy({ src: dmaAddr(IOVA), dst: dmaAddr(IOVA + 4096), len: 4096 });
        expect(same(m.ram.read(a.pa + 4096, 4096), pattern(4096, 9))).toBe(true);
        expect(await ask(w, { op: 'map', iova: IOVA, pa: a.pa, size: 4096 })).toMatchObject({ ok: false, code: 'EEXIST' });
        expect(await ask(w, { op: 'unmap', iova: IOVA, size: 8192 })).toMatchObject({ ok: true, bytes: 8192 });
        await expect(dev.copy({ src: dmaAddr(IOVA), dst: dmaAddr(IOVA + 4096), len: 4096 })).rejects.toMatchObject({ code: 'EFAULT' });
      } finally {
        await w.terminate();
      }
    } finally {
      await m.close();
    }
  });
});
