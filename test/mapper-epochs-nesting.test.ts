/**
 * Mapper epochs (mapper-epochs.ts): a map section opened inside another one on the same thread —
 * a PageTable.detachEmptyTables claim callback that maps, or two TablePool instances of one pool
 * in one thread — must not end the outer section. Before DEPTH, the inner enter turned the odd
 * SEQ even, so a reclaimer saw the thread outside while it still held the outer section's table
 * pointers, and could free (and hand another domain) a table it was about to CAS into.
 * Each step is ordered by the test (the worker waits for a word); only the grace waits are bounded.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Worker } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { MAPPER_EPOCHS_BYTES, MapperEpochs } from '../src/iommu/mapper-epochs.js';
import { until } from './support.js';

const epochsModule = pathToFileURL(resolve(__dirname, '../dist/src/iommu/mapper-epochs.js')).href;
const BOUND_MS = 20; // a reclaim's grace bound: the worker is blocked on `go`, so the outcome is fixed

/** sig[0]: the step the worker reached; sig[1]: the step the test lets it go on to. */
const workerSource = `
const { workerData: wd } = require('node:worker_threads');
import(${JSON.stringify(epochsModule)}).then(({ MapperEpochs }) => {
  const sig = new Int32Array(wd.sig);
  const a = new MapperEpochs(wd.sab, 0);
  const b = new MapperEpochs(wd.sab, 0); // a second instance of the same thread: the same slot
  const step = (n, act) => {
    while (Atomics.load(sig, 1) < n) Atomics.wait(sig, 1, Atomics.load(sig, 1), 50);
    act();
    Atomics.store(sig, 0, n); Atomics.notify(sig, 0);
  };
  step(1, () => a.enter());  // outer section
  step(2, () => b.enter());  // inner section
  step(3, () => b.exit());   // inner ends: still inside the outer one
  step(4, () => a.exit());   // outer ends
});`;

const live = new Set<Worker>();
afterEach(async () => {
  await Promise.all([...live].map((w) => w.terminate()));
  live.clear();
});

describe('mapper epochs: nested sections', () => {
  it('a section inside a section keeps the thread inside until the outer exit', async () => {
    const sab = new SharedArrayBuffer(MAPPER_EPOCHS_BYTES);
    const sig = new Int32Array(new SharedArrayBuffer(8));
    const reclaimer = new MapperEpochs(sab, 0);
    const w = new Worker(workerSource, { eval: true, workerData: { sab, sig: sig.buffer } });
    live.add(w);
    const go = async (n: number) => {
      Atomics.store(sig, 1, n);
      Atomics.notify(sig, 1);
      await until(() => Atomics.load(sig, 0) === n);
    };
    await go(1);
    expect(reclaimer.synchronize(BOUND_MS)).not.toBeNull(); // inside the outer section
    await go(2);
    expect(reclaimer.synchronize(BOUND_MS)).not.toBeNull(); // inside both
    await go(3);
    expect(reclaimer.synchronize(BOUND_MS)).not.toBeNull(); // the inner exit did not end the outer
    await go(4);
    expect(reclaimer.synchronize(BOUND_MS)).toBeNull(); // outside: nothing to wait for
  });
});
