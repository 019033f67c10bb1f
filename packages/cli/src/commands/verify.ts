import type { Command } from 'commander';
import { mapLimit } from '@cache/core/driver';
import { uniqueIds } from '../context.js';
import { verifyEntry, type VerifyResult } from '../verify/verify-entry.js';
import type { RegisterCommand } from './types.js';

interface VerifyOptions {
  json?: boolean;
  delete?: boolean;
}

/** `image-cache verify [id...] [--delete] [--json]`: re-hashes entries against their stored digests and quarantines mismatches. */
export const registerVerify: RegisterCommand = (program, ctx) => {
  program
    .command('verify')
    .description('re-hash cached images against the digest stored when they were cached; quarantine mismatches in invalid/')
    .argument('[ids...]', 'image ids (default: every cached image)')
    .option('--delete', 'delete mismatching entries instead of moving them to invalid/')
    .option('--json', 'print JSON')
    .action(async (rawIds: string[], options: VerifyOptions, command: Command) => {
      const given = uniqueIds(rawIds);
      await ctx.withCache(command, { mustExist: true, ids: given }, async (cache) => {
        const ids = given.length > 0 ? given : (await cache.getCachedImages()).map((image) => image.imageId);
        const mode = options.delete === true ? 'delete' : 'invalid';
        const results = await mapLimit(ids, 4, (id) => verifyEntry(cache, id, mode));
        const count = (status: VerifyResult['status']) => results.filter((result) => result.status === status).length;
        const summary = { ok: count('ok'), mismatch: count('mismatch'), unverifiable: count('unverifiable'), missing: count('missing') };
        if (options.json === true) ctx.json({ results, summary });
        else {
          for (const result of results) ctx.out(describe(result));
          ctx.out(
            `verified ${results.length} image${results.length === 1 ? '' : 's'}: ${summary.ok} ok, ${summary.mismatch} mismatched` +
              `${summary.mismatch > 0 ? (mode === 'delete' ? ' (deleted)' : ' (moved to invalid/)') : ''}, ` +
              `${summary.unverifiable} unverifiable${summary.missing > 0 ? `, ${summary.missing} not cached` : ''}`,
          );
        }
        // A given id that is not cached is an error; an entry deleted while verifying everything is not.
        if (summary.mismatch > 0 || (given.length > 0 && summary.missing > 0)) ctx.fail();
      });
    });
};

function describe(result: VerifyResult): string {
  switch (result.status) {
    case 'ok':
      return `ok           ${result.imageId}`;
    case 'unverifiable':
      return `unverifiable ${result.imageId}: ${result.reason ?? ''}`;
    case 'missing':
      return `not cached   ${result.imageId}`;
    case 'mismatch':
      return (
        `MISMATCH     ${result.imageId}: expected ${result.expected ?? ''}, got ${result.actual ?? ''}; ` +
        (result.action === 'deleted' ? 'deleted' : `moved to ${result.path ?? 'invalid/'}`)
      );
  }
}
