import type { Command } from 'commander';
import { describeError } from '../errors.js';
import { formatDuration } from '../units.js';
import type { RegisterCommand } from './types.js';

/** `image-cache clean [--stall-time <duration>] [--json]`: deletes invalid files and stalled incomplete files. */
export const registerClean: RegisterCommand = (program, ctx) => {
  program
    .command('clean')
    .description('delete failed writes (invalid/) and stalled downloads (incomplete/ older than --stall-time), reconcile metadata')
    .option('--stall-time <duration>', 'age after which an incomplete file is stalled: seconds or 30m, 1h, 1d (env IMAGE_CACHE_STALL_TIME; default 1d)')
    .option('--json', 'print JSON')
    .action(async (options: { json?: boolean }, command: Command) => {
      await ctx.withCache(command, { mustExist: true }, async (cache, config) => {
        const report = await cache.clean(config.stallTime);
        const errors = report.errors.map((error) => describeError(error));
        if (options.json === true) {
          ctx.json({ ...report, errors, stallTime: config.stallTime });
        } else {
          ctx.out(
            `removed ${report.invalid} invalid and ${report.stalled} stalled file${report.stalled === 1 ? '' : 's'} ` +
              `(stall time ${formatDuration(config.stallTime)}); ${report.orphanRecords} orphan records, ` +
              `${report.adoptedFiles} adopted files, ${report.staleQueueMarkers} stale queue markers`,
          );
        }
        for (const error of errors) ctx.warn(`could not delete: ${error}`);
        if (errors.length > 0) ctx.fail();
      });
    });
};
