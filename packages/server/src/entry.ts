import type { BigIntStats } from 'node:fs';
import { lstat } from 'node:fs/promises';
import { parseStoredChecksum, type ImageCache, type ImageId, type NormalizedChecksum } from '@cache/core';
import { isErrnoError, storageError } from '@cache/core/driver';

/** What the server knows about an active entry before it sends it. */
export interface EntryInfo {
  size: number;
  /** Strong `"<algorithm>:<hex>"` from the stored digest, else weak `W/"<size>-<mtime ns>-<inode>"` (hex). */
  etag: string;
  /** The file's mtime: when its last byte was written, just before the commit. */
  lastModified: Date;
  /** Identity of the file, to notice that it was replaced between two opens. */
  ino: bigint;
  mtimeNs: bigint;
}

/**
 * The strong ETag of an entry with a verified digest: `"<algorithm>:<hex>"`.
 * It depends on the bytes only, so every node holding the same image (and a
 * miss response streaming it) gives the same one.
 */
export function digestEtag(checksum: NormalizedChecksum): string {
  return `"${checksum.algorithm}:${checksum.digest}"`;
}

/**
 * Size, validators and identity of `id`'s active file, or `undefined` when
 * it has none (a miss). A driver with the optional `getStoredChecksum(id)`
 * (both shipped drivers have it) gives a strong
 * ETag when the entry was cached with a checksum; otherwise the ETag is weak
 * and derived from the file: an active entry is never rewritten in place (a
 * re-cache is a new file renamed over it), so size, mtime and inode change
 * together with the content.
 */
export async function statEntry(cache: ImageCache, id: ImageId): Promise<EntryInfo | undefined> {
  const path = cache.getImageFilepath(id);
  let stats: BigIntStats;
  try {
    stats = await lstat(path, { bigint: true });
  } catch (error) {
    if (isErrnoError(error, 'ENOENT', 'ENOTDIR')) return undefined;
    throw storageError('stat', path, error);
  }
  if (!stats.isFile()) return undefined;
  const stored = parseStoredChecksum(await cache.driver.getStoredChecksum?.(id));
  return {
    size: Number(stats.size),
    etag:
      stored !== undefined
        ? digestEtag(stored)
        : `W/"${stats.size.toString(16)}-${stats.mtimeNs.toString(16)}-${stats.ino.toString(16)}"`,
    lastModified: new Date(Number(stats.mtimeMs)),
    ino: stats.ino,
    mtimeNs: stats.mtimeNs,
  };
}

/** True when `stats` (of an opened handle) is the file `entry` described. */
export function sameFile(entry: EntryInfo, stats: BigIntStats): boolean {
  return stats.ino === entry.ino && stats.mtimeNs === entry.mtimeNs && Number(stats.size) === entry.size;
}

/** Splits an `If-None-Match` / `If-Match` list into entity tags (`*` stays `*`). */
function parseEntityTags(header: string): string[] {
  return header.match(/(?:W\/)?"[^"]*"|\*/g) ?? [];
}

function opaque(tag: string): string {
  return tag.startsWith('W/') ? tag.slice(2) : tag;
}

/**
 * RFC 9110 section 13.1.2/13.1.3 for GET and HEAD: `If-None-Match` (weak
 * comparison) decides when present; otherwise `If-Modified-Since` (one-second resolution).
 */
export function isNotModified(headers: Record<string, string | string[] | undefined>, entry: EntryInfo): boolean {
  const ifNoneMatch = headers['if-none-match'];
  if (typeof ifNoneMatch === 'string') {
    return parseEntityTags(ifNoneMatch).some((tag) => tag === '*' || opaque(tag) === opaque(entry.etag));
  }
  const ifModifiedSince = headers['if-modified-since'];
  if (typeof ifModifiedSince === 'string') {
    const since = Date.parse(ifModifiedSince);
    return !Number.isNaN(since) && Math.floor(entry.lastModified.getTime() / 1000) * 1000 <= since;
  }
  return false;
}

/**
 * RFC 9110 section 13.1.5: a Range applies only if `If-Range` is absent or
 * matches. An entity tag must match strongly (a weak ETag never does); a date
 * must equal `Last-Modified`.
 */
export function ifRangeAllows(headers: Record<string, string | string[] | undefined>, entry: EntryInfo): boolean {
  const ifRange = headers['if-range'];
  if (typeof ifRange !== 'string') return true;
  const value = ifRange.trim();
  if (value.startsWith('"') || value.startsWith('W/')) return !value.startsWith('W/') && !entry.etag.startsWith('W/') && value === entry.etag;
  const date = Date.parse(value);
  return !Number.isNaN(date) && date === Math.floor(entry.lastModified.getTime() / 1000) * 1000;
}
