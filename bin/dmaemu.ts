#!/usr/bin/env node
/**
 * dmaemu — the command line: run the default scenario, compute IOMMU groups.
 */
import { Command, Option } from 'commander';
import { runDefaultScenario, formatRunSummary, DEFAULT_RUN, type RunOptions } from '../src/cli/run.js';
import { registerGroupsCommand } from '../src/cli/groups.js';
import { registerBenchCommand } from '../src/cli/bench-command.js';
import { DmaError } from '../src/errors.js';

const program = new Command();
program
  .name('dmaemu')
  .description('DMA through an IOMMU, emulated truly in parallel: devices in worker threads, shared guest RAM, Linux\'s DMA API and IOMMU-group rules')
  .showHelpAfterError();

program
  .command('run')
  .description('run the built-in default scenario (two copy engines, one 32-bit device with buffers above 4 GiB, strict IOMMU, mixed sizes) and print a summary')
  .option('--transfers <n>', 'transfers per device', (v) => Number(v), DEFAULT_RUN.transfers)
  .addOption(new Option('--mode <mode>', 'IOMMU mode').choices(['strict', 'lazy', 'off']).default(DEFAULT_RUN.mode))
  .option('--depth <n>', 'descriptors each device keeps in flight', (v) => Number(v), DEFAULT_RUN.depth)
  .option('--seed <n>', 'seed of the size sequence', (v) => Number(v), DEFAULT_RUN.seed)
  .option('--no-verify', 'do not check every transfer\'s data')
  .option('--json', 'print the summary as JSON')
  .action(async (o: { transfers: number; mode: RunOptions['mode']; depth: number; seed: number; verify: boolean; json?: boolean }) => {
    const tty = process.stderr.isTTY && !o.json;
    let last = 0;
    const summary = await runDefaultScenario({ transfers: o.transfers, mode: o.mode, depth: o.depth, seed: o.seed, verify: o.verify }, (done, total) => {
      const now = Date.now();
      if (tty && (now - last > 250 || done === total)) {
        last = now;
        process.stderr.write(`\r${done}/${total} transfers`);
        if (done === total) process.stderr.write('\n');
      }
    });
    process.stdout.write(o.json ? JSON.stringify(summary, null, 2) + '\n' : formatRunSummary(summary) + '\n');
    if (summary.devices.some((d) => d.mismatches > 0)) process.exitCode = 1;
  });

registerGroupsCommand(program);
registerBenchCommand(program);

program.parseAsync(process.argv).catch((e: unknown) => {
  if (e instanceof DmaError) {
    process.stderr.write(`dmaemu: ${e.message}\n`);
    process.exitCode = 2;
  } else {
    throw e;
  }
});
