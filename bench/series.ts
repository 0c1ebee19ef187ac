/**
 * Chart series: the measured points behind the report's charts, measured in the same run as the
 * figures and written beside them with --json (`series`). Two kinds:
 *   lines  y over x (x may be a log2 axis), several named lines, optional marks on x
 *          (e.g. where the bounce and IOMMU curves cross);
 *   bars   named bars against an optional goal line (scaling: 1 vs 2 threads, 1 vs 2 devices).
 */

export interface Point {
  x: number;
  y: number;
}

export interface Axis {
  label: string;
  unit: string;
  /** Logarithmic (base 2) axis. */
  log?: boolean;
}

export interface LineSeries {
  kind: 'lines';
  id: string;
  title: string;
  x: Axis;
  y: Axis;
  lines: Array<{ name: string; points: Point[] }>;
  marks?: Array<{ x: number; label: string }>;
  note?: string;
}

export interface BarSeries {
  kind: 'bars';
  id: string;
  title: string;
  y: Axis;
  bars: Array<{ name: string; value: number }>;
  goal?: { value: number; label: string };
  note?: string;
}

export type Series = LineSeries | BarSeries;
