/** Device models by name. */
import type { DeviceModelFactory, ModelName } from '../../src/device/device-model.js';
import { CopyEngine } from './copy-engine.js';

export const MODELS: Record<ModelName, DeviceModelFactory> = {
  'copy-engine': (ctx) => new CopyEngine(ctx),
};
