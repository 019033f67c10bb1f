import { parseArgs } from 'node:util';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Where the bench package lives (bench/), whatever the working directory. */
export const BENCH_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** A filesystem to run on: a name for the tables and a writable directory on it. */
export interface FsTarget {
  name: string;
  path: string;
}

/** The figures are numbered 1..FIGURES (bench/README.md). */
export const FIGURES = 16;

/** Figures that need the bench's PostgreSQL server (the postgres driver's rows of 4 and 5, and 8). */
export const POSTGRES_FIGURES: readonly number[] = [4, 5, 8];

/** Figures measured once per run, on the first filesystem only (8: the database; 9-12: the HTTP read-through path; 16: hits over HTTP beside nginx). */
export const FIRST_FS_FIGURES: readonly number[] = [8, 9, 10, 11, 12, 16];

/** What `pnpm bench` was asked to do. */
export interface BenchOptions {
  quick: boolean;
  /** Filesystems given with `--fs`; empty means the default set. */
  fs: FsTarget[];
  out: string;
  /** Figures to run (1..FIGURES); all when empty. */
  only: Set<number>;
}

export const USAGE = `usage: pnpm bench [--quick] [--fs name=/path]... [--out DIR] [--only 1,2,...]

  --quick           smaller sizes for a smoke run: 256 MiB streams, 1k/10k entries,
                    10 nodes x 100/1k images, 16 MiB images over HTTP
  --fs name=/path   run on this directory's filesystem (repeatable). Default: the OS temp
                    dir, plus (as root) a tmpfs and a loop-mounted ext4 that the bench
                    mounts itself and removes on exit, even after a failure
  --out DIR         where latest.json and latest.md go (default: bench/results)
  --only LIST       only these figures (comma-separated numbers 1..16)
  --help            this text`;

/** Parses the command line (node:util parseArgs); throws with a readable message on bad input. */
export function parseOptions(argv: readonly string[]): BenchOptions | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      quick: { type: 'boolean', default: false },
      fs: { type: 'string', multiple: true, default: [] },
      out: { type: 'string' },
      only: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) return 'help';
  const fs = (values.fs ?? []).map((spec) => {
    const eq = spec.indexOf('=');
    const name = eq > 0 ? spec.slice(0, eq) : '';
    const path = eq > 0 ? spec.slice(eq + 1) : '';
    if (!/^[A-Za-z0-9._-]+$/.test(name) || path === '') {
      throw new Error(`--fs ${JSON.stringify(spec)}: expected name=/path (name: letters, digits, . _ -)`);
    }
    return { name, path: resolve(path) };
  });
  const names = new Set<string>();
  for (const target of fs) {
    if (names.has(target.name)) throw new Error(`--fs: the name ${target.name} is given twice`);
    names.add(target.name);
  }
  const only = new Set<number>();
  for (const part of (values.only ?? '').split(',').filter((p) => p.trim() !== '')) {
    const n = Number(part);
    if (!Number.isInteger(n) || n < 1 || n > FIGURES) throw new Error(`--only: ${JSON.stringify(part)} is not a figure number 1..${FIGURES}`);
    only.add(n);
  }
  const out = values.out === undefined ? join(BENCH_DIR, 'results') : isAbsolute(values.out) ? values.out : resolve(values.out);
  return { quick: values.quick ?? false, fs, out, only };
}

/** The sizes a run uses. */
export interface Sizes {
  /** Bytes of the large streams (figures 1-3). */
  streamBytes: number;
  /** Chunk the in-memory origin yields. */
  chunkBytes: number;
  /** Entry counts of the listings and prunes (figures 5-6), small then large. */
  entries: [number, number];
  /** Bytes of each populated entry. */
  entryBytes: number;
  /** Wall-clock repetitions of whole runs (median reported). */
  repeats: number;
  /** Timed runs of each variant of the large-stream figures (1-3). */
  streamRepeats: number;
  /** tinybench time budget per task (ms). */
  opsTimeMs: number;
  /** Bytes of the read-through image (figure 7) and the number of concurrent callers. */
  readThroughBytes: number;
  readThroughCallers: number;
  /** Figure 8: node identities sharing one database, and the images per node (small, large). */
  clusterNodes: number;
  clusterImagesPerNode: [number, number];
  /** HTTP figures (9-12): bytes of the image of 9, 11 and 12, and of figure 10's (its slow client bounds a run's length). */
  httpImageBytes: number;
  httpSlowImageBytes: number;
  /** The throttled origin's pace per request, bytes/s. */
  httpOriginRate: number;
  /**
   * Figure 9's image and origin pace: 100 clients each at the origin's pace need
   * clients × pace from the server in all, so the pace is set where that total
   * (200 MiB/s) is well within what this kind of machine serves from a hit; at
   * 32 MiB/s the figure would measure the machine, not the fill.
   */
  httpBurstImageBytes: number;
  httpBurstOriginRate: number;
  /** Concurrent clients of figure 9, servers of figure 12 (the clients are shared among them). */
  httpClients: number;
  httpServers: number;
  /** The slow client of figure 10: curl --limit-rate. */
  httpSlowRate: string;
  /** Interleaved repetitions of each side of an HTTP figure (median reported). */
  httpRepeats: number;
  /** Figure 13: fills per run and the bytes of each (the budget is their product). */
  spaceFills: number;
  spaceFillBytes: number;
  /** Figure 16: the small and medium images hit by `hitConnections` keep-alive connections for `hitSeconds` per run, and the large one fetched whole. */
  hitSmallBytes: number;
  hitMediumBytes: number;
  hitLargeBytes: number;
  hitConnections: number;
  hitSeconds: number;
}

export const MiB = 1024 * 1024;

export function sizesFor(quick: boolean): Sizes {
  return quick
    ? {
        streamBytes: 256 * MiB,
        chunkBytes: MiB,
        entries: [1_000, 10_000],
        entryBytes: 1024,
        repeats: 3,
        streamRepeats: 3,
        opsTimeMs: 250,
        readThroughBytes: 4 * MiB,
        readThroughCallers: 100,
        clusterNodes: 10,
        clusterImagesPerNode: [100, 1_000],
        httpImageBytes: 16 * MiB,
        httpSlowImageBytes: 16 * MiB,
        httpOriginRate: 32 * MiB,
        httpBurstImageBytes: 8 * MiB,
        httpBurstOriginRate: 2 * MiB,
        httpClients: 100,
        httpServers: 4,
        httpSlowRate: '1M',
        httpRepeats: 3,
        spaceFills: 16,
        spaceFillBytes: 8 * MiB,
        hitSmallBytes: 64 * 1024,
        hitMediumBytes: MiB,
        hitLargeBytes: 64 * MiB,
        hitConnections: 32,
        hitSeconds: 3,
      }
    : {
        streamBytes: 1024 * MiB,
        chunkBytes: MiB,
        entries: [10_000, 100_000],
        entryBytes: 1024,
        repeats: 3,
        streamRepeats: 5,
        opsTimeMs: 500,
        readThroughBytes: 16 * MiB,
        readThroughCallers: 100,
        clusterNodes: 10,
        clusterImagesPerNode: [1_000, 10_000],
        httpImageBytes: 64 * MiB,
        httpSlowImageBytes: 32 * MiB,
        httpOriginRate: 32 * MiB,
        httpBurstImageBytes: 16 * MiB,
        httpBurstOriginRate: 2 * MiB,
        httpClients: 100,
        httpServers: 4,
        httpSlowRate: '1M',
        httpRepeats: 3,
        spaceFills: 32,
        spaceFillBytes: 32 * MiB,
        hitSmallBytes: 64 * 1024,
        hitMediumBytes: MiB,
        hitLargeBytes: 256 * MiB,
        hitConnections: 32,
        hitSeconds: 5,
      };
}
