import type { Command } from 'commander';
import { uniqueIds } from '../context.js';
import { idsOrAll } from './dequeue.js';
import type { RegisterCommand } from './types.js';

/** `image-cache delete <id...> | --all`: deletes cached images (queue markers are left alone). */
export const registerDelete: RegisterCommand = (program, ctx) => {
  program
    .command('delete')
    .description('delete cached images (use dequeue for the queue)')
    .argument('[ids...]', 'image ids')
    .option('--all', 'delete every cached image')
    .action(async (rawIds: string[], options: { all?: boolean }, command: Command) => {
      idsOrAll(rawIds, options.all, 'delete');
      const ids = uniqueIds(rawIds);
      await ctx.withCache(command, { mustExist: true, ids }, async (cache) => {
        if (options.all === true) {
          const count = await cache.deleteAllCachedImages();
          ctx.out(`deleted ${count} cached image${count === 1 ? '' : 's'}`);
          return;
        }
        for (const id of ids) {
          if (await cache.isCached(id)) {
            await cache.deleteCachedImage(id);
            ctx.out(`deleted ${id}`);
          } else {
            ctx.out(`not cached ${id}`);
          }
        }
      });
    });
};
