/**
 * The machine's own copy-scaling limit, as a baseline for the device scaling figure: plain worker
 * threads copying `len` bytes with copyWithin in a loop over guest RAM, no emulator code at all.
 * Thread i copies [base + 2i·len, +len) to [base + (2i+1)·len, +len) — its own region of `sab`.
 * Control is a message per run (not a data path: one per measurement window).
 */
import { Worker } from 'node:worker_threads';

const SOURCE = `
const { parentPort, workerData: w } = require('node:worker_threads');
const u8 = new Uint8Array(w.sab);
const from = w.base + 2 * w.index * w.len;
parentPort.on('message', (ms) => {
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < ms) { u8.copyWithin(from + w.len, from, from + w.len); n++; }
  parentPort.postMessage((n * w.len) / ((performance.now() - t0) * 1e6));
});`;

export class RawCopiers {
  private constructor(private readonly workers: Worker[]) {}

  /** Two copier threads over `sab` from byte `base` (4 × len bytes are theirs), warmed up. */
  static async start(sab: SharedArrayBuffer, base: number, len: number): Promise<RawCopiers> {
    const r = new RawCopiers([0, 1].map((index) => new Worker(SOURCE, { eval: true, workerData: { sab, base, len, index } })));
    await r.run(2, 50);
    return r;
  }

  /** Aggregate GB/s of the first `threads` copiers running at once for `ms`. */
  async run(threads: 1 | 2, ms: number): Promise<number> {
    const rates = await Promise.all(
      this.workers.slice(0, threads).map(
        (w) =>
          new Promise<number>((resolve, reject) => {
            const onMessage = (rate: number) => {
              w.off('error', reject);
              resolve(rate);
            };
            w.once('message', onMessage);
            w.once('error', reject);
            w.postMessage(ms);
          }),
      ),
    );
    return rates.reduce((a, b) => a + b, 0);
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
