// comlink ships ESM builds without an exports map or .d.mts files; these map its ESM entry
// points to its own type declarations. Only src/control-plane.ts imports them.
declare module 'comlink/dist/esm/comlink.mjs' {
  export * from 'comlink';
}
declare module 'comlink/dist/esm/node-adapter.mjs' {
  import type { Endpoint } from 'comlink';
  export default function nodeEndpoint(nep: unknown): Endpoint;
}
