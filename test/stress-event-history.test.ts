import { describe, it, expect } from 'vitest';
import { EventHistory, formatEvent } from '../src/stress/event-history.js';

describe('stress event history', () => {
  it('returns only the events of the same op, transfer id or page, oldest first', () => {
    const h = new EventHistory(0, 16);
    h.log({ op: 1, what: 'mapSingle', addr: 0x10000, pa: 0x500000, len: 100 });
    h.log({ op: 2, what: 'mapSingle', addr: 0x20000, pa: 0x600000, len: 100 });
    h.log({ op: 3, what: 'dma-fill', id: 9, addr: 0x10040, len: 8 });
    h.log({ op: 2, what: 'unmapSingle', addr: 0x20000, len: 100 });
    h.log({ op: 4, what: 'complete ok', id: 9 });
    const got = h.about({ addr: 0x10010, len: 1 });
    expect(got.map((e) => e.what)).toEqual(['mapSingle', 'dma-fill']);
    expect(h.about({ id: 9 }).map((e) => e.op)).toEqual([3, 4]);
    expect(h.about({ op: 2 }).map((e) => e.what)).toEqual(['mapSingle', 'unmapSingle']);
  });

  it('keeps the newest events when the ring is full', () => {
    const h = new EventHistory(1, 4);
    for (let i = 0; i < 10; i++) h.log({ op: i, what: 'x' });
    expect(h.count).toBe(10);
    expect(h.about({ op: 3 })).toEqual([]);
    expect(h.about({ op: 9 })).toHaveLength(1);
  });

  it('formats an event with its thread, op, addresses in hex and note', () => {
    const h = new EventHistory(2);
    const e = h.log({ op: 5, what: 'mapSingle to-device', device: 1, addr: 0xfff000, pa: 0x100000000, len: 4096, note: 'bounced' });
    expect(formatEvent(e)).toBe('t2#0 op 5 mapSingle to-device dev1 addr 0x00fff000 pa 0x000100000000 len 4096 bounced');
  });
});
