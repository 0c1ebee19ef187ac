/**
 * Starts test workers that all attach first and then begin together: each gets `startFlag`
 * in its workerData, bumps word 1 when it is ready and waits (Atomics.wait) for word 0 to
 * become 1. Resolves with every worker's posted result; a worker that errors or exits without
 * one rejects. Workers are tracked in `live` so afterEach can terminate what is left.
 */
import { Worker } from 'node:worker_threads';
import { workerUrl } from '../src/worker-url.js';

export async function runWorkersTogether<R>(name: string, datas: object[], live: Set<Worker>): Promise<R[]> {
  const startFlag = new SharedArrayBuffer(8);
  const flag = new Int32Array(startFlag);
  let ended = 0;
  const results = datas.map((d) => {
    const w = new Worker(workerUrl(name), { workerData: { ...d, startFlag } });
    live.add(w);
    return new Promise<R>((resolve, reject) => {
      w.once('message', (r: R) => {
        ended++;
        resolve(r);
      });
      w.once('error', (err) => {
        ended++;
        reject(err);
      });
      w.once('exit', (code) => {
        ended++;
        live.delete(w);
        reject(new Error(`${name} exited with code ${code} before posting a result`)); // no-op if resolved
      });
    });
  });
  // Wait (without spinning) until every worker is attached and parked on GO.
  while (Atomics.load(flag, 1) < datas.length) {
    if (ended > 0) break; // a worker failed before it got ready: its result says why
    const seen = Atomics.load(flag, 1);
    const r = Atomics.waitAsync(flag, 1, seen, 100);
    if (r.async) await r.value;
  }
  Atomics.store(flag, 0, 1);
  Atomics.notify(flag, 0);
  return Promise.all(results);
}
