/**
 * The measurements, run by main.ts in a child process with the filesystems
 * already set up (CACHE_BENCH_CONFIG). Runs every suite on every filesystem,
 * prints each figure as it is measured, and writes latest.json / latest.md.
 */
import { statfs } from 'node:fs/promises';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { machineNoise } from './measure.js';
import { describeFs } from './mounts.js';
import { sizesFor, type FsTarget, type Sizes } from './options.js';
import { printFigure, toMarkdown, writeResults, type FigureResult, type Results } from './report.js';
import { listingFigures } from './suites/listings.js';
import { opsFigures } from './suites/ops.js';
import { readThroughFigures } from './suites/readthrough.js';
import { streamFigures } from './suites/streams.js';

/** What main.ts hands over. */
export interface RunConfig {
  quick: boolean;
  out: string;
  only: number[];
  targets: FsTarget[];
  warnings: string[];
  /** Epoch ms at which `pnpm bench`'s node process started. */
  startedAt: number;
}

/** What a suite gets for one filesystem. */
export interface SuiteContext {
  fs: FsTarget;
  sizes: Sizes;
  wanted(figure: number): boolean;
  add(result: FigureResult): void;
  skip(figures: number[], reason: string): void;
  skipDriver(figures: number[], driver: string, reason: string): void;
  freeBytes(): Promise<number>;
}

const config = JSON.parse(process.env.CACHE_BENCH_CONFIG ?? 'null') as RunConfig | null;
if (config === null) {
  process.stderr.write('bench: run.js is started by main.js (pnpm bench), which sets CACHE_BENCH_CONFIG\n');
  process.exit(2);
}

const sizes = sizesFor(config.quick);
const only = new Set(config.only);
const wanted = (n: number) => only.size === 0 || only.has(n);
const figures: FigureResult[] = [];
const warnings = [...config.warnings];
const loadAverageAtStart = loadavg();
let failed = false;

const filesystems = config.targets.map((target) => ({ name: target.name, ...describeFs(target.path) }));
process.stdout.write(
  `bench: ${config.quick ? 'QUICK run (reduced sizes)' : 'full run'} on ${filesystems.map((f) => `${f.name} (${f.fstype}, ${f.options})`).join('; ')}\n`,
);
if (loadAverageAtStart[0]! > cpus().length) {
  const message = `the machine was busy at the start (load average ${loadAverageAtStart.map((x) => x.toFixed(2)).join(' ')} on ${cpus().length} cores): figures are noisier`;
  warnings.push(message);
  process.stderr.write(`bench: WARNING: ${message}\n`);
}

const suites = [
  { figures: [1, 2, 3], run: streamFigures },
  { figures: [4], run: opsFigures },
  { figures: [5, 6], run: listingFigures },
  { figures: [7], run: readThroughFigures },
];

for (const fs of config.targets) {
  process.stdout.write(`\n== ${fs.name}: ${fs.path}\n`);
  const ctx: SuiteContext = {
    fs,
    sizes,
    wanted,
    add(result) {
      figures.push(result);
      printFigure(result);
    },
    skip(list, reason) {
      const message = `${fs.name}: figure(s) ${list.join(', ')} skipped: ${reason}`;
      warnings.push(message);
      process.stdout.write(`  ${message}\n`);
    },
    skipDriver(list, driver, reason) {
      const message = `${fs.name}: figure(s) ${list.join(', ')} skipped for the ${driver} driver: ${reason}`;
      warnings.push(message);
      process.stdout.write(`  ${message}\n`);
    },
    async freeBytes() {
      const info = await statfs(fs.path);
      return info.bavail * info.bsize;
    },
  };
  for (const suite of suites) {
    if (!suite.figures.some(wanted)) continue;
    const start = performance.now();
    try {
      await suite.run(ctx);
    } catch (error) {
      failed = true;
      const message = `${fs.name}: figure(s) ${suite.figures.join(', ')} failed: ${(error as Error).stack ?? String(error)}`;
      warnings.push(message.split('\n')[0] as string);
      process.stderr.write(`bench: ERROR: ${message}\n`);
    }
    process.stdout.write(`  (${fs.name}: figure(s) ${suite.figures.join(', ')} took ${((performance.now() - start) / 1000).toFixed(1)} s)\n`);
  }
}

const results: Results = {
  environment: {
    date: new Date().toISOString(),
    quick: config.quick,
    node: process.version,
    kernel: release(),
    cpu: cpus()[0]?.model ?? 'unknown CPU',
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    loadAverageAtStart,
    loadAverageAtEnd: loadavg(),
    filesystems,
    warnings,
    wallSeconds: (Date.now() - config.startedAt) / 1000,
    sizes: { ...sizes },
    machineNoise: { ...machineNoise, waitedMs: Math.round(machineNoise.waitedMs) },
  },
  figures,
};
const written = writeResults(config.out, results);
process.stdout.write(`\n${toMarkdown(results)}\n`);
const missed = figures.filter((r) => r.met === false);
process.stdout.write(
  missed.length === 0
    ? `bench: every goal met (${figures.filter((r) => r.met === true).length} figures with a goal)\n`
    : `bench: ${missed.length} goal(s) NOT met: ${missed.map((r) => `${r.figure}. ${r.title} [${r.fs}${r.driver === null ? '' : `, ${r.driver}`}]`).join('; ')}\n`,
);
process.stdout.write(`bench: results in ${written.json} and ${written.markdown}\n`);
process.exit(failed ? 1 : 0);
