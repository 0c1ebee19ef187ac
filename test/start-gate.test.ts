import { describe, it, expect } from 'vitest';
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { StartGate } from '../src/dma/start-gate.js';

const gateModule = pathToFileURL(resolve(__dirname, '../dist/src/dma/start-gate.js')).href;

describe('StartGate', () => {
  it('holds a party until every party has arrived (bounded wait returns false)', () => {
    const gate = StartGate.create(2);
    expect(gate.arriveAndWait(5)).toBe(false);
  });

  it('counts one arrival per instance however often it arrives', () => {
    const gate = StartGate.create(2);
    gate.arrive();
    gate.arrive();
    expect(StartGate.attach(gate.handle).arriveAndWait(10_000)).toBe(true);
    expect(StartGate.attach(gate.handle).arriveAndWait(5)).toBe(true); // already open
  });

  it('wakes a party sleeping in another thread when the last one arrives', async () => {
    const gate = StartGate.create(2);
    const w = new Worker(
      `const { workerData, parentPort } = require('node:worker_threads');
       import(${JSON.stringify(gateModule)}).then(({ StartGate }) => parentPort.postMessage(StartGate.attach(workerData).arriveAndWait(20_000)));`,
      { eval: true, workerData: gate.handle },
    );
    try {
      const opened = new Promise((res, rej) => { w.once('message', res); w.once('error', rej); });
      gate.arrive();
      expect(await opened).toBe(true);
    } finally {
      await w.terminate();
    }
  });

  it('refuses a party count that is not a positive integer', () => {
    expect(() => StartGate.create(0)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  });
});
