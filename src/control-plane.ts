/**
 * The control plane: comlink over worker_threads, for create / configure / start / stop / stats.
 * Never on the data path (a round trip costs 25–55 µs; the data path is rings in guest RAM and
 * doorbells in shared memory). The only module that imports comlink.
 */
import { Worker, parentPort } from 'node:worker_threads';
import * as Comlink from 'comlink/dist/esm/comlink.mjs';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import type { Remote } from 'comlink';

export type { Remote };

export interface ControlledWorker<T> {
  worker: Worker;
  remote: Remote<T>;
  /** Resolves with the exit code once the worker thread has ended. */
  exited: Promise<number>;
  /** Releases the comlink proxy and its port. */
  release(): void;
}

export function spawnControlled<T>(url: URL, name: string): ControlledWorker<T> {
  const worker = new Worker(url, { name });
  const exited = new Promise<number>((resolve) => worker.once('exit', resolve));
  const remote = Comlink.wrap<T>(nodeEndpoint(worker));
  let released = false;
  return {
    worker,
    remote,
    exited,
    release() {
      if (released) return;
      released = true;
      try {
        remote[Comlink.releaseProxy]();
      } catch {
        // the worker may already be gone; nothing stays open either way
      }
    },
  };
}

/** Worker side: serve `api` to the parent thread. */
export function exposeToParent(api: object): void {
  if (!parentPort) throw new Error('exposeToParent must run inside a worker thread');
  Comlink.expose(api, nodeEndpoint(parentPort));
}
