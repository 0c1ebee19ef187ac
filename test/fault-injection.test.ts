/**
 * Fault injection: a device whose model throws, hangs, spins or whose worker terminates inside a
 * transfer, with descriptors in flight, sharing its IOMMU domain with an honest device. The
 * machine names the failed device and the cause, rejects what it had in flight, keeps the other
 * device working, lets a strict unmap in the shared domain return, and close() ends every worker.
 */
import { describe, it, expect } from 'vitest';
import { Machine, MiB, dmaAddr, type Device, type InjectedFault } from '../src/index.js';
import { pattern, same, until } from './support.js';

const PAGE = 4096;
const RAM = [{ base: 0, size: 16 * MiB }];
/** A multifunction device without ACS: both functions in one IOMMU group, one domain. */
const TOPOLOGY = {
  functions: [
    { bdf: '00:00.0', type: 'host-bridge' },
    { bdf: '00:03.0', type: 'endpoint', multifunction: true },
    { bdf: '00:03.1', type: 'endpoint' },
  ],
};
const ports = () => process.getActiveResourcesInfo().filter((r) => r === 'MessagePort').length;

/** The honest device's work: `n` verified copies through its own mappings. */
async function honestWork(m: Machine, dev: Device, n: number): Promise<number> {
  const s = m.ram.alloc(4 * PAGE);
  const d = m.ram.alloc(4 * PAGE);
  const data = pattern(4 * PAGE, 5);
  m.ram.write(s.pa, data);
  const hs = m.dma.mapSingle(dev, s.pa, 4 * PAGE, 'to-device');
  const hd = m.dma.mapSingle(dev, d.pa, 4 * PAGE, 'from-device');
  let ok = 0;
  for (let i = 0; i < n; i++) {
    m.ram.fill(d.pa, 4 * PAGE, 0);
    await dev.copy({ src: hs.addr, dst: hd.addr, len: 4 * PAGE });
    if (same(m.ram.read(d.pa, 4 * PAGE), data)) ok++;
  }
  m.dma.unmapSingle(dev, hs);
  m.dma.unmapSingle(dev, hd);
  return ok;
}

interface Injected {
  m: Machine;
  victim: Device;
  honest: Device;
  /** The victim's eight fills: two before the fault, six in flight when it strikes. */
  fills: Promise<PromiseSettledResult<unknown>[]>;
  honestDone: Promise<number>;
}

async function inject(kind: InjectedFault, deviceTimeoutMs: number, f: (x: Injected) => Promise<void>): Promise<void> {
  const before = ports();
  const m = await Machine.create({ ram: RAM, topology: TOPOLOGY, iommu: { deviceTimeoutMs } });
  try {
    const victim = await m.addDevice({ bdf: '00:03.0' });
    const honest = await m.addDevice({ bdf: '00:03.1' });
    expect(m.iommu.domainOf(victim)).toBe(m.iommu.domainOf(honest));
    const vb = m.ram.alloc(8 * PAGE);
    const vm = m.dma.mapSingle(victim, vb.pa, 8 * PAGE, 'from-device');
    const honestDone = honestWork(m, honest, 40);
    victim.injectFault(kind, { after: 2 });
    const fills = Promise.allSettled([...Array(8).keys()].map((i) => victim.fill({ dst: dmaAddr(vm.addr + i * PAGE), len: PAGE, value: i + 1 })));
    await f({ m, victim, honest, fills, honestDone });
  } finally {
    await m.close();
  }
  expect(ports()).toBe(before); // every worker ended
}

function expectFailedAtThird(results: PromiseSettledResult<unknown>[], message: RegExp): void {
  expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', ...Array(6).fill('rejected')]);
  for (const r of results.slice(2)) {
    expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'EIO' });
    expect(String((r as PromiseRejectedResult).reason.message)).toMatch(message);
  }
}

describe('fault injection', () => {
  it('a model that throws mid-transfer: the device is named with the exception, its in-flight work rejected, the other device unharmed', async () => {
    await inject('throw', 10_000, async ({ m, victim, honest, fills, honestDone }) => {
      expectFailedAtThird(await fills, /device 0000:00:03\.0 .*injected fault.*threw/);
      expect(victim.error?.message).toMatch(/0000:00:03\.0/);
      expect(m.stats().failedDevices['0000:00:03.0']).toMatch(/threw/);
      expect(await honestDone).toBe(40);
      expect(honest.error).toBeNull();
      // Its epoch was left as the exception unwound: a strict unmap in the shared domain returns.
      expect(m.iommu.unit.epochs.isBusy(victim.slot)).toBe(false);
      const b = m.ram.alloc(PAGE);
      m.dma.unmapSingle(honest, m.dma.mapSingle(honest, b.pa, PAGE, 'bidirectional'));
    });
  });

  it('a worker terminated mid-transfer: the exit code is reported and its epoch is marked dead at once', async () => {
    await inject('terminate', 10_000, async ({ m, victim, honest, fills, honestDone }) => {
      expectFailedAtThird(await fills, /device 0000:00:03\.0 .*exited \(code 70\)/);
      expect(await honestDone).toBe(40);
      // It died holding its in-transfer mark; the exit cleared it, so nobody waits for it.
      await until(() => !m.iommu.unit.epochs.isBusy(victim.slot));
      const b = m.ram.alloc(PAGE);
      m.dma.unmapSingle(honest, m.dma.mapSingle(honest, b.pa, PAGE, 'bidirectional'));
      expect(honest.error).toBeNull();
      await honest.fill({ dst: dmaAddr(m.dma.mapSingle(honest, b.pa, PAGE, 'from-device').addr), len: PAGE, value: 9 });
    });
  });

  it('a device hung in a transfer: a strict unmap in its domain declares it hung after iommu.deviceTimeoutMs and returns', async () => {
    await inject('hang', 500, async ({ m, victim, honest, fills, honestDone }) => {
      expect(await honestDone).toBe(40);
      await until(() => m.iommu.unit.epochs.isBusy(victim.slot)); // hung inside descriptor 3
      const b = m.ram.alloc(PAGE);
      const h = m.dma.mapSingle(honest, b.pa, PAGE, 'bidirectional');
      m.dma.unmapSingle(honest, h); // waits for the hung device, up to the watchdog
      expectFailedAtThird(await fills, /device 0000:00:03\.0 .*hung: a strict IOTLB invalidation waited 500 ms/);
      expect(m.stats().failedDevices['0000:00:03.0']).toMatch(/hung/);
      // Its worker was ended and its slot marked dead: the next unmap does not wait at all.
      await until(() => m.iommu.unit.epochs.hungAfter(victim.slot) === null);
      expect(m.iommu.unit.epochs.isBusy(victim.slot)).toBe(false);
      expect(await honestWork(m, honest, 5)).toBe(5);
    });
  });

  it('close() returns and ends the worker of a device stuck in a busy loop inside a transfer', async () => {
    const before = ports();
    const m = await Machine.create({ ram: RAM, iommu: { deviceTimeoutMs: 0 } });
    let pending: Promise<unknown> | null = null;
    try {
      const dev = await m.addDevice({ bdf: '00:03.0' });
      const b = m.ram.alloc(PAGE);
      const h = m.dma.mapSingle(dev, b.pa, PAGE, 'from-device');
      dev.injectFault('spin');
      pending = dev.fill({ dst: h.addr, len: PAGE, value: 1 });
      pending.catch(() => undefined);
      await until(() => m.iommu.unit.epochs.isBusy(dev.slot));
    } finally {
      await m.close();
    }
    await expect(pending).rejects.toMatchObject({ code: 'EIO' });
    expect(ports()).toBe(before);
  });

  it('refuses an unknown fault kind and names the device', async () => {
    const m = await Machine.create({ ram: RAM });
    try {
      const dev = await m.addDevice({ bdf: '00:03.0' });
      expect(() => dev.injectFault('explode' as InjectedFault)).toThrow(/EINVAL: device 0000:00:03\.0: unknown fault explode/);
    } finally {
      await m.close();
    }
  });
});
