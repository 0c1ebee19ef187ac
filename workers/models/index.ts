/** Device models by name. */
import type { DeviceModelFactory, ModelName } from '../../src/device/device-model.js';
import { CopyEngine } from './copy-engine.js';
import { HostileDevice } from './hostile.js';

export const MODELS: Record<ModelName, DeviceModelFactory> = {
  'copy-engine': (ctx) => new CopyEngine(ctx),
  hostile: (ctx) => new HostileDevice(ctx),
};
