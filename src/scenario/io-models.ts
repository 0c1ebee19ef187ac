/**
 * The device models a scenario can drive: one IoModel adapter per model name. A name is valid
 * in a scenario file only when it has an adapter here (scenario-schema.ts checks it).
 */
import type { IoModel } from './io-model.js';
import { copyEngineIo } from './copy-engine-io.js';
import { nvmeIo } from './nvme-io.js';
import { nicIo } from './nic-io.js';

export const IO_MODELS: Readonly<Record<string, IoModel>> = {
  'copy-engine': copyEngineIo,
  nvme: nvmeIo,
  nic: nicIo,
};

export const ioModelNames = (): string[] => Object.keys(IO_MODELS);
