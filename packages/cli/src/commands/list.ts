import type { Command } from 'commander';
import { renderTable } from '../table.js';
import { formatSize, formatTime } from '../units.js';
import type { RegisterCommand } from './types.js';

interface ListOptions {
  json?: boolean;
  queued?: boolean;
}

/** `image-cache list [--queued] [--json]`: the cached images (or the queue) as a table or JSON. */
export const registerList: RegisterCommand = (program, ctx) => {
  program
    .command('list')
    .description('list cached images: id, size, hits, last accessed (UTC)')
    .option('--queued', 'list the prefetch queue instead, oldest first')
    .option('--json', 'print JSON: an array of {imageId, size, hits, lastAccessed, lastModified} (epoch seconds)')
    .action(async (options: ListOptions, command: Command) => {
      await ctx.withCache(command, { mustExist: true }, async (cache) => {
        if (options.queued === true) {
          const queued = await cache.getQueuedImages();
          if (options.json === true) ctx.json(queued);
          else if (queued.length === 0) ctx.out('No queued images.');
          else for (const id of queued) ctx.out(id);
          return;
        }
        const images = await cache.getCachedImages();
        if (options.json === true) {
          ctx.json(images.map(({ imageId, size, hits, lastAccessed, lastModified }) => ({ imageId, size, hits, lastAccessed, lastModified })));
          return;
        }
        if (images.length === 0) {
          ctx.out('No cached images.');
          return;
        }
        ctx.out(
          renderTable(
            ['ID', 'Size', 'Hits', 'Last accessed (UTC)', 'Last modified (UTC)'],
            images.map((image) => [image.imageId, formatSize(image.size), image.hits, formatTime(image.lastAccessed), formatTime(image.lastModified)]),
            ['left', 'right', 'right', 'left', 'left'],
          ),
        );
      });
    });
};
