import { stat } from 'node:fs/promises';
import type { Command } from 'commander';
import type { ImageId, NormalizedChecksum } from '@cache/core';
import { DirectoryOrigin, type Origin } from '@cache/origin';
import { uniqueIds } from '../context.js';
import { CliErrorCodes, ExitCode, usageError } from '../errors.js';
import { addOriginOptions, openOrigin } from '../origin-options.js';
import { readChecksumManifest } from '../prefetch/checksums.js';
import { BarReporter, LineReporter, type ProgressReporter } from '../prefetch/progress.js';
import { prefetchImages, type PrefetchResult } from '../prefetch/run.js';
import { formatDuration, formatSize } from '../units.js';
import type { RegisterCommand } from './types.js';

interface PrefetchOptions {
  checksums?: string;
  progress: boolean;
  json?: boolean;
}

/** `image-cache prefetch [id...]`: caches every queued image (or the given ones) from an origin. */
export const registerPrefetch: RegisterCommand = (program, ctx) => {
  const cmd = program
    .command('prefetch')
    .description('cache every queued image (or the given ids, which are queued first) from an origin')
    .argument('[ids...]', 'image ids to queue and fetch (default: the whole queue)')
    .option('--origin <url-or-dir>', 'URL template with {id} (https://origin/images/{id}), glance+https://host:9292, or a directory (env IMAGE_CACHE_ORIGIN)');
  addOriginOptions(cmd)
    .option('--concurrency <n>', 'images fetched at once (env IMAGE_CACHE_CONCURRENCY; default 4)')
    .option('--durability <mode>', 'strict: every commit is fsynced before it counts (default); relaxed: no fsync, as Glance; entries not yet synced are re-verified or dropped after a crash (env IMAGE_CACHE_DURABILITY)')
    .option(
      '--retries <n>',
      'whole-image attempts: retries of an image whose attempt failed, e.g. its download broke off mid-body; 404s and checksum mismatches are not retried. ' +
        'Within each attempt, --origin-retries retries the origin request itself before its first byte (default 3)',
    )
    .option('--retry-delay <duration>', 'wait before the first whole-image retry, doubled for each further one (default 1s)')
    .option('--checksums <file>', 'expected digests, "<hex>  <id>" per line (md5sum/sha256sum/sha512sum output), read once; wins over --manifest')
    .option('--no-progress', 'no progress bars even on a terminal (one line per image instead)')
    .option('--json', 'print a JSON report instead of the summary line')
    .action(async (rawIds: string[], options: PrefetchOptions, command: Command) => {
      const given = uniqueIds(rawIds);
      const config = await ctx.config(command);
      if (config.origin === undefined) {
        throw usageError(CliErrorCodes.MISSING_ORIGIN, 'no origin: pass --origin <url-template-or-dir>, set IMAGE_CACHE_ORIGIN, or put "origin" in the config file');
      }
      const origin = openOrigin(config.origin, config, (message) => ctx.warn(message));
      await assertOriginDirectory(origin);
      const checksums: ReadonlyMap<ImageId, NormalizedChecksum> =
        options.checksums === undefined ? new Map() : await readChecksumManifest(options.checksums, ctx.io.cwd);
      await ctx.withCache(command, { mustExist: false, ids: given, config }, async (cache) => {
        for (const id of given) await cache.queueImage(id);
        const ids = given.length > 0 ? given : await cache.getQueuedImages();
        if (ids.length === 0) {
          if (options.json === true) ctx.json({ origin: origin.description, results: [], summary: summarize([], 0) });
          else ctx.out('prefetch: nothing queued');
          return;
        }
        const reporter: ProgressReporter =
          options.progress && ctx.stderrIsTTY ? new BarReporter(ctx.io.stderr) : new LineReporter(ctx.io.stderr);
        const startedAt = performance.now();
        const results = await prefetchImages({
          cache,
          origin,
          ids,
          concurrency: config.concurrency,
          retries: config.retries,
          retryDelay: config.retryDelay,
          checksums,
          reporter,
          signal: ctx.io.signal,
        });
        const summary = summarize(results, (performance.now() - startedAt) / 1000);
        if (options.json === true) ctx.json({ origin: origin.description, results, summary });
        else ctx.out(summaryLine(summary));
        if (summary.cancelled > 0 || ctx.io.signal?.aborted === true) ctx.fail(ExitCode.INTERRUPTED);
        else if (summary.failed > 0) ctx.fail();
      });
    });
};

/** Totals of a prefetch run. */
export interface PrefetchSummary {
  total: number;
  fetched: number;
  alreadyCached: number;
  skipped: number;
  failed: number;
  cancelled: number;
  bytes: number;
  seconds: number;
}

function summarize(results: readonly PrefetchResult[], seconds: number): PrefetchSummary {
  const count = (status: PrefetchResult['status']) => results.filter((result) => result.status === status).length;
  return {
    total: results.length,
    fetched: count('fetched'),
    alreadyCached: count('already-cached'),
    skipped: count('skipped'),
    failed: count('failed'),
    cancelled: count('cancelled'),
    bytes: results.reduce((sum, result) => sum + (result.status === 'fetched' ? result.bytes : 0), 0),
    seconds,
  };
}

function summaryLine(s: PrefetchSummary): string {
  const parts = [`${s.fetched} fetched (${formatSize(s.bytes)})`];
  if (s.alreadyCached > 0) parts.push(`${s.alreadyCached} already cached`);
  if (s.skipped > 0) parts.push(`${s.skipped} skipped`);
  parts.push(`${s.failed} failed`);
  if (s.cancelled > 0) parts.push(`${s.cancelled} cancelled`);
  return `prefetch: ${parts.join(', ')} of ${s.total} in ${formatDuration(s.seconds)}`;
}

/** A directory origin that does not exist is a configuration mistake, not 404s for every image. */
async function assertOriginDirectory(origin: Origin): Promise<void> {
  if (!(origin instanceof DirectoryOrigin)) return;
  const info = await stat(origin.directory).catch(() => undefined);
  if (info?.isDirectory() !== true) {
    throw usageError(CliErrorCodes.MISSING_ORIGIN, `origin directory ${origin.directory} does not exist or is not a directory`);
  }
}
