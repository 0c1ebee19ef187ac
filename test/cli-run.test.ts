import { describe, it, expect } from 'vitest';
import { runDefaultScenario, DEFAULT_RUN } from '../src/cli/run.js';

describe('the default scenario (npm start), at small size', () => {
  for (const mode of ['strict', 'lazy', 'off'] as const) {
    it(`verifies every transfer and leaks nothing (IOMMU ${mode})`, async () => {
      const s = await runDefaultScenario({ ...DEFAULT_RUN, transfers: 40, mode });
      expect(s.devices.map((d) => d.transfers)).toEqual([40, 40]);
      for (const d of s.devices) expect(d).toMatchObject({ verified: 40, mismatches: 0, faults: 0 });
      expect(s.leaks).toEqual({ liveMappings: 0, ramPages: 0 });
      // The 32-bit device's buffers sit above 4 GiB: bounced only when nothing translates.
      if (mode === 'off') {
        expect(s.devices[0].bounced).toBe(80);
        expect(s.bouncedBytes).toBeGreaterThan(0);
      } else {
        expect(s.bouncedBytes).toBe(0);
      }
    });
  }
});
