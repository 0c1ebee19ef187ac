import { describe, it, expect } from 'vitest';
import { ProgressLine, formatProgress } from '../src/scenario/progress.js';

const sample = { transfers: 1200, bytes: 3e9, faults: 2, elapsedMs: 1500, fraction: 0.25 };

function sink(isTTY: boolean) {
  const out: string[] = [];
  return { out, stream: { isTTY, write: (t: string) => out.push(t) } };
}

describe('progress line', () => {
  it('shows transfers, GB/s, faults, elapsed and ETA', () => {
    expect(formatProgress(sample)).toBe('1200 transfers  2.00 GB/s  2 faults  0:02 elapsed  ETA 0:05');
  });

  it('shows an unknown ETA before anything is done', () => {
    expect(formatProgress({ ...sample, fraction: 0 })).toMatch(/ETA --:--$/);
  });

  it('writes at most once per interval on a TTY and ends the line once', () => {
    const { out, stream } = sink(true);
    let now = 0;
    const line = new ProgressLine(stream, { minIntervalMs: 250, now: () => now });
    for (now = 0; now < 1000; now += 50) line.update(sample); // 20 updates over 1 s
    expect(out).toHaveLength(4);
    expect(out[0]).toMatch(/^\r1200 transfers/);
    line.done();
    expect(out[out.length - 1]).toBe('\n');
  });

  it('writes nothing when stderr is not a TTY', () => {
    const { out, stream } = sink(false);
    const line = new ProgressLine(stream);
    line.update(sample);
    line.done();
    expect(out).toEqual([]);
  });

  it('writes nothing with --json', () => {
    const { out, stream } = sink(true);
    const line = new ProgressLine(stream, { json: true });
    line.update(sample);
    line.done();
    expect(out).toEqual([]);
  });
});
