/**
 * Micro-measurement (not a test): ns per page-table walk and per map+unmap of one 4 KiB page.
 * Run: npx tsc -p tsconfig.json && node dist/bench/page-table-walk.js
 */
import { iova, pa } from '../src/addresses.js';
import { TablePool } from '../src/iommu/table-pool.js';
import { IOMMU_READ, IOMMU_WRITE, PageTable, SZ_1G, SZ_2M, SZ_4K, walk } from '../src/iommu/page-table.js';

const RW = IOMMU_READ | IOMMU_WRITE;

/** xorshift32: deterministic layout from run to run. */
let seed = 0x9e3779b9;
function rnd(n: number): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) % n;
}

function shuffle(a: Float64Array): void {
  for (let i = a.length - 1; i > 0; i--) {
    const j = rnd(i + 1);
    const t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}

function nsPer(ops: number, fn: () => number): { ns: number; sink: number } {
  const t0 = process.hrtime.bigint();
  const sink = fn();
  return { ns: Number(process.hrtime.bigint() - t0) / ops, sink };
}

function measureWalks(label: string, entries: Int32Array, root: number, iovas: Float64Array, passes: number): void {
  const run = () => {
    let x = 0;
    for (let p = 0; p < passes; p++) for (let i = 0; i < iovas.length; i++) x ^= walk(entries, root, iovas[i]);
    return x;
  };
  run(); // warm up (JIT)
  const best = [0, 0, 0].map(() => nsPer(passes * iovas.length, run).ns).sort((a, b) => a - b)[0];
  console.log(`${label.padEnd(62)} ${best.toFixed(1).padStart(6)} ns/walk`);
}

/** Maps perChunk random pages in each of `chunks` 2 MiB chunks (one L3 table each), spread over
 *  GiBs below and above 512 GiB; returns the page IOVAs (with a random offset) in random order. */
function populate(pt: PageTable, chunks: number, perChunk: number): Float64Array {
  const out = new Float64Array(chunks * perChunk);
  let k = 0;
  for (let c = 0; c < chunks; c++) {
    const g = c >> 7; // 128 chunks per GiB
    const gib = g % 2 === 0 ? g : 512 + g;
    const chunkBase = gib * SZ_1G + (c & 127) * 4 * SZ_2M;
    const used = new Set<number>();
    while (used.size < perChunk) used.add(rnd(512));
    for (const slot of used) {
      const at = chunkBase + slot * SZ_4K;
      pt.map(iova(at), pa(rnd(1 << 20) * SZ_4K), SZ_4K, RW);
      out[k++] = at + rnd(SZ_4K);
    }
  }
  shuffle(out);
  return out;
}

{
  const bigPool = TablePool.create(16384 + 512);
  const big = PageTable.create(bigPool, { name: 'bench-big' });
  const far = populate(big, 16384, 8);
  console.log(`cold page table: ${big.countTables()} tables (${(big.countTables() * 2) / 1024} MiB of entries)`);
  measureWalks(`walk, cold: ${far.length} pages, random order, 16384 L3 tables`, big.entries, big.root, far, 5);
  big.destroy();
}

const CHUNKS = 2048;
const pool = TablePool.create(4096);
const pt = PageTable.create(pool, { name: 'bench' });
const pages = populate(pt, CHUNKS, 32);
const n = pages.length;
const blockIovas = new Float64Array(1 << 16);
pt.map(iova(600 * SZ_1G), pa(0), SZ_1G, RW);
for (let i = 0; i < blockIovas.length; i++) blockIovas[i] = 600 * SZ_1G + rnd(SZ_1G);

console.log(`page table: ${pt.countTables()} tables (${(pt.countTables() * 2) / 1024} MiB of entries), ${n} 4 KiB pages`);
measureWalks(`walk, cold-ish: ${n} pages in random order over ${CHUNKS} L3 tables`, pt.entries, pt.root, pages, 10);
const oneTable = new Float64Array(512);
for (let i = 0; i < 512; i++) oneTable[i] = pages[0] - (pages[0] % SZ_2M) + i * SZ_4K;
measureWalks('walk, warm: every slot of one L3 table in order', pt.entries, pt.root, oneTable, 20000);
measureWalks('walk, 1 GiB block: random pages inside it', pt.entries, pt.root, blockIovas, 100);
const holes = new Float64Array(1 << 16);
for (let i = 0; i < holes.length; i++) holes[i] = 300 * SZ_1G + rnd(SZ_1G); // nothing mapped here
measureWalks('walk, unmapped (stops at L1)', pt.entries, pt.root, holes, 100);

// --- map + unmap of one 4 KiB page (its tables already exist)
{
  const at = iova(5 * SZ_1G + 7 * SZ_2M + 3 * SZ_4K);
  const to = pa(0x1234_5000);
  const loop = (k: number) => {
    let bytes = 0;
    for (let i = 0; i < k; i++) {
      pt.map(at, to, SZ_4K, RW);
      bytes += pt.unmap(at, SZ_4K);
    }
    return bytes;
  };
  loop(100_000);
  const K = 1_000_000;
  const best = [0, 0, 0].map(() => nsPer(K, () => loop(K)).ns).sort((a, b) => a - b)[0];
  console.log(`${'map + unmap of one 4 KiB page'.padEnd(62)} ${best.toFixed(1).padStart(6)} ns/pair`);
  const base = 5 * SZ_1G + 9 * SZ_2M;
  const spread = (rounds: number) => {
    let x = 0;
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < 512; i++) pt.map(iova(base + i * SZ_4K), to, SZ_4K, RW);
      for (let i = 0; i < 512; i++) x += pt.unmap(iova(base + i * SZ_4K), SZ_4K);
    }
    return x;
  };
  spread(50);
  const m = [0, 0, 0].map(() => nsPer(500 * 512, () => spread(500)).ns).sort((a, b) => a - b)[0];
  console.log(`${'map + unmap, 512 pages of one table (map all, unmap all)'.padEnd(62)} ${m.toFixed(1).padStart(6)} ns/pair`);
}
pt.destroy();
