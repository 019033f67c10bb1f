import type { Command } from 'commander';
import { type ImageCache, type ImageId } from '@cache/core';
import { CliErrorCodes, operationalError } from '../errors.js';
import { formatSize, formatTime } from '../units.js';
import type { RegisterCommand } from './types.js';

/** What `info --json` prints. */
export interface ImageInfo {
  imageId: ImageId;
  /** Primary state: `cached` wins over `being-cached`, then `queued`, then `invalid`. */
  state: 'cached' | 'being-cached' | 'queued' | 'invalid';
  cached: boolean;
  beingCached: boolean;
  queued: boolean;
  /** A failed or aborted write is kept in `invalid/` until the next clean. */
  invalid: boolean;
  size: number | null;
  hits: number | null;
  lastAccessed: number | null;
  lastModified: number | null;
  /** Digest stored at commit (`sha256:<hex>` or md5 hex), or null. */
  checksum: string | null;
  path: string;
}

/** Everything the cache knows about one id; `CLI_NOT_FOUND` (exit 1) when it knows nothing. */
export async function imageInfo(cache: ImageCache, id: ImageId): Promise<ImageInfo> {
  const [record, beingCached, queued, invalidFile] = await Promise.all([
    cache.stat(id),
    cache.isBeingCached(id),
    cache.isQueued(id),
    cache.statFile(id, 'invalid'),
  ]);
  const invalid = invalidFile !== null;
  const state = record !== null ? 'cached' : beingCached ? 'being-cached' : queued ? 'queued' : invalid ? 'invalid' : undefined;
  if (state === undefined) {
    throw operationalError(CliErrorCodes.NOT_FOUND, `image '${id}' is not in the cache (not cached, queued, being cached or invalid)`);
  }
  return {
    imageId: id,
    state,
    cached: record !== null,
    beingCached,
    queued,
    invalid,
    size: record?.size ?? null,
    hits: record?.hits ?? null,
    lastAccessed: record?.lastAccessed ?? null,
    lastModified: record?.lastModified ?? null,
    checksum: record?.storedChecksum ?? null,
    path: cache.getImageFilepath(id, state === 'cached' ? 'active' : state === 'being-cached' ? 'incomplete' : state === 'queued' ? 'queue' : 'invalid'),
  };
}

/** `image-cache info <id> [--json]`: state, size, hits, times, stored digest and path of one image. */
export const registerInfo: RegisterCommand = (program, ctx) => {
  program
    .command('info')
    .description('show what the cache knows about one image')
    .argument('<id>', 'image id')
    .option('--json', 'print JSON')
    .action(async (id: string, options: { json?: boolean }, command: Command) => {
      await ctx.withCache(command, { mustExist: true, ids: [id] }, async (cache) => {
        const info = await imageInfo(cache, id);
        if (options.json === true) {
          ctx.json(info);
          return;
        }
        const yesNo = (value: boolean) => (value ? 'yes' : 'no');
        const rows: [string, string][] = [
          ['id', info.imageId],
          ['state', info.state],
          ...(info.size === null ? [] : ([['size', `${formatSize(info.size)} (${info.size} bytes)`]] as [string, string][])),
          ...(info.hits === null ? [] : ([['hits', String(info.hits)]] as [string, string][])),
          ...(info.lastAccessed === null ? [] : ([['last accessed', formatTime(info.lastAccessed)]] as [string, string][])),
          ...(info.lastModified === null ? [] : ([['last modified', formatTime(info.lastModified)]] as [string, string][])),
          ...(info.cached ? ([['checksum', info.checksum ?? 'none stored']] as [string, string][]) : []),
          ['queued', yesNo(info.queued)],
          ['being cached', yesNo(info.beingCached)],
          ['invalid copy', yesNo(info.invalid)],
          ['path', info.path],
        ];
        for (const [key, value] of rows) ctx.out(`${key.padEnd(14)}${value}`);
      });
    });
};
