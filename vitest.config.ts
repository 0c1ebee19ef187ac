import { defineConfig } from 'vitest/config';

// Workers run compiled JavaScript from dist/ (Node 20 cannot run .ts workers and vitest does not
// transform them); `npm test` builds first through its pretest script.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // 2 cores: test files that start workers would only fight each other.
    fileParallelism: false,
    pool: 'forks',
  },
});
