/** The structured-cloneable handle of a whole IOMMU: every shared structure it owns. */
import type { TablePoolHandle } from './table-pool.js';
import type { ContextTableHandle } from './context-table.js';
import type { DomainTableHandle } from './domain-table.js';
import type { InvalidationHandle } from './invalidation.js';
import type { DeviceEpochsHandle } from './device-epoch.js';
import type { FaultRingHandle } from './fault-ring.js';

export interface IommuHandle {
  readonly enabled: boolean;
  readonly pool: TablePoolHandle;
  readonly contexts: ContextTableHandle;
  readonly domains: DomainTableHandle;
  readonly invalidation: InvalidationHandle;
  readonly epochs: DeviceEpochsHandle;
  readonly faults: FaultRingHandle;
}
