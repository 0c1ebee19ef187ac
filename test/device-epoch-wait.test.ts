import { describe, it, expect } from 'vitest';
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { DeviceEpochs } from '../src/iommu/device-epoch.js';

// A stand-in device in a real thread, using the compiled module (workers run compiled code).
const epochModule = pathToFileURL(resolve(__dirname, '../dist/src/iommu/device-epoch.js')).href;
const deviceSource = `
const { workerData } = require('node:worker_threads');
import(${JSON.stringify(epochModule)}).then(({ DeviceEpochs }) => {
  const e = DeviceEpochs.attach(workerData.epochs);
  const sig = new Int32Array(workerData.signal);
  e.enter(workerData.slot, 0);            // inside a transfer, generation 0
  Atomics.store(sig, 0, 1); Atomics.notify(sig, 0);
  Atomics.wait(sig, 2, 0, 50);             // the transfer takes a while
  Atomics.store(sig, 1, 1);                // its last write
  e.exit(workerData.slot, 0);
});`;

describe('strict unmap waiting on device epochs', () => {
  it('returns only after a device that was inside a transfer has left it', async () => {
    const epochs = DeviceEpochs.create(4);
    const slot = epochs.claim();
    const signal = new SharedArrayBuffer(12);
    const sig = new Int32Array(signal);
    const w = new Worker(deviceSource, { eval: true, workerData: { epochs: epochs.handle, slot, signal } });
    const exited = new Promise((r) => w.once('exit', r));
    while (Atomics.load(sig, 0) === 0) await new Promise((r) => setTimeout(r, 1));
    expect(epochs.isBusy(slot)).toBe(true);
    epochs.waitFor(slot, 1); // generation 1 was never observed by the device: wait for its exit
    expect(Atomics.load(sig, 1)).toBe(1); // the transfer's last write happened before we returned
    expect(epochs.isBusy(slot)).toBe(false);
    await exited;
  });
});
