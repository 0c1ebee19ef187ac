/**
 * Machine.close() after a device close that is still in flight must still end every worker
 * before it resolves. Found in review: Device.close() returned at once when a close was under
 * way, so `await m.close()` came back with the worker alive, and the earlier close's markDead
 * later landed on a slot the machine had already released.
 */
import { describe, it, expect } from 'vitest';
import { Machine, MiB } from '../src/index.js';

const ports = () => process.getActiveResourcesInfo().filter((r) => r === 'MessagePort').length;

describe('Machine.close() after a device close that is still in flight', () => {
  it('has ended every worker when it resolves', async () => {
    const before = ports();
    const m = await Machine.create({ ram: [{ base: 0, size: 16 * MiB }] });
    const dev = await m.addDevice({ bdf: '00:03.0' });
    const words = m.iommu.unit.epochs.words;
    const first = dev.close(); // e.g. a driver unbinding the device
    await m.close();
    const portsOpen = ports() - before;
    const slotStateAtClose = Atomics.load(words, dev.slot * 4 + 2);
    await first;
    const slotStateLater = Atomics.load(words, dev.slot * 4 + 2);
    expect({ portsOpen, slotStateAtClose, slotStateLater }).toEqual({ portsOpen: 0, slotStateAtClose: 0, slotStateLater: 0 });
  });
});
