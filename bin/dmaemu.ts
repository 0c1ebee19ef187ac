#!/usr/bin/env node
/**
 * dmaemu — the command line: run a scenario (or the default one), compute IOMMU groups.
 */
import { Command } from 'commander';
import { registerRunCommand } from '../src/cli/run-command.js';
import { registerGroupsCommand } from '../src/cli/groups.js';
import { registerStressCommand } from '../src/cli/stress-command.js';
import { registerBenchCommand } from '../src/cli/bench-command.js';
import { DmaError } from '../src/errors.js';

const program = new Command();
program
  .name('dmaemu')
  .description('DMA through an IOMMU, emulated truly in parallel: devices in worker threads, shared guest RAM, Linux\'s DMA API and IOMMU-group rules')
  .showHelpAfterError();

registerRunCommand(program);
registerGroupsCommand(program);
registerStressCommand(program);
registerBenchCommand(program);

program.parseAsync(process.argv).catch((e: unknown) => {
  if (e instanceof DmaError) {
    process.stderr.write(`dmaemu: ${e.message}\n`);
    process.exitCode = 2;
  } else {
    throw e;
  }
});
