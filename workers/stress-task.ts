/**
 * The piscina task module of the stress runner's driver threads: one task is one driver
 * thread's whole run (src/stress/stress-driver.ts).
 */
import { runStressDriver, type StressDriverTask, type StressDriverResult } from '../src/stress/stress-driver.js';

export type { StressDriverTask, StressDriverResult };

export function stressDriver(task: StressDriverTask): StressDriverResult {
  return runStressDriver(task);
}
