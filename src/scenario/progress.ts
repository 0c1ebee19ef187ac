/**
 * The progress line of `dmaemu run` on a terminal: transfers, GB/s, faults, elapsed and ETA,
 * rewritten in place on stderr at most every `minIntervalMs` (default 250 ms, ~4×/s). Nothing is
 * written when the stream is not a TTY or the output is JSON.
 */
import type { ScenarioProgress } from './runner.js';

export interface ProgressStream {
  isTTY?: boolean;
  write(text: string): unknown;
}

export class ProgressLine {
  private last = -Infinity;
  private shown = false;
  private readonly enabled: boolean;
  private readonly minIntervalMs: number;
  private readonly now: () => number;

  constructor(
    private readonly out: ProgressStream,
    options: { json?: boolean; minIntervalMs?: number; now?: () => number } = {},
  ) {
    this.enabled = out.isTTY === true && !options.json;
    this.minIntervalMs = options.minIntervalMs ?? 250;
    this.now = options.now ?? (() => performance.now());
  }

  /** Shows `p` unless the last line is younger than the minimum interval. */
  update(p: ScenarioProgress): void {
    if (!this.enabled) return;
    const t = this.now();
    if (t - this.last < this.minIntervalMs) return;
    this.last = t;
    this.shown = true;
    this.out.write(`\r${formatProgress(p)}\x1b[K`);
  }

  /** Ends the line (once something was shown). */
  done(): void {
    if (this.enabled && this.shown) this.out.write('\n');
    this.shown = false;
  }
}

export function formatProgress(p: ScenarioProgress): string {
  const s = p.elapsedMs / 1000;
  const gbps = s > 0 ? p.bytes / s / 1e9 : 0;
  const eta = p.fraction > 0 ? (s * (1 - p.fraction)) / p.fraction : NaN;
  return `${p.transfers} transfers  ${gbps.toFixed(2)} GB/s  ${p.faults} faults  ${clock(s)} elapsed  ETA ${Number.isFinite(eta) ? clock(eta) : '--:--'}`;
}

function clock(seconds: number): string {
  const t = Math.max(0, Math.round(seconds));
  return `${Math.floor(t / 60)}:${String(t % 60).padStart(2, '0')}`;
}
