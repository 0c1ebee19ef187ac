import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';

/**
 * Where a worker entry lives. Node 20 cannot run .ts workers, so workers always run from the
 * compiled tree: dist/workers/NAME.js. When this module itself runs from source (vitest
 * transforms src/ but not workers), it looks for the compiled tree at the project root.
 */
export function workerUrl(name: string): URL {
  const here = dirname(fileURLToPath(import.meta.url)); // <root>/src or <root>/dist/src
  const fromDist = join(here, '..', 'workers', `${name}.js`);
  if (import.meta.url.endsWith('.js') && existsSync(fromDist)) return pathToFileURL(fromDist);
  const fromRoot = join(here, '..', 'dist', 'workers', `${name}.js`);
  if (existsSync(fromRoot)) return pathToFileURL(fromRoot);
  throw new Error(
    `worker ${name}.js not found in the compiled tree (looked at ${fromDist} and ${fromRoot}); run \`npm run build\``,
  );
}
