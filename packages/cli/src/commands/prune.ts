import type { Command } from 'commander';
import { formatSize, formatSizeExact } from '../units.js';
import type { RegisterCommand } from './types.js';

/** What `prune --json` prints. */
export interface PruneReport {
  /** Entries evicted, least recently accessed first. */
  evicted: string[];
  files: number;
  bytes: number;
  /** Files deleted from `invalid/` (failed and quarantined writes): they count against the budget and go first. */
  invalid: { files: number; bytes: number };
  /** Cache size after the prune, `invalid/` included. */
  size: number;
  maxSize: number;
}

/**
 * `image-cache prune [--max-size <size>] [--json]`: evicts least recently
 * accessed images until the cache fits the budget. Files in `invalid/` count
 * against it and are deleted first.
 */
export const registerPrune: RegisterCommand = (program, ctx) => {
  program
    .command('prune')
    .description('evict least recently accessed images until the cache is within --max-size (files in invalid/ count and go first)')
    .option('--json', 'print JSON')
    .action(async (options: { json?: boolean }, command: Command) => {
      await ctx.withCache(command, { mustExist: true }, async (cache, config) => {
        const before = await cache.getCachedImages();
        const { files, bytes, invalid = { files: 0, bytes: 0 } } = await cache.prune({ includeInvalid: true });
        const after = await cache.getCachedImages();
        const invalidLeft = (await cache.listFiles('invalid')).reduce((sum, file) => sum + file.size, 0);
        const left = new Set(after.map((image) => image.imageId));
        const evicted = before
          .filter((image) => !left.has(image.imageId))
          .sort((a, b) => a.lastAccessed - b.lastAccessed || a.lastModified - b.lastModified)
          .map((image) => image.imageId);
        const size = after.reduce((sum, image) => sum + image.size, 0) + invalidLeft;
        const report: PruneReport = { evicted, files, bytes, invalid, size, maxSize: config.maxSize };
        if (options.json === true) ctx.json(report);
        else {
          const removedInvalid = invalid.files > 0 ? `removed ${invalid.files} invalid file${invalid.files === 1 ? '' : 's'} (${formatSize(invalid.bytes)}), ` : '';
          ctx.out(
            `${removedInvalid}pruned ${files} image${files === 1 ? '' : 's'} (${formatSize(bytes)})${evicted.length > 0 ? `: ${evicted.join(', ')}` : ''}; ` +
              `cache ${formatSize(size)} of ${formatSizeExact(config.maxSize)} budget`,
          );
        }
        if (size > config.maxSize) {
          ctx.warn(`cache is still ${formatSize(size - config.maxSize)} over budget: entries were committed while pruning`);
        }
      });
    });
};
