/**
 * How a workload's driver maps its host buffers — the three strategies drivers use:
 *   per-transfer  dma_map_single / dma_map_sg before each I/O and unmap after it (most drivers)
 *   cached        a buffer is mapped the first time it is used and the mapping is kept and
 *                 reused, with dma_sync_*_for_device / _for_cpu around each I/O; unmapped at the
 *                 end (page_pool's recycling of mapped pages)
 *   pool          every buffer of a role is carved from one arena mapped once at the start (a
 *                 NIC's pre-mapped RX ring); syncs around each I/O
 * begin() gives the DMA segments of the buffer's first `len` bytes; end() hands them back to the
 * CPU (after it, a from-device buffer holds what the device wrote). Map and unmap calls are timed
 * in µs; bytes that went through a bounce buffer are counted.
 */
import type { DmaApi, DmaMapping } from '../dma/dma-api.js';
import type { DmaDevice } from '../dma/dma-device.js';
import type { DmaSegment, DmaSgTable, SgEntry } from '../dma/scatterlist.js';
import { type DmaAddr, type Pa, dmaAddr } from '../addresses.js';
import { DmaError } from '../errors.js';
import type { HostBuffer } from './host-buffer.js';
import type { MappingStrategy } from './scenario-schema.js';

export interface MapperStats {
  /** µs per map call (mapSingle or mapSg). */
  mapUs: number[];
  /** µs per unmap call. */
  unmapUs: number[];
  /** Bytes of I/O that went through bounce buffers. */
  bouncedBytes: number;
}

export interface BufferMapper {
  begin(buf: HostBuffer, len: number): readonly DmaSegment[];
  end(buf: HostBuffer, len: number): void;
  /** Unmaps what is still mapped. */
  close(): void;
}

export interface MapperEnv {
  dma: DmaApi;
  dev: DmaDevice;
  stats: MapperStats;
}

/** The pieces covering a buffer's first `len` bytes, the last one cut to fit. */
export function prefix(pieces: readonly SgEntry[], len: number): SgEntry[] {
  const out: SgEntry[] = [];
  for (const p of pieces) {
    if (len <= 0) break;
    const n = Math.min(p.len, len);
    out.push({ pa: p.pa, len: n });
    len -= n;
  }
  return out;
}

/** One kept mapping: a single mapping or an sg table, and each piece's DMA address. */
interface Kept {
  mapping: DmaMapping | DmaSgTable;
  addrOf: (pa: number) => number;
  bounced: boolean;
}

export function createBufferMapper(strategy: MappingStrategy, env: MapperEnv, arenas: readonly HostBuffer[] = []): BufferMapper {
  if (strategy === 'per-transfer') return perTransfer(env);
  const kept = new Map<HostBuffer, Kept>();
  const all: Kept[] = [];
  const mapWhole = (buf: HostBuffer): Kept => {
    const k = mapKept(env, buf);
    all.push(k);
    return k;
  };
  // pool: each arena is mapped now, once; its buffers are found by the arena that holds their first page.
  const pools: Array<{ arena: HostBuffer; k: Kept }> = [];
  try {
    if (strategy === 'pool') for (const a of arenas) pools.push({ arena: a, k: mapWhole(a) });
  } catch (e) {
    for (const k of all.splice(0)) unmapKept(env, k); // nothing half-mapped stays behind
    throw e;
  }
  const keptFor = (buf: HostBuffer): Kept => {
    let k = kept.get(buf);
    if (!k) {
      if (strategy === 'pool') {
        const first = Number(buf.pieces[0].pa);
        const pool = pools.find((p) => p.arena.dir === buf.dir && p.arena.pieces.some((a) => first >= Number(a.pa) && first < Number(a.pa) + a.len));
        if (!pool) throw new DmaError('EINVAL', `pool mapping for device ${env.dev.bdf}: buffer at PA ${first} lies in no pool arena`);
        k = pool.k;
      } else {
        k = mapWhole(buf);
      }
      kept.set(buf, k);
    }
    return k;
  };
  const sync = (buf: HostBuffer, len: number, forCpu: boolean) => {
    const k = keptFor(buf);
    for (const p of prefix(buf.pieces, len)) {
      const addr = dmaAddr(k.addrOf(Number(p.pa)));
      if (forCpu) env.dma.syncForCpu(env.dev, addr, p.len, buf.dir);
      else env.dma.syncForDevice(env.dev, addr, p.len, buf.dir);
    }
    if (!forCpu && k.bounced) env.stats.bouncedBytes += len;
  };
  return {
    begin(buf, len) {
      const k = keptFor(buf);
      sync(buf, len, false);
      return merge(prefix(buf.pieces, len).map((p) => ({ addr: dmaAddr(k.addrOf(Number(p.pa))), len: p.len })));
    },
    end(buf, len) {
      sync(buf, len, true);
    },
    close() {
      for (const k of all.splice(0)) unmapKept(env, k);
      kept.clear();
    },
  };
}

function perTransfer(env: MapperEnv): BufferMapper {
  const live = new Map<HostBuffer, DmaMapping | DmaSgTable>();
  return {
    begin(buf, len) {
      const pieces = prefix(buf.pieces, len);
      const t = performance.now();
      if (pieces.length === 1) {
        const m = env.dma.mapSingle(env.dev, pieces[0].pa as Pa, len, buf.dir);
        env.stats.mapUs.push((performance.now() - t) * 1000);
        live.set(buf, m);
        if (m.bounced) env.stats.bouncedBytes += len;
        return [{ addr: m.addr, len }];
      }
      const sg = env.dma.mapSg(env.dev, pieces, buf.dir);
      env.stats.mapUs.push((performance.now() - t) * 1000);
      live.set(buf, sg);
      if (sg.entries.some((e) => e.bounced)) env.stats.bouncedBytes += len;
      return sg.segments;
    },
    end(buf) {
      const m = live.get(buf);
      if (!m) return;
      live.delete(buf);
      unmapTimed(env, m);
    },
    close() {
      for (const m of live.values()) unmapTimed(env, m);
      live.clear();
    },
  };
}

function mapKept(env: MapperEnv, buf: HostBuffer): Kept {
  const t = performance.now();
  if (buf.pieces.length === 1) {
    const p = buf.pieces[0];
    const m = env.dma.mapSingle(env.dev, p.pa as Pa, p.len, buf.dir);
    env.stats.mapUs.push((performance.now() - t) * 1000);
    return { mapping: m, addrOf: (pa) => Number(m.addr) + (pa - Number(p.pa)), bounced: m.bounced };
  }
  const sg = env.dma.mapSg(env.dev, buf.pieces, buf.dir);
  env.stats.mapUs.push((performance.now() - t) * 1000);
  const byPa = new Map(sg.entries.map((e) => [Number(e.pa), Number(e.addr)]));
  return {
    mapping: sg,
    addrOf: (pa) => {
      const a = byPa.get(pa);
      if (a === undefined) throw new DmaError('EINVAL', `cached mapping for device ${env.dev.bdf}: PA ${pa} is not a page of the mapped buffer`);
      return a;
    },
    bounced: sg.entries.some((e) => e.bounced),
  };
}

function unmapKept(env: MapperEnv, k: Kept): void {
  unmapTimed(env, k.mapping);
}

function unmapTimed(env: MapperEnv, m: DmaMapping | DmaSgTable): void {
  const t = performance.now();
  if ('segments' in m) env.dma.unmapSg(env.dev, m);
  else env.dma.unmapSingle(env.dev, m);
  env.stats.unmapUs.push((performance.now() - t) * 1000);
}

/** Adjacent DMA ranges become one segment (what the device is told). */
function merge(segs: DmaSegment[]): DmaSegment[] {
  const out: Array<{ addr: DmaAddr; len: number }> = [];
  for (const s of segs) {
    const last = out[out.length - 1];
    if (last && Number(last.addr) + last.len === Number(s.addr)) last.len += s.len;
    else out.push({ addr: s.addr, len: s.len });
  }
  return out;
}
