import type { Command } from 'commander';
import { type ImageCache } from '@cache/core';
import type { ResolvedConfig } from '../config.js';
import { formatSize, formatSizeExact, formatTime } from '../units.js';
import type { RegisterCommand } from './types.js';

/** What `stats --json` prints. */
export interface CacheStats {
  driver: string;
  cacheDir: string;
  entries: number;
  totalSize: number;
  maxSize: number;
  /** totalSize / maxSize, in percent (one decimal). */
  usedPercent: number;
  queued: number;
  incomplete: { count: number; size: number };
  invalid: { count: number; size: number };
  oldestAccess: { imageId: string; lastAccessed: number } | null;
  newestAccess: { imageId: string; lastAccessed: number } | null;
}

/** Gathers {@link CacheStats} with one listing of each part of the cache directory. */
export async function cacheStats(cache: ImageCache, config: Pick<ResolvedConfig, 'maxSize'>): Promise<CacheStats> {
  const [images, queued, incomplete, invalid] = await Promise.all([
    cache.getCachedImages(),
    cache.getQueuedImages(),
    cache.listFiles('incomplete'),
    cache.listFiles('invalid'),
  ]);
  const totalSize = images.reduce((sum, image) => sum + image.size, 0);
  const byAccess = [...images].sort((a, b) => a.lastAccessed - b.lastAccessed || (a.imageId < b.imageId ? -1 : 1));
  const oldest = byAccess[0];
  const newest = byAccess.at(-1);
  return {
    driver: cache.driver.name,
    cacheDir: cache.driver.cacheDir,
    entries: images.length,
    totalSize,
    maxSize: config.maxSize,
    usedPercent: config.maxSize > 0 ? Math.round((totalSize / config.maxSize) * 1000) / 10 : totalSize > 0 ? Infinity : 0,
    queued: queued.length,
    incomplete: { count: incomplete.length, size: incomplete.reduce((sum, entry) => sum + entry.size, 0) },
    invalid: { count: invalid.length, size: invalid.reduce((sum, entry) => sum + entry.size, 0) },
    oldestAccess: oldest === undefined ? null : { imageId: oldest.imageId, lastAccessed: oldest.lastAccessed },
    newestAccess: newest === undefined ? null : { imageId: newest.imageId, lastAccessed: newest.lastAccessed },
  };
}

/** `image-cache stats [--json]`: entries, sizes, budget, queue, incomplete and invalid counts, access range. */
export const registerStats: RegisterCommand = (program, ctx) => {
  program
    .command('stats')
    .description('summarize the cache: entries, total size, budget, queue, incomplete/invalid files, oldest/newest access')
    .option('--json', 'print JSON')
    .action(async (options: { json?: boolean }, command: Command) => {
      await ctx.withCache(command, { mustExist: true }, async (cache, config) => {
        const stats = await cacheStats(cache, config);
        if (options.json === true) {
          ctx.json({ ...stats, usedPercent: Number.isFinite(stats.usedPercent) ? stats.usedPercent : null });
          return;
        }
        const access = (entry: CacheStats['oldestAccess']) => (entry === null ? '-' : `${formatTime(entry.lastAccessed)} (${entry.imageId})`);
        const rows: [string, string][] = [
          ['driver', stats.driver],
          ['cache dir', stats.cacheDir],
          ['entries', String(stats.entries)],
          ['total size', `${formatSize(stats.totalSize)} (${stats.totalSize} bytes)`],
          ['budget', `${formatSizeExact(stats.maxSize)} (${stats.usedPercent}% used)`],
          ['queued', String(stats.queued)],
          ['incomplete', `${stats.incomplete.count} (${formatSize(stats.incomplete.size)})`],
          ['invalid', `${stats.invalid.count} (${formatSize(stats.invalid.size)})`],
          ['oldest access', access(stats.oldestAccess)],
          ['newest access', access(stats.newestAccess)],
        ];
        for (const [key, value] of rows) ctx.out(`${key.padEnd(14)}${value}`);
      });
    });
};
