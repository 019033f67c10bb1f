import type { Command } from 'commander';
import { formatSize, formatSizeExact } from '../units.js';
import type { RegisterCommand } from './types.js';

/** What `prune --json` prints. */
export interface PruneReport {
  /** Entries evicted, least recently accessed first. */
  evicted: string[];
  files: number;
  bytes: number;
  /** Cache size after the prune. */
  size: number;
  maxSize: number;
}

/** `image-cache prune [--max-size <size>] [--json]`: evicts least recently accessed images until the cache fits the budget. */
export const registerPrune: RegisterCommand = (program, ctx) => {
  program
    .command('prune')
    .description('evict least recently accessed images until the cache is within --max-size')
    .option('--json', 'print JSON')
    .action(async (options: { json?: boolean }, command: Command) => {
      await ctx.withCache(command, { mustExist: true }, async (cache, config) => {
        const before = await cache.getCachedImages();
        const { files, bytes } = await cache.prune();
        const after = await cache.getCachedImages();
        const left = new Set(after.map((image) => image.imageId));
        const evicted = before
          .filter((image) => !left.has(image.imageId))
          .sort((a, b) => a.lastAccessed - b.lastAccessed || a.lastModified - b.lastModified)
          .map((image) => image.imageId);
        const size = after.reduce((sum, image) => sum + image.size, 0);
        const report: PruneReport = { evicted, files, bytes, size, maxSize: config.maxSize };
        if (options.json === true) ctx.json(report);
        else {
          ctx.out(
            `pruned ${files} image${files === 1 ? '' : 's'} (${formatSize(bytes)})${evicted.length > 0 ? `: ${evicted.join(', ')}` : ''}; ` +
              `cache ${formatSize(size)} of ${formatSizeExact(config.maxSize)} budget`,
          );
        }
        if (size > config.maxSize) {
          ctx.warn(`cache is still ${formatSize(size - config.maxSize)} over budget: entries were committed while pruning`);
        }
      });
    });
};
