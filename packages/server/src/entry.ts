import { createHash } from 'node:crypto';
import { parseStoredChecksum, type ImageCache, type ImageId, type NormalizedChecksum } from '@cache/core';

/** What the server knows about an active entry before it sends it. */
export interface EntryInfo {
  size: number;
  /** Strong `"<algorithm>:<hex>"` from the stored digest, else weak `W/"<hex>"` derived from the file's identity. */
  etag: string;
  /** The file's mtime: when its last byte was written, just before the commit. */
  lastModified: Date;
  /** `lastModified` as the `Last-Modified` header's value (IMF-fixdate), computed once per entry rather than per response. */
  lastModifiedHeader: string;
  /** The file's identity (`ImageStat.identity`): the body is read from this file only. */
  identity: string;
  /** Set when the metadata store failed (`ImageStat.degraded`): the entry is described by its file alone. */
  degraded?: Error;
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
 * Size, validators and identity of `id`'s active entry, from `cache.stat(id)`,
 * or `undefined` when it has none (a miss). The ETag is strong when the entry
 * was cached with a checksum (the driver stored the verified digest);
 * otherwise it is weak and derived from the file's identity (inode, size,
 * mtime): an active entry is never rewritten in place (a re-cache is a new
 * file renamed over it), so the tag changes with the content.
 *
 * While the metadata store fails, `cache.stat` answers from the file and the
 * digest it remembers for that file: the strong ETag stays the same when an
 * earlier stat of this process saw it; otherwise the ETag is the weak one.
 */
export async function statEntry(cache: ImageCache, id: ImageId): Promise<EntryInfo | undefined> {
  const stat = await cache.stat(id);
  if (stat === null) return undefined;
  const stored = parseStoredChecksum(stat.storedChecksum);
  const lastModified = new Date(stat.mtime * 1000);
  return {
    size: stat.size,
    etag:
      stored !== undefined
        ? digestEtag(stored)
        : `W/"${createHash('sha256').update(stat.identity).digest('hex').slice(0, 32)}"`,
    lastModified,
    lastModifiedHeader: lastModified.toUTCString(),
    identity: stat.identity,
    ...(stat.degraded === undefined ? {} : { degraded: stat.degraded }),
  };
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

/** Entries {@link EntryMemory} keeps at most (least recently used dropped first). */
const REMEMBERED_ENTRIES = 4096;

/**
 * What the server learned about active entries (size, validators, identity),
 * by id, so that a hit does not ask the metadata store again: the memory is
 * only a guess of which file is there. A hit served from it opens the file
 * with `openForRead(id, { identity })`, whose one `fstat` of the opened
 * descriptor refuses another file (deleted, replaced, rewritten: a new
 * inode, size or mtime); the request then forgets the guess and starts over
 * with `cache.stat`. Nothing is ever sent from memory without that check,
 * so answers that open no file (HEAD, 304) never use it. Entries described
 * while the metadata store failed are not remembered.
 */
export class EntryMemory {
  readonly #entries = new Map<ImageId, EntryInfo>();
  readonly #limit: number;

  constructor(limit = REMEMBERED_ENTRIES) {
    this.#limit = limit;
  }

  get(id: ImageId): EntryInfo | undefined {
    const entry = this.#entries.get(id);
    if (entry !== undefined) {
      // Most recently used last: the first key is the one to drop.
      this.#entries.delete(id);
      this.#entries.set(id, entry);
    }
    return entry;
  }

  remember(id: ImageId, entry: EntryInfo): void {
    if (entry.degraded !== undefined) return;
    this.#entries.delete(id);
    this.#entries.set(id, entry);
    if (this.#entries.size > this.#limit) this.#entries.delete(this.#entries.keys().next().value as ImageId);
  }

  forget(id: ImageId): void {
    this.#entries.delete(id);
  }

  get size(): number {
    return this.#entries.size;
  }
}
