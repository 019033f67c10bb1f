import type { Command } from 'commander';
import { uniqueIds } from '../context.js';
import { CliErrorCodes, usageError } from '../errors.js';
import type { RegisterCommand } from './types.js';

/** Checks that exactly one of `<id...>` and `--all` was given. */
export function idsOrAll(ids: readonly string[], all: boolean | undefined, command: string): void {
  if (all === true && ids.length > 0) throw usageError(CliErrorCodes.USAGE, `${command}: give image ids or --all, not both`);
  if (all !== true && ids.length === 0) throw usageError(CliErrorCodes.USAGE, `${command}: give one or more image ids, or --all`);
}

/** `image-cache dequeue <id...> | --all`: removes queue markers. */
export const registerDequeue: RegisterCommand = (program, ctx) => {
  program
    .command('dequeue')
    .description('remove images from the prefetch queue')
    .argument('[ids...]', 'image ids')
    .option('--all', 'empty the whole queue')
    .action(async (rawIds: string[], options: { all?: boolean }, command: Command) => {
      idsOrAll(rawIds, options.all, 'dequeue');
      const ids = uniqueIds(rawIds);
      await ctx.withCache(command, { mustExist: true, ids }, async (cache) => {
        if (options.all === true) {
          const count = await cache.deleteAllQueuedImages();
          ctx.out(`dequeued ${count} image${count === 1 ? '' : 's'}`);
          return;
        }
        for (const id of ids) {
          if (await cache.isQueued(id)) {
            await cache.deleteQueuedImage(id);
            ctx.out(`dequeued ${id}`);
          } else {
            ctx.out(`not queued ${id}`);
          }
        }
      });
    });
};
