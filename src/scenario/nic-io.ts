/**
 * The nic model as a workload's device, through NicDriver.loopback: one I/O is one frame — the
 * device gathers the read segments (a TX SG table) onto the loopback wire and scatters it into
 * the write segments (an RX SG table posted just before). By direction the host buffer is the
 * TX side (to-device), the RX side (from-device) or both (bidirectional); the other side is the
 * workload's device-memory buffer (io-model.ts). The workload checks the data; here the frame's
 * two completions must agree: RX got `len` bytes with the CRC-32 the TX computed (else the I/O
 * is 'invalid').
 *
 * An I/O holds an RX and a TX descriptor in the device's one ring, and frames pair with RX
 * buffers in ring order: the schema keeps I/Os in flight at most queueDepth / 2, so posting
 * never waits and never reorders. Frames are at most NIC_MAX_FRAME bytes.
 */
import { NicDriver } from '../device/nic.js';
import { NIC_MAX_FRAME } from '../device/nic-command.js';
import { fmtBytes } from './byte-size.js';
import { concurrencyOf, type IoModel, type IoModelIssue, type IoStatus } from './io-model.js';
import { namedSizes } from './size-sampler.js';

export const nicIo: IoModel = {
  model: 'nic',
  check(d, w) {
    const issues: IoModelIssue[] = [];
    for (const { path, size } of namedSizes(w.sizes)) {
      if (size > NIC_MAX_FRAME) issues.push({ on: 'workload', path, message: `${size} bytes is more than one nic frame (${fmtBytes(NIC_MAX_FRAME)})` });
    }
    const n = concurrencyOf(w);
    if (2 * n > d.queueDepth) {
      issues.push({
        on: 'workload',
        path: [w.driverThreads > 1 ? 'driverThreads' : 'inFlight'],
        message: `${n} I/Os in flight on nic ${d.bdf}: each holds an RX and a TX descriptor in its ring of ${d.queueDepth}, so at most ${d.queueDepth / 2}`,
      });
    }
    return issues;
  },
  open({ host, dev }) {
    const nic = new NicDriver(host, dev);
    return {
      async submit(io): Promise<IoStatus> {
        const { tx, rx } = await nic.loopback(io.reads, io.writes);
        if (tx.status !== 'ok') return tx.status;
        if (rx.status !== 'ok') return rx.status;
        return tx.bytes === io.len && rx.bytes === io.len && rx.result === tx.result ? 'ok' : 'invalid';
      },
      close: () => nic.close(),
    };
  },
};
