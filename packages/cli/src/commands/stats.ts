import type { Command } from 'commander';
import { diskSpace, resolveThresholds, type DiskSpace, type ImageCache, type ResolvedThresholds, type SpaceThreshold } from '@cache/core';
import type { ConfigSource, ResolvedConfig } from '../config.js';
import { describeServer, describeSource, type RecordedSettings } from '../settings-file.js';
import { formatDuration, formatSize, formatSizeExact, formatThreshold, formatTime } from '../units.js';
import type { RegisterCommand } from './types.js';

/** What `stats --json` prints. */
export interface CacheStats {
  driver: string;
  cacheDir: string;
  entries: number;
  totalSize: number;
  maxSize: number;
  /** Where {@link maxSize} came from (`serve`: the settings `image-cache serve` recorded in the directory). */
  maxSizeSource: ConfigSource;
  /** (totalSize + invalid.size) / maxSize, in percent (one decimal): files in `invalid/` count against the budget. */
  usedPercent: number;
  queued: number;
  incomplete: { count: number; size: number };
  invalid: { count: number; size: number };
  oldestAccess: { imageId: string; lastAccessed: number } | null;
  newestAccess: { imageId: string; lastAccessed: number } | null;
  /**
   * The settings the last `image-cache serve` on this directory runs (or ran)
   * with, from its settings file, or null when none was recorded.
   */
  server: { file: string; running: boolean | null; pid: number; url: string; startedAt: string; settings: RecordedSettings['settings'] } | null;
  /**
   * The cache filesystem (statfs: bytes and inodes, total and free) and the
   * free-space thresholds in force: those configured (`--free-run` ...),
   * else those `image-cache serve` recorded; each resolved to free bytes and
   * inodes, with `below` saying which are crossed now. `thresholds` is null when none are set.
   */
  filesystem: DiskSpace & {
    thresholds: (ResolvedThresholds & { source: ConfigSource | 'recorded'; below: ('run' | 'cull' | 'stop')[] }) | null;
  };
}

/** Gathers {@link CacheStats} with one listing of each part of the cache directory. */
export async function cacheStats(
  cache: ImageCache,
  config: Pick<ResolvedConfig, 'maxSize' | 'sources' | 'recorded'> & Partial<Pick<ResolvedConfig, 'freeRun' | 'freeCull' | 'freeStop'>>,
): Promise<CacheStats> {
  const [images, queued, incomplete, invalid] = await Promise.all([
    cache.getCachedImages(),
    cache.getQueuedImages(),
    cache.listFiles('incomplete'),
    cache.listFiles('invalid'),
  ]);
  const totalSize = images.reduce((sum, image) => sum + image.size, 0);
  const invalidSize = invalid.reduce((sum, entry) => sum + entry.size, 0);
  const used = totalSize + invalidSize;
  const recorded = config.recorded;
  const byAccess = [...images].sort((a, b) => a.lastAccessed - b.lastAccessed || (a.imageId < b.imageId ? -1 : 1));
  const disk = await diskSpace(cache.driver.cacheDir);
  const given: { run: SpaceThreshold; cull: SpaceThreshold; stop: SpaceThreshold } | undefined =
    config.freeRun !== undefined && config.freeCull !== undefined && config.freeStop !== undefined
      ? { run: config.freeRun, cull: config.freeCull, stop: config.freeStop }
      : undefined;
  const spec = given ?? recorded?.record.settings.freeSpace?.value ?? undefined;
  let thresholds: CacheStats['filesystem']['thresholds'] = null;
  if (spec !== undefined && spec !== null) {
    try {
      const resolved = resolveThresholds(spec, disk);
      const below = (['run', 'cull', 'stop'] as const).filter((name) => {
        const threshold = resolved[name];
        return disk.freeBytes < threshold.bytes || (threshold.files !== undefined && disk.freeFiles < threshold.files);
      });
      thresholds = { ...resolved, source: given === undefined ? 'recorded' : config.sources.freeRun, below };
    } catch {
      thresholds = null; // thresholds this filesystem cannot hold (serve refuses them too)
    }
  }
  const oldest = byAccess[0];
  const newest = byAccess.at(-1);
  return {
    driver: cache.driver.name,
    cacheDir: cache.driver.cacheDir,
    entries: images.length,
    totalSize,
    maxSize: config.maxSize,
    maxSizeSource: config.sources.maxSize,
    usedPercent: config.maxSize > 0 ? Math.round((used / config.maxSize) * 1000) / 10 : used > 0 ? Infinity : 0,
    queued: queued.length,
    incomplete: { count: incomplete.length, size: incomplete.reduce((sum, entry) => sum + entry.size, 0) },
    invalid: { count: invalid.length, size: invalidSize },
    oldestAccess: oldest === undefined ? null : { imageId: oldest.imageId, lastAccessed: oldest.lastAccessed },
    newestAccess: newest === undefined ? null : { imageId: newest.imageId, lastAccessed: newest.lastAccessed },
    server:
      recorded === undefined
        ? null
        : {
            file: recorded.path,
            running: recorded.running ?? null,
            pid: recorded.record.pid,
            url: recorded.record.url,
            startedAt: recorded.record.startedAt,
            settings: recorded.record.settings,
          },
    filesystem: { ...disk, thresholds },
  };
}

/**
 * `image-cache stats [--json]`: entries, sizes, budget (and where it came
 * from), queue, incomplete and invalid counts, access range, and the settings
 * the last `image-cache serve` on the directory recorded.
 */
export const registerStats: RegisterCommand = (program, ctx) => {
  program
    .command('stats')
    .description("summarize the cache: entries, total size, budget, queue, incomplete/invalid files, oldest/newest access, and the settings of the server on it")
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
          ['budget', `${formatSizeExact(stats.maxSize)} (${stats.usedPercent}% used, invalid/ included; from ${describeSource(config, 'maxSize')})`],
          ['queued', String(stats.queued)],
          ['incomplete', `${stats.incomplete.count} (${formatSize(stats.incomplete.size)})`],
          ['invalid', `${stats.invalid.count} (${formatSize(stats.invalid.size)})`],
          ['oldest access', access(stats.oldestAccess)],
          ['newest access', access(stats.newestAccess)],
          [
            'filesystem',
            `${formatSize(stats.filesystem.freeBytes)} free of ${formatSize(stats.filesystem.totalBytes)} (${percent(stats.filesystem.freeBytes, stats.filesystem.totalBytes)}), ` +
              `${stats.filesystem.freeFiles} of ${stats.filesystem.totalFiles} inodes free`,
          ],
        ];
        const thresholds = stats.filesystem.thresholds;
        if (thresholds !== null) {
          const shown = (name: 'run' | 'cull' | 'stop') => `${name} ${formatThreshold(thresholds.spec[name])} (${formatSize(thresholds[name].bytes)})`;
          const state = thresholds.below.includes('stop') ? 'below stop: not caching new images' : thresholds.below.includes('cull') ? 'below cull: culling' : 'ok';
          rows.push(['free space', `${shown('run')}, ${shown('cull')}, ${shown('stop')}: ${state} (from ${thresholds.source === 'recorded' ? 'the server' : thresholds.source})`]);
        }
        const server = config.recorded;
        if (server !== undefined) {
          const recordedSettings = server.record.settings;
          rows.push(['server', `image-cache serve ${describeServer(server)}`]);
          if (config.sources.maxSize !== 'serve') rows.push(['server budget', `${formatSizeExact(recordedSettings.maxSize.value)} (${recordedSettings.maxSize.source})`]);
          rows.push([
            'server runs',
            `${recordedSettings.driver.value} driver, stall time ${formatDuration(recordedSettings.stallTime.value)}, ` +
              `${every('prune', recordedSettings.pruneInterval.value)}, ${every('clean', recordedSettings.cleanInterval.value)}, ` +
              `management API ${recordedSettings.token.value ? 'with a token' : 'without a token'}, origin ${recordedSettings.origin.value ?? '(none)'}`,
          ]);
          const processes = [
            recordedSettings.workers === undefined ? undefined : `${recordedSettings.workers.value} worker process${recordedSettings.workers.value === 1 ? '' : 'es'}`,
            recordedSettings.durability === undefined ? undefined : `${recordedSettings.durability.value} durability`,
          ].filter((part) => part !== undefined);
          if (processes.length > 0) rows.push(['server with', processes.join(', ')]);
          const timeouts = recordedSettings.originTimeouts?.value;
          if (timeouts !== undefined && recordedSettings.origin.value !== null) {
            const headerNames = recordedSettings.originHeaderNames?.value ?? [];
            rows.push([
              'server origin',
              `headers within ${formatDuration(timeouts.headers)}, ${timeouts.idle === 0 ? 'no idle timeout' : `idle at most ${formatDuration(timeouts.idle)}`}, ` +
                `${timeouts.total === null || timeouts.total === 0 ? 'no total limit' : `at most ${formatDuration(timeouts.total)} in all`}, ` +
                `${timeouts.retries} retr${timeouts.retries === 1 ? 'y' : 'ies'} before the first byte` +
                (headerNames.length > 0 ? `, headers ${headerNames.join(', ')}` : ''),
            ]);
          }
          const clusterSettings = recordedSettings.cluster?.value;
          if (clusterSettings !== undefined && clusterSettings !== null) {
            rows.push([
              'server cluster',
              `advertised as ${clusterSettings.advertiseUrl ?? 'its bound URL'}, heartbeat every ${formatDuration(clusterSettings.heartbeatInterval)}, ` +
                `dead after ${formatDuration(clusterSettings.heartbeatExpiry)}, peers get ${formatDuration(clusterSettings.peerTimeout)}`,
            ]);
          }
          rows.push(['recorded in', server.path]);
        }
        for (const [key, value] of rows) ctx.out(`${key.padEnd(14)}${value}`);
      });
    });
};

function percent(part: number, whole: number): string {
  return whole > 0 ? `${Math.round((part / whole) * 1000) / 10}%` : '-';
}

/** `prune every 5m`, or `prune off` for a disabled worker (interval 0). */
function every(worker: string, seconds: number): string {
  return seconds > 0 ? `${worker} every ${formatDuration(seconds)}` : `${worker} off`;
}
