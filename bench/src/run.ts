/**
 * The measurements, run by main.ts in a child process with the filesystems
 * already set up (CACHE_BENCH_CONFIG). Runs every suite on every filesystem,
 * prints each figure as it is measured, and writes latest.json / latest.md.
 */
import { statfs } from 'node:fs/promises';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { attachTestPostgres, type TestPostgres, type TestPostgresHandle } from '@cache/postgres-testing';
import { ignoreProcessTree, machineNoise } from './measure.js';
import { describeFs } from './mounts.js';
import { POSTGRES_FIGURES, sizesFor, type FsTarget, type Sizes } from './options.js';
import { printFigure, toMarkdown, writeResults, type FigureResult, type PostgresEnvironment, type Results } from './report.js';
import { clusterFigures } from './suites/cluster.js';
import { durabilityFigures } from './suites/durability.js';
import { GLANCE_FIGURE, glanceFigures } from './suites/glance.js';
import { listingFigures } from './suites/listings.js';
import { opsFigures } from './suites/ops.js';
import { readThroughFigures } from './suites/readthrough.js';
import { HIT_FIGURES, hitFigures } from './suites/hits.js';
import { HTTP_FIGURES, serverFillFigures } from './suites/server-fill.js';
import { spaceFigures } from './suites/space.js';
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
  /** The PostgreSQL server main.ts started for the postgres figures, or why there is none; absent when no such figure runs. */
  postgres?: BenchPostgresConfig;
}

/** How main.ts hands over its PostgreSQL server. */
export type BenchPostgresConfig =
  | { available: true; handle: TestPostgresHandle; postmasterPid: number | undefined }
  | { available: false; reason: string };

/** The bench's PostgreSQL server, as the suites see it. */
export type BenchPostgres = { available: true; server: TestPostgres } | { available: false; reason: string };

/** What a suite gets for one filesystem. */
export interface SuiteContext {
  fs: FsTarget;
  /** True for the first filesystem only (figure 8 runs once: it is about the database, not the cache filesystem; so do the HTTP figures 9-12). */
  firstFs: boolean;
  /** The PostgreSQL server of the run (figures 4, 5 and 8), or why there is none. */
  postgres: BenchPostgres;
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

const postgres: BenchPostgres =
  config.postgres === undefined
    ? { available: false, reason: 'not started (no postgres figure asked for)' }
    : config.postgres.available
      ? { available: true, server: attachTestPostgres(config.postgres.handle) }
      : config.postgres;
let postgresEnvironment: PostgresEnvironment | undefined;
if (config.postgres?.available === true) {
  const { handle, postmasterPid } = config.postgres;
  // The server's backends work for our figures: their CPU is not "other processes" disturbing a run.
  if (postmasterPid !== undefined) ignoreProcessTree(postmasterPid);
  const dataFs = describeFs(handle.root);
  postgresEnvironment = { version: handle.version, settings: { ...handle.settings }, dataDirectory: { path: handle.root, ...dataFs } };
  process.stdout.write(
    `bench: PostgreSQL ${handle.version} on 127.0.0.1:${handle.port}, data directory on ${dataFs.fstype} (${handle.root}), ` +
      `${Object.entries(handle.settings).map(([k, v]) => `${k}=${v}`).join(' ')}\n`,
  );
} else if (config.postgres?.available === false) {
  postgresEnvironment = { skipped: config.postgres.reason };
  const message = `postgres: the postgres figures (${POSTGRES_FIGURES.filter(wanted).join(', ')}) are skipped: ${config.postgres.reason}`;
  warnings.push(message);
  process.stdout.write(`bench: ${message}\n`);
}

const suites = [
  { figures: [1, 2, 3], run: streamFigures },
  { figures: [4], run: opsFigures },
  { figures: [5, 6], run: listingFigures },
  { figures: [7], run: readThroughFigures },
  { figures: [8], run: clusterFigures },
  { figures: [...HTTP_FIGURES], run: serverFillFigures },
  { figures: [13], run: spaceFigures },
  { figures: [15], run: durabilityFigures },
  { figures: [GLANCE_FIGURE], run: glanceFigures },
  { figures: [...HIT_FIGURES], run: hitFigures },
];

for (const [index, fs] of config.targets.entries()) {
  process.stdout.write(`\n== ${fs.name}: ${fs.path}\n`);
  const ctx: SuiteContext = {
    fs,
    firstFs: index === 0,
    postgres,
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
    // Figure 8 is about the database alone: once per run; without a server its skip is reported above.
    if (suite.run === clusterFigures && (!ctx.firstFs || !postgres.available)) continue;
    // The HTTP figures (9-12) measure the server's read-through path, paced by an origin: once per run, on the first filesystem.
    if (suite.run === serverFillFigures && !ctx.firstFs) continue;
    // Figure 16 (hits beside nginx) is about the server's hit path and process model: once per run, on the first filesystem.
    if (suite.run === hitFigures && !ctx.firstFs) continue;
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
    ...(postgresEnvironment === undefined ? {} : { postgres: postgresEnvironment }),
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
