import type { Command } from 'commander';
import { uniqueIds } from '../context.js';
import type { RegisterCommand } from './types.js';

/** `image-cache queue <id...>`: adds ids to the prefetch queue. */
export const registerQueue: RegisterCommand = (program, ctx) => {
  program
    .command('queue')
    .description('queue images for prefetch (creates the cache directory if needed)')
    .argument('<ids...>', 'image ids')
    .action(async (rawIds: string[], _options: unknown, command: Command) => {
      const ids = uniqueIds(rawIds);
      await ctx.withCache(command, { mustExist: false, ids }, async (cache) => {
        for (const id of ids) {
          if (await cache.queueImage(id)) ctx.out(`queued ${id}`);
          else if (await cache.isCached(id)) ctx.out(`not queued ${id}: already cached`);
          else if (await cache.isBeingCached(id)) ctx.out(`not queued ${id}: being cached`);
          else ctx.out(`not queued ${id}: already queued`);
        }
      });
    });
};
