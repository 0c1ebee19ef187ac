/**
 * Device.submit on a full queue keeps submission order (review of b00fcee): a descriptor that
 * waits for a free slot is posted before any descriptor submitted after it, even one submitted
 * by a completion handler that runs as the slot frees up (a NIC's RX re-post, a block driver
 * issuing its next request). Ring order is visible as the completion id (ids are taken in
 * post order) and as which of two copies to one place landed last.
 */
import { describe, it, expect } from 'vitest';
import { Machine, MiB, dmaAddr, type Completion } from '../src/index.js';
import { closeAfterEach } from './support.js';
const { machines } = closeAfterEach();

/** Each fill is this long, so the device cannot finish one while the test submits the next. */
const SPAN = 1 * MiB;

async function setup() {
  const m = await Machine.create({ ram: [{ base: 0, size: 8 * MiB }], iommu: { enabled: false }, swiotlb: { size: 0 } });
  machines.push(m);
  const dev = await m.addDevice({ bdf: '00:03.0', queueDepth: 2 });
  const buf = m.ram.alloc(4 * SPAN);
  m.ram.fill(buf.pa, 4 * SPAN, 0);
  return { m, dev, at: (i: number) => dmaAddr(buf.pa + i * SPAN), buf };
}

describe('Device.submit on a full queue', () => {
  it('a descriptor submitted from a completion handler does not overtake one already waiting for a slot', async () => {
    const { m, dev, at, buf } = await setup();
    const FILL = 1;
    const first = dev.submit(0x11, at(0), SPAN, FILL);
    const second = dev.submit(0x22, at(1), SPAN, FILL);
    expect(dev.inFlight()).toBe(2);
    const waiting = dev.submit(0xaa, at(2), SPAN, FILL); // queue full: waits
    let later: Promise<Completion> | null = null;
    void first.then(() => {
      later = dev.submit(0xbb, at(2), SPAN, FILL); // submitted after `waiting`, same target
    });
    const [w] = await Promise.all([waiting, second]);
    expect(later).not.toBeNull();
    const l = await later!;
    expect([w.status, l.status]).toEqual(['ok', 'ok']);
    expect(w.id).toBeLessThan(l.id); // posted to the ring in submission order
    expect(m.ram.read(buf.pa + 2 * SPAN, 1)[0]).toBe(0xbb); // so the later fill lands last
  });

  it('several waiters and later submits complete in submission order', async () => {
    const { dev, at } = await setup();
    const FILL = 1;
    const order: number[] = [];
    const all: Promise<Completion>[] = [];
    const sub = (tag: number) => {
      const p = dev.submit(tag, at(3), SPAN, FILL);
      all.push(p);
      void p.then((c) => order.push(c.id));
      return p;
    };
    sub(1);
    sub(2);
    sub(3); // waits
    sub(4); // waits
    void all[0].then(() => sub(5)); // submitted last, from a completion
    await Promise.all(all.slice(0, 4));
    await all[4];
    const ids = await Promise.all(all.map((p) => p.then((c) => c.id)));
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
    expect(order).toEqual(ids);
  });
});
