/** Device models by name. */
import type { DeviceModelFactory, ModelName } from '../../src/device/device-model.js';
import { CopyEngine } from './copy-engine.js';
import { HostileDevice } from './hostile.js';
import { NvmeController } from './nvme.js';
import { NicModel } from './nic.js';

export const MODELS: Record<ModelName, DeviceModelFactory> = {
  'copy-engine': (ctx) => new CopyEngine(ctx),
  nvme: (ctx) => new NvmeController(ctx),
  nic: (ctx) => new NicModel(ctx),
  hostile: (ctx) => new HostileDevice(ctx),
};
