/**
 * The nvme model as a workload's device, through NvmeDriver.submitIo: each command's PRP1/PRP2
 * and PRP lists are built from the I/O's mapped DMA segments (nvme_pci_setup_prps), so
 * scattered buffers without an IOMMU give the controller multi-entry PRP lists. By direction:
 *   to-device      WRITE of the host buffer to LBA L
 *   from-device    READ of LBA L into the host buffer
 *   bidirectional  WRITE of the to-device buffer to L, then READ of L into the from-device
 *                  buffer (the workload compares them)
 * With verify, a one-sided I/O adds the command that makes its data checkable through the
 * workload's device-memory buffer (io-model.ts): to-device READs L back into it after the
 * WRITE; from-device first WRITEs it (it holds the expected data) to L. Without verify a
 * one-sided I/O is its one command. The I/O is ok when every command completed with
 * Successful Completion.
 *
 * LBAs: the namespace is cut into slots of the workload's largest I/O (the schema checks there
 * are at least as many as I/Os in flight); each I/O takes a free slot at random (seeded) and a
 * random block-aligned start inside it, so I/Os in flight never overlap on the media.
 */
import { DmaError } from '../errors.js';
import { NvmeDriver, type NvmeCompletion } from '../device/nvme.js';
import { NVME_MAX_TRANSFER, NVME_SC_SUCCESS } from '../device/nvme-command.js';
import { nvmeOptionsSchema } from '../machine-config.js';
import { fmtBytes } from './byte-size.js';
import { concurrencyOf, type IoModel, type IoModelIssue, type IoRequest, type IoStatus } from './io-model.js';
import { seededRandom } from './random.js';
import { namedSizes, sizeSampler } from './size-sampler.js';
import type { ScenarioDevice } from './scenario-schema.js';

const namespaceOf = (d: ScenarioDevice): { lbaSize: number; size: number } => d.nvme ?? nvmeOptionsSchema.parse({});

export const nvmeIo: IoModel = {
  model: 'nvme',
  sizeAlign: (d) => namespaceOf(d).lbaSize,
  check(d, w) {
    const ns = namespaceOf(d);
    const issues: IoModelIssue[] = [];
    for (const { path, size } of namedSizes(w.sizes)) {
      if (size % ns.lbaSize !== 0) issues.push({ on: 'workload', path, message: `${size} bytes is not whole blocks: I/Os on nvme ${d.bdf} must be multiples of its LBA size ${ns.lbaSize}` });
      else if (size > NVME_MAX_TRANSFER) issues.push({ on: 'workload', path, message: `${size} bytes is more than one NVMe command moves (MDTS: ${fmtBytes(NVME_MAX_TRANSFER)})` });
    }
    const max = sizeSampler(w.sizes).max;
    const n = concurrencyOf(w);
    if (Math.floor(ns.size / max) < n) {
      issues.push({ on: 'device', path: ['nvme', 'size'], message: `a namespace of ${fmtBytes(ns.size)} holds ${Math.floor(ns.size / max)} I/Os of ${fmtBytes(max)} without overlap; its workload keeps ${n} in flight: at least ${n * max} bytes` });
    }
    return issues;
  },
  open({ host, dev, workload, concurrency, verify, seed }) {
    const nvme = new NvmeDriver(host, dev);
    const lba = nvme.ns.lbaSize;
    const slotBlocks = Math.ceil(sizeSampler(workload.sizes).max / lba);
    const slots = Math.floor(nvme.ns.blocks / slotBlocks);
    if (slots < concurrency) throw new DmaError('EINVAL', `nvme ${dev.bdf}: ${slots} LBA slots of ${slotBlocks} blocks for ${concurrency} I/Os in flight (scenario devices[].nvme.size)`);
    const free = Array.from({ length: slots }, (_, i) => i);
    const rand = seededRandom(seed);
    const dir = workload.direction;
    const ok = (c: NvmeCompletion): boolean => c.status === 'ok' && c.sc === NVME_SC_SUCCESS;
    const statusOf = (c: NvmeCompletion): IoStatus => (c.status === 'ok' ? 'invalid' : c.status); // ok but an NVMe error status: the command was refused
    return {
      async submit(io: IoRequest): Promise<IoStatus> {
        if (free.length === 0) throw new DmaError('EBUSY', `nvme ${dev.bdf}: more than ${slots} I/Os in flight (the queue was opened for ${concurrency})`);
        const k = Math.floor(rand() * free.length);
        const slot = free[k];
        free[k] = free[free.length - 1];
        free.pop();
        try {
          const blocks = io.len / lba;
          const at = slot * slotBlocks + Math.floor(rand() * (slotBlocks - blocks + 1));
          const write = dir !== 'from-device' || verify;
          const read = dir !== 'to-device' || verify;
          if (write) {
            const c = await nvme.submitIo('write', at, io.reads, io.len);
            if (!ok(c)) return statusOf(c);
          }
          if (read) {
            const c = await nvme.submitIo('read', at, io.writes, io.len);
            if (!ok(c)) return statusOf(c);
          }
          return 'ok';
        } finally {
          free.push(slot);
        }
      },
      async close() {
        nvme.close();
      },
      stats: () => ({ prpListCommands: nvme.prpStats.listCommands, prpListEntries: nvme.prpStats.listEntries }),
    };
  },
};
