import type { Command } from 'commander';
import { CliErrorCodes, usageError } from '../errors.js';
import { renderTable } from '../table.js';
import { formatSize, formatTime } from '../units.js';
import { readClusterStatus, renderNodes } from './nodes.js';
import type { RegisterCommand } from './types.js';

interface ListOptions {
  json?: boolean;
  queued?: boolean;
  cluster?: boolean;
}

/** `image-cache list [--queued] [--json]`: the cached images (or the queue) as a table or JSON. */
export const registerList: RegisterCommand = (program, ctx) => {
  program
    .command('list')
    .description('list cached images: id, size, hits, last accessed (UTC)')
    .option('--queued', 'list the prefetch queue instead, oldest first')
    .option('--cluster', 'postgres driver: every image of every node: which nodes hold it (and their health), sizes, hits; then the nodes')
    .option('--json', 'print JSON: an array of {imageId, size, hits, lastAccessed, lastModified} (epoch seconds); with --cluster {nodes, images}')
    .action(async (options: ListOptions, command: Command) => {
      if (options.cluster === true) {
        if (options.queued === true) throw usageError(CliErrorCodes.USAGE, '--cluster lists cached images: leave out --queued');
        const status = await readClusterStatus(ctx, command, 'list --cluster');
        if (options.json === true) {
          ctx.json(status);
          return;
        }
        if (status.images.length === 0) ctx.out('No cached images on any node.');
        else {
          ctx.out(
            renderTable(
              ['ID', 'Size', 'Hits', 'Nodes'],
              status.images.map((image) => [
                image.imageId,
                formatSize(image.size),
                image.hits,
                image.copies.map((copy) => `${copy.nodeId} (${copy.health}, ${copy.hits} hits)`).join(', '),
              ]),
              ['left', 'right', 'right', 'left'],
            ),
          );
        }
        ctx.out('');
        ctx.out(status.nodes.length === 0 ? 'No nodes.' : renderNodes(status));
        return;
      }
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
